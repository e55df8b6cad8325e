"""What a sync did, and why one failed: typed values for the CLI, the service and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from seafbackup_agent.errors import SeafBackupError


class Outcome(StrEnum):
    UNCHANGED = "unchanged"
    SYNCHRONIZED = "synchronized"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class SkippedObject:
    """An object `--force` left out because it is missing or corrupt on the source."""

    obj_type: str
    obj_id: str
    commit_id: str
    reason: str


@dataclass(slots=True)
class SyncResult:
    repo_id: str
    outcome: Outcome
    old_head: str | None
    new_head: str | None
    commits: int = 0
    fs_objects: int = 0
    blocks: int = 0
    bytes: int = 0
    skipped: list[SkippedObject] = field(default_factory=list)
    forced: bool = False
    """`--force` relaxed the invariant: objects were skipped, or the head moved to a non-descendant."""
    duration: float = 0.0

    @property
    def objects(self) -> int:
        return self.commits + self.fs_objects + self.blocks


class SyncError(SeafBackupError):
    """A library could not be brought up to the source's head; the backup still points at its old head."""

    def __init__(self, repo_id: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"library {repo_id}: {message}", hint=hint)
        self.repo_id = repo_id


class NotDescendantError(SyncError):
    """The source's head does not descend from the backup's (the primary ran seaf-fsck, or rolled back)."""


class SourceObjectError(SyncError):
    """An object the new head needs is missing or corrupt on the source."""

    def __init__(self, repo_id: str, message: str, *, obj_type: str, obj_id: str, commit_id: str) -> None:
        super().__init__(
            repo_id,
            message,
            hint="repair the library on the primary (seaf-fsck) or run `seaf-backup-cmd sync --force` to copy "
            "everything else and record what is missing",
        )
        self.obj_type = obj_type
        self.obj_id = obj_id
        self.commit_id = commit_id
