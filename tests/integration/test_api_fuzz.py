"""The agents' HTTP API against its description (docs/api/openapi.yaml): the description lists exactly the
routes the applications register, and a bounded fuzz run of a real primary agent (signed and valid requests,
unsigned, forged, tampered, stale and replayed ones, garbled headers, ids and bodies) gets only the statuses
the description documents for each operation (never a 5xx other than its documented 503s), JSON answers
that match their schemas, and leaves the agent alive and answering a signed health check."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.transport.server import create_backup_app, create_primary_app
from seafbackup_agent.transport.signing import SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER, derive_key, sign_headers
from seafbackup_lab.lab import LAB_SYNC_TOKEN
from tests.agents import primary_url, wait_ready

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs/api/openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
MAX_EXAMPLES = 800
"""About 30 s of requests against the lab's primary agent (replays send two, signing and the database cost most)."""


def _described_routes(side: str) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in SPEC["paths"].items() for method, op in item.items()
            if side in op["tags"]}


def _registered_routes(app) -> set[tuple[str, str]]:
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}


def test_the_openapi_description_lists_exactly_the_routes_the_agents_register(lab):
    installation = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    try:
        primary = create_primary_app(installation, LAB_SYNC_TOKEN, heartbeat=dict)
    finally:
        installation.close()

    async def on_notify(repo_id: str, head: str | None) -> None:
        return None

    backup = create_backup_app(LAB_SYNC_TOKEN, on_notify)
    assert _registered_routes(primary) == _described_routes("primary")
    assert _registered_routes(backup) == _described_routes("backup")


# --- the fuzz run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    statuses: frozenset[int]
    json_schemas: dict[int, dict] = field(repr=False)
    """The JSON schema of each status whose answer is JSON (resolvable against the description)."""


def _deref(node: dict) -> dict:
    """`node` with a top-level $ref into the description followed."""
    while "$ref" in node:
        target = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _operations() -> list[Operation]:
    ops = []
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if "primary" not in op["tags"]:
                continue
            schemas = {}
            for status, response in op["responses"].items():
                content = _deref(response).get("content", {})
                if "application/json" in content:
                    schemas[int(status)] = {**content["application/json"]["schema"], "components": SPEC["components"]}
            ops.append(Operation(method.upper(), path, frozenset(int(s) for s in op["responses"]), schemas))
    return ops


OPERATIONS = _operations()
ERROR_SCHEMA = {**SPEC["components"]["schemas"]["Error"], "properties": {"error": {"type": "string", "minLength": 1}}}
UNROUTED_STATUSES = frozenset({401, 404, 405, 413, 503})
"""Any path or method the API does not have: refused unsigned, not found (or not allowed) when signed."""


@dataclass(frozen=True)
class Known:
    """Real ids of the lab's primary, so that signed requests also reach the handlers' success paths."""

    repo: str
    commits: tuple[str, ...]
    fs: tuple[str, ...]
    blocks: tuple[str, ...]


def _known_ids(primary, lab) -> Known:
    repo = primary.create_library("fuzzed", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a" * 100, "d/b.bin": bytes(range(256)) * 40})
    installation = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    try:
        store = installation.store
        return Known(repo, *(tuple(store.iter_ids(kind, repo)) for kind in (ObjType.COMMITS, ObjType.FS,
                                                                              ObjType.BLOCKS)))
    finally:
        installation.close()


HEX = "0123456789abcdef"
GARBLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
"""Header values a client can send (printable ASCII)."""
PATH_TEXT = st.text(st.characters(blacklist_characters="/?#%", blacklist_categories=("Cs",)), min_size=1,
                    max_size=50).filter(lambda s: s not in (".", ".."))
"""Path segments that keep the request on its route (percent-encoded before sending)."""


def _ids(known: Known):
    random_id = st.text(st.sampled_from(HEX), min_size=40, max_size=40)
    repo_id = st.one_of(st.just(known.repo), st.uuids().map(str), PATH_TEXT)
    object_id = st.one_of(st.sampled_from(known.commits + known.fs + known.blocks), random_id, PATH_TEXT)
    return repo_id, object_id, random_id


def _json_values():
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                        lambda children: st.lists(children, max_size=5)
                        | st.dictionaries(st.text(max_size=8), children, max_size=5), max_leaves=20)


def _body(template: str, known: Known, object_id):
    if template.endswith("/fs-diff"):
        valid = st.fixed_dictionaries({"new": object_id, "old": object_id, "version": st.sampled_from([0, 1, 2])})
    else:
        valid = st.lists(object_id, max_size=20)
    return st.one_of(
        valid.map(lambda doc: json.dumps(doc).encode()),
        _json_values().map(lambda doc: json.dumps(doc).encode()),
        st.binary(max_size=300),
        st.integers(4000, 6000).map(lambda n: b"[" + b" " * n + b"]"),  # over fs-diff's 4 KiB
    )


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    auth: str
    garbled: tuple[str, str] | None
    operation: Operation | None = field(repr=False)


