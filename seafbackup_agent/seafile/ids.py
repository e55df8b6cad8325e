"""Seafile identifiers: library ids (UUIDs) and object ids (40 lowercase hex)."""

from __future__ import annotations

import re
from typing import TypeGuard

from seafbackup_agent.errors import InvalidIdError

EMPTY_ID = "0" * 40
"""Seafile's EMPTY_SHA1: the empty directory and the empty file. Never stored."""

_OBJECT_ID = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OBJECT_FILE_NAME = re.compile(r"[0-9a-f]{38}")


def is_object_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _OBJECT_ID.fullmatch(value) is not None


def is_repo_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _REPO_ID.fullmatch(value) is not None


def is_object_file_name(name: str) -> bool:
    """Only exact 38-hex names are objects; temp files and strays are not."""
    return _OBJECT_FILE_NAME.fullmatch(name) is not None


def object_id(value: object, what: str = "object id") -> str:
    if not is_object_id(value):
        raise InvalidIdError(
            f"malformed {what}: {value!r}", hint="an object id is exactly 40 lowercase hex characters"
        )
    return value


def repo_id(value: object, what: str = "library id") -> str:
    if not is_repo_id(value):
        raise InvalidIdError(
            f"malformed {what}: {value!r}",
            hint="a library id is a lowercase UUID such as 96e09ca5-5454-4dfa-9d9e-461eb3e38930",
        )
    return value
