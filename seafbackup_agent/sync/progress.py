"""How far syncs have come: what the engine reports while it copies, and the figures shown from it.

The engine reports one `LibraryProgress` per library (its live counters, updated in place, passed to a
callback after each batch of objects is staged). `StoreProgress` follows a batch of libraries (the
libraries queued from idle until the queue is empty again: the first sync of a whole store is one batch)
and computes the figures `status`, the metrics and the CLI show: copied of an estimate, the rate over the
last minute, an ETA.

Estimates are only given when cheap and meaningful: for a library new on the target, its bytes from the
source's `RepoSize` (the size of the head's files as Seafile last computed it; history adds to it, so the
copy may end above it) and, once the commit walk is done, its exact number of commits to copy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

RATE_WINDOW = 60.0
"""The rate is over this many seconds."""
SAMPLE_EVERY = 0.5
ESTIMATE_BASIS = "bytes: RepoSize of the primary's head (history not included); commits: counted by the commit walk"


@dataclass(slots=True)
class LibraryProgress:
    """One library's sync so far (the engine's live counters)."""

    repo_id: str
    commits: int = 0
    fs_objects: int = 0
    blocks: int = 0
    bytes: int = 0
    commits_total: int | None = None
    """Commits to copy, known once the commit walk is done."""
    estimated_bytes: int | None = None
    """RepoSize of the source's head, for a library new on the target; None otherwise."""

    @property
    def objects(self) -> int:
        return self.commits + self.fs_objects + self.blocks


ProgressCallback = Callable[[LibraryProgress], None]


class Rate:
    """Bytes and objects per second over the last `RATE_WINDOW` seconds, from samples of running totals."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, objects: int, nbytes: int) -> None:
        now = self._clock()
        if self._samples and now - self._samples[-1][0] < SAMPLE_EVERY:
            self._samples[-1] = (self._samples[-1][0], objects, nbytes)
        else:
            self._samples.append((now, objects, nbytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def per_second(self) -> tuple[float | None, float | None]:
        """(objects/s, bytes/s), None before two samples."""
        if len(self._samples) < 2:
            return None, None
        (t0, o0, b0), (t1, o1, b1) = self._samples[0], self._samples[-1]
        span = max(self._clock(), t1) - t0
        if span <= 0:
            return None, None
        return (o1 - o0) / span, (b1 - b0) / span


def eta(done: int, total: int | None, rate: float | None) -> float | None:
    if total is None or not rate:
        return None
    return max(total - done, 0) / rate


@dataclass(slots=True)
class _Running:
    progress: LibraryProgress
    started: float
    rate: Rate
    started_at: float
    """Wall-clock time, to tell one sync of a library from the next."""


@dataclass(slots=True)
class StoreProgress:
    """A batch of libraries: queued ones, finished ones, and the live progress of the running ones."""

    clock: Callable[[], float] = time.monotonic
    on_copied: Callable[[LibraryProgress], None] | None = None
    """Called with what was newly copied since the last report (a difference), for the metrics' counters."""
    queued: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    running: dict[str, _Running] = field(default_factory=dict)
    finished_objects: int = 0
    finished_bytes: int = 0
    started: float | None = None
    _rate: Rate | None = None

    def add(self, repo_id: str) -> None:
        """A library queued: starts a new batch when nothing was queued or running."""
        if self.started is None or not self.remaining():
            self.queued, self.done = set(), set()
            self.finished_objects = self.finished_bytes = 0
            self.started = self.clock()
            self._rate = Rate(self.clock)
        self.queued.add(repo_id)
        self.done.discard(repo_id)

    def remaining(self) -> int:
        # `done` only ever holds queued libraries, so this is a count, not a set difference: a poll queues every
        # library of the server one `add` at a time, and each asks this (a difference made that quadratic).
        return len(self.queued) - len(self.done)

    def start(self, repo_id: str) -> ProgressCallback:
        """A sync begins; returns the callback to give the engine."""
        if repo_id not in self.queued:
            self.add(repo_id)
        entry = _Running(LibraryProgress(repo_id), self.clock(), Rate(self.clock), time.time())
        self.running[repo_id] = entry
        last = LibraryProgress(repo_id)

        def report(progress: LibraryProgress) -> None:
            entry.progress = progress
            entry.rate.sample(progress.objects, progress.bytes)
            if self.on_copied is not None:
                self.on_copied(LibraryProgress(repo_id, progress.commits - last.commits,
                                               progress.fs_objects - last.fs_objects, progress.blocks - last.blocks,
                                               progress.bytes - last.bytes))
            last.commits, last.fs_objects = progress.commits, progress.fs_objects
            last.blocks, last.bytes = progress.blocks, progress.bytes
            objects, nbytes = self.totals()
            assert self._rate is not None
            self._rate.sample(objects, nbytes)

        return report

    def finish(self, repo_id: str, *, done: bool = True) -> None:
        """A sync ended (its copies stay counted); `done`: not queued again, so done in this batch."""
        entry = self.running.pop(repo_id, None)
        if entry is not None:
            self.finished_objects += entry.progress.objects
            self.finished_bytes += entry.progress.bytes
        if done and repo_id in self.queued:  # one of an earlier batch, ended after this one began, is not counted
            self.done.add(repo_id)

    def totals(self) -> tuple[int, int]:
        objects = self.finished_objects + sum(e.progress.objects for e in self.running.values())
        nbytes = self.finished_bytes + sum(e.progress.bytes for e in self.running.values())
        return objects, nbytes

    def in_progress_bytes(self) -> int:
        return sum(e.progress.bytes for e in self.running.values())

    def document(self) -> dict:
        """The figures for `status` (and `--json`): the batch overall, then each running library."""
        objects, nbytes = self.totals()
        objects_rate, bytes_rate = self._rate.per_second() if self._rate else (None, None)
        total, done = len(self.queued), len(self.done)
        libraries_rate = done / (self.clock() - self.started) if self.started is not None and done else None
        return {
            "active": bool(self.remaining()),
            "libraries_done": done,
            "libraries_total": total,
            "libraries_remaining": total - done,
            "objects": objects,
            "bytes": nbytes,
            "objects_per_second": objects_rate,
            "bytes_per_second": bytes_rate,
            "elapsed_seconds": None if self.started is None else self.clock() - self.started,
            "eta_seconds": eta(done, total, libraries_rate) if self.remaining() else 0.0,
            "eta_basis": "libraries remaining at the batch's rate of libraries done so far",
            "estimate_basis": ESTIMATE_BASIS,
            "libraries": [self._library_doc(e) for e in self.running.values()],
        }

    def _library_doc(self, entry: _Running) -> dict:
        p = entry.progress
        objects_rate, bytes_rate = entry.rate.per_second()
        return {
            "repo_id": p.repo_id,
            "started_at": entry.started_at,
            "commits": p.commits,
            "commits_total": p.commits_total,
            "fs_objects": p.fs_objects,
            "blocks": p.blocks,
            "objects": p.objects,
            "bytes": p.bytes,
            "estimated_bytes": p.estimated_bytes,
            "objects_per_second": objects_rate,
            "bytes_per_second": bytes_rate,
            "elapsed_seconds": self.clock() - entry.started,
            "eta_seconds": eta(p.bytes, p.estimated_bytes, bytes_rate),
        }