AUTH = ["signed", "signed", "signed", "unsigned", "other-token", "tampered-body", "stale", "future", "replayed",
        "garbled"]


@st.composite
def requests(draw, known: Known) -> Request:
    repo_id, object_id, _ = _ids(known)
    auth = draw(st.sampled_from(AUTH))
    garbled = None
    if auth == "garbled":
        garbled = (draw(st.sampled_from([SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER, "Content-Digest"])), draw(GARBLE))
    if draw(st.integers(0, 9)) == 0:  # a path or method the API does not have
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
        segments = draw(st.lists(PATH_TEXT, min_size=1, max_size=4))
        path = "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
        return Request(method, path, b"", auth, garbled, None)
    op = draw(st.sampled_from(OPERATIONS))
    values = {"repo_id": repo_id, "store_id": repo_id, "commit_id": object_id, "block_id": object_id}
    path = op.template
    for name, strategy in values.items():
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", urllib.parse.quote(draw(strategy), safe=""))
    body = draw(_body(op.template, known, object_id)) if op.method == "POST" else b""
    return Request(op.method, path, body, auth, garbled, op)


def _headers(request: Request) -> list[dict[str, str]]:
    """The header sets to send, in order (two for a replay)."""
    key, method, path, body = derive_key(LAB_SYNC_TOKEN), request.method, request.path, request.body
    match request.auth:
        case "unsigned":
            return [{}]
        case "other-token":
            return [sign_headers(derive_key("0bad0bad" * 5), method, path, body)]
        case "tampered-body":
            return [sign_headers(key, method, path, body + b" ")]
        case "stale":
            return [sign_headers(key, method, path, body, now=time.time() - 3600)]
        case "future":
            return [sign_headers(key, method, path, body, now=time.time() + 3600)]
        case "replayed":
            signed = sign_headers(key, method, path, body)
            return [signed, signed]
        case "garbled":
            name, value = request.garbled  # type: ignore[misc]
            return [{**sign_headers(key, method, path, body), name: value}]
    return [sign_headers(key, method, path, body, nonce=uuid.uuid4().hex)]


def _send(host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes):
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def _check(request: Request, status: int, content_type: str, body: bytes) -> None:
    where = f"{request.method} {request.path} ({request.auth}, body {request.body[:80]!r}) -> {status} {body[:200]!r}"
    if status == 503:
        reason = json.loads(body)["error"]
        assert reason in ("database unavailable", "signed before this agent started") or "replay" in reason, where
    documented = UNROUTED_STATUSES if request.operation is None else request.operation.statuses
    assert status in documented, where
    open_probe = request.operation is not None and request.operation.template == "/v1/health"
    if request.auth not in ("signed", "replayed") and not (request.auth == "unsigned" and open_probe):
        assert status >= 400, where
    if status >= 400:  # every refusal says why, in the form the clients parse
        assert content_type.startswith("application/json"), where
        jsonschema.validate(json.loads(body), ERROR_SCHEMA)
    if request.operation is not None and status in request.operation.json_schemas:
        assert content_type.startswith("application/json"), where
        jsonschema.validate(json.loads(body), request.operation.json_schemas[status])


def test_a_fuzz_run_of_the_primary_agent_gets_only_documented_answers(primary, lab, agents):
    known = _known_ids(primary, lab)
    agents.start("primary")
    url = primary_url(lab)
    wait_ready(url)
    host, port = lab.primary.address, 8090
    pid = agents.procs["primary"].pid
    seen: dict[int, int] = {}
    started = time.monotonic()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(requests(known))
    def fuzz(request: Request) -> None:
        answers = [_send(host, port, request.method, request.path, headers, request.body)
                   for headers in _headers(request)]
        for status, content_type, body in answers:
            seen[status] = seen.get(status, 0) + 1
            _check(request, status, content_type, body)
        if request.auth == "replayed" and answers[0][0] != 413:  # a body too large is refused before the signature
            assert answers[1][0] == 401, answers

    fuzz()
    elapsed = time.monotonic() - started
    print(f"\n{sum(seen.values())} requests in {elapsed:.1f}s, statuses {dict(sorted(seen.items()))}")
    assert agents.procs["primary"].poll() is None and agents.procs["primary"].pid == pid, agents.log("primary")
    key = derive_key(LAB_SYNC_TOKEN)
    status, _, body = _send(host, port, "GET", "/v1/health", sign_headers(key, "GET", "/v1/health"), b"")
    assert status == 200 and json.loads(body)["authenticated"] is True
    assert seen.get(200, 0) >= MAX_EXAMPLES // 20  # the run reached the handlers, not only the signature check
    assert "Traceback" not in agents.log("primary")
