"""The cluster group's one lab: three Galera nodes, two Seafile nodes sharing one seafile-data, one backup."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from seafbackup_lab.cluster import ClusterLab, cluster_addresses
from tests.helpers import CLUSTER_ADDR_PREFIX, make_lab_dir


@pytest.fixture(scope="session")
def cluster_lab() -> Iterator[ClusterLab]:
    lab = ClusterLab(make_lab_dir("seafbackup-test-cluster-"), cluster_addresses(CLUSTER_ADDR_PREFIX))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)
