"""The HTTP transport against a real primary (lab MariaDB + Seafile data written by the writer):
HttpSource returns exactly what LocalSource returns; bad requests get 4xx and no data; HTTPS; no secrets
in logs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import socket
import subprocess
import time
import uuid

import pytest

from seafbackup_agent.errors import InvalidIdError
from seafbackup_agent.seafile.ids import is_object_id
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.engine import SyncEngine
from seafbackup_agent.sync.result import SyncResult
from seafbackup_agent.sync.source import LocalSource
from seafbackup_agent.transport.ahead import AHEAD_BLOCK_BYTES
from seafbackup_agent.transport.client import HttpSource, parse_pack
from seafbackup_agent.transport.errors import (
    AuthenticationError,
    RemoteError,
    TLSError,
    UnreachableError,
)
from seafbackup_agent.transport.server import (
    MAX_PACK_IDS,
    create_primary_app,
    server_ssl_context,
    start_server,
)
from seafbackup_agent.transport.signing import (
    SIGNATURE_HEADER,
    SIGNATURE_INPUT_HEADER,
    derive_key,
    sign_headers,
)
from seafbackup_lab.writer import Delete, Put, Rename, bulk_files
from tests.seafile_checks import check_closure
from tests.signed_http import FAST, OTHER_TOKEN, TOKEN, past_start, raw_request


@contextlib.asynccontextmanager
async def serving(lab, token: str = TOKEN, ssl_context=None, **options):
    installation = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    app = create_primary_app(installation, token, **options)
    server = await start_server(app, ssl_context=ssl_context)
    await past_start(app)
    try:
        yield server, installation
    finally:
        await server.close()
        installation.close()



def populate(primary) -> dict[str, str]:
    """A library with history, a virtual repo of it, a history-limited library, a deleted one."""
    work = primary.create_library("work", "alice@example.com")
    primary.put_files(work, {"hello.txt": b"hello\n", "docs/a.md": b"# A\n" * 500, "shared/x.txt": b"x"})
    primary.commit(work, [Put("docs/big.bin", bytes(range(256)) * 1200), Put("ünïcödé/文件.txt", "grüße".encode())])
    primary.commit(work, [Rename("hello.txt", "docs/hello.txt"), Delete("docs/a.md")])
    vrepo = primary.create_virtual_repo(work, "shared", "shared", "bob@example.com")
    primary.commit(vrepo, [Put("z.txt", b"z" * 70_000)], modifier="bob@example.com")
    limited = primary.create_library("limited", "alice@example.com")
    primary.put_files(limited, {"l.txt": b"limited"})
    primary.set_history_limit(limited, 30)
    primary.set_valid_since(limited, 1_700_000_000)
    gone = primary.create_library("gone", "alice@example.com")
    primary.put_files(gone, {"g.txt": b"g"})
    gone_head = primary.head(gone)
    primary.delete_library(gone)
    return {"work": work, "vrepo": vrepo, "limited": limited, "gone": gone, "gone_head": gone_head}


async def _same_answers(http: HttpSource, local: LocalSource, data_dir, libs: dict[str, str]) -> int:
    listed = [item async for item in http.libraries()]
    assert listed == [item async for item in local.libraries()]
    assert {r for r, _ in listed} == {libs["work"], libs["vrepo"], libs["limited"]}
    checked = 0
    for repo_id, head in listed:
        meta = await http.library(repo_id)
        assert meta == await local.library(repo_id) and meta.head == head
        closure = check_closure(data_dir, repo_id, meta.store_id, head)
        for commit_id in closure.commits:
            assert await http.commit(repo_id, commit_id) == await local.commit(repo_id, commit_id) is not None
        wanted = [*sorted(closure.fs), "0" * 40, "f" * 40]
        fs = await http.fs_objects(meta.store_id, wanted)
        assert fs == await local.fs_objects(meta.store_id, wanted)
        assert set(fs) == closure.fs
        for block_id in closure.blocks:
            block = await http.block(meta.store_id, block_id)
            assert block == await local.block(meta.store_id, block_id) is not None
        wanted_blocks = [*sorted(closure.blocks), "b" * 40]
        packed = await http.blocks(meta.store_id, wanted_blocks)
        assert packed == await local.blocks(meta.store_id, wanted_blocks)
        assert set(packed) == closure.blocks
        checked += len(closure.commits) + len(closure.fs) + len(closure.blocks)
    assert (await http.library(libs["vrepo"])).store_id == libs["work"]
    assert (await http.library(libs["limited"])).truncate_time is not None
    # Missing things are None/absent on both sides, never errors.
    for source in (http, local):
        assert await source.library(libs["gone"]) is None
        assert await source.library(str(uuid.uuid4())) is None
        assert await source.commit(libs["work"], "a" * 40) is None
        assert await source.block(libs["work"], "b" * 40) is None
        assert await source.fs_objects(libs["work"], ["c" * 40]) == {}
        assert await source.blocks(libs["work"], ["b" * 40]) == {}
    # A deleted library's objects stay readable (Seafile keeps them in the trash).
    assert await http.commit(libs["gone"], libs["gone_head"]) is not None
    return checked


def test_http_source_returns_exactly_what_local_source_returns(primary, lab):
    libs = populate(primary)

    async def scenario():
        async with serving(lab) as (server, installation):
            local = LocalSource(installation)
            async with HttpSource(server.url, TOKEN, fs_batch=7) as http:  # small batches: many requests
                assert (await http.check())["role"] == "primary"
                return await _same_answers(http, local, lab.primary.seafile_data_dir, libs)

    assert asyncio.run(scenario()) > 30


def test_health_is_open_and_the_server_hides_its_version(primary, lab):
    async def scenario():
        async with serving(lab) as (server, _):
            status, body, headers = await raw_request(server.url, "GET", "/v1/health", signed=False)
            assert status == 200 and json.loads(body)["status"] == "ok" and not json.loads(body)["authenticated"]
            assert (await raw_request(server.url, "GET", "/v1/health", token=OTHER_TOKEN))[0] == 401
            assert headers["Server"] == "seafbackup"
            status, _, headers = await raw_request(server.url, "GET", "/v1/libraries", signed=False)
            assert status == 401 and headers["Server"] == "seafbackup"

    asyncio.run(scenario())


def test_forged_replayed_tampered_and_malformed_requests_get_4xx_and_no_data(primary, lab):
    repo = primary.create_library("secret data", "alice@example.com")
    secret = b"TOP-SECRET-CONTENT" * 100
    primary.put_files(repo, {"s.txt": secret})
    head = primary.head(repo)
    closure = check_closure(lab.primary.seafile_data_dir, repo, repo, head)
    block_id = next(iter(closure.blocks))
    fs_ids = sorted(closure.fs)
    commit_raw = primary.store.read(ObjType.COMMITS, repo, head)
    block_path = f"/v1/stores/{repo}/blocks/{block_id}"
    fs_path = f"/v1/stores/{repo}/fs"
    fs_body = json.dumps(fs_ids).encode()

    async def expect(url, status, method, path, **kwargs):
        got, body, _ = await raw_request(url, method, path, **kwargs)
        assert got == status, (method, path, kwargs.keys(), body)
        assert secret not in body and commit_raw not in body and head.encode() not in body
        assert all(f.encode() not in body for f in fs_ids)
        return json.loads(body)["error"] if body.startswith(b"{") else body.decode()

    async def scenario():
        async with serving(lab) as (server, _):
            url = server.url
            # The real thing works, and each of the following is a small change to it.
            ok, body, headers = await raw_request(url, "GET", block_path)
            assert ok == 200 and body == secret and int(headers["Content-Length"]) == len(secret)
            assert (await raw_request(url, "POST", fs_path, body=fs_body))[0] == 200

            assert "missing" in await expect(url, 401, "GET", block_path, signed=False)
            assert await expect(url, 401, "GET", block_path, token=OTHER_TOKEN) == "signature mismatch"
            forged = {SIGNATURE_HEADER: "seafbackup=:" + "A" * 43 + "=:"}
            assert await expect(url, 401, "GET", block_path, headers=forged) == "signature mismatch"
            other_block = f"/v1/stores/{repo}/blocks/{'e' * 40}"
            assert await expect(url, 401, "GET", block_path, sign_path=other_block) == "signature mismatch"
            assert await expect(url, 401, "GET", block_path, sign_method="POST") == "signature mismatch"
            assert await expect(url, 401, "GET", f"/v1/libraries/{repo}", sign_path="/v1/health") == (
                "signature mismatch"
            )
            tampered = json.dumps(fs_ids[:1]).encode()
            assert await expect(url, 401, "POST", fs_path, body=tampered, sign_body=fs_body) == "signature mismatch"
            assert "window" in await expect(url, 401, "GET", block_path, now=time.time() - 120)
            assert "window" in await expect(url, 401, "GET", block_path, now=time.time() + 120)

            replay = sign_headers(derive_key(TOKEN), "GET", block_path)
            assert (await raw_request(url, "GET", block_path, signed=False, headers=replay))[0] == 200
            assert "replayed" in await expect(url, 401, "GET", block_path, signed=False, headers=replay)
            # A replay with a fresh nonce but the old signature is a forgery.
            renonced = dict(replay, **{SIGNATURE_INPUT_HEADER: re.sub(
                r'nonce="[0-9a-f]+"', 'nonce="' + "1" * 32 + '"', replay[SIGNATURE_INPUT_HEADER])})
            assert await expect(url, 401, "GET", block_path, signed=False, headers=renonced) == "signature mismatch"

            # Signed but malformed: 400, never a file outside the store.
            for path in (
                f"/v1/stores/{repo.upper()}/blocks/{block_id}",
                f"/v1/stores/{repo}/blocks/{block_id.upper()}",
                f"/v1/stores/{repo}/blocks/{block_id}0",
                f"/v1/stores/%2e%2e/blocks/{block_id}",
                f"/v1/stores/{repo}/blocks/..%2f..%2f..%2fetc%2fpasswd",
                f"/v1/libraries/{repo}/commits/{head[:39]}",
                "/v1/libraries/not-a-library",
                f"/v1/libraries/{repo}?since={head.upper()}",
                f"/v1/libraries/{repo}?since=../../{head}",
                f"/v1/libraries/{repo}?since=",
            ):
                assert (await expect(url, 400, "GET", path)).startswith("malformed")
            blocks_path = f"/v1/stores/{repo}/blocks"
            for bad_body in (b"not json", b'{"a": 1}', json.dumps([head.upper()]).encode(), b'["../x"]', b"[1]"):
                await expect(url, 400, "POST", fs_path, body=bad_body)
                await expect(url, 400, "POST", blocks_path, body=bad_body)
            blocks_body = json.dumps([block_id]).encode()
            tampered = json.dumps([block_id, "e" * 40]).encode()
            assert await expect(url, 401, "POST", blocks_path, body=tampered, sign_body=blocks_body) == (
                "signature mismatch"
            )
            too_many = json.dumps(["a" * 40] * (MAX_PACK_IDS + 1)).encode()
            await expect(url, 400, "POST", fs_path, body=too_many)
            assert "too large" in await expect(url, 413, "POST", fs_path, body=b"[" + b" " * (2 << 20) + b"]")
            await expect(url, 404, "GET", "/v1/nothing-here")
            assert (await raw_request(url, "DELETE", block_path))[0] == 405

    asyncio.run(scenario())


def test_fs_batches_are_framed_like_pack_fs_and_end_with_a_count(primary, lab):
    repo = primary.create_library("pack", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a", "b/c.txt": b"c"})
    fs_ids = sorted(check_closure(lab.primary.seafile_data_dir, repo, repo, primary.head(repo)).fs)

    async def scenario():
        async with serving(lab) as (server, _):
            wanted = [*fs_ids, "d" * 40, fs_ids[0]]
            status, body, headers = await raw_request(
                server.url, "POST", f"/v1/stores/{repo}/fs", body=json.dumps(wanted).encode()
            )
            assert status == 200 and headers["Content-Type"] == "application/octet-stream"
            frames = parse_pack(body, set(wanted))
            assert set(frames) == set(fs_ids)
            first_id, first_len = body[:40].decode(), int.from_bytes(body[40:44], "big")
            assert first_id in fs_ids and first_len == len(frames[first_id])
            assert body[-44:] == b"0" * 40 + len(fs_ids).to_bytes(4, "big")
            with pytest.raises(Exception, match=r"end frame|ended early"):
                parse_pack(body[:-1], set(wanted))

    asyncio.run(scenario())


def test_a_big_block_streams_and_throughput(primary, lab):
    repo = primary.create_library("big", "alice@example.com")
    big = hashlib.sha256(b"seed").digest() * (48 * 1024 * 1024 // 32)
    big_id = hashlib.sha1(big).hexdigest()
    primary.store.write(ObjType.BLOCKS, repo, big_id, big, durable=False)
    bulk = primary.create_library("bulk", "alice@example.com")
    primary.commit(bulk, list(bulk_files(5000, 64)))
    fs_ids = sorted(check_closure(lab.primary.seafile_data_dir, bulk, bulk, primary.head(bulk)).fs)

    async def timed(coro):
        start = time.perf_counter()
        result = await coro
        return result, time.perf_counter() - start

    async def scenario():
        async with serving(lab) as (server, installation):
            local = LocalSource(installation)
            async with HttpSource(server.url, TOKEN) as http:
                status, _, headers = await raw_request(server.url, "GET", f"/v1/stores/{repo}/blocks/{big_id}")
                assert status == 200 and int(headers["Content-Length"]) == len(big)
                assert "chunked" not in headers.get("Transfer-Encoding", "")
                got, t_http = await timed(http.block(repo, big_id))
                assert got == big
                same, t_local = await timed(local.block(repo, big_id))
                assert same == big
                mib = len(big) / 2**20
                fs_http, f_http = await timed(http.fs_objects(bulk, fs_ids))
                fs_local, f_local = await timed(local.fs_objects(bulk, fs_ids))
                assert fs_http == fs_local and len(fs_http) == len(fs_ids)
                print(
                    f"\nblock {mib:.0f} MiB: http {mib / t_http:.0f} MiB/s, local {mib / t_local:.0f} MiB/s"
                    f"\nfs batch {len(fs_ids)} objects: http {len(fs_ids) / f_http:.0f}/s, "
                    f"local {len(fs_ids) / f_local:.0f}/s"
                )

    asyncio.run(scenario())


def test_the_library_list_streams_many_libraries(primary, lab):
    count = 100_000
    rows = [(f"{i:08x}-0000-4000-8000-{i:012x}",) for i in range(count)]
    with primary.db.cursor() as cur:
        cur.executemany("INSERT INTO Repo (repo_id) VALUES (%s)", rows)
        cur.executemany(
            "INSERT INTO Branch (name, repo_id, commit_id) VALUES ('master', %s, %s)",
            [(r, hashlib.sha1(r.encode()).hexdigest()) for (r,) in rows],
        )
    primary.db.commit()

    async def scenario():
        async with serving(lab) as (server, installation), HttpSource(server.url, TOKEN) as http:
            start = time.perf_counter()
            listed = [item async for item in http.libraries()]
            elapsed = time.perf_counter() - start
            assert listed == [item async for item in LocalSource(installation).libraries()]
            assert len(listed) == count and listed == sorted(listed)
            print(f"\nlibrary list: {count} libraries in {elapsed:.2f}s")
            # Stopping early releases the stream cleanly.
            async for _ in http.libraries():
                break

    asyncio.run(scenario())


def test_a_token_mismatch_is_named_as_such(primary, lab):
    async def scenario():
        async with serving(lab) as (server, _), HttpSource(server.url, OTHER_TOKEN, **FAST) as http:
            with pytest.raises(AuthenticationError, match="sync_token differs between primary and backup"):
                await http.check()
            with pytest.raises(AuthenticationError, match="sync_token differs between primary and backup"):
                await http.library(str(uuid.uuid4()))
            with pytest.raises(AuthenticationError):
                [item async for item in http.libraries()]
            with pytest.raises(InvalidIdError):
                await http.block("nope", "a" * 40)

    asyncio.run(scenario())


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=seafbackup test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_https_with_a_self_signed_certificate(primary, lab, tmp_path):
    repo = primary.create_library("tls", "alice@example.com")
    primary.put_files(repo, {"t.txt": b"over tls"})
    big = os.urandom(3 << 20)  # in several pieces: a TLS connection cannot take sendfile(2)
    big_id = hashlib.sha1(big).hexdigest()
    primary.store.write(ObjType.BLOCKS, repo, big_id, big, durable=False)
    cert, key = _self_signed(tmp_path)
    other_cert, _ = _self_signed(tmp_path / "..")

    async def scenario():
        async with serving(lab, ssl_context=server_ssl_context(cert, key)) as (server, installation):
            assert server.url.startswith("https://127.0.0.1:")
            async with HttpSource(server.url, TOKEN, ca_file=cert) as http:
                assert [r async for r, _ in http.libraries()] == [repo]
                meta = await http.library(repo)
                assert await http.commit(repo, meta.head) == await LocalSource(installation).commit(repo, meta.head)
                assert await http.block(repo, big_id) == big
            for ca_file in (None, other_cert):  # system CAs, or the wrong CA: refused at once, not retried
                async with HttpSource(server.url, TOKEN, ca_file=ca_file, retries=3, backoff=1) as http:
                    start = time.monotonic()
                    with pytest.raises(TLSError, match="HTTPS to the primary"):
                        await http.library(repo)
                    assert time.monotonic() - start < 1
            # Plain HTTP to the TLS port does not get data either.
            async with HttpSource(server.url.replace("https", "http"), TOKEN, **FAST) as http:
                with pytest.raises((UnreachableError, RemoteError)):
                    await http.library(repo)

    asyncio.run(scenario())


def test_the_token_never_reaches_the_logs(primary, lab, caplog):
    caplog.set_level(logging.DEBUG)
    repo = primary.create_library("logs", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})

    async def scenario():
        async with serving(lab) as (server, _):
            async with HttpSource(server.url, TOKEN, **FAST) as http:
                assert TOKEN not in repr(http)
                meta = await http.library(repo)
                await http.commit(repo, meta.head)
                [item async for item in http.libraries()]
            async with HttpSource(server.url, OTHER_TOKEN, **FAST) as http:
                with pytest.raises(AuthenticationError):
                    await http.library(repo)
            await raw_request(server.url, "GET", f"/v1/libraries/{repo}", signed=False)

    asyncio.run(scenario())
    text = caplog.text
    assert "seafbackup_agent.transport.access" in {r.name for r in caplog.records}
    assert "rejected GET" in text
    for secret in (TOKEN, OTHER_TOKEN, derive_key(TOKEN).hex(), derive_key(OTHER_TOKEN).hex()):
        assert secret not in text


def test_a_database_outage_is_a_503_and_the_client_says_so(lab):
    installation = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    conf = dataclasses.replace(
        installation.conf,
        database=dataclasses.replace(installation.conf.database, host="127.0.0.1", port=dead_port, unix_socket=None),
    )
    broken = dataclasses.replace(installation, conf=conf)

    async def scenario():
        app = create_primary_app(broken, TOKEN)
        server = await start_server(app)
        await past_start(app)
        try:
            status, body, _ = await raw_request(server.url, "GET", f"/v1/libraries/{uuid.uuid4()}")
            assert status == 503 and json.loads(body) == {"error": "database unavailable"}
            async with HttpSource(server.url, TOKEN, **FAST) as http:
                with pytest.raises(RemoteError, match="database unavailable"):
                    await http.library(str(uuid.uuid4()))
                with pytest.raises(RemoteError, match="database unavailable"):
                    [item async for item in http.libraries()]
        finally:
            await server.close()
            installation.close()

    asyncio.run(scenario())


def _run_logged_then_check(scenario, target, caplog, lab, primary, repo) -> None:
    """Runs `scenario` with the access log captured (what _sync_and_list_requests reads), closes the target, and
    checks that the library's closure at the primary's head is complete on the backup."""
    try:
        with caplog.at_level(logging.DEBUG, logger="seafbackup_agent.transport.access"):
            asyncio.run(scenario())
    finally:
        target.close()
    check_closure(lab.backup.seafile_data_dir, repo, repo, primary.head(repo))


async def _sync_and_list_requests(engine: SyncEngine, repo: str, caplog) -> tuple[SyncResult, list[str]]:
    """One sync of `repo`; the last path segment of each request it sent, from the primary's access log (DEBUG),
    with its query."""
    caplog.clear()
    result = await engine.sync_library(repo)
    lines = [r.getMessage().split('"')[1] for r in caplog.records if r.name.endswith("access")]
    return result, [line.split()[1].split("/")[-1] for line in lines]


def test_an_incremental_sync_over_http_costs_one_request(primary, lab, backup_db_privileges, caplog):
    """The backup says which head it has; the primary's answer brings the library's metadata, the new commit,
    every changed directory and file object of it and the new file's block: one request, not one per directory
    level, commit or block (nor the three of a metadata request, a tree diff and a pack of blocks)."""
    repo = primary.create_library("deep", "alice@example.com")
    primary.put_files(repo, {"a/b/c/d/old.txt": b"old", "a/b/other.txt": b"o", "top.txt": b"t"})
    old_root = json.loads(primary.store.read(ObjType.COMMITS, repo, primary.head(repo)))["root_id"]
    primary.commit(repo, [Put("a/b/c/d/new.txt", b"new file"), Put("a/b/c/d/new2.txt", b"second")])
    new_root = json.loads(primary.store.read(ObjType.COMMITS, repo, primary.head(repo)))["root_id"]
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    async def scenario():
        async with serving(lab) as (server, installation), HttpSource(server.url, TOKEN) as http:
            # The diff is exactly root, a, b, c, d and the two new file objects (old.txt and other.txt are not).
            changed = await http.changed_fs(repo, new_root, old_root, 1)
            assert len(changed.objects) == 7 and new_root in changed.objects and changed.complete
            assert changed == await LocalSource(installation).changed_fs(repo, new_root, old_root, 1)
            engine = SyncEngine(http, target)
            await engine.sync_library(repo)  # the first state (full copy) of the library...
            old_head = primary.head(repo)
            primary.commit(repo, [Put("a/b/c/d/newer.txt", b"newer")])
            result, requests = await _sync_and_list_requests(engine, repo, caplog)  # ...then one more commit
            assert (result.commits, result.fs_objects, result.blocks) == (1, 6, 1)
            assert requests == [f"{repo}?since={old_head}"], requests

    _run_logged_then_check(scenario, target, caplog, lab, primary, repo)


def test_several_commits_since_the_backups_head_still_cost_one_request(primary, lab, backup_db_privileges, caplog):
    """A burst of commits between two syncs (an upload of many files) comes in the same one answer: every commit
    back to the backup's head, each one's changed fs objects, the new files' blocks."""
    repo = primary.create_library("burst", "alice@example.com")
    primary.put_files(repo, {"docs/a.txt": b"a", "photos/b.jpg": b"b"})
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    async def scenario():
        async with serving(lab) as (server, _installation), HttpSource(server.url, TOKEN) as http:
            engine = SyncEngine(http, target)
            await engine.sync_library(repo)
            for i in range(5):
                primary.commit(repo, [Put(f"docs/{i}/new.txt", f"burst {i}".encode()), Put("photos/b.jpg", bytes([i]))])
            result, requests = await _sync_and_list_requests(engine, repo, caplog)
            assert (result.commits, result.blocks) == (5, 10)
            assert len(requests) == 1 and requests[0].startswith(f"{repo}?since="), requests

    _run_logged_then_check(scenario, target, caplog, lab, primary, repo)


