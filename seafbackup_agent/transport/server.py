"""The HTTP API: the primary serves its Seafile installation read-only; the backup takes notifications.

Routes (all under /v1; requests signed except health, and every answer to a signed request signed and
bound to it; see signing.py):

    GET  /v1/health                                  {"status": "ok", "role": ..., "authenticated": bool}
                                                     (open; when signed, the signature is checked too)
    GET  /v1/heartbeat                               {"instance", "now", "age", "change_detector", "pending",
                                                     "problem", "problem_age"}: every head move committed more
                                                     than `age` s before `now` was delivered to the backup
                                                     (service/heartbeat.py)
    GET  /v1/libraries                               text lines "<repo_id> <head>", then "end <count>"
    GET  /v1/libraries/<repo_id>[?since=<commit id>] LibraryMeta as JSON (+ "head_commit": its stored text when
                                                     readable; with `since`, the backup's head, + "ahead": the
                                                     commits, fs diffs and small blocks it will ask for next,
                                                     see ahead.py); 404 when the library does not exist
    GET  /v1/libraries/<repo_id>/commits/<id>        the commit's stored bytes; 404 when missing
    POST /v1/stores/<store_id>/fs                    body: JSON list of fs ids; response: pack frames
    POST /v1/stores/<store_id>/blocks                body: JSON list of block ids; response: pack frames
                                                     (for small blocks; the client bounds the total size)
    POST /v1/stores/<store_id>/fs-diff               body: {"new": root id, "old": root id, "version": 0|1};
                                                     response: pack frames of the fs objects under "new" that
                                                     are not at the same path under "old" (bounded, may stop early)
    GET  /v1/stores/<store_id>/blocks/<id>           the block's stored bytes, streamed, with Content-Length
    POST /v1/notify  (backup side)                   [{"repo_id": ..., "head": <id or null>}, ...] -> 202

Pack frames (as Seafile's pack-fs): `[40-byte ASCII id][u32 big-endian length][stored bytes]` for each
object found, missing ids simply absent, then one end frame: 40 ASCII zeros (EMPTY_ID, never stored) and
the number of object frames sent, so a truncated response can never pass for "objects missing".

Hostile clients cost little: a request's body is read only after the signature over its headers verified
(so never for an unauthenticated one), each POST route has its own body limit (413 above it; every other
route takes no body), a signed body must arrive within BODY_READ_TIMEOUT, a refused request's connection is
closed at once, and idle or slow-header connections are closed after KEEPALIVE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pymysql
from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from seafbackup_agent.errors import DatabaseError
from seafbackup_agent.seafile.db import connect
from seafbackup_agent.seafile.ids import EMPTY_ID, is_object_id, is_repo_id
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.library import LibraryMeta, LibraryRows
from seafbackup_agent.seafile.objects import FormatError, parse_commit
from seafbackup_agent.seafile.storage import FilesystemStore, ObjType
from seafbackup_agent.seafile.treediff import changed_fs_objects
from seafbackup_agent.transport.ahead import Ahead, ahead_doc, read_ahead
from seafbackup_agent.transport.signing import (
    DEFAULT_WINDOW,
    DIFF_COMPLETE_HEADER,
    SIGNATURE_HEADER,
    ReplayCacheFull,
    RequestVerifier,
    SignatureError,
    SignedBeforeStart,
)

log = logging.getLogger("seafbackup_agent.transport")
access_log = logging.getLogger("seafbackup_agent.transport.access")


class DebugAccessLogger(AccessLogger):
    """aiohttp's access log line at DEBUG, not INFO: a line per request would drown the journal (`-v` shows them)."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.enabled:
            return
        try:
            values = tuple(value for _, value in self._format_line(request, response, time))
            self.logger.debug(self._log_format % values)
        except Exception:
            self.logger.exception("Error in logging")

