"""Group commit on the backup: libraries whose syncs finish together are published together, one durability
barrier and one database transaction per group, as the agent's metrics show."""

from __future__ import annotations

import subprocess
import time

from seafbackup_lab.writer import Put
from tests.faults.checks import assert_published_heads_restorable, published_heads
from tests.helpers import root_sql

PUBLISH_WAITING = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                   "WHERE INFO LIKE 'SELECT commit_id FROM Branch WHERE repo_id=%FOR UPDATE'")


def _metrics(agents) -> dict[str, float]:
    text = subprocess.run(["curl", "-s", "--unix-socket", str(agents.tmp / "state/agent.sock"), "http://agent/metrics"],
                          capture_output=True, text=True, check=True).stdout
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                   if line and not line.startswith("#"))}


def _wait(condition, what: str, agents, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: {agents.log('backup')[-2000:]}"
        time.sleep(0.05)


def test_libraries_changed_together_are_published_in_one_transaction(primary, lab, agents):
    repos = [primary.create_library(f"group{i}", "alice@example.com") for i in range(6)]
    for repo in repos:
        primary.put_files(repo, {"a.txt": b"a"})
    agents.start("primary")
    agents.start("backup")
    agents.wait_synchronized(len(repos))
    before = _metrics(agents)

    first, others = repos[0], repos[1:]
    # Hold the first library's Branch row: its group's transaction waits for it, and the other libraries,
    # changed meanwhile, are copied and wait for the next group.
    holder = lab.backup.mariadb.root_connection("seafile_db")
    try:
        with holder.cursor() as cur:
            holder.begin()
            cur.execute("SELECT commit_id FROM Branch WHERE repo_id=%s FOR UPDATE", (first,))
            primary.commit(first, [Put("b.txt", b"b")])
            _wait(lambda: root_sql(lab.backup, PUBLISH_WAITING)[0][0] > 0, "no publish waits for the row", agents)
            for repo in others:
                primary.commit(repo, [Put("b.txt", b"b")])
            _wait(lambda: _metrics(agents)["seafbackup_publishing"] == len(repos),
                  "the other libraries are not all waiting for their publish", agents)
            assert published_heads(lab) != {r: primary.head(r) for r in repos}
    finally:
        holder.rollback()
        holder.close()
    agents.wait_synchronized(len(repos))
    after = _metrics(agents)

    groups = after["seafbackup_publish_group_size_count"] - before["seafbackup_publish_group_size_count"]
    libraries = after["seafbackup_publish_group_size_sum"] - before["seafbackup_publish_group_size_sum"]
    print(f"\n{libraries:.0f} libraries published in {groups:.0f} groups")
    assert libraries == len(repos)
    assert groups == 2  # the held library alone, then the five others together
    assert after["seafbackup_publishing"] == 0
    assert published_heads(lab) == {r: primary.head(r) for r in repos}
    assert_published_heads_restorable(lab)
