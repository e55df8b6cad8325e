"""One error hierarchy: each error carries a message an admin can act on and an exit code."""

from __future__ import annotations


class SeafBackupError(Exception):
    """Base of every error the agent reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(SeafBackupError):
    """seafile.conf is missing, unreadable or inconsistent."""

    exit_code = 2


class InvalidIdError(SeafBackupError):
    """A library id or object id does not have Seafile's exact form."""

    exit_code = 2


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

    exit_code = 3


class StorageError(SeafBackupError):
    """Writing to the object storage failed (full disk, I/O error, permissions)."""
