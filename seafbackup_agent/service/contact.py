"""The backup's side of the heartbeats: pull one from the primary's agent every interval, and measure the
database replication's lag from the heartbeat row that replication carries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pymysql

from seafbackup_agent.config import DatabaseSettings
from seafbackup_agent.errors import SeafBackupError
from seafbackup_agent.service.freshness import FreshnessTracker
from seafbackup_agent.service.heartbeat import DbHeartbeatReader
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.transport.errors import ProtocolError, failure_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DbLag:
    seconds: float | None
    """An upper bound of the replication lag (the age of the newest replicated heartbeat row), None if unknown."""
    error: str | None
    measured_at: float


class PrimaryContact:
    def __init__(self, pull: Callable[[], Any], tracker: FreshnessTracker, metrics: AgentMetrics, *,
                 interval: float, request_poll: Callable[..., None], database: DatabaseSettings | None = None,
                 marker_database: str = "seafbackup", nodes: Callable[[], list[dict[str, Any]]] | None = None,
                 probe_nodes: Callable[[], Awaitable[None]] | None = None) -> None:
        self.pull = pull
        self.tracker = tracker
        self.metrics = metrics
        self.interval = interval
        self.request_poll = request_poll
        self.database = database
        self.marker_database = marker_database
        self._db_reader = DbHeartbeatReader(database, marker_database) if database is not None else None
        self.clock_offset_low: float | None = None
        """A lower bound of (backup clock - primary clock), from the last heartbeat's round trip."""
        self.db_lag: DbLag | None = None
        self.nodes = nodes
        """The primary's nodes as the source knows them (URL, in use, answers), for `status`."""
        self.probe_nodes = probe_nodes

    async def run(self, stop: asyncio.Event) -> None:
        if self.probe_nodes is not None and self.nodes is not None and len(self.nodes()) > 1:
            await asyncio.gather(self._pull(stop), self._probe(stop))
        else:
            await self._pull(stop)

    async def _probe(self, stop: asyncio.Event) -> None:
        """Every interval, the primary's nodes not in use are asked for a heartbeat: `status` says which answer
        (the node in use answers the pulls themselves)."""
        assert self.probe_nodes is not None
        while not stop.is_set():
            await self.probe_nodes()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    def nodes_doc(self) -> list[dict[str, Any]] | None:
        return self.nodes() if self.nodes is not None else None

    async def _pull(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.pull_once()
                if self._db_reader is not None:
                    await self.measure_db_lag()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            if self._db_reader is not None:
                await asyncio.to_thread(self._db_reader.close)

    async def pull_once(self) -> None:
        tracker = self.tracker
        sent_at = time.time()
        try:
            doc = _checked(await self.pull())
        except SeafBackupError as exc:
            if tracker.contact is None or tracker.contact.ok:
                log.error("primary agent: %s", exc)
            tracker.contact_failed(str(exc), failure_kind(exc))
            self.metrics.heartbeat_failures.labels(kind=failure_kind(exc)).inc()
            return
        # Regained: it answered before, then not (a failure before the first answer is the start, not an outage).
        regained = tracker.primary_last_seen is not None and tracker.contact is not None and not tracker.contact.ok
        self.clock_offset_low = sent_at - doc["now"]
        same_instance = tracker.heartbeat(
            sent_at=sent_at, instance=doc["instance"], age=doc["age"],
            detector=doc["change_detector"], pending=doc["pending"], problem=doc["problem"],
            problem_age=doc["problem_age"])
        if regained:
            log.info("primary agent reachable again: catching up with a full poll")
        if not same_instance:
            log.info("the primary's agent is an instance not seen before (%s): catching up with a full poll",
                     doc["instance"])
        if regained or not same_instance:
            # After an outage, failed libraries are retried at once too (they most likely failed on it).
            self.request_poll(retry_failed=regained)

    async def measure_db_lag(self) -> None:
        assert self._db_reader is not None
        now = time.time()
        try:
            beat_at = await asyncio.to_thread(self._db_reader.read)
        except (pymysql.MySQLError, SeafBackupError) as exc:
            message = exc.args[-1] if isinstance(exc, pymysql.MySQLError) and exc.args else exc
            self.db_lag = DbLag(None, f"cannot read {self.marker_database}.heartbeat on the backup's database: "
                                      f"{message} (setup_backup.yml creates it on the primary, replication carries "
                                      "it, and grants the Seafile account SELECT on it)", now)
            self.metrics.db_lag_seconds.set(math.nan)
            return
        if beat_at is None:
            self.db_lag = DbLag(None, f"no heartbeat row has reached {self.marker_database}.heartbeat yet", now)
        elif self.clock_offset_low is None:
            self.db_lag = DbLag(None, "no heartbeat from the primary's agent yet to compare clocks", now)
        else:
            self.db_lag = DbLag(max(0.0, now - beat_at - self.clock_offset_low), None, now)
        self.metrics.db_lag_seconds.set(math.nan if self.db_lag.seconds is None else self.db_lag.seconds)

    def db_lag_doc(self) -> dict[str, Any] | None:
        if self.db_lag is None:
            return None
        lag = self.db_lag
        # The bound grows while nothing new arrives, also between two measurements.
        seconds = None if lag.seconds is None else round(lag.seconds + (time.time() - lag.measured_at), 3)
        return {"seconds": seconds, "error": lag.error, "measured_at": lag.measured_at}


def _checked(doc: Any) -> dict[str, Any]:
    """The heartbeat's fields, or ProtocolError: a malformed heartbeat is no evidence."""
    number = (int, float)
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("instance"), str)
        and isinstance(doc.get("now"), number)
        and (doc.get("age") is None or isinstance(doc.get("age"), number))
        and isinstance(doc.get("change_detector"), str)
        and isinstance(doc.get("pending"), int)
        and (doc.get("problem") is None or isinstance(doc.get("problem"), str))
        and (doc.get("problem_age") is None or isinstance(doc.get("problem_age"), number))
    ):
        raise ProtocolError("the primary's heartbeat is malformed")
    return doc
