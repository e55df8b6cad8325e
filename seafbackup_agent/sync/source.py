"""Object sources: where the engine reads a library from. Local installation here; HTTP in transport/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.library import LibraryMeta
from seafbackup_agent.seafile.storage import FilesystemStore, ObjType
from seafbackup_agent.seafile.treediff import TreeDiff, changed_fs_objects


class ObjectSource(Protocol):
    """Read-only access to the primary's libraries. Missing objects are None / absent, never errors."""

    def libraries(self) -> AsyncIterator[tuple[str, str]]:
        """Every library as (repo_id, head commit id): an async generator in the implementations."""
        ...

    async def library(self, repo_id: str, *, since: str | None = None) -> LibraryMeta | None:
        """The library's head, store and history boundary; None when it does not exist (deleted). `since`: the
        head the caller has, so that a remote source may send along what it will ask for next."""
        ...

    async def commit(self, repo_id: str, commit_id: str) -> bytes | None: ...

    async def fs_objects(self, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored bytes of each fs object that exists; missing ids are left out."""
        ...

    async def block(self, store_id: str, block_id: str) -> bytes | None: ...

    async def blocks(self, store_id: str, block_ids: Sequence[str]) -> dict[str, bytes]:
        """Several (small) blocks at once; missing ids are left out."""
        ...

    async def changed_fs(self, store_id: str, new_root: str, old_root: str, version: int) -> TreeDiff:
        """fs objects under `new_root` not at the same path under `old_root` (seafile/treediff.py):
        a prefetch, possibly incomplete, that saves a request per directory level."""
        ...

    async def close(self) -> None: ...


class LocalSource:
    """A Seafile installation reachable from this host (its storage directory and database)."""

    def __init__(self, installation: SeafileInstallation) -> None:
        self.installation = installation
        # Small reads of local files are faster in line than through a thread; object storage answers over
        # the network, from threads.
        self._local_files = isinstance(installation.store, FilesystemStore)

    async def libraries(self) -> AsyncIterator[tuple[str, str]]:
        for item in await asyncio.to_thread(lambda: list(self.installation.rows.iter_heads())):
            yield item

    async def library(self, repo_id: str, *, since: str | None = None) -> LibraryMeta | None:
        return await asyncio.to_thread(self.installation.rows.meta, repo_id)

    async def commit(self, repo_id: str, commit_id: str) -> bytes | None:
        if self._local_files:
            return self.installation.store.read(ObjType.COMMITS, repo_id, commit_id)
        return await asyncio.to_thread(self.installation.store.read, ObjType.COMMITS, repo_id, commit_id)

    async def fs_objects(self, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]:
        if self._local_files:
            return self._read_many(ObjType.FS, store_id, obj_ids)
        return await asyncio.to_thread(self._read_many, ObjType.FS, store_id, obj_ids)

    async def block(self, store_id: str, block_id: str) -> bytes | None:
        return await asyncio.to_thread(self.installation.store.read, ObjType.BLOCKS, store_id, block_id)

    async def blocks(self, store_id: str, block_ids: Sequence[str]) -> dict[str, bytes]:
        return await asyncio.to_thread(self._read_many, ObjType.BLOCKS, store_id, block_ids)

    async def changed_fs(self, store_id: str, new_root: str, old_root: str, version: int) -> TreeDiff:
        def read(obj_id: str) -> bytes | None:
            return self.installation.store.read(ObjType.FS, store_id, obj_id)

        return await asyncio.to_thread(changed_fs_objects, read, new_root, old_root, version=version)

    def _read_many(self, obj_type: ObjType, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]:
        return self.installation.store.read_many(obj_type, store_id, obj_ids)

    async def close(self) -> None:
        self.installation.close()
