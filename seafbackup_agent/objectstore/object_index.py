"""What the backup's buckets and pools hold, kept locally: the walk asks here instead of a HEAD per object.

On a filesystem, "does the backup have this object?" is a `stat`; on S3 it would be a HEAD request, and an
O(change) walk that skips unchanged subtrees still asks once per object of each changed directory. So
the store keeps an index of every object it holds, one SQLite table keyed by (type, store id, object
id) as 1 + 16 + 20 bytes: 49.5 bytes per object on disk with SQLite's overhead (49.5 MB per million, measured).

What keeps it true: an object is added only after its PUT returned (so the index never claims an object
the store lacks; a crash between the PUT and the insert only makes the object copied again). It is
rebuilt from a LIST of the bucket or pool (`rebuild`) when it cannot be trusted:

- the index file is new, unreadable, or was interrupted while being rebuilt (`complete` is not set);
- it was built for another bucket or pool (`identity` differs: another endpoint, bucket, cluster fsid);
- `verify` found an object of a kept history missing from the store (someone deleted objects behind the
  agent's back): it marks the type untrusted and the next sync rebuilds it.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from seafbackup_agent.seafile.storage import ObjType

TYPE_CODE = {ObjType.COMMITS: 0, ObjType.FS: 1, ObjType.BLOCKS: 2}
REBUILD_BATCH = 10_000


def _store_key(store_id: str) -> bytes:
    try:
        return uuid.UUID(store_id).bytes
    except ValueError:
        return store_id.encode()


class ObjectIndex:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError:  # unreadable: start again (every type then rebuilds)
            self.path.unlink(missing_ok=True)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS objects (type INTEGER NOT NULL, store BLOB NOT NULL, "
                     "obj BLOB NOT NULL, PRIMARY KEY (type, store, obj)) WITHOUT ROWID")
        return conn

    def trusted(self, obj_type: ObjType, identity: str) -> bool:
        with self._lock:
            rows = dict(self._conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                                           (f"identity:{obj_type}", f"complete:{obj_type}")).fetchall())
        return rows.get(f"identity:{obj_type}") == identity and rows.get(f"complete:{obj_type}") == "1"

    def ensure(self, obj_type: ObjType, identity: str, lister: Callable[[], Iterable[tuple[str, str]]]) -> int:
        """Rebuild the type from `lister()` (a LIST of the store) unless the index is trusted for `identity`.
        Returns the number of objects listed (0 when nothing was rebuilt)."""
        if self.trusted(obj_type, identity):
            return 0
        return self.rebuild(obj_type, identity, lister)

    def rebuild(self, obj_type: ObjType, identity: str, lister: Callable[[], Iterable[tuple[str, str]]]) -> int:
        code = TYPE_CODE[obj_type]
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, '0')", (f"complete:{obj_type}",))
            self._conn.execute("DELETE FROM objects WHERE type = ?", (code,))
        listed = 0
        batch: list[tuple[int, bytes, bytes]] = []
        for store_id, obj_id in lister():
            batch.append((code, _store_key(store_id), bytes.fromhex(obj_id)))
            if len(batch) >= REBUILD_BATCH:
                listed += self._insert(batch)
                batch = []
        listed += self._insert(batch)
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"identity:{obj_type}", identity))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (f"complete:{obj_type}",))
            self._conn.execute("COMMIT")
        return listed

    def distrust(self, obj_type: ObjType) -> None:
        """The next `ensure` rebuilds this type (the store lost objects the index lists)."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, '0')", (f"complete:{obj_type}",))

    def contains(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool:
        key = (TYPE_CODE[obj_type], _store_key(store_id), bytes.fromhex(obj_id))
        with self._lock:
            return self._conn.execute("SELECT 1 FROM objects WHERE type = ? AND store = ? AND obj = ?",
                                      key).fetchone() is not None

    def add(self, obj_type: ObjType, items: Iterable[tuple[str, str]]) -> None:
        """Objects whose PUT returned."""
        code = TYPE_CODE[obj_type]
        self._insert([(code, _store_key(store_id), bytes.fromhex(obj_id)) for store_id, obj_id in items])

    def count(self, obj_type: ObjType) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM objects WHERE type = ?",
                                          (TYPE_CODE[obj_type],)).fetchone()[0])

    def _insert(self, rows: list[tuple[int, bytes, bytes]]) -> int:
        if not rows:
            return 0
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR IGNORE INTO objects VALUES (?, ?, ?)", rows)
            self._conn.execute("COMMIT")
        return len(rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
