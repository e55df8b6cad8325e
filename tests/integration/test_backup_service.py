"""The backup service's queue with the real engine, a real lab and a source held at a chosen point."""

from __future__ import annotations

import asyncio

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.service.backup import BackupOptions, BackupService
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.service.state import LibraryState, StateStore
from seafbackup_agent.sync.source import LocalSource
from seafbackup_lab.writer import Put


class HeldSource(LocalSource):
    """The primary as it is, except that reading a commit waits until `release` is set."""

    def __init__(self, installation: SeafileInstallation) -> None:
        super().__init__(installation)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def commit(self, repo_id: str, commit_id: str) -> bytes | None:
        self.holding.set()
        await self.release.wait()
        return await super().commit(repo_id, commit_id)


def test_sync_asked_for_during_a_running_sync_answers_with_the_next_one(primary, lab, backup_db_privileges, tmp_path):
    """`seaf-backup-cmd sync` while a worker is already on the library: that sync started before the
    request and copies an older head; the answer must come from the sync that runs afterwards."""
    repo = primary.create_library("held", "alice@example.com")
    old_head = primary.put_files(repo, {"a.txt": b"a"})

    async def scenario():
        source = HeldSource(SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir))
        state = StateStore(tmp_path / "state.sqlite")
        service = BackupService(
            source,
            lambda: SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir),
            state,
            AgentMetrics(),
            BackupOptions(workers=2, poll_interval_hours=1),
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            # The start-up poll queues the library; a worker takes it, reads its head and waits for the commit.
            await asyncio.wait_for(source.holding.wait(), timeout=60)
            assert state.get(repo).state is LibraryState.SYNCING
            new_head = primary.commit(repo, [Put("b.txt", b"b")])
            asked = asyncio.create_task(service.sync_now(repo, force=False))
            await asyncio.sleep(0.2)
            source.release.set()
            outcome = await asyncio.wait_for(asked, timeout=60)
        finally:
            stop.set()
            await runner
            await source.close()
            state.close()
        return new_head, outcome

    new_head, outcome = asyncio.run(scenario())
    assert new_head != old_head
    assert outcome["ok"] and outcome["head"] == new_head == primary.head(repo)