API = "/v1"
HEALTH_PATH = f"{API}/health"
MAX_REQUEST_BODY = 1 << 20
"""Largest body of a pack request (413 above): room for MAX_PACK_IDS ids in JSON."""
MAX_DIFF_BODY = 4096
MAX_NOTIFY_BODY = 256 * 1024
"""Room for MAX_NOTIFY_BATCH changes."""
BODY_READ_TIMEOUT = 30.0
"""A signed body must arrive within this many seconds (408 and the connection closed otherwise)."""
READ_BUFFER = 16 * 1024
RECEIVE_BUFFER = 64 * 1024
"""Read buffer of the HTTP parser and receive buffer of each connection's socket (see start_server)."""
MAX_CONNECTIONS = 64
"""Connections read at once; more wait, paused (an agent uses up to 16, see client.py)."""
KEEPALIVE_TIMEOUT = 30.0
"""An idle connection, or one that sends headers too slowly, is closed after this many seconds."""
MAX_PACK_IDS = 10_000
"""Most ids in one pack request (400 above); the client sends FS_BATCH (client.py) fs ids at a time."""
FRAME = struct.Struct(">40sI")
END_FRAME_ID = EMPTY_ID.encode("ascii")
BLOCK_CHUNK = 1 << 20
MAX_NOTIFY_BATCH = 1000
"""Most head moves in one notification (the primary sends what piled up while the last one was on its way)."""
_PACK_READ_BYTES = 1 << 20
"""A pack response is read from disk and sent in pieces of about this size."""
_OBJECT_READ_SLICE = 64
"""Objects read side by side from object storage per slice of a pack."""
_ONE_PIECE_PACK = 64 * 1024
"""A pack answer up to this size, read in one piece, is sent whole; larger ones are streamed."""
_HEADS_CHUNK = 2000
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'
SERVER_HEADER = "seafbackup"

T = TypeVar("T")
NotifyCallback = Callable[[str, str | None], Awaitable[None]]

VERIFIER = web.AppKey("verifier", RequestVerifier)
BODY_LIMITS = web.AppKey("body_limits", dict)
INSTALLATION = web.AppKey("installation", SeafileInstallation)
NOTIFY: web.AppKey[NotifyCallback] = web.AppKey("notify")
HEARTBEAT: web.AppKey[Callable[[], dict]] = web.AppKey("heartbeat")
AUTHENTICATED = web.RequestKey("authenticated", bool)
"""Set once the request's signature and body verified."""


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


# --- database access from threads ---------------------------------------------------------------------


class RowsPool:
    """A few `LibraryRows`, each on its own connection, used from worker threads one at a time.

    PyMySQL connections are not thread-safe, so a connection is checked out for one call (or one
    streamed list) and returned. A connection that fails is dropped and the call retried once on a new one.
    """

    def __init__(self, installation: SeafileInstallation, size: int = 4) -> None:
        self._settings = installation.conf.database
        self._keep_days = installation.rows.keep_days
        self._free: list[LibraryRows] = []
        self._all: list[LibraryRows] = []
        self._slots = asyncio.Semaphore(size)

    def _new(self) -> LibraryRows:
        rows = LibraryRows(connect(self._settings), keep_days=self._keep_days)
        self._all.append(rows)
        return rows

    async def acquire(self, *, check: bool = False) -> LibraryRows:
        """A connection for this task alone; `check` pings a pooled one first and replaces it if dead."""
        await self._slots.acquire()
        try:
            while self._free:
                rows = self._free.pop()
                if not check:
                    return rows
                try:
                    await asyncio.to_thread(rows.conn.ping)
                    return rows
                except pymysql.MySQLError:
                    self._drop(rows)
            return await asyncio.to_thread(self._new)
        except BaseException:
            self._slots.release()
            raise

    def release(self, rows: LibraryRows, *, broken: bool = False) -> None:
        if broken:
            self._drop(rows)
        else:
            self._free.append(rows)
        self._slots.release()

    def _drop(self, rows: LibraryRows) -> None:
        if rows in self._all:
            self._all.remove(rows)
        with contextlib.suppress(Exception):
            rows.conn.close()

    async def run(self, fn: Callable[[LibraryRows], T]) -> T:
        """`fn(rows)` in a worker thread with a connection of its own."""
        for attempt in range(2):
            rows = await self.acquire()
            try:
                result = await asyncio.to_thread(fn, rows)
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
                self.release(rows, broken=True)
                if attempt:
                    raise
                continue
            except BaseException:
                self.release(rows)
                raise
            self.release(rows)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        for rows in list(self._all):
            self._drop(rows)
        self._free.clear()


