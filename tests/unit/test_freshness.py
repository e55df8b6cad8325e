"""The backup's evidence bookkeeping (service/freshness.py): when `current_as_of` may advance, and when not."""

from __future__ import annotations

from seafbackup_agent.service.freshness import FreshnessTracker, PairingState


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tracker_after_first_poll(clock: Clock) -> FreshnessTracker:
    tracker = FreshnessTracker(stale_after=5, clock=clock)
    assert tracker.snapshot().state is PairingState.STARTING
    tracker.heartbeat(sent_at=clock.now, instance="a", age=0.0, detector="binlog", pending=0, problem=None,
                      problem_age=None)
    assert tracker.current_as_of is None  # no poll yet since the agent started: a heartbeat proves nothing
    tracker.poll_finished(tracker.poll_started())
    return tracker


def beat(tracker: FreshnessTracker, clock: Clock, *, age: float = 0.0, instance: str = "a",
         problem: str | None = None, problem_age: float | None = None) -> bool:
    return tracker.heartbeat(sent_at=clock.now, instance=instance, age=age, detector="binlog", pending=0,
                             problem=problem, problem_age=problem_age)


def test_evidence_waits_for_every_change_queued_before_it():
    clock = Clock()
    tracker = tracker_after_first_poll(clock)
    assert tracker.current_as_of == 1000.0 and tracker.snapshot().state is PairingState.OK
    tracker.queued("lib-a")  # notified at 1001
    clock.now = 1002
    beat(tracker, clock, age=0.5)  # the primary delivered everything up to 1001.5
    assert tracker.current_as_of == 1000.0  # lib-a is not applied yet
    tracker.sync_started("lib-a")
    tracker.queued("lib-a")  # moved again during the sync
    clock.now = 1003
    beat(tracker, clock)
    tracker.sync_finished("lib-a", ok=True)
    assert tracker.current_as_of == 1001.5  # the change queued during the sync still blocks the newer beat
    tracker.sync_started("lib-a")
    tracker.sync_finished("lib-a", ok=True)
    assert tracker.current_as_of == 1003.0
    clock.now = 1004
    assert tracker.snapshot().rpo_bound_seconds == 1.0


def test_a_failed_library_is_left_out_of_the_bound_until_it_is_queued_again():
    clock = Clock()
    tracker = tracker_after_first_poll(clock)
    tracker.queued("lib-a")
    clock.now = 1005
    beat(tracker, clock)  # covers 1005, but lib-a is not applied yet
    assert tracker.current_as_of == 1000.0
    tracker.sync_started("lib-a")
    tracker.sync_finished("lib-a", ok=False)
    # Failed: reported as behind (and counted), the bound covers the other libraries.
    assert tracker.current_as_of == 1005.0 and tracker.is_outstanding("lib-a")
    assert tracker.snapshot().failed == 1
    tracker.queued("lib-a")  # retried: it blocks again until that attempt ends
    clock.now = 1010
    beat(tracker, clock)
    assert tracker.current_as_of == 1005.0 and tracker.snapshot().failed == 0
    tracker.sync_started("lib-a")
    tracker.sync_finished("lib-a", ok=True)
    assert tracker.current_as_of == 1010.0


def test_a_new_primary_instance_needs_a_full_poll_before_its_heartbeats_count():
    clock = Clock()
    tracker = tracker_after_first_poll(clock)
    clock.now = 1001
    assert beat(tracker, clock, instance="b") is False  # restarted: changes while it was down went unseen
    clock.now = 1002
    beat(tracker, clock, instance="b")
    assert tracker.current_as_of == 1000.0
    clock.now = 1008
    snapshot = tracker.snapshot()
    assert snapshot.state is PairingState.STALE and "restarted" in snapshot.reason
    token = tracker.poll_started()
    clock.now = 1009
    tracker.poll_finished(token)
    assert tracker.current_as_of == 1008.0 and tracker.snapshot().state is PairingState.OK


def test_lost_contact_and_primary_problems_make_the_pairing_stale_after_stale_after():
    clock = Clock()
    tracker = tracker_after_first_poll(clock)
    clock.now = 1001
    tracker.contact_failed("the primary at http://p:8090 is unreachable", "unreachable")
    clock.now = 1004
    assert tracker.snapshot().state is PairingState.OK  # within stale_after
    clock.now = 1006
    snapshot = tracker.snapshot()
    assert snapshot.state is PairingState.STALE and "unreachable" in snapshot.reason and snapshot.since == 1001
    beat(tracker, clock, problem="backup: the backup at http://b:8091 is unreachable", problem_age=6.0)
    snapshot = tracker.snapshot()
    assert snapshot.state is PairingState.STALE and "http://b:8091" in snapshot.reason and snapshot.since == 1000
    beat(tracker, clock)
    assert tracker.snapshot().state is PairingState.OK


def test_the_bound_never_uses_the_primarys_clock():
    """A heartbeat's age is a duration on the primary's clock; the time it covers is placed on the backup's
    clock from when the backup asked, so a primary clock that runs ahead or behind changes nothing."""
    clock = Clock()
    tracker = tracker_after_first_poll(clock)
    clock.now = 1005
    tracker.heartbeat(sent_at=1004.0, instance="a", age=2.0, detector="binlog", pending=0, problem=None,
                      problem_age=None)
    assert tracker.current_as_of == 1002.0
    assert tracker.snapshot().rpo_bound_seconds == 3.0


def test_no_evidence_at_all_is_starting_then_stale_with_the_last_error():
    clock = Clock()
    tracker = FreshnessTracker(stale_after=5, clock=clock)
    tracker.contact_failed("the primary rejected our signature: sync_token differs", "authentication")
    assert tracker.snapshot().state is PairingState.STARTING
    clock.now = 1005
    snapshot = tracker.snapshot()
    assert snapshot.state is PairingState.STALE and "sync_token differs" in snapshot.reason
    assert snapshot.current_as_of is None and snapshot.rpo_bound_seconds is None


def test_the_first_heartbeat_after_a_poll_needs_a_poll_of_its_own():
    """The primary's agent may have restarted between the start-up poll and its first heartbeat: what it did not
    see is unknown until a poll begun after that heartbeat (the flaw a full test run found)."""
    clock = Clock()
    tracker = FreshnessTracker(stale_after=5, clock=clock)
    tracker.poll_finished(tracker.poll_started())  # the start-up poll, before any heartbeat answered
    assert tracker.snapshot().state is PairingState.STARTING  # no heartbeat: real time is not shown to work
    clock.now = 1001
    assert beat(tracker, clock) is False  # an instance not seen before: the caller polls at once
    clock.now = 1002
    beat(tracker, clock)
    assert tracker.current_as_of == 1000.0
    tracker.poll_finished(tracker.poll_started())
    assert tracker.current_as_of == 1002.0 and tracker.snapshot().state is PairingState.OK
