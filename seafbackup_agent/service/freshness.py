"""How fresh the backup is, from evidence only (the backup's side of the heartbeats).

Every change the backup must apply gets a sequence number when it is queued (a notification, a poll that
found a head differing, a manual sync). A library is *outstanding* from its first queued change that no
finished sync has covered yet; a sync covers every change queued before it started, because it reads the
primary's head when it starts.

A library whose sync failed leaves the outstanding set for the failed one: it is behind by definition, listed
and counted as failed (status exits non-zero, an alert fires), and the bound covers every other library; it
becomes outstanding again when it is queued again.

Evidence is a pair (sequence, covered_at): "every head move committed on the primary before `covered_at`
had been queued here by the time the sequence counter read `sequence`". A heartbeat gives it (the primary
says up to when it has delivered every change; see `service.heartbeat`), and so does a full poll (the primary's
list was read after the poll began). Evidence is *applied* once no library is outstanding from a sequence at
or below its own: from then on the backup holds, for every library, a head at least as new as the primary's
at `covered_at`. That time is `current_as_of`, and `now - current_as_of` bounds what a failover would lose.

All times here are the backup's own clock: a heartbeat's time is converted where it is received
(`covered_at = sent_at - age`, the age measured on the primary's clock), so no clock has to agree with
another and the bound can be too high, never too low.

After the backup agent starts, and when the primary's agent is a new instance (it starts reading changes at
the end of the binlog: what happened while it was down was never detected), heartbeats prove nothing until
a full poll that began after that moment has finished.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class PairingState(StrEnum):
    OK = "ok"
    STARTING = "starting"
    """No evidence yet since this agent started (first contact or first poll not done)."""
    STALE = "stale"
    """No fresh evidence for longer than `stale_after`: contact lost, pairing broken, or changes undelivered."""


@dataclass(frozen=True, slots=True)
class Contact:
    """The last attempt to reach the primary's agent."""

    ok: bool
    at: float
    error: str | None = None
    error_kind: str | None = None
    """unreachable, authentication, tls, protocol, remote (transport error class), for metrics and alerts."""


@dataclass(frozen=True, slots=True)
class PrimaryReport:
    """What the primary's agent said in its last heartbeat."""

    instance: str
    detector: str
    pending: int
    problem: str | None
    """What the primary's agent says stops it from delivering changes (backup unreachable, token, database)."""
    problem_since: float | None
    """Backup clock (converted from the problem's age)."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """A snapshot for `status`, metrics and the Ansible modules. Times are unix seconds on the backup's clock."""

    state: PairingState
    reason: str | None
    since: float | None
    """When the current problem began (for STALE/STARTING)."""
    current_as_of: float | None
    rpo_bound_seconds: float | None
    primary_last_seen: float | None
    newest_evidence: float | None
    """covered_at of the newest evidence received (applied or not)."""
    outstanding: int
    primary: PrimaryReport | None
    failed: int = 0
    """Libraries failed: behind, and not covered by `current_as_of`."""

    def as_dict(self) -> dict:
        doc: dict[str, Any] = {
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
            "current_as_of": self.current_as_of,
            "rpo_bound_seconds": self.rpo_bound_seconds,
            "primary_last_seen": self.primary_last_seen,
            "newest_evidence": self.newest_evidence,
            "outstanding_libraries": self.outstanding,
            "failed_libraries_not_covered": self.failed,
            "primary": None,
        }
        if self.primary is not None:
            doc["primary"] = {
                "instance": self.primary.instance,
                "change_detector": self.primary.detector,
                "pending_notifications": self.primary.pending,
                "problem": self.primary.problem,
                "problem_since": self.primary.problem_since,
            }
        return doc


MAX_EVIDENCE = 10_000
"""Evidence waiting to be applied is kept up to this many entries (oldest dropped: it only ever lowers the bound)."""


