"""What rides with a library's metadata: the objects an incremental sync will ask for next.

An ordinary head move is one commit with a few changed files. Asked for separately, its commit, the fs
objects that changed and the new files' blocks cost three round trips after the metadata, and as many
requests on each agent (their CPU per head move, and on a WAN link 3 RTT of RPO). When the backup says which
head it has (`GET /v1/libraries/<repo_id>?since=<its head>`), the primary sends along, in the same answer:

- the commits below its head back to that head (at most AHEAD_COMMITS; the head commit is "head_commit"),
- for each of them whose parent is that head or among them, the fs objects not at the same path in the
  parent's tree (only diffs that are complete, AHEAD_FS_OBJECTS and AHEAD_FS_BYTES for all),
- the blocks of the new files, up to AHEAD_BLOCK_BYTES and AHEAD_BLOCKS, counted as they are read.

The backup keeps them (`AheadCache`) until its engine asks for exactly those objects, and checks each against
its id like any other it fetches: the answer is a cache, never a contract. What is not there is asked for as
before, so a primary of an earlier version, which ignores `since`, is still served right.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from seafbackup_agent.seafile.ids import EMPTY_ID, is_object_id
from seafbackup_agent.seafile.objects import Commit, FormatError, SeafFile, parse_commit, parse_fs_object
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.seafile.treediff import TreeDiff, changed_fs_objects

AHEAD_COMMITS = 16
AHEAD_FS_OBJECTS = 1000
AHEAD_FS_BYTES = 1 << 20
AHEAD_BLOCK_BYTES = 256 << 10
"""A few changed files' blocks ride along; larger changes are fetched by the engine's own block requests, where
the transfer, not the round trip, is what counts."""
AHEAD_BLOCKS = 256

CACHE_BYTES = 8 << 20
CACHE_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class AheadDiff:
    new_root: str
    old_root: str
    version: int
    objects: dict[str, bytes]
    """The complete diff of `new_root` against `old_root`, parents before children."""


@dataclass(slots=True)
class Ahead:
    commits: dict[str, bytes] = field(default_factory=dict)
    diffs: list[AheadDiff] = field(default_factory=list)
    blocks: dict[str, bytes] = field(default_factory=dict)


ReadObject = Callable[[ObjType, str, str], bytes | None]


def read_ahead(read: ReadObject, repo_id: str, store_id: str, head: Commit, since: str,
               truncate_time: int | None) -> Ahead:
    """The primary's side: what a backup whose head is `since` will ask for to reach `head`."""
    ahead = Ahead()
    if head.commit_id == since:
        return ahead
    commits = _commits_since(read, repo_id, head, since, truncate_time)
    # The head commit itself is in the answer already (its "head_commit"): only the ones below it ride here.
    ahead.commits = {cid: commit.raw for cid, commit in commits.items() if cid != head.commit_id}
    base = read(ObjType.COMMITS, repo_id, since)
    roots = {cid: commit.root_id for cid, commit in commits.items()}
    if base is not None:
        with contextlib.suppress(FormatError):
            roots[since] = parse_commit(base, expected_id=since, expected_repo_id=repo_id).root_id

    def read_fs(obj_id: str) -> bytes | None:
        return read(ObjType.FS, store_id, obj_id)

    objects_left, bytes_left = AHEAD_FS_OBJECTS, AHEAD_FS_BYTES
    for commit in reversed(commits.values()):  # oldest first, as the engine copies them
        if not commit.parents or commit.parents[0] not in roots:
            continue
        old_root = roots[commit.parents[0]]
        if commit.root_id == old_root or (old_root == EMPTY_ID and commit.parents[0] != since):
            continue  # nothing changed, or a whole first tree: the engine walks that one itself
        diff = changed_fs_objects(read_fs, commit.root_id, old_root, version=commit.version,
                                  max_objects=objects_left, max_bytes=bytes_left)
        if not diff.complete:
            break
        ahead.diffs.append(AheadDiff(commit.root_id, old_root, commit.version, diff.objects))
        objects_left -= len(diff.objects)
        bytes_left -= sum(map(len, diff.objects.values()))
    ahead.blocks = _new_files_blocks(read, store_id, ahead.diffs)
    return ahead


def _commits_since(read: ReadObject, repo_id: str, head: Commit, since: str,
                   truncate_time: int | None) -> dict[str, Commit]:
    """Newest first: the commits from `head` back to `since` (both parents), within the history boundary."""
    found: dict[str, Commit] = {}
    pending = [head.commit_id]
    while pending and len(found) < AHEAD_COMMITS:
        cid = pending.pop()
        if cid == since or cid in found:
            continue
        if cid == head.commit_id:
            commit = head
        else:
            raw = read(ObjType.COMMITS, repo_id, cid)
            if raw is None:
                continue
            try:
                commit = parse_commit(raw, expected_id=cid, expected_repo_id=repo_id)
            except FormatError:
                continue
        found[cid] = commit
        if truncate_time is None or commit.ctime >= truncate_time:
            pending.extend(commit.parents)
    return found


