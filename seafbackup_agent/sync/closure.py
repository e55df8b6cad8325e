"""Is a library's head restorable from a store? Walk its whole closure and report what is missing or corrupt.

The walk follows what the sync engine copies: every commit from the head (both parents of merges) down to
the history boundary (the first commit older than it is kept, its parents are not followed), each
commit's whole tree, and every block of every file. Each object is read and checked against its id
(commits: parsed, id and library; fs objects: SHA-1 of the JSON; blocks: SHA-1 of the bytes).
Memory grows with the library's distinct object ids (the walk's seen sets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.objects import FormatError, SeafDir, SeafFile, parse_commit, parse_fs_object, verify_block
from seafbackup_agent.seafile.storage import ObjectStore, ObjType


@dataclass(frozen=True, slots=True)
class BadObject:
    obj_type: ObjType
    obj_id: str
    commit_id: str
    """A commit whose closure needs the object (the first one the walk met it under)."""
    reason: str


@dataclass(slots=True)
class ClosureReport:
    repo_id: str
    store_id: str
    head: str
    commits: int = 0
    fs_objects: int = 0
    blocks: int = 0
    bytes: int = 0
    missing: list[BadObject] = field(default_factory=list)
    corrupt: list[BadObject] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    @property
    def objects(self) -> int:
        return self.commits + self.fs_objects + self.blocks


def check_closure(
    store: ObjectStore,
    repo_id: str,
    store_id: str,
    head: str,
    *,
    truncate_time: int | None = None,
    progress: Callable[[ClosureReport], None] | None = None,
) -> ClosureReport:
    """Walk `head`'s closure in `store` (commits under `repo_id`, fs objects and blocks under `store_id`,
    as for a virtual repo); `progress` is called after each commit's tree."""
    report = ClosureReport(repo_id, store_id, head)
    seen_commits: set[str] = set()
    seen_fs: set[str] = set()
    seen_blocks: set[str] = set()
    pending = [head]
    while pending:
        commit_id = pending.pop()
        if commit_id in seen_commits:
            continue
        seen_commits.add(commit_id)
        raw = store.read(ObjType.COMMITS, repo_id, commit_id)
        if raw is None:
            report.missing.append(BadObject(ObjType.COMMITS, commit_id, commit_id, "not in the store"))
            continue
        try:
            commit = parse_commit(raw, expected_id=commit_id, expected_repo_id=repo_id)
        except FormatError as exc:
            report.corrupt.append(BadObject(ObjType.COMMITS, commit_id, commit_id, str(exc)))
            continue
        report.commits += 1
        report.bytes += len(raw)
        _check_tree(store, report, commit_id, commit.root_id, commit.version, seen_fs, seen_blocks)
        if progress is not None:
            progress(report)
        if truncate_time is None or commit.ctime >= truncate_time:
            pending.extend(commit.parents)
    return report


def _check_tree(store: ObjectStore, report: ClosureReport, commit_id: str, root_id: str, version: int,
                seen_fs: set[str], seen_blocks: set[str]) -> None:
    store_id = report.store_id
    stack = [root_id]
    while stack:
        obj_id = stack.pop()
        if obj_id == EMPTY_ID or obj_id in seen_fs:
            continue
        seen_fs.add(obj_id)
        raw = store.read(ObjType.FS, store_id, obj_id)
        if raw is None:
            report.missing.append(BadObject(ObjType.FS, obj_id, commit_id, "not in the store"))
            continue
        try:
            obj = parse_fs_object(obj_id, raw, version=version)
        except FormatError as exc:
            report.corrupt.append(BadObject(ObjType.FS, obj_id, commit_id, str(exc)))
            continue
        report.fs_objects += 1
        report.bytes += len(raw)
        if isinstance(obj, SeafDir):
            stack.extend(d.id for d in obj.dirents if d.is_dir or d.is_file)
        elif isinstance(obj, SeafFile):
            for block_id in obj.block_ids:
                if block_id in seen_blocks:
                    continue
                seen_blocks.add(block_id)
                data = store.read(ObjType.BLOCKS, store_id, block_id)
                if data is None:
                    report.missing.append(BadObject(ObjType.BLOCKS, block_id, commit_id, "not in the store"))
                    continue
                try:
                    verify_block(block_id, data)
                except FormatError as exc:
                    report.corrupt.append(BadObject(ObjType.BLOCKS, block_id, commit_id, str(exc)))
                    continue
                report.blocks += 1
                report.bytes += len(data)


def check_library(installation: SeafileInstallation, repo_id: str) -> ClosureReport | None:
    """The closure of a library's head on an installation, per its own rows (`Branch`, `VirtualRepo`,
    history limit); None when the library has no head there."""
    meta = installation.rows.meta(repo_id)
    if meta is None:
        return None
    return check_closure(installation.store, repo_id, meta.store_id, meta.head, truncate_time=meta.truncate_time)
