"""`seaf-backup-cmd local-sync`: sync libraries from one Seafile installation into another on this host."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from rich.console import Console

from seafbackup_agent.cli.locations import add_conf_dir, add_data_dir
from seafbackup_agent.cli.output import print_error, print_text
from seafbackup_agent.cli.progress import ProgressDisplay, add_interval_option, summary_table
from seafbackup_agent.errors import DatabaseError, ExitCode, SeafBackupError
from seafbackup_agent.seafile.ids import repo_id as valid_repo_id
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.library_rows import copy_library_rows
from seafbackup_agent.sync.engine import SyncEngine
from seafbackup_agent.sync.progress import LibraryProgress
from seafbackup_agent.sync.result import SyncError, SyncResult
from seafbackup_agent.sync.source import LocalSource


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "local-sync",
        help="sync libraries of one Seafile installation into another, both reachable from this host",
        description="Copies every library (or the named ones) with its history from the source installation "
        "into the target, objects first and the Branch row last.",
    )
    p.add_argument("--source-conf-dir", required=True, help="the source's conf dir (its seafile.conf)")
    p.add_argument("--source-data-dir", required=True, help="the source's seafile-data dir")
    add_conf_dir(p, "the target's conf dir")
    add_data_dir(p, "the target's seafile-data dir")
    p.add_argument("--force", action="store_true", help="skip objects missing or corrupt on the source")
    p.add_argument("--with-library-rows", action="store_true",
                   help="also copy each library's owner, info, size, file count, virtual repo and history rows "
                   "(between two independent installations; a paired backup gets them by replication)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_interval_option(p)
    p.add_argument("libraries", nargs="*", metavar="LIBRARY_ID")
    p.set_defaults(func=run)


async def _sync_all(args: argparse.Namespace, display: ProgressDisplay) -> list[SyncResult | SyncError]:
    wanted = [valid_repo_id(r) for r in args.libraries]
    source_inst = SeafileInstallation.open(args.source_conf_dir, args.source_data_dir)
    target = SeafileInstallation.open(args.conf_dir, args.data_dir)
    source = LocalSource(source_inst)
    try:
        engine = SyncEngine(source, target)
        if not wanted:
            wanted = [repo async for repo, _head in source.libraries()]
        outcomes: list[SyncResult | SyncError] = []
        last = LibraryProgress("")

        def advanced(progress: LibraryProgress) -> None:
            nonlocal last
            last = progress
            display.advanced(progress.objects, progress.bytes)

        for repo in wanted:
            last = LibraryProgress(repo)
            display.started(repo, len(wanted))
            try:
                result = await engine.sync_library(repo, force=args.force, on_progress=advanced)
            except SyncError as exc:
                outcomes.append(exc)
                display.finished(last.objects, last.bytes)  # what it copied before failing still counts
                continue
            display.finished(result.objects, result.bytes)
            if args.with_library_rows:
                try:
                    copy_library_rows(source_inst.rows.conn, target.rows.conn, repo)
                except DatabaseError as exc:  # the objects and head are in; say that the rows are not
                    outcomes.append(SyncError(repo, exc.message.removeprefix(f"library {repo}: "), hint=exc.hint))
                    continue
            outcomes.append(result)
        return outcomes
    finally:
        await source.close()
        target.close()


def run(args: argparse.Namespace, console: Console) -> int:
    with ProgressDisplay(console, verb="syncing", libraries=len(args.libraries) or None,
                         interval=args.progress_interval, bar=not args.json) as display:
        outcomes = asyncio.run(_sync_all(args, display))
    failed = [o for o in outcomes if isinstance(o, SeafBackupError)]
    if args.json:
        print(json.dumps([
            {"repo_id": o.repo_id, "error": str(o)} if isinstance(o, SyncError) else asdict(o) for o in outcomes
        ], indent=2, default=str))
        return ExitCode.FAILED if failed else ExitCode.OK
    rows = [
        (o.repo_id, "[red]failed[/red]", "", "", "", "", "", "", "") if isinstance(o, SyncError) else
        (o.repo_id, o.outcome.value + (" (forced)" if o.forced else ""), (o.new_head or "")[:12], str(o.commits),
         str(o.fs_objects), str(o.blocks), str(o.bytes), str(len(o.skipped)), f"{o.duration:.2f}")
        for o in outcomes
    ]
    console.print(summary_table(
        "local-sync", ("library", "result", "head", "commits", "fs", "blocks", "bytes", "skipped", "seconds"), rows))
    for error in failed:
        print_error(error)
    for o in outcomes:
        if isinstance(o, SyncResult):
            for s in o.skipped:
                print_text(console,
                           f"skipped {s.obj_type} {s.obj_id} of commit {s.commit_id} in {o.repo_id}: {s.reason}")
    return ExitCode.FAILED if failed else ExitCode.OK
