"""Group commit: syncs of different libraries that finish within a few milliseconds of each other publish
together.

A sync's last step makes every object it staged durable and then moves its library's `Branch` row. Done
alone, each sync pays two `syncfs`, a database transaction and a worker-thread trip for it. The backup agent's
syncs hand that step to one `GroupPublisher` instead: what arrives while a group is being published, or within
`window` seconds of the first, becomes the next group, which shares the barrier (`seal_together`: one
`syncfs` for all staged contents, the renames of each batch in its order, one `syncfs` for the names) and one
transaction (`publish_heads`: a GCID compare and a `Branch` compare-and-swap per library, so a concurrent change
fails that library alone). The invariant holds per group: no row is written before the barrier has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from seafbackup_agent.errors import DatabaseError, SeafBackupError
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.library import HeadMove, PublishConflict, publish_heads
from seafbackup_agent.seafile.storage import ObjectBatch, ObjType, seal_together

WINDOW_SECONDS = 0.02
"""How long a group waits for more syncs after the first. At 50 and 100 head moves/s the backup agent's CPU per head
move was 11-16 % lower with 20 ms than with 2 ms (three alternated pairs of runs, bench/findings.md); a head move
waits up to this much longer, against an RPO target of a second."""


@dataclass(slots=True, eq=False)
class Publication:
    """One sync's last step: stage `commits` in `writes`, make the batch durable, then move the head."""

    move: HeadMove
    writes: ObjectBatch
    commits: list[tuple[ObjType, str, str, bytes]]
    taken: bool = False
    """Handed to a group: its batch is the publisher's now (the sync must not discard it, even if cancelled)."""


class Publisher(Protocol):
    async def publish(self, publication: Publication) -> None: ...


class GroupPublisher:
    """Publishes the heads of syncs that finish close together in groups: one barrier, one transaction each.

    `open_target` opens the publisher's own connection to the backup (replaced after a database failure, closed
    by `aclose`). `on_group` is told the size of each group once it is published (for the agent's metrics)."""

    def __init__(self, open_target: Callable[[], SeafileInstallation], *, window: float = WINDOW_SECONDS,
                 max_group: int = 256, on_group: Callable[[int], None] | None = None) -> None:
        self._open_target = open_target
        self._target: SeafileInstallation | None = None
        self.window = window
        self.max_group = max_group
        self._on_group = on_group
        self._waiting: list[tuple[Publication, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.pending = 0
        """Publications handed over and not yet answered."""

    async def publish(self, publication: Publication) -> None:
        """Returns once the head is published; raises the library's own error (a conflict, the database's
        or the storage's failure) otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((publication, future))
        self.pending += 1
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        try:
            await future
        except asyncio.CancelledError:
            if not publication.taken:
                with contextlib.suppress(ValueError):
                    self._waiting.remove((publication, future))
                    self.pending -= 1
            raise

    async def _run(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.window)  # the syncs finishing within the window join the group
            group, self._waiting = self._waiting[: self.max_group], self._waiting[self.max_group :]
            for publication, _future in group:
                publication.taken = True
            try:
                outcomes = await asyncio.shield(asyncio.to_thread(self._commit, [p for p, _ in group]))
            except Exception as exc:  # each sync fails with it; none waits forever
                outcomes = [exc] * len(group)
            finally:
                self.pending -= len(group)
            for (_publication, future), outcome in zip(group, outcomes, strict=True):
                if future.done():
                    continue
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)
            if self._on_group is not None:
                self._on_group(len(group))

    def _commit(self, group: list[Publication]) -> list[BaseException | None]:
        """In a worker thread: every batch sealed together, then every head in one transaction."""
        try:
            for publication in group:
                publication.writes.put(publication.commits)
            seal_together([p.writes for p in group])
        except BaseException as exc:
            for publication in group:
                with contextlib.suppress(Exception):
                    publication.writes.discard()
            return [exc] * len(group)
        try:
            if self._target is None:
                self._target = self._open_target()
        except SeafBackupError as exc:
            return [exc] * len(group)
        outcomes: list[BaseException | None] = list(publish_heads(self._target.rows.conn, [p.move for p in group]))
        if any(isinstance(o, DatabaseError) and not isinstance(o, PublishConflict) for o in outcomes):
            self._drop_connection()
        return outcomes

    def _drop_connection(self) -> None:
        """After a database failure: the next group opens a new connection (the server may have restarted)."""
        if self._target is not None:
            self._target.close()
            self._target = None

    async def aclose(self) -> None:
        """Let a group being published finish, then close the connection."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(BaseException):
                await self._task
        self._drop_connection()