class FreshnessTracker:
    def __init__(self, *, stale_after: float, clock: Callable[[], float] = time.time) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self.started_at = clock()
        self.seq = 0
        self._outstanding: dict[str, int] = {}
        """library -> sequence of its first change not covered by a finished sync"""
        self._outstanding_heap: list[tuple[int, str]] = []
        """(sequence, library) of `_outstanding`, with stale entries dropped lazily: the minimum in O(log n)"""
        self._sync_started: dict[str, int] = {}
        """library -> sequence when its running sync began"""
        self._queued_during_sync: dict[str, int] = {}
        """library -> first sequence queued while its sync ran"""
        self._failed: set[str] = set()
        """libraries whose last sync failed: behind, reported as such, not blocking the bound of the others"""
        self._evidence: deque[tuple[int, float]] = deque()
        self.current_as_of: float | None = None
        self.newest_evidence: float | None = None
        self._poll_required_since: float | None = self.started_at
        self.contact: Contact | None = None
        self._contact_lost_since: float | None = None
        self.primary_last_seen: float | None = None
        self.primary: PrimaryReport | None = None

    # --- changes ----------------------------------------------------------------------------------------

    def queued(self, repo_id: str) -> int:
        """A change of `repo_id` was queued; returns its sequence."""
        self.seq += 1
        self._failed.discard(repo_id)
        if repo_id in self._sync_started:
            self._queued_during_sync.setdefault(repo_id, self.seq)
        else:
            self._mark_outstanding(repo_id, self.seq)
        return self.seq

    def _mark_outstanding(self, repo_id: str, seq: int) -> None:
        if repo_id not in self._outstanding:
            self._outstanding[repo_id] = seq
            heapq.heappush(self._outstanding_heap, (seq, repo_id))

    def sync_started(self, repo_id: str) -> None:
        self._sync_started[repo_id] = self.seq

    def sync_finished(self, repo_id: str, *, ok: bool) -> None:
        started = self._sync_started.pop(repo_id, None)
        during = self._queued_during_sync.pop(repo_id, None)
        if not ok:
            self.failed(repo_id)
            return
        if started is not None:
            first = self._outstanding.get(repo_id)
            if first is not None and first <= started:
                del self._outstanding[repo_id]
            if during is not None:
                self._mark_outstanding(repo_id, during)
        self._apply()

    def failed(self, repo_id: str) -> None:
        """`repo_id` is failed (its sync failed, or a poll found it still failed at the same head)."""
        self._outstanding.pop(repo_id, None)
        self._queued_during_sync.pop(repo_id, None)
        self._failed.add(repo_id)
        self._apply()

    def is_outstanding(self, repo_id: str) -> bool:
        return repo_id in self._outstanding or repo_id in self._queued_during_sync or repo_id in self._failed

    def outstanding_since(self, repo_id: str) -> int | None:
        return self._outstanding.get(repo_id)

    # --- evidence ------------------------------------------------------------------------------------

    def poll_started(self) -> tuple[int, float]:
        """A token for `poll_finished`: when and at which sequence the poll began."""
        return self.seq, self.clock()

    def poll_finished(self, token: tuple[int, float]) -> None:
        """A full poll that began at `token` finished: every head differing then is queued now."""
        _, began = token
        if self._poll_required_since is not None and began >= self._poll_required_since:
            self._poll_required_since = None
        self._add_evidence(self.seq, began)

    def heartbeat(self, *, sent_at: float, instance: str, age: float | None, detector: str, pending: int,
                  problem: str | None, problem_age: float | None) -> bool:
        """A heartbeat pulled at `sent_at` (backup clock) answered: every change committed on the primary more
        than `age` seconds before it answered has been delivered here. False when it shows a new primary
        instance (the caller polls at once)."""
        now = self.clock()
        # An instance not seen before (also the first one: it may have restarted since our last poll, and what
        # it did not see before its start is unknown) proves nothing until a full poll begun after now.
        new_instance = self.primary is None or self.primary.instance != instance
        if new_instance:
            self._poll_required_since = now
        self.primary = PrimaryReport(instance, detector, pending, problem,
                                     None if problem_age is None else sent_at - problem_age)
        self.primary_last_seen = now
        self.contact_ok()
        if self._poll_required_since is None and age is not None:
            self._add_evidence(self.seq, sent_at - max(age, 0.0))
        return not new_instance

    def contact_ok(self) -> None:
        self.contact = Contact(True, self.clock())
        self._contact_lost_since = None

    def contact_failed(self, error: str, kind: str) -> None:
        now = self.clock()
        if self._contact_lost_since is None:
            self._contact_lost_since = now
        self.contact = Contact(False, now, error, kind)

    @property
    def poll_required(self) -> bool:
        return self._poll_required_since is not None

    def _add_evidence(self, seq: int, covered_at: float) -> None:
        if self.newest_evidence is None or covered_at > self.newest_evidence:
            self.newest_evidence = covered_at
        self._evidence.append((seq, covered_at))
        while len(self._evidence) > MAX_EVIDENCE:
            self._evidence.popleft()
        self._apply()

    def _apply(self) -> None:
        heap = self._outstanding_heap
        while heap and self._outstanding.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        blocking = heap[0][0] if heap else None
        # A change queued during a sync blocks like any other (there are at most `workers` such libraries).
        during = min(self._queued_during_sync.values(), default=None)
        if during is not None and (blocking is None or during < blocking):
            blocking = during
        while self._evidence and (blocking is None or self._evidence[0][0] < blocking):
            _, covered_at = self._evidence.popleft()
            if self.current_as_of is None or covered_at > self.current_as_of:
                self.current_as_of = covered_at

    # --- the verdict ---------------------------------------------------------------------------------

    def snapshot(self) -> Freshness:
        now = self.clock()
        state, reason, since = self._judge(now)
        rpo = None if self.current_as_of is None else max(0.0, now - self.current_as_of)
        outstanding = len(self._outstanding.keys() | self._queued_during_sync.keys())
        return Freshness(state, reason, since, self.current_as_of, rpo, self.primary_last_seen,
                         self.newest_evidence, outstanding, self.primary, len(self._failed))

    def _judge(self, now: float) -> tuple[PairingState, str | None, float | None]:
        lost = self._contact_lost_since
        primary = self.primary
        required = self._poll_required_since
        evidence_age = None if self.newest_evidence is None else now - self.newest_evidence
        problem_old = primary is not None and primary.problem_since is not None \
            and now - primary.problem_since >= self.stale_after
        if lost is not None and self.contact is not None and (
                now - lost >= self.stale_after or problem_old
                or (evidence_age is not None and evidence_age >= self.stale_after)):
            # While there is no contact, what the primary said before is old news: the lost contact is the why.
            return PairingState.STALE, f"no contact with the primary's agent since {clock_text(lost)}: " \
                                       f"{self.contact.error}", lost
        if problem_old:
            assert primary is not None and primary.problem_since is not None
            return (PairingState.STALE, f"the primary's agent reports since {clock_text(primary.problem_since)}: "
                                        f"{primary.problem}", primary.problem_since)
        if required is not None and self.newest_evidence is not None and now - required >= self.stale_after:
            return PairingState.STALE, f"the primary's agent restarted at about {clock_text(required)} and the full " \
                                       "poll that must follow has not finished", required
        if self.newest_evidence is None or self.primary is None:
            waiting = "the first heartbeat of" if self.primary is None else "the first full poll of"
            problem = f"; last attempt: {self.contact.error}" if self.contact and not self.contact.ok else ""
            state = PairingState.STALE if now - self.started_at >= self.stale_after and problem \
                else PairingState.STARTING
            started = clock_text(self.started_at)
            return state, f"waiting for {waiting} the primary's agent (started {started}){problem}", self.started_at
        assert evidence_age is not None
        if evidence_age >= self.stale_after:
            return (PairingState.STALE,
                    f"no evidence from the primary's agent for {evidence_age:.0f}s (the newest covers "
                    f"{clock_text(self.newest_evidence)})", self.newest_evidence)
        return PairingState.OK, None, None


def clock_text(t: float) -> str:
    """A unix time as the agents print it (local time, to the second)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
