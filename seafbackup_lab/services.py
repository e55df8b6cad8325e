"""Lab stand-ins for systemd: run a unit's ExecStart detached, stop it by PID with SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from seafbackup_lab.mariadb import LabError, _alive


@dataclass(frozen=True, slots=True)
class UnitService:
    """A service whose unit file the playbooks wrote under the lab host's root."""

    name: str
    root: Path

    @property
    def unit_file(self) -> Path:
        return self.root / "etc/systemd/system" / f"{self.name}.service"

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "var/log" / f"{self.name}.log"

    def exec_start(self) -> list[str]:
        try:
            text = self.unit_file.read_text()
        except FileNotFoundError as exc:
            raise LabError(f"{self.unit_file} does not exist: install the service first") from exc
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                return shlex.split(line.removeprefix("ExecStart="))
        raise LabError(f"{self.unit_file} has no ExecStart")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self) -> None:
        if self.pid() is not None:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self.exec_start(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        time.sleep(0.3)
        if proc.poll() is not None:
            raise LabError(f"{self.name} exited at once (status {proc.returncode}); see {self.log_file}")

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f"{self.name} (pid {pid}) did not stop within {timeout}s")
            time.sleep(0.02)
        self.pid_file.unlink(missing_ok=True)
