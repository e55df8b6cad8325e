"""A library's other rows, copied between two independent installations (`local-sync --with-library-rows`).

The sync engine publishes `Repo`, `Branch` and `RepoHead`; Seafile lists and serves a library from those and
the rows `get_repo_from_db()` joins to them (`RepoSize`, `VirtualRepo`, `RepoFileCount`, `RepoInfo`), its
owner (`RepoOwner`) and its history settings (`RepoHistoryLimit`, `RepoValidSince`). On a paired backup
replication brings these; between two independent installations they are copied here.
"""

from __future__ import annotations

import pymysql

from seafbackup_agent.seafile.library import _rollback_quietly, _write_failed

LIBRARY_TABLES = ("RepoOwner", "RepoInfo", "RepoSize", "RepoFileCount", "VirtualRepo", "RepoHistoryLimit",
                  "RepoValidSince")
TRASH_TABLES = ("RepoTrash", "GarbageRepos")
"""Rows the target may hold for an id it once deleted: with them, its trash purge or GC would delete the copy."""


def copy_library_rows(source: pymysql.connections.Connection, target: pymysql.connections.Connection,
                      repo_id: str) -> dict[str, int]:
    """Make the target's rows of `repo_id` in LIBRARY_TABLES those of the source (and drop its trash rows), in
    one transaction; returns the number of rows copied per table."""
    found: dict[str, tuple[list[str], list[tuple]]] = {}
    try:
        with source.cursor() as cur:
            for table in LIBRARY_TABLES:
                cur.execute(f"SELECT * FROM {table} WHERE repo_id=%s", (repo_id,))
                keep = [i for i, d in enumerate(cur.description) if d[0] != "id"]  # the target numbers its own
                found[table] = ([cur.description[i][0] for i in keep],
                                [tuple(row[i] for i in keep) for row in cur.fetchall()])
        source.commit()  # ends the read: the next library's rows are read as they are then
    except pymysql.MySQLError as exc:
        raise _write_failed(repo_id, "reading its rows on the source", exc) from exc
    try:
        with target.cursor() as cur:
            for table in (*LIBRARY_TABLES, *TRASH_TABLES):
                cur.execute(f"DELETE FROM {table} WHERE repo_id=%s", (repo_id,))
            for table, (columns, rows) in found.items():
                if rows:
                    cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                    f"({', '.join(['%s'] * len(columns))})", rows)
        target.commit()
    except pymysql.MySQLError as exc:
        _rollback_quietly(target)
        raise _write_failed(repo_id, "copying its rows", exc) from exc
    return {table: len(rows) for table, (_, rows) in found.items()}
