"""Object storage backends. The filesystem backend is Seafile's `storage/<type>/<store>/<xx>/<38>`."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from seafbackup_agent.seafile.ids import is_object_file_name


class ObjType(StrEnum):
    COMMITS = "commits"
    FS = "fs"
    BLOCKS = "blocks"


class ObjectStore(Protocol):
    """What the sync engine and the lab need from a Seafile object store."""

    def read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None: ...

    def exists(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool: ...

    def write(self, obj_type: ObjType, store_id: str, obj_id: str, data: bytes, *, durable: bool = True) -> None: ...

    def iter_ids(self, obj_type: ObjType, store_id: str) -> Iterator[str]: ...


class FilesystemStore:
    """`<seafile-data>/storage/...` written the way Seafile writes it, atomically.

    Each object is written to a hidden temporary name in its final directory, fsynced (when durable),
    and renamed into place; commits also fsync the directory, as `save_commit()` does on the server.
    Only exact 38-hex file names count as objects, so an interrupted write leaves nothing visible.
    """

    def __init__(self, seafile_data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(seafile_data_dir) / "storage"
        self._root = str(self.root)

    def path(self, obj_type: ObjType, store_id: str, obj_id: str) -> str:
        return f"{self._root}/{obj_type.value}/{store_id}/{obj_id[:2]}/{obj_id[2:]}"

    def read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None:
        try:
            with open(self.path(obj_type, store_id, obj_id), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def exists(self, obj_type: ObjType, store_id: str, obj_id: str) -> bool:
        return os.path.isfile(self.path(obj_type, store_id, obj_id))

    def write(self, obj_type: ObjType, store_id: str, obj_id: str, data: bytes, *, durable: bool = True) -> None:
        final = self.path(obj_type, store_id, obj_id)
        directory = os.path.dirname(final)
        tmp = f"{directory}/.{obj_id[2:]}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        if durable and obj_type is ObjType.COMMITS:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def iter_ids(self, obj_type: ObjType, store_id: str) -> Iterator[str]:
        base = self.root / obj_type.value / store_id
        if not base.is_dir():
            return
        for prefix in sorted(os.listdir(base)):
            if len(prefix) != 2:
                continue
            for name in sorted(os.listdir(base / prefix)):
                if is_object_file_name(name) and all(c in "0123456789abcdef" for c in prefix):
                    yield prefix + name
