"""New files written around the page cache when they are large (`O_DIRECT`).

A backup host writes blocks it will not read again soon: through the page cache, each one first takes fresh
pages of memory (the kernel's copy into them was the largest cost of a first sync: bench/findings.md), stays
dirty until a `syncfs` writes it back, and pushes out of the cache what Seafile on that host does read. Written
with `O_DIRECT`, the data goes from a reused, aligned buffer to the disk. The durability rules
do not change: a direct write may sit in the disk's volatile cache until a flush, and the write batch's `syncfs`
(which flushes that cache and commits the file's metadata) comes before any rename, as for buffered data.

`O_DIRECT` wants the buffer, the offset and the length aligned (to the device's logical block; 4096 covers the
common ones): the aligned part of the data goes direct, the tail (under 4096 bytes) through the page cache. A
filesystem that refuses `O_DIRECT` (EINVAL) is remembered by directory and written the usual way from then on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator

DIRECT_MIN_BYTES = 256 << 10
"""Smaller objects go through the page cache: a direct write waits for the disk, which costs small files more
than the copy it saves (4 KiB files: 21 against 92 MB/s measured here)."""
ALIGNMENT = 4096
CHUNK_BYTES = 2 << 20
"""The size of an aligned buffer (an object is written in pieces of this size). Buffers are kept for reuse, one
for each direct write that ran at the same time as others: a few, not one per thread of the pool."""

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_refused: set[str] = set()
"""Directories whose filesystem refused `O_DIRECT`."""
_spare_buffers: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def write_new_file(path: str, data: bytes | memoryview, *, fsync: bool) -> None:
    """`data` in a new file at `path` (which must not exist); nothing is left there if that fails."""
    directory = os.path.dirname(path)
    fd = _open_direct(path, directory) if len(data) >= DIRECT_MIN_BYTES and directory not in _refused else None
    direct = fd is not None
    if fd is None:
        fd = os.open(path, _NEW_FILE, 0o644)
    try:
        view = memoryview(data).cast("B")
        offset = _write_direct(fd, view, directory) if direct else 0
        while offset < len(view):
            offset += os.write(fd, view[offset:])
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _open_direct(path: str, directory: str) -> int | None:
    """The new file's descriptor, opened for direct I/O; None when the filesystem refused it."""
    try:
        return os.open(path, _NEW_FILE | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    _refused.add(directory)
    # Linux creates the file before it checks that the filesystem can do direct I/O.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return None


def _write_direct(fd: int, view: memoryview, directory: str) -> int:
    """Writes the aligned part of `view` with `O_DIRECT`, then clears the flag on `fd`; returns how far it got
    (the caller writes the rest through the page cache)."""
    aligned = len(view) - len(view) % ALIGNMENT
    offset = 0
    try:
        with _aligned_buffer() as buffer:
            while offset < aligned:
                size = min(CHUNK_BYTES, aligned - offset)
                buffer[:size] = view[offset:offset + size]
                written = os.write(fd, memoryview(buffer)[:size])
                offset += written
                if written < size:
                    break  # a short write leaves an unaligned offset: the rest goes the usual way
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _refused.add(directory)  # stricter alignment than ours, or direct writes refused after all
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    return offset


@contextlib.contextmanager
def _aligned_buffer() -> Iterator[mmap.mmap]:
    """A spare buffer, or a new one (an anonymous mapping starts on a page boundary); kept for reuse after."""
    with _spare_lock:
        buffer = _spare_buffers.pop() if _spare_buffers else None
    if buffer is None:
        buffer = mmap.mmap(-1, CHUNK_BYTES)
    try:
        yield buffer
    finally:
        with _spare_lock:
            _spare_buffers.append(buffer)
