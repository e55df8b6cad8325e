"""Helpers of the tests that need a lab: its addresses, directories, and root SQL on a lab host.

Fixtures live in conftest.py; tests import these functions from here, never from a conftest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from seafbackup_lab.lab import DATABASES, Lab, new_lab_dir


def lab_addr_prefix(prefix: str, worker: str) -> str:
    """`<a>.<b>.<c>.2`: the labs take <prefix>1..6, and <prefix>10..15 for the load test. The prefix comes from
    SEAFBACKUP_TEST_ADDR_PREFIX (e.g. "127.0.1.2") so that two test runs can share a machine. pytest-xdist
    worker N moves the second number up by 1 + N: the workers of one run never share a server, nor do those
    of two runs whose prefixes differ in the third number (moving the third number, as before, put worker 1
    of the default run on the addresses of worker 0 of a run with prefix 127.0.1.2)."""
    if not worker.startswith("gw"):
        return prefix
    a, b, c, d = prefix.split(".")
    return f"{a}.{int(b) + 1 + int(worker[2:])}.{c}.{d}"


ADDR_PREFIX = lab_addr_prefix(os.environ.get("SEAFBACKUP_TEST_ADDR_PREFIX", "127.0.0.2"),
                              os.environ.get("PYTEST_XDIST_WORKER", ""))
TEST_ADDRESSES = {"primary": f"{ADDR_PREFIX}1", "backup": f"{ADDR_PREFIX}2"}
LIFECYCLE_ADDRESSES = {"primary": f"{ADDR_PREFIX}3", "backup": f"{ADDR_PREFIX}4"}
# The playbook tests' own pair: replication and conf drop-ins must not leak into the other tests' lab.
PLAYBOOK_ADDRESSES = {"primary": f"{ADDR_PREFIX}5", "backup": f"{ADDR_PREFIX}6"}
# The Ceph lab's own address (tests/objectstore): one cluster per address, moved per worker like the labs.
CEPH_ADDRESS = lab_addr_prefix(os.environ.get("SEAFBACKUP_TEST_CEPH_ADDR", "127.0.0.71"),
                               os.environ.get("PYTEST_XDIST_WORKER", ""))
# The cluster lab (tests/cluster): 127.0.0.31-36 by default, SEAFBACKUP_TEST_CLUSTER_ADDR_PREFIX (e.g. "127.0.8.")
# moves it; pytest-xdist workers move it as the others.
CLUSTER_ADDR_PREFIX = lab_addr_prefix(
    os.environ.get("SEAFBACKUP_TEST_CLUSTER_ADDR_PREFIX")
    or os.environ.get("SEAFBACKUP_TEST_ADDR_PREFIX", "127.0.0.2")[:-1] + "3", os.environ.get("PYTEST_XDIST_WORKER", ""))
TEST_TMP = Path(os.environ.get("SEAFBACKUP_TEST_TMP", "/tmp"))
# Labs started all at once by the load test.
LOAD_ADDRESSES = [{"primary": f"{ADDR_PREFIX}{10 + 2 * n}", "backup": f"{ADDR_PREFIX}{11 + 2 * n}"} for n in range(3)]


def make_lab_dir(prefix: str) -> Path:
    # Not under pytest's 0700 tmp dirs: MariaDB runs as the mysql user and must reach its datadir.
    return new_lab_dir(TEST_TMP, prefix)


@contextlib.contextmanager
def running_lab(prefix: str, addresses: dict[str, str]) -> Iterator[Lab]:
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


def root_sql(host, *statements):
    conn = host.mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.2,
             explain: Callable[[], str] | None = None) -> T:
    """Polls until `predicate` returns something true and returns that; fails the test after `timeout` seconds,
    with what `explain` says then (the state a failure in CI must show, since the lab is gone afterwards)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s" + (f"\n{explain()}" if explain else ""))
