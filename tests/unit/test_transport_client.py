"""The HTTP transport between in-process servers and clients, no lab: retries, notifications, the notifier's
batches, incomplete answers, body limits."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import pytest
from aiohttp import web
from yarl import URL

from seafbackup_agent.errors import InvalidIdError
from seafbackup_agent.service.heartbeat import Coverage, ProblemBoard
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.service.primary import Notifier
from seafbackup_agent.transport.client import HttpSource, NotifyClient
from seafbackup_agent.transport.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteError,
    UnreachableError,
)
from seafbackup_agent.transport.server import (
    MAX_NOTIFY_BODY,
    add_post,
    create_backup_app,
    signed_app,
    start_server,
)
from seafbackup_agent.transport.signing import (
    derive_key,
    sign_headers,
)
from tests.signed_http import FAST, OTHER_TOKEN, TOKEN, past_start, raw_request


def test_an_unreachable_primary_is_reported_after_retries():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        async with HttpSource(f"http://127.0.0.1:{port}", TOKEN, retries=2, backoff=0.01) as http:
            with pytest.raises(UnreachableError, match="unreachable after 3 attempts"):
                await http.library(str(uuid.uuid4()))

    asyncio.run(scenario())


def test_5xx_and_dropped_connections_are_retried_4xx_is_not():
    calls = {"flaky": 0, "bad": 0, "down": 0}

    async def flaky(request):
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            return web.json_response({"error": "busy"}, status=503)
        return web.Response(body=b"commit-bytes")

    async def bad(request):
        calls["bad"] += 1
        return web.json_response({"error": "malformed commit_id"}, status=400)

    async def down(request):
        calls["down"] += 1
        return web.json_response({"error": "database unavailable"}, status=503)

    async def scenario():
        app = signed_app(TOKEN)
        app.router.add_get("/v1/libraries/{repo}/commits/{cid}", flaky)
        app.router.add_get("/v1/stores/{repo}/blocks/{bid}", bad)
        app.router.add_get("/v1/libraries/{repo}", down)
        server = await start_server(app)
        await past_start(app)
        try:
            async with HttpSource(server.url, TOKEN, retries=3, backoff=0.01) as http:
                repo = str(uuid.uuid4())
                assert await http.commit(repo, "a" * 40) == b"commit-bytes"
                assert calls["flaky"] == 3
                with pytest.raises(RemoteError, match="400") as info:
                    await http.block(repo, "a" * 40)
                assert info.value.status == 400 and calls["bad"] == 1
                with pytest.raises(RemoteError, match=r"503.*after 4 attempts"):
                    await http.library(repo)
                assert calls["down"] == 4
        finally:
            await server.close()

    asyncio.run(scenario())


def test_notify_reaches_the_callback_only_when_signed():
    received: list[tuple[str, str | None]] = []

    async def on_notify(repo_id: str, head: str | None) -> None:
        received.append((repo_id, head))

    async def scenario():
        app = create_backup_app(TOKEN, on_notify)
        server = await start_server(app)
        await past_start(app)
        try:
            repo, other = str(uuid.uuid4()), str(uuid.uuid4())
            async with NotifyClient(server.url, TOKEN) as client:
                assert (await client.check())["authenticated"] is True
                await client.notify([(repo, "a" * 40)])
                await client.notify([(repo, None), (other, "c" * 40)])
                with pytest.raises(InvalidIdError):
                    await client.notify([(other, "d" * 40), (repo, "A" * 40)])
            async with HttpSource(server.url, TOKEN) as wrong_side:
                with pytest.raises(ProtocolError, match="is the backup's agent, not the primary's"):
                    await wrong_side.check()
            async with NotifyClient(server.url, OTHER_TOKEN, **FAST) as client:
                with pytest.raises(AuthenticationError, match="sync_token differs"):
                    await client.notify([(repo, "b" * 40)])
            half_bad = json.dumps([{"repo_id": other, "head": "e" * 40}, {"repo_id": repo, "head": "zz"}]).encode()
            too_many = json.dumps([{"repo_id": repo, "head": None}] * 1001).encode()
            for body in (b"{}", half_bad, too_many, b"[]", b"nope", b'[{"head": null}]'):
                assert (await raw_request(server.url, "POST", "/v1/notify", body=body))[0] == 400
            assert (await raw_request(server.url, "POST", "/v1/notify", body=b"{}", signed=False))[0] == 401
            status, body, _ = await raw_request(server.url, "GET", "/v1/health", signed=False)
            assert status == 200 and json.loads(body)["role"] == "backup"
            assert received == [(repo, "a" * 40), (repo, None), (other, "c" * 40)]  # nothing of a refused batch
        finally:
            await server.close()

    asyncio.run(scenario())


def test_an_incomplete_list_or_batch_is_an_error_not_missing_objects():
    repo = str(uuid.uuid4())
    line = f"{repo} {'a' * 40}\n".encode()
    answers = {
        "cut": line,
        "miscounted": line + b"end 2\n",
        "garbled": line + f"{repo} {'A' * 40}\n".encode(),
    }

    async def scenario():
        for name, body in answers.items():
            app = signed_app(TOKEN)

            async def libraries(request, body=body):
                return web.Response(body=body, content_type="text/plain")

            async def fs(request):
                return web.Response(body=b"a" * 40 + (3).to_bytes(4, "big") + b"xyz")  # no end frame

            app.router.add_get("/v1/libraries", libraries)
            add_post(app, "/v1/stores/{store}/fs", fs, 1 << 20)
            server = await start_server(app)
            await past_start(app)
            try:
                async with HttpSource(server.url, TOKEN, **FAST) as http:
                    seen = []
                    with pytest.raises((ProtocolError, RemoteError)):
                        async for item in http.libraries():
                            seen.append(item)
                    assert seen == [(repo, "a" * 40)], name
                    with pytest.raises(ProtocolError, match="end frame"):
                        await http.fs_objects(repo, ["a" * 40])
            finally:
                await server.close()

    asyncio.run(scenario())


def test_the_notifier_batches_what_piles_up_and_keeps_what_the_backup_refuses():
    """Changes made while a notification is on its way go out together in the next request; a batch the
    backup answers with 4xx is kept, reported and sent again (the heartbeats claim every change was delivered,
    so nothing may be dropped), and the claim (`delivered_through`) does not pass it meanwhile."""
    answers = iter([202, 400])  # then 202
    bodies: list[list[dict]] = []

    async def notify(request: web.Request) -> web.Response:
        bodies.append(json.loads(await request.read()))
        status = next(answers, 202)
        if len(bodies) == 1:
            await asyncio.sleep(0.3)  # a slow backup: changes pile up meanwhile
        return web.json_response({"error": "refused"} if status == 400 else {}, status=status)

    async def scenario():
        app = signed_app(TOKEN)
        add_post(app, "/v1/notify", notify, MAX_NOTIFY_BODY)
        server = await start_server(app)
        await past_start(app)
        stop = asyncio.Event()
        coverage, problems = Coverage(), ProblemBoard()
        claims: list[float | None] = []
        try:
            async with NotifyClient(server.url, TOKEN, **FAST) as client:
                notifier = Notifier(client.notify, AgentMetrics(), coverage, problems, min_backoff=0.2)
                coverage.covered(100.0)
                runner = asyncio.create_task(notifier.run(stop))
                repos = [str(uuid.uuid4()) for _ in range(6)]
                notifier.changed(repos[0], "a" * 40)
                await asyncio.sleep(0.1)
                coverage.covered(200.0)  # detected through 200, but the change of 100 is still on its way
                assert notifier.delivered_through() == 100.0
                for repo in repos[1:4]:
                    notifier.changed(repo, "b" * 40)
                notifier.changed(repos[0], None)  # moved again while the first request is on its way
                notifier.changed("not-a-library", "c" * 40)  # ignored, never sent
                while len(bodies) < 2:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                claims.append(notifier.delivered_through())
                assert problems.get("notifications") is not None
                assert "refused" in problems.get("notifications").text
                while len(bodies) < 3 or notifier.pending:
                    await asyncio.sleep(0.02)
                assert problems.get("notifications") is None
                claims.append(notifier.delivered_through())
                notifier.changed(repos[5], "d" * 40)
                while len(bodies) < 4 or notifier.pending:
                    await asyncio.sleep(0.02)
                stop.set()
                await runner
        finally:
            await server.close()
        assert bodies[0] == [{"repo_id": repos[0], "head": "a" * 40}]
        assert sorted((c["repo_id"], c["head"]) for c in bodies[1]) == sorted(
            [(repos[0], None)] + [(r, "b" * 40) for r in repos[1:4]])
        assert bodies[2] == bodies[1]  # the refused batch was sent again
        assert bodies[3] == [{"repo_id": repos[5], "head": "d" * 40}]
        assert claims == [100.0, 200.0]

    asyncio.run(scenario())


def test_body_limits_per_route_and_a_stalled_signed_body_is_cut_off(monkeypatch):
    """Each route takes at most its own body (none for GET); a signed body that stops arriving gets 408 and
    its connection closed, after BODY_READ_TIMEOUT (shortened here)."""
    from seafbackup_agent.transport import server as server_module

    monkeypatch.setattr(server_module, "BODY_READ_TIMEOUT", 1.0)

    async def on_notify(repo_id: str, head: str | None) -> None:
        pass

    async def scenario():
        app = create_backup_app(TOKEN, on_notify)
        server = await start_server(app)
        await past_start(app)
        try:
            big = json.dumps([{"repo_id": str(uuid.uuid4()), "head": None}] * 8000).encode()
            assert len(big) > MAX_NOTIFY_BODY
            status, body, _ = await raw_request(server.url, "POST", "/v1/notify", body=big)
            assert status == 413 and b"too large" in body
            status, _, _ = await raw_request(server.url, "GET", "/v1/health", body=b"x" * 10, signed=False)
            assert status == 413  # GET routes take no body, signed or not

            url = URL(server.url)
            small = json.dumps([{"repo_id": str(uuid.uuid4()), "head": None}]).encode()
            signed = sign_headers(derive_key(TOKEN), "POST", "/v1/notify", small)
            reader, writer = await asyncio.open_connection(url.host, url.port)
            headers = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
            writer.write(f"POST /v1/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(small)}\r\n{headers}\r\n".encode() + small[:10])
            await writer.drain()
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408 ") and b"not received in time" in answer
            assert 0.9 < time.monotonic() - started < 5
        finally:
            await server.close()

    asyncio.run(scenario())
