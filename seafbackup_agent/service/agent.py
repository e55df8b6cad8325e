"""`seaf-backup-cmd agent`: one service, two modes chosen from seafile.conf's `[backup]` section."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from seafbackup_agent import __version__
from seafbackup_agent.config import SeafileConf, load_seafile_conf
from seafbackup_agent.errors import ConfigError
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.staging import staging_bases, sweep_dead
from seafbackup_agent.service.backup import BackupOptions, BackupService
from seafbackup_agent.service.contact import PrimaryContact
from seafbackup_agent.service.control import (
    create_control_app,
    create_metrics_app,
    create_primary_control_app,
    create_primary_metrics_app,
)
from seafbackup_agent.service.heartbeat import Coverage, DbHeartbeat, ProblemBoard, new_instance_id
from seafbackup_agent.service.metrics import AgentMetrics
from seafbackup_agent.service.pairing import PrimaryPairing
from seafbackup_agent.service.primary import Notifier
from seafbackup_agent.service.state import StateStore
from seafbackup_agent.transport.client import HttpSource, NotifyClient
from seafbackup_agent.transport.server import (
    create_backup_app,
    create_primary_app,
    server_ssl_context,
    start_server,
)

log = logging.getLogger(__name__)

CONTROL_SOCKET = "agent.sock"
THREADS = 32
GIL_SWITCH_SECONDS = 0.0005
"""How long a thread holding the GIL keeps it while another waits (Python's default: 5 ms). The agent's threads
make a blocking system call or more per object (open, read or write, close), each giving the GIL up; coming back,
a thread waited behind the event loop's thread for up to the whole interval, object after object."""


def control_socket_path(conf: SeafileConf) -> Path:
    assert conf.backup is not None
    return conf.backup.state_dir / CONTROL_SOCKET


def _server_ssl(conf: SeafileConf) -> ssl.SSLContext | None:
    assert conf.backup is not None
    if conf.backup.ssl_cert and conf.backup.ssl_key:
        return server_ssl_context(str(conf.backup.ssl_cert), str(conf.backup.ssl_key))
    return None


def _client_options(conf: SeafileConf) -> dict:
    assert conf.backup is not None
    return {"ca_file": str(conf.backup.ssl_ca_file)} if conf.backup.ssl_ca_file else {}


def _started() -> str:
    return f"seafbackup {__version__} agent started"


def _install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _serve_control(app: web.Application, socket_path: Path) -> web.AppRunner:
    """The local control API on a unix socket that only this user can open (0600)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)
    try:
        await web.UnixSite(runner, str(socket_path)).start()
    finally:
        os.umask(old_umask)
    return runner


async def run_primary(conf: SeafileConf, installation: SeafileInstallation, stop: asyncio.Event) -> None:
    # Here, not at the top: the binlog reader (python-mysql-replication) is the primary's alone, and importing it
    # costs a backup agent's start about 0.1 s of CPU.
    from seafbackup_agent.service.binlog import BinlogChangeDetector, default_server_id

    assert conf.backup is not None
    settings = conf.backup
    metrics = AgentMetrics(backup=False)
    coverage = Coverage()
    problems = ProblemBoard()
    notify = NotifyClient.from_conf(conf, **_client_options(conf))
    notifier = Notifier(notify.notify, metrics, coverage, problems)
    server_id = settings.binlog_server_id or default_server_id()
    detector = BinlogChangeDetector(conf.database, lambda: SeafileInstallation.open_rows(conf), server_id=server_id,
                                    on_kind=metrics.set_change_detector, coverage=coverage)
    instance = new_instance_id()
    pairing = PrimaryPairing(
        notifier=notifier, coverage=coverage, problems=problems, detector=detector,
        backup=_NoRetryCheck(notify), metrics=metrics, interval=settings.heartbeat_interval,
        db_heartbeat=DbHeartbeat(conf.database, settings.heartbeat_database, instance,
                                 interval=settings.heartbeat_interval, metrics=metrics),
        backup_url=str(settings.backup_url))
    host, port = settings.listen
    server = await start_server(create_primary_app(installation, settings.sync_token, heartbeat=pairing.heartbeat),
                                host, port, ssl_context=_server_ssl(conf))
    socket_path = control_socket_path(conf)
    control = await _serve_control(create_primary_control_app(pairing), socket_path)
    metrics_server = None
    if settings.metrics_listen:
        metrics_server = await start_server(create_primary_metrics_app(pairing), *settings.metrics_listen)
    log.info("%s: mode primary, peer (backup) %s, change detection binlog (server id %d; information_schema "
             "polling if the binlog cannot be read), listening on %s, metrics %s, control socket %s, instance %s",
             _started(), settings.backup_url, server_id, server.url, metrics_server.url if metrics_server else "off",
             socket_path, instance)
    try:
        await asyncio.gather(detector.run(stop, notifier.changed), notifier.run(stop), pairing.run(stop))
    finally:
        await notify.close()
        await server.close()
        await control.cleanup()
        socket_path.unlink(missing_ok=True)
        if metrics_server:
            await metrics_server.close()


class _NoRetryCheck:
    """The pairing's periodic check of the backup: one attempt each time (the loop itself retries)."""

    def __init__(self, client: NotifyClient) -> None:
        self.client = client

    async def check(self) -> dict:
        return await self.client.check(retries=0)


async def run_backup(conf: SeafileConf, installation: SeafileInstallation, stop: asyncio.Event) -> None:
    assert conf.backup is not None
    settings = conf.backup
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for base in staging_bases(installation.data_dir / "storage"):  # what killed runs left, before anything else
        removed = await asyncio.to_thread(sweep_dead, base)
        if removed:
            log.info("removed %d staging directories of earlier runs from %s", removed, base)
    state = StateStore(settings.state_dir / "state.sqlite")
    metrics = AgentMetrics()
    source = HttpSource.from_conf(conf, **_client_options(conf))
    metrics.count_primary_requests(lambda: source.requests_sent)
    data_dir = installation.data_dir
    service = BackupService(
        source,
        lambda: SeafileInstallation.open(conf.path.parent, data_dir),
        state,
        metrics,
        BackupOptions(workers=settings.workers, poll_interval_hours=settings.sync_poll_interval_hours,
                      stale_after=settings.stale_after),
    )
    contact = PrimaryContact(source.heartbeat, service.freshness, metrics, interval=settings.heartbeat_interval,
                             request_poll=service.request_poll, database=conf.database,
                             marker_database=settings.heartbeat_database, nodes=source.nodes_doc,
                             probe_nodes=source.probe_nodes)
    host, port = settings.listen
    notify_server = await start_server(create_backup_app(settings.sync_token, service.notified), host, port,
                                       ssl_context=_server_ssl(conf))
    socket_path = control_socket_path(conf)
    control = await _serve_control(create_control_app(service, contact), socket_path)
    metrics_server = None
    if settings.metrics_listen:
        metrics_server = await start_server(create_metrics_app(service), *settings.metrics_listen)
    log.info("%s: mode backup, peer (primary) %s, change detection notifications from the primary and a full poll "
             "every %g h, listening on %s, metrics %s, control socket %s, %d workers", _started(),
             ", ".join(settings.primary_urls), settings.sync_poll_interval_hours, notify_server.url,
             metrics_server.url if metrics_server else "off", socket_path, settings.workers)
    try:
        await asyncio.gather(service.run(stop), contact.run(stop))
    finally:
        await notify_server.close()
        await control.cleanup()
        if metrics_server:
            await metrics_server.close()
        await source.close()
        state.close()
        socket_path.unlink(missing_ok=True)


async def run_agent(conf_dir: Path, data_dir: Path) -> int:
    conf = load_seafile_conf(conf_dir)
    if conf.backup is None:
        raise ConfigError(f"{conf.path} has no [backup] section", hint="run setup_backup.yml to pair the hosts")
    installation = SeafileInstallation.open(conf_dir, data_dir)
    if not os.access(data_dir / "storage", os.R_OK) and (data_dir / "storage").exists():
        raise ConfigError(f"{data_dir}/storage is not readable by this user")
    # Blocking work (file I/O, syncfs, PyMySQL) runs in threads; the default pool (cores + 4) is too small
    # once workers wait on durability barriers and the database at the same time.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="seafbackup"))
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    stop = asyncio.Event()
    _install_stop_handlers(stop)
    try:
        if conf.backup.mode == "primary":
            await run_primary(conf, installation, stop)
        else:
            await run_backup(conf, installation, stop)
    finally:
        installation.close()
    log.info("agent stopped")
    return 0
