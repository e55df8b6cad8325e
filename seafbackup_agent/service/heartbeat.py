"""The primary's side of the heartbeats: up to when every head move has been delivered to the backup.

Two steps make the claim, each on the primary's own clock:

* *Detected through D*: every `Branch` change committed before D has been handed to the notifier. The binlog
  detector proves it with a barrier: at time t it reads the binlog's end position P (`SHOW MASTER STATUS`);
  once the reader has gone past P, every transaction committed before t has been read and handed over, so
  D = t. The polling fallback sets D to the start of each finished check.
* *Delivered through C*: C = min(D, the D at which the oldest change still pending was detected). A change
  stays pending until the backup has answered 202 to a notification carrying it (or a newer head).

`GET /v1/heartbeat` answers with the age of C (now - C) and the primary's problems, if any. The backup pulls it
and converts the age to its own clock (see `freshness`), so clocks need not agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pymysql

from seafbackup_agent.config import DatabaseSettings
from seafbackup_agent.errors import SeafBackupError
from seafbackup_agent.seafile.db import connect
from seafbackup_agent.service.metrics import AgentMetrics

log = logging.getLogger(__name__)

DB_HEARTBEAT_TABLE = "heartbeat"
DB_HEARTBEAT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS `{database}`.`heartbeat` (source VARCHAR(64) NOT NULL PRIMARY KEY, "
    "instance CHAR(32) NOT NULL, beat_at DOUBLE NOT NULL) ENGINE=InnoDB"
)
"""The replicated heartbeat row (setup_backup.yml creates it in the marker database): `beat_at` is the primary
agent's clock when it wrote the row."""


def new_instance_id() -> str:
    return secrets.token_hex(16)


@dataclass(order=True, frozen=True, slots=True)
class LogPosition:
    """A binlog position, ordered: (sequence number of the file, offset)."""

    number: int
    offset: int
    file: str = field(compare=False)

    @classmethod
    def of(cls, file: str, offset: int) -> LogPosition:
        suffix = file.rpartition(".")[2]
        return cls(int(suffix) if suffix.isdigit() else 0, offset, file)


class Coverage:
    """D: the primary time before which every committed head move has been handed to the notifier."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.detected_through: float | None = None
        self._barriers: list[tuple[LogPosition, float]] = []
        self._seen: LogPosition | None = None

    def covered(self, at: float) -> None:
        """Every change committed before `at` has been handed over (the polling detector's finished check)."""
        if self.detected_through is None or at > self.detected_through:
            self.detected_through = at

    def barrier(self, end: LogPosition, at: float) -> None:
        """At `at` the binlog ended at `end`; D reaches `at` once the reader has gone past `end`."""
        if self._seen is not None and self._seen >= end:
            self.covered(at)
        else:
            self._barriers.append((end, at))

    def seen(self, position: LogPosition) -> None:
        """The reader has handed over everything before `position` (called on the event loop, after the changes)."""
        if self._seen is None or position > self._seen:
            self._seen = position
        passed = [b for b in self._barriers if b[0] <= position]
        if passed:
            self._barriers = [b for b in self._barriers if b[0] > position]
            self.covered(max(at for _, at in passed))

    def restart(self) -> None:
        """The reader starts over (after a gap or a fallback): barriers of the old stream cannot be passed."""
        self._barriers.clear()
        self._seen = None


@dataclass(slots=True)
class Problem:
    """A condition that stops evidence from advancing, and since when (primary clock)."""

    text: str
    since: float


class ProblemBoard:
    """The primary's current problems by source (notify, change detection, backup contact); the oldest wins."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._problems: dict[str, Problem] = {}

    def set(self, source: str, text: str) -> None:
        current = self._problems.get(source)
        if current is None:
            self._problems[source] = Problem(text, self.clock())
        else:
            current.text = text

    def clear(self, source: str) -> None:
        self._problems.pop(source, None)

    def get(self, source: str) -> Problem | None:
        return self._problems.get(source)

    def oldest(self) -> tuple[str, Problem] | None:
        if not self._problems:
            return None
        return min(self._problems.items(), key=lambda item: item[1].since)


class DbHeartbeat:
    """Writes the replicated heartbeat row every interval; the backup reads its age as the replication lag."""

    def __init__(self, database: DatabaseSettings, marker_database: str, instance: str, *, interval: float,
                 metrics: AgentMetrics) -> None:
        self.database = database
        self.marker_database = marker_database
        self.instance = instance
        self.interval = interval
        self.metrics = metrics
        self.source = socket.gethostname()[:64]
        self.last_written: float | None = None
        self.error: str | None = None
        self._conn: pymysql.connections.Connection | None = None

    def _write(self, now: float) -> None:
        if self._conn is None:
            self._conn = connect(self.database)
        with self._conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO `{self.marker_database}`.`{DB_HEARTBEAT_TABLE}` (source, instance, beat_at) "
                "VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE instance=VALUES(instance), beat_at=VALUES(beat_at)",
                (self.source, self.instance, now),
            )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.time()
            try:
                await asyncio.to_thread(self._write, now)
            except (pymysql.MySQLError, SeafBackupError) as exc:
                self._failed(exc)
            else:
                if self.error is not None:
                    log.info("database heartbeat: written again")
                self.error = None
                self.last_written = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval if self.error is None else 30.0)
        self._close()

    def _failed(self, exc: BaseException) -> None:
        message = str(exc.args[-1]) if isinstance(exc, pymysql.MySQLError) and exc.args else str(exc)
        text = (f"cannot write {self.marker_database}.{DB_HEARTBEAT_TABLE} on the primary's database: {message} "
                "(setup_backup.yml creates it and grants the Seafile account INSERT, UPDATE on it); the backup "
                "cannot measure replication lag without it")
        if text != self.error:
            log.error("database heartbeat: %s", text)
        self.error = text
        self.metrics.heartbeat_failures.labels(kind="database").inc()
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class DbHeartbeatReader:
    """Reads the newest `beat_at` replicated to this database server, on one connection kept between reads
    (a new one each second cost more CPU than the rest of the heartbeat: PyMySQL loads the system's CA
    certificates for each). Used from one thread at a time."""

    def __init__(self, database: DatabaseSettings, marker_database: str) -> None:
        self.database = database
        self.marker_database = marker_database
        self._conn: pymysql.connections.Connection | None = None

    def read(self) -> float | None:
        """None when no row has arrived yet; raises the database's error (and reconnects next time)."""
        try:
            if self._conn is None:
                self._conn = connect(self.database)
            with self._conn.cursor() as cur:
                cur.execute(f"SELECT MAX(beat_at) FROM `{self.marker_database}`.`{DB_HEARTBEAT_TABLE}`")
                row = cur.fetchone()
        except BaseException:
            self.close()
            raise
        return float(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
