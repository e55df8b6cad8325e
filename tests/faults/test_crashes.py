"""kill -9 of the backup agent at random points of first syncs: after each, every published head is
restorable, the store holds no stray file and at most one batch of staged ones per worker, and copying
progress survives; at the end a clean sync."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.engine import EngineOptions, SyncEngine
from seafbackup_agent.sync.source import LocalSource
from seafbackup_agent.sync.verify import check_library
from seafbackup_lab.writer import bulk_files
from tests.backup_storage import stored_ids
from tests.faults.checks import assert_published_heads_restorable, leftovers, published_heads
from tests.seafile_checks import Closure, check_closure, check_tree, head_files

KILL_POINTS = int(os.environ.get("SEAFBACKUP_FAULT_KILL_POINTS", "30"))
WORKERS = 2  # the agents fixture pairs the lab with two workers
BATCH_OBJECTS, BATCH_BYTES = 8192, 256 << 20  # FilesystemStore.batch()'s limits
FIRST_SYNC_FILES = 3000  # 6,000 objects and a few directories: fewer than one batch
SEED = int(os.environ.get("SEAFBACKUP_FAULT_SEED", "20261201"))


def _objects_stored(lab, repo: str) -> int:
    return sum(len(stored_ids(lab.backup.seafile_data_dir, kind, repo)) for kind in ("fs", "blocks"))


def _primary_log_size(agents) -> int:
    return (agents.tmp / "primary-agent.log").stat().st_size


def _wait_for_copying(agents, since: int, timeout: float = 10) -> bool:
    """Until the primary's agent logs a request for blocks after `since` (its log's size when the backup
    agent was started): the backup agent is copying. False if not within `timeout` (the kill then comes
    during start-up)."""
    deadline = time.monotonic() + timeout
    with open(agents.tmp / "primary-agent.log", "rb") as fh:
        fh.seek(since)
        tail = b""
        while b"/blocks" not in tail:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
            tail = tail[-100:] + fh.read()
    return True


def _wait_for_kept_progress(lab, repos: list[str], timeout: float = 10) -> bool:
    """Until a library without a published head has objects in place (a flush by age of its first sync); False
    once every library is published or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        heads = published_heads(lab)
        unpublished = [r for r in repos if r not in heads]
        if not unpublished:
            return False
        if any(_objects_stored(lab, r) for r in unpublished):
            return True
        time.sleep(0.05)
    return False


