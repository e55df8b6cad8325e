"""Which fs objects of a tree are new compared with another tree: what an incremental sync will fetch.

Seafile's own sync protocol asks the server for the fs ids that differ between two commits; the agent
does the same so that one request brings every changed directory and file object of a commit,
instead of one request per directory level. The answer is a cache for the engine, not a contract:
it may stop at a limit, and the engine still checks and verifies everything it uses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import FormatError, SeafDir, parse_fs_object

MAX_OBJECTS = 5000
MAX_BYTES = 16 << 20
CACHED_DIR_MIN_ENTRIES = 256
CACHED_ENTRIES = 20_000
"""Directories of at least CACHED_DIR_MIN_ENTRIES entries stay parsed, up to CACHED_ENTRIES entries in all (a few
MB): the next diff of the same library reads as old the directory this one read as new."""

_NAME_AND_ID = itemgetter(0, 1)


class _ParsedDirs:
    """Large directories as parsed (and verified against their ids) by earlier diffs, least recently used first.
    Objects never change under their id, so a kept one is right for as long as it is kept."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._dirs: OrderedDict[tuple[str, int], SeafDir] = OrderedDict()
        self._entries = 0
        self._lock = threading.Lock()

    def get(self, obj_id: str, version: int) -> SeafDir | None:
        with self._lock:
            found = self._dirs.get((obj_id, version))
            if found is not None:
                self._dirs.move_to_end((obj_id, version))
            return found

    def keep(self, parsed: SeafDir, version: int) -> None:
        if len(parsed.dirents) < CACHED_DIR_MIN_ENTRIES or len(parsed.dirents) > self._max_entries:
            return
        with self._lock:
            if (parsed.id, version) in self._dirs:
                return
            self._dirs[(parsed.id, version)] = parsed
            self._entries += len(parsed.dirents)
            while self._entries > self._max_entries:
                _key, dropped = self._dirs.popitem(last=False)
                self._entries -= len(dropped.dirents)


_parsed_dirs = _ParsedDirs(CACHED_ENTRIES)


@dataclass(frozen=True, slots=True)
class TreeDiff:
    objects: dict[str, bytes]
    """Stored bytes by id, parents before children."""
    complete: bool
    """Every object that differs is in `objects` (no limit was hit, none was unreadable or malformed):
    then whatever is under `new_root` and not in `objects` is at the same path under `old_root`."""


def changed_fs_objects(
    read: Callable[[str], bytes | None],
    new_root: str,
    old_root: str | None,
    *,
    version: int,
    max_objects: int = MAX_OBJECTS,
    max_bytes: int = MAX_BYTES,
) -> TreeDiff:
    """The fs objects reachable from `new_root` that are not at the same path under `old_root`
    (identical subtrees are skipped whole)."""
    found: dict[str, bytes] = {}
    total = 0
    complete = True
    pending: list[tuple[str, str | None]] = [(new_root, old_root)]
    while pending:
        if len(found) >= max_objects or total >= max_bytes:
            return TreeDiff(found, complete=False)
        new_id, old_id = pending.pop()
        if new_id in (old_id, EMPTY_ID) or new_id in found:
            continue
        raw = read(new_id)
        if raw is None:
            complete = False
            continue
        found[new_id] = raw
        total += len(raw)
        try:
            new_obj = _parsed_dirs.get(new_id, version) or parse_fs_object(new_id, raw, version=version)
        except FormatError:
            complete = False  # its children, if any, are not followed
            continue
        if not isinstance(new_obj, SeafDir):
            continue
        _parsed_dirs.keep(new_obj, version)
        # An old directory that cannot be read leaves every child "changed": more to send, still right.
        old_dir = _old_dir(read, old_id, version) if old_id not in (None, EMPTY_ID) else None
        old_children = dict(map(_NAME_AND_ID, old_dir.dirents)) if old_dir is not None else {}
        # Only entries not at the same path in the old directory are followed: a change in a directory of thousands
        # of entries costs about what its few changed entries cost.
        changed = [d for d in new_obj.dirents if old_children.get(d.name) != d.id]
        for dirent in changed:
            if dirent.is_dir or dirent.is_file:
                pending.append((dirent.id, old_children.get(dirent.name)))
    return TreeDiff(found, complete)


def _old_dir(read: Callable[[str], bytes | None], obj_id: str, version: int) -> SeafDir | None:
    kept = _parsed_dirs.get(obj_id, version)
    if kept is not None:
        return kept
    raw = read(obj_id)
    if raw is None:
        return None
    try:
        obj = parse_fs_object(obj_id, raw, version=version)
    except FormatError:
        return None
    return obj if isinstance(obj, SeafDir) else None
