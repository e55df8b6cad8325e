"""Per-library sync state on the backup, in the agent's own SQLite file."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
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
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # The state is advisory (the truth is Branch on the backup and the primary's heads, and a poll
        # rebuilds it): WAL with synchronous=NORMAL stays consistent after a crash and needs no fsync per
        # statement. FULL cost one WAL fsync per notification and per sync, on the event loop's thread.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        # A library left "syncing" by a previous run (killed mid-copy) is waiting again.
        self.db.execute("UPDATE library SET state='waiting' WHERE state='syncing'")

    def close(self) -> None:
        self.db.close()

    def get(self, repo_id: str) -> LibraryStatus | None:
        row = self.db.execute("SELECT * FROM library WHERE repo_id=?", (repo_id,)).fetchone()
        return _status(row) if row else None

    def waiting(self, repo_id: str, primary_head: str | None) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO library (repo_id, state, primary_head, since) VALUES (?, 'waiting', ?, ?) "
            "ON CONFLICT(repo_id) DO UPDATE SET primary_head=excluded.primary_head, "
            "since=CASE WHEN state='waiting' THEN since ELSE excluded.since END, "
            "state=CASE WHEN state='failed' AND primary_head IS excluded.primary_head THEN 'failed' ELSE 'waiting' END",
            (repo_id, primary_head, now),
        )

    def heading_to(self, repo_id: str, primary_head: str | None) -> None:
        self.db.execute("UPDATE library SET primary_head=? WHERE repo_id=?", (primary_head, repo_id))

    def syncing(self, repo_id: str) -> None:
        # A retry of a failed library stays "failed", reason and all, until a sync succeeds: status and the
        # failover report must not show a broken library as merely "syncing" while its retry runs.
        self.db.execute("UPDATE library SET state='syncing' WHERE repo_id=? AND state != 'failed'", (repo_id,))

    def synchronized(self, repo_id: str, head: str | None, *, forced: bool) -> None:
        now = time.time()
        if head is None:  # deleted on the primary: nothing left to track
            self.db.execute("DELETE FROM library WHERE repo_id=?", (repo_id,))
            return
        self.db.execute(
            "INSERT INTO library (repo_id, state, primary_head, synced_head, since, last_synced, forced) "
            "VALUES (?, 'synchronized', ?, ?, ?, ?, ?) ON CONFLICT(repo_id) DO UPDATE SET state='synchronized', "
            "primary_head=excluded.primary_head, synced_head=excluded.synced_head, reason=NULL, attempts=0, "
            "next_attempt=NULL, since=excluded.since, last_synced=excluded.last_synced, forced=excluded.forced",
            (repo_id, head, head, now, now, int(forced)),
        )

    def failed(self, repo_id: str, reason: str) -> float:
        """Record a failure; returns when to retry (exponential backoff)."""
        row = self.db.execute("SELECT attempts FROM library WHERE repo_id=?", (repo_id,)).fetchone()
        attempts = (row[0] if row else 0) + 1
        retry_at = time.time() + min(BACKOFF_BASE * 2 ** (attempts - 1), BACKOFF_MAX)
        self.db.execute(
            "INSERT INTO library (repo_id, state, reason, attempts, next_attempt, since) "
            "VALUES (?, 'failed', ?, ?, ?, ?) ON CONFLICT(repo_id) DO UPDATE SET state='failed', "
            "reason=excluded.reason, attempts=excluded.attempts, next_attempt=excluded.next_attempt, "
            "since=CASE WHEN state='failed' THEN since ELSE excluded.since END",
            (repo_id, reason, attempts, retry_at, time.time()),
        )
        return retry_at

    def due_retries(self, now: float) -> list[str]:
        rows = self.db.execute(
            "SELECT repo_id FROM library WHERE state='failed' AND next_attempt <= ?", (now,)
        ).fetchall()
        return [r[0] for r in rows]

    def forget_missing(self, present: set[str]) -> None:
        for (repo_id,) in self.db.execute("SELECT repo_id FROM library").fetchall():
            if repo_id not in present:
                self.db.execute("DELETE FROM library WHERE repo_id=?", (repo_id,))

    def record_synchronized(self, pairs: list[tuple[str, str]]) -> None:
        """A poll found these libraries at the primary's head on the backup (one transaction)."""
        now = time.time()
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO library (repo_id, state, primary_head, synced_head, since, last_synced) "
                "VALUES (?, 'synchronized', ?, ?, ?, ?) ON CONFLICT(repo_id) DO UPDATE SET state='synchronized', "
                "primary_head=excluded.primary_head, synced_head=excluded.synced_head, reason=NULL, attempts=0, "
                "next_attempt=NULL, since=CASE WHEN state='synchronized' THEN since ELSE excluded.since END "
                # Rows already synchronized at these heads would be rewritten unchanged (SQLite writes the
                # row anyway): at 100k libraries that was every poll's largest cost.
                "WHERE state != 'syncing' AND NOT (state = 'synchronized' AND primary_head IS excluded.primary_head "
                "AND synced_head IS excluded.synced_head)",
                [(r, h, h, now, now) for r, h in pairs],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def oldest_unsynced_since(self) -> float | None:
        row = self.db.execute("SELECT MIN(since) FROM library WHERE state != 'synchronized'").fetchone()
        return row[0] if row else None

    def all(self) -> list[LibraryStatus]:
        return [_status(r) for r in self.db.execute("SELECT * FROM library ORDER BY repo_id").fetchall()]

    def counts(self) -> dict[LibraryState, int]:
        counts = dict.fromkeys(LibraryState, 0)
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM library GROUP BY state"):
            counts[LibraryState(state)] = n
        return counts


def _status(row: tuple) -> LibraryStatus:
    repo_id, state, primary_head, synced_head, reason, attempts, next_attempt, since, last_synced, forced = row
    return LibraryStatus(repo_id, LibraryState(state), primary_head, synced_head, reason, attempts, next_attempt,
                         since, last_synced, bool(forced))

