"""Is a library on this store restorable? Walk its whole closure and check every object.

The closure of a head is what Seafile needs to serve the library with its kept history: every commit
from the head back through both parents, down to the history boundary (a commit older than
`truncate_time` is the last one kept on its line: it must be there, its tree need not), every fs object
of those commits' trees, and every block of their files.

Checked per object: present, and its content matching its id -- fs objects and blocks by the SHA-1 of
their content (`parse_fs_object`, `verify_block`); commits by parsing as Seafile does, with the id and
library they name (a commit id is a hash over some of its fields that Seafile never re-checks, and that
its C and Go servers compute differently, so it is not recomputed here).

`sample` < 1 reads only that fraction of the blocks (chosen at random); the others are only checked to
be present. Commits and fs objects are always read: the walk needs them, and they are small.
"""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.objects import FormatError, SeafDir, parse_commit, parse_fs_object, verify_block
from seafbackup_agent.seafile.storage import ObjectStore, ObjType

T = TypeVar("T")
FIRST_IDS = 10
"""How many ids of missing or corrupt objects a check keeps (the counts are always complete)."""


class Verdict(enum.StrEnum):
    """Worst first: the order of `Verdict.worst`."""

    CORRUPT = "corrupt"
    MISSING = "missing"
    BEHIND = "behind"
    OK = "ok"

    @staticmethod
    def worst(verdicts: list[Verdict]) -> Verdict:
        order = list(Verdict)
        return min(verdicts, key=order.index, default=Verdict.OK)


@dataclass(frozen=True, slots=True)
class BadObject:
    kind: str
    """"commit", "fs" or "block"."""
    obj_id: str
    reason: str


@dataclass(slots=True)
class ClosureCheck:
    """What the walk of one library's closure found."""

    repo_id: str
    store_id: str
    head: str
    commits: int = 0
    fs_objects: int = 0
    blocks: int = 0
    blocks_read: int = 0
    bytes_read: int = 0
    missing: int = 0
    corrupt: int = 0
    first_missing: list[BadObject] = field(default_factory=list)
    first_corrupt: list[BadObject] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return self.commits + self.fs_objects + self.blocks

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def _bad(self, kind: str, obj_id: str, reason: str, *, missing: bool) -> None:
        if missing:
            self.missing += 1
            if len(self.first_missing) < FIRST_IDS:
                self.first_missing.append(BadObject(kind, obj_id, reason))
        else:
            self.corrupt += 1
            if len(self.first_corrupt) < FIRST_IDS:
                self.first_corrupt.append(BadObject(kind, obj_id, reason))


Progress = Callable[[ClosureCheck], None]


def check_closure(
    store: ObjectStore,
    repo_id: str,
    store_id: str,
    head: str,
    *,
    truncate_time: int | None = None,
    sample: float = 1.0,
    rng: random.Random | None = None,
    progress: Progress | None = None,
    progress_every: int = 2000,
) -> ClosureCheck:
    """Walk the closure of `head` on `store` (see the module's doc) and check every object in it.
    Missing or corrupt objects are counted and the walk goes on past them; nothing is changed."""
    if not 0 < sample <= 1:
        raise ValueError("sample must be a fraction in (0, 1]")
    rng = rng or random.Random()
    check = ClosureCheck(repo_id, store_id, head)
    seen_commits: set[str] = set()
    seen_fs: set[bytes] = set()
    seen_blocks: set[bytes] = set()
    next_report = progress_every

    def report() -> None:
        nonlocal next_report
        if progress is not None and check.objects >= next_report:
            next_report = check.objects + progress_every
            progress(check)

    def load(kind: str, obj_type: ObjType, where: str, obj_id: str, parse: Callable[[bytes], T]) -> T | None:
        """The object parsed (and so verified), or None when it is missing or corrupt (counted)."""
        raw = store.read(obj_type, where, obj_id)
        if raw is None:
            check._bad(kind, obj_id, "missing", missing=True)
            return None
        check.bytes_read += len(raw)
        try:
            return parse(raw)
        except FormatError as exc:
            check._bad(kind, obj_id, str(exc), missing=False)
            return None

    def check_block(block_id: str) -> None:
        check.blocks += 1
        if sample < 1 and rng.random() >= sample:
            if not store.exists(ObjType.BLOCKS, store_id, block_id):
                check._bad("block", block_id, "missing", missing=True)
            return
        check.blocks_read += 1
        load("block", ObjType.BLOCKS, store_id, block_id, lambda data: verify_block(block_id, data))

    def check_tree(root_id: str, version: int) -> None:
        pending = [root_id]
        while pending:
            obj_id = pending.pop()
            key = bytes.fromhex(obj_id)
            if obj_id == EMPTY_ID or key in seen_fs:
                continue
            seen_fs.add(key)
            check.fs_objects += 1
            obj = load("fs", ObjType.FS, store_id, obj_id,
                       functools.partial(parse_fs_object, obj_id, version=version))
            if isinstance(obj, SeafDir):
                pending.extend(d.id for d in obj.dirents if d.is_dir or d.is_file)
            elif obj is not None:
                for block_id in obj.block_ids:
                    block_key = bytes.fromhex(block_id)
                    if block_key not in seen_blocks:
                        seen_blocks.add(block_key)
                        check_block(block_id)
            report()

    pending = [head]
    while pending:
        commit_id = pending.pop()
        if commit_id in seen_commits:
            continue
        seen_commits.add(commit_id)
        check.commits += 1
        commit = load("commit", ObjType.COMMITS, repo_id, commit_id,
                      functools.partial(parse_commit, expected_id=commit_id, expected_repo_id=repo_id))
        if commit is None:
            continue
        if truncate_time is not None and commit.ctime < truncate_time:
            continue  # the history boundary: this commit is kept, what is older (and its tree) need not be
        check_tree(commit.root_id, commit.version)
        pending.extend(commit.parents)
    if progress is not None:
        progress(check)
    return check


def check_library(installation: SeafileInstallation, repo_id: str) -> ClosureCheck | None:
    """The closure of a library's head on an installation, per its own rows (`Branch`, `VirtualRepo`, history
    limit); None when the library has no head there."""
    meta = installation.rows.meta(repo_id)
    if meta is None:
        return None
    return check_closure(installation.store, repo_id, meta.store_id, meta.head, truncate_time=meta.truncate_time)


@dataclass(slots=True)
class LibraryReport:
    """One library's verdict: its closure on the backup, and its head against the primary's."""

    repo_id: str
    head: str | None
    """The backup's head; None when the backup does not have the library."""
    primary_head: str | None
    """The primary's head; None when the primary does not have it, or when heads were not compared."""
    compared: bool
    closure: ClosureCheck | None
    seconds: float = 0.0

    @property
    def verdict(self) -> Verdict:
        if self.closure is not None and self.closure.corrupt:
            return Verdict.CORRUPT
        if self.closure is not None and self.closure.missing:
            return Verdict.MISSING
        if self.compared and self.primary_head != self.head:
            return Verdict.BEHIND
        return Verdict.OK
