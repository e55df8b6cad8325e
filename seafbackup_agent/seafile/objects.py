"""Seafile objects: commits (plain JSON), fs objects (zlib JSON, version 1; binary, version 0).

Parsing is strict (what `commit_from_json_object()` and `verify_fs_object_json()` accept); encoding
produces exactly Seafile's bytes and exists for writers of new data (the lab). The sync engine never
re-encodes: it copies bytes and uses these parsers only to verify and to walk.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from seafbackup_agent.seafile.ids import EMPTY_ID, is_object_id, is_repo_id

S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFMT = 0o170000


class FsType(IntEnum):
    FILE = 1
    LINK = 2
    DIR = 3


class FormatError(ValueError):
    """Bytes that are not a valid Seafile object of the expected kind."""


# --- JSON exactly as jansson writes it --------------------------------------------------------------

_JANSSON_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jansson_string(text: str) -> str:
    """jansson's dump_string without JSON_ENSURE_ASCII: raw UTF-8, upper-case \\u00XX for controls."""
    out = ['"']
    for ch in text:
        escaped = _JANSSON_SHORT_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _jansson_value(value: Any, sort_keys: bool) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _jansson_string(value)
    if isinstance(value, Mapping):
        items = sorted(value.items()) if sort_keys else value.items()
        return "{" + ", ".join(f"{_jansson_string(k)}: {_jansson_value(v, sort_keys)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_jansson_value(v, sort_keys) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as Seafile JSON")


def jansson_dumps(value: Any, *, sort_keys: bool) -> bytes:
    """`json_dumps(value, sort_keys ? JSON_SORT_KEYS : 0)` as Seafile's C server calls it.

    Python's encoder writes the same bytes except for the case of `\\u00XX` escapes, so it is used
    whenever it wrote none of those, and the exact (slower) encoder otherwise.
    """
    fast = json.dumps(value, sort_keys=sort_keys, separators=(", ", ": "), ensure_ascii=False)
    if "\\u00" not in fast:
        return fast.encode("utf-8")
    return _jansson_value(value, sort_keys).encode("utf-8")


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --- Commits ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commit:
    commit_id: str
    root_id: str
    repo_id: str
    parent_id: str | None
    second_parent_id: str | None
    ctime: int
    version: int
    description: str
    creator_name: str | None
    repo_name: str
    encrypted: bool
    raw: bytes = field(repr=False, compare=False)

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(p for p in (self.parent_id, self.second_parent_id) if p is not None)


