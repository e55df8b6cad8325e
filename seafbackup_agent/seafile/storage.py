"""Object storage backends. The filesystem backend is Seafile's `storage/<type>/<store>/<xx>/<38>`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from seafbackup_agent.seafile.direct_io import write_new_file
from seafbackup_agent.seafile.filesystems import storage_error
from seafbackup_agent.seafile.ids import is_object_file_name
from seafbackup_agent.seafile.staging import StagingArea, staging_area, staging_base


class ObjType(StrEnum):
    COMMITS = "commits"
    FS = "fs"
    BLOCKS = "blocks"


class ObjectBatch(Protocol):
    """The objects of one sync: `put` in closure order, `seal` before the head is published."""

    def has(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool: ...

    def put(self, objects: Iterable[tuple[ObjType, str, str, bytes]]) -> None: ...

    def flush(self) -> None: ...

    def seal(self) -> None: ...

    def discard(self) -> None: ...


class ObjectStore(Protocol):
    """What the sync engine and the lab need from a Seafile object store."""

    def read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None: ...

    def exists(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool: ...

    def write(self, obj_type: ObjType, store_id: str, obj_id: str, data: bytes, *, durable: bool = True) -> None: ...

    def iter_ids(self, obj_type: ObjType, store_id: str) -> Iterator[str]: ...

    def batch(self, *, max_objects: int = ..., max_bytes: int = ..., flush_seconds: float = ...) -> ObjectBatch: ...

    def read_many(self, obj_type: ObjType, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]: ...

    def prepare(self) -> None:
        """Get ready to answer `exists` quickly (blocking: from a worker thread)."""
        ...

    def close(self) -> None: ...


class FilesystemStore:
    """`<seafile-data>/storage/...` written the way Seafile writes it, atomically.

    `write` writes one object to a hidden temporary name in its final directory, fsyncs it and renames it
    into place, as Seafile does; `batch` writes many through a staging directory, durable together.
    Only exact 38-hex file names count as objects, so an interrupted write leaves nothing visible.
    """

    def __init__(self, seafile_data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(seafile_data_dir) / "storage"
        self._root = str(self.root)
        self._staging: dict[ObjType, StagingArea] = {}

    def path(self, obj_type: ObjType, store_id: str, obj_id: str) -> str:
        return f"{self._root}/{obj_type.value}/{store_id}/{obj_id[:2]}/{obj_id[2:]}"

    def read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None:
        try:
            with open(self.path(obj_type, store_id, obj_id), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def exists(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool:
        return os.path.isfile(self.path(obj_type, store_id, obj_id))

    def write(self, obj_type: ObjType, store_id: str, obj_id: str, data: bytes, *, durable: bool = True) -> None:
        """One object, the way Seafile's `save_obj_contents()` writes it (fsync of the file, and of the
        directory for commits). The sync engine writes many objects at once with `batch()` instead."""
        final = self.path(obj_type, store_id, obj_id)
        tmp = _write_temporary(final, data, fsync=durable)
        os.rename(tmp, final)
        if durable and obj_type is ObjType.COMMITS:
            _fsync_directory(os.path.dirname(final))

    def read_many(self, obj_type: ObjType, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]:
        """The objects that exist (missing ids are left out)."""
        found = {}
        for obj_id in obj_ids:
            data = self.read(obj_type, store_id, obj_id)
            if data is not None:
                found[obj_id] = data
        return found

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        pass

    def batch(self, *, max_objects: int = 8192, max_bytes: int = 256 << 20, flush_seconds: float = 0.5) -> WriteBatch:
        return WriteBatch(self, max_objects=max_objects, max_bytes=max_bytes, flush_seconds=flush_seconds)

    def staging(self, obj_type: ObjType, *, check: bool = False) -> StagingArea:
        """This process's staging directory for objects of `obj_type` (made, and dead ones swept, once;
        `check`: made again if it has gone)."""
        area = self._staging.get(obj_type)
        if area is None or check:
            base = staging_base(self.root, self.root / obj_type.value)
            try:
                area = self._staging[obj_type] = staging_area(base)
            except OSError as exc:
                raise storage_error(exc, str(base), "creating the staging directory in") from exc
        return area

    def iter_ids(self, obj_type: ObjType, store_id: str) -> Iterator[str]:
        base = self.root / obj_type.value / store_id
        if not base.is_dir():
            return
        for prefix in sorted(os.listdir(base)):
            if len(prefix) != 2:
                continue
            for name in sorted(os.listdir(base / prefix)):
                if is_object_file_name(name) and all(c in "0123456789abcdef" for c in prefix):
                    yield prefix + name


@dataclass(frozen=True, slots=True)
class _Staged:
    key: tuple[ObjType, str, str]
    tmp: str
    final: str


class BatchDiscarded(RuntimeError):
    """A put reached a batch its failed sync has already discarded (a sibling task still in its thread)."""


class WriteBatch:
    """The objects of one sync, made durable together instead of one fsync each.

    `put` writes each object under a temporary name in this process's staging directory (see
    `staging.py`), without fsync. `flush` makes every staged content durable with one `syncfs`, then
    renames the objects into place in the order they were put. The engine puts children before parents
    (blocks, then files, then each directory after its subtree, commits last), so whatever prefix of
    those renames survives a crash, every visible object has all it references visible too: a rename
    reaches the disk only after the contents it names (the syncfs before it) and not before the renames
    issued earlier (the journal of ext4/XFS commits metadata in order). `seal` flushes and makes the
    renames themselves durable; call it before the database points at the objects.

    A batch flushes when it holds `max_objects` or `max_bytes`, or when its oldest staged object is
    `flush_seconds` old, so that a crash loses at most that much of a long copy. A crash leaves at most
    one batch of temporary files, in a staging directory the next run removes.
    """

    def __init__(self, store: FilesystemStore, *, max_objects: int, max_bytes: int, flush_seconds: float) -> None:
        self.store = store
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.flush_seconds = flush_seconds
        self._staged: list[_Staged] = []
        self._keys: set[tuple[ObjType, str, str]] = set()
        self._bytes = 0
        self._oldest = 0.0
        self._flush_cost = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._putting = 0
        self._discarded = False

    def has(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool:
        """Staged and not yet in place (a later `exists` on the store sees it once it is)."""
        return (obj_type, store_id, obj_id) in self._keys

    def put(self, objects: Iterable[tuple[ObjType, str, str, bytes]]) -> None:
        """Stage objects (blocking: run in a worker thread). Flushes when the batch is full or old."""
        with self._cond:
            if self._discarded:
                raise BatchDiscarded
            self._putting += 1
        try:
            for obj_type, store_id, obj_id, data in objects:
                key = (obj_type, store_id, obj_id)
                if key in self._keys:
                    continue
                tmp = self._write_temporary(obj_type, obj_id, data)
                final = self.store.path(obj_type, store_id, obj_id)
                with self._cond:
                    if self._discarded:
                        _unlink_quietly(tmp)
                        raise BatchDiscarded
                    if not self._staged:
                        self._oldest = time.monotonic()
                    self._staged.append(_Staged(key, tmp, final))
                    self._keys.add(key)
                    self._bytes += len(data)
                    # By age no more often than 4x the last flush took: on a slow disk, at most a fifth of
                    # the time goes to flushes that the batch's size did not call for.
                    due = (len(self._staged) >= self.max_objects or self._bytes >= self.max_bytes
                           or time.monotonic() - self._oldest >= max(self.flush_seconds, 4 * self._flush_cost))
                if due:
                    self.flush()
        finally:
            with self._cond:
                self._putting -= 1
                self._cond.notify_all()

    def flush(self, *, barrier: bool = True) -> None:
        """Contents durable, then every staged object renamed into place, in staging order. `barrier=False`:
        the caller has made the contents durable since the last put (`seal_together`)."""
        with self._cond:
            if not self._staged or self._discarded:
                return
            started = time.monotonic()
            if barrier:
                self._durable()
            placed = 0
            try:
                for staged in self._staged:
                    self._place(staged.tmp, staged.final)
                    placed += 1
            finally:
                for staged in self._staged[:placed]:
                    self._keys.discard(staged.key)
                del self._staged[:placed]
                self._oldest = time.monotonic()
                self._flush_cost = self._oldest - started
            self._bytes = 0

    def seal(self) -> None:
        """Everything put is in place and durable, names included."""
        self.flush()
        self._durable()

    def discard(self) -> None:
        """Remove the temporary files of objects not yet placed (after a failed sync). Waits for puts still
        running in other threads (a cancelled task does not stop its thread); later puts are refused."""
        with self._cond:
            self._discarded = True
            self._cond.wait_for(lambda: self._putting == 0)
            for staged in self._staged:
                _unlink_quietly(staged.tmp)
            self._staged.clear()
            self._keys.clear()
            self._bytes = 0

    # The filesystem steps of a batch, separate so tests can interrupt each.
    def _write_temporary(self, obj_type: ObjType, obj_id: str, data: bytes) -> str:
        tmp = self.store.staging(obj_type).temporary_path(obj_id)
        try:
            try:
                write_new_file(tmp, data, fsync=False)
            except FileNotFoundError:  # the staging directory was removed under us
                tmp = self.store.staging(obj_type, check=True).temporary_path(obj_id)
                write_new_file(tmp, data, fsync=False)
        except OSError as exc:
            raise storage_error(exc, tmp, "writing") from exc
        return tmp

    def _place(self, tmp: str, final: str) -> None:
        try:
            try:
                os.rename(tmp, final)
            except FileNotFoundError:  # the object's directory does not exist yet
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(tmp, final)
        except OSError as exc:
            raise storage_error(exc, final, "placing") from exc

    def _durable(self) -> None:
        try:
            durable(self.store.root)
        except OSError as exc:
            raise storage_error(exc, str(self.store.root), "making durable") from exc


def seal_together(batches: Sequence[ObjectBatch]) -> None:
    """`seal()` each batch (every put of each has returned), sharing the barriers between the filesystem
    batches of one store: one `syncfs` makes all their staged contents durable, each batch's objects are
    renamed into place in the order it put them, one more `syncfs` makes the names durable."""
    files = [b for b in batches if isinstance(b, WriteBatch)]
    roots = {str(b.store.root): b for b in files}
    for batch in roots.values():
        batch._durable()
    for batch in files:
        batch.flush(barrier=False)
    for batch in roots.values():
        batch._durable()
    for other in batches:
        if not isinstance(other, WriteBatch):
            other.seal()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_temporary(final: str, data: bytes, *, fsync: bool) -> str:
    """`data` under a hidden temporary name in `final`'s directory (created if missing)."""
    directory, name = final.rsplit("/", 1)
    tmp = f"{directory}/.{name}.{secrets.token_hex(4)}.tmp"
    try:
        write_new_file(tmp, data, fsync=fsync)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        write_new_file(tmp, data, fsync=fsync)
    return tmp


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


