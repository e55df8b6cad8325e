"""Failures and forced syncs in the backup's per-library state: one attempt per real attempt whatever the
primary re-notifies, and a forced sync across a rewound history is recorded as forced."""

from __future__ import annotations

import asyncio
import time

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.transport.client import NotifyClient
from seafbackup_lab.writer import Put
from tests.faults.checks import published_heads, wait_failed


def _library(agents, repo: str) -> dict:
    return next(lib for lib in agents.status()["libraries"] if lib["repo_id"] == repo)


def _notify(lab, repo: str, head: str, times: int) -> None:
    """What the primary's agent sends when a head moves, signed the same way, `times` times."""
    async def send() -> None:
        client = NotifyClient.from_conf(load_seafile_conf(lab.primary.seafile_conf_dir))
        try:
            for _ in range(times):
                await client.notify([(repo, head)])
        finally:
            await client.close()

    asyncio.run(send())


def test_re_notifications_of_a_failing_head_do_not_add_attempts(primary, lab, agents):
    bad = primary.create_library("bad", "alice@example.com")
    primary.put_files(bad, {"broken.bin": b"will be corrupted"})
    [block] = [p for p in (lab.primary.seafile_data_dir / "storage/blocks" / bad).rglob("*") if p.is_file()]
    block.write_bytes(b"corrupted on disk")
    agents.start("primary")
    agents.start("backup")
    failed = wait_failed(agents, bad)
    assert failed["attempts"] == 1

    _notify(lab, bad, primary.head(bad), times=5)  # the same head again and again
    # One real attempt more, asked for by hand: it runs after whatever the notifications started.
    result = agents.cmd("sync", bad, check=False)
    assert result.returncode == 1 and "does not match its id" in result.stderr
    # The next periodic poll finds the library failed at the primary's head: retried on its backoff, not now.
    after_sync = time.time()
    _wait_poll_finished_after(agents, after_sync)
    lib = _library(agents, bad)
    assert lib["state"] == "failed" and lib["attempts"] == 2, (lib, agents.log("backup")[-3000:])
    assert lib["primary_head"] == primary.head(bad)


def _wait_poll_finished_after(agents, moment: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last_poll = agents.status().get("last_poll")
        if last_poll is not None and last_poll > moment:
            return
        time.sleep(0.2)
    raise AssertionError(f"no poll finished after the sync: {agents.log('backup')[-2000:]}")


def test_forced_sync_across_a_rewound_history_is_recorded_as_forced(primary, lab, agents):
    repo = primary.create_library("rewound", "alice@example.com")
    first = primary.put_files(repo, {"a.txt": b"a"})
    primary.commit(repo, [Put("b.txt", b"b")])
    agents.start("primary")
    agents.start("backup")
    agents.wait_synchronized(1)
    # seaf-fsck -r on the primary: a "Repaired by system" commit on top of an older one becomes the head.
    head = primary.commit(repo, [Put("a.txt", b"")], parent_id=first, description="Repaired by system.")
    assert "does not descend" in wait_failed(agents, repo)["reason"]

    result = agents.cmd("sync", "--force", repo)
    assert "synchronized" in result.stdout
    lib = _library(agents, repo)
    assert lib["state"] == "synchronized" and lib["forced"] is True, lib
    assert published_heads(lab)[repo] == head
