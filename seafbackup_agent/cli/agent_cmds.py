"""`seaf-backup-cmd agent | status | sync`."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from rich.console import Console

from seafbackup_agent.cli.control_client import DEFAULT_CONF_DIR, call
from seafbackup_agent.cli.output import print_error, print_text
from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import ConfigError, SeafBackupError
from seafbackup_agent.seafile.ids import repo_id as valid_repo_id


def add_parsers(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="run the sync agent (primary or backup mode, from seafile.conf)")
    agent.add_argument("--conf-dir", type=Path, default=Path(DEFAULT_CONF_DIR))
    agent.add_argument("--data-dir", type=Path, default=Path("/opt/seafile/seafile-data"))
    agent.set_defaults(func=run_agent)

    status = sub.add_parser("status", help="how many libraries are synchronized, waiting, syncing, failed")
    status.add_argument("--conf-dir", type=Path, default=Path(DEFAULT_CONF_DIR))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=run_status)

    sync = sub.add_parser("sync", help="sync one library now and wait until it is done")
    sync.add_argument("--conf-dir", type=Path, default=Path(DEFAULT_CONF_DIR))
    sync.add_argument("--force", action="store_true",
                      help="skip objects missing or corrupt on the primary (recorded and reported)")
    sync.add_argument("--json", action="store_true")
    sync.add_argument("library")
    sync.set_defaults(func=run_sync)


def _socket(conf_dir: Path) -> Path:
    from seafbackup_agent.service.agent import control_socket_path

    conf = load_seafile_conf(conf_dir)
    if conf.backup is None or conf.backup.mode != "backup":
        raise ConfigError(f"{conf.path} does not configure this host as a backup ([backup] primary_url)",
                          hint="run status and sync on the backup server")
    return control_socket_path(conf)


def run_agent(args: argparse.Namespace, console: Console) -> int:
    from seafbackup_agent.service.agent import run_agent as run

    return asyncio.run(run(args.conf_dir, args.data_dir))


def format_status(doc: dict) -> str:
    counts = doc["counts"]
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
    ]
    return "\n".join(lines)


def run_status(args: argparse.Namespace, console: Console) -> int:
    _, doc = asyncio.run(call(_socket(args.conf_dir), "GET", "/status"))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_status(doc))
    return 0


def run_sync(args: argparse.Namespace, console: Console) -> int:
    repo = valid_repo_id(args.library)
    socket_path = _socket(args.conf_dir)
    request = call(socket_path, "POST", "/sync", {"repo_id": repo, "force": args.force}, timeout=None)
    if console.is_terminal and not args.json:
        with console.status(f"syncing library {repo}{' (forced)' if args.force else ''}..."):
            status, doc = asyncio.run(request)
    else:
        status, doc = asyncio.run(request)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0 if doc.get("ok") else 1
    if status == 400:
        raise SeafBackupError(doc.get("error", "bad request"))
    if not doc.get("ok"):
        print_error(doc["error"], label=f"library {repo} failed to sync:")
        return 1
    print_text(
        console,
        f"library {repo} {doc['outcome']}: head {doc['head']}, {doc['commits']} commits, {doc['fs_objects']} fs "
        f"objects, {doc['blocks']} blocks, {doc['bytes']} bytes in {doc['seconds']}s")
    for skipped in doc.get("skipped", []):
        print_text(console, f"skipped {skipped['obj_type']} object {skipped['obj_id']} (commit "
                            f"{skipped['commit_id']}): {skipped['reason']}")
    return 0
