"""Bring one library on the backup up to the source's head, consistent at every instant.

Plan and transfer are one streaming walk: new commits are found by walking back from the source head
to commits the target already has; each new commit's tree is copied depth first, children before
parents, skipping every directory the target already has (by the invariant, its subtree is complete).
Objects on the target double as the walk's "seen" set, so memory does not grow with the library.
Commits are written oldest first once their trees are complete, then `Branch` moves in one
transaction with a compare-and-swap on the head we started from.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pymysql

from seafbackup_agent.errors import StorageError
from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.library import (
    GCConflict,
    HeadMove,
    HeadMovedConflict,
    LibraryMeta,
    publish_head,
    remove_library,
)
from seafbackup_agent.seafile.objects import (
    Commit,
    Dirent,
    FormatError,
    SeafDir,
    SeafFile,
    parse_commit,
    parse_fs_object,
    verify_block,
)
from seafbackup_agent.seafile.storage import FilesystemStore, ObjectBatch, ObjType
from seafbackup_agent.sync.progress import LibraryProgress, ProgressCallback
from seafbackup_agent.sync.publish import Publication, Publisher
from seafbackup_agent.sync.result import (
    NotDescendantError,
    Outcome,
    SkippedObject,
    SourceObjectError,
    SyncError,
    SyncResult,
)
from seafbackup_agent.sync.source import ObjectSource

log = logging.getLogger(__name__)

ANCESTRY_CTIME_SLACK = 86400
"""How far below the backup head's ctime the ancestry check looks (clients' clocks are not exact)."""


SMALL_BLOCK = 1 << 20
"""Blocks of single-block files up to this size are fetched many per request (their size is known
from the file object); larger ones, one request each, streamed."""

HAND_OVER_OBJECTS = 256
HAND_OVER_BYTES = 4 << 20
"""Copied objects wait in memory, in the order they were put, until this many (or this much, or
`flush_seconds` old) go to the write batch in one worker-thread trip: an incremental sync's few objects go
with its commits, in the publish's trip, instead of a trip for each directory."""
INLINE_VERIFY_BYTES = 256 << 10
"""Blocks up to this much in all are checked against their ids on the event loop; more, in a worker thread."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    block_concurrency: int = 8
    """Block requests in flight (a request is one large block or one pack of small ones)."""
    fs_batch: int = 512
    dir_concurrency: int = 32
    """Directories copied side by side (beyond these, subdirectories are copied in line). Their requests for fs
    objects and small blocks are merged (`_Merged`), so many of them cost few round trips."""
    block_pack_bytes: int = 4 << 20
    block_pack_count: int = 1000
    flush_seconds: float = 0.5
    """Copied objects are placed at least this often, so a crash mid-copy loses at most this much work."""
    block_bytes: int = 24 << 20
    """Bytes of blocks in flight at most (from the request for them until they are handed to the write batch),
    shared by the agent's workers: the agent's memory stays bounded whatever the blocks' size
    (a block larger than this is fetched alone)."""


@dataclass(slots=True)
class _Run:
    """The state of one sync of one library."""

    meta: LibraryMeta
    force: bool
    deep: bool
    result: SyncResult
    writes: ObjectBatch
    progress: LibraryProgress
    on_progress: ProgressCallback | None = None
    dir_tasks: int = 0
    prefetched: dict[str, bytes] = field(default_factory=dict)
    """fs objects that came with a tree diff, until the walk uses them."""
    unchanged_outside: set[str] | None = None
    """The ids of a complete diff against a tree the target has whole: any other fs object of this
    commit's tree is at the same path in that tree, so on the target (no need to look)."""
    commit_id: str = ""
    version: int = 1
    new_commits: dict[str, Commit] = field(default_factory=dict)
    fs_requests: _Merged | None = None
    block_requests: _Merged | None = None
    held: list[tuple[ObjType, str, str, bytes]] = field(default_factory=list)
    """Objects put and not yet handed to `writes`, in put order (see HAND_OVER_OBJECTS)."""
    held_keys: set[tuple[ObjType, str, str]] = field(default_factory=set)
    held_bytes: int = 0
    held_since: float = 0.0
    hand_over: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One hand-over at a time, so that the batch receives the objects in put order."""
    placement_timer: asyncio.TimerHandle | None = None
    """Armed by a put while nothing is due: places what is held and staged `flush_seconds` later, so that a copy
    that slows down or stalls keeps its promise too (a put alone places only when the next put comes)."""
    placing: asyncio.Task[None] | None = None
    placing_error: Exception | None = None


class BlockBudget:
    """Bytes reserved before a fetch and given back once what it fetched is put, first come first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        size = max(1, min(size, self.limit))
        if not self._waiting and self.used + size <= self.limit:
            self.used += size
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((size, granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._give_back(size)
                else:
                    self._wake()  # those behind it may fit now
                raise
        try:
            yield
        finally:
            self._give_back(size)

    def _give_back(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            wanted, granted = self._waiting[0]
            if granted.done():
                self._waiting.popleft()
                continue
            if self.used + wanted > self.limit:
                break
            self._waiting.popleft()
            self.used += wanted
            granted.set_result(None)


class _Merged:
    """Object requests made in the same turn of the event loop go out together, up to a request's limits.

    Sibling directories copied side by side are woken by the same answer and ask for their children (and
    then their small blocks) in the same turn: merged, a tree of many small directories pays a round trip
    per level and per full request, not one or two per directory. Each merged request answers its own
    askers when it arrives; a failed one fails them all. (What bounds memory is the askers' block budget.)
    """

    def __init__(self, fetch: Callable[[list[str]], Awaitable[dict[str, bytes]]], *, max_ids: int,
                 max_bytes: int | None = None, slots: asyncio.Semaphore | None = None) -> None:
        self._fetch = fetch
        self._max_ids = max_ids
        self._max_bytes = max_bytes
        self._slots = slots
        self._waiting: list[tuple[list[str], int, asyncio.Future[dict[str, bytes]]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, obj_ids: list[str], size: int = 0) -> dict[str, bytes]:
        """The objects of `obj_ids` that exist (at most `max_ids` of them, `size` bytes in all if known)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, bytes]] = loop.create_future()
        self._waiting.append((obj_ids, size, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        group: list[tuple[list[str], int, asyncio.Future[dict[str, bytes]]]] = []
        ids: dict[str, None] = {}
        size = 0
        for item in waiting:
            if item[2].done():
                continue  # its asker was cancelled
            more = [i for i in item[0] if i not in ids]
            if group and (len(ids) + len(more) > self._max_ids
                          or (self._max_bytes is not None and size + item[1] > self._max_bytes)):
                self._start(group, list(ids))
                group, ids, size = [], {}, 0
                more = item[0]
            group.append(item)
            ids.update(dict.fromkeys(more))
            size += item[1]
        if group:
            self._start(group, list(ids))

    def _start(self, group: list[tuple[list[str], int, asyncio.Future[dict[str, bytes]]]], ids: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._request(group, ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, group: list[tuple[list[str], int, asyncio.Future[dict[str, bytes]]]],
                       ids: list[str]) -> None:
        try:
            async with self._slots if self._slots is not None else contextlib.nullcontext():
                found = await self._fetch(ids)
        except asyncio.CancelledError:
            for _ids, _size, future in group:
                future.cancel()
            raise
        except BaseException as exc:
            for _ids, _size, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for obj_ids, _size, future in group:
            if not future.done():
                future.set_result({i: found[i] for i in obj_ids if i in found})

    def cancel(self) -> None:
        """Requests still on their way after the sync failed: their askers are gone."""
        for task in self._tasks:
            task.cancel()


class SyncEngine:
    def __init__(
        self,
        source: ObjectSource,
        target: SeafileInstallation,
        options: EngineOptions | None = None,
        *,
        block_slots: asyncio.Semaphore | None = None,
        block_budget: BlockBudget | None = None,
        publisher: Publisher | None = None,
    ):
        """`publisher`: the head is published by it, in a group with other syncs' (the backup agent's);
        without one, by this sync alone."""
        self.source = source
        self.target = target
        self.options = options or EngineOptions()
        self._publisher = publisher
        # Shared by the agent's workers, so that blocks held in memory stay bounded however many run.
        self._block_slots = block_slots or asyncio.Semaphore(self.options.block_concurrency)
        self._block_budget = block_budget or BlockBudget(self.options.block_bytes)

    async def sync_library(
        self, repo_id: str, *, force: bool = False, on_progress: ProgressCallback | None = None,
        on_head: Callable[[str | None], None] | None = None,
    ) -> SyncResult:
        """`on_progress` is called with the library's live counters each time objects are staged; `on_head`
        with the source's head this sync copies toward (None: deleted there), as soon as it is read."""
        started = time.monotonic()
        progress = LibraryProgress(repo_id)
        try:
            try:
                result = await self._sync(repo_id, force=force, deep=False, progress=progress, on_progress=on_progress,
                                          on_head=on_head)
            except GCConflict as exc:
                log.warning("library %s: %s; redoing with a full check", repo_id, exc.message)
                result = await self._sync(repo_id, force=force, deep=True, progress=progress, on_progress=on_progress,
                                          on_head=on_head)
        except (HeadMovedConflict, StorageError) as exc:
            raise SyncError(repo_id, exc.message, hint=exc.hint) from exc
        result.duration = time.monotonic() - started
        if result.outcome is Outcome.SYNCHRONIZED:
            log.info("library %s: synced %s -> %s: %d commits, %d fs objects, %d blocks, %d bytes%s in %.2fs",
                     repo_id, result.old_head, result.new_head, result.commits, result.fs_objects, result.blocks,
                     result.bytes, f", {len(result.skipped)} objects skipped" if result.skipped else "",
                     result.duration)
        return result

    async def _sync(self, repo_id: str, *, force: bool, deep: bool, progress: LibraryProgress,
                    on_progress: ProgressCallback | None,
                    on_head: Callable[[str | None], None] | None) -> SyncResult:
        # The library's own GCID is read with its head (one trip): a store of its own is the common case.
        old_head, own_gc_id = await asyncio.to_thread(self._target_head_and_gc_id, repo_id)
        if not isinstance(self.target.store, FilesystemStore):
            # Object storage: the index of what the target holds is ready before the walk asks it (in line).
            await asyncio.to_thread(self.target.store.prepare)
        rows = self.target.rows
        meta = await self.source.library(repo_id, since=None if deep else old_head)
        if on_head is not None:
            on_head(None if meta is None else meta.head)
        if meta is None:
            if old_head is None:
                return SyncResult(repo_id, Outcome.UNCHANGED, None, None)
            await asyncio.to_thread(remove_library, rows.conn, repo_id)
            log.info("library %s: deleted on the primary; its rows are removed, objects kept", repo_id)
            return SyncResult(repo_id, Outcome.DELETED, old_head, None)
        if meta.head == old_head and not deep:
            return SyncResult(repo_id, Outcome.UNCHANGED, old_head, old_head)

        gc_id = own_gc_id if meta.store_id == repo_id else await asyncio.to_thread(rows.gc_id, meta.store_id)
        if old_head is None:
            progress.estimated_bytes = meta.size
        run = _Run(meta, force, deep, SyncResult(repo_id, Outcome.SYNCHRONIZED, old_head, meta.head),
                   self.target.store.batch(flush_seconds=self.options.flush_seconds), progress, on_progress)
        store_id = meta.store_id
        run.fs_requests = _Merged(lambda ids: self.source.fs_objects(store_id, ids), max_ids=self.options.fs_batch)
        run.block_requests = _Merged(lambda ids: self.source.blocks(store_id, ids),
                                     max_ids=self.options.block_pack_count, max_bytes=self.options.block_pack_bytes,
                                     slots=self._block_slots)
        sealed = False
        publication: Publication | None = None
        try:
            stops = await self._find_new_commits(run)
            progress.commits_total = progress.commits + len(run.new_commits)
            self._report(run)
            if old_head is not None and old_head not in stops and not deep:
                await self._check_descends(run, old_head, stops)
            # Parents first: a commit's tree is then copied as its diff from its parent's, which is already here.
            commits = list(_oldest_first(run.new_commits))
            for commit in commits:
                run.commit_id, run.version = commit.commit_id, commit.version
                await self._prefetch_changes(run, commit)
                await self._copy_tree(run, commit.root_id)
                run.prefetched.clear()
                run.unchanged_outside = None
            await self._stop_placing(run)
            if run.placing_error is not None:
                raise run.placing_error
            staged = [(ObjType.COMMITS, repo_id, c.commit_id, c.raw) for c in commits]
            last = [*run.held, *staged]  # what is still held, then the commits: in one trip with the publish

            move = HeadMove(repo_id, meta.store_id, old_head, meta.head, gc_id)

            def put_seal_publish() -> None:
                """The commits, every object durable, then `Branch`: one worker-thread trip, in this order."""
                nonlocal sealed
                run.writes.put(last)
                run.writes.seal()
                sealed = True
                publish_head(rows.conn, move)

            if self._publisher is None:
                await asyncio.to_thread(put_seal_publish)
            else:
                publication = Publication(move, run.writes, last)
                await self._publisher.publish(publication)
        except BaseException:
            if not sealed and not (publication is not None and publication.taken):
                run.fs_requests.cancel()
                run.block_requests.cancel()
                await self._stop_placing(run)
                await asyncio.shield(asyncio.to_thread(_keep_what_was_staged, run.writes, repo_id))
            raise
        self._count(run, staged)
        run.result.commits, run.result.fs_objects = progress.commits, progress.fs_objects
        run.result.blocks, run.result.bytes = progress.blocks, progress.bytes
        return run.result

    async def _target_read(self, obj_type: ObjType, store_id: str, obj_id: str) -> bytes | None:
        """An object of the target: in line from local files, from a thread from object storage (a GET)."""
        store = self.target.store
        if isinstance(store, FilesystemStore):
            return store.read(obj_type, store_id, obj_id)
        return await asyncio.to_thread(store.read, obj_type, store_id, obj_id)

    def _target_head_and_gc_id(self, repo_id: str) -> tuple[str | None, str | None]:
        """The backup's head and the library's own GCID, on a connection replaced first if the server closed it
        (restart, wait_timeout): a long-lived worker's next sync must not fail on it. Tried as is first: no ping
        per sync."""
        try:
            return self.target.rows.head_and_gc_id(repo_id)
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
            self.target.reconnect_if_gone()
            return self.target.rows.head_and_gc_id(repo_id)

    # --- commits ---------------------------------------------------------------------------------

    def _have(self, obj_type: ObjType, store_id: str, obj_id: str, run: _Run) -> bool:
        if run.deep and obj_type is not ObjType.BLOCKS:
            return False
        if obj_type is ObjType.FS and run.unchanged_outside is not None and obj_id not in run.unchanged_outside:
            return True
        # Held, then staged, then stored: an object moves that way (a flush between the last two checks moves it
        # from the batch to the store; held ones leave `held_keys` only once the batch has them).
        return ((obj_type, store_id, obj_id) in run.held_keys or run.writes.has(obj_type, store_id, obj_id)
                or self.target.store.exists(obj_type, store_id, obj_id))

    async def _find_new_commits(self, run: _Run) -> set[str]:
        """Walk back from the source head (both parents) to commits the target has or the history
        boundary. Returns the commits the walk stopped at because the target has them."""
        repo_id, meta = run.meta.repo_id, run.meta
        stops: set[str] = set()
        pending = [meta.head]
        while pending:
            cid = pending.pop()
            if cid in run.new_commits or cid in stops:
                continue
            if self._have(ObjType.COMMITS, repo_id, cid, run):
                stops.add(cid)
                continue
            raw = await self.source.commit(repo_id, cid)
            try:
                if raw is None:
                    raise FormatError("it is missing on the primary")
                commit = parse_commit(raw, expected_id=cid, expected_repo_id=repo_id)
            except FormatError as exc:
                self._object_failed(run, "commit", cid, cid, str(exc))
                continue
            run.new_commits[cid] = commit
            below_boundary = meta.truncate_time is not None and commit.ctime < meta.truncate_time
            if not below_boundary:
                pending.extend(commit.parents)
        return stops

    async def _check_descends(self, run: _Run, old_head: str, stops: set[str]) -> None:
        """Is the backup's head an ancestor of the source head? Looks through the target's own commits
        from where the walk stopped (a copy interrupted earlier may have left newer commits there)."""
        repo_id = run.meta.repo_id
        old = await self._target_read(ObjType.COMMITS, repo_id, old_head)
        floor = parse_commit(old).ctime - ANCESTRY_CTIME_SLACK if old else 0
        seen: set[str] = set()
        pending = list(stops)
        while pending:
            cid = pending.pop()
            if cid == old_head:
                return
            if cid in seen:
                continue
            seen.add(cid)
            raw = await self._target_read(ObjType.COMMITS, repo_id, cid)
            if raw is None:
                continue
            commit = parse_commit(raw)
            if commit.ctime >= floor:
                pending.extend(commit.parents)
        message = (
            f"the primary's head {run.meta.head} does not descend from the backup's head {old_head} "
            "(the primary ran seaf-fsck or its history was reset)"
        )
        if not run.force:
            raise NotDescendantError(
                repo_id, message, hint="check the library on the primary, then `seaf-backup-cmd sync --force`"
            )
        log.warning("library %s: %s; forced", repo_id, message)
        run.result.forced = True

    # --- trees -----------------------------------------------------------------------------------

    async def _copy_tree(self, run: _Run, root_id: str) -> None:
        store_id = run.meta.store_id
        if root_id == EMPTY_ID or self._have(ObjType.FS, store_id, root_id, run):
            return
        fetched = await self._fetch_fs(run, [root_id])
        if root_id in fetched:
            await self._copy_dir(run, root_id, fetched[root_id])

    async def _prefetch_changes(self, run: _Run, commit: Commit) -> None:
        """One request for the fs objects that differ from the parent's tree, when the parent's tree is
        known here (an incremental sync); the walk below then needs no request per directory level."""
        if not commit.parents or run.deep or self._have(ObjType.FS, run.meta.store_id, commit.root_id, run):
            return
        parent = run.new_commits.get(commit.parents[0])
        parent_on_target = parent is None
        if parent is None:
            raw = await self._target_read(ObjType.COMMITS, run.meta.repo_id, commit.parents[0])
            if raw is None:
                return
            try:
                parent = parse_commit(raw)
            except FormatError:
                return
        if parent.root_id == EMPTY_ID and not parent_on_target:
            return  # a whole library copied from scratch: the walk, with its batches and progress
        # A library's first commit onto the empty tree the backup already has: the diff is that whole tree (up to
        # the diff's bounds), in one request instead of one per directory level.
        diff = await self.source.changed_fs(run.meta.store_id, commit.root_id, parent.root_id, commit.version)
        run.prefetched = dict(diff.objects)
        if diff.complete and parent_on_target:
            # By the invariant, a commit on the target has its whole tree there.
            run.unchanged_outside = set(diff.objects)

    async def _fetch_fs(self, run: _Run, obj_ids: Sequence[str]) -> dict[str, tuple[SeafDir | SeafFile, bytes]]:
        """Fetch and verify fs objects; returns id -> (parsed object, stored bytes) for the good ones."""
        wanted = list(dict.fromkeys(obj_ids))
        found = {obj_id: run.prefetched.pop(obj_id) for obj_id in wanted if obj_id in run.prefetched}
        missing = [obj_id for obj_id in wanted if obj_id not in found]
        assert run.fs_requests is not None
        for start in range(0, len(missing), self.options.fs_batch):
            found.update(await run.fs_requests.get(missing[start : start + self.options.fs_batch]))
        good: dict[str, tuple[SeafDir | SeafFile, bytes]] = {}
        for obj_id in wanted:
            raw = found.get(obj_id)
            try:
                if raw is None:
                    raise FormatError("it is missing on the primary")
                good[obj_id] = (parse_fs_object(obj_id, raw, version=run.version), raw)
            except FormatError as exc:
                self._object_failed(run, "fs", obj_id, run.commit_id, str(exc))
        return good

    async def _copy_dir(self, run: _Run, dir_id: str, fetched: tuple[SeafDir | SeafFile, bytes]) -> None:
        seafdir, raw = fetched
        if not isinstance(seafdir, SeafDir):
            self._object_failed(run, "fs", dir_id, run.commit_id, "a directory entry points at a file object")
            return
        store_id = run.meta.store_id
        dirents: Sequence[Dirent] = seafdir.dirents
        if run.unchanged_outside is not None and not run.deep:
            # Entries outside the diff are on the target (see `unchanged_outside`): a directory of thousands of
            # entries costs a set lookup each, not a `_have`.
            dirents = [d for d in dirents if d.id in run.unchanged_outside]
        children = [
            d for d in dirents
            if d.id != EMPTY_ID and (d.is_dir or d.is_file) and not self._have(ObjType.FS, store_id, d.id, run)
        ]
        objects = await self._fetch_fs(run, [d.id for d in children])
        files = {d.id: objects[d.id] for d in children if d.is_file and d.id in objects}
        await self._copy_files(run, files)
        subdirs = dict.fromkeys(d.id for d in children if d.is_dir and d.id in objects)
        try:
            async with asyncio.TaskGroup() as group:
                for sub_id in subdirs:
                    # Checked again: the same directory may occur twice, and the first copy is complete.
                    if self._have(ObjType.FS, store_id, sub_id, run):
                        continue
                    if run.dir_tasks < self.options.dir_concurrency:
                        run.dir_tasks += 1
                        group.create_task(self._copy_dir_task(run, sub_id, objects[sub_id]))
                    else:
                        await self._copy_dir(run, sub_id, objects[sub_id])
        except BaseExceptionGroup as failed:
            # The first failure as itself (SourceObjectError, OSError...); the other tasks were cancelled.
            raise failed.exceptions[0] from None
        # Only now, with its whole subtree put: the batch places objects in the order they were put.
        await self._put(run, [(ObjType.FS, store_id, dir_id, raw)])

    async def _copy_dir_task(self, run: _Run, dir_id: str, fetched: tuple[SeafDir | SeafFile, bytes]) -> None:
        try:
            await self._copy_dir(run, dir_id, fetched)
        finally:
            run.dir_tasks -= 1

    async def _copy_files(self, run: _Run, files: dict[str, tuple[SeafDir | SeafFile, bytes]]) -> None:
        store_id = run.meta.store_id
        small: dict[str, int] = {}
        large: dict[str, int] = {}
        for file_id, (seaffile, _raw) in files.items():
            if not isinstance(seaffile, SeafFile):
                self._object_failed(run, "fs", file_id, run.commit_id, "a file entry points at a directory object")
                continue
            single = len(seaffile.block_ids) == 1 and seaffile.size <= SMALL_BLOCK
            for block_id in seaffile.block_ids:
                if block_id in small or block_id in large or self._have(ObjType.BLOCKS, store_id, block_id, run):
                    continue
                if single:
                    small[block_id] = seaffile.size
                else:
                    large[block_id] = -(-seaffile.size // len(seaffile.block_ids))  # about its size
        await asyncio.gather(
            *(self._copy_block_pack(run, pack, sum(small[b] for b in pack)) for pack in self._packs(small)),
            *(self._copy_large_block(run, block_id, size) for block_id, size in large.items()),
        )
        objects = [(ObjType.FS, store_id, file_id, raw)
                   for file_id, (seaffile, raw) in files.items() if isinstance(seaffile, SeafFile)]
        await self._put(run, objects)

    def _packs(self, sizes: dict[str, int]) -> list[list[str]]:
        packs: list[list[str]] = []
        current: list[str] = []
        total = 0
        for block_id, size in sizes.items():
            if current and (total + size > self.options.block_pack_bytes
                            or len(current) >= self.options.block_pack_count):
                packs.append(current)
                current, total = [], 0
            current.append(block_id)
            total += size
        if current:
            packs.append(current)
        return packs

    async def _copy_block_pack(self, run: _Run, block_ids: list[str], size: int) -> None:
        assert run.block_requests is not None
        # The budget is held until the blocks are put, not only while they are fetched: on a fast link the
        # fetches outran the writes and the packs waiting to be put held 290 MB (20,000 blocks of 64 KiB).
        async with self._block_budget.reserve(size):
            found = await run.block_requests.get(block_ids, size)
            await self._put_blocks(run, [(block_id, found.get(block_id)) for block_id in block_ids])

    async def _copy_large_block(self, run: _Run, block_id: str, size: int) -> None:
        async with self._block_budget.reserve(size), self._block_slots:
            data = await self.source.block(run.meta.store_id, block_id)
            await self._put_blocks(run, [(block_id, data)])

    async def _put_blocks(self, run: _Run, blocks: list[tuple[str, bytes | None]]) -> None:
        """Verify blocks against their ids (a few in line, more in a worker thread) and put the good ones."""
        store_id = run.meta.store_id

        def verify() -> tuple[list[tuple[ObjType, str, str, bytes]], list[tuple[str, str]]]:
            good: list[tuple[ObjType, str, str, bytes]] = []
            bad: list[tuple[str, str]] = []
            for block_id, data in blocks:
                try:
                    if data is None:
                        raise FormatError("it is missing on the primary")
                    verify_block(block_id, data)
                except FormatError as exc:
                    bad.append((block_id, str(exc)))
                    continue
                good.append((ObjType.BLOCKS, store_id, block_id, data))
            return good, bad

        if sum(len(data) for _id, data in blocks if data is not None) <= INLINE_VERIFY_BYTES:
            good, bad = verify()
        else:
            good, bad = await asyncio.to_thread(verify)
        for block_id, reason in bad:
            self._object_failed(run, "block", block_id, run.commit_id, reason)
        await self._put(run, good)

    async def _put(self, run: _Run, objects: list[tuple[ObjType, str, str, bytes]]) -> None:
        """Put objects (commits go with the publish): held in memory in put order, handed to the write batch in
        one worker-thread trip once they add up. The engine puts an object only after everything it references
        was put, so the batch receives them children first."""
        if not objects:
            return
        if not run.held:
            run.held_since = time.monotonic()
        for obj in objects:
            run.held.append(obj)
            run.held_keys.add(obj[:3])
            run.held_bytes += len(obj[3])
        self._count(run, objects)
        if run.placing_error is not None:
            raise run.placing_error
        if (len(run.held) >= HAND_OVER_OBJECTS or run.held_bytes >= HAND_OVER_BYTES
                or time.monotonic() - run.held_since >= self.options.flush_seconds):
            await self._hand_over(run)
        if run.placement_timer is None:
            run.placement_timer = asyncio.get_running_loop().call_later(
                self.options.flush_seconds, self._place_on_time, run)

    async def _hand_over(self, run: _Run, *, place: bool = False) -> None:
        async with run.hand_over:
            objects, run.held, run.held_bytes = run.held, [], 0
            # Held `flush_seconds` already: placed at once, so that a crash still loses at most that much work
            # (the batch would otherwise count their age again from now).
            place = place or time.monotonic() - run.held_since >= self.options.flush_seconds
            run.held_since = time.monotonic()
            if objects or place:
                await asyncio.to_thread(_stage, run.writes, objects, place=place)
                run.held_keys.difference_update(obj[:3] for obj in objects)

    def _place_on_time(self, run: _Run) -> None:
        """The placement timer fired: what is held and staged is placed, unless a placement still runs (the next
        put arms the timer again)."""
        run.placement_timer = None
        if run.placing is None or run.placing.done():
            run.placing = asyncio.create_task(self._place(run))

    async def _place(self, run: _Run) -> None:
        try:
            await self._hand_over(run, place=True)
        except Exception as exc:  # surfaced by the sync's next put or its end
            run.placing_error = exc

    async def _stop_placing(self, run: _Run) -> None:
        """No placement on time from now on, and none running (the end of a sync puts and seals the rest in put
        order after it)."""
        if run.placement_timer is not None:
            run.placement_timer.cancel()
            run.placement_timer = None
        if run.placing is not None:
            await asyncio.shield(run.placing)
            run.placing = None

    def _count(self, run: _Run, staged: list[tuple[ObjType, str, str, bytes]]) -> None:
        """The one place copied objects are counted (the result takes its figures from here)."""
        progress = run.progress
        for obj_type, _store, _obj_id, data in staged:
            if obj_type is ObjType.BLOCKS:
                progress.blocks += 1
            elif obj_type is ObjType.FS:
                progress.fs_objects += 1
            else:
                progress.commits += 1
            progress.bytes += len(data)
        if staged:
            self._report(run)

    def _report(self, run: _Run) -> None:
        if run.on_progress is not None:
            run.on_progress(run.progress)

    def _object_failed(self, run: _Run, obj_type: str, obj_id: str, commit_id: str, reason: str) -> None:
        repo_id = run.meta.repo_id
        if not run.force:
            raise SourceObjectError(
                repo_id,
                f"{obj_type} object {obj_id} (needed by commit {commit_id}) is unusable on the primary: {reason}",
                obj_type=obj_type,
                obj_id=obj_id,
                commit_id=commit_id,
            )
        log.warning("library %s: skipping %s object %s of commit %s: %s", repo_id, obj_type, obj_id, commit_id, reason)
        run.result.forced = True
        run.result.skipped.append(SkippedObject(obj_type, obj_id, commit_id, reason))


def _stage(writes: ObjectBatch, objects: list[tuple[ObjType, str, str, bytes]], *, place: bool) -> None:
    writes.put(objects)
    if place:
        writes.flush()


def _keep_what_was_staged(writes: ObjectBatch, repo_id: str) -> None:
    """After a failed sync (a link cut, a corrupt object, a shutdown): what the batch staged is placed, so that
    the next sync fetches it no more, and the rest discarded. Safe without a head: the batch holds a prefix of
    the put order, and the engine puts an object only after everything it references."""
    try:
        writes.flush()
    except (StorageError, OSError) as exc:
        log.warning("library %s: what was copied before the failure could not be kept: %s", repo_id, exc)
    finally:
        writes.discard()


def _oldest_first(commits: dict[str, Commit]) -> Iterable[Commit]:
    """Parents before children (Kahn's algorithm over the new commits), ties by ctime."""
    children: dict[str, list[str]] = {cid: [] for cid in commits}
    waiting: dict[str, int] = {}
    for cid, commit in commits.items():
        parents = [p for p in commit.parents if p in commits]
        waiting[cid] = len(parents)
        for parent in parents:
            children[parent].append(cid)
    ready = sorted((c for c, n in waiting.items() if n == 0), key=lambda c: commits[c].ctime)
    while ready:
        cid = ready.pop(0)
        yield commits[cid]
        for child in children[cid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
