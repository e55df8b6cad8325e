"""The sync engine against two real MariaDB servers and real Seafile-format storage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from seafbackup_agent.cli.main import main as cmd_main
from seafbackup_agent.errors import DatabaseError
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.library import HeadMove, publish_head
from seafbackup_agent.seafile.staging import STAGING_DIR, staging_files
from seafbackup_agent.seafile.storage import ObjType, WriteBatch
from seafbackup_agent.sync.engine import EngineOptions, SyncEngine
from seafbackup_agent.sync.result import NotDescendantError, Outcome, SourceObjectError, SyncError
from seafbackup_agent.sync.source import LocalSource
from seafbackup_lab.writer import Delete, Mkdir, Put, Rename, bulk_files
from tests.helpers import root_sql as _root_sql
from tests.seafile_checks import Closure, check_closure, check_tree, head_files


class Pair:
    """A source (the lab primary) and a target (the lab backup) for the engine."""

    def __init__(self, lab):
        self.lab = lab
        self.source = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
        self.target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    def sync(self, repo_id, *, force=False, options=None):
        engine = SyncEngine(LocalSource(self.source), self.target, options)
        return asyncio.run(engine.sync_library(repo_id, force=force))

    def backup_head(self, repo_id):
        return self.target.rows.head(repo_id)

    def assert_consistent(self, repo_id, store_id=None, **kwargs):
        """The backup's head (if any) has its whole closure on the backup's disk."""
        head = self.backup_head(repo_id)
        if head is not None:
            check_closure(self.lab.backup.seafile_data_dir, repo_id, store_id or repo_id, head, **kwargs)
        return head

    def assert_same_files(self, repo_id, store_id=None):
        head = self.backup_head(repo_id)
        store = store_id or repo_id
        assert head == self.source.rows.head(repo_id)
        assert head_files(self.lab.backup.seafile_data_dir, repo_id, store, head) == head_files(
            self.lab.primary.seafile_data_dir, repo_id, store, head)

    def close(self):
        self.source.close()
        self.target.close()


@pytest.fixture
def pair(lab, backup_db_privileges):
    p = Pair(lab)
    yield p
    p.close()


def _rows(inst, sql, args=()):
    with inst.rows.conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _storage_files(data_dir: Path) -> dict[str, bytes]:
    """Every file of the store, without the staging area (which must hold no temporary file)."""
    root = data_dir / "storage"
    assert staging_files(root) == []
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and STAGING_DIR not in p.parts}


def _rich_library(primary):
    repo = primary.create_library("rich", "alice@example.com")
    base = primary.put_files(repo, {"hello.txt": b"hello", "docs/a.md": b"# a\n" * 50, "empty.txt": b""})
    primary.commit(repo, [Mkdir("empty-dir"), Put("docs/big.bin", os.urandom(300_000))])
    side = primary.commit(repo, [Put("side.txt", b"from a client")], parent_id=base, move_branch=False)
    primary.commit(repo, [Rename("hello.txt", "docs/hello.txt"), Put("ünï/文件.txt", "grüße".encode())])
    primary.commit(repo, [Put("side.txt", b"from a client")], second_parent_id=side,
                   description="Auto merge by system")
    primary.commit(repo, [Delete("empty.txt")])
    return repo


def test_initial_sync_copies_the_whole_history_byte_for_byte(primary, pair, lab):
    repo = _rich_library(primary)
    result = pair.sync(repo)
    assert result.outcome is Outcome.SYNCHRONIZED and result.new_head == primary.head(repo)
    assert result.commits == 7  # created, 4 on master, the side branch, the merge
    closure = check_closure(lab.backup.seafile_data_dir, repo, repo, pair.backup_head(repo))
    assert len(closure.commits) == 7
    pair.assert_same_files(repo)
    # Copied objects are the primary's bytes, never re-encoded; nothing else is on the backup's disk.
    assert _storage_files(lab.backup.seafile_data_dir) == _storage_files(lab.primary.seafile_data_dir)
    assert _rows(pair.target, "SELECT branch_name FROM RepoHead WHERE repo_id=%s", (repo,)) == (("master",),)
    assert _rows(pair.target, "SELECT COUNT(*) FROM Repo WHERE repo_id=%s", (repo,)) == ((1,),)
    # A second sync has nothing to do.
    again = pair.sync(repo)
    assert again.outcome is Outcome.UNCHANGED and again.objects == 0


def test_incremental_sync_copies_only_what_changed(primary, pair):
    repo = primary.create_library("big", "alice@example.com")
    primary.commit(repo, list(bulk_files(3000, 64)))
    first = pair.sync(repo)
    assert first.blocks == 3000
    primary.commit(repo, [Put("bulk/d00017/f0001711.bin", b"changed")])
    result = pair.sync(repo)
    # One commit; the changed file; its dir, the bulk dir and the root; one block. Nothing else.
    assert (result.commits, result.fs_objects, result.blocks) == (1, 4, 1)
    pair.assert_same_files(repo)


def _every_visible_object_is_complete(data_dir: Path, repo_id: str) -> None:
    """What the engine's skip-what-exists walk relies on: every commit on disk has its whole closure
    (tree, blocks, parents) on disk, so every directory and file object reached from it does too."""
    for path in (data_dir / "storage" / "commits" / repo_id).glob("??/*"):
        if not path.name.startswith("."):
            check_closure(data_dir, repo_id, repo_id, path.parent.name + path.name)
    for path in (data_dir / "storage" / "fs" / repo_id).glob("??/*"):
        if not path.name.startswith("."):
            check_tree(data_dir, repo_id, path.parent.name + path.name, Closure())


def test_large_blocks_in_flight_stay_within_their_byte_budget(primary, pair):
    """The agent's memory stays bounded whatever the block size: blocks of multi-block files are fetched only while
    their bytes fit the budget (here 4 blocks of 64 KiB, under 8 request slots)."""
    repo = primary.create_library("budget", "alice@example.com")
    primary.commit(repo, [Put(f"big{i}.bin", random.Random(i).randbytes(2 << 20)) for i in range(2)])  # 64 blocks
    in_flight = {"now": 0, "most": 0}

    class SlowSource(LocalSource):
        async def block(self, store_id, block_id):
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
            try:
                await asyncio.sleep(0.01)
                return await super().block(store_id, block_id)
            finally:
                in_flight["now"] -= 1

    engine = SyncEngine(SlowSource(pair.source), pair.target,
                        EngineOptions(block_concurrency=8, block_bytes=256 << 10))
    result = asyncio.run(engine.sync_library(repo))
    assert result.blocks == 64
    assert 2 <= in_flight["most"] <= 4, in_flight
    pair.assert_same_files(repo)


def test_packs_of_small_blocks_in_flight_stay_within_the_same_budget(primary, pair):
    repo = primary.create_library("packs", "alice@example.com")
    primary.commit(repo, list(bulk_files(400, 4000)))  # 1.6 MB of single-block files
    in_flight = {"now": 0, "most": 0}

    class SlowSource(LocalSource):
        async def blocks(self, store_id, block_ids):
            in_flight["now"] += sum(4000 for _ in block_ids)
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
            try:
                await asyncio.sleep(0.01)
                return await super().blocks(store_id, block_ids)
            finally:
                in_flight["now"] -= sum(4000 for _ in block_ids)

    engine = SyncEngine(SlowSource(pair.source), pair.target,
                        EngineOptions(block_concurrency=8, block_pack_bytes=64_000, block_bytes=128_000))
    assert asyncio.run(engine.sync_library(repo)).blocks == 400
    assert 64_000 <= in_flight["most"] <= 128_000, in_flight
    pair.assert_same_files(repo)


def test_fetched_packs_wait_for_their_put_within_the_same_budget(primary, pair, monkeypatch):
    """Packs fetched faster than their blocks are put do not pile up in memory: a pack counts against the budget
    until its blocks are put (released after the fetch, a first sync over a fast link held 290 MB so)."""
    repo = primary.create_library("slow writes", "alice@example.com")
    primary.commit(repo, list(bulk_files(400, 4000)))  # 1.6 MB of single-block files
    bytes_held = {"fetched": 0, "put": 0, "most": 0}

    class CountingSource(LocalSource):
        async def blocks(self, store_id, block_ids):
            found = await super().blocks(store_id, block_ids)
            bytes_held["fetched"] += sum(len(data) for data in found.values())
            bytes_held["most"] = max(bytes_held["most"], bytes_held["fetched"] - bytes_held["put"])
            return found

    engine = SyncEngine(CountingSource(pair.source), pair.target,
                        EngineOptions(block_concurrency=8, block_pack_bytes=64_000, block_bytes=128_000))
    put_blocks = engine._put_blocks

    async def slow_put_blocks(run, blocks):
        await asyncio.sleep(0.02)  # a disk slower than the link
        await put_blocks(run, blocks)
        bytes_held["put"] += sum(len(data) for _id, data in blocks if data is not None)

    monkeypatch.setattr(engine, "_put_blocks", slow_put_blocks)
    assert asyncio.run(engine.sync_library(repo)).blocks == 400
    assert 64_000 <= bytes_held["most"] <= 128_000, bytes_held
    pair.assert_same_files(repo)


def test_every_interruption_leaves_the_backup_on_a_complete_snapshot(primary, pair, lab, monkeypatch):
    repo = _rich_library(primary)
    first_head = primary.head(repo)
    pair.sync(repo)
    primary.commit(repo, [Put("docs/new.txt", b"new"), Put("x/y/z.bin", os.urandom(200_000))])
    primary.commit(repo, [Delete("docs/a.md")])
    storage = lab.backup.seafile_data_dir / "storage"
    snapshot = lab.backup.seafile_data_dir.parent / "storage-snapshot"
    shutil.copytree(storage, snapshot)

    # Every filesystem step of a write batch (a temporary file written, an object renamed into
    # place) is a crash point; batches of 3 objects so that flushes also happen in mid-walk.
    steps = {"left": 0, "done": 0}

    def counted(real):
        def step(self, *args):
            if steps["left"] == 0:
                raise OSError("simulated crash")
            steps["left"] -= 1
            steps["done"] += 1
            return real(self, *args)
        return step

    monkeypatch.setattr(WriteBatch, "_write_temporary", counted(WriteBatch._write_temporary))
    monkeypatch.setattr(WriteBatch, "_place", counted(WriteBatch._place))
    small_batches = functools.partial(WriteBatch, pair.target.store, max_objects=3, max_bytes=1 << 30)
    monkeypatch.setattr(pair.target.store, "batch", small_batches)
    try:
        steps["left"] = 10_000
        pair.sync(repo, options=EngineOptions(block_concurrency=1))
        total = steps["done"]
        pair.target.rows.conn.cursor().execute(
            "UPDATE Branch SET commit_id=%s WHERE repo_id=%s", (first_head, repo))
        # Crash at each step of the copy, from the same starting point every time.
        for allowed in range(total):
            shutil.rmtree(storage)
            shutil.copytree(snapshot, storage)
            steps["left"] = allowed
            with pytest.raises(OSError, match="simulated crash"):
                pair.sync(repo, options=EngineOptions(block_concurrency=1))
            assert pair.assert_consistent(repo) == first_head
            _every_visible_object_is_complete(lab.backup.seafile_data_dir, repo)
    finally:
        shutil.rmtree(snapshot)
    assert total >= 20
    steps["left"] = 10_000
    pair.sync(repo)
    assert pair.assert_consistent(repo) == primary.head(repo)
    pair.assert_same_files(repo)


def test_kill_9_during_local_sync_never_leaves_a_broken_library(primary, pair, lab):
    repos = [primary.create_library(f"lib{i}", "alice@example.com") for i in range(3)]
    for i, repo in enumerate(repos):
        primary.commit(repo, list(bulk_files(1500, 2000, seed=i)))
        primary.commit(repo, [Put("last.txt", b"x")])
    cmd = [sys.executable, "-m", "seafbackup_agent.cli.main", "local-sync",
           "--source-conf-dir", str(lab.primary.seafile_conf_dir), "--source-data-dir",
           str(lab.primary.seafile_data_dir), "--conf-dir", str(lab.backup.seafile_conf_dir),
           "--data-dir", str(lab.backup.seafile_data_dir)]
    rng = random.Random(4)
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for repo in repos:
            pair.assert_consistent(repo)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    for repo in repos:
        pair.assert_same_files(repo)


def test_library_deleted_on_the_primary_loses_its_rows_not_its_objects(primary, pair, lab):
    repo = primary.create_library("doomed", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    pair.sync(repo)
    head = pair.backup_head(repo)
    primary.delete_library(repo)
    result = pair.sync(repo)
    assert result.outcome is Outcome.DELETED
    for table in ("Repo", "Branch", "RepoHead"):
        assert _rows(pair.target, f"SELECT COUNT(*) FROM {table} WHERE repo_id=%s", (repo,)) == ((0,),)
    check_closure(lab.backup.seafile_data_dir, repo, repo, head)


def test_history_limit_stops_at_the_boundary_and_tolerates_collected_objects_below_it(primary, pair, lab):
    repo = primary.create_library("limited", "alice@example.com", ctime=1_000_000)
    primary.commit(repo, [Put("old.bin", b"very old")], ctime=1_000_100)
    boundary = primary.commit(repo, [Delete("old.bin"), Put("older.bin", b"old")], ctime=1_000_200)
    primary.commit(repo, [Put("new.bin", b"new")])
    primary.set_history_limit(repo, 30)
    # Seafile GC removed what only the commits below the boundary referenced.
    for path in (lab.primary.seafile_data_dir / "storage/blocks" / repo).rglob("*"):
        if path.is_file() and path.read_bytes() == b"very old":
            path.unlink()
    result = pair.sync(repo)
    assert result.outcome is Outcome.SYNCHRONIZED and result.commits == 2  # head and the boundary commit
    assert pair.target.store.exists(ObjType.COMMITS, repo, boundary)
    assert head_files(lab.backup.seafile_data_dir, repo, repo, boundary)["/older.bin"] == b"old"
    pair.assert_same_files(repo)


def test_primary_reset_by_fsck_fails_until_forced(primary, pair):
    repo = primary.create_library("reset", "alice@example.com")
    first = primary.put_files(repo, {"a.txt": b"a"})
    primary.commit(repo, [Put("b.txt", b"b")])
    pair.sync(repo)
    synced = pair.backup_head(repo)
    # seaf-fsck -r: a "Repaired by system" commit on top of an older commit becomes the head.
    primary.commit(repo, [Put("a.txt", b"")], parent_id=first, description="Repaired by system.")
    with pytest.raises(NotDescendantError, match="does not descend") as err:
        pair.sync(repo)
    assert "--force" in str(err.value)
    assert pair.backup_head(repo) == synced
    result = pair.sync(repo, force=True)
    assert result.forced and pair.backup_head(repo) == primary.head(repo)
    pair.assert_same_files(repo)


def test_interrupted_copy_then_newer_commits_is_still_a_descendant(primary, pair, monkeypatch):
    repo = primary.create_library("resume", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    pair.sync(repo)
    primary.commit(repo, [Put("b.txt", b"b")])
    # Commits copied but the head not moved (crash before publish): the next walk stops at them.
    monkeypatch.setattr("seafbackup_agent.sync.engine.publish_head", _raise_crash)
    with pytest.raises(OSError):
        pair.sync(repo)
    monkeypatch.undo()
    primary.commit(repo, [Put("c.txt", b"c")])
    assert pair.sync(repo).commits == 1
    pair.assert_same_files(repo)


def _raise_crash(*args, **kwargs):
    raise OSError("crash before publish")


@pytest.mark.parametrize("damage", ["missing block", "corrupt block", "corrupt fs object"])
def test_damaged_object_on_the_primary_fails_with_its_name_and_force_skips_it(primary, pair, lab, damage):
    repo = primary.create_library("damaged", "alice@example.com")
    primary.put_files(repo, {"good.txt": b"good", "bad/bad.txt": b"bad content"})
    head = primary.head(repo)
    store = lab.primary.seafile_data_dir / "storage"
    if damage.endswith("block"):
        [path] = [p for p in (store / "blocks" / repo).rglob("*") if p.is_file() and p.read_bytes() == b"bad content"]
        victim = path.parent.name + path.name
        path.unlink() if damage == "missing block" else path.write_bytes(b"evil content")
    else:
        file_obj = primary.read_fs(repo, primary.read_commit(repo, head).root_id)
        victim = next(d.id for d in file_obj.dirents if d.name == "bad")
        (store / "fs" / repo / victim[:2] / victim[2:]).write_bytes(b"\x78\x9cgarbage")
    with pytest.raises(SourceObjectError) as err:
        pair.sync(repo)
    assert err.value.obj_id == victim and err.value.commit_id == head
    assert victim in str(err.value) and head in str(err.value)
    assert pair.backup_head(repo) is None
    assert not pair.target.store.exists(ObjType.BLOCKS, repo, victim)
    result = pair.sync(repo, force=True)
    assert result.forced and [s.obj_id for s in result.skipped] == [victim]
    assert pair.backup_head(repo) == head
    assert not pair.target.store.exists(ObjType.BLOCKS, repo, victim)
    assert not pair.target.store.exists(ObjType.FS, repo, victim)


def test_encrypted_library_is_copied_as_it_is(primary, pair, lab):
    repo = primary.create_library("vault", "alice@example.com", password="s3cret")
    primary.put_files(repo, {"secret.bin": os.urandom(5000)})
    pair.sync(repo)
    head = pair.backup_head(repo)
    raw = pair.target.store.read(ObjType.COMMITS, repo, head)
    assert raw == pair.source.store.read(ObjType.COMMITS, repo, head)
    assert json.loads(raw)["magic"] == json.loads(pair.source.store.read(ObjType.COMMITS, repo, head))["magic"]
    pair.assert_same_files(repo)


def test_virtual_repo_and_its_origin(primary, pair, lab):
    origin = primary.create_library("origin", "alice@example.com")
    primary.put_files(origin, {"shared/x.txt": b"x", "private/y.txt": b"y"})
    vrepo = primary.create_virtual_repo(origin, "shared", "shared", "bob@example.com")
    primary.commit(vrepo, [Put("z.txt", b"z")], modifier="bob@example.com")
    pair.sync(vrepo)
    pair.sync(origin)
    data = lab.backup.seafile_data_dir / "storage"
    assert (data / "commits" / vrepo).is_dir() and not (data / "fs" / vrepo).exists()
    pair.assert_consistent(vrepo, store_id=origin)
    pair.assert_same_files(vrepo, store_id=origin)
    pair.assert_same_files(origin)


def test_gc_on_the_backup_during_the_copy_makes_it_redo_with_a_full_check(primary, pair, lab, monkeypatch):
    repo = primary.create_library("gc", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a", "d/b.txt": b"b"})
    real_place = WriteBatch._place
    state = {"gc_ran": False}

    def place_then_gc(self, tmp, final):
        real_place(self, tmp, final)
        if "/blocks/" in final and not state["gc_ran"]:
            state["gc_ran"] = True
            # Seafile GC: collects the not-yet-referenced block and writes a new GCID.
            os.unlink(final)
            _root_sql(lab.backup, f"REPLACE INTO seafile_db.GCID (repo_id, gc_id) VALUES ('{repo}', 'new-gc')")

    monkeypatch.setattr(WriteBatch, "_place", place_then_gc)
    result = pair.sync(repo)
    assert state["gc_ran"] and result.outcome is Outcome.SYNCHRONIZED
    # What the next sync reads first, in one round trip: the head and the GCID it will check at the publish.
    assert pair.target.rows.head_and_gc_id(repo) == (result.new_head, "new-gc")
    assert pair.target.rows.head_and_gc_id(str(uuid.uuid4())) == (None, None)
    pair.assert_consistent(repo)
    pair.assert_same_files(repo)


def test_someone_else_moving_the_backup_head_is_refused(primary, pair, lab, monkeypatch):
    repo = primary.create_library("cas", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    real = WriteBatch._place

    def meddle(self, tmp, final):
        real(self, tmp, final)
        if "/commits/" in final:
            _root_sql(lab.backup, f"REPLACE INTO seafile_db.Branch (name, repo_id, commit_id) "
                                  f"VALUES ('master', '{repo}', '{'1' * 40}')")

    monkeypatch.setattr(WriteBatch, "_place", meddle)
    with pytest.raises(SyncError, match="moved"):
        pair.sync(repo)
    assert pair.backup_head(repo) == "1" * 40


def test_agent_writes_do_not_enter_the_backups_binlog(primary, pair, lab):
    conf = lab.backup.root / "etc/mysql/conf.d/zz-test-binlog.cnf"
    conf.write_text("[mysqld]\nlog-bin = mysql-bin\nserver-id = 2\nbinlog_format = ROW\n")
    lab.backup.mariadb.stop()
    lab.backup.mariadb.start()
    try:
        repo = primary.create_library("nolog", "alice@example.com")
        primary.put_files(repo, {"a.txt": b"a"})
        pair.target.close()
        pair.target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
        _root_sql(lab.backup, "FLUSH BINARY LOGS")
        pair.sync(repo)
        assert pair.backup_head(repo) == primary.head(repo)
        # A control write with logging on shows up; the agent's writes do not.
        _root_sql(lab.backup, "INSERT INTO seafile_db.SystemInfo (info_key, info_value) VALUES ('k', 'v')")
        logs = _root_sql(lab.backup, "SHOW BINARY LOGS")
        events = _root_sql(lab.backup, f"SHOW BINLOG EVENTS IN '{logs[-1][0]}'")
        tables = {str(e[5]).rsplit("(", 1)[-1].rstrip(")") for e in events if e[2] == "Table_map"}
        assert "seafile_db.SystemInfo" in tables
        assert not tables & {"seafile_db.Repo", "seafile_db.Branch", "seafile_db.RepoHead"}
    finally:
        conf.unlink()
        pair.target.close()
        lab.backup.mariadb.stop()
        lab.backup.mariadb.start()
        pair.target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)


def test_missing_binlog_privilege_is_a_clear_error(primary, lab):
    repo = primary.create_library("priv", "alice@example.com")
    p = Pair(lab)
    try:
        with pytest.raises(DatabaseError, match=r"sql_log_bin=0 \(grant it BINLOG ADMIN"):
            p.sync(repo)
        assert p.backup_head(repo) is None
    finally:
        p.close()


def test_local_sync_command(primary, lab, backup_db_privileges, capsys):
    repos = [primary.create_library(n, "alice@example.com") for n in ("one", "two")]
    primary.put_files(repos[0], {"a.txt": b"a"})
    args = ["local-sync", "--source-conf-dir", str(lab.primary.seafile_conf_dir),
            "--source-data-dir", str(lab.primary.seafile_data_dir), "--conf-dir", str(lab.backup.seafile_conf_dir),
            "--data-dir", str(lab.backup.seafile_data_dir)]
    assert cmd_main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["repo_id"] for r in report} == set(repos)
    assert all(r["outcome"] == "synchronized" for r in report)
    assert cmd_main([*args, "not-a-library-id"]) == 2
    assert "malformed library id" in capsys.readouterr().err
    assert cmd_main([*args[:-1], "/nonexistent"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_database_down_is_reported_with_what_to_do(lab, capsys):
    lab.backup.mariadb.stop()
    try:
        code = cmd_main(["local-sync", "--source-conf-dir", str(lab.primary.seafile_conf_dir),
                         "--source-data-dir", str(lab.primary.seafile_data_dir),
                         "--conf-dir", str(lab.backup.seafile_conf_dir),
                         "--data-dir", str(lab.backup.seafile_data_dir)])
    finally:
        lab.backup.mariadb.start()
    assert code == 3
    err = capsys.readouterr().err
    assert "cannot connect" in err and "running" in err


def test_engine_options_do_not_change_the_result(primary, pair):
    repo = primary.create_library("opts", "alice@example.com")
    primary.commit(repo, list(bulk_files(300, 10)))
    result = pair.sync(repo, options=EngineOptions(block_concurrency=1, fs_batch=7))
    assert result.blocks == 300
    pair.assert_same_files(repo)


def test_workers_publishing_new_libraries_at_the_same_time_all_succeed(lab, backup_db_privileges):
    """Concurrent head moves of different new libraries meet on the same gap of `Branch` (InnoDB can pick
    one as a deadlock victim); every publish must still succeed."""
    repos = [[str(uuid.uuid4()) for _ in range(40)] for _ in range(4)]

    def publisher(batch):
        installation = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
        try:
            for repo in batch:
                move = HeadMove(repo, repo, None, hashlib.sha1(repo.encode()).hexdigest(), None)
                publish_head(installation.rows.conn, move)
        finally:
            installation.close()

    with concurrent.futures.ThreadPoolExecutor(len(repos)) as pool:
        for future in [pool.submit(publisher, batch) for batch in repos]:
            future.result()
    published = dict(_root_sql(lab.backup, "SELECT repo_id, commit_id FROM seafile_db.Branch"))
    for repo in (r for batch in repos for r in batch):
        assert published[repo] == hashlib.sha1(repo.encode()).hexdigest()
