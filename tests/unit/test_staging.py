"""Write batches' staging directories: swept when their process is gone, never while it lives, and nothing
left behind by a failed sync even while sibling puts are still running."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from seafbackup_agent.seafile.staging import STAGING_DIR, staging_area, staging_files
from seafbackup_agent.seafile.storage import BatchDiscarded, FilesystemStore, ObjType, WriteBatch

REPO = "8e4d6ffc-e0b4-4a23-9c23-4bd8f7bbf5a1"
HOLD_AREA = """
import sys, time
from pathlib import Path
from seafbackup_agent.seafile.staging import staging_area
area = staging_area(Path(sys.argv[1]))
(area.dir / "staged").write_bytes(b"x" * 1000)
print(area.dir.name, flush=True)
time.sleep(60)
"""


def _process_with_a_staging_area(base) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AREA, str(base)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_dead_processs_staging_directory_is_swept_and_a_live_ones_is_not(tmp_path):
    base = tmp_path / "storage" / STAGING_DIR
    alive, alive_owner = _process_with_a_staging_area(base)
    dead, dead_owner = _process_with_a_staging_area(base)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        area = staging_area(base)  # this process's: sweeps when it is made
        assert area.swept == 1
        assert not (base / dead_owner).exists() and not (base / f"{dead_owner}.lock").exists()
        assert sorted(p.name for p in base.iterdir() if p.is_dir()) == sorted([alive_owner, area.dir.name])
        assert [p.parent.name for p in staging_files(tmp_path / "storage")] == [alive_owner]
    finally:
        alive.kill()
        alive.wait()


def test_a_staging_directory_removed_under_a_running_process_is_made_again(tmp_path):
    store = FilesystemStore(tmp_path)
    batch = store.batch()
    batch.put([(ObjType.BLOCKS, REPO, "a" * 40, b"a")])
    batch.seal()
    shutil.rmtree(tmp_path / "storage" / STAGING_DIR)
    batch = store.batch()
    batch.put([(ObjType.BLOCKS, REPO, "b" * 40, b"b")])
    batch.seal()
    assert store.read(ObjType.BLOCKS, REPO, "b" * 40) == b"b"


def test_discard_waits_for_puts_still_running_in_other_threads(tmp_path, monkeypatch):
    """A failed sync discards its batch while sibling tasks' threads are still writing (a cancelled task
    does not stop its thread): their temporary files must not outlive the discard."""
    store = FilesystemStore(tmp_path)
    batch = store.batch()
    writing, release = threading.Event(), threading.Event()
    real_write = WriteBatch._write_temporary

    def slow_write(self, obj_type, obj_id, data):
        tmp = real_write(self, obj_type, obj_id, data)
        writing.set()
        release.wait(10)
        return tmp

    monkeypatch.setattr(WriteBatch, "_write_temporary", slow_write)
    outcome: list[BaseException] = []

    def put() -> None:
        try:
            batch.put([(ObjType.BLOCKS, REPO, "c" * 40, b"c"), (ObjType.BLOCKS, REPO, "d" * 40, b"d")])
        except BaseException as exc:
            outcome.append(exc)

    putter = threading.Thread(target=put)
    putter.start()
    assert writing.wait(10)
    discarder = threading.Thread(target=batch.discard)
    discarder.start()
    discarder.join(0.3)
    assert discarder.is_alive(), "discard returned while a put was still writing"
    release.set()
    putter.join(10)
    discarder.join(10)
    assert not discarder.is_alive() and isinstance(outcome[0], BatchDiscarded)
    assert staging_files(tmp_path / "storage") == []
    assert not store.exists(ObjType.BLOCKS, REPO, "c" * 40)
    with pytest.raises(BatchDiscarded):
        batch.put([(ObjType.BLOCKS, REPO, "e" * 40, b"e")])
    assert staging_files(tmp_path / "storage") == []


def test_a_batch_flushes_by_age_as_well_as_by_size(tmp_path):
    store = FilesystemStore(tmp_path)
    batch = store.batch(flush_seconds=0.2)
    batch.put([(ObjType.BLOCKS, REPO, "f" * 40, b"f")])
    assert not store.exists(ObjType.BLOCKS, REPO, "f" * 40)
    time.sleep(0.25)
    batch.put([(ObjType.BLOCKS, REPO, "0" * 40, b"0")])  # the batch is older than flush_seconds: placed
    assert store.exists(ObjType.BLOCKS, REPO, "f" * 40) and store.exists(ObjType.BLOCKS, REPO, "0" * 40)
    batch.seal()
