"""Large objects are written around the page cache, byte for byte, and the usual way where the filesystem or
the data's size says so."""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import threading
from pathlib import Path

import pytest

from seafbackup_agent.seafile import direct_io
from seafbackup_agent.seafile.direct_io import ALIGNMENT, CHUNK_BYTES, DIRECT_MIN_BYTES, write_new_file
from seafbackup_agent.seafile.storage import FilesystemStore, ObjType

REPO = "8e4d6ffc-e0b4-4a23-9c23-4bd8f7bbf5a1"


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """A directory on a disk filesystem (on tmpfs, "direct" writes still land in memory)."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert kind != "tmpfs", f"{tmp_path} is on tmpfs: run the tests with a TMPDIR on a disk"
    return tmp_path


def resident_bytes(path: Path) -> int:
    """How much of the file is in the page cache (util-linux `fincore`)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


@pytest.mark.parametrize("size", [
    DIRECT_MIN_BYTES, DIRECT_MIN_BYTES + 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + ALIGNMENT + 1,
    4 * CHUNK_BYTES + 123, DIRECT_MIN_BYTES - 1, 0,
])
def test_every_byte_arrives_whatever_the_size(disk_dir, size):
    data = secrets.token_bytes(size)
    path = disk_dir / "object"
    write_new_file(str(path), data, fsync=True)
    assert path.read_bytes() == data
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_large_object_leaves_the_page_cache_alone_and_a_small_one_goes_through_it(disk_dir):
    large, small = disk_dir / "large", disk_dir / "small"
    write_new_file(str(large), secrets.token_bytes(8 * CHUNK_BYTES + 100), fsync=False)
    write_new_file(str(small), secrets.token_bytes(DIRECT_MIN_BYTES - ALIGNMENT), fsync=False)
    assert resident_bytes(large) <= ALIGNMENT  # its tail only
    assert resident_bytes(small) == DIRECT_MIN_BYTES - ALIGNMENT


def test_a_batch_writes_a_large_block_direct(disk_dir):
    store = FilesystemStore(disk_dir)
    block = secrets.token_bytes(3 * CHUNK_BYTES + 7)
    batch = store.batch()
    batch.put([(ObjType.BLOCKS, REPO, "ab" * 20, block)])
    batch.seal()
    path = Path(store.path(ObjType.BLOCKS, REPO, "ab" * 20))
    assert resident_bytes(path) <= ALIGNMENT
    assert store.read(ObjType.BLOCKS, REPO, "ab" * 20) == block


def test_a_filesystem_that_refuses_direct_io_is_written_the_usual_way(disk_dir, monkeypatch):
    """Linux creates the file, then refuses O_DIRECT with EINVAL (a filesystem without direct I/O): the
    file goes away, the data is written through the page cache, and the directory is not tried again."""
    real_open = os.open
    refused: list[str] = []

    def open_without_direct(path, flags, mode=0o777):
        if flags & os.O_DIRECT:
            os.close(real_open(path, flags & ~os.O_DIRECT, mode))
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(direct_io.os, "open", open_without_direct)
    monkeypatch.setattr(direct_io, "_refused", set())
    data = secrets.token_bytes(CHUNK_BYTES + 5)
    write_new_file(str(disk_dir / "first"), data, fsync=True)
    write_new_file(str(disk_dir / "second"), data, fsync=True)
    assert (disk_dir / "first").read_bytes() == data and (disk_dir / "second").read_bytes() == data
    assert refused == [str(disk_dir / "first")]
    assert sorted(p.name for p in disk_dir.iterdir()) == ["first", "second"]


def test_a_failed_write_leaves_no_file(disk_dir, monkeypatch):
    real_write = os.write

    def full_disk(fd, data):
        if os.fstat(fd).st_size >= CHUNK_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(direct_io.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_new_file(str(disk_dir / "object"), secrets.token_bytes(3 * CHUNK_BYTES), fsync=False)
    assert list(disk_dir.iterdir()) == []


def test_threads_that_write_one_after_the_other_share_one_buffer(disk_dir, monkeypatch):
    """The agent's pool has 32 threads: a buffer for each would be 64 MiB kept for nothing."""
    monkeypatch.setattr(direct_io, "_spare_buffers", [])
    data = secrets.token_bytes(CHUNK_BYTES + 1)
    for i in range(8):
        writer = threading.Thread(target=write_new_file, args=(str(disk_dir / f"object{i}"), data),
                                  kwargs={"fsync": False})
        writer.start()
        writer.join()
    assert len(direct_io._spare_buffers) == 1
    assert all((disk_dir / f"object{i}").read_bytes() == data for i in range(8))
