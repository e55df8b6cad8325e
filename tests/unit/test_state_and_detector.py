"""The backup's state store (SQLite) and the primary's change detectors, without servers."""

import sqlite3
import time

from prometheus_client import generate_latest

from seafbackup_agent.service.binlog import default_server_id
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.service.primary import ChangeDetector
from seafbackup_agent.service.state import BACKOFF_BASE, LibraryState, StateStore

REPO = "96e09ca5-5454-4dfa-9d9e-461eb3e38930"


def test_state_transitions_and_backoff(tmp_path):
    store = StateStore(tmp_path / "s.sqlite")
    store.waiting(REPO, "a" * 40)
    assert store.get(REPO).state is LibraryState.WAITING
    store.syncing(REPO)
    retry_at = store.failed(REPO, "block x is corrupt")
    assert retry_at - time.time() > BACKOFF_BASE - 1
    second = store.failed(REPO, "again")
    assert second - time.time() > 2 * BACKOFF_BASE - 1
    status = store.get(REPO)
    assert (status.state, status.attempts, status.reason) == (LibraryState.FAILED, 2, "again")
    # Its retry runs, and status still says why it failed.
    store.syncing(REPO)
    assert (store.get(REPO).state, store.get(REPO).reason) == (LibraryState.FAILED, "again")
    # A poll that sees the same head leaves a failed library failed; a new head makes it wait again.
    store.waiting(REPO, "a" * 40)
    assert store.get(REPO).state is LibraryState.FAILED
    store.waiting(REPO, "b" * 40)
    assert store.get(REPO).state is LibraryState.WAITING
    store.synchronized(REPO, "b" * 40, forced=False)
    status = store.get(REPO)
    assert (status.state, status.synced_head, status.attempts) == (LibraryState.SYNCHRONIZED, "b" * 40, 0)
    assert store.counts()[LibraryState.SYNCHRONIZED] == 1
    store.synchronized(REPO, None, forced=False)  # deleted on the primary
    assert store.get(REPO) is None


def test_a_library_left_syncing_by_a_killed_agent_is_waiting_again(tmp_path):
    store = StateStore(tmp_path / "s.sqlite")
    store.waiting(REPO, "a" * 40)
    store.syncing(REPO)
    store.close()
    assert StateStore(tmp_path / "s.sqlite").get(REPO).state is LibraryState.WAITING


def _rows_in_file(path):
    other = sqlite3.connect(path)
    try:
        return dict(other.execute("SELECT repo_id, state FROM library").fetchall())
    finally:
        other.close()


def test_writes_reach_the_file_together_and_a_crash_loses_only_the_unflushed_ones(tmp_path):
    path = tmp_path / "s.sqlite"
    store = StateStore(path)
    store.waiting(REPO, "a" * 40)
    store.syncing(REPO)
    assert store.get(REPO).state is LibraryState.SYNCING  # seen at once by the agent itself
    assert _rows_in_file(path) == {}  # not yet in the file
    assert store.counts()[LibraryState.SYNCING] == 1  # a query over the table writes what waits first
    assert _rows_in_file(path) == {REPO: "syncing"}
    store.synchronized(REPO, "b" * 40, forced=False)
    # The agent is killed here (no close): the file holds the last flush, and a restart reads it as waiting.
    assert StateStore(path).get(REPO).state is LibraryState.WAITING
    store.close()  # a clean stop writes everything
    assert _rows_in_file(path) == {REPO: "synchronized"}


def test_many_waiting_writes_are_flushed_without_a_query(tmp_path):
    path = tmp_path / "s.sqlite"
    store = StateStore(path)
    repos = [f"{i:08x}-5454-4dfa-9d9e-461eb3e38930" for i in range(StateStore.MAX_PENDING)]
    for repo in repos:
        store.waiting(repo, "a" * 40)
    assert len(_rows_in_file(path)) == StateStore.MAX_PENDING
    store.synchronized(repos[0], None, forced=False)  # deleted on the primary
    store.flush()
    assert len(_rows_in_file(path)) == StateStore.MAX_PENDING - 1 and store.get(repos[0]) is None


class FakeRows:
    """Stands in for the database only to drive the detector's diff logic; the integration tests run it
    against MariaDB."""

    def __init__(self):
        self.heads = {}
        self.update_time = 1

    def iter_heads(self):
        return iter(sorted(self.heads.items()))


def test_change_detector_diffs_only_when_the_table_changed(monkeypatch):
    rows = FakeRows()
    detector = ChangeDetector(lambda: rows)
    monkeypatch.setattr(detector, "_probe", lambda r: r.update_time)
    scans = []
    real_iter = rows.iter_heads
    rows.iter_heads = lambda: scans.append(1) or real_iter()
    rows.heads = {"r1": "h1", "r2": "h2"}
    assert detector.check(rows, now=0.0) == []  # the first scan learns the heads
    rows.heads["r1"] = "h1b"
    del rows.heads["r2"]
    rows.update_time = 2
    assert sorted(detector.check(rows, now=10.0), key=str) == [("r1", "h1b"), ("r2", None)]
    # Idle: no change of UPDATE_TIME and past the hot window -> no scan at all.
    before = len(scans)
    assert detector.check(rows, now=20.0) == []
    assert len(scans) == before


def test_binlog_server_id_is_per_host_and_far_above_replica_ids():
    ids = {default_server_id(f"seafile-{i}") for i in range(50)}
    assert len(ids) == 50 and all(2_000_000_000 <= i < 2_100_000_000 for i in ids)
    assert default_server_id("seafile-1") == default_server_id("seafile-1")


def test_metrics_say_which_change_detector_runs():
    metrics = AgentMetrics()
    metrics.set_change_detector("probe")
    text = generate_latest(metrics.registry).decode()
    assert 'seafbackup_change_detector{kind="probe"} 1.0' in text
    assert 'seafbackup_change_detector{kind="binlog"} 0.0' in text
