"""Hostile traffic against real agent processes: forged and stalled uploads cost the primary neither memory
nor connections, a request captured before a restart is refused after it, and a man in the middle who
changes an answer gets nothing published."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from seafbackup_agent.transport.client import HttpSource
from seafbackup_agent.transport.signing import SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER, derive_key, sign_headers
from seafbackup_lab.lab import LAB_SYNC_TOKEN
from seafbackup_lab.writer import Put
from tests.agents import backup_head, primary_url, wait_ready

FORGED = {
    "Content-Digest": "sha-256=:" + "A" * 43 + "=:",
    SIGNATURE_INPUT_HEADER: 'seafbackup=("@method" "@request-target" "content-digest");created={now};'
                            'keyid="sync-token";alg="hmac-sha256";nonce="{nonce}";tag="seafbackup-request"',
    SIGNATURE_HEADER: "seafbackup=:" + "A" * 43 + "=:",
}


def _forged_headers() -> str:
    lines = [f"{name}: {value.format(now=int(time.time()), nonce=uuid.uuid4().hex)}" for name, value in FORGED.items()]
    return "\r\n".join(lines)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _forged_upload(host: str, port: int, path: str, body: bytes) -> int | None:
    """One POST with a forged signature and the whole body; the status, or None when cut off."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n{_forged_headers()}\r\n\r\n".encode())
        try:
            writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass  # the server answered and closed without reading the rest: what it should do
        line = await reader.readline()
        return int(line.split()[1]) if line else None
    except ConnectionError:
        return None
    finally:
        writer.close()


