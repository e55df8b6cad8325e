"""Library rows in Seafile's database: what a library is (Repo/Branch/RepoHead), where its objects live
(VirtualRepo), how much history it keeps (RepoHistoryLimit/RepoValidSince), and the GC marker (GCID)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pymysql
from pymysql.constants import CR, ER

from seafbackup_agent.errors import DatabaseError
from seafbackup_agent.seafile.db import error_code

BRANCH = "master"


@dataclass(frozen=True, slots=True)
class LibraryMeta:
    """What the sync engine needs to know about a library on the source, besides its objects."""

    repo_id: str
    head: str
    store_id: str
    truncate_time: int | None
    """Commits older than this (unix time) are below the history boundary; None keeps all history."""
    size: int | None = None
    """`RepoSize.size` on the source (its head's files, as Seafile last computed it): an estimate for progress."""


def truncate_time(days: int | None, valid_since: int | None, *, now: float | None = None) -> int | None:
    """`seaf_repo_manager_get_repo_truncate_time()`: days -1/None = keep all, 0 = head only, N = N days."""
    now = time.time() if now is None else now
    since = valid_since if valid_since is not None and valid_since > 0 else None
    if days is None or days < 0:
        return since
    if days == 0:
        return int(now) + 1
    cutoff = int(now - days * 86400)
    return max(cutoff, since) if since is not None else cutoff


def _fetch_one(conn: pymysql.connections.Connection, sql: str, args: tuple) -> tuple | None:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


class LibraryRows:
    """Reads (and, on the backup, writes) a Seafile database's library rows."""

    def __init__(self, conn: pymysql.connections.Connection, *, keep_days: int | None = None) -> None:
        self.conn = conn
        self.keep_days = keep_days

    def head(self, repo_id: str) -> str | None:
        row = _fetch_one(
            self.conn, "SELECT commit_id FROM Branch WHERE repo_id=%s AND name=%s", (repo_id, BRANCH)
        )
        return row[0] if row else None

    def head_and_gc_id(self, repo_id: str) -> tuple[str | None, str | None]:
        """The library's head and its own GCID, in one round trip (what a sync reads first)."""
        row = _fetch_one(
            self.conn,
            "SELECT (SELECT commit_id FROM Branch WHERE repo_id=%s AND name=%s), "
            "(SELECT gc_id FROM GCID WHERE repo_id=%s)",
            (repo_id, BRANCH, repo_id),
        )
        return (row[0], row[1]) if row else (None, None)

    def iter_heads(self, batch: int = 5000) -> Iterator[tuple[str, str]]:
        """Every library with its head, in repo_id order."""
        for lines in self.iter_head_lines(batch):
            for line in lines:
                repo_id, _, head = line.partition(" ")
                yield repo_id, head

    def iter_head_lines(self, batch: int = 5000) -> Iterator[list[str]]:
        """Every library as `"<repo_id> <head>"`, in repo_id order, a list per batch (keyset pagination).
        One column per row: a poll of 100k libraries spends most of its time decoding fields."""
        last = ""
        while True:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT CONCAT(r.repo_id, ' ', b.commit_id) FROM Repo r JOIN Branch b "
                    "ON b.repo_id=r.repo_id AND b.name=%s WHERE r.repo_id > %s ORDER BY r.repo_id LIMIT %s",
                    (BRANCH, last, batch),
                )
                lines = [row[0] for row in cur.fetchall()]
            if lines:
                yield lines
            if len(lines) < batch:
                return
            last = lines[-1].partition(" ")[0]

    def meta(self, repo_id: str) -> LibraryMeta | None:
        # One round trip; a virtual repo keeps its origin's history limit.
        row = _fetch_one(
            self.conn,
            "SELECT b.commit_id, v.origin_repo, l.repo_id IS NOT NULL, l.days, s.timestamp, z.size "
            "FROM Repo r JOIN Branch b ON b.repo_id=r.repo_id AND b.name=%s "
            "LEFT JOIN VirtualRepo v ON v.repo_id=r.repo_id "
            "LEFT JOIN RepoHistoryLimit l ON l.repo_id=COALESCE(v.origin_repo, r.repo_id) "
            "LEFT JOIN RepoValidSince s ON s.repo_id=r.repo_id "
            "LEFT JOIN RepoSize z ON z.repo_id=r.repo_id WHERE r.repo_id=%s",
            (BRANCH, repo_id),
        )
        if row is None:
            return None
        head, origin, has_limit, limit_days, since, size = row
        days = limit_days if has_limit else self.keep_days
        return LibraryMeta(repo_id, head, origin or repo_id, truncate_time(days, since),
                           None if size is None else int(size))

    def gc_id(self, store_id: str, *, for_update: bool = False) -> str | None:
        sql = "SELECT gc_id FROM GCID WHERE repo_id=%s" + (" FOR UPDATE" if for_update else "")
        row = _fetch_one(self.conn, sql, (store_id,))
        return row[0] if row else None


