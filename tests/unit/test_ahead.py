"""What rides with a library's answer: the primary bounds what it reads and sends whatever the store holds, the
backup's cache gives each object once and stays bounded."""

from __future__ import annotations

import base64
import hashlib
import stat

import pytest

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import (
    Dirent,
    compute_commit_id,
    encode_commit,
    encode_dir,
    encode_file,
    parse_commit,
)
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.transport.ahead import (
    AHEAD_BLOCK_BYTES,
    AHEAD_BLOCKS,
    Ahead,
    AheadCache,
    AheadDiff,
    ahead_doc,
    parse_ahead_doc,
    read_ahead,
)

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


class _Store(dict):
    """A Seafile object store as the primary's `read` sees it: (type, store id, object id) -> stored bytes."""

    def read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None:
        return self.get((obj_type, store_id, obj_id))

    def commit(self, root_id: str, parent_id: str | None, ctime: int) -> str:
        fields = {"root_id": root_id, "repo_id": REPO, "creator_name": "alice@example.com", "creator": "0" * 40,
                  "description": "changed", "ctime": ctime, "parent_id": parent_id, "second_parent_id": None,
                  "repo_name": "lib", "repo_desc": "", "repo_category": None, "no_local_history": 1, "version": 1}
        commit_id = compute_commit_id(root_id=root_id, creator="0" * 40, creator_name="alice@example.com",
                                      description="changed", ctime=ctime)
        self[(ObjType.COMMITS, REPO, commit_id)] = encode_commit({"commit_id": commit_id, **fields})
        return commit_id

    def tree(self, files: dict[str, tuple[int, list[bytes]]]) -> str:
        """A root directory of files, each (declared size, its blocks' bytes)."""
        dirents = []
        for name, (size, blocks) in files.items():
            block_ids = []
            for data in blocks:
                block_id = hashlib.sha1(data).hexdigest()
                self[(ObjType.BLOCKS, REPO, block_id)] = data
                block_ids.append(block_id)
            file_id, raw = encode_file(size, block_ids)
            self[(ObjType.FS, REPO, file_id)] = raw
            dirents.append(Dirent(name, file_id, stat.S_IFREG | 0o644, 1, "alice@example.com", size))
        root_id, raw = encode_dir(dirents)
        self[(ObjType.FS, REPO, root_id)] = raw
        return root_id


def _head(store: _Store, commit_id: str):
    return parse_commit(store.read(ObjType.COMMITS, REPO, commit_id), expected_id=commit_id)


def test_the_answer_holds_the_new_commits_their_diffs_and_the_small_new_files_blocks():
    store = _Store()
    base = store.commit(EMPTY_ID, None, 100)
    first = store.commit(store.tree({"a.txt": (5, [b"hello"])}), base, 101)
    head = store.commit(store.tree({"a.txt": (5, [b"hello"]), "b.txt": (3, [b"bye"])}), first, 102)
    ahead = read_ahead(store.read, REPO, REPO, _head(store, head), base, None)
    assert list(ahead.commits) == [first]  # the head commit is the answer's "head_commit", not sent twice
    assert [(d.new_root, d.old_root) for d in ahead.diffs] == [
        (_head(store, first).root_id, EMPTY_ID), (_head(store, head).root_id, _head(store, first).root_id)]
    assert len(ahead.diffs[1].objects) == 2  # the new root and b.txt's file object; a.txt is at the same path
    assert sorted(ahead.blocks.values()) == [b"bye", b"hello"]
    assert read_ahead(store.read, REPO, REPO, _head(store, head), head, None) == Ahead()


def test_a_crafted_file_object_costs_the_primary_no_more_than_the_bounds():
    """A file object is what a Seafile client uploaded: a size of 0 or -1 over thousands of blocks must not make
    the primary read them all into one answer."""
    store = _Store()
    base = store.commit(EMPTY_ID, None, 100)
    many = [i.to_bytes(4, "big") * 1024 for i in range(AHEAD_BLOCKS + 100)]  # 4 KiB each
    head = store.commit(store.tree({"zero.bin": (0, many), "negative.bin": (-1, many[:10]),
                                    "honest.bin": (len(many) * 4096, many)}), base, 101)
    ahead = read_ahead(store.read, REPO, REPO, _head(store, head), base, None)
    assert len(ahead.blocks) <= AHEAD_BLOCKS
    assert sum(map(len, ahead.blocks.values())) <= AHEAD_BLOCK_BYTES + 4096
