"""The primary's binlog change detector against the lab's real primary MariaDB (binlog on, ROW, privileges granted
by the lab as setup_backup.yml grants them): moves, deletions, restarts, rotation, a purged position, fallback."""

from __future__ import annotations

import asyncio
import logging
import queue
import statistics
import threading
import time
import uuid

import pytest

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.service.binlog import BinlogChangeDetector, default_server_id
from seafbackup_lab.writer import Put
from tests.helpers import root_sql


class Running:
    """A detector running on its own event loop in a thread, as in the agent; what it reports, timestamped."""

    def __init__(self, lab, **options):
        conf = load_seafile_conf(lab.primary.seafile_conf_dir)
        self.kinds: list[str] = []
        self.detector = BinlogChangeDetector(conf.database, lambda: SeafileInstallation.open_rows(conf),
                                             server_id=default_server_id(), on_kind=self.kinds.append, **options)
        self.events: queue.Queue = queue.Queue()
        self.seen: list[tuple[str, str | None]] = []
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.detector.run(
            self.stop, lambda repo, head: self.events.put((time.monotonic(), repo, head))))

    def started(self, timeout=10.0) -> Running:
        """Reading (the binlog from its end, or the probe's first scan)."""
        deadline = time.monotonic() + timeout
        while self.detector.position is None and self.detector.fallback.heads is None:
            assert time.monotonic() < deadline, "the detector did not start"
            time.sleep(0.01)
        return self

    def wait_for(self, repo, head, timeout=15.0) -> float:
        """Wait for (repo, head) to be reported; returns when it was (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, r, h = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"({repo}, {head}) not reported in {timeout}s; reported {self.seen}") from None
            self.seen.append((r, h))
            if (r, h) == (repo, head):
                return at

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the detector did not stop"
        self.loop.close()


@pytest.fixture
def running(lab):
    started: list[Running] = []

    def start(**options) -> Running:
        started.append(Running(lab, **options))
        return started[-1].started()

    yield start
    for r in started:
        r.close()


def test_head_moves_creations_and_deletions_are_reported_from_the_binlog(primary, lab, running, caplog):
    caplog.set_level(logging.INFO)
    old = primary.create_library("old", "alice@example.com")
    detector = running()
    assert detector.detector.kind == "binlog" and "tailing the binlog of seafile_db" in caplog.text

    latencies = []
    new = primary.create_library("new", "alice@example.com")
    detector.wait_for(new, primary.head(new))
    for i in range(5):
        before = time.monotonic()
        head = primary.commit(old, [Put(f"f{i}.txt", b"x")])
        latencies.append(detector.wait_for(old, head) - before)
    # Two moves of one library in quick succession: both heads reported, in order.
    first = primary.commit(new, [Put("a.txt", b"1")])
    second = primary.commit(new, [Put("b.txt", b"2")])
    detector.wait_for(new, first)
    detector.wait_for(new, second)
    primary.delete_library(old)
    detector.wait_for(old, None)
    print(f"\nbinlog detection: commit -> reported p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")

    # Seafile itself writes Branch before Repo, in separate statements: the Repo row reports the library again.
    repo, head = str(uuid.uuid4()), "a" * 40
    root_sql(lab.primary, f"INSERT INTO seafile_db.Branch (name, repo_id, commit_id) VALUES ('master', '{repo}', "
                          f"'{head}')")
    detector.wait_for(repo, head)
    root_sql(lab.primary, f"INSERT INTO seafile_db.Repo (repo_id) VALUES ('{repo}')")
    detector.wait_for(repo, head)
    # Other branches and other tables are not reported.
    root_sql(lab.primary, f"INSERT INTO seafile_db.Branch (name, repo_id, commit_id) VALUES ('other', '{repo}', "
                          f"'{'b' * 40}')", "INSERT INTO seafile_db.RepoHead (repo_id, branch_name) VALUES ('x', 'y')")
    marker = primary.commit(new, [Put("c.txt", b"3")])
    detector.wait_for(new, marker)
    assert (repo, "b" * 40) not in detector.seen and ("x", None) not in detector.seen
    assert lab.db_password not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("seafbackup")]


def test_detection_survives_a_binlog_rotation_and_a_restart_of_the_database(primary, lab, running, caplog):
    repo = primary.create_library("lib", "alice@example.com")
    detector = running(max_backoff=1.0)
    head = primary.commit(repo, [Put("a.txt", b"1")])
    detector.wait_for(repo, head)
    root_sql(lab.primary, "FLUSH BINARY LOGS")
    head = primary.commit(repo, [Put("b.txt", b"2")])
    detector.wait_for(repo, head)
    rotated = detector.detector.position

    lab.primary.mariadb.stop()
    lab.primary.mariadb.start()
    primary.db.connect()
    # Written before the detector is back: found by resuming from the last position read.
    head = primary.commit(repo, [Put("c.txt", b"3")])
    detector.wait_for(repo, head)
    head = primary.commit(repo, [Put("d.txt", b"4")])
    detector.wait_for(repo, head)
    assert detector.detector.position.file > rotated.file  # a restart starts a new binlog file
    assert detector.detector.kind == "binlog"
    assert lab.db_password not in caplog.text


def _reconnect_waits(caplog) -> list[float]:
    """The waits the detector announced before reconnecting its stream, in order."""
    return [float(r.getMessage().rsplit(" in ", 1)[1].rstrip("s")) for r in caplog.records
            if "reconnecting from" in r.getMessage()]


def test_an_outage_after_a_reconnection_is_retried_from_the_shortest_wait(primary, lab, running, caplog):
    """The backoff of one outage does not carry over to the next: after a long outage the stream read again, so a
    short restart later is retried after 0.5 s, not after the wait the first outage had grown to (up to 30 s of
    head moves detected late)."""
    repo = primary.create_library("lib", "alice@example.com")
    detector = running()
    lab.primary.mariadb.stop()
    time.sleep(5)  # the retries after 0.5, 1 and 2 s find no server
    lab.primary.mariadb.start()
    primary.db.connect()
    head = primary.commit(repo, [Put("a.txt", b"1")])
    detector.wait_for(repo, head)
    first_outage = _reconnect_waits(caplog)
    assert first_outage[:4] == [0.5, 1.0, 2.0, 4.0], first_outage

    lab.primary.mariadb.stop()
    lab.primary.mariadb.start()
    primary.db.connect()
    head = primary.commit(repo, [Put("b.txt", b"2")])
    detector.wait_for(repo, head)
    assert _reconnect_waits(caplog)[len(first_outage)] == 0.5, _reconnect_waits(caplog)
    assert detector.detector.kind == "binlog"


def test_a_purged_position_is_followed_by_one_full_comparison(primary, lab, running, caplog):
    """The agent was cut off from the database while the binlog it was reading was purged."""
    moved, deleted, kept = (primary.create_library(n, "alice@example.com") for n in ("moved", "deleted", "kept"))
    detector = running(max_backoff=1.0)
    cut_off = lab.primary.mariadb.paths.conf_d / "zz-test-no-tcp.cnf"
    try:
        cut_off.write_text("[mysqld]\nskip-networking\n")
        lab.primary.mariadb.stop()
        lab.primary.mariadb.start()
        root_sql(lab.primary, "FLUSH BINARY LOGS")
        current = root_sql(lab.primary, "SHOW MASTER STATUS")[0][0]
        root_sql(lab.primary, f"UPDATE seafile_db.Branch SET commit_id='{'e' * 40}' WHERE repo_id='{moved}'",
                 f"DELETE FROM seafile_db.Repo WHERE repo_id='{deleted}'",
                 f"DELETE FROM seafile_db.Branch WHERE repo_id='{deleted}'",
                 "FLUSH BINARY LOGS", f"PURGE BINARY LOGS TO '{current}'")
    finally:
        cut_off.unlink()
        lab.primary.mariadb.stop()
        lab.primary.mariadb.start()
        primary.db.connect()
    detector.wait_for(moved, "e" * 40)
    detector.wait_for(deleted, None)
    head = primary.commit(kept, [Put("after.txt", b"1")])
    detector.wait_for(kept, head)
    assert (kept, None) not in detector.seen
    assert "is gone" in caplog.text and "comparing all heads once" in caplog.text


@pytest.mark.parametrize(
    ("broken", "repair", "message"),
    [
        ("REVOKE REPLICATION SLAVE ON *.* FROM 'seafile'@'%'", "GRANT REPLICATION SLAVE ON *.* TO 'seafile'@'%'",
         "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'seafile'@'%'"),
        ("REVOKE BINLOG MONITOR ON *.* FROM 'seafile'@'%'", "GRANT BINLOG MONITOR ON *.* TO 'seafile'@'%'",
         "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'seafile'@'%'"),
        ("SET GLOBAL binlog_format = 'STATEMENT'", "SET GLOBAL binlog_format = 'ROW'", "binlog_format is STATEMENT"),
    ],
    ids=["no REPLICATION SLAVE", "no BINLOG MONITOR", "binlog_format STATEMENT"],
)
def test_an_unreadable_binlog_falls_back_to_polling_with_one_clear_error(primary, lab, running, caplog, broken,
                                                                         repair, message):
    repo = primary.create_library("lib", "alice@example.com")
    root_sql(lab.primary, broken)
    try:
        detector = running()
        deadline = time.monotonic() + 10
        while detector.kinds[-1:] != ["probe"]:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
        head = primary.commit(repo, [Put("a.txt", b"1")])
        detector.wait_for(repo, head)
    finally:
        root_sql(lab.primary, repair)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and "Falling back to polling" in errors[0], errors
    assert detector.detector.kind == "probe" and detector.kinds == ["binlog", "probe"]
    assert lab.db_password not in caplog.text


def test_coverage_reaches_a_barrier_only_after_every_change_before_it_was_reported(primary, lab, running):
    """The heartbeat's first claim (service/heartbeat.py): once `detected_through` reaches t, every head move
    committed before t has been reported. Also when the primary is idle (the server's heartbeat events carry the
    reader past the barrier)."""
    r = running()
    coverage = r.detector.coverage

    def barrier() -> float:
        at = time.time()
        end = r.detector.end_position()
        r.loop.call_soon_threadsafe(coverage.barrier, end, at)
        return at

    def reached(at: float, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while (coverage.detected_through or 0) < at:
            assert time.monotonic() < deadline, f"coverage stuck at {coverage.detected_through}, barrier {at}"
            time.sleep(0.005)

    reached(barrier())  # idle
    repo = primary.create_library("lib", "alice@example.com")
    for i in range(5):
        head = primary.put_files(repo, {f"f{i}.txt": b"x" * i})
        at = barrier()
        reached(at)
        r.wait_for(repo, head, timeout=0.01)  # already reported when the coverage passed the commit
    r.detector.close_barrier()
