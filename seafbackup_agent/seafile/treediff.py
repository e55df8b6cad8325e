"""Which fs objects of a tree are new compared with another tree: what an incremental sync will fetch.

Seafile's own sync protocol asks the server for the fs ids that differ between two commits; the agent
does the same so that one request brings every changed directory and file object of a commit,
instead of one request per directory level. The answer is a cache for the engine, not a contract:
it may stop at a limit, and the engine still checks and verifies everything it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import FormatError, SeafDir, parse_fs_object

MAX_OBJECTS = 5000
MAX_BYTES = 16 << 20


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
            new_obj = parse_fs_object(new_id, raw, version=version)
        except FormatError:
            complete = False  # its children, if any, are not followed
            continue
        if not isinstance(new_obj, SeafDir):
            continue
        # An old directory that cannot be read leaves every child "changed": more to send, still right.
        old_dir = _as_dir(old_id, read(old_id), version) if old_id not in (None, EMPTY_ID) else None
        old_children = {d.name: d.id for d in old_dir.dirents} if old_dir is not None else {}
        for dirent in new_obj.dirents:
            if dirent.is_dir or dirent.is_file:
                pending.append((dirent.id, old_children.get(dirent.name)))
    return TreeDiff(found, complete)


def _as_dir(obj_id: str, raw: bytes | None, version: int) -> SeafDir | None:
    if raw is None:
        return None
    try:
        obj = parse_fs_object(obj_id, raw, version=version)
    except FormatError:
        return None
    return obj if isinstance(obj, SeafDir) else None