def test_kill_9_at_random_points_of_first_syncs(primary, lab, agents):
    rng = random.Random(SEED)
    print(f"\nseed {SEED} (set SEAFBACKUP_FAULT_SEED to replay)")
    repos: list[str] = []

    def add_library(files: int) -> None:
        # Fewer objects than one batch: only flushes by age can keep its progress before the end.
        repo = primary.create_library(f"first{len(repos)}", "alice@example.com")
        primary.commit(repo, list(bulk_files(files, 2000, seed=len(repos))))
        repos.append(repo)

    started = time.monotonic()
    # Two small libraries synchronized first: their heads move during the kills (incremental syncs).
    for files in (30, 30):
        add_library(files)
    agents.start("primary", verbose=True)  # its access log (DEBUG) shows when the backup begins copying
    agents.start("backup")
    agents.wait_synchronized(2)
    agents.stop("backup", signal.SIGKILL)
    for files in (FIRST_SYNC_FILES, FIRST_SYNC_FILES):
        add_library(files)
    print(f"libraries written and the small ones synchronized in {time.monotonic() - started:.1f}s")
    verified = set(assert_published_heads_restorable(lab).items())
    resumed = 0  # kills after which a library without a head kept copied objects
    mid_copy = 0  # kills that came after the run had begun copying
    moves = 0  # head moves published during the kills
    for point in range(KILL_POINTS):
        if point % 2 == 0:
            repo = repos[point // 2 % 2]
            primary.commit(repo, list(bulk_files(20, 2000, seed=point, prefix=f"more{point}")))
        if all(r in published_heads(lab) for r in repos):
            add_library(FIRST_SYNC_FILES)  # a first sync for the kills to come
        since = _primary_log_size(agents)
        agents.start("backup")
        # Killed at a random point once copying has begun (how long start-up takes depends on the machine).
        mid_copy += _wait_for_copying(agents, since)
        if point % 2:
            # Every other kill comes once a first sync has placed objects by age: a random point of the copy
            # may fall before the first such flush every time on a fast machine (the age to reach is 0.5 s or
            # 4x the last flush's duration).
            _wait_for_kept_progress(lab, repos)
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            time.sleep(rng.uniform(0.0, 1.0))
        agents.stop("backup", signal.SIGKILL)

        heads = published_heads(lab)
        moves += len(set(heads.items()) - verified)
        assert_published_heads_restorable(lab, skip=verified)  # objects are never removed: checked once
        verified |= set(heads.items())
        left = leftovers(lab.backup.seafile_data_dir)
        assert left.strays == [], f"kill {point}: stray files {left.strays[:5]}"
        # Each run sweeps the runs before it before it stages anything (a kill may interrupt the sweep).
        assert sum(1 for files in left.owners.values() if files) <= 1, f"kill {point}: staged {left.owners}"
        assert len(left.staged) <= WORKERS * BATCH_OBJECTS and left.staged_bytes <= WORKERS * BATCH_BYTES
        if any(_objects_stored(lab, r) for r in repos if r not in heads):
            resumed += 1
        print(f"kill {point} at {time.monotonic() - started:.1f}s: {len(heads)}/{len(repos)} published, "
              f"{len(left.staged)} staged files ({left.staged_bytes} bytes)")
    print(f"{mid_copy} kills during a copy, {resumed} with a first sync's progress kept, {moves} heads published")
    assert mid_copy >= KILL_POINTS - 5, f"only {mid_copy} kills came during a copy"
    assert resumed >= 3, "first syncs never kept their progress across a kill"

    agents.start("backup")
    agents.wait_synchronized(len(repos), timeout=120)
    print(f"synchronized at {time.monotonic() - started:.1f}s")
    assert published_heads(lab) == {r: primary.head(r) for r in repos}
    assert_published_heads_restorable(lab)
    for repo in repos:
        check_closure(lab.backup.seafile_data_dir, repo, repo, primary.head(repo))  # the independent checker
        assert head_files(lab.backup.seafile_data_dir, repo, repo, primary.head(repo)) == head_files(
            lab.primary.seafile_data_dir, repo, repo, primary.head(repo))
    left = leftovers(lab.backup.seafile_data_dir)
    assert left.strays == [] and left.staged == [] and len(left.owners) <= 1  # the running agent's, empty


class StallingSource(LocalSource):
    """The primary as it is, each fs request a little slow; after `stall_after` of them, fs requests wait
    until `release` is set (the copy is then stuck mid-way, as when a kill -9 comes)."""

    def __init__(self, installation: SeafileInstallation, stall_after: int) -> None:
        super().__init__(installation)
        self.requests = 0
        self.stall_after = stall_after
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def fs_objects(self, store_id, obj_ids):
        self.requests += 1
        if self.requests > self.stall_after:
            self.stalled.set()
            await self.release.wait()
        await asyncio.sleep(0.02)
        return await super().fs_objects(store_id, obj_ids)


def test_a_long_copy_places_what_it_copied_as_it_goes(primary, lab, backup_db_privileges):
    """A library of fewer objects than one batch used to be placed only at the end: a crash at any point of
    its copy lost all of it. Now copied objects are placed at least every `flush_seconds`."""
    repo = primary.create_library("slow", "alice@example.com")
    primary.commit(repo, list(bulk_files(1000, 100)))  # 10 directories of 100 files
    source_inst = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
    options = EngineOptions(flush_seconds=0.2, dir_concurrency=1, fs_batch=10)  # ~100 fs requests

    async def stalled_copy() -> tuple[int, int]:
        source = StallingSource(source_inst, stall_after=60)
        sync = asyncio.create_task(SyncEngine(source, target, options).sync_library(repo))
        await asyncio.wait_for(source.stalled.wait(), timeout=20)
        await asyncio.sleep(0.3)
        # What a kill -9 now would leave: placed objects, each with everything it references.
        placed = _objects_stored(lab, repo)
        for fs_id in target.store.iter_ids(ObjType.FS, repo):
            check_tree(lab.backup.seafile_data_dir, repo, fs_id, Closure())
        sync.cancel()
        await asyncio.gather(sync, return_exceptions=True)
        return placed, source.requests

    try:
        placed, _ = asyncio.run(stalled_copy())
        assert placed > 0, "nothing placed after seconds of copying"
        assert target.rows.head(repo) is None
        resumed = asyncio.run(SyncEngine(LocalSource(source_inst), target).sync_library(repo))
        assert resumed.new_head == primary.head(repo)
        assert resumed.blocks < 1000, "the copy restarted from zero"
        report = check_library(target, repo)
        assert report is not None and report.ok and report.blocks == 1000
        assert leftovers(lab.backup.seafile_data_dir).staged == []
    finally:
        source_inst.close()
        target.close()


def test_the_backup_agent_sweeps_what_dead_runs_staged_when_it_starts(lab, agents):
    """A killed run's staging directory goes at the next start, also when that start has nothing to copy."""
    base = lab.backup.seafile_data_dir / "storage/.seafbackup-staging"
    dead = base / "999999-deadbeef"
    dead.mkdir(parents=True)
    (dead / "0123456789abcdef0123456789abcdef01234567.tmp").write_bytes(b"x" * 1000)
    (base / "999999-deadbeef.lock").write_bytes(b"")  # its owner is gone: nobody holds the lock
    agents.start("primary")
    agents.start("backup")
    deadline = time.monotonic() + 10
    while dead.exists():
        assert time.monotonic() < deadline, "the dead run's staging directory is still there"
        time.sleep(0.05)
    assert not (base / "999999-deadbeef.lock").exists()
