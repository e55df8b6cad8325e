"""Primary mode: change detection in O(change) by tailing the primary database's binlog.

The primary's MariaDB/MySQL writes every committed row change to its binary log (`log-bin`,
`binlog_format=ROW`: role seafbackup_mysql_primary). This detector reads that log as a replica does
(python-mysql-replication's `BinLogStreamReader`, in a thread because it blocks), keeps the row events of
`<seafile db>.Branch` and `.Repo`, and reports each committed transaction's library heads at once: no query
per tick, no re-read of all heads. It reads by binlog file and offset (not GTID): the same on MariaDB and
MySQL, and it starts exactly at the current end (`SHOW MASTER STATUS`).

`Repo` is watched too because Seafile creates a library with separate statements, `Branch` before `Repo`:
the backup, told of the `Branch` row alone, would find no library yet; the `Repo` insert reports it again.

When the binlog cannot be read (binary logging off, not ROW, or the account lacks the privileges) it logs
one error saying what to grant or set and runs the polling `ChangeDetector` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.constants import ER
from pymysqlreplication import BinLogStreamReader, row_event
from pymysqlreplication.event import HeartbeatLogEvent, RotateEvent, XidEvent
from pymysqlreplication.exceptions import BinLogNotEnabled
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from seafbackup_agent.config import DatabaseSettings
from seafbackup_agent.errors import SeafBackupError
from seafbackup_agent.seafile.db import connect, error_code
from seafbackup_agent.seafile.ids import is_repo_id
from seafbackup_agent.seafile.library import BRANCH, LibraryRows
from seafbackup_agent.service.heartbeat import Coverage, LogPosition
from seafbackup_agent.service.primary import ChangeDetector

log = logging.getLogger(__name__)
# The reader warns, in a multi-line message at every connection, that binlog_row_metadata is not FULL (column
# names then come from information_schema, which is fine here); its reconnects are logged by this module.
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)

SERVER_ID_BASE = 2_000_000_000
SERVER_ID_SPAN = 100_000_000
_ROW_EVENTS = (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)
_LOOKUP = object()
"""Pending value of a library whose `Repo` row appeared: its head is read once at commit."""

OnChange = Callable[[str, str | None], None]


def causal_wait(cur: Any) -> None:
    """A read before the binlog's end is read: on a Galera node (whose sessions wait for causality, see
    `seafile.db.causal_reads_on_galera`) it returns once the node has applied every write set the cluster
    committed before it, so the end read next holds every head move committed on any node before this moment (a
    coverage barrier must not claim a commit still in this node's apply queue). Elsewhere a trivial read."""
    cur.execute("SELECT 1 FROM Branch LIMIT 1")
    cur.fetchall()


def default_server_id(hostname: str | None = None) -> int:
    """The server id this host's binlog reader registers with: 2000000000-2099999999, from the host name.

    A primary drops a binlog reader when another one connects with the same server id. Replicas use small ids
    (setup_backup.yml: `seafbackup_mysql_server_id`) and each primary node of a cluster runs its own agent,
    hence an id per host name, far above them. `[backup] binlog_server_id` overrides it."""
    name = hostname or socket.gethostname()
    return SERVER_ID_BASE + zlib.crc32(name.encode()) % SERVER_ID_SPAN


@dataclass(frozen=True, slots=True)
class BinlogPosition:
    file: str
    pos: int

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"


@dataclass(frozen=True, slots=True)
class _Start:
    """Where reading begins and every library's head at that moment (read after the position)."""

    position: BinlogPosition
    heads: dict[str, str]
    read_at: float
    """When reading began: every change committed before it is in `heads` or after `position`."""


class BinlogUnavailable(SeafBackupError):
    """This account and server configuration cannot read the binlog: the detector falls back to polling."""


def _changes(event: row_event.RowsEvent) -> Iterator[tuple[str, object]]:
    """(library, head, None if gone, or _LOOKUP) for the rows of one `Branch` or `Repo` row event; rows whose
    repo_id is not a library id (Seafile writes none) are left out, the backup would refuse them."""
    for repo_id, head in _row_changes(event):
        if is_repo_id(repo_id):
            yield repo_id, head


def _row_changes(event: row_event.RowsEvent) -> Iterator[tuple[str, object]]:
    for row in event.rows:
        if isinstance(event, UpdateRowsEvent):
            before, after = row["before_values"], row["after_values"]
        elif isinstance(event, DeleteRowsEvent):
            before, after = row["values"], None
        else:
            before, after = None, row["values"]
        if event.table == "Repo":
            if before is not None and (after is None or after["repo_id"] != before["repo_id"]):
                yield before["repo_id"], None
            if after is not None and (before is None or after["repo_id"] != before["repo_id"]):
                yield after["repo_id"], _LOOKUP
            continue
        was = before is not None and before["name"] == BRANCH
        now = after is not None and after["name"] == BRANCH
        if was and not (now and after["repo_id"] == before["repo_id"]):
            yield before["repo_id"], None
        if now:
            yield after["repo_id"], after["commit_id"]


class BinlogChangeDetector:
    """Reports `(library, new head)` for each committed `Branch` change (`None`: the library is gone).

    Same interface as `ChangeDetector` (`run(stop, on_change)`), which it keeps as its fallback and whose
    `diff` it reuses for the one full comparison it needs: at start (to learn the heads) and when the position
    to resume from is gone after an outage (binlog purged). A lost connection or a restarted server is
    resumed from the last transaction boundary seen, with backoff; `FLUSH BINARY LOGS` is followed.
    """

    def __init__(self, database: DatabaseSettings, open_rows: Callable[[], LibraryRows], *, server_id: int,
                 heartbeat: float = 0.5, max_backoff: float = 30.0,
                 on_kind: Callable[[str], None] | None = None, coverage: Coverage | None = None) -> None:
        self.database = database
        self.server_id = server_id
        self.heartbeat = heartbeat
        self.max_backoff = max_backoff
        self.coverage = coverage or Coverage()
        self.fallback = ChangeDetector(open_rows, coverage=self.coverage)
        self._barrier_conn: pymysql.connections.Connection | None = None
        self.kind = "binlog"
        self.position: BinlogPosition | None = None
        """The last transaction boundary read: where a reconnect resumes."""
        self._on_kind = on_kind or (lambda kind: None)
        self._on_change: OnChange = lambda repo_id, head: None
        self._account = f"'{database.user}'@'%'"
        self._mariadb = True
        self._stream_read = False
        """The current stream read a transaction or a heartbeat (sent only once the server has nothing more to
        send): it was up, and an outage after it is a new one. A stream that fails right after connecting (the
        server's opening rotate event) is still the same outage, retried with a growing wait."""

    # --- the event loop's side ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_change: OnChange) -> None:
        self._on_change = on_change
        self._on_kind(self.kind)
        try:
            start = await self._first_start(stop)
        except BinlogUnavailable as exc:
            await self._fall_back(exc, stop, on_change)
            return
        if start is None:
            return
        self._resync(start.heads)
        self.coverage.covered(start.read_at)
        self.position = start.position
        log.info("change detection: tailing the binlog of %s from %s (server id %d)", self.database.db_name,
                 start.position, self.server_id)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[None] = loop.create_future()
        halt = threading.Event()
        thread = threading.Thread(target=self._tail_thread, args=(loop, halt, outcome), name="binlog-tail",
                                  daemon=True)
        thread.start()
        stopper = asyncio.create_task(stop.wait())
        try:
            racing: set[asyncio.Future[Any]] = {stopper, outcome}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            halt.set()
            # The reader notices `halt` at its next event; the server sends a heartbeat every `heartbeat` s.
            await asyncio.to_thread(thread.join, self.heartbeat + 5)
        error = outcome.exception() if outcome.done() else None
        if error is not None and not stop.is_set():
            await self._fall_back(error, stop, on_change)

    async def _first_start(self, stop: asyncio.Event) -> _Start | None:
        """The position and heads to start from; retried with backoff while the database is unreachable."""
        backoff = 0.0
        while not stop.is_set():
            try:
                return await asyncio.to_thread(self._begin)
            except BinlogUnavailable:
                raise
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), self.max_backoff)
                log.error("change detection: %s; retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
        return None

    async def _fall_back(self, exc: BaseException, stop: asyncio.Event, on_change: OnChange) -> None:
        log.error("change detection: cannot read the binlog of %s: %s. Falling back to polling "
                  "information_schema every %.1fs (costs CPU per library while heads move).",
                  self.database.db_name, exc, self.fallback.tick)
        self.kind = self.fallback.kind
        self._on_kind(self.kind)
        self.coverage.restart()
        await self.fallback.run(stop, on_change)

    def _resync(self, heads: dict[str, str]) -> None:
        for repo_id, head in self.fallback.diff(heads):
            self._on_change(repo_id, head)

    def _apply(self, changes: dict[str, str | None]) -> None:
        known = self.fallback.heads if self.fallback.heads is not None else {}
        for repo_id, head in changes.items():
            if head is None:
                known.pop(repo_id, None)
            else:
                known[repo_id] = head
            self._on_change(repo_id, head)

    def end_position(self) -> LogPosition | None:
        """The binlog's end now, for a coverage barrier (blocking; from one thread at a time). None while the
        polling fallback runs: it reports its coverage itself."""
        if self.kind != "binlog":
            return None
        try:
            if self._barrier_conn is None:
                self._barrier_conn = connect(self.database)
            with self._barrier_conn.cursor() as cur:
                causal_wait(cur)
                end = self._binlog_end(cur)
        except BaseException:
            self.close_barrier()
            raise
        return LogPosition.of(end.file, end.pos)

    def close_barrier(self) -> None:
        if self._barrier_conn is not None:
            with contextlib.suppress(Exception):
                self._barrier_conn.close()
            self._barrier_conn = None

    # --- the reader thread ----------------------------------------------------------------------------

    def _begin(self) -> _Start:
        """Check that the binlog is readable, then read its current end and every head (in that order: a head
        moved in between is reported twice, never missed)."""
        read_at = time.time()
        conn = connect(self.database)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, VERSION(), CURRENT_USER()")
                log_bin, binlog_format, version, account = cur.fetchone()
                self._mariadb = "mariadb" in str(version).lower()
                user, _, host = str(account).rpartition("@")
                self._account = f"'{user}'@'{host}'"
                if not int(log_bin):
                    raise BinlogUnavailable("binary logging is off on the primary's database",
                                            hint="set log-bin and binlog_format=ROW (setup_backup.yml does)")
                if str(binlog_format).upper() != "ROW":
                    raise BinlogUnavailable(f"binlog_format is {binlog_format}, not ROW",
                                            hint="set binlog_format=ROW (setup_backup.yml does)")
                causal_wait(cur)
                position = self._binlog_end(cur)
            return _Start(position, dict(LibraryRows(conn).iter_heads()), read_at)
        finally:
            conn.close()

    def _binlog_end(self, cur: Any) -> BinlogPosition:
        for statement in ("SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"):  # MySQL 8.4 knows only the second
            try:
                cur.execute(statement)
            except pymysql.MySQLError as exc:
                if error_code(exc) == ER.PARSE_ERROR:
                    continue
                if error_code(exc) == ER.SPECIFIC_ACCESS_DENIED_ERROR:
                    raise self._privileges_missing(exc) from exc
                raise
            row = cur.fetchone()
            if row is None:
                raise BinlogUnavailable("binary logging is off on the primary's database",
                                        hint="set log-bin and binlog_format=ROW (setup_backup.yml does)")
            return BinlogPosition(str(row[0]), int(row[1]))
        raise BinlogUnavailable("the server knows neither SHOW MASTER STATUS nor SHOW BINARY LOG STATUS")

    def _privileges_missing(self, exc: BaseException) -> BinlogUnavailable:
        monitor = "BINLOG MONITOR" if self._mariadb else "REPLICATION CLIENT"
        return BinlogUnavailable(
            f"{self._account} lacks a privilege ({exc.args[-1]})",
            hint=f"on the primary's database: GRANT REPLICATION SLAVE, {monitor} ON *.* TO {self._account}; "
                 "setup_backup.yml grants it",
        )

    def _tail_thread(self, loop: asyncio.AbstractEventLoop, halt: threading.Event,
                     outcome: asyncio.Future[None]) -> None:
        def finish(error: BaseException | None) -> None:
            if outcome.done():
                return
            if error is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(error)

        error: BaseException | None = None
        try:
            self._tail(loop, halt)
        except BaseException as exc:  # handed to the event loop, which falls back to polling
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is stopping
            loop.call_soon_threadsafe(finish, error)

    def _tail(self, loop: asyncio.AbstractEventLoop, halt: threading.Event) -> None:
        """Read until `halt`; reconnect with backoff; after a gap, compare all heads once."""
        backoff = 0.0
        while not halt.is_set():
            assert self.position is not None
            stream = self._open_stream(self.position)
            lookup: list[pymysql.connections.Connection] = []
            self._stream_read = False
            try:
                self._read(stream, loop, halt, lookup)
                return
            except BinlogUnavailable:
                raise
            except BinLogNotEnabled as exc:
                raise BinlogUnavailable("binary logging is off on the primary's database") from exc
            except Exception as exc:
                if error_code(exc) == ER.SPECIFIC_ACCESS_DENIED_ERROR:  # needs REPLICATION SLAVE
                    raise self._privileges_missing(exc) from exc
                if error_code(exc) == ER.MASTER_FATAL_ERROR_READING_BINLOG and self._restart_after_gap(loop, exc):
                    backoff = 0.0
                    continue
                if self._stream_read:  # up again since the last failure: not the same outage
                    backoff = 0.0
                backoff = min(max(backoff * 2, 0.5), self.max_backoff)
                log.warning("change detection: binlog: %s; reconnecting from %s in %.1fs",
                            exc.args[-1] if error_code(exc) else exc, self.position, backoff)
                halt.wait(backoff)
            finally:
                stream.close()
                for conn in lookup:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _restart_after_gap(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> bool:
        """The position to resume from is gone (purged after a long outage): start at the current end and
        compare all heads once. False when the database cannot be read right now (retried with backoff)."""
        log.warning("change detection: binlog position %s is gone (%s); comparing all heads once and reading on "
                    "from the current end", self.position, exc.args[-1])
        try:
            start = self._begin()
        except BinlogUnavailable:
            raise
        except Exception as begin_exc:
            log.warning("change detection: %s", begin_exc)
            return False
        self.position = start.position
        self._call(loop, self._resync, start.heads)
        self._call(loop, self.coverage.covered, start.read_at)
        return True

    def _open_stream(self, position: BinlogPosition) -> BinLogStreamReader:
        # The reader names row columns from information_schema (binlog_row_metadata is rarely FULL) and keeps
        # them in a process-wide cache: forget them at each connection, in case Seafile altered its tables.
        getattr(row_event, "_COLUMN_NAME_CACHE", {}).clear()
        settings = self.database
        connection = {"user": settings.user, "password": settings.password, "charset": settings.charset,
                      "connect_timeout": 5, "read_timeout": max(10.0, self.heartbeat * 10)}
        if settings.unix_socket:
            connection["unix_socket"] = settings.unix_socket
        else:
            connection.update(host=settings.host, port=settings.port)
        return BinLogStreamReader(
            connection_settings=connection,
            server_id=self.server_id,
            log_file=position.file,
            log_pos=position.pos,
            resume_stream=True,
            blocking=True,
            only_schemas=[settings.db_name],
            only_tables=["Branch", "Repo"],
            only_events=[*_ROW_EVENTS, XidEvent, RotateEvent, HeartbeatLogEvent],
            slave_heartbeat=self.heartbeat,
            use_column_name_cache=True,
            enable_logging=False,  # it would log its settings, the password among them
        )

    def _read(self, stream: BinLogStreamReader, loop: asyncio.AbstractEventLoop, halt: threading.Event,
              lookup: list[pymysql.connections.Connection]) -> None:
        pending: dict[str, object] = {}
        for event in stream:
            if isinstance(event, _ROW_EVENTS):
                for repo_id, head in _changes(event):
                    if head is _LOOKUP and pending.get(repo_id) not in (None, _LOOKUP):
                        continue  # Branch written in the same transaction: its head is known
                    pending[repo_id] = head
            elif isinstance(event, XidEvent):
                self._stream_read = True
                if pending:
                    self._call(loop, self._apply, self._resolve(pending, lookup))
                    pending = {}
                self.position = BinlogPosition(stream.log_file, stream.log_pos)
                self._call(loop, self.coverage.seen, LogPosition.of(stream.log_file, stream.log_pos))
            elif isinstance(event, RotateEvent):
                self.position = BinlogPosition(stream.log_file, stream.log_pos)
            elif isinstance(event, HeartbeatLogEvent) and not pending:
                self._stream_read = True
                # Sent only when the server has nothing more to send: everything before its position is read.
                self._call(loop, self.coverage.seen, LogPosition.of(stream.log_file, stream.log_pos))
            if halt.is_set():
                return
        raise ConnectionError("the server ended the binlog stream")

    def _resolve(self, pending: dict[str, object], lookup: list[pymysql.connections.Connection]) -> dict:
        """The head of each library whose `Repo` row appeared (one indexed read each; creations are rare)."""
        changes: dict[str, str | None] = {}
        for repo_id, head in pending.items():
            if head is _LOOKUP:
                if not lookup:
                    lookup.append(connect(self.database))
                head = LibraryRows(lookup[0]).head(repo_id)
                if head is None:
                    continue  # no Branch row yet: its insert will be reported
            changes[repo_id] = head  # type: ignore[assignment]
        return changes

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, callback: Callable, *args: object) -> None:
        loop.call_soon_threadsafe(callback, *args)
