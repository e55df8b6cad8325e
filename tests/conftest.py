"""Shared fixtures: a lab of two real MariaDB servers on 127.0.0.21/22, apart from any demo lab; a real Ceph cluster
(radosgw, librados) when a test asks for one.

`pytest --backup-storage=s3` keeps the lab backup's objects in S3 buckets on that Ceph (three new ones per test,
in its seafile.conf as Seafile reads them) instead of its `storage/` directory: the fault and verify tests then run
unchanged against S3 (tests/backup_storage.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import pytest

from seafbackup_agent.objectstore.backend_conf import render_sections
from seafbackup_lab.ceph import CephCluster
from seafbackup_lab.lab import Lab
from seafbackup_lab.writer import SeafileServer
from tests import backup_storage
from tests.agents import Agents
from tests.helpers import (
    CEPH_ADDRESS,
    LIFECYCLE_ADDRESSES,
    PLAYBOOK_ADDRESSES,
    TEST_ADDRESSES,
    TEST_TMP,
    make_lab_dir,
    root_sql,
    running_lab,
    wipe_host,
)

# The longest test files first (minutes, measured at low load on 2 cores): pytest-xdist hands out whole files in
# collection order (`--dist loadfile --no-loadscope-reorder`), so the long ones start at once and the short ones
# fill the gaps, instead of a long file starting last on one worker while the other idles. tests/hosts comes
# after the first three: its root image is being built in the background meanwhile.
SLOWEST_FIRST = (
    "tests/cluster/",  # 5-8
    "tests/integration/test_setup_backup.py",  # 5-7
    "tests/integration/test_failover.py",  # 4-5
    "tests/hosts/",  # ~6 with a warm image
    "tests/faults/test_crashes.py",
    "tests/integration/test_verify.py",
    "tests/integration/test_freshness.py",
    "tests/objectstore/",
    "tests/integration/test_agent.py",
)


def _slowness_rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((rank for rank, prefix in enumerate(SLOWEST_FIRST) if path.startswith(prefix)), len(SLOWEST_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_slowness_rank)  # stable: a file's own order is kept


@pytest.fixture(scope="session")
def session_lab() -> Iterator[Lab]:
    with running_lab("seafbackup-test-lab-", TEST_ADDRESSES) as lab:
        yield lab


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backup-storage", choices=("filesystem", "s3"), default="filesystem",
                     help="where the lab backup keeps its Seafile objects: its storage/ directory (default), or S3 "
                     "buckets on a lab Ceph (radosgw) started for the session")


@pytest.fixture
def lab(session_lab: Lab, request: pytest.FixtureRequest) -> Iterator[Lab]:
    for name in session_lab.hosts:
        wipe_host(session_lab, name)
    if request.config.getoption("backup_storage") != "s3":
        yield session_lab
        return
    s3 = request.getfixturevalue("s3")
    ceph: CephCluster = request.getfixturevalue("ceph")
    backends = backup_storage.create_s3_backends(s3, ceph, backup_storage.bucket_prefix(request))
    conf = session_lab.backup.seafile_conf_dir / "seafile.conf"
    saved = conf.read_text()
    conf.write_text(saved + "".join(f"\n[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                                    for section, values in render_sections(backends).items()))
    data_dir = session_lab.backup.seafile_data_dir
    backup_storage.register(data_dir, s3, backends)
    try:
        yield session_lab
    finally:
        backup_storage.unregister(data_dir)
        conf.write_text(saved)


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephCluster]:
    root = TEST_TMP / f"seafbackup-test-ceph-{os.getpid()}"
    cluster = CephCluster(root, CEPH_ADDRESS)
    try:
        cluster.up()
        print(f"Ceph lab up at {CEPH_ADDRESS} in {cluster.started_in:.1f}s")
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def s3(ceph: CephCluster):
    """An S3 client of the tests' own (not the agent's) on the lab's radosgw."""
    return boto3.client("s3", endpoint_url=ceph.s3_endpoint, aws_access_key_id=ceph.access_key,
                        aws_secret_access_key=ceph.secret_key, region_name="us-east-1",
                        config=botocore.config.Config(max_pool_connections=32))


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


@pytest.fixture
def backup_db_privileges(lab):
    # What setup_backup.yml grants on the backup: the agent writes with sql_log_bin=0.
    root_sql(lab.backup, "GRANT BINLOG ADMIN ON *.* TO 'seafile'@'%'")
    yield
    root_sql(lab.backup, "REVOKE BINLOG ADMIN ON *.* FROM 'seafile'@'%'")


@pytest.fixture(scope="session")
def playbook_lab() -> Iterator[Lab]:
    """A lab for setup_backup.yml runs (a fresh one; tests reset it when they need a fresh pair)."""
    with running_lab("seafbackup-test-playbook-", PLAYBOOK_ADDRESSES) as lab:
        yield lab


@pytest.fixture
def fresh_lab() -> Iterator[Lab]:
    """A lab not up yet on the lifecycle addresses, stopped and removed afterwards."""
    lab = Lab(make_lab_dir("seafbackup-test-fresh-"), LIFECYCLE_ADDRESSES)
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


@pytest.fixture
def agents(lab: Lab, backup_db_privileges: None, tmp_path: Path) -> Iterator[Agents]:
    """Both lab agents as real processes, paired; killed and unpaired afterwards."""
    with Agents(lab, tmp_path) as a:
        yield a


@pytest.fixture(scope="module")
def state() -> dict:
    """What one step of a test module's sequence leaves for the next (the first run, the token...): one per module."""
    return {}


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    """Seconds per playbook run, printed by the last test."""
    return {}