DEADLOCK_RETRIES = 5


def _write_failed(repo_id: str, what: str, exc: pymysql.MySQLError) -> DatabaseError:
    code = error_code(exc)
    if code == ER.SPECIFIC_ACCESS_DENIED_ERROR:
        return DatabaseError(
            f"library {repo_id}: {what} failed: the database user may not write with sql_log_bin=0",
            hint="grant it BINLOG ADMIN on the backup (setup_backup.yml does)",
        )
    gone = isinstance(exc, pymysql.err.InterfaceError) or (
        code is not None and (code >= CR.CR_ERROR_FIRST or code == ER.SERVER_SHUTDOWN))
    text = exc.args[-1] if exc.args and exc.args[-1] else "the connection to the database is closed"
    message = f"library {repo_id}: {what} failed: {text}" + (f" (MySQL error {code})" if code else "")
    if gone:
        return DatabaseError(message, hint="the database server went away: check that it runs and accepts "
                                           "connections; the backup agent retries the sync by itself")
    return DatabaseError(message)


def _rollback_quietly(conn: pymysql.connections.Connection) -> None:
    """Roll back after a failed statement. On a connection the failure killed, rollback() raises an
    error of its own (InterfaceError (0, '')) that would hide the first one: the first one is reported."""
    with contextlib.suppress(pymysql.MySQLError):
        conn.rollback()


class PublishConflict(DatabaseError):
    """The target's Branch or GCID changed while objects were being copied."""


class GCConflict(PublishConflict):
    """Seafile GC ran on the backup during the copy: objects copied early may have been collected."""


class HeadMovedConflict(PublishConflict):
    """Someone other than the agent moved the library's Branch on the backup."""


@dataclass(frozen=True, slots=True)
class HeadMove:
    """A library's head to publish on the backup: `new_head` if `Branch` still holds `expected_head` and the
    store's GCID is still `expected_gc_id` (both read before the copy)."""

    repo_id: str
    store_id: str
    expected_head: str | None
    new_head: str
    expected_gc_id: str | None


def publish_head(conn: pymysql.connections.Connection, move: HeadMove) -> None:
    """Move a library's head on the backup in one transaction, as Seafile's own head update does:
    GCID compare, Branch compare-and-swap, then Repo/RepoHead/Branch. Written with sql_log_bin=0 so a
    backup that is promoted later carries no errant transactions."""
    [failure] = publish_heads(conn, [move])
    if failure is not None:
        raise failure


