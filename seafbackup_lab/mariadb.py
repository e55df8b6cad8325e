"""One MariaDB server started by hand (no systemd): its my.cnf, datadir, socket; stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the lab's CLI often needs no database (about 0.1 s a call)
    import pymysql.connections


class LabError(RuntimeError):
    pass


START_TIMEOUT = 300.0
"""Only a backstop: a start waits while its process lives and fails as soon as it exits, so a machine busy
with other work slows a start down instead of failing it."""


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
    def tmp_dir(self) -> Path:
        """The host's own /tmp for MariaDB's tmpdir. Every mariadbd deletes all `#sql*` files in its tmpdir when
        it starts, also the temporary tables of other servers sharing that directory: with the default /tmp,
        one lab server starting broke another's mariadb-install-db ("Could not remove temporary table")."""
        return self.root / "tmp"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/mysql"

    @property
    def error_log(self) -> Path:
        return self.log_dir / "error.log"

    @property
    def output_log(self) -> Path:
        """mariadbd's stdout and stderr (what it says before it opens its error log)."""
        return self.log_dir / "mariadbd.out"


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
        f"tmpdir = {paths.tmp_dir}\n"
        f"log-error = {paths.error_log}\n"
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

    def initialize(self, *, install: bool = True) -> None:
        """Write my.cnf and create an empty datadir (root authenticates over the socket); `install=False`
        writes my.cnf and the directories only (a Galera node that starts from another node's copy)."""
        for directory in (self.paths.conf_d, self.paths.run_dir, self.paths.log_dir, self.paths.tmp_dir,
                          self.paths.datadir.parent):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self.paths.run_dir, self.paths.log_dir, self.paths.tmp_dir):
            _chown_mysql(directory)
        self.paths.my_cnf.write_text(render_my_cnf(self.paths, self.address, self.port))
        if self.paths.datadir.is_dir() or not install:
            return
        # Installed aside and renamed when complete: a failed or interrupted install leaves no datadir that a
        # later `up` would take for a good one.
        staging = self.paths.datadir.with_name(self.paths.datadir.name + ".installing")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            "mariadb-install-db",
            f"--defaults-file={self.paths.my_cnf}",
            f"--datadir={staging}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ]
        if _run_as_root():
            cmd.append("--user=mysql")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # mariadb-install-db's own output is a generic hint; the reason is in the error log.
            said = [line for line in result.stdout.splitlines() if "ERROR" in line or "FATAL" in line]
            said += result.stderr.splitlines()
            raise LabError(
                f"mariadb-install-db failed for {self.paths.root} (exit status {result.returncode})\n"
                f"  command: {shlex.join(cmd)}\n"
                + (f"  it said:\n{_indent(said[-10:])}\n" if said else "")
                + log_tails([self.paths.error_log])
            )
        staging.rename(self.paths.datadir)

    def pid(self) -> int | None:
        try:
            pid = int(self.paths.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = START_TIMEOUT, extra_args: list[str] | None = None) -> None:
        if self.is_running():
            return
        cmd = ["mariadbd", f"--defaults-file={self.paths.my_cnf}", *(extra_args or [])]
        with open(self.paths.output_log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)
        wait_until_ready(proc, self._answers, what=f"MariaDB at {self.address}",
                         logs=[self.paths.error_log, self.paths.output_log], timeout=timeout)

    def _answers(self) -> bool:
        import pymysql

        try:
            self.root_connection().close()
        except pymysql.MySQLError:
            return False
        return True

    def stop(self, timeout: float = START_TIMEOUT) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)
        raise LabError(f"MariaDB (pid {pid}) at {self.address} did not stop within {timeout:.0f}s\n"
                       + log_tails([self.paths.error_log]))

    def kill(self) -> None:
        """SIGKILL, as when a host dies."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.01)

    def root_connection(self, database: str | None = None) -> pymysql.connections.Connection:
        import pymysql

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


def wait_until_ready(proc: subprocess.Popen, ready: Callable[[], bool], *, what: str, logs: Iterable[Path],
                     timeout: float = START_TIMEOUT) -> None:
    """Wait for a process just started until `ready()`; as soon as it exits, or after `timeout`, raise a
    LabError with the command and the last lines of its logs."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            problem = f"{what} exited with status {proc.returncode} before it was ready"
        elif time.monotonic() > deadline:
            problem = f"{what} was not ready within {timeout:.0f}s (pid {proc.pid} still running)"
        else:
            time.sleep(0.05)
            continue
        raise LabError(f"{problem}\n  command: {shlex.join(str(arg) for arg in proc.args)}\n{log_tails(logs)}")


def log_tails(paths: Iterable[Path], lines: int = 20) -> str:
    """The last lines of each log that has any, to put the reason for a failure into the error itself (the
    tests delete a lab's directory, logs included, when it failed to come up)."""
    parts = []
    for path in paths:
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            continue
        if tail:
            parts.append(f"  last lines of {path}:\n{_indent(tail)}")
    return "\n".join(parts) or "  (no log lines)"


def _indent(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines)
