"""The bench's lab (127.0.3.11/.12 in a /tmp dir of its own) and its two agents as subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench.disks import HostDisks
from seafbackup_agent.config import DEFAULT_WORKERS
from seafbackup_lab.lab import DATABASES, Lab, LabHost, new_lab_dir, pair_agents, unpair_agents

ADDR_PREFIX = os.environ.get("SEAFBACKUP_BENCH_ADDR_PREFIX", "127.0.3.1")
WORKERS = DEFAULT_WORKERS
"""The backup agent's `[backup] workers` (the product's default unless `--workers`)."""
PROFILE_DIR: Path | None = None
"""When set (`python -m bench --profile DIR`), every agent runs under `py-spy record` (collapsed stacks)."""


def make_lab(prefix: str = "seafbackup-bench-") -> tuple[Lab, HostDisks]:
    """The bench's lab, each host on a disk of its own where this machine allows it (bench/disks.py)."""
    path = new_lab_dir(os.environ.get("SEAFBACKUP_BENCH_TMP", "/tmp"), prefix)
    disks = HostDisks.attach(path, ("primary", "backup"))
    try:
        lab = Lab(path, {"primary": f"{ADDR_PREFIX}1", "backup": f"{ADDR_PREFIX}2"})
        lab.up()
        root_sql(lab.backup, "GRANT BINLOG ADMIN ON *.* TO 'seafile'@'%'")
    except BaseException:
        disks.detach()
        raise
    return lab, disks


def root_sql(host: LabHost, *statements: str, args: tuple | None = None):
    conn = host.mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, args)
            return cur.fetchall()
    finally:
        conn.close()


def discard(lab: Lab, path: Path) -> None:
    """Set a directory aside in the trash of its filesystem (a host's disk or the lab's directory), deleted with
    the lab at the end."""
    if path.exists():
        root = next((h.root for h in lab.hosts.values() if path.is_relative_to(h.root)), lab.dir)
        trash = root / "bench-trash"
        trash.mkdir(exist_ok=True)
        path.rename(trash / f"{path.name}-{time.time_ns()}")


def wipe(lab: Lab, *, hosts: tuple[str, ...] = ("primary", "backup")) -> None:
    """Empty the hosts' Seafile data and tables (servers keep running)."""
    for host in (lab.hosts[name] for name in hosts):
        conn = host.mariadb.root_connection()
        try:
            with conn.cursor() as cur:
                for db in DATABASES:
                    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (db,))
                    for (table,) in cur.fetchall():
                        cur.execute(f"TRUNCATE TABLE `{db}`.`{table}`")
        finally:
            conn.close()
        # Set aside, not deleted: removing 100k+ small files takes a minute here; the lab directory and
        # everything in it is removed in the background when the run ends.
        discard(lab, host.seafile_data_dir)
        host.seafile_data_dir.mkdir(parents=True)


def _listening(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Agents:
    """Both agents of a lab, as `seaf-backup-cmd agent` processes; logs and state in `work`."""

    def __init__(self, lab: Lab, work: Path, *, poll_hours: float = 1.0, workers: int | None = None,
                 via: str | None = None) -> None:
        """`via`: an address where a relay (bench/wan.py) forwards :8090 to the primary agent and :8091 to the
        backup agent; each agent then reaches the other through it."""
        workers = workers or WORKERS
        self.lab = lab
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work / "state", ignore_errors=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.profilers: list[subprocess.Popen] = []
        pair_agents(lab, state_dir=self.work / "state", poll_hours=poll_hours, workers=workers)
        if via is not None:
            for host, url in ((lab.primary, f"backup_url = http://{lab.backup.address}:8091"),
                              (lab.backup, f"primary_url = http://{lab.primary.address}:8090")):
                conf = host.seafile_conf_dir / "seafile.conf"
                text = conf.read_text()
                assert url in text, url
                conf.write_text(text.replace(url, url.replace(url.split("//")[1].split(":")[0], via)))

    def start(self, name: str) -> int:
        host = self.lab.hosts[name]
        log = open(self.log_path(name), "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            # Without -v: the poll timings are INFO lines; -v would log every request (DEBUG).
            [sys.executable, "-m", "seafbackup_agent.cli.main", "agent", "--conf-dir",
             str(host.seafile_conf_dir), "--data-dir", str(host.seafile_data_dir)],
            stdout=log, stderr=log)
        log.close()
        self.procs[name] = proc
        if PROFILE_DIR is not None:
            PROFILE_DIR.mkdir(parents=True, exist_ok=True)
            out = PROFILE_DIR / f"{self.work.name}-{name}-{proc.pid}.txt"
            self.profilers.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(proc.pid), "-o", str(out),
                 "--format", "raw", "-r", "100", "--idle", "--threads", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        if name == "backup":
            while not (self.work / "state/agent.sock").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"backup agent did not start:\n{self.log('backup')[-2000:]}")
                time.sleep(0.02)
        else:
            while not _listening(host.address, 8090):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"primary agent did not start:\n{self.log('primary')[-2000:]}")
                time.sleep(0.02)
        return proc.pid

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def close(self) -> None:
        self.stop_all()
        for profiler in self.profilers:
            try:
                profiler.wait(timeout=30)  # py-spy writes its file when the agent exits
            except subprocess.TimeoutExpired:
                profiler.terminate()
        unpair_agents(self.lab)

    def log_path(self, name: str) -> Path:
        return self.work / f"{name}-agent.log"

    def log(self, name: str) -> str:
        try:
            return self.log_path(name).read_text()
        except FileNotFoundError:
            return ""

    def status(self) -> dict | None:
        result = subprocess.run([sys.executable, "-m", "seafbackup_agent.cli.main", "status", "--json", "--conf-dir",
                                 str(self.lab.backup.seafile_conf_dir)], capture_output=True, text=True)
        # 0 healthy, 5 stale pairing, 6 failed libraries: each prints the document.
        return json.loads(result.stdout) if result.returncode in (0, 5, 6) else None

    def wait_synchronized(self, total: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.status()
            if doc and doc["healthy"] and doc["total"] == total and doc["counts"]["synchronized"] == total:
                return
            time.sleep(0.2)
        raise RuntimeError(f"backup not synchronized ({total} libraries) after {timeout}s")

    def sync_seconds(self) -> tuple[float, int]:
        """The backup agent's `seafbackup_sync_seconds` histogram: (sum, count), from its control socket."""
        text = subprocess.run(["curl", "-s", "--unix-socket", str(self.work / "state/agent.sock"),
                               "http://agent/metrics"], capture_output=True, text=True, check=True).stdout
        values = {}
        for line in text.splitlines():
            if line.startswith(("seafbackup_sync_seconds_sum", "seafbackup_sync_seconds_count")):
                name, value = line.split()
                values[name] = float(value)
        return values.get("seafbackup_sync_seconds_sum", 0.0), int(values.get("seafbackup_sync_seconds_count", 0))

    def polls(self) -> list[tuple[float, int, float]]:
        """The backup agent's completed polls as (end time, libraries, seconds), from its log."""
        found = []
        for line in self.log("backup").splitlines():
            if " poll: " not in line:
                continue
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            words = line.split(" poll: ")[1].split()
            found.append((stamp, int(words[0]), float(words[-1].rstrip("s"))))
        return found
