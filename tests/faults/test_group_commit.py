"""A crash after a group's durability barrier and before its publish transaction: every library of the group
stays readable at its old head, the copied objects are in place, and the next syncs publish without copying."""

from __future__ import annotations

import asyncio

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.engine import SyncEngine
from seafbackup_agent.sync.publish import GroupPublisher
from seafbackup_agent.sync.source import LocalSource
from seafbackup_lab.writer import Put, bulk_files
from tests.faults.checks import assert_published_heads_restorable, leftovers, published_heads


class Crash(Exception):
    """The agent dies here (nothing after it runs: a failed publish cleans nothing up, as a kill -9 would not)."""


def test_a_crash_between_the_barrier_and_the_publish_leaves_every_library_readable(primary, lab,
                                                                                   backup_db_privileges,
                                                                                   monkeypatch):
    repos = [primary.create_library(f"grouped{i}", "alice@example.com") for i in range(4)]
    for i, repo in enumerate(repos):
        primary.commit(repo, list(bulk_files(40, 2000, seed=i)))
    # A connection to each database per sync, as the agent's workers have.
    sources = [SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) for _ in repos]
    targets = [SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir) for _ in repos]

    async def sync_together() -> list:
        publisher = GroupPublisher(lambda: SeafileInstallation.open(lab.backup.seafile_conf_dir,
                                                                    lab.backup.seafile_data_dir))
        try:
            return await asyncio.gather(
                *(SyncEngine(LocalSource(source), target, publisher=publisher).sync_library(repo)
                  for repo, source, target in zip(repos, sources, targets, strict=True)), return_exceptions=True)
        finally:
            await publisher.aclose()

    try:
        first = asyncio.run(sync_together())
        assert all(not isinstance(r, BaseException) for r in first), first
        old_heads = published_heads(lab)
        new_heads = {repo: primary.commit(repo, [Put(f"more/{i}.bin", bytes([i]) * 5000)]) for i, repo in
                     enumerate(repos)}

        published: list[str] = []

        def crash(conn, moves):
            published.extend(m.repo_id for m in moves)
            raise Crash("killed after the barrier, before the transaction")

        monkeypatch.setattr("seafbackup_agent.sync.publish.publish_heads", crash)
        results = asyncio.run(sync_together())
        assert all(isinstance(r, Crash) for r in results), results
        assert sorted(published) == sorted(repos)
        assert published_heads(lab) == old_heads
        assert_published_heads_restorable(lab)
        for repo, head in new_heads.items():  # the barrier ran: the new commits are in place
            assert targets[0].store.exists(ObjType.COMMITS, repo, head)
        left = leftovers(lab.backup.seafile_data_dir)
        assert left.staged == [] and left.strays == []

        monkeypatch.undo()
        results = asyncio.run(sync_together())
        for result in results:
            assert not isinstance(result, BaseException), result
            assert (result.commits, result.fs_objects, result.blocks) == (0, 0, 0), "copied again"
        assert published_heads(lab) == new_heads
        assert_published_heads_restorable(lab)
    finally:
        for installation in (*sources, *targets):
            installation.close()

