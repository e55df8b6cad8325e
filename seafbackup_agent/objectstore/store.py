"""A Seafile object store whose types live in S3 buckets, Ceph pools or directories, as seafile.conf says.

`open_store` gives the plain `FilesystemStore` when every type is on the filesystem of the installation
(nothing changes for those), and a `BackendStore` otherwise: one backend per object type, any mix.

Writes on object storage need no temporary names: a PUT (or a librados `write_full`) that returned is
durable, and an object is visible only once whole. `PutBatch.put` therefore writes its objects at once
(many in flight) and returns only when every one of them succeeded; the engine puts an object only after
the `put` of everything it references returned, so the closure order holds as on the filesystem, and
the head is published only after the `put` of the commits returned. Commits of one `put` go one after
the other, oldest first, so that a commit never lands before its parent.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from seafbackup_agent.objectstore.backend_conf import Backend, CephBackend, FsBackend, S3Backend
from seafbackup_agent.objectstore.object_index import ObjectIndex
from seafbackup_agent.seafile.storage import BatchDiscarded, FilesystemStore, ObjectStore, ObjType

PARALLEL = 16
"""Objects in flight per store (reads of `read_many`, PUTs of a batch)."""


class TypeBackend(Protocol):
    """One object type's storage: an S3 bucket, a Ceph pool or a directory."""

    def identity(self) -> str: ...

    def read(self, store_id: str, obj_id: str) -> bytes | None: ...

    def exists(self, store_id: str, obj_id: str) -> bool: ...

    def write(self, store_id: str, obj_id: str, data: bytes) -> None: ...

    def iter_ids(self, store_id: str) -> Iterator[str]: ...

    def list_all(self) -> Iterator[tuple[str, str]]: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class FsTypeBackend:
    """One type in a directory tree (`<root>/storage/<type>`) beside types on object storage: each write
    durable on its own (fsync, as Seafile's own writes), so it needs no batch of its own."""

    def __init__(self, root: Path, obj_type: ObjType) -> None:
        self.store = FilesystemStore(root)
        self.obj_type = obj_type

    def identity(self) -> str:
        return f"fs:{self.store.root}/{self.obj_type}"

    def read(self, store_id: str, obj_id: str) -> bytes | None:
        return self.store.read(self.obj_type, store_id, obj_id)

    def exists(self, store_id: str, obj_id: str) -> bool:
        return self.store.exists(self.obj_type, store_id, obj_id)

    def write(self, store_id: str, obj_id: str, data: bytes) -> None:
        self.store.write(self.obj_type, store_id, obj_id, data, durable=True)

    def iter_ids(self, store_id: str) -> Iterator[str]:
        return self.store.iter_ids(self.obj_type, store_id)

    def list_all(self) -> Iterator[tuple[str, str]]:
        base = self.store.root / self.obj_type.value
        if base.is_dir():
            for store in sorted(p.name for p in base.iterdir() if not p.name.startswith(".")):
                for obj_id in self.store.iter_ids(self.obj_type, store):
                    yield store, obj_id

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_backend(backend: Backend, data_dir: Path, obj_type: ObjType) -> TypeBackend:
    if isinstance(backend, S3Backend):
        from seafbackup_agent.objectstore.s3_bucket import S3Bucket  # boto3 only where S3 is used

        return S3Bucket(backend)
    if isinstance(backend, CephBackend):
        from seafbackup_agent.objectstore.rados_pool import RadosPool

        return RadosPool(backend)
    return FsTypeBackend(backend.dir or data_dir, obj_type)


def open_store(backends: dict[ObjType, Backend], data_dir: Path, *,
               index_path: Path | None = None) -> FilesystemStore | BackendStore:
    """The store seafile.conf describes. `index_path`: where the index of what an object-storage target
    holds is kept (None: no index, every `exists` asks the store, as `verify` must)."""
    dirs = {b.dir or data_dir for b in backends.values() if isinstance(b, FsBackend)}
    if len(dirs) == 1 and all(isinstance(b, FsBackend) for b in backends.values()):
        return FilesystemStore(dirs.pop())
    opened = {obj_type: open_backend(backend, data_dir, obj_type) for obj_type, backend in backends.items()}
    return BackendStore(opened, index=ObjectIndex(index_path) if index_path else None)


