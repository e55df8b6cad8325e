"""The closure check (`seafbackup_agent.sync.verify`) that the fault tests (and `verify`) rely on: it
agrees with the independent checker of tests/seafile_checks.py and names what is missing or corrupt."""

from __future__ import annotations

import asyncio
import os
import zlib

import pytest

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.engine import SyncEngine
from seafbackup_agent.sync.source import LocalSource
from seafbackup_agent.sync.verify import check_closure, check_library
from seafbackup_lab.writer import Put
from tests.helpers import root_sql
from tests.seafile_checks import check_closure as independent_closure


@pytest.fixture
def backup_inst(lab, backup_db_privileges):
    inst = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
    yield inst
    inst.close()


def _sync(lab, target, *repos):
    source = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    try:
        for repo in repos:
            asyncio.run(SyncEngine(LocalSource(source), target).sync_library(repo))
    finally:
        source.close()


def test_the_closure_of_a_copied_library_is_complete_and_counted(primary, lab, backup_inst):
    origin = primary.create_library("origin", "alice@example.com")
    base = primary.put_files(origin, {"shared/x.txt": b"x", "private/y.bin": os.urandom(200_000)})
    side = primary.commit(origin, [Put("side.txt", b"s")], parent_id=base, move_branch=False)
    primary.commit(origin, [Put("main.txt", b"m")])
    primary.commit(origin, [Put("side.txt", b"s")], second_parent_id=side, description="Auto merge by system")
    vrepo = primary.create_virtual_repo(origin, "shared", "shared", "bob@example.com")
    # The VirtualRepo row reaches the backup by replication; the lab has none, so copy it.
    root_sql(lab.backup, *[f"INSERT INTO seafile_db.VirtualRepo VALUES {row!r}"
                           for row in root_sql(lab.primary, "SELECT * FROM seafile_db.VirtualRepo")])
    _sync(lab, backup_inst, origin, vrepo)

    report = check_library(backup_inst, origin)
    expected = independent_closure(lab.backup.seafile_data_dir, origin, origin, primary.head(origin))
    assert report.ok and report.head == primary.head(origin)
    assert (report.commits, report.fs_objects, report.blocks) == (
        len(expected.commits), len(expected.fs), len(expected.blocks))
    virtual = check_library(backup_inst, vrepo)
    assert virtual.ok and virtual.store_id == origin and virtual.commits >= 1
    assert check_library(backup_inst, "00000000-0000-0000-0000-000000000000") is None


def test_missing_and_corrupt_objects_are_named(primary, lab, backup_inst):
    repo = primary.create_library("damaged", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a", "d/b.txt": b"b"})
    head = primary.commit(repo, [Put("c.txt", b"c")])
    _sync(lab, backup_inst, repo)
    store = backup_inst.store
    closure = independent_closure(lab.backup.seafile_data_dir, repo, repo, head)
    block = sorted(closure.blocks)[0]
    os.unlink(store.path(ObjType.BLOCKS, repo, block))
    # A file object that does not hold the deleted block (the walk stops at a corrupt object).
    bodies = {oid: zlib.decompress(store.read(ObjType.FS, repo, oid)) for oid in sorted(closure.fs)}
    fs_obj = next(oid for oid, body in bodies.items() if b'"block_ids"' in body and block.encode() not in body)
    with open(store.path(ObjType.FS, repo, fs_obj), "wb") as fh:
        fh.write(zlib.compress(b'{"type": 1, "size": 0, "block_ids": []}'))

    report = check_closure(store, repo, repo, head)
    assert not report.ok
    assert [(b.kind, b.obj_id) for b in report.first_missing] == [("block", block)]
    assert [(b.kind, b.obj_id) for b in report.first_corrupt] == [("fs", fs_obj)]
    assert "does not match its id" in report.first_corrupt[0].reason
