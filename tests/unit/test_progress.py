"""Progress figures: the rate is over the last minute, a batch runs from idle to idle, ETAs from the rate."""

from __future__ import annotations

import pytest

from seafbackup_agent.cli.progress import parse_line
from seafbackup_agent.sync.progress import LibraryProgress, Rate, StoreProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_over_the_last_minute_only():
    clock = Clock()
    rate = Rate(clock)
    rate.sample(0, 0)
    clock.now += 60
    rate.sample(6000, 600_000)  # 100 objects/s for the first minute
    clock.now += 60
    rate.sample(6600, 660_000)  # then 10/s
    assert rate.per_second() == pytest.approx((10.0, 1000.0))


def test_a_batch_counts_libraries_and_copies_and_ends_when_idle():
    clock = Clock()
    copied: list[LibraryProgress] = []
    store = StoreProgress(clock=clock, on_copied=copied.append)
    for repo in ("a", "b"):
        store.add(repo)
    report = store.start("a")
    live = LibraryProgress("a", commits=2, fs_objects=10, blocks=20, bytes=1000, commits_total=2, estimated_bytes=4000)
    report(live)
    clock.now += 10
    live.blocks, live.bytes = 40, 2000
    report(live)
    doc = store.document()
    assert (doc["active"], doc["libraries_done"], doc["libraries_total"], doc["objects"], doc["bytes"]) == (
        True, 0, 2, 52, 2000)
    [lib] = doc["libraries"]
    assert lib["bytes_per_second"] == pytest.approx(100.0) and lib["eta_seconds"] == pytest.approx(20.0)
    # The metrics get differences, which add up to the totals.
    assert sum(c.blocks for c in copied) == 40 and sum(c.bytes for c in copied) == 2000
    store.finish("a")
    store.finish("b", done=False)  # queued again: not done in this batch
    assert store.document()["libraries_remaining"] == 1
    store.start("b")
    store.finish("b")
    doc = store.document()
    assert (doc["active"], doc["libraries_done"], doc["objects"], doc["bytes"], doc["eta_seconds"]) == (
        False, 2, 52, 2000, 0.0)
    store.add("c")  # from idle: a new batch
    assert (store.document()["libraries_total"], store.document()["objects"]) == (1, 0)


def test_a_plain_progress_line_parses_and_anything_else_is_refused():
    fields = parse_line("progress libraries=1/3 objects=12 bytes=345 objects_per_second=- bytes_per_second=1.5 "
                        "elapsed=0.2 library=-")
    assert fields["libraries"] == "1/3" and fields["bytes"] == "345" and fields["library"] == "-"
    with pytest.raises(ValueError, match="not a progress line"):
        parse_line("library x synchronized")


def test_the_count_of_libraries_left_holds_through_requeues_and_a_late_finish_from_an_earlier_batch():
    store = StoreProgress(clock=Clock())
    for repo in ("a", "b", "c"):
        store.add(repo)
    store.add("a")  # notified again while queued: still one library
    assert store.remaining() == 3
    store.start("a")
    store.finish("a")
    store.add("a")  # changed again after its sync: left to do again
    assert store.remaining() == 3
    for repo in ("a", "b", "c"):
        store.finish(repo)
    assert store.remaining() == 0
    store.add("d")  # a new batch
    store.finish("b")  # a sync of the previous batch that ends late counts for nothing here
    assert store.remaining() == 1 and store.document()["libraries_total"] == 1

