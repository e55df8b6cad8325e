"""`seaf-backup-cmd agent | status | sync`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from seafbackup_agent.cli.control_client import call
from seafbackup_agent.cli.locations import add_conf_dir, add_data_dir
from seafbackup_agent.cli.output import print_error, print_text
from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import ConfigError, ExitCode, SeafBackupError
from seafbackup_agent.seafile.ids import repo_id as valid_repo_id
from seafbackup_agent.service.freshness import clock_text


def add_parsers(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="run the sync agent (primary or backup mode, from seafile.conf)")
    add_conf_dir(agent)
    add_data_dir(agent)
    agent.set_defaults(func=run_agent)

    status = sub.add_parser(
        "status", help="on the backup: libraries synchronized, waiting, syncing, failed, and how fresh the backup is "
                       f"(exit 0 healthy, {ExitCode.STALE} stale or broken pairing, {ExitCode.FAILED_LIBRARIES} failed "
                       f"libraries, {ExitCode.AGENT_NOT_RUNNING} agent not running); on the primary: whether the "
                       "backup takes our notifications")
    add_conf_dir(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=run_status)

    sync = sub.add_parser("sync", help="sync one library now and wait until it is done")
    add_conf_dir(sync)
    sync.add_argument("--force", action="store_true",
                      help="skip objects missing or corrupt on the primary (recorded and reported)")
    sync.add_argument("--json", action="store_true")
    sync.add_argument("library")
    sync.set_defaults(func=run_sync)


def _socket(conf_dir: Path, *, backup_only: bool = False) -> tuple[str, Path]:
    from seafbackup_agent.service.agent import control_socket_path

    conf = load_seafile_conf(conf_dir)
    if conf.backup is None:
        raise ConfigError(f"{conf.path} has no [backup] section", hint="run setup_backup.yml to pair the hosts")
    if backup_only and conf.backup.mode != "backup":
        raise ConfigError(f"{conf.path} does not configure this host as a backup ([backup] primary_url)",
                          hint="run sync on the backup server")
    return conf.backup.mode, control_socket_path(conf)


def run_agent(args: argparse.Namespace, console: Console) -> int:
    from seafbackup_agent.service.agent import run_agent as run

    return asyncio.run(run(args.conf_dir, args.data_dir))


def _when(t: float | None) -> str:
    return "never" if t is None else clock_text(t)


def _noted(line: str, note: str | None) -> str:
    return f"{line} ({note})" if note else line


def size_text(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def rate_text(objects: float | None, nbytes: float | None) -> str:
    if objects is None or nbytes is None:
        return "rate unknown"
    return f"{objects:.0f} objects/s, {size_text(nbytes)}/s"


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}s"


def format_status(doc: dict) -> str:
    """Seafile's five lines of `seaf-backup-cmd.sh status` and its two lists, then the freshness."""
    counts = doc["counts"]
    pairing = doc.get("pairing") or {}
    lines = [
        f"Total number of libraries: {doc['total']}",
        f"Number of synchronized libraries: {counts['synchronized']}",
        f"Number of libraries waiting for sync: {counts['waiting']}",
        f"Number of libraries syncing: {counts['syncing']}",
        f"Number of libraries failed to sync: {counts['failed']}",
        "",
        "List of syncing libraries:",
        *[lib["repo_id"] for lib in doc["libraries"] if lib["state"] == "syncing"],
        "",
        "List of libraries failed to sync:",
        *[lib["repo_id"] for lib in doc["libraries"] if lib["state"] == "failed"],
        "",
    ]
    if counts.get("unknown"):
        lines.append(f"Number of libraries in unknown state: {counts['unknown']} (last known synchronized; "
                     f"no evidence since {_when(pairing.get('since'))})")
    lines += [
        f"Pairing: {pairing.get('state', 'unknown')}" + (f" - {pairing['reason']}" if pairing.get("reason") else ""),
        f"Current as of: {_when(pairing.get('current_as_of'))} "
        f"(RPO bound {_seconds(pairing.get('rpo_bound_seconds'))})",
        f"Primary agent last seen: {_when(pairing.get('primary_last_seen'))}",
        *primary_node_lines(pairing.get("primary_nodes")),
    ]
    db_lag = pairing.get("db_lag") or {}
    lines.append(_noted(f"Database replication lag: {_seconds(db_lag.get('seconds'))}", db_lag.get("error")))
    if doc.get("last_poll_error"):
        lines.append(f"Last poll failed: {doc['last_poll_error']}")
    lines += progress_lines(doc.get("progress"))
    return "\n".join(lines)


def primary_node_lines(nodes: list[dict] | None) -> list[str]:
    """The primary's node in use, and with several nodes (a Seafile cluster) which of them answer."""
    if not nodes:
        return []
    in_use = next((node["url"] for node in nodes if node["in_use"]), "none")
    if len(nodes) == 1:
        return [f"Primary node: {in_use}"]
    lines = [f"Primary node in use: {in_use}"]
    for node in nodes:
        if node["answers"] is None:
            said = "not asked yet"
        elif node["answers"]:
            said = f"answers (last {_when(node['answered_at'])})"
        else:
            said = f"does not answer since {_when(node['failed_at'])}: {node['error']}"
        lines.append(f"  {node['url']}: {said}")
    return lines