def test_a_change_larger_than_what_rides_along_fetches_its_blocks_on_their_own(primary, lab, backup_db_privileges,
                                                                               caplog):
    """Blocks ride with the library's answer only up to AHEAD_BLOCK_BYTES: a larger file's blocks come in the
    engine's own block requests (its byte budget applies), the tree still in the one answer."""
    repo = primary.create_library("large", "alice@example.com")
    primary.put_files(repo, {"small.txt": b"s"})
    big = random.Random(7).randbytes(AHEAD_BLOCK_BYTES + 1)
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    async def scenario():
        async with serving(lab) as (server, _installation), HttpSource(server.url, TOKEN) as http:
            engine = SyncEngine(http, target)
            await engine.sync_library(repo)
            primary.commit(repo, [Put("big.bin", big), Put("small2.txt", b"s2")])
            result, requests = await _sync_and_list_requests(engine, repo, caplog)
            assert result.commits == 1 and result.bytes > len(big)
            assert requests[0].startswith(f"{repo}?since=") and "fs-diff" not in requests, requests
            # The large file's blocks, each on its own (a multi-block file's); small2.txt's block rode along.
            assert len(requests) - 1 == result.blocks - 1 and all(map(is_object_id, requests[1:])), requests

    _run_logged_then_check(scenario, target, caplog, lab, primary, repo)


