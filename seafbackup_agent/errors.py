"""One error hierarchy: each error carries a message an admin can act on and an exit code.

`ExitCode` is the one table of seaf-backup-cmd's exit statuses. The Ansible modules read it too:
`module_utils/seafbackup_errors.py` is a link to this file, so it must import nothing but the standard library.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status of `seaf-backup-cmd`. 5 and 6 mean one thing for `status` and another for `verify`."""

    OK = 0
    FAILED = 1
    """A sync or local-sync failed (its reason is printed)."""
    USAGE = 2
    """Bad arguments, a malformed id, or seafile.conf missing or inconsistent (also argparse's own code)."""
    DATABASE = 3
    """The database cannot be reached or refused a statement."""
    AGENT_NOT_RUNNING = 4
    """No agent answers on this host's control socket."""
    STALE = 5
    """`status`: the pairing is stale or broken (no fresh evidence from the primary, or it cannot deliver)."""
    BEHIND = 5
    """`verify`: a library is behind the primary (or deleted there, or not yet on the backup)."""
    FAILED_LIBRARIES = 6
    """`status`: the pairing is healthy but libraries failed to sync."""
    MISSING_OBJECTS = 6
    """`verify`: objects of a library's kept history are missing."""
    CORRUPT_OBJECTS = 7
    """`verify`: objects do not match their ids."""
    PEER_UNREACHABLE = 8
    """The other host's agent cannot be reached, refused our signature, or answered outside the protocol."""


class SeafBackupError(Exception):
    """Base of every error the agent reports to a user."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(SeafBackupError):
    """seafile.conf is missing, unreadable or inconsistent."""

    exit_code = ExitCode.USAGE


class InvalidIdError(SeafBackupError):
    """A library id or object id does not have Seafile's exact form."""

    exit_code = ExitCode.USAGE


class ObjectError(SeafBackupError):
    """An object is missing or does not verify against its id."""

    def __init__(self, message: str, *, obj_type: str, store_id: str, obj_id: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.obj_type = obj_type
        self.store_id = store_id
        self.obj_id = obj_id


class ObjectMissingError(ObjectError):
    pass


class ObjectCorruptError(ObjectError):
    pass


class DatabaseError(SeafBackupError):
    """The database cannot be reached or refused a statement."""

    exit_code = ExitCode.DATABASE


class StorageError(SeafBackupError):
    """Writing to the object storage failed (full disk, I/O error, permissions)."""