def progress_lines(progress: dict | None) -> list[str]:
    """While libraries sync: the batch overall, then each running library (the figures of `--json`'s
    "progress")."""
    if not progress or not progress["active"]:
        return []
    lines = [
        f"Sync progress: {progress['libraries_done']} of {progress['libraries_total']} libraries done, "
        f"{progress['objects']} objects, {size_text(progress['bytes'])} copied, "
        f"{rate_text(progress['objects_per_second'], progress['bytes_per_second'])} over the last minute, "
        f"ETA {eta_text(progress['eta_seconds'])}",
    ]
    for lib in progress["libraries"]:
        commits = f" ({lib['commits']} of {lib['commits_total']} commits)" if lib["commits_total"] is not None else ""
        estimate = f" of ~{size_text(lib['estimated_bytes'])}" if lib["estimated_bytes"] is not None else ""
        lines.append(f"  {lib['repo_id']}: {lib['objects']} objects{commits}, {size_text(lib['bytes'])}{estimate}, "
                     f"{rate_text(lib['objects_per_second'], lib['bytes_per_second'])}, "
                     f"ETA {eta_text(lib['eta_seconds'])}")
    lines.append(f"Estimates: {progress['estimate_basis']}; overall ETA: {progress['eta_basis']}")
    return lines


def format_primary_status(doc: dict) -> str:
    lines = [
        f"Mode: primary (agent instance {doc['instance']}, started {_when(doc['started_at'])})",
        f"Backup: {doc['backup_url']} - " + ("reachable, accepts our signatures" if doc["healthy"] else "PROBLEM"),
        *[f"  {p['source']}: {p['problem']} (since {_when(p['since'])})" for p in doc["problems"]],
        f"Change detection: {doc['change_detector']}",
        f"Changes waiting to be sent: {doc['pending_notifications']}",
        f"Last notification delivered: {_when(doc['last_notification_delivered'])} "
        f"({doc['notifications_delivered']} changes delivered since start)",
        f"Every change delivered up to: {_when(doc['delivered_through'])} "
        f"({_seconds(doc['delivery_lag_seconds'])} ago)",
        f"Backup last pulled a heartbeat: {_when(doc['backup_last_pulled_heartbeat'])}",
    ]
    db = doc.get("database_heartbeat") or {}
    lines.append(_noted(f"Database heartbeat row last written: {_when(db.get('last_written'))}", db.get("error")))
    return "\n".join(lines)


def status_exit_code(doc: dict) -> ExitCode:
    if doc["mode"] == "primary":
        return ExitCode.OK if doc["healthy"] else ExitCode.STALE
    if (doc.get("pairing") or {}).get("state") != "ok":
        return ExitCode.STALE
    return ExitCode.FAILED_LIBRARIES if doc["counts"]["failed"] else ExitCode.OK


def run_status(args: argparse.Namespace, console: Console) -> int:
    mode, socket_path = _socket(args.conf_dir)
    _, doc = asyncio.run(call(socket_path, "GET", "/status"))
    code = status_exit_code(doc)
    if args.json:
        print(json.dumps(doc, indent=2))
        return code
    if mode == "primary":
        print(format_primary_status(doc))
        return code
    if code == ExitCode.STALE:
        # First thing an admin reads; on stderr so that the five lines on stdout keep Seafile's layout.
        pairing = doc["pairing"]
        Console(stderr=True).print(f"[bold red]WARNING:[/bold red] {escape(str(pairing['reason']))}. "
                                   "The states below are not backed by fresh evidence.", highlight=False)
    print(format_status(doc))
    return code


def run_sync(args: argparse.Namespace, console: Console) -> int:
    repo = valid_repo_id(args.library)
    _, socket_path = _socket(args.conf_dir, backup_only=True)
    request = call(socket_path, "POST", "/sync", {"repo_id": repo, "force": args.force}, timeout=None)
    if console.is_terminal and not args.json:
        with console.status(f"syncing library {repo}{' (forced)' if args.force else ''}..."):
            status, doc = asyncio.run(request)
    else:
        status, doc = asyncio.run(request)
    if args.json:
        print(json.dumps(doc, indent=2))
        return ExitCode.OK if doc.get("ok") else ExitCode.FAILED
    if status == 400:
        raise SeafBackupError(doc.get("error", "bad request"))
    if not doc.get("ok"):
        print_error(doc["error"], label=f"library {repo} failed to sync:")
        return ExitCode.FAILED
    print_text(
        console,
        f"library {repo} {doc['outcome']}: head {doc['head']}, {doc['commits']} commits, {doc['fs_objects']} fs "
        f"objects, {doc['blocks']} blocks, {doc['bytes']} bytes in {doc['seconds']}s")
    for skipped in doc.get("skipped", []):
        print_text(console, f"skipped {skipped['obj_type']} object {skipped['obj_id']} (commit "
                            f"{skipped['commit_id']}): {skipped['reason']}")
    return 0
