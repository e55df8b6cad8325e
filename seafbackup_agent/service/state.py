"""Per-library sync state on the backup, in the agent's own SQLite file."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path


class LibraryState(StrEnum):
    SYNCHRONIZED = "synchronized"
    WAITING = "waiting"
    SYNCING = "syncing"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LibraryStatus:
    repo_id: str
    state: LibraryState
    primary_head: str | None
    synced_head: str | None
    reason: str | None
    attempts: int
    next_attempt: float | None
    since: float
    """When the library entered its current state (unix time)."""
    last_synced: float | None
    forced: bool


BACKOFF_BASE = 30.0
BACKOFF_MAX = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS library (
    repo_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    primary_head TEXT,
    synced_head TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL,
    since REAL NOT NULL,
    last_synced REAL,
    forced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS library_state ON library (state);
"""


class StateStore:
    """Every write lands in memory first and reaches the file in one transaction at the next `flush()`:
    before any query over many rows (`counts`, `all`, `due_retries`, ...), when many writes wait, and at
    `close()`. A head move made four autocommit transactions here (waiting, syncing, heading_to,
    synchronized), each with its WAL writes and locks, on the event loop's thread: 0.13-0.15 ms of CPU and
    0.22-0.25 ms of the loop per move, 0.05 ms now. The state is advisory (the truth is Branch on the backup
    and the primary's heads, and a poll rebuilds it), so a crash may lose the writes since the last flush and
    nothing else: the agent's retrier flushes every few seconds."""

    MAX_PENDING = 1000

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL stays consistent after a crash and needs no fsync per transaction.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        # A library left "syncing" by a previous run (killed mid-copy) is waiting again.
        self.db.execute("UPDATE library SET state='waiting' WHERE state='syncing'")
        self._pending: dict[str, LibraryStatus | None] = {}
        """library -> its row as the next flush writes it (None: deleted)"""
        self._lock = threading.RLock()
        """The poll records its findings from a worker thread while the event loop's thread writes."""

    def close(self) -> None:
        self.flush()
        self.db.close()

    def flush(self) -> None:
        """Write what waits in memory, in one transaction."""
        with self._lock:
            if not self._pending:
                return
            rows = [_row(s) for s in self._pending.values() if s is not None]
            gone = [(r,) for r, s in self._pending.items() if s is None]
            self.db.execute("BEGIN")
            try:
                self.db.executemany("INSERT OR REPLACE INTO library VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self.db.executemany("DELETE FROM library WHERE repo_id=?", gone)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._pending.clear()

    def get(self, repo_id: str) -> LibraryStatus | None:
        with self._lock:
            if repo_id in self._pending:
                return self._pending[repo_id]
            row = self.db.execute("SELECT * FROM library WHERE repo_id=?", (repo_id,)).fetchone()
            return _status(row) if row else None

    def _put(self, repo_id: str, status: LibraryStatus | None) -> None:
        self._pending[repo_id] = status
        if len(self._pending) >= self.MAX_PENDING:
            self.flush()

    def waiting(self, repo_id: str, primary_head: str | None) -> None:
        now = time.time()
        with self._lock:
            current = self.get(repo_id)
            if current is None:
                self._put(repo_id, LibraryStatus(repo_id, LibraryState.WAITING, primary_head, None, None, 0, None,
                                                 now, None, False))
                return
            stays_failed = current.state is LibraryState.FAILED and current.primary_head == primary_head
            self._put(repo_id, replace(
                current, primary_head=primary_head,
                since=current.since if current.state is LibraryState.WAITING else now,
                state=LibraryState.FAILED if stays_failed else LibraryState.WAITING))

    def heading_to(self, repo_id: str, primary_head: str | None) -> None:
        with self._lock:
            current = self.get(repo_id)
            if current is not None:
                self._put(repo_id, replace(current, primary_head=primary_head))

    def syncing(self, repo_id: str) -> None:
        # A retry of a failed library stays "failed", reason and all, until a sync succeeds: status and the
        # failover report must not show a broken library as merely "syncing" while its retry runs.
        with self._lock:
            current = self.get(repo_id)
            if current is not None and current.state is not LibraryState.FAILED:
                self._put(repo_id, replace(current, state=LibraryState.SYNCING))

    def synchronized(self, repo_id: str, head: str | None, *, forced: bool) -> None:
        now = time.time()
        with self._lock:
            if head is None:  # deleted on the primary: nothing left to track
                self._put(repo_id, None)
                return
            self._put(repo_id, LibraryStatus(repo_id, LibraryState.SYNCHRONIZED, head, head, None, 0, None, now, now,
                                             forced))

    def failed(self, repo_id: str, reason: str) -> float:
        """Record a failure; returns when to retry (exponential backoff)."""
        now = time.time()
        with self._lock:
            current = self.get(repo_id)
            attempts = (current.attempts if current else 0) + 1
            retry_at = now + min(BACKOFF_BASE * 2 ** (attempts - 1), BACKOFF_MAX)
            if current is None:
                current = LibraryStatus(repo_id, LibraryState.FAILED, None, None, None, 0, None, now, None, False)
            self._put(repo_id, replace(
                current, state=LibraryState.FAILED, reason=reason, attempts=attempts, next_attempt=retry_at,
                since=current.since if current.state is LibraryState.FAILED else now))
            return retry_at

    def due_retries(self, now: float) -> list[str]:
        with self._lock:
            self.flush()
            rows = self.db.execute(
                "SELECT repo_id FROM library WHERE state='failed' AND next_attempt <= ?", (now,)
            ).fetchall()
            return [r[0] for r in rows]

    def forget_missing(self, present: set[str]) -> None:
        with self._lock:
            self.flush()
            for (repo_id,) in self.db.execute("SELECT repo_id FROM library").fetchall():
                if repo_id not in present:
                    self.db.execute("DELETE FROM library WHERE repo_id=?", (repo_id,))

    def record_synchronized(self, pairs: list[tuple[str, str]]) -> None:
        """A poll found these libraries at the primary's head on the backup (one transaction)."""
        now = time.time()
        with self._lock:
            self.flush()
            self.db.execute("BEGIN")
            try:
                self.db.executemany(
                    "INSERT INTO library (repo_id, state, primary_head, synced_head, since, last_synced) "
                    "VALUES (?, 'synchronized', ?, ?, ?, ?) ON CONFLICT(repo_id) DO UPDATE SET "
                    "state='synchronized', primary_head=excluded.primary_head, synced_head=excluded.synced_head, "
                    "reason=NULL, attempts=0, next_attempt=NULL, "
                    "since=CASE WHEN state='synchronized' THEN since ELSE excluded.since END "
                    # Rows already synchronized at these heads would be rewritten unchanged (SQLite writes the
                    # row anyway): at 100k libraries that was every poll's largest cost.
                    "WHERE state != 'syncing' AND NOT (state = 'synchronized' AND "
                    "primary_head IS excluded.primary_head AND synced_head IS excluded.synced_head)",
                    [(r, h, h, now, now) for r, h in pairs],
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def oldest_unsynced_since(self) -> float | None:
        with self._lock:
            self.flush()
            row = self.db.execute("SELECT MIN(since) FROM library WHERE state != 'synchronized'").fetchone()
            return row[0] if row else None

    def all(self) -> list[LibraryStatus]:
        with self._lock:
            self.flush()
            return [_status(r) for r in self.db.execute("SELECT * FROM library ORDER BY repo_id").fetchall()]

    def counts(self) -> dict[LibraryState, int]:
        counts = dict.fromkeys(LibraryState, 0)
        with self._lock:
            self.flush()
            for state, n in self.db.execute("SELECT state, COUNT(*) FROM library GROUP BY state"):
                counts[LibraryState(state)] = n
        return counts


def _row(status: LibraryStatus) -> tuple:
    """A status as its table row, in the table's column order."""
    return (status.repo_id, status.state.value, status.primary_head, status.synced_head, status.reason,
            status.attempts, status.next_attempt, status.since, status.last_synced, int(status.forced))


def _status(row: tuple) -> LibraryStatus:
    repo_id, state, primary_head, synced_head, reason, attempts, next_attempt, since, last_synced, forced = row
    return LibraryStatus(repo_id, LibraryState(state), primary_head, synced_head, reason, attempts, next_attempt,
                         since, last_synced, bool(forced))

