"""Where write batches keep objects before placing them: one directory per process, swept at start.

`<storage>/.seafbackup-staging/<owner>/` holds the temporary files of a process's batches; `<owner>.lock`
beside it is flock'ed for the process's lifetime, so the kernel frees it when the process dies however
it dies (kill -9 included). The first batch of a process removes the directories whose lock is free:
after any number of crashes the store holds its objects plus the one batch the last run left.
Seafile reads objects under `storage/<type>/<store>/` only, so `storage/.seafbackup-staging` is outside
everything it reads. When a type's directory is on another filesystem (a mount point or a symlink), its
staging directory has to be inside it, `storage/<type>/.seafbackup-staging`, beside the store directories
(not a library id; how seaf-gc's store listing treats such a name has not been checked).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import secrets
import shutil
import threading
from pathlib import Path

STAGING_DIR = ".seafbackup-staging"
_LOCK_SUFFIX = ".lock"


class StagingArea:
    """This process's staging directory under one base directory (create with `staging_area()`)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.dir, self._lock_fd = _claim(base)
        self.swept = sweep_dead(base)
        self._names = itertools.count()

    def temporary_path(self, obj_id: str) -> str:
        # A counter, not the id alone: two batches of this process may stage the same object at once
        # (a virtual repo and its origin share a store).
        return f"{self.dir}/{next(self._names):x}-{obj_id}"


def _claim(base: Path) -> tuple[Path, int]:
    """A fresh owner name with its lock held; the lock file exists before the directory, so a sweep
    never sees a live process's directory without its lock."""
    while True:
        owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock_path = base / (owner + _LOCK_SUFFIX)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A concurrent sweep may have taken the lock between open and flock and removed the file.
        try:
            still_there = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_there = False
        if still_there:
            directory = base / owner
            directory.mkdir()
            return directory, fd
        os.close(fd)


def sweep_dead(base: Path) -> int:
    """Remove the staging directories of processes that are gone; returns how many were removed."""
    removed = 0
    for entry in sorted(os.listdir(base)):
        if entry.endswith(_LOCK_SUFFIX):
            continue
        lock_path = base / (entry + _LOCK_SUFFIX)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None  # a sweep stopped between removing the lock and the directory
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
            shutil.rmtree(base / entry, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            removed += 1
        finally:
            if fd is not None:
                os.close(fd)
    for entry in os.listdir(base):  # locks left by a sweep that stopped after removing the directory
        if entry.endswith(_LOCK_SUFFIX) and not (base / entry[: -len(_LOCK_SUFFIX)]).exists():
            _remove_free_lock(base / entry)
    return removed


def _remove_free_lock(lock_path: Path) -> None:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock_path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # a process is between creating its lock and its directory
    finally:
        os.close(fd)


def staging_files(storage_root: Path) -> list[Path]:
    """Every temporary file in the staging directories under `storage_root` (live processes' included)."""
    found: list[Path] = []
    for base in staging_bases(storage_root):
        found += [p for p in base.rglob("*") if p.is_file() and not p.name.endswith(_LOCK_SUFFIX)]
    return found


def staging_bases(storage_root: Path) -> list[Path]:
    """The staging base directories under `storage_root`: its own, and those of object types whose
    directory is on another filesystem (see `staging_base`)."""
    candidates = [storage_root / STAGING_DIR] + [storage_root / t / STAGING_DIR for t in ("commits", "fs", "blocks")]
    return [c for c in candidates if c.is_dir()]


def staging_base(storage_root: Path, type_dir: Path) -> Path:
    """Where objects bound for `type_dir` are staged: on the same filesystem, since they are renamed into
    place. Normally `<storage>/.seafbackup-staging`; inside the type's directory when that directory is a
    mount point or a symlink to another filesystem."""
    try:
        same = os.stat(type_dir).st_dev == os.stat(storage_root).st_dev
    except FileNotFoundError:
        same = True  # created below the storage root, on its filesystem
    return storage_root / STAGING_DIR if same else type_dir / STAGING_DIR


_areas: dict[str, StagingArea] = {}
_areas_lock = threading.Lock()


def staging_area(base: Path) -> StagingArea:
    """This process's staging area under `base`, created (and the dead ones swept) on first use, and again
    when its directory has gone (someone removed it, or the whole store, under the running process)."""
    key = os.path.realpath(base)
    with _areas_lock:
        area = _areas.get(key)
        if area is not None and not area.dir.is_dir():
            os.close(area._lock_fd)
            area = None
        if area is None:
            area = _areas[key] = StagingArea(Path(key))
        return area
