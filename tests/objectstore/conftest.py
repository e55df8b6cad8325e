"""Each test's own buckets and pools under a prefix of its own, on the real Ceph cluster (radosgw for S3, librados
for pools) that tests/conftest.py starts once per test session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from seafbackup_agent.objectstore.backend_conf import Backend, CephBackend, S3Backend, render_sections
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_lab.ceph import CephCluster
from tests.backup_storage import bucket_prefix


@pytest.fixture
def buckets(ceph: CephCluster, s3, request: pytest.FixtureRequest) -> Callable[[str], dict[ObjType, Backend]]:
    """`buckets(role)`: three new buckets (commits, fs, blocks) for this test, as seafile.conf names them."""
    prefix = bucket_prefix(request)

    def make(role: str) -> dict[ObjType, Backend]:
        backends: dict[ObjType, Backend] = {}
        for obj_type in ObjType:
            bucket = f"{prefix}-{role}-{obj_type.value}"[:63]
            s3.create_bucket(Bucket=bucket)
            host, port = ceph.s3_host.split(":")
            backends[obj_type] = S3Backend(bucket=bucket, key_id=ceph.access_key, key=ceph.secret_key, host=host,
                                           port=int(port), path_style_request=True, use_v4_signature=True)
        return backends

    return make


@pytest.fixture
def pools(ceph: CephCluster, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], dict[ObjType, Backend]]:
    """`pools(role)`: three new pools for this test, with a client ceph.conf and keyring as on a Seafile host."""
    prefix = bucket_prefix(request)
    client_conf = ceph.client_conf(tmp_path / "etc-ceph")

    def make(role: str) -> dict[ObjType, Backend]:
        backends: dict[ObjType, Backend] = {}
        for obj_type in ObjType:
            pool = f"{prefix}-{role}-{obj_type.value}"
            ceph.create_pool(pool)
            backends[obj_type] = CephBackend(client_conf, pool)
        return backends

    return make


@pytest.fixture
def seafile_conf_backends(lab) -> Iterator[Callable[[str, dict[ObjType, Backend]], None]]:
    """`set(host, backends)`: put the `[..._backend]` sections in that lab host's seafile.conf (restored after)."""
    saved: dict[Path, str] = {}

    def set_backends(host: str, backends: dict[ObjType, Backend]) -> None:
        path = lab.hosts[host].seafile_conf_dir / "seafile.conf"
        saved.setdefault(path, path.read_text())
        text = saved[path]
        for section, values in render_sections(backends).items():
            text += f"\n[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        path.write_text(text)

    yield set_backends
    for path, text in saved.items():
        path.write_text(text)

