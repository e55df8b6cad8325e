"""Clients of the HTTP API: `HttpSource` (the backup reads the primary) and `NotifyClient` (the primary
tells the backup a head moved). Every request is signed and every answer used is verified first: signed
for exactly that request, and its body matching the signed digest (signing.py); only the objects of a pack
or a block, which are checked against their ids, come without a digest. Connection errors, timeouts and
5xx answers are retried with exponential backoff and jitter, 4xx answers are not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import aiohttp
from yarl import URL

from seafbackup_agent.config import SeafileConf
from seafbackup_agent.errors import ConfigError, SeafBackupError
from seafbackup_agent.seafile import ids
from seafbackup_agent.seafile.library import LibraryMeta
from seafbackup_agent.seafile.treediff import TreeDiff
from seafbackup_agent.transport.ahead import Ahead, AheadCache, parse_ahead_doc
from seafbackup_agent.transport.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteError,
    ResponseAuthenticationError,
    TLSError,
    UnreachableError,
)
from seafbackup_agent.transport.server import (
    END_FRAME_ID,
    FRAME,
    MAX_NOTIFY_BATCH,
    MAX_PACK_IDS,
)
from seafbackup_agent.transport.signing import DIFF_COMPLETE_HEADER, RequestSigner, ResponseSignatureError

log = logging.getLogger("seafbackup_agent.transport")

T = TypeVar("T")
USER_AGENT = "seafbackup-agent"
FS_BATCH = 1000
"""fs ids per request; `fs_objects()` splits longer lists and runs up to `parallel` requests at once."""


@dataclass(slots=True)
class PeerNode:
    """One of the peer's nodes (a Seafile cluster's primary has several) and what it last did."""

    url: str
    answered_at: float | None = None
    failed_at: float | None = None
    error: str | None = None

    @property
    def answers(self) -> bool | None:
        """True if its last request was answered, False if it failed, None before the first."""
        if self.answered_at is None and self.failed_at is None:
            return None
        return (self.answered_at or 0) >= (self.failed_at or 0)


class _SignedClient:
    """One `aiohttp.ClientSession` (pooled connections) to one peer, with signing and retries.

    The peer may have several nodes (`base_url` a list: a Seafile cluster's primary, each node running an
    agent): requests go to one node while it answers; a node that does not (no connection, a timeout, a 5xx
    answer) is left at once for the next one, without the backoff, which only applies once every node has
    failed in a row. The node in use stays until it fails."""

    peer = "peer"

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str,
        *,
        ca_file: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        connections: int = 16,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ConfigError(f"no {self.peer} URL given")
        self.nodes = [PeerNode(self._checked_url(u)) for u in urls]
        self._current = 0
        self._signer = RequestSigner(token)
        https = any(node.url.startswith("https:") for node in self.nodes)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context(cafile=ca_file) if https else None
        if connect_timeout is None:
            # With several nodes a node that does not answer costs this long before the next one is asked.
            connect_timeout = 10.0 if len(self.nodes) == 1 else 2.0
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.requests_sent = 0
        """Requests sent, each attempt counted (the backup's `seafbackup_primary_requests_total`)."""

    def _checked_url(self, base_url: str) -> str:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"{base_url!r} is not an http:// or https:// URL")
        if url.user or url.password or url.query_string or url.fragment:
            raise ConfigError(f"{self.peer} URL must not carry credentials, a query or a fragment")
        return str(url.with_path(url.path.rstrip("/")))

    @property
    def base_url(self) -> str:
        """The node in use."""
        return self.nodes[self._current].url

    def nodes_doc(self) -> list[dict[str, Any]]:
        """Each node: its URL, whether it is the one in use, whether it answers (its last request), when."""
        return [{"url": node.url, "in_use": i == self._current, "answers": node.answers,
                 "answered_at": node.answered_at, "failed_at": node.failed_at,
                 "error": None if node.answers else node.error} for i, node in enumerate(self.nodes)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # http:// peers need no TLS context (loading the system CAs costs ~0.3 s of CPU at start).
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl if self._ssl else False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, *, retries: int | None = None) -> dict[str, Any]:
        """A signed health check: the peer is reachable, is the expected side, and shares our token.
        Raises the same errors as any request (AuthenticationError, UnreachableError, TLSError, ...)."""
        try:
            doc = await self._call("GET", "/v1/health", _read_json, retries=retries)
        except ValueError as exc:
            raise ProtocolError(f"{self.base_url} does not answer like a seafbackup agent") from exc
        if not isinstance(doc, dict) or doc.get("authenticated") is not True:
            raise ProtocolError(f"{self.base_url} does not answer like a seafbackup agent")
        if doc.get("role") != self.peer:
            raise ProtocolError(
                f"{self.base_url} is the {doc.get('role')}'s agent, not the {self.peer}'s",
                hint="primary_url must point at the primary, backup_url at the backup",
            )
        return doc

    def _url(self, path: str, node: int) -> URL:
        base = URL(self.nodes[node].url)
        return base.with_path(base.path.rstrip("/") + path, encoded=True)

    def _node_failed(self, node: int, failure: Exception) -> None:
        self.nodes[node].failed_at = time.time()
        self.nodes[node].error = str(failure) or repr(failure)

    def _node_answered(self, node: int, *, adopt: bool) -> None:
        self.nodes[node].answered_at = time.time()
        if adopt and node != self._current:
            log.warning("%s node %s does not answer (%s): using %s", self.peer, self.nodes[self._current].url,
                        self.nodes[self._current].error, self.nodes[node].url)
            self._current = node

    async def _reason(self, response: aiohttp.ClientResponse) -> str:
        try:
            doc = json.loads(await response.read())
            return str(doc.get("error", "")) if isinstance(doc, dict) else ""
        except (ValueError, UnicodeDecodeError, aiohttp.ClientError):
            return ""

    def _auth_error(self, reason: str, base_url: str | None = None) -> AuthenticationError:
        base_url = base_url or self.base_url
        if reason == "signature mismatch":
            return AuthenticationError(
                f"the {self.peer} at {base_url} rejected our signature: sync_token differs between primary "
                "and backup",
                hint="set the same [backup] sync_token in seafile.conf on both hosts",
            )
        if "window" in reason:
            return AuthenticationError(
                f"the {self.peer} at {base_url} rejected our request time: the clocks of primary and backup "
                "differ by more than the allowed window",
                hint="run NTP (chrony or systemd-timesyncd) on both hosts",
            )
        return AuthenticationError(f"the {self.peer} at {base_url} refused authentication: {reason or '401'}")

    async def _call(
        self,
        method: str,
        path: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        body: bytes = b"",
        content_type: str | None = None,
        ok: tuple[int, ...] = (200,),
        retries: int | None = None,
        objects: bool = False,
        covered: tuple[str, ...] = (),
        pin: int | None = None,
    ) -> T:
        """Send a signed request (new nonce on every attempt) and `read` the answer; retry what may pass.

        `read` gets responses whose status is in `ok`, verified first (`_verify`). `objects`: a 200 answer
        holds objects the caller checks against their ids, and carries no digest. `covered`: response
        header fields that must be signed (the caller acts on them). `pin`: ask only that node (a probe).
        """
        path_qs = self._url(path, 0).raw_path_qs  # the same on every node: the signature covers no host
        session = self._get_session()
        headers = {"Content-Type": content_type} if content_type else {}
        delay = self.backoff
        failure: Exception | None = None
        failures: dict[str, str] = {}
        retries = self.retries if retries is None else retries
        node = self._current if pin is None else pin
        tried = {node}
        attempt = 0
        switched = False
        while attempt <= retries:
            if attempt and not switched:
                await asyncio.sleep(min(delay, self.max_backoff) * (0.5 + random.random()))
                delay *= 2
            switched = False
            signed = {**headers, **self._signer.headers(method, path_qs, body)}
            base_url = self.nodes[node].url
            self.requests_sent += 1
            try:
                async with session.request(
                    method, self._url(path, node), data=body or None, headers=signed, allow_redirects=False
                ) as response:
                    if response.status >= 500 or response.status == 429:
                        reason = await self._reason(response)
                        failure = RemoteError(
                            f"the {self.peer} at {base_url} answered {response.status} to {method} {path}"
                            + (f": {reason}" if reason else ""),
                            status=response.status,
                        )
                        log.debug("%s %s: %s (attempt %d)", method, path, failure, attempt + 1)
                    else:
                        if response.status == 401:
                            raise self._auth_error(await self._reason(response), base_url)
                        if response.status not in ok:
                            reason = await self._reason(response)
                            raise RemoteError(
                                f"the {self.peer} at {base_url} answered {response.status} to {method} {path}"
                                + (f": {reason}" if reason else ""),
                                status=response.status,
                            )
                        content = await response.read()  # kept by aiohttp: `read` reads it again for free
                        self._verify(method, path_qs, signed, response,
                                     None if objects and response.status == 200 else content, covered, base_url)
                        result = await read(response)
                        self._node_answered(node, adopt=pin is None)
                        return result
            except aiohttp.ClientSSLError as exc:
                raise TLSError(
                    f"HTTPS to the {self.peer} at {base_url} failed: {exc}",
                    hint="use a certificate the system trusts, or pass the CA file (ca_file) that signed it",
                ) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                failure = exc
                log.debug("%s %s: %r (attempt %d)", method, path, exc, attempt + 1)
            self._node_failed(node, failure)
            failures[base_url] = str(failure) or repr(failure)
            untried = [n for n in self._node_order() if n not in tried] if pin is None else []
            if untried:
                node = untried[0]  # the next node at once, no backoff
                tried.add(node)
                switched = True
                continue
            attempt += 1
            node = self._current if pin is None else pin
            tried = {node}
        if len(failures) > 1:
            said = "; ".join(f"{url}: {why}" for url, why in failures.items())
            raise UnreachableError(
                f"no node of the {self.peer} answers after {retries + 1} attempts ({said})",
                hint=f"check that the seafbackup agent runs on the {self.peer}'s nodes and listens at those URLs",
            )
        if isinstance(failure, RemoteError):
            raise RemoteError(f"{failure.message} (after {retries + 1} attempts)", status=failure.status)
        raise UnreachableError(
            f"the {self.peer} at {self.base_url} is unreachable after {retries + 1} attempts: "
            f"{failure or 'no answer'}",
            hint=f"check that the seafbackup agent runs on the {self.peer} and listens at that URL",
        )

    def _node_order(self) -> list[int]:
        """Nodes from the one in use on, wrapping around."""
        n = len(self.nodes)
        return [(self._current + i) % n for i in range(n)]

    def _verify(self, method: str, path_qs: str, request_headers: dict[str, str],
                response: aiohttp.ClientResponse, content: bytes | None, covered: tuple[str, ...],
                base_url: str) -> None:
        try:
            self._signer.verify_response(method, path_qs, request_headers, response.status, response.headers,
                                         content, require=covered)
        except ResponseSignatureError as exc:
            raise ResponseAuthenticationError(
                f"the answer of the {self.peer} at {base_url} to {method} {path_qs} failed authentication "
                f"({exc}): it was changed on the way, or does not come from an agent with our sync_token; "
                "nothing of it was used",
                hint="use HTTPS between the agents (ssl_cert/ssl_key, https:// URLs) if something on the network "
                "rewrites traffic",
            ) from None


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    return json.loads(await response.read())


