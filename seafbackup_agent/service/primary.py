"""Primary mode: detect head moves in Seafile's database and notify the backup, coalesced and retried."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from seafbackup_agent.errors import SeafBackupError
from seafbackup_agent.seafile.ids import is_object_id, is_repo_id
from seafbackup_agent.seafile.library import LibraryRows
from seafbackup_agent.service.heartbeat import Coverage, ProblemBoard
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.transport.errors import RemoteError, failure_kind
from seafbackup_agent.transport.server import MAX_NOTIFY_BATCH

log = logging.getLogger(__name__)

NOTIFY_PROBLEM = "notifications"
HOT_SECONDS = 2.0
"""UPDATE_TIME has a resolution of one second: keep diffing for a while after a change."""


def diff_heads(previous: dict[str, str], current: dict[str, str]) -> list[tuple[str, str | None]]:
    """(library, new head or None if gone) for every library whose head differs between two full reads."""
    changed: list[tuple[str, str | None]] = [(r, h) for r, h in current.items() if previous.get(r) != h]
    changed += [(r, None) for r in previous.keys() - current.keys()]
    return changed


class ChangeDetector:
    """Finds libraries whose `Branch` head moved, by polling (the fallback of `binlog.BinlogChangeDetector`).

    Idle cost is one O(1) query per tick: `information_schema.TABLES.UPDATE_TIME` of `Branch`, which
    InnoDB keeps in memory. Only when it moves (and for a moment after) are all heads read and diffed
    against the last known ones. Seafile's own event queue (`seaf_server.event`) is left to seafevents.
    """

    kind = "probe"

    def __init__(self, open_rows: Callable[[], LibraryRows], *, tick: float = 0.2,
                 coverage: Coverage | None = None) -> None:
        self.open_rows = open_rows
        self.tick = tick
        self.coverage = coverage or Coverage()
        self.heads: dict[str, str] | None = None
        self._last_update_time: object = None
        self._hot_until = 0.0

    def _probe(self, rows: LibraryRows) -> object:
        with rows.conn.cursor() as cur:
            cur.execute(
                "SELECT UPDATE_TIME FROM information_schema.TABLES WHERE TABLE_SCHEMA=DATABASE() "
                "AND TABLE_NAME='Branch'"
            )
            row = cur.fetchone()
        return row[0] if row else None

    def check(self, rows: LibraryRows, now: float) -> list[tuple[str, str | None]]:
        """One tick: the (library, new head or None if gone) pairs that changed since the last diff."""
        update_time = self._probe(rows)
        if update_time != self._last_update_time:
            self._last_update_time = update_time
            self._hot_until = now + HOT_SECONDS
        elif self.heads is not None and now > self._hot_until:
            return []
        return self.diff(dict(rows.iter_heads()))

    def diff(self, current: dict[str, str]) -> list[tuple[str, str | None]]:
        """Adopt `current` as the known heads; what changed since the previous ones (nothing the first time)."""
        previous, self.heads = self.heads, current
        return [] if previous is None else diff_heads(previous, current)

    async def run(self, stop: asyncio.Event, on_change: Callable[[str, str | None], None]) -> None:
        rows: LibraryRows | None = None
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if rows is None:
                    rows = await asyncio.to_thread(self.open_rows)
                began = time.time()
                for repo_id, head in await asyncio.to_thread(self.check, rows, loop.time()):
                    on_change(repo_id, head)
                self.coverage.covered(began)
            except SeafBackupError as exc:
                log.error("change detection: %s", exc)
                rows = None
            except Exception as exc:  # the DB went away: reconnect on the next tick
                log.error("change detection: %s", exc)
                if rows is not None:
                    with contextlib.suppress(Exception):
                        rows.conn.close()
                rows = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)
        if rows is not None:
            rows.conn.close()


class Notifier:
    """Sends the latest head of each changed library to the backup; bursts coalesce, failures back off.

    It also keeps the second half of the heartbeat's claim (see `service.heartbeat`): `delivered_through()` is
    the primary time before which every detected change has been accepted by the backup."""

    def __init__(self, send: Callable[[list[tuple[str, str | None]]], Awaitable[None]], metrics: AgentMetrics,
                 coverage: Coverage, problems: ProblemBoard, *, min_backoff: float = 1.0,
                 max_backoff: float = 60.0) -> None:
        self.send = send
        self.metrics = metrics
        self.coverage = coverage
        self.problems = problems
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.pending: dict[str, tuple[str | None, float | None]] = {}
        """library -> (newest head, D when its oldest undelivered change was detected); insertion order is
        detection order, so the first entry carries the smallest D."""
        self.last_delivered: float | None = None
        self.delivered = 0
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()

    def retry_now(self) -> None:
        """The backup answers again: end a backoff wait now instead of after up to `max_backoff` seconds."""
        self._retry.set()

    def changed(self, repo_id: str, head: str | None) -> None:
        if not is_repo_id(repo_id) or (head is not None and not is_object_id(head)):
            log.warning("change detection reported a malformed library %r / head %r: ignored", repo_id, head)
            return
        entry = self.pending.get(repo_id)
        self.pending[repo_id] = (head, self.coverage.detected_through if entry is None else entry[1])
        self._wake.set()

    def delivered_through(self) -> float | None:
        """C: every change committed before it has been accepted by the backup (None: no claim yet)."""
        detected = self.coverage.detected_through
        if not self.pending or detected is None:
            return detected
        oldest = next(iter(self.pending.values()))[1]
        return None if oldest is None else min(oldest, detected)

    async def run(self, stop: asyncio.Event) -> None:
        """One request at a time carrying everything pending: under load, changes that pile up while a
        request is on its way go together in the next one. Nothing is dropped: a refused batch is retried (and
        reported) until the backup takes it, since the heartbeats claim that every change was delivered."""
        backoff = 0.0
        while not stop.is_set():
            if not self.pending:
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            batch = [(repo_id, head) for repo_id, (head, _) in itertools.islice(self.pending.items(),
                                                                              MAX_NOTIFY_BATCH)]
            try:
                await self.send(batch)
            except SeafBackupError as exc:
                backoff = self._back_off(backoff, exc, len(batch))
            else:
                backoff = 0.0
                self.metrics.notifications.inc(len(batch))
                self._sent(batch)
                continue
            self._retry.clear()
            retry = asyncio.create_task(self._retry.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({retry, stopper}, timeout=backoff, return_when=asyncio.FIRST_COMPLETED)
            retry.cancel()
            stopper.cancel()

    def _sent(self, batch: list[tuple[str, str | None]]) -> None:
        for repo_id, head in batch:
            entry = self.pending.get(repo_id)
            if entry is not None and entry[0] == head:  # not moved again meanwhile
                del self.pending[repo_id]
        self.last_delivered = time.time()
        self.delivered += len(batch)
        self.problems.clear(NOTIFY_PROBLEM)

    def _back_off(self, backoff: float, exc: SeafBackupError, size: int) -> float:
        backoff = min(max(backoff * 2, self.min_backoff), self.max_backoff)
        kind = failure_kind(exc)
        self.metrics.notify_failures.labels(reason=kind).inc()
        refused = isinstance(exc, RemoteError) and 400 <= exc.status < 500
        self.problems.set(NOTIFY_PROBLEM, f"{'the backup refused' if refused else 'cannot deliver'} {size} "
                                          f"notifications: {exc}")
        log.warning("notify: %s; %d pending, retrying in %.1fs", exc, len(self.pending), backoff)
        return backoff
