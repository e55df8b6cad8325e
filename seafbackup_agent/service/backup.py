"""Backup mode: notifications and polls -> a de-duplicating queue -> N workers -> the sync engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from seafbackup_agent.config import DEFAULT_WORKERS
from seafbackup_agent.errors import SeafBackupError
from seafbackup_agent.seafile.ids import is_repo_id
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.service.freshness import FreshnessTracker, PairingState
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.service.state import LibraryState, StateStore
from seafbackup_agent.sync.engine import BlockBudget, EngineOptions, SyncEngine
from seafbackup_agent.sync.progress import StoreProgress
from seafbackup_agent.sync.publish import GroupPublisher, Publication
from seafbackup_agent.sync.result import SyncResult
from seafbackup_agent.sync.source import ObjectSource
from seafbackup_agent.transport.errors import failure_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackupOptions:
    workers: int = DEFAULT_WORKERS
    poll_interval_hours: float = 1.0
    retry_check_seconds: float = 5.0
    stale_after: float = 5.0
    poll_retry_min: float = 1.0
    poll_retry_max: float = 60.0
    """A failed poll is retried after 1, 2, 4 ... this many seconds, not after the poll interval."""
    publishing_per_worker: int = 4
    """Syncs whose objects are copied and whose head waits for its group's publish, per worker: the worker goes
    on with the next library meanwhile (each waiting sync keeps its database connection)."""


class _Handover:
    """The group publisher as one sync sees it: handing its head over frees the sync's worker (`copied`)."""

    def __init__(self, publisher: GroupPublisher, copied: asyncio.Event) -> None:
        self._publisher = publisher
        self._copied = copied

    async def publish(self, publication: Publication) -> None:
        self._copied.set()
        await self._publisher.publish(publication)