class _SyncfsGroup:
    """Concurrent callers on one filesystem share a `syncfs`: each waits for one that *started* after it
    asked (one already running may have begun before the caller's writes). The agent's workers each
    need two per sync; on a busy disk this turns N barriers into about one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False

    def sync(self, path: str | os.PathLike[str]) -> None:
        with self._cond:
            needed = self._started + 1
            while self._done < needed:
                if not self._running:
                    self._running = True
                    self._started += 1
                    mine = self._started
                    break
                self._cond.wait()
            else:
                return
        ok = False
        try:
            syncfs(path)
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:  # a failed syncfs satisfies nobody: the next caller tries again
                    self._done = mine
                self._cond.notify_all()


_groups: dict[int, _SyncfsGroup] = {}
_groups_lock = threading.Lock()


def durable(path: str | os.PathLike[str]) -> None:
    """Everything written so far on `path`'s filesystem is on disk (a shared `syncfs`)."""
    device = os.stat(path).st_dev
    with _groups_lock:
        group = _groups.get(device)
        if group is None:
            group = _groups[device] = _SyncfsGroup()
    group.sync(path)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Linux `syncfs(2)`: write back and commit everything dirty on the filesystem holding `path`
    (one journal commit for a whole batch; reports writeback errors since Linux 5.8)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}", str(path))
    finally:
        os.close(fd)
