"""The backup's cache of objects that came with a library's answer: asked for once, bounded."""

from __future__ import annotations

import base64

import pytest

from seafbackup_agent.transport.ahead import Ahead, AheadCache, AheadDiff, ahead_doc, parse_ahead_doc

REPO = "11111111-2222-4333-8444-555555555555"
C1, C2, F1, F2, B1, B2 = (f"{n:x}" * 40 for n in range(1, 7))


def test_each_object_is_given_once_and_only_for_what_was_asked():
    cache = AheadCache()
    cache.keep(REPO, REPO, Ahead(commits={C1: b"commit"}, diffs=[AheadDiff(F1, F2, 1, {F1: b"dir"})],
                                 blocks={B1: b"block"}))
    assert cache.diff(REPO, F1, F2, 0) is None  # another version: another diff
    assert cache.diff(REPO, F2, F1, 1) is None  # the other way round
    diff = cache.diff(REPO, F1, F2, 1)
    assert diff is not None and diff.objects == {F1: b"dir"} and diff.complete
    assert cache.diff(REPO, F1, F2, 1) is None
    assert cache.block(REPO, B2) is None and cache.block(REPO, B1) == b"block" and cache.block(REPO, B1) is None
    assert cache.commit("99999999-2222-4333-8444-555555555555", C1) is None
    assert cache.commit(REPO, C1) == b"commit" and cache.commit(REPO, C1) is None
    assert len(cache) == 0


def test_what_is_never_asked_for_is_dropped_oldest_first_beyond_the_bounds():
    cache = AheadCache(max_bytes=10, max_entries=100)
    cache.keep(REPO, REPO, Ahead(blocks={B1: b"123456"}))
    cache.keep(REPO, REPO, Ahead(blocks={B2: b"789012"}))
    assert cache.block(REPO, B1) is None and cache.block(REPO, B2) == b"789012"
    by_count = AheadCache(max_bytes=1 << 20, max_entries=2)
    by_count.keep(REPO, REPO, Ahead(commits={C1: b"a", C2: b"b"}, blocks={B1: b"c"}))
    assert len(by_count) == 2 and by_count.commit(REPO, C1) is None


def test_the_wire_form_round_trips_and_a_malformed_one_is_refused():
    ahead = Ahead(commits={C1: b'{"commit_id": "x"}'}, diffs=[AheadDiff(F1, F2, 1, {F1: b"\x00\xff"})],
                  blocks={B1: bytes(range(256))})
    assert parse_ahead_doc(ahead_doc(ahead)) == ahead
    good = ahead_doc(ahead)
    for bad in (
        [],
        {**good, "commits": {"A" * 40: "x"}},
        {**good, "commits": {C1: 1}},
        {**good, "diffs": {}},
        {**good, "diffs": [{"new": F1, "old": F2, "version": 2, "objects": {}}]},
        {**good, "diffs": [{"new": "../x", "old": F2, "version": 1, "objects": {}}]},
        {**good, "blocks": {B1: "not base64!"}},
        {**good, "blocks": {"../../etc/passwd": base64.b64encode(b"x").decode()}},
        {**good, "blocks": []},
    ):
        with pytest.raises(ValueError):
            parse_ahead_doc(bad)