class BackupService:
    def __init__(
        self,
        source: ObjectSource,
        open_target: Callable[[], SeafileInstallation],
        state: StateStore,
        metrics: AgentMetrics,
        options: BackupOptions,
        engine_options: EngineOptions | None = None,
    ) -> None:
        self.source = source
        self.open_target = open_target
        self.state = state
        self.metrics = metrics
        self.options = options
        self.engine_options = engine_options or EngineOptions()
        self._block_slots = asyncio.Semaphore(self.engine_options.block_concurrency)
        self._block_budget = BlockBudget(self.engine_options.block_bytes)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._forced: set[str] = set()
        self._running: set[str] = set()
        self._toward: dict[str, str | None] = {}
        """running library -> the primary's head its sync read (None: deleted there); absent until read"""
        self._rerun: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._slots = asyncio.Semaphore(options.workers * max(1, options.publishing_per_worker))
        self._syncs: set[asyncio.Task[None]] = set()
        self._idle_targets: list[SeafileInstallation] = []
        self.publisher = GroupPublisher(open_target, on_group=metrics.publish_group_size.observe)
        self.first_poll_done = asyncio.Event()
        self.last_poll: float | None = None
        self.last_poll_error: str | None = None
        self.freshness = FreshnessTracker(stale_after=options.stale_after)
        self._poll_now = asyncio.Event()
        self._retry_failed_at_poll = False
        self.progress = StoreProgress(on_copied=metrics.copied)
        self.notifications_received = 0
        self.notifications_redundant = 0
        """Notifications that queued nothing: the library already had, was syncing to or was queued for that head
        (with a Seafile cluster every node's agent reports each head move: all but the first are redundant)."""

    # --- entry points ------------------------------------------------------------------------------

    def enqueue(self, repo_id: str, head: str | None = None, *, force: bool = False) -> None:
        if not is_repo_id(repo_id):
            return
        if force:
            self._forced.add(repo_id)
        self.freshness.queued(repo_id)
        self.state.waiting(repo_id, head)
        if repo_id not in self._queued:
            self.progress.add(repo_id)
            self._queued.add(repo_id)
            self._queue.put_nowait(repo_id)
        self.metrics.queue_depth.set(len(self._queued))

    async def notified(self, repo_id: str, head: str | None) -> None:
        """A notification from the primary's agent."""
        self.metrics.notifications.inc()
        self.notifications_received += 1
        status = self.state.get(repo_id)
        # A head already known is news only to a library still waiting for it: a synchronized library has
        # it, a running sync reads the primary's head after it started, and a failed one is retried on its
        # own schedule (re-notifications must not bypass the backoff and multiply attempts).
        if (status and head is not None and status.primary_head == head and status.state is not LibraryState.WAITING) \
                or (head is not None and self._on_its_way(repo_id, head)):
            self.notifications_redundant += 1
            self.metrics.notifications_redundant.inc()
            return
        self.enqueue(repo_id, head)

    def _on_its_way(self, repo_id: str, head: str) -> bool:
        """A sync that will copy `head` (or a newer one), seen on the primary before now, is queued or running:
        a queued sync and a running one that has not read the primary's head yet read it after now."""
        if repo_id in self._queued:
            return True
        if repo_id in self._running:
            return repo_id not in self._toward or self._toward[repo_id] == head
        return False

    async def sync_now(self, repo_id: str, *, force: bool) -> dict:
        """`seaf-backup-cmd sync`: queue the library and wait until a worker has finished it."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(repo_id, []).append(future)
        self.enqueue(repo_id, None, force=force)
        return await future

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._worker(i)) for i in range(self.options.workers)]
        tasks.append(asyncio.create_task(self._poller(stop)))
        tasks.append(asyncio.create_task(self._retrier(stop)))
        await stop.wait()
        self._poll_now.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        syncs = list(self._syncs)
        for task in syncs:
            task.cancel()
        await asyncio.gather(*syncs, return_exceptions=True)
        await self.publisher.aclose()
        for target in self._idle_targets:
            target.close()
        self._idle_targets.clear()

    # --- poll ---------------------------------------------------------------------------------------

    def request_poll(self, *, retry_failed: bool = True) -> None:
        """Poll now (contact regained, a new primary instance); failed libraries are retried at once too."""
        self._retry_failed_at_poll = self._retry_failed_at_poll or retry_failed
        self._poll_now.set()

    async def poll(self, *, retry_failed: bool = False) -> int:
        """Compare every library's head on the primary with the backup's; queue the differing ones.
        `retry_failed`: also queue libraries that failed at the primary's current head (not waiting for their
        backoff)."""
        started = time.monotonic()
        evidence = self.freshness.poll_started()

        def read_backup_heads() -> dict[str, str]:
            target = self.open_target()
            try:
                return dict(target.rows.iter_heads())
            finally:
                target.close()

        # The backup's own heads are read while the primary's list streams in.
        backup_read = asyncio.ensure_future(asyncio.to_thread(read_backup_heads))
        primary_heads: dict[str, str] = {}
        try:
            async for repo_id, head in self.source.libraries():
                primary_heads[repo_id] = head
        except BaseException:
            backup_read.add_done_callback(lambda f: f.cancelled() or f.exception())  # the list's error wins
            raise
        backup_heads = await backup_read
        queued = 0
        # A library with a change queued since is left as it is: the list may predate that change.
        in_sync = [(r, h) for r, h in primary_heads.items()
                   if backup_heads.get(r) == h and not self.freshness.is_outstanding(r)]
        await asyncio.to_thread(self.state.record_synchronized, in_sync)
        for repo_id, head in primary_heads.items():
            if backup_heads.get(repo_id) != head:
                if self._on_its_way(repo_id, head):
                    continue
                status = self.state.get(repo_id)
                if not retry_failed and status and status.state is LibraryState.FAILED and status.primary_head == head:
                    self.freshness.failed(repo_id)  # behind, retried on its own schedule
                    continue
                self.enqueue(repo_id, head)
                queued += 1
        for repo_id in backup_heads.keys() - primary_heads.keys():
            self.enqueue(repo_id, None)  # deleted on the primary
            queued += 1
        self.state.forget_missing(primary_heads.keys() | backup_heads.keys())
        self.freshness.poll_finished(evidence)
        self.last_poll = time.time()
        self.last_poll_error = None
        self.metrics.poll_seconds.observe(time.monotonic() - started)
        log.info("poll: %d libraries on the primary, %d queued, %.2fs", len(primary_heads), queued,
                 time.monotonic() - started)
        return queued

    async def _poller(self, stop: asyncio.Event) -> None:
        """A full poll at start, every poll interval, at once when asked (`request_poll`); a failed poll is
        retried with backoff in seconds."""
        interval = self.options.poll_interval_hours * 3600
        backoff = 0.0
        while not stop.is_set():
            self._poll_now.clear()
            retry_failed, self._retry_failed_at_poll = self._retry_failed_at_poll, False
            try:
                await self.poll(retry_failed=retry_failed)
                backoff = 0.0
            except Exception as exc:
                if not isinstance(exc, SeafBackupError):
                    log.exception("poll failed")
                backoff = min(max(backoff * 2, self.options.poll_retry_min), self.options.poll_retry_max)
                self.last_poll_error = str(exc)
                self.metrics.poll_failures.labels(reason=failure_kind(exc)).inc()
                log.error("poll failed: %s; retrying in %.0fs", exc, backoff)
                self._retry_failed_at_poll = self._retry_failed_at_poll or retry_failed
            self.first_poll_done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), timeout=backoff or interval)

    async def _retrier(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for repo_id in self.state.due_retries(time.time()):
                self.enqueue(repo_id, self.state.get(repo_id).primary_head)  # type: ignore[union-attr]
            self.update_gauges()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.options.retry_check_seconds)

    # --- workers ------------------------------------------------------------------------------------

    async def _worker(self, number: int) -> None:
        """Copies one library at a time. Once a sync has copied its objects and handed its head to the group
        publisher, the worker goes on with the next library while that one waits for its group."""
        while True:
            await self._slots.acquire()
            try:
                repo_id = await self._queue.get()
            except BaseException:
                self._slots.release()
                raise
            self._queued.discard(repo_id)
            self.metrics.queue_depth.set(len(self._queued))
            if repo_id in self._running:
                # One sync per library at a time (two would race on its Branch row): again after this one.
                self._rerun.add(repo_id)
                self._slots.release()
                continue
            force = repo_id in self._forced
            self._forced.discard(repo_id)
            # Who asked before this sync started gets its outcome; who asks during it, the next one's.
            waiters = self._waiters.pop(repo_id, [])
            self._running.add(repo_id)
            self.freshness.sync_started(repo_id)
            copied = asyncio.Event()
            task = asyncio.create_task(self._run_sync(repo_id, force, waiters, copied))
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)
            handed_over = asyncio.ensure_future(copied.wait())
            try:
                await asyncio.wait({task, handed_over}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                handed_over.cancel()

    async def _run_sync(self, repo_id: str, force: bool, waiters: list[asyncio.Future], copied: asyncio.Event) -> None:
        target = self._idle_targets.pop() if self._idle_targets else None
        outcome: dict = {"ok": False, "target": target}
        try:
            outcome = await self._sync_one(repo_id, force, target, copied)
        finally:
            self._slots.release()
            self._running.discard(repo_id)
            self._toward.pop(repo_id, None)
            self.progress.finish(repo_id, done=repo_id not in self._rerun and repo_id not in self._queued)
            self.freshness.sync_finished(repo_id, ok=outcome["ok"])
        if repo_id in self._rerun:
            self._rerun.discard(repo_id)
            if repo_id not in self._queued:
                self._queued.add(repo_id)
                self._queue.put_nowait(repo_id)
        target = outcome.pop("target")
        if target is not None:
            self._idle_targets.append(target)
        for future in waiters:
            if not future.done():
                future.set_result(outcome)

    async def _sync_one(self, repo_id: str, force: bool, target: SeafileInstallation | None,
                        copied: asyncio.Event) -> dict:
        self.state.syncing(repo_id)
        try:
            if target is None:
                target = await asyncio.to_thread(self.open_target)
            engine = SyncEngine(self.source, target, self.engine_options, block_slots=self._block_slots,
                                block_budget=self._block_budget,
                                publisher=_Handover(self.publisher, copied))
            result: SyncResult = await engine.sync_library(repo_id, force=force,
                                                           on_progress=self.progress.start(repo_id),
                                                           on_head=lambda head: self._heading_to(repo_id, head))
        except SeafBackupError as exc:
            reason = str(exc)
            self.state.failed(repo_id, reason)
            self.metrics.failures.inc()
            log.error("library %s: sync failed: %s", repo_id, reason)
            if target is not None and "database" in type(exc).__name__.lower():
                target.close()
                target = None
            return {"repo_id": repo_id, "ok": False, "error": reason, "target": target}
        except Exception as exc:  # keep the worker alive; the library is retried with backoff
            log.exception("library %s: unexpected error", repo_id)
            self.state.failed(repo_id, f"unexpected error: {exc}")
            self.metrics.failures.inc()
            if target is not None:
                target.close()
            return {"repo_id": repo_id, "ok": False, "error": str(exc), "target": None}
        self.state.synchronized(repo_id, result.new_head, forced=result.forced)
        self.metrics.record(result)
        return {
            "repo_id": repo_id,
            "ok": True,
            "outcome": result.outcome.value,
            "head": result.new_head,
            "commits": result.commits,
            "fs_objects": result.fs_objects,
            "blocks": result.blocks,
            "bytes": result.bytes,
            "skipped": [asdict(s) for s in result.skipped],
            "seconds": round(result.duration, 3),
            "target": target,
        }

    def _heading_to(self, repo_id: str, head: str | None) -> None:
        """The running sync of `repo_id` read the primary's head: what it copies toward, also when it fails."""
        self._toward[repo_id] = head
        self.state.heading_to(repo_id, head)

    def update_gauges(self) -> None:
        """The per-state gauges, from the state store: two scans of its table, so computed when they are
        read (a scrape of /metrics) and by the retrier, never per sync (at 100k libraries the scans took
        ~30% of the backup agent's time, on the event loop's thread)."""
        counts = self.state.counts()
        for state, n in counts.items():
            self.metrics.libraries.labels(state=state.value).set(n)
        oldest = self.state.oldest_unsynced_since()
        self.metrics.oldest_unsynced_seconds.set(time.time() - oldest if oldest else 0)
        fresh = self.freshness.snapshot()
        self.metrics.pairing_stale.set(0 if fresh.state is PairingState.OK else 1)
        self.metrics.rpo_bound_seconds.set(math.nan if fresh.rpo_bound_seconds is None else fresh.rpo_bound_seconds)
        seen = fresh.primary_last_seen
        self.metrics.primary_last_seen_seconds.set(math.nan if seen is None else time.time() - seen)
        self.metrics.libraries_remaining.set(self.progress.remaining())
        self.metrics.in_progress_bytes.set(self.progress.in_progress_bytes())
        self.metrics.publishing.set(self.publisher.pending)

