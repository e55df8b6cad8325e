"""Shared fixtures: a lab of two real MariaDB servers on 127.0.0.21/22, apart from any demo lab."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from seafbackup_lab.lab import DATABASES, Lab
from seafbackup_lab.writer import SeafileServer


def _addr_prefix() -> str:
    """`<a>.<b>.<c>.2`: the labs take <prefix>1..6. Override with SEAFBACKUP_TEST_ADDR_PREFIX (e.g.
    "127.0.1.2") so two test runs can share a machine; each pytest-xdist worker N moves the third
    number up by 100 + N so that parallel workers never share a server."""
    prefix = os.environ.get("SEAFBACKUP_TEST_ADDR_PREFIX", "127.0.0.2")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        a, b, c, d = prefix.split(".")
        prefix = f"{a}.{b}.{int(c) + 100 + int(worker[2:])}.{d}"
    return prefix


ADDR_PREFIX = _addr_prefix()
TEST_ADDRESSES = {"primary": f"{ADDR_PREFIX}1", "backup": f"{ADDR_PREFIX}2"}
LIFECYCLE_ADDRESSES = {"primary": f"{ADDR_PREFIX}3", "backup": f"{ADDR_PREFIX}4"}
# The playbook tests' own pair: replication and conf drop-ins must not leak into the other tests' lab.
PLAYBOOK_ADDRESSES = {"primary": f"{ADDR_PREFIX}5", "backup": f"{ADDR_PREFIX}6"}


def make_lab_dir(prefix: str) -> Path:
    # Not under pytest's 0700 tmp dirs: MariaDB runs as the mysql user and must reach its datadir.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("SEAFBACKUP_TEST_TMP", "/tmp")))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def _running_lab(prefix: str, addresses: dict[str, str]) -> Iterator[Lab]:
    """A lab in a fresh directory, stopped and removed afterwards, also when it failed to come up
    (a server already started would otherwise keep its address for the next run)."""
    lab_dir = make_lab_dir(prefix)
    lab = Lab(lab_dir, addresses)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        shutil.rmtree(lab_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def session_lab() -> Iterator[Lab]:
    with _running_lab("seafbackup-test-lab-", TEST_ADDRESSES) as lab:
        yield lab


def wipe_host(lab: Lab, name: str) -> None:
    """Empty a lab host's Seafile data and tables (fast, keeps the servers running)."""
    host = lab.hosts[name]
    conn = host.mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            for db in DATABASES:
                cur.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (db,)
                )
                for (table,) in cur.fetchall():
                    cur.execute(f"TRUNCATE TABLE `{db}`.`{table}`")
    finally:
        conn.close()
    shutil.rmtree(host.seafile_data_dir, ignore_errors=True)
    host.seafile_data_dir.mkdir(parents=True)


@pytest.fixture
def lab(session_lab: Lab) -> Lab:
    for name in session_lab.hosts:
        wipe_host(session_lab, name)
    return session_lab


@pytest.fixture
def primary(lab: Lab) -> Iterator[SeafileServer]:
    host = lab.primary
    with SeafileServer(host.seafile_conf_dir, host.seafile_data_dir, block_size=64 * 1024) as server:
        yield server


@pytest.fixture
def backup(lab: Lab) -> Iterator[SeafileServer]:
    host = lab.backup
    with SeafileServer(host.seafile_conf_dir, host.seafile_data_dir, block_size=64 * 1024) as server:
        yield server


def root_sql(host, *statements):
    conn = host.mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture
def backup_db_privileges(lab):
    # What setup_backup.yml grants on the backup: the agent writes with sql_log_bin=0.
    root_sql(lab.backup, "GRANT BINLOG ADMIN ON *.* TO 'seafile'@'%'")
    yield
    root_sql(lab.backup, "REVOKE BINLOG ADMIN ON *.* FROM 'seafile'@'%'")


@pytest.fixture(scope="session")
def playbook_lab() -> Iterator[Lab]:
    """A lab for setup_backup.yml runs (a fresh one; tests reset it when they need a fresh pair)."""
    from seafbackup_lab.sshd import LabSSH

    with _running_lab("seafbackup-test-playbook-", PLAYBOOK_ADDRESSES) as lab:
        try:
            yield lab
        finally:
            LabSSH(lab.dir, lab.addresses).down()