def test_the_first_commit_of_a_library_created_empty_costs_one_request(primary, lab, backup_db_privileges, caplog):
    """A library's first commit has the empty tree as its parent's: its whole tree rides with the library's
    answer too, and its small blocks."""
    repo = primary.create_library("fresh", "alice@example.com")
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    async def scenario():
        async with serving(lab) as (server, _installation), HttpSource(server.url, TOKEN) as http:
            engine = SyncEngine(http, target)
            await engine.sync_library(repo)  # the library as created: one commit, empty tree
            primary.commit(repo, [Put("a/b/c/first.txt", b"first"), Put("a/b/c/second.txt", b"second")])
            result, requests = await _sync_and_list_requests(engine, repo, caplog)
            assert (result.commits, result.fs_objects, result.blocks) == (1, 6, 2)
            assert len(requests) == 1 and requests[0].startswith(f"{repo}?since="), requests

    _run_logged_then_check(scenario, target, caplog, lab, primary, repo)


def test_a_first_sync_of_many_small_directories_costs_a_request_per_level(primary, lab, backup_db_privileges, caplog):
    """Sibling directories copied side by side ask for their children, then for their small blocks, in merged
    requests: a round trip per level of the tree (and per full request), not one or two per directory, which
    over a WAN link is what a first sync of many small directories waits for."""
    repo = primary.create_library("wide", "alice@example.com")
    primary.commit(repo, [Put(f"top/d{i:02d}/f{j}.txt", f"{i}-{j}".encode()) for i in range(30) for j in range(3)])
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    async def scenario():
        async with serving(lab) as (server, _installation), HttpSource(server.url, TOKEN) as http:
            result, requests = await _sync_and_list_requests(SyncEngine(http, target), repo, caplog)
            assert (result.fs_objects, result.blocks) == (2 + 30 + 90, 90)
            # Library (with its head commit), the creation commit, then the root, "top", its 30 directories, their
            # 90 file objects at once, and the 90 blocks in one pack (copied a directory at a time: 65 requests).
            assert requests[0] == repo and requests[2:] == ["fs", "fs", "fs", "fs", "blocks"], requests

    _run_logged_then_check(scenario, target, caplog, lab, primary, repo)