ROWS = web.AppKey("rows", RowsPool)


# --- middlewares and signals ----------------------------------------------------------------------


def _body_limit(request: web.Request) -> int:
    """The route's largest body: POST routes declare theirs (`add_post`), every other route takes none."""
    resource = request.match_info.route.resource
    return request.app[BODY_LIMITS].get(resource.canonical, 0) if resource is not None else 0


def _refuse(status: int, reason: str) -> web.Response:
    """An error that also closes the connection: nothing more of this request's body is read."""
    response = _error(status, reason)
    response.force_close()
    return response


@web.middleware
async def _authenticate(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    # Cheap checks come first and nothing of the body is read before the signature over the headers
    # (which covers the body's digest) verifies: an unauthenticated client costs a few header bytes.
    limit = _body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        return _refuse(413, "request body too large")
    if request.path == HEALTH_PATH and SIGNATURE_HEADER not in request.headers:
        return await handler(request)  # open for probes; a signed health check also proves the token
    verifier = request.app[VERIFIER]
    try:
        verifier.verify_headers(request.method, request.raw_path, request.headers)
        # Kept by aiohttp: the handler's own read() returns it.
        body = await asyncio.wait_for(request.read(), BODY_READ_TIMEOUT)
        if len(body) > limit:  # a chunked body, which announced no length
            return _refuse(413, "request body too large")
        verifier.verify_body(request.headers, body)
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, "request body too large")
    except TimeoutError:
        log.warning("%s %s from %s: body not received within %.0fs", request.method, request.path, request.remote,
                    BODY_READ_TIMEOUT)
        return _refuse(408, "request body not received in time")
    except (ReplayCacheFull, SignedBeforeStart) as exc:
        log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, exc.reason)
        return _refuse(503, exc.reason)
    except SignatureError as exc:
        log.warning("rejected %s %s from %s: %s", request.method, request.path, request.remote, exc.reason)
        return _refuse(401, exc.reason)
    request[AUTHENTICATED] = True
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        # aiohttp's own answer (a path no route matches, e.g. an id with a brace) is text: keep every
        # error of the API in one form, the JSON its clients parse.
        response = _error(exc.status, exc.reason.lower())
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (pymysql.MySQLError, DatabaseError) as exc:
        log.error("%s %s: database error: %s", request.method, request.path, exc)
        return _error(503, "database unavailable")


async def _hide_server_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