async def _stalled_upload(host: str, port: int, path: str, forged: bool) -> tuple[float, bytes]:
    """Headers announcing a 1,000,000-byte body, then nothing: (seconds until the server closed, answer)."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    signature = f"{_forged_headers()}\r\n" if forged else ""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 1000000\r\n{signature}\r\n".encode())
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
    except ConnectionError:
        answer = b""
    except TimeoutError:
        answer = b"still open after 10 s"
    writer.close()
    return time.monotonic() - started, answer


def test_forged_and_stalled_uploads_leave_the_primarys_memory_and_connections_bounded(primary, lab, agents):
    repo = primary.create_library("still served", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    agents.start("primary")
    url = primary_url(lab)
    wait_ready(url)
    pid = agents.procs["primary"].pid
    host, port = lab.primary.address, 8090
    fs_path = f"/v1/stores/{repo}/fs"
    body = b"[" + b'"' + b"a" * 40 + b'",' + b" " * 1_000_000 + b'"' + b"b" * 40 + b'"]'  # ~1 MiB of JSON

    peak = {"rss": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak["rss"] = max(peak["rss"], _rss_kib(pid))
            time.sleep(0.01)

    async def flood() -> tuple[list, list, list]:
        async with HttpSource(url, LAB_SYNC_TOKEN) as http:
            await http.check()
            assert [r async for r, _ in http.libraries()] == [repo]  # warm: the baseline includes one list
            baseline = _rss_kib(pid)
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                stalled = [asyncio.ensure_future(_stalled_upload(host, port, fs_path, forged=i % 2 == 0))
                           for i in range(200)]
                statuses: list[int | None] = []
                served: list[str] = []
                for _ in range(2):  # 500 forged uploads, 250 at a time, as in the fault drill
                    batch = [_forged_upload(host, port, fs_path, body) for _ in range(250)]
                    listing = asyncio.ensure_future(http.libraries().__anext__())
                    statuses += await asyncio.gather(*batch)
                    served.append((await listing)[0])  # a valid signed request is served meanwhile
                closed = await asyncio.gather(*stalled)
            finally:
                sampling.set()
                sampler.join()
            return statuses, served, [(baseline, peak["rss"]), *closed]

    statuses, served, [(baseline, peak_rss), *closed] = asyncio.run(flood())
    growth_mib = (peak_rss - baseline) / 1024
    slowest = max(seconds for seconds, _ in closed)
    print(f"\nprimary agent RSS {baseline / 1024:.0f} MiB, peak {peak_rss / 1024:.0f} MiB during 500 forged "
          f"1 MiB uploads and 200 stalled ones (+{growth_mib:.1f} MiB); stalled connections closed after "
          f"{slowest:.2f}s at most")
    assert len(statuses) == 500 and set(statuses) <= {401, None} and statuses.count(401) >= 250, statuses
    assert served == [repo, repo]
    assert growth_mib <= 20
    assert slowest < 5
    assert all(answer.startswith(b"HTTP/1.1 401 ") for _, answer in closed)


def test_a_request_captured_before_a_restart_is_refused_after_it(primary, lab, agents):
    repo = primary.create_library("replayed", "alice@example.com")
    agents.start("primary")
    url = primary_url(lab)
    wait_ready(url)
    path = f"/v1/libraries/{repo}"
    captured = sign_headers(derive_key(LAB_SYNC_TOKEN), "GET", path)

    async def send(headers: dict[str, str]) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.get(URL(url + path, encoded=True),
                                                                   headers=headers) as response:
            return response.status, await response.read()

    assert asyncio.run(send(captured))[0] == 200
    assert asyncio.run(send(captured))[0] == 401  # replayed, same instance
    agents.stop("primary")
    agents.start("primary")
    wait_ready(url)
    status, answer = asyncio.run(send(captured))  # within the window, the new instance's cache is empty
    assert status == 503 and b"signed before this agent started" in answer, (status, answer)
    assert asyncio.run(send(sign_headers(derive_key(LAB_SYNC_TOKEN), "GET", path)))[0] == 200


@pytest.fixture
def tampering_proxy(lab):
    """A tiny real HTTP proxy in front of the primary agent that replaces one head by another in every
    answer (the library list, the metadata and its head commit), keeping the primary's signature headers."""
    swap: dict[str, str] = {}
    target = primary_url(lab)
    started = threading.Event()
    state: dict = {}

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, URL(target + request.raw_path, encoded=True), headers=headers,
            data=await request.read() or None,
        ) as answer:
            body = await answer.read()
            for real, forged in swap.items():
                body = body.replace(real.encode(), forged.encode())
                if answer.content_type == "application/json" and b"head_commit" in body:
                    doc = json.loads(body)
                    doc.pop("head_commit", None)  # a careful forger: no head commit that would not match
                    body = json.dumps(doc).encode()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "server", "date")}
            return web.Response(status=answer.status, body=body, headers=kept)

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=1 << 22)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, lab.backup.address, 0)
        loop.run_until_complete(site.start())
        state["port"] = runner.addresses[0][1]
        state["loop"] = loop
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    yield f"http://{lab.backup.address}:{state['port']}", swap
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(10)


def test_a_head_changed_on_the_way_is_refused_and_never_published(primary, lab, agents, tampering_proxy):
    proxy_url, swap = tampering_proxy
    repo = primary.create_library("tampered", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"first"})
    old_head = primary.head(repo)
    new_head = primary.commit(repo, [Put("a.txt", b"second")])
    swap[new_head] = old_head  # the man in the middle rolls the library back to its first commit
    conf = lab.backup.seafile_conf_dir / "seafile.conf"
    conf.write_text(conf.read_text().replace(primary_url(lab), proxy_url))
    agents.start("primary")
    wait_ready(primary_url(lab))
    agents.start("backup")
    deadline = time.monotonic() + 30
    reason = ""
    while time.monotonic() < deadline and "failed authentication" not in reason and not backup_head(lab, repo):
        doc = agents.status()
        reason = next((lib.get("reason") or "" for lib in doc["libraries"] if lib["repo_id"] == repo), "")
        reason = reason or agents.log("backup")
        time.sleep(0.2)
    assert backup_head(lab, repo) is None  # nothing published: neither the forged head nor any other
    assert "failed authentication" in reason, agents.log("backup")[-3000:]
