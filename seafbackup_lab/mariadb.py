"""One MariaDB server started by hand (no systemd): its my.cnf, datadir, socket; stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql


class LabError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class MariaDBPaths:
    """Where one lab host keeps its MariaDB, laid out like a real host under `root`."""

    root: Path

    @property
    def my_cnf(self) -> Path:
        return self.root / "etc/mysql/my.cnf"

    @property
    def conf_d(self) -> Path:
        return self.root / "etc/mysql/conf.d"

    @property
    def datadir(self) -> Path:
        return self.root / "var/lib/mysql"

    @property
    def run_dir(self) -> Path:
        return self.root / "run/mysqld"

    @property
    def socket(self) -> Path:
        return self.run_dir / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "mysqld.pid"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/mysql"


def _run_as_root() -> bool:
    return os.geteuid() == 0


def _chown_mysql(path: Path) -> None:
    if _run_as_root():
        shutil.chown(path, "mysql", "mysql")


def render_my_cnf(paths: MariaDBPaths, address: str, port: int) -> str:
    user_line = "user = mysql\n" if _run_as_root() else ""
    return (
        "# Lab MariaDB server. setup_backup.yml adds its settings as drop-ins in conf.d/.\n"
        "[mysqld]\n"
        f"{user_line}"
        f"datadir = {paths.datadir}\n"
        f"socket = {paths.socket}\n"
        f"pid-file = {paths.pid_file}\n"
        f"bind-address = {address}\n"
        f"port = {port}\n"
        f"log-error = {paths.log_dir}/error.log\n"
        "skip-name-resolve\n"
        "performance_schema = OFF\n"
        "innodb_buffer_pool_size = 32M\n"
        "innodb_log_file_size = 8M\n"
        "innodb_flush_log_at_trx_commit = 2\n"
        "innodb_flush_method = nosync\n"
        "character-set-server = utf8mb4\n"
        "collation-server = utf8mb4_general_ci\n"
        "\n[client]\n"
        f"socket = {paths.socket}\n"
        f"\n!includedir {paths.conf_d}\n"
    )


class MariaDBServer:
    def __init__(self, paths: MariaDBPaths, address: str, port: int = 3306) -> None:
        self.paths = paths
        self.address = address
        self.port = port

    def initialize(self) -> None:
        """Write my.cnf and create an empty datadir (root authenticates over the socket)."""
        for directory in (self.paths.conf_d, self.paths.run_dir, self.paths.log_dir, self.paths.datadir.parent):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self.paths.run_dir, self.paths.log_dir):
            _chown_mysql(directory)
        self.paths.my_cnf.write_text(render_my_cnf(self.paths, self.address, self.port))
        if (self.paths.datadir / "mysql").is_dir():
            return
        cmd = [
            "mariadb-install-db",
            f"--defaults-file={self.paths.my_cnf}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ]
        if _run_as_root():
            cmd.append("--user=mysql")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"mariadb-install-db failed for {self.paths.root}:\n{result.stdout}{result.stderr}")

    def pid(self) -> int | None:
        try:
            pid = int(self.paths.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 30.0) -> None:
        if self.is_running():
            return
        log = open(self.paths.log_dir / "mariadbd.out", "ab")  # noqa: SIM115 - handed to the child
        subprocess.Popen(
            ["mariadbd", f"--defaults-file={self.paths.my_cnf}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.root_connection().close()
                return
            except pymysql.MySQLError:
                time.sleep(0.05)
        raise LabError(f"MariaDB at {self.address} did not start; see {self.paths.log_dir}/error.log")

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)
        raise LabError(f"MariaDB (pid {pid}) at {self.address} did not stop within {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as when a host dies."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.01)

    def root_connection(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=str(self.paths.socket), user="root", database=database, autocommit=True, connect_timeout=2
        )


def _alive(pid: int) -> bool:
    """A zombie (state Z) counts as stopped: the lab's servers are not always its own children."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True
