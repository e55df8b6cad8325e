"""A TCP proxy the tests can cut, as a failing link or a host cut off would: real sockets, real timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class CuttableProxy:
    """Forwards `listen` -> `target` in a thread of its own. `cut()` closes every connection and refuses new
    ones (connection refused, as a dead peer's host answers); `cut_when_seen(b"...")` does it as soon as that
    byte string passes from a client to the target; `restore()` forwards again. `rate` (bytes per second) slows
    the target's answers, all connections together, as a slower link would; `answered_bytes` counts them as they
    reach the clients."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, rate: float | None = None) -> None:
        self.listen = listen
        self.target = target
        self.rate = rate
        self.answered_bytes = 0
        self._link_free_at = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._trigger: bytes | None = None
        self.triggered = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="cuttable-proxy")
        self._thread.start()
        self.restore()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def restore(self) -> None:
        async def start() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(self._handle, *self.listen, reuse_address=True)

        self._run(start())

    def cut(self) -> None:
        self._run(self._cut())

    def cut_when_seen(self, needle: bytes) -> None:
        self.triggered.clear()
        self._trigger = needle

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, target_writer}
        await asyncio.gather(self._pipe(client_reader, target_writer, watch=True),
                             self._pipe(target_reader, client_writer, watch=False), return_exceptions=True)
        for writer in (client_writer, target_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, watch: bool) -> None:
        while data := await reader.read(65536):
            if watch and self._trigger is not None and self._trigger in data:
                self._trigger = None
                self.triggered.set()
                await self._cut()
                return
            if not watch and self.rate:  # the link carries one answer's bytes after another's
                now = asyncio.get_running_loop().time()
                self._link_free_at = max(self._link_free_at, now) + len(data) / self.rate
                await asyncio.sleep(self._link_free_at - now)
            writer.write(data)
            await writer.drain()
            if not watch:
                self.answered_bytes += len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
