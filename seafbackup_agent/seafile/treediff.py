"""Which fs objects of a tree are new compared with another tree: what an incremental sync will fetch.

Seafile's own sync protocol asks the server for the fs ids that differ between two commits; the agent
does the same so that one request brings every changed directory and file object of a commit,
instead of one request per directory level. The answer is a cache for the engine, not a contract:
it may stop at a limit, and the engine still checks and verifies everything it uses.
"""

from __future__ import annotations

from collections.abc import Callable

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import FormatError, SeafDir, parse_fs_object

MAX_OBJECTS = 5000
MAX_BYTES = 16 << 20


def changed_fs_objects(
    read: Callable[[str], bytes | None],
    new_root: str,
    old_root: str | None,
    *,
    version: int,
    max_objects: int = MAX_OBJECTS,
    max_bytes: int = MAX_BYTES,
) -> dict[str, bytes]:
    """Stored bytes of the fs objects reachable from `new_root` that are not at the same path under
    `old_root` (identical subtrees are skipped whole). Unreadable or malformed objects are left out."""
    found: dict[str, bytes] = {}
    total = 0
    pending: list[tuple[str, str | None]] = [(new_root, old_root)]
    while pending and len(found) < max_objects and total < max_bytes:
        new_id, old_id = pending.pop()
        if new_id in (old_id, EMPTY_ID) or new_id in found:
            continue
        raw = read(new_id)
        if raw is None:
            continue
        found[new_id] = raw
        total += len(raw)
        new_dir = _as_dir(new_id, raw, version)
        if new_dir is None:
            continue
        old_children: dict[str, str] = {}
        if old_id is not None and old_id != EMPTY_ID:
            old_raw = read(old_id)
            old_dir = _as_dir(old_id, old_raw, version) if old_raw is not None else None
            if old_dir is not None:
                old_children = {d.name: d.id for d in old_dir.dirents}
        for dirent in new_dir.dirents:
            if dirent.is_dir or dirent.is_file:
                pending.append((dirent.id, old_children.get(dirent.name)))
    return found


def _as_dir(obj_id: str, raw: bytes, version: int) -> SeafDir | None:
    try:
        obj = parse_fs_object(obj_id, raw, version=version)
    except FormatError:
        return None
    return obj if isinstance(obj, SeafDir) else None
