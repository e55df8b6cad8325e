"""The backup agent's local control API on a unix socket (0600): what `seaf-backup-cmd` talks to.

Access is the socket file's permission, as for a database's local socket; nothing listens on the
network for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from seafbackup_agent.seafile.ids import is_repo_id
from seafbackup_agent.service.backup import BackupService
from seafbackup_agent.service.contact import PrimaryContact
from seafbackup_agent.service.freshness import PairingState
from seafbackup_agent.service.pairing import PrimaryPairing
from seafbackup_agent.service.state import LibraryState

SERVICE = web.AppKey("service", BackupService)
CONTACT = web.AppKey("contact", PrimaryContact)
PAIRING = web.AppKey("pairing", PrimaryPairing)
UNKNOWN = "unknown"
"""The state shown instead of "synchronized" while the pairing is stale: no evidence backs the claim."""


def status_document(service: BackupService, contact: PrimaryContact | None = None) -> dict:
    fresh = service.freshness.snapshot()
    known = fresh.state is PairingState.OK
    counts = {state.value: 0 for state in LibraryState} | {UNKNOWN: 0}
    libraries = []
    for lib in service.state.all():
        doc = asdict(lib)
        doc["behind"] = lib.state is not LibraryState.SYNCHRONIZED or service.freshness.is_outstanding(lib.repo_id)
        if lib.state is LibraryState.SYNCHRONIZED and not known:
            doc["last_known_state"] = doc["state"]
            doc["state"] = UNKNOWN
            doc["unknown_since"] = fresh.since
        counts[doc["state"]] += 1
        libraries.append(doc)
    pairing = fresh.as_dict()
    pairing["db_lag"] = contact.db_lag_doc() if contact is not None else None
    nodes = contact.nodes_doc() if contact is not None else None
    pairing["primary_nodes"] = nodes
    pairing["primary_node"] = next((node["url"] for node in nodes or [] if node["in_use"]), None)
    return {
        "mode": "backup",
        "healthy": known and counts[LibraryState.FAILED.value] == 0,
        "pairing": pairing,
        "total": len(libraries),
        "counts": counts,
        "queue_depth": len(service._queued),
        "notifications": {"received": service.notifications_received, "redundant": service.notifications_redundant},
        "last_poll": service.last_poll,
        "last_poll_error": service.last_poll_error,
        "libraries": libraries,
        "progress": service.progress.document(),
    }


async def _status(request: web.Request) -> web.Response:
    doc = status_document(request.app[SERVICE], request.app.get(CONTACT))
    return web.json_response(doc, dumps=lambda d: json.dumps(d, default=str))


async def _freshness(request: web.Request) -> web.Response:
    """Only the pairing and its freshness: cheap enough to sample many times a second (no library scan)."""
    return web.json_response(request.app[SERVICE].freshness.snapshot().as_dict())


async def _sync(request: web.Request) -> web.Response:
    try:
        doc = await request.json()
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    repo_id = doc.get("repo_id") if isinstance(doc, dict) else None
    if not is_repo_id(repo_id):
        return web.json_response({"error": f"malformed library id: {repo_id!r}"}, status=400)
    outcome = await request.app[SERVICE].sync_now(repo_id, force=bool(doc.get("force")))
    return web.json_response(outcome, status=200 if outcome["ok"] else 409)


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.update_gauges()
    body = generate_latest(service.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"status": "ok", "mode": "backup", "first_poll_done": service.first_poll_done.is_set()})


def create_control_app(service: BackupService, contact: PrimaryContact | None = None) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    if contact is not None:
        app[CONTACT] = contact
    app.router.add_get("/status", _status)
    app.router.add_get("/freshness", _freshness)
    app.router.add_post("/sync", _sync)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    return app


def create_metrics_app(service: BackupService) -> web.Application:
    """`/metrics` and `/health` for Prometheus over TCP (`[backup] metrics_listen`)."""
    app = web.Application()
    app[SERVICE] = service
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    return app


def create_primary_control_app(pairing: PrimaryPairing) -> web.Application:
    """The primary agent's control socket: `status` there (is the backup reachable, what is waiting)."""

    async def _primary_status(request: web.Request) -> web.Response:
        return web.json_response(request.app[PAIRING].status())

    app = web.Application()
    app[PAIRING] = pairing
    app.router.add_get("/status", _primary_status)
    return app


def create_primary_metrics_app(pairing: PrimaryPairing) -> web.Application:
    """`/metrics` of the primary agent (`[backup] metrics_listen`): notifications, pairing, change detection."""

    async def _primary_metrics(request: web.Request) -> web.Response:
        pairing.update_gauges()
        body = generate_latest(pairing.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", _primary_metrics)
    return app