class BackendStore:
    """`ObjectStore` over one backend per object type (see the module's doc)."""

    def __init__(self, backends: dict[ObjType, TypeBackend], *, index: ObjectIndex | None = None,
                 parallel: int = PARALLEL) -> None:
        self.backends = backends
        self.index = index
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="seafbackup-put")
        self._ready: set[ObjType] = set()
        self._ready_lock = threading.Lock()

    def describe(self) -> dict[ObjType, str]:
        return {t: getattr(b, "where", b.identity()) for t, b in self.backends.items()}

    def read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None:
        return self.backends[obj_type].read(store_id, obj_id)

    def read_many(self, obj_type: ObjType, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]:
        """The objects that exist, read side by side."""
        backend = self.backends[obj_type]
        found = {}
        for obj_id, data in zip(obj_ids, self._pool.map(lambda o: backend.read(store_id, o), obj_ids), strict=True):
            if data is not None:
                found[obj_id] = data
        return found

    def exists(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool:
        if self.index is None or isinstance(self.backends[obj_type], FsTypeBackend):
            return self.backends[obj_type].exists(store_id, obj_id)
        self._index_ready(obj_type)
        return self.index.contains(obj_type, store_id, obj_id)

    def write(self, obj_type: ObjType, store_id: str, obj_id: str, data: bytes, *, durable: bool = True) -> None:
        self.backends[obj_type].write(store_id, obj_id, data)
        self._indexed(obj_type, [(store_id, obj_id)])

    def iter_ids(self, obj_type: ObjType, store_id: str) -> Iterator[str]:
        return self.backends[obj_type].iter_ids(store_id)

    def batch(self, *, max_objects: int = 0, max_bytes: int = 0, flush_seconds: float = 0.0) -> PutBatch:
        return PutBatch(self)

    def prepare(self) -> None:
        """The index of each object-storage type ready (rebuilt from a LIST if it cannot be trusted)."""
        if self.index is not None:
            for obj_type, backend in self.backends.items():
                if not isinstance(backend, FsTypeBackend):
                    self._index_ready(obj_type)

    def indexed_types(self) -> list[ObjType]:
        """The types on object storage (an index keeps what they hold; the filesystem's need none)."""
        if self.index is None:
            return []
        return [t for t, b in self.backends.items() if not isinstance(b, FsTypeBackend)]

    def rebuild_index(self, types: Iterable[ObjType] | None = None) -> dict[ObjType, int]:
        """Rebuild the index of these object-storage types (default: all) from a LIST now; objects listed per
        type. A LIST that fails leaves that type untrusted (the next `prepare` rebuilds it)."""
        listed = {}
        assert self.index is not None or not self.indexed_types()
        for obj_type in self.indexed_types() if types is None else types:
            backend = self.backends[obj_type]
            assert self.index is not None and not isinstance(backend, FsTypeBackend)
            with self._ready_lock:
                self._ready.discard(obj_type)
                listed[obj_type] = self.index.rebuild(obj_type, backend.identity(), backend.list_all)
                self._ready.add(obj_type)
        return listed

    def distrust_index(self, obj_type: ObjType) -> None:
        if self.index is not None:
            self.index.distrust(obj_type)
            with self._ready_lock:
                self._ready.discard(obj_type)

    def check(self) -> None:
        for backend in self.backends.values():
            backend.check()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for backend in self.backends.values():
            backend.close()
        if self.index is not None:
            self.index.close()

    def _index_ready(self, obj_type: ObjType) -> None:
        if obj_type in self._ready:
            return
        assert self.index is not None
        with self._ready_lock:
            if obj_type not in self._ready:
                backend = self.backends[obj_type]
                self.index.ensure(obj_type, backend.identity(), backend.list_all)
                self._ready.add(obj_type)

    def _indexed(self, obj_type: ObjType, items: list[tuple[str, str]]) -> None:
        if self.index is not None and not isinstance(self.backends[obj_type], FsTypeBackend):
            self._index_ready(obj_type)
            self.index.add(obj_type, items)

    def _put_all(self, obj_type: ObjType, objects: list[tuple[str, str, bytes]]) -> None:
        """PUT each object; returns when all returned, raises the first failure (after all have ended)."""
        backend = self.backends[obj_type]
        if obj_type is ObjType.COMMITS or len(objects) == 1:
            for store_id, obj_id, data in objects:
                backend.write(store_id, obj_id, data)
                self._indexed(obj_type, [(store_id, obj_id)])
            return
        futures = [self._pool.submit(backend.write, store_id, obj_id, data) for store_id, obj_id, data in objects]
        concurrent.futures.wait(futures)
        done = [(s, o) for (s, o, _d), f in zip(objects, futures, strict=True) if f.exception() is None]
        self._indexed(obj_type, done)
        for future in futures:
            exc = future.exception()
            if exc is not None:
                raise exc


class PutBatch:
    """The `WriteBatch` of object storage: `put` writes through (see the module's doc); nothing to flush."""

    def __init__(self, store: BackendStore) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._putting = 0
        self._discarded = False

    def has(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool:
        return False  # an object is in the store as soon as its put returned

    def put(self, objects: Iterable[tuple[ObjType, str, str, bytes]]) -> None:
        with self._cond:
            if self._discarded:
                raise BatchDiscarded
            self._putting += 1
        try:
            by_type: dict[ObjType, list[tuple[str, str, bytes]]] = {}
            for obj_type, store_id, obj_id, data in objects:
                by_type.setdefault(obj_type, []).append((store_id, obj_id, data))
            # One call holds one level of the tree (blocks, or files, or one directory, or the commits).
            for obj_type in (ObjType.BLOCKS, ObjType.FS, ObjType.COMMITS):
                if obj_type in by_type:
                    self.store._put_all(obj_type, by_type[obj_type])
        finally:
            with self._cond:
                self._putting -= 1
                self._cond.notify_all()

    def flush(self) -> None:
        pass

    def seal(self) -> None:
        pass

    def discard(self) -> None:
        """Refuse later puts and wait for those in flight (a cancelled task does not stop its thread)."""
        with self._cond:
            self._discarded = True
            self._cond.wait_for(lambda: self._putting == 0)


def _check_protocol(store: BackendStore) -> ObjectStore:
    return store  # mypy: a BackendStore is an ObjectStore
