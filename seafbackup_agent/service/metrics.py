"""Prometheus metrics of the agent (prometheus-client), one registry per agent."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from seafbackup_agent.sync.progress import LibraryProgress
from seafbackup_agent.sync.result import SyncResult


class _ReadCounter(Collector):
    """A counter kept elsewhere (a client's own count), read when the registry is scraped."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self._name, self._documentation, self._read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class AgentMetrics:
    def __init__(self, *, backup: bool = True) -> None:
        """`backup`: also the backup's freshness gauges (absent on a primary, so that alerts on them never fire
        there); they start at "stale" and NaN, never at a reassuring 0."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.libraries = Gauge("seafbackup_libraries", "Libraries by sync state", ["state"], registry=r)
        self.queue_depth = Gauge("seafbackup_queue_depth", "Libraries queued for sync", registry=r)
        self.oldest_unsynced_seconds = Gauge(
            "seafbackup_oldest_unsynced_seconds", "Age of the oldest library not synchronized", registry=r)
        self.bytes_copied = Counter(
            "seafbackup_copied_bytes", "Bytes copied to the backup (counted as they are staged, during a sync)",
            registry=r)
        self.objects_copied = Counter(
            "seafbackup_copied_objects", "Objects copied to the backup (counted as they are staged, during a sync)",
            ["type"], registry=r)
        self._objects_copied_by_type = tuple(self.objects_copied.labels(type=kind)
                                             for kind in ("commit", "fs", "block"))
        self.libraries_remaining = Gauge(
            "seafbackup_libraries_remaining",
            "Libraries of the current batch (queued from idle; the first sync of a store is one) not yet done",
            registry=r)
        self.in_progress_bytes = Gauge(
            "seafbackup_sync_in_progress_bytes", "Bytes copied so far by the library syncs running now", registry=r)
        self.syncs = Counter("seafbackup_syncs", "Library syncs finished", ["outcome"], registry=r)
        self.failures = Counter("seafbackup_sync_failures", "Library syncs that failed", registry=r)
        self.sync_seconds = Histogram("seafbackup_sync_seconds", "Duration of one library sync", registry=r)
        self.publish_group_size = Histogram(
            "seafbackup_publish_group_size",
            "Libraries whose heads were published together (backup): each group is one durability barrier and "
            "one database transaction (_count), _sum the libraries", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r)
        self.publishing = Gauge(
            "seafbackup_publishing", "Libraries copied whose head waits for its group's publish (backup)", registry=r)
        self.poll_seconds = Histogram("seafbackup_poll_seconds", "Duration of a full poll", registry=r)
        self.notifications = Counter(
            "seafbackup_notifications", "Head-move notifications sent (primary) or received (backup)", registry=r)
        self.notifications_redundant = Counter(
            "seafbackup_notifications_redundant",
            "Notifications received that queued nothing: that head was already synchronized, syncing or queued "
            "(backup; a Seafile cluster's nodes each report every head move)", registry=r)
        self.notify_failures = Counter(
            "seafbackup_notify_failures", "Notifications or backup health checks that failed (primary)", ["reason"],
            registry=r)
        self.heartbeat_failures = Counter(
            "seafbackup_heartbeat_failures",
            "Heartbeats that failed: pulled by the backup (by transport error) or the database row (kind=database)",
            ["kind"], registry=r)
        self.poll_failures = Counter("seafbackup_poll_failures", "Full polls that failed (backup)", ["reason"],
                                     registry=r)
        if backup:
            self._freshness_gauges(r)
        else:
            self._primary_gauges(r)
        self.change_detector = Gauge(
            "seafbackup_change_detector", "Change detection running on the primary (1 for its kind: binlog or probe)",
            ["kind"], registry=r)

    def _freshness_gauges(self, r: CollectorRegistry) -> None:
        self.pairing_stale = Gauge(
            "seafbackup_pairing_stale", "1 while the backup has no fresh evidence from the primary (stale or starting)",
            registry=r)
        self.rpo_bound_seconds = Gauge(
            "seafbackup_rpo_bound_seconds",
            "Upper bound of what a failover now would lose: now - the time the backup is current as of "
            "(NaN before the first evidence)", registry=r)
        self.primary_last_seen_seconds = Gauge(
            "seafbackup_primary_last_seen_seconds", "Seconds since the primary's agent last answered a heartbeat",
            registry=r)
        self.db_lag_seconds = Gauge(
            "seafbackup_db_lag_seconds",
            "Upper bound of the database replication lag (age of the newest replicated heartbeat row; NaN unknown)",
            registry=r)
        self.pairing_stale.set(1)
        for gauge in (self.rpo_bound_seconds, self.primary_last_seen_seconds, self.db_lag_seconds):
            gauge.set(math.nan)

    def _primary_gauges(self, r: CollectorRegistry) -> None:
        self.primary_problem = Gauge(
            "seafbackup_primary_problem", "1 while the primary's agent has a problem with the pairing (see status)",
            registry=r)
        self.pending_notifications = Gauge(
            "seafbackup_pending_notifications", "Head moves detected and not yet accepted by the backup", registry=r)
        self.delivery_lag_seconds = Gauge(
            "seafbackup_delivery_lag_seconds",
            "Seconds since the time before which every head move has been accepted by the backup (NaN: none yet)",
            registry=r)

    def set_change_detector(self, kind: str) -> None:
        for known in ("binlog", "probe"):
            self.change_detector.labels(kind=known).set(1 if kind == known else 0)

    def copied(self, delta: LibraryProgress) -> None:
        """Objects just staged by a running sync: `rate()` of these counters is the copy rate during a sync."""
        self.bytes_copied.inc(delta.bytes)
        for counter, count in zip(self._objects_copied_by_type, (delta.commits, delta.fs_objects, delta.blocks),
                                  strict=True):
            if count:
                counter.inc(count)

    def record(self, result: SyncResult) -> None:
        self.syncs.labels(outcome=result.outcome.value).inc()
        self.sync_seconds.observe(result.duration)

    def count_primary_requests(self, read: Callable[[], int]) -> None:
        """`seafbackup_primary_requests_total` (backup): HTTP requests sent to the primary, each attempt counted:
        what a sync costs in round trips over a WAN link."""
        self.registry.register(_ReadCounter("seafbackup_primary_requests",
                                            "HTTP requests sent to the primary's agent (every attempt)", read))