def _new_files_blocks(read: ReadObject, store_id: str, diffs: list[AheadDiff]) -> dict[str, bytes]:
    """Blocks of the new files that fit, counted by the bytes read (a file object's size and block list are what
    a Seafile client uploaded: a crafted one costs no more than AHEAD_BLOCK_BYTES and AHEAD_BLOCKS reads)."""
    blocks: dict[str, bytes] = {}
    bytes_left, reads_left = AHEAD_BLOCK_BYTES, AHEAD_BLOCKS
    for diff in diffs:
        for obj_id, raw in diff.objects.items():
            try:
                obj = parse_fs_object(obj_id, raw, version=diff.version)
            except FormatError:
                continue
            if not isinstance(obj, SeafFile) or not 0 <= obj.size <= bytes_left:
                continue
            for block_id in obj.block_ids:
                if bytes_left <= 0 or reads_left <= 0:
                    return blocks
                reads_left -= 1
                data = read(ObjType.BLOCKS, store_id, block_id)
                if data is not None:
                    blocks[block_id] = data
                    bytes_left -= len(data)
    return blocks


def ahead_doc(ahead: Ahead) -> dict[str, Any]:
    """The "ahead" member of the library's JSON answer (fs objects and blocks in base64, commits as text)."""
    commits = {}
    for cid, raw in ahead.commits.items():
        try:
            commits[cid] = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # the engine asks for it and reports it
    return {
        "commits": commits,
        "diffs": [{"new": d.new_root, "old": d.old_root, "version": d.version, "objects": _encoded(d.objects)}
                  for d in ahead.diffs],
        "blocks": _encoded(ahead.blocks),
    }


def parse_ahead_doc(doc: object) -> Ahead:
    """The backup's side; ValueError when the member is malformed."""
    if not isinstance(doc, dict):
        raise ValueError("ahead: not an object")
    commits = doc.get("commits", {})
    if not isinstance(commits, dict) or not all(
        is_object_id(cid) and isinstance(text, str) for cid, text in commits.items()
    ):
        raise ValueError("ahead: malformed commits")
    diffs = doc.get("diffs", [])
    if not isinstance(diffs, list):
        raise ValueError("ahead: malformed diffs")
    ahead = Ahead(commits={cid: text.encode("utf-8") for cid, text in commits.items()},
                  blocks=_decoded(doc.get("blocks", {})))
    for diff in diffs:
        if not (isinstance(diff, dict) and is_object_id(diff.get("new")) and is_object_id(diff.get("old"))
                and diff.get("version") in (0, 1)):
            raise ValueError("ahead: malformed diff")
        ahead.diffs.append(AheadDiff(diff["new"], diff["old"], diff["version"], _decoded(diff.get("objects", {}))))
    return ahead


def _encoded(objects: dict[str, bytes]) -> dict[str, str]:
    return {obj_id: base64.b64encode(data).decode("ascii") for obj_id, data in objects.items()}


def _decoded(objects: object) -> dict[str, bytes]:
    if not isinstance(objects, dict):
        raise ValueError("ahead: malformed objects")
    decoded = {}
    for obj_id, text in objects.items():
        if not (is_object_id(obj_id) and isinstance(text, str)):
            raise ValueError("ahead: malformed object")
        try:
            decoded[obj_id] = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("ahead: an object is not base64") from None
    return decoded


class AheadCache:
    """The backup's side: objects that came ahead, kept until asked for once, least recently kept dropped first
    beyond CACHE_BYTES or CACHE_ENTRIES (a sync that failed, or objects the backup already had)."""

    def __init__(self, max_bytes: int = CACHE_BYTES, max_entries: int = CACHE_ENTRIES) -> None:
        self._max_bytes, self._max_entries = max_bytes, max_entries
        self._kept: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._bytes = 0

    def keep(self, repo_id: str, store_id: str, ahead: Ahead) -> None:
        for cid, raw in ahead.commits.items():
            self._put(("commit", repo_id, cid), raw, len(raw))
        for diff in ahead.diffs:
            size = sum(map(len, diff.objects.values()))
            self._put(("diff", store_id, diff.new_root, diff.old_root, diff.version),
                      TreeDiff(diff.objects, complete=True), size)
        for block_id, data in ahead.blocks.items():
            self._put(("block", store_id, block_id), data, len(data))

    def commit(self, repo_id: str, commit_id: str) -> bytes | None:
        found = self._pop(("commit", repo_id, commit_id))
        return found if isinstance(found, bytes) else None

    def diff(self, store_id: str, new_root: str, old_root: str, version: int) -> TreeDiff | None:
        found = self._pop(("diff", store_id, new_root, old_root, version))
        return found if isinstance(found, TreeDiff) else None

    def block(self, store_id: str, block_id: str) -> bytes | None:
        found = self._pop(("block", store_id, block_id))
        return found if isinstance(found, bytes) else None

    def _put(self, key: Hashable, value: object, size: int) -> None:
        self._pop(key)
        self._kept[key] = (value, size)
        self._bytes += size
        while self._kept and (self._bytes > self._max_bytes or len(self._kept) > self._max_entries):
            _key, (_value, dropped) = self._kept.popitem(last=False)
            self._bytes -= dropped

    def _pop(self, key: Hashable) -> object | None:
        found = self._kept.pop(key, None)
        if found is None:
            return None
        self._bytes -= found[1]
        return found[0]

    def __len__(self) -> int:
        return len(self._kept)