async def _sign_response(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer to an authenticated request is signed, bound to that request (signing.py)."""
    if not request.get(AUTHENTICATED):
        return  # unauthenticated: an open health probe, or a refusal
    body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else None
    request.app[VERIFIER].sign_response(request.method, request.raw_path, request.headers, response.status,
                                        response.headers, body)


def signed_app(token: str, *, window: float = DEFAULT_WINDOW, max_body: int = MAX_REQUEST_BODY) -> web.Application:
    """An application whose routes take only signed requests (health excepted) and sign their answers;
    `max_body`: the largest body of any of its routes."""
    app = web.Application(client_max_size=max_body, middlewares=[_authenticate])
    app[VERIFIER] = RequestVerifier(token, window=window)
    app[BODY_LIMITS] = {}
    app.on_response_prepare.append(_hide_server_version)
    app.on_response_prepare.append(_sign_response)
    return app


def add_post(app: web.Application, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
             max_body: int) -> None:
    """A POST route taking bodies of up to `max_body` bytes (413 above)."""
    app[BODY_LIMITS][path] = max_body
    app.router.add_post(path, handler)


# --- primary side -------------------------------------------------------------------------------------


def _repo_id(request: web.Request, key: str = "repo_id") -> str:
    value = request.match_info[key]
    if not is_repo_id(value):
        raise web.HTTPBadRequest(text=json.dumps({"error": f"malformed {key}"}), content_type="application/json")
    return value


def _object_id(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not is_object_id(value):
        raise web.HTTPBadRequest(text=json.dumps({"error": f"malformed {key}"}), content_type="application/json")
    return value


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body is not JSON"}),
                                 content_type="application/json") from None


def _health(role: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def health(request: web.Request) -> web.Response:
        authenticated = SIGNATURE_HEADER in request.headers  # the middleware verified it
        return web.json_response({"status": "ok", "role": role, "api": 1, "authenticated": authenticated})

    return health


async def _heartbeat(request: web.Request) -> web.Response:
    return web.json_response(request.app[HEARTBEAT]())


async def _libraries(request: web.Request) -> web.Response:
    # Built whole before it is sent: its signature covers its digest, so nothing of it is used unverified.
    def heads(rows: LibraryRows) -> list[str]:
        return [line for chunk in rows.iter_head_lines(_HEADS_CHUNK) for line in chunk]

    lines = await request.app[ROWS].run(heads)
    body = "".join(f"{line}\n" for line in lines) + f"end {len(lines)}\n"
    return web.Response(body=body.encode("ascii"), content_type="text/plain", charset="ascii")


async def _library(request: web.Request) -> web.Response:
    repo_id = _repo_id(request)
    since = request.query.get("since")
    if since is not None and not is_object_id(since):
        return _error(400, "malformed since: a commit id is 40 lowercase hex digits")
    store = request.app[INSTALLATION].store
    local = isinstance(store, FilesystemStore)

    def ahead_of(meta: LibraryMeta, raw: bytes | None) -> Ahead | None:
        if since is None or raw is None:
            return None
        try:
            head = parse_commit(raw, expected_id=meta.head, expected_repo_id=repo_id)
        except FormatError:
            return None  # the backup fetches it, and reports it
        return read_ahead(store.read, repo_id, meta.store_id, head, since, meta.truncate_time)

    def read(rows: LibraryRows) -> tuple[LibraryMeta | None, bytes | None, Ahead | None]:
        meta = rows.meta(repo_id)
        if meta is None:
            return None, None, None
        raw = store.read(ObjType.COMMITS, repo_id, meta.head)
        return meta, raw, ahead_of(meta, raw) if local else None

    # One trip to a worker thread: the row, then the head commit, which rides along (a sync that needs it
    # saves a round trip; the backup verifies it), and with `since` what the backup will ask for next (ahead.py).
    # From object storage those reads are network round trips: they are made after the database connection is
    # given back to the pool, which the other requests share.
    meta, raw, ahead = await request.app[ROWS].run(read)
    if meta is not None and not local and since is not None:
        ahead = await asyncio.to_thread(ahead_of, meta, raw)
    if meta is None:
        return _error(404, "no such library")
    doc: dict[str, Any] = dataclasses.asdict(meta)
    with contextlib.suppress(UnicodeDecodeError):
        if raw is not None:
            doc["head_commit"] = raw.decode("utf-8")
    if ahead is not None:
        doc["ahead"] = ahead_doc(ahead)
    return web.json_response(doc)


async def _commit(request: web.Request) -> web.Response:
    repo_id, commit_id = _repo_id(request), _object_id(request, "commit_id")
    store = request.app[INSTALLATION].store
    data = await asyncio.to_thread(store.read, ObjType.COMMITS, repo_id, commit_id)
    if data is None:
        return _error(404, "no such commit")
    return web.Response(body=data, content_type="application/octet-stream")


def _read_frames(
    installation: SeafileInstallation, obj_type: ObjType, store_id: str, obj_ids: list[str], start: int
) -> tuple[bytes, int, int]:
    """Frames of `obj_ids[start:]` up to about _PACK_READ_BYTES: (frames, objects found, next start)."""
    out = bytearray()
    found = 0
    index = start
    if not isinstance(installation.store, FilesystemStore):
        # Object storage: reads side by side, a slice at a time (an object read is a network round trip).
        while index < len(obj_ids) and len(out) < _PACK_READ_BYTES:
            chunk = obj_ids[index : index + _OBJECT_READ_SLICE]
            index += len(chunk)
            objects = installation.store.read_many(obj_type, store_id, chunk)
            for obj_id in chunk:
                if obj_id in objects:
                    _add_frame(out, obj_id, objects[obj_id])
                    found += 1
        return bytes(out), found, index
    while index < len(obj_ids) and len(out) < _PACK_READ_BYTES:
        obj_id = obj_ids[index]
        index += 1
        data = installation.store.read(obj_type, store_id, obj_id)
        if data is not None:
            _add_frame(out, obj_id, data)
            found += 1
    return bytes(out), found, index


def _add_frame(out: bytearray, obj_id: str, data: bytes) -> None:
    out += FRAME.pack(obj_id.encode("ascii"), len(data))
    out += data


def _end_frame(count: int) -> bytes:
    return FRAME.pack(END_FRAME_ID, count)


def _pack_handler(obj_type: ObjType) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    what = "fs object" if obj_type is ObjType.FS else "block"

    async def pack(request: web.Request) -> web.StreamResponse:
        store_id = _repo_id(request, "store_id")
        obj_ids = await _json_body(request)
        if not isinstance(obj_ids, list):
            return _error(400, f"body must be a JSON list of {what} ids")
        if len(obj_ids) > MAX_PACK_IDS:
            return _error(400, f"at most {MAX_PACK_IDS} ids per request")
        if not all(is_object_id(obj_id) for obj_id in obj_ids):
            return _error(400, f"malformed {what} id")
        wanted = [obj_id for obj_id in dict.fromkeys(obj_ids) if obj_id != EMPTY_ID]
        installation = request.app[INSTALLATION]
        data, sent, index = await asyncio.to_thread(_read_frames, installation, obj_type, store_id, wanted, 0)
        if index == len(wanted) and len(data) <= _ONE_PIECE_PACK:
            # The usual answer of an incremental sync: one write instead of a stream of chunks (the digest its
            # signature then covers is cheap at this size).
            return web.Response(body=data + _end_frame(sent), content_type="application/octet-stream")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(data)
        while index < len(wanted):
            data, found, index = await asyncio.to_thread(
                _read_frames, installation, obj_type, store_id, wanted, index
            )
            if data:
                await response.write(data)
            sent += found
        await response.write(_end_frame(sent))
        await response.write_eof()
        return response

    return pack


async def _fs_diff(request: web.Request) -> web.Response:
    store_id = _repo_id(request, "store_id")
    doc = await _json_body(request)
    if not (
        isinstance(doc, dict)
        and is_object_id(doc.get("new"))
        and is_object_id(doc.get("old"))
        and doc.get("version") in (0, 1)
    ):
        return _error(400, 'body must be {"new": <fs id>, "old": <fs id>, "version": 0 or 1}')
    store = request.app[INSTALLATION].store

    def diff() -> tuple[bytes, bool]:
        found = changed_fs_objects(lambda obj_id: store.read(ObjType.FS, store_id, obj_id), doc["new"], doc["old"],
                                   version=doc["version"])
        frames = bytearray()
        for obj_id, data in found.objects.items():
            _add_frame(frames, obj_id, data)
        return bytes(frames + _end_frame(len(found.objects))), found.complete

    body, complete = await asyncio.to_thread(diff)
    return web.Response(body=body, content_type="application/octet-stream",
                        headers={DIFF_COMPLETE_HEADER: "1" if complete else "0"})


def _open_block(path: str) -> tuple[Any, int] | None:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller after streaming
    except (FileNotFoundError, NotADirectoryError):
        return None
    return fh, os.fstat(fh.fileno()).st_size


async def _block(request: web.Request) -> web.StreamResponse:
    store_id, block_id = _repo_id(request, "store_id"), _object_id(request, "block_id")
    store = request.app[INSTALLATION].store
    if not isinstance(store, FilesystemStore):
        # Object storage: one GET of the whole block (Seafile's blocks are a few MiB at most).
        data = await asyncio.to_thread(store.read, ObjType.BLOCKS, store_id, block_id)
        if data is None:
            return _error(404, "no such block")
        return web.Response(body=data, content_type="application/octet-stream")
    path = store.path(ObjType.BLOCKS, store_id, block_id)
    opened = await asyncio.to_thread(_open_block, path)
    if opened is None:
        return _error(404, "no such block")
    fh, size = opened
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        # A file that shrank meanwhile gives a short body: the client fails on it and asks again.
        if not await _send_file(request, fh, size):
            remaining = size
            while remaining > 0:
                chunk = await asyncio.to_thread(fh.read, min(BLOCK_CHUNK, remaining))
                if not chunk:
                    break
                await response.write(chunk)
                remaining -= len(chunk)
        await response.write_eof()
        return response
    finally:
        fh.close()


async def _send_file(request: web.Request, fh: Any, size: int) -> bool:
    """The block from the page cache straight to the socket (`sendfile(2)`: no copy through this process), as
    aiohttp's FileResponse sends; False where the connection cannot take it (TLS), nothing sent then."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    if transport.get_extra_info("sslcontext") is not None:
        return False
    await asyncio.get_running_loop().sendfile(transport, fh, 0, size, fallback=False)
    return True


def create_primary_app(
    installation: SeafileInstallation,
    token: str,
    *,
    window: float = DEFAULT_WINDOW,
    db_connections: int = 4,
    max_body: int = MAX_REQUEST_BODY,
    heartbeat: Callable[[], dict] | None = None,
) -> web.Application:
    """The primary's read-only API over `installation`; `heartbeat()` answers `GET /v1/heartbeat` (404 without).

    It opens its own database connections (up to `db_connections`, closed on cleanup) and only reads
    `installation.store`; `installation.rows` is left to its owner.
    """
    app = signed_app(token, window=window, max_body=max_body)
    app[INSTALLATION] = installation
    pool = RowsPool(installation, db_connections)
    app[ROWS] = pool

    async def _close_pool(app: web.Application) -> None:
        await asyncio.to_thread(pool.close)

    app.on_cleanup.append(_close_pool)
    app.router.add_get(HEALTH_PATH, _health("primary"))
    if heartbeat is not None:
        app[HEARTBEAT] = heartbeat
        app.router.add_get(f"{API}/heartbeat", _heartbeat)
    app.router.add_get(f"{API}/libraries", _libraries)
    app.router.add_get(f"{API}/libraries/{{repo_id}}", _library)
    app.router.add_get(f"{API}/libraries/{{repo_id}}/commits/{{commit_id}}", _commit)
    add_post(app, f"{API}/stores/{{store_id}}/fs", _pack_handler(ObjType.FS), max_body)
    add_post(app, f"{API}/stores/{{store_id}}/blocks", _pack_handler(ObjType.BLOCKS), max_body)
    add_post(app, f"{API}/stores/{{store_id}}/fs-diff", _fs_diff, MAX_DIFF_BODY)
    app.router.add_get(f"{API}/stores/{{store_id}}/blocks/{{block_id}}", _block)
    return app


# --- backup side ----------------------------------------------------------------------------------


async def _notify(request: web.Request) -> web.Response:
    doc = await _json_body(request)
    if not isinstance(doc, list) or not 0 < len(doc) <= MAX_NOTIFY_BATCH:
        return _error(400, f"body must be a list of 1 to {MAX_NOTIFY_BATCH} changes")
    for change in doc:
        if not isinstance(change, dict) or not is_repo_id(change.get("repo_id")):
            return _error(400, "malformed repo_id")
        if change.get("head") is not None and not is_object_id(change["head"]):
            return _error(400, "malformed head")
    for change in doc:
        await request.app[NOTIFY](change["repo_id"], change.get("head"))
    return web.json_response({"accepted": len(doc)}, status=202)


def create_backup_app(token: str, on_notify: NotifyCallback, *, window: float = DEFAULT_WINDOW) -> web.Application:
    """The backup's endpoint for the primary's notifications: `on_notify(repo_id, head)` for each one;
    head None means the library is gone on the primary."""
    app = signed_app(token, window=window)
    app[NOTIFY] = on_notify
    app.router.add_get(HEALTH_PATH, _health("backup"))
    add_post(app, f"{API}/notify", _notify, MAX_NOTIFY_BODY)
    return app


# --- running --------------------------------------------------------------------------------------


class _ConnectionGate:
    """At most `limit` connections are read at once; the others wait, paused, with their bytes left in the
    kernel. Bounds what the server holds for connections whose requests are not authenticated yet (each
    reads ahead at most its socket's receive buffer and the parser's buffer), whatever their number."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: set[asyncio.BaseTransport] = set()
        self._waiting: collections.deque[asyncio.BaseTransport] = collections.deque()

    def enter(self, transport: asyncio.BaseTransport) -> None:
        if len(self._active) < self.limit:
            self._active.add(transport)
        else:
            transport.pause_reading()  # type: ignore[attr-defined]
            self._waiting.append(transport)

    def leave(self, transport: asyncio.BaseTransport) -> None:
        if transport in self._active:
            self._active.discard(transport)
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(transport)
        while self._waiting and len(self._active) < self.limit:
            waiting = self._waiting.popleft()
            if not waiting.is_closing():
                self._active.add(waiting)
                waiting.resume_reading()  # type: ignore[attr-defined]


class _GatedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted through the gate."""

    def __init__(self, gate: _ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._gate.enter(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gate.leave(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


@dataclass
class RunningServer:
    runner: web.AppRunner
    url: str
    """Base URL with the bound port, e.g. http://127.0.0.1:41234"""
    listener: asyncio.AbstractServer

    async def close(self) -> None:
        self.listener.close()
        await self.runner.cleanup()


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def start_server(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 5.0,
) -> RunningServer:
    """Serve `app` (port 0 picks a free port); access logs go to `seafbackup_agent.transport.access`."""
    # What a connection costs before its request is authenticated is what the server reads ahead of the
    # handler: at most one receive (bounded by the socket's buffer) and the parser's read buffer. Both are
    # small here (the API's requests are small, its large transfers go the other way), and at most
    # MAX_CONNECTIONS connections are read at once. lingering_time 0: the unread rest of a refused
    # request's body is not waited for.
    runner = web.AppRunner(
        app, access_log=access_log, access_log_class=DebugAccessLogger, access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT, lingering_time=0, read_bufsize=READ_BUFFER,
    )
    await runner.setup()
    gate = _ConnectionGate(MAX_CONNECTIONS)
    server = runner.server
    assert server is not None
    try:
        sock = _listening_socket(host, port)
        listener = await asyncio.get_running_loop().create_server(
            lambda: _GatedProtocol(gate, server()), sock=sock, ssl=ssl_context, backlog=128)
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    scheme = "https" if ssl_context else "http"
    return RunningServer(runner, f"{scheme}://{shown}:{bound_port}", listener)


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)  # inherited by accepted sockets
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