def publish_heads(conn: pymysql.connections.Connection, moves: list[HeadMove]) -> list[DatabaseError | None]:
    """`publish_head` for several libraries in one transaction (the backup agent's group commit): each library
    still has its own GCID compare and `Branch` compare-and-swap, and one that fails them is left out (its
    conflict is its entry of the answer) while the others are published. Answers, per move, None (published)
    or the error that kept it; a database failure is every library's error (nothing was published).

    The locking reads keep REPEATABLE READ's gap locks on purpose: they make a concurrent Seafile GC's
    new GCID row wait for this commit. Two writers publishing new libraries can then deadlock on the
    same gap of `Branch`; InnoDB rolls one back whole, and it is simply run again. Rows are locked in
    library order, so that two groups lock them in the same order."""
    ordered = sorted(range(len(moves)), key=lambda i: moves[i].repo_id)

    def attempt() -> list[DatabaseError | None]:
        outcome: list[DatabaseError | None] = [None] * len(moves)
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin=0")
            conn.begin()
            gc_ids: dict[str, str | None] = {}
            for i in ordered:
                move = moves[i]
                if move.store_id not in gc_ids:
                    cur.execute("SELECT gc_id FROM GCID WHERE repo_id=%s FOR UPDATE", (move.store_id,))
                    row = cur.fetchone()
                    gc_ids[move.store_id] = row[0] if row else None
                if gc_ids[move.store_id] != move.expected_gc_id:
                    outcome[i] = GCConflict(
                        f"library {move.repo_id}: Seafile GC ran on the backup during the copy (GCID changed)",
                        hint="the sync is redone with a full check of the copied objects",
                    )
                    continue
                cur.execute(
                    "SELECT commit_id FROM Branch WHERE repo_id=%s AND name=%s FOR UPDATE", (move.repo_id, BRANCH)
                )
                row = cur.fetchone()
                current = row[0] if row else None
                if current != move.expected_head:
                    outcome[i] = HeadMovedConflict(
                        f"library {move.repo_id}: its head on the backup moved from {move.expected_head} to "
                        f"{current} during the copy",
                        hint="another writer changed Branch on the backup; only the sync agent may",
                    )
            publish = [moves[i] for i in ordered if outcome[i] is None]
            if not publish:
                conn.rollback()
                return outcome
            rows = ", ".join(["(%s)"] * len(publish))
            cur.execute(f"INSERT IGNORE INTO Repo (repo_id) VALUES {rows}", [m.repo_id for m in publish])
            pairs = ", ".join(["(%s, %s)"] * len(publish))
            cur.execute(f"INSERT IGNORE INTO RepoHead (repo_id, branch_name) VALUES {pairs}",
                        [v for m in publish for v in (m.repo_id, BRANCH)])
            triples = ", ".join(["(%s, %s, %s)"] * len(publish))
            cur.execute(
                f"INSERT INTO Branch (name, repo_id, commit_id) VALUES {triples} "
                "ON DUPLICATE KEY UPDATE commit_id=VALUES(commit_id)",
                [v for m in publish for v in (BRANCH, m.repo_id, m.new_head)],
            )
            conn.commit()
        return outcome

    for attempt_number in range(DEADLOCK_RETRIES):
        try:
            return attempt()
        except pymysql.MySQLError as exc:
            _rollback_quietly(conn)
            if error_code(exc) == ER.LOCK_DEADLOCK and attempt_number + 1 < DEADLOCK_RETRIES:
                time.sleep(random.uniform(0.005, 0.05) * (attempt_number + 1))
                continue
            return [_write_failed(move.repo_id, "publishing the new head", exc) for move in moves]
    raise AssertionError("unreachable")


def remove_library(conn: pymysql.connections.Connection, repo_id: str) -> None:
    """A library deleted on the primary: its core rows go on the backup (objects stay, as in Seafile)."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin=0")
            conn.begin()
            for table in ("Branch", "RepoHead", "Repo"):
                cur.execute(f"DELETE FROM `{table}` WHERE repo_id=%s", (repo_id,))
            conn.commit()
    except pymysql.MySQLError as exc:
        _rollback_quietly(conn)
        raise _write_failed(repo_id, "removing its rows", exc) from exc
