"""Where the tests' independent checks find a Seafile installation's objects: its `storage/` directory, or the S3
buckets that `pytest --backup-storage=s3` gives the lab's backup.

With `--backup-storage=s3`, the `lab` fixture gives the backup three new buckets on the lab's Ceph (radosgw) for
each test, written into its seafile.conf as Seafile reads them, and registers them here. The fault tests and the
verify tests then run unchanged against S3: their checks (tests/seafile_checks.py, tests/faults/checks.py) read,
break and count objects through `object_path` and `stored_ids`, which go to the buckets with the tests' own boto3
client, never through the agent's code.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from seafbackup_agent.objectstore.backend_conf import S3Backend
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_lab.ceph import CephCluster

KINDS = ("commits", "fs", "blocks")
_names = itertools.count()


def bucket_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix for one test's buckets and pools (unique in the session, and across sessions on one Ceph)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24].strip("-")
    return f"t{next(_names)}-{int(time.time()) % 100000}-{name}"


@dataclass(frozen=True)
class S3Object:
    """One object in a bucket, with the few methods of `Path` the checks use on an object's file."""

    buckets: S3Buckets
    kind: str
    key: str

    @property
    def bucket(self) -> str:
        return self.buckets.buckets[self.kind]

    def read_bytes(self) -> bytes:
        return self.buckets.read(self.kind, self.key)

    def write_bytes(self, data: bytes) -> int:
        self.buckets.s3.put_object(Bucket=self.bucket, Key=self.key, Body=data)
        self.buckets.cache.pop((self.kind, self.key), None)
        return len(data)

    def unlink(self, missing_ok: bool = False) -> None:
        self.buckets.s3.delete_object(Bucket=self.bucket, Key=self.key)
        self.buckets.cache.pop((self.kind, self.key), None)

    def exists(self) -> bool:
        return len(self.buckets.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key).get("Contents", ())) > 0

    is_file = exists


@dataclass
class S3Buckets:
    """An installation's three buckets (kind -> bucket name) and the tests' own client of their radosgw.

    The first read of a store's objects of one kind fetches all of them, 32 at a time, and keeps them: objects are
    immutable under their ids, and the checks' own writes and deletes drop what they change. An object added
    later (by the agent) is fetched when asked for."""

    s3: Any
    buckets: dict[str, str]
    cache: dict[tuple[str, str], bytes] = field(default_factory=dict)
    fetched: set[tuple[str, str]] = field(default_factory=set)

    def ids(self, kind: str, store: str) -> list[str]:
        return [key.split("/", 1)[1] for key in self._keys(kind, store)]

    def _keys(self, kind: str, store: str) -> list[str]:
        found = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.buckets[kind], Prefix=f"{store}/"):
            found += [item["Key"] for item in page.get("Contents", ())]
        return found

    def read(self, kind: str, key: str) -> bytes:
        store = key.split("/", 1)[0]
        if (kind, store) not in self.fetched:
            self.fetched.add((kind, store))
            keys = self._keys(kind, store)
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                self.cache.update(zip(((kind, k) for k in keys), pool.map(lambda k: self._get(kind, k), keys),
                                      strict=True))
        data = self.cache.get((kind, key))
        if data is None:
            data = self.cache[(kind, key)] = self._get(kind, key)
        return data

    def _get(self, kind: str, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.buckets[kind], Key=key)["Body"].read())


_on_s3: dict[Path, S3Buckets] = {}


def create_s3_backends(s3: Any, ceph: CephCluster, prefix: str) -> dict[ObjType, S3Backend]:
    """Three new buckets on the lab Ceph's radosgw, one per object type, as backends."""
    host, port = ceph.s3_host.split(":")
    backends = {}
    for obj_type in ObjType:
        bucket = f"{prefix}-{obj_type.value}"[:63]
        s3.create_bucket(Bucket=bucket)
        backends[obj_type] = S3Backend(bucket=bucket, key_id=ceph.access_key, key=ceph.secret_key, host=host,
                                       port=int(port), path_style_request=True, use_v4_signature=True)
    return backends


def register(data_dir: Path, s3: Any, backends: dict[ObjType, S3Backend]) -> None:
    """The checks find `data_dir`'s objects in these buckets from now on."""
    _on_s3[Path(data_dir).resolve()] = S3Buckets(s3, {t.value: b.bucket for t, b in backends.items()})


def unregister(data_dir: Path) -> None:
    _on_s3.pop(Path(data_dir).resolve(), None)


def buckets_of(data_dir: Path) -> S3Buckets | None:
    return _on_s3.get(Path(data_dir).resolve())


def object_path(data_dir: Path, kind: str, store: str, oid: str) -> Path | S3Object:
    """The object's file under `<data_dir>/storage`, or its key in the installation's bucket."""
    buckets = buckets_of(data_dir)
    if buckets is not None:
        return S3Object(buckets, kind, f"{store}/{oid}")
    return Path(data_dir) / "storage" / kind / store / oid[:2] / oid[2:]


def stored_ids(data_dir: Path, kind: str, store: str) -> list[str]:
    """The ids of a store's objects of one kind, as the storage holds them."""
    buckets = buckets_of(data_dir)
    if buckets is not None:
        return buckets.ids(kind, store)
    base = Path(data_dir) / "storage" / kind / store
    return [p.parent.name + p.name for p in base.glob("??/*") if p.is_file() and len(p.name) == 38]
