"""The primary agent's view of the pairing: what it tells the backup in heartbeats, and its own `status`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, Protocol

from seafbackup_agent.errors import SeafBackupError
from seafbackup_agent.service.heartbeat import Coverage, DbHeartbeat, LogPosition, ProblemBoard, new_instance_id
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.service.primary import Notifier
from seafbackup_agent.transport.errors import failure_kind

log = logging.getLogger(__name__)

DETECTION_PROBLEM = "change detection"
BACKUP_PROBLEM = "backup"


class Detector(Protocol):
    kind: str

    def end_position(self) -> LogPosition | None: ...

    def close_barrier(self) -> None: ...


class BackupChecker(Protocol):
    async def check(self) -> dict[str, Any]: ...


class PrimaryPairing:
    def __init__(self, *, notifier: Notifier, coverage: Coverage, problems: ProblemBoard, detector: Detector,
                 backup: BackupChecker, db_heartbeat: DbHeartbeat | None, interval: float,
                 metrics: AgentMetrics, backup_url: str) -> None:
        self.instance = db_heartbeat.instance if db_heartbeat else new_instance_id()
        self.started_at = time.time()
        self.notifier = notifier
        self.coverage = coverage
        self.problems = problems
        self.detector = detector
        self.backup = backup
        self.db_heartbeat = db_heartbeat
        self.interval = interval
        self.metrics = metrics
        self.backup_url = backup_url
        self.last_pulled: float | None = None
        """When the backup last asked for a heartbeat (a signed request: the backup has our token)."""
        self.backup_checked: float | None = None

    # --- what the backup pulls --------------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        now = time.time()
        self.last_pulled = now
        delivered = self.notifier.delivered_through()
        oldest = self.problems.oldest()
        return {
            "instance": self.instance,
            "now": now,
            "age": None if delivered is None else max(0.0, now - delivered),
            "change_detector": self.detector.kind,
            "pending": len(self.notifier.pending),
            "problem": None if oldest is None else f"{oldest[0]}: {oldest[1].text}",
            "problem_age": None if oldest is None else max(0.0, now - oldest[1].since),
        }

    # --- `seaf-backup-cmd status` on the primary -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        delivered = self.notifier.delivered_through()
        problems = [{"source": source, "problem": p.text, "since": p.since}
                    for source in (BACKUP_PROBLEM, "notifications", DETECTION_PROBLEM)
                    if (p := self.problems.get(source)) is not None]
        return {
            "mode": "primary",
            "instance": self.instance,
            "started_at": self.started_at,
            "backup_url": self.backup_url,
            "healthy": not problems,
            "problems": problems,
            "change_detector": self.detector.kind,
            "detected_through": self.coverage.detected_through,
            "delivered_through": delivered,
            "delivery_lag_seconds": None if delivered is None else max(0.0, now - delivered),
            "pending_notifications": len(self.notifier.pending),
            "notifications_delivered": self.notifier.delivered,
            "last_notification_delivered": self.notifier.last_delivered,
            "backup_last_checked": self.backup_checked,
            "backup_last_pulled_heartbeat": self.last_pulled,
            "database_heartbeat": None if self.db_heartbeat is None else {
                "last_written": self.db_heartbeat.last_written, "error": self.db_heartbeat.error},
        }

    def update_gauges(self) -> None:
        """The primary's pairing gauges, computed when /metrics is scraped."""
        delivered = self.notifier.delivered_through()
        self.metrics.primary_problem.set(0 if self.problems.oldest() is None else 1)
        self.metrics.pending_notifications.set(len(self.notifier.pending))
        self.metrics.delivery_lag_seconds.set(math.nan if delivered is None else max(0.0, time.time() - delivered))

    # --- loops -------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [self._barriers(stop), self._check_backup(stop)]
        if self.db_heartbeat is not None:
            tasks.append(self.db_heartbeat.run(stop))
        await asyncio.gather(*tasks)

    async def _barriers(self, stop: asyncio.Event) -> None:
        """A coverage barrier every interval (see `service.heartbeat.Coverage`)."""
        try:
            while not stop.is_set():
                at = time.time()
                try:
                    end = await asyncio.to_thread(self.detector.end_position)
                except Exception as exc:  # the database is away: evidence stops, and the backup is told why
                    self.problems.set(DETECTION_PROBLEM, f"cannot read the binlog position: {exc}")
                else:
                    self.problems.clear(DETECTION_PROBLEM)
                    if end is not None:
                        self.coverage.barrier(end, at)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            await asyncio.to_thread(self.detector.close_barrier)

    async def _check_backup(self, stop: asyncio.Event) -> None:
        """A signed health check of the backup whenever no notification went through for a while: a wrong
        backup_url or token shows at once, not at the next head move."""
        while not stop.is_set():
            recent = self.notifier.last_delivered
            if recent is None or time.time() - recent > self.interval * 2:
                try:
                    await self.backup.check()
                except SeafBackupError as exc:
                    if self.problems.get(BACKUP_PROBLEM) is None:
                        log.error("backup agent: %s", exc)
                    self.problems.set(BACKUP_PROBLEM, str(exc))
                    self.metrics.notify_failures.labels(reason=failure_kind(exc)).inc()
                else:
                    if self.problems.get(BACKUP_PROBLEM) is not None:
                        log.info("backup agent reachable and paired again")
                    self.problems.clear(BACKUP_PROBLEM)
                    self.backup_checked = time.time()
                    if self.notifier.pending:
                        self.notifier.retry_now()
            else:
                self.problems.clear(BACKUP_PROBLEM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