def _opt_id(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not is_object_id(value):
        raise FormatError(f"commit field {key} is not an object id: {value!r}")
    return value


def parse_commit(raw: bytes, *, expected_id: str | None = None, expected_repo_id: str | None = None) -> Commit:
    """Parse and validate a commit as `commit_from_json_object()` does."""
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"commit is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError("commit is not a JSON object")
    commit_id = doc.get("commit_id")
    if not is_object_id(commit_id):
        raise FormatError(f"commit_id is not an object id: {commit_id!r}")
    if expected_id is not None and commit_id != expected_id:
        raise FormatError(f"commit file {expected_id} holds commit {commit_id}")
    root_id = doc.get("root_id")
    if not is_object_id(root_id):
        raise FormatError(f"root_id is not an object id: {root_id!r}")
    repo = doc.get("repo_id")
    if not is_repo_id(repo):
        raise FormatError(f"repo_id is not a library id: {repo!r}")
    if expected_repo_id is not None and repo != expected_repo_id:
        raise FormatError(f"commit belongs to library {repo}, not {expected_repo_id}")
    creator = doc.get("creator")
    if not isinstance(creator, str) or len(creator) != 40:
        raise FormatError("creator is not 40 characters long")
    ctime = doc.get("ctime")
    if not isinstance(ctime, int) or isinstance(ctime, bool):
        raise FormatError(f"ctime is not an integer: {ctime!r}")
    version = doc.get("version", 0)
    if not isinstance(version, int):
        raise FormatError(f"version is not an integer: {version!r}")
    description = doc.get("description")
    if not isinstance(description, str):
        raise FormatError("description is missing")
    creator_name = doc.get("creator_name")
    return Commit(
        commit_id=commit_id,
        root_id=root_id,
        repo_id=repo,
        parent_id=_opt_id(doc, "parent_id"),
        second_parent_id=_opt_id(doc, "second_parent_id"),
        ctime=ctime,
        version=version,
        description=description,
        creator_name=creator_name.lower() if isinstance(creator_name, str) else None,
        repo_name=str(doc.get("repo_name") or ""),
        encrypted=doc.get("encrypted") == "true",
        raw=raw,
    )


def compute_commit_id(*, root_id: str, creator: str, creator_name: str | None, description: str, ctime: int) -> str:
    """`commit-mgr.c:compute_commit_id()`: SHA-1 over NUL-terminated fields and a big-endian ctime."""
    digest = hashlib.sha1()
    digest.update(root_id.encode() + b"\0")
    digest.update(creator.encode() + b"\0")
    if creator_name is not None:
        digest.update(creator_name.encode("utf-8") + b"\0")
    digest.update(description.encode("utf-8") + b"\0")
    digest.update(struct.pack(">q", ctime))
    return digest.hexdigest()


def encode_commit(fields: Mapping[str, Any]) -> bytes:
    """A commit as the C server stores it: insertion order, `", "`/`": "`, no trailing newline."""
    return jansson_dumps(fields, sort_keys=False)


# --- Fs objects ------------------------------------------------------------------------------------


class Dirent(NamedTuple):
    """A directory entry. A named tuple rather than a frozen dataclass: a directory of 5,000 entries is parsed
    in a few milliseconds instead of 12 (building the entries was most of it), and the primary's tree diff and
    the backup's check parse the changed directories of every sync."""

    name: str
    id: str
    mode: int
    mtime: int
    modifier: str | None = None
    size: int | None = None

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_file(self) -> bool:
        return self.mode & S_IFMT == S_IFREG


@dataclass(frozen=True, slots=True)
class SeafDir:
    id: str
    dirents: tuple[Dirent, ...]


@dataclass(frozen=True, slots=True)
class SeafFile:
    id: str
    size: int
    block_ids: tuple[str, ...]


def _dirent_to_json(d: Dirent) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": d.id, "mode": d.mode, "mtime": d.mtime, "name": d.name}
    if not d.is_dir:
        doc["modifier"] = d.modifier or ""
        doc["size"] = d.size or 0
    return doc


def sort_dirents(dirents: Iterable[Dirent]) -> list[Dirent]:
    """Seafile keeps dirents in descending `strcmp` order of the UTF-8 name."""
    return sorted(dirents, key=lambda d: d.name.encode("utf-8"), reverse=True)


def encode_dir(dirents: Iterable[Dirent]) -> tuple[str, bytes]:
    """A version-1 directory object: (id, stored bytes). An empty directory is EMPTY_ID, never stored."""
    ordered = sort_dirents(dirents)
    if not ordered:
        return EMPTY_ID, b""
    body = jansson_dumps(
        {"dirents": [_dirent_to_json(d) for d in ordered], "type": int(FsType.DIR), "version": 1}, sort_keys=True
    )
    return sha1_hex(body), zlib.compress(body)


def encode_file(size: int, block_ids: Iterable[str]) -> tuple[str, bytes]:
    """A version-1 file object: (id, stored bytes). An empty file is EMPTY_ID, never stored."""
    blocks = list(block_ids)
    if size == 0 and not blocks:
        return EMPTY_ID, b""
    body = jansson_dumps({"block_ids": blocks, "size": size, "type": int(FsType.FILE), "version": 1}, sort_keys=True)
    return sha1_hex(body), zlib.compress(body)


def _parse_fs_json(obj_id: str, body: bytes) -> SeafDir | SeafFile:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"fs object {obj_id} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"fs object {obj_id} is not a JSON object")
    kind = doc.get("type")
    if kind == FsType.DIR:
        fast = _well_formed_dirents(doc.get("dirents", []))
        if fast is not None:
            return SeafDir(obj_id, fast)
        dirents = []
        for entry in doc.get("dirents", []):
            if not isinstance(entry, dict) or not is_object_id(entry.get("id")):
                raise FormatError(f"directory {obj_id} has a malformed entry: {entry!r}")
            name, mode, mtime = entry.get("name"), entry.get("mode"), entry.get("mtime", 0)
            if not isinstance(name, str) or not isinstance(mode, int):
                raise FormatError(f"directory {obj_id} has a malformed entry: {entry!r}")
            dirents.append(
                Dirent(name, entry["id"], mode, int(mtime or 0), entry.get("modifier"), entry.get("size"))
            )
        return SeafDir(obj_id, tuple(dirents))
    if kind == FsType.FILE:
        blocks = doc.get("block_ids", [])
        if not isinstance(blocks, list) or not all(is_object_id(b) for b in blocks):
            raise FormatError(f"file {obj_id} has a malformed block list")
        size = doc.get("size")
        if not isinstance(size, int):
            raise FormatError(f"file {obj_id} has no size")
        return SeafFile(obj_id, size, tuple(blocks))
    raise FormatError(f"fs object {obj_id} has unknown type {kind!r}")


_NAME, _ID, _MODE = itemgetter("name"), itemgetter("id"), itemgetter("mode")


def _well_formed_dirents(entries: object) -> tuple[Dirent, ...] | None:
    """The entries of a directory whose every entry is well formed, read and checked a column at a time (no
    Python code per entry but the tuple's own); None if any is not (the entry-by-entry parse then names it)."""
    if not isinstance(entries, list):
        return None
    count = len(entries)
    try:
        names = list(map(_NAME, entries))
        ids = list(map(_ID, entries))
        modes = list(map(_MODE, entries))
        mtimes = list(map(dict.get, entries, repeat("mtime", count)))
        modifiers = list(map(dict.get, entries, repeat("modifier", count)))
        sizes = list(map(dict.get, entries, repeat("size", count)))
    except (KeyError, TypeError):
        return None
    if (set(map(type, ids)) - {str} or set(map(len, ids)) - {40} or not _lowercase_hex("".join(ids))
            or set(map(type, names)) - {str} or set(map(type, modes)) - {int} or set(map(type, mtimes)) - {int}):
        return None
    return tuple(map(tuple.__new__, repeat(Dirent), zip(names, ids, modes, mtimes, modifiers, sizes, strict=True)))


def _lowercase_hex(text: str) -> bool:
    try:
        # fromhex skips whitespace: then fewer bytes than half the characters
        return len(bytes.fromhex(text)) * 2 == len(text) and text == text.lower()
    except ValueError:
        return False


def _parse_fs_v0(obj_id: str, body: bytes) -> SeafDir | SeafFile:
    if len(body) < 4:
        raise FormatError(f"fs object {obj_id} is truncated")
    (kind,) = struct.unpack_from(">I", body, 0)
    if kind == FsType.FILE:
        if len(body) < 12 or (len(body) - 12) % 20:
            raise FormatError(f"file {obj_id} (v0) is truncated")
        (size,) = struct.unpack_from(">Q", body, 4)
        raw_ids = body[12:]
        if sha1_hex(raw_ids) != obj_id:
            raise FormatError(f"file {obj_id} (v0) does not match its id")
        blocks = tuple(raw_ids[i : i + 20].hex() for i in range(0, len(raw_ids), 20))
        return SeafFile(obj_id, size, blocks)
    if kind == FsType.DIR:
        dirents, offset, digest = [], 4, hashlib.sha1()
        while offset < len(body):
            if offset + 48 > len(body):
                raise FormatError(f"directory {obj_id} (v0) is truncated")
            (mode,) = struct.unpack_from(">I", body, offset)
            child = body[offset + 4 : offset + 44].decode("ascii", errors="replace")
            (name_len,) = struct.unpack_from(">I", body, offset + 44)
            name = body[offset + 48 : offset + 48 + name_len]
            offset += 48 + name_len
            if not is_object_id(child) or len(name) != name_len:
                raise FormatError(f"directory {obj_id} (v0) has a malformed entry")
            digest.update(child.encode() + name + struct.pack("<I", mode))
            dirents.append(Dirent(name.decode("utf-8", errors="replace"), child, mode, 0))
        if digest.hexdigest() != obj_id:
            raise FormatError(f"directory {obj_id} (v0) does not match its id")
        return SeafDir(obj_id, tuple(dirents))
    raise FormatError(f"fs object {obj_id} (v0) has unknown type {kind}")


def parse_fs_object(obj_id: str, stored: bytes, *, version: int = 1) -> SeafDir | SeafFile:
    """Verify a stored fs object against its id and parse it.

    Version >= 1: the id is the SHA-1 of the decompressed JSON (compressed bytes are not canonical).
    """
    if version == 0:
        return _parse_fs_v0(obj_id, stored)
    try:
        body = zlib.decompress(stored)
    except zlib.error as exc:
        raise FormatError(f"fs object {obj_id} is not a zlib stream: {exc}") from exc
    if sha1_hex(body) != obj_id:
        raise FormatError(f"fs object {obj_id} does not match its id (SHA-1 of its content is {sha1_hex(body)})")
    return _parse_fs_json(obj_id, body)


def verify_block(block_id: str, data: bytes) -> None:
    if sha1_hex(data) != block_id:
        raise FormatError(f"block {block_id} does not match its id (SHA-1 of its bytes is {sha1_hex(data)})")
