"""The backup's database stops while the agent publishes a head: the library's reason is the real error
(and says what to do), not the error of a rollback on the dead connection; the next sync succeeds."""

from __future__ import annotations

import asyncio
import time

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.sync.engine import SyncEngine
from seafbackup_agent.sync.source import LocalSource
from seafbackup_lab.writer import Put
from tests.faults.checks import assert_published_heads_restorable, published_heads, wait_failed
from tests.helpers import root_sql

PUBLISH_WAITING = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                   "WHERE INFO LIKE 'SELECT commit_id FROM Branch WHERE repo_id=%FOR UPDATE'")


def test_database_stopped_mid_publish_is_reported_as_itself(primary, lab, agents):
    repo = primary.create_library("published", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    agents.start("primary")
    agents.start("backup")
    agents.wait_synchronized(1)

    # Hold the library's Branch row: the agent's next publish waits for it, mid-transaction.
    holder = lab.backup.mariadb.root_connection("seafile_db")
    try:
        with holder.cursor() as cur:
            holder.begin()
            cur.execute("SELECT commit_id FROM Branch WHERE repo_id=%s FOR UPDATE", (repo,))
            head = primary.commit(repo, [Put("b.txt", b"b")])
            deadline = time.monotonic() + 30
            while root_sql(lab.backup, PUBLISH_WAITING)[0][0] == 0:
                assert time.monotonic() < deadline, agents.log("backup")[-2000:]
                time.sleep(0.02)
            lab.backup.mariadb.stop()
    finally:
        holder.close()
    try:
        reason = wait_failed(agents, repo)["reason"]
    finally:
        lab.backup.mariadb.start()
    print(f"\nreason: {reason}")
    assert reason.startswith(f"library {repo}: publishing the new head failed: ")
    assert any(text in reason for text in ("Lost connection", "shutdown", "gone away")), reason
    assert "check that it runs" in reason
    assert "(0, '')" not in reason and "unexpected error" not in reason
    assert "Traceback" not in agents.log("backup")

    result = agents.cmd("sync", repo)
    assert "synchronized" in result.stdout
    assert published_heads(lab)[repo] == head == primary.head(repo)
    assert_published_heads_restorable(lab)


def test_a_connection_closed_by_a_database_restart_is_replaced_before_the_next_sync(primary, lab,
                                                                                     backup_db_privileges):
    """A worker keeps its connection between syncs; a restart of the backup's database closes it."""
    repo = primary.create_library("restarted", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    source = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
    try:
        engine = SyncEngine(LocalSource(source), target)
        asyncio.run(engine.sync_library(repo))
        lab.backup.mariadb.stop()
        lab.backup.mariadb.start()
        head = primary.commit(repo, [Put("b.txt", b"b")])
        assert asyncio.run(engine.sync_library(repo)).new_head == head
        assert published_heads(lab)[repo] == head
    finally:
        source.close()
        target.close()