def _is_not_found(status: int, reason: str) -> bool:
    return status == 404 and reason.startswith("no such ")


class HttpSource(_SignedClient):
    """The primary's libraries over HTTP(S): the `ObjectSource` of seafbackup_agent.sync.source."""

    peer = "primary"

    def __init__(self, base_url: str | Sequence[str], token: str, *, fs_batch: int = FS_BATCH, parallel: int = 16,
                 **options: Any):
        super().__init__(base_url, token, **options)
        if not 0 < fs_batch <= MAX_PACK_IDS:
            raise ConfigError(f"fs_batch must be between 1 and {MAX_PACK_IDS}")
        self.fs_batch = fs_batch
        self._parallel = asyncio.Semaphore(parallel)
        self._ahead = AheadCache()
        """Objects that came with `library()`, until `commit()`, `changed_fs()` or `blocks()` ask for them."""

    @classmethod
    def from_conf(cls, conf: SeafileConf, **options: Any) -> HttpSource:
        """From the backup's seafile.conf: `[backup] primary_url` and `sync_token`."""
        if conf.backup is None or not conf.backup.primary_url:
            raise ConfigError(f"{conf.path}: [backup] primary_url is not set", hint="this host is not a backup")
        return cls(list(conf.backup.primary_urls), conf.backup.sync_token, **options)

    async def _optional(self, response: aiohttp.ClientResponse) -> bytes | None:
        if response.status == 404:
            reason = await self._reason(response)
            if _is_not_found(404, reason):
                return None
            raise RemoteError(
                f"the primary at {self.base_url} does not serve {response.url.path}: is it a seafbackup agent?",
                status=404,
            )
        return await response.read()

    async def heartbeat(self) -> Any:
        """The primary's heartbeat (one attempt on each node at most: the caller pulls again at its own pace)."""
        try:
            return await self._call("GET", "/v1/heartbeat", _read_json, retries=0)
        except ValueError as exc:
            raise ProtocolError(f"{self.base_url} sent a heartbeat that is not JSON") from exc

    async def probe_nodes(self) -> None:
        """Ask each node not in use for a heartbeat, once (for `status`: which nodes answer)."""

        async def probe(node: int) -> None:
            with contextlib.suppress(SeafBackupError, ValueError):
                await self._call("GET", "/v1/heartbeat", _read_json, retries=0, pin=node)

        await asyncio.gather(*(probe(n) for n in range(len(self.nodes)) if n != self._current))

    async def libraries(self) -> AsyncIterator[tuple[str, str]]:
        """Every library as (repo_id, head); raises unless the list arrived complete (and verified)."""

        async def read(response: aiohttp.ClientResponse) -> bytes:
            return await response.read()

        lines = (await self._call("GET", "/v1/libraries", read)).split(b"\n")
        if lines[-1] != b"":
            raise ProtocolError("library list ended early (no end marker)")
        for count, line in enumerate(lines[:-1]):
            entry = _library_line(line, count)
            if entry is None:
                if count != len(lines) - 2:
                    raise ProtocolError("library list: lines after its end marker")
                return
            yield entry
        raise ProtocolError("library list ended early (no end marker)")

    async def library(self, repo_id: str, *, since: str | None = None) -> LibraryMeta | None:
        ids.repo_id(repo_id)
        query = "" if since is None else f"?since={ids.object_id(since, 'commit id')}"
        raw = await self._call("GET", f"/v1/libraries/{repo_id}{query}", self._optional, ok=(200, 404))
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            meta = LibraryMeta(doc["repo_id"], doc["head"], doc["store_id"], doc["truncate_time"], doc.get("size"))
            ahead = parse_ahead_doc(doc["ahead"]) if "ahead" in doc else Ahead()
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"library {repo_id}: malformed metadata from the primary ({exc})") from exc
        if not (
            meta.repo_id == repo_id
            and ids.is_object_id(meta.head)
            and ids.is_repo_id(meta.store_id)
            and (meta.truncate_time is None or isinstance(meta.truncate_time, int))
            and (meta.size is None or (isinstance(meta.size, int) and meta.size >= 0))
        ):
            raise ProtocolError(f"library {repo_id}: malformed metadata from the primary: {doc!r}")
        if isinstance(doc.get("head_commit"), str):
            ahead.commits[meta.head] = doc["head_commit"].encode("utf-8")
        self._ahead.keep(repo_id, meta.store_id, ahead)
        return meta

    async def commit(self, repo_id: str, commit_id: str) -> bytes | None:
        ids.repo_id(repo_id)
        ids.object_id(commit_id, "commit id")
        prefetched = self._ahead.commit(repo_id, commit_id)
        if prefetched is not None:
            return prefetched
        return await self._call(
            "GET", f"/v1/libraries/{repo_id}/commits/{commit_id}", self._optional, ok=(200, 404)
        )

    async def fs_objects(self, store_id: str, obj_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored bytes of each fs object that exists; missing ids are left out. Batches of `fs_batch`."""
        ids.repo_id(store_id, "store id")
        wanted = [ids.object_id(obj_id, "fs object id") for obj_id in dict.fromkeys(obj_ids) if obj_id != ids.EMPTY_ID]
        batches = [wanted[i : i + self.fs_batch] for i in range(0, len(wanted), self.fs_batch)]
        found: dict[str, bytes] = {}
        for part in await asyncio.gather(*(self._pack(store_id, "fs", batch) for batch in batches)):
            found.update(part)
        return found

    async def blocks(self, store_id: str, block_ids: Sequence[str]) -> dict[str, bytes]:
        """Several blocks in one request (the caller keeps their total size reasonable)."""
        ids.repo_id(store_id, "store id")
        wanted = [ids.object_id(block_id, "block id") for block_id in dict.fromkeys(block_ids)]
        if len(wanted) > MAX_PACK_IDS:
            raise ValueError(f"at most {MAX_PACK_IDS} blocks per request")
        found = {}
        for block_id in wanted:
            data = self._ahead.block(store_id, block_id)
            if data is not None:
                found[block_id] = data
        missing = [block_id for block_id in wanted if block_id not in found]
        if missing:
            found.update(await self._pack(store_id, "blocks", missing))
        return found

    async def changed_fs(self, store_id: str, new_root: str, old_root: str, version: int) -> TreeDiff:
        ids.repo_id(store_id, "store id")
        body = json.dumps({"new": ids.object_id(new_root, "fs object id"),
                           "old": ids.object_id(old_root, "fs object id"), "version": version}).encode()
        prefetched = self._ahead.diff(store_id, new_root, old_root, version)
        if prefetched is not None:
            return prefetched  # it came with the library's answer

        async def read(response: aiohttp.ClientResponse) -> TreeDiff:
            objects = parse_pack(await response.read(), None)
            return TreeDiff(objects, complete=response.headers.get(DIFF_COMPLETE_HEADER) == "1")

        # The objects are checked by their ids, but "complete" lets the engine skip what is not listed.
        return await self._post_store(store_id, "fs-diff", body, read, covered=(DIFF_COMPLETE_HEADER,))

    async def _pack(self, store_id: str, kind: str, batch: list[str]) -> dict[str, bytes]:
        body = json.dumps(batch, separators=(",", ":")).encode()

        async def read(response: aiohttp.ClientResponse) -> dict[str, bytes]:
            return parse_pack(await response.read(), set(batch))

        return await self._post_store(store_id, kind, body, read, objects=True)

    async def _post_store(
        self, store_id: str, kind: str, body: bytes, read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        **options: Any,
    ) -> T:
        """A JSON POST to `/v1/stores/<store_id>/<kind>`, within the limit of requests in flight."""
        async with self._parallel:
            return await self._call(
                "POST", f"/v1/stores/{store_id}/{kind}", read, body=body, content_type="application/json", **options
            )

    async def block(self, store_id: str, block_id: str) -> bytes | None:
        ids.repo_id(store_id, "store id")
        ids.object_id(block_id, "block id")
        prefetched = self._ahead.block(store_id, block_id)
        if prefetched is not None:
            return prefetched
        async with self._parallel:
            return await self._call(
                "GET", f"/v1/stores/{store_id}/blocks/{block_id}", self._optional, ok=(200, 404), objects=True
            )


_LIBRARY_LINE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} [0-9a-f]{40}")


def _library_line(line: bytes, count: int) -> tuple[str, str] | None:
    """One line of the library list: an entry, or None for the end marker (checked against count)."""
    if _LIBRARY_LINE.fullmatch(line):
        text = line.decode("ascii")
        return text[:36], text[37:]
    if line.startswith(b"end "):
        if line[4:] != str(count).encode():
            raise ProtocolError(f"library list: {count} entries but the primary sent {line[4:120]!r}")
        return None
    raise ProtocolError(f"library list: malformed line {line[:120]!r}")


def parse_pack(data: bytes, requested: set[str] | None) -> dict[str, bytes]:
    """Frames `[40-byte id][u32 BE length][bytes]`, then the end frame (EMPTY_ID, number of frames).
    `requested`: the ids asked for (anything else is an error); None accepts any object id."""
    view = memoryview(data)
    found: dict[str, bytes] = {}
    pos = 0
    size = FRAME.size
    while True:
        if pos + size > len(view):
            raise ProtocolError("object pack ended early (no end frame)")
        raw_id, length = FRAME.unpack_from(view, pos)
        pos += size
        if raw_id == END_FRAME_ID:
            if length != len(found) or pos != len(view):
                raise ProtocolError("object pack: end frame does not match what was sent")
            return found
        obj_id = raw_id.decode("ascii", "replace")
        unexpected = not ids.is_object_id(obj_id) if requested is None else obj_id not in requested
        if unexpected or obj_id in found:
            raise ProtocolError(f"object pack: unexpected object {obj_id!r}")
        if pos + length > len(view):
            raise ProtocolError(f"object pack: object {obj_id} is cut short")
        found[obj_id] = bytes(view[pos : pos + length])
        pos += length


class NotifyClient(_SignedClient):
    """The primary's side of notifications: tells the backup that a library's head moved (or is gone)."""

    peer = "backup"

    @classmethod
    def from_conf(cls, conf: SeafileConf, **options: Any) -> NotifyClient:
        """From the primary's seafile.conf: `[backup] backup_url` and `sync_token`."""
        if conf.backup is None or not conf.backup.backup_url:
            raise ConfigError(f"{conf.path}: [backup] backup_url is not set", hint="this host is not a primary")
        return cls(conf.backup.backup_url, conf.backup.sync_token, **options)

    async def notify(self, changes: Sequence[tuple[str, str | None]]) -> None:
        """Head moves as (repo_id, new head or None when the library is gone), at most MAX_NOTIFY_BATCH."""
        if not 0 < len(changes) <= MAX_NOTIFY_BATCH:
            raise ValueError(f"notify takes 1 to {MAX_NOTIFY_BATCH} changes")
        for repo_id, head in changes:
            ids.repo_id(repo_id)
            if head is not None:
                ids.object_id(head, "head commit id")
        body = json.dumps([{"repo_id": r, "head": h} for r, h in changes]).encode()

        async def read(response: aiohttp.ClientResponse) -> None:
            await response.read()

        await self._call("POST", "/v1/notify", read, body=body, content_type="application/json", ok=(202,))
