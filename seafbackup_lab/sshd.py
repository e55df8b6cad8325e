"""Real SSH into the lab's hosts: an `sshd -D -f <own config>` on each host's address, port 2222, key auth.

The playbooks then reach the lab the way users reach real hosts (`ansible_connection: ssh` or `paramiko`).
Keys, configs and PID files live in `<lab>/ssh/`; the daemons are stopped by their PIDs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from seafbackup_lab.mariadb import START_TIMEOUT, LabError, _alive, wait_until_ready

SSH_PORT = 2222


class LabSSH:
    def __init__(self, lab_dir: Path, addresses: dict[str, str], port: int = SSH_PORT) -> None:
        self.dir = Path(lab_dir) / "ssh"
        self.addresses = addresses
        self.port = port

    @property
    def client_key(self) -> Path:
        return self.dir / "id_ed25519"

    def _host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def _config(self, host: str) -> Path:
        return self.dir / f"sshd_config.{host}"

    def _pid_file(self, host: str) -> Path:
        return self.dir / f"sshd.{host}.pid"

    def pid(self, host: str) -> int | None:
        try:
            pid = int(self._pid_file(host).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _keys(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        for key in (self._host_key(), self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        (self.dir / "home").mkdir(mode=0o700, exist_ok=True)

    def render_config(self, host: str) -> str:
        return (
            f"ListenAddress {self.addresses[host]}:{self.port}\n"
            f"HostKey {self._host_key()}\n"
            f"PidFile {self._pid_file(host)}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "Subsystem sftp internal-sftp\n"
            f"SetEnv HOME={self.dir / 'home'}\n"
            "LogLevel ERROR\n"
        )

    def up(self, timeout: float = START_TIMEOUT) -> None:
        self._keys()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
        for host in self.addresses:
            if self.pid(host):
                continue
            if self._listens(host):
                # Else that process would answer the wait below for an sshd that could not bind.
                raise LabError(f"{self.addresses[host]}:{self.port} is taken by a process that is not this lab's sshd "
                               "(an sshd left running by an earlier lab?)")
            self._config(host).write_text(self.render_config(host))
            proc = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-f", str(self._config(host)), "-E", str(self.dir / f"sshd.{host}.log")],
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
            self._pid_file(host).write_text(f"{proc.pid}\n")
            wait_until_ready(proc, lambda host=host: self._listens(host), what=f"sshd for {host}",
                             logs=[self.dir / f"sshd.{host}.log"], timeout=timeout)

    def _listens(self, host: str) -> bool:
        try:
            with socket.create_connection((self.addresses[host], self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def down(self) -> None:
        for host in self.addresses:
            pid = self.pid(host)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            self._pid_file(host).unlink(missing_ok=True)
