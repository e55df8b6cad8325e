"""`seaf-backup-cmd verify`: can the backup restore each library? Every object of its kept history present
and intact (sync/verify.py), and its head the primary's."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from seafbackup_agent.cli.locations import add_conf_dir, add_data_dir
from seafbackup_agent.cli.output import print_text
from seafbackup_agent.cli.progress import ProgressDisplay, add_interval_option, summary_table
from seafbackup_agent.errors import ConfigError, ExitCode
from seafbackup_agent.objectstore.object_index import ObjectIndex
from seafbackup_agent.seafile.ids import repo_id as valid_repo_id
from seafbackup_agent.seafile.installation import SeafileInstallation, index_path
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.source import LocalSource, ObjectSource
from seafbackup_agent.sync.verify import LibraryReport, Verdict, check_closure

EXIT_CODES = {Verdict.OK: ExitCode.OK, Verdict.BEHIND: ExitCode.BEHIND, Verdict.MISSING: ExitCode.MISSING_OBJECTS,
              Verdict.CORRUPT: ExitCode.CORRUPT_OBJECTS}
"""By the worst verdict. Errors keep their codes of `ExitCode`."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that the backup can restore each library: every object of its kept history present and "
        "intact, and its head the primary's",
        description="Walks each library's closure on the backup (every commit of the kept history, every fs "
        "object, every block: present, and its content matching its id) and compares its head with the "
        "primary's (over the signed API, or with a local installation).",
        epilog=f"Exit codes (worst verdict): 0 ok, {ExitCode.BEHIND} behind, {ExitCode.MISSING_OBJECTS} missing "
        f"objects, {ExitCode.CORRUPT_OBJECTS} corrupt objects; {ExitCode.USAGE} bad arguments or configuration, "
        f"{ExitCode.DATABASE} database error, {ExitCode.PEER_UNREACHABLE} primary unreachable.",
    )
    add_conf_dir(p, "the backup's conf dir")
    add_data_dir(p, "the backup's seafile-data dir")
    p.add_argument("--source-conf-dir", type=Path, help="compare with this local installation instead of the "
                   "primary's API (with --source-data-dir)")
    p.add_argument("--source-data-dir", type=Path)
    p.add_argument("--no-compare", action="store_true", help="check the backup alone, not its heads")
    p.add_argument("--sample", type=float, default=1.0, metavar="FRACTION",
                   help="read only this fraction of the blocks (chosen at random; the others are checked to be "
                   "present); commits and fs objects are always read (default 1: everything)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_interval_option(p)
    p.add_argument("libraries", nargs="*", metavar="LIBRARY_ID", help="default: every library of backup and "
                   "primary")
    p.set_defaults(func=run)


def _source(args: argparse.Namespace, target: SeafileInstallation) -> ObjectSource | None:
    if args.no_compare:
        return None
    if (args.source_conf_dir is None) != (args.source_data_dir is None):
        raise ConfigError("--source-conf-dir and --source-data-dir go together")
    if args.source_conf_dir is not None:
        return LocalSource(SeafileInstallation.open(args.source_conf_dir, args.source_data_dir))
    from seafbackup_agent.transport.client import HttpSource

    if target.conf.backup is None or not target.conf.backup.primary_url:
        raise ConfigError(f"{target.conf.path}: [backup] primary_url is not set, so there is no primary to "
                          "compare with", hint="pass --source-conf-dir/--source-data-dir, or --no-compare")
    return HttpSource.from_conf(target.conf, retries=2)


async def verify(args: argparse.Namespace, display: ProgressDisplay,
                 on_done: Callable[[LibraryReport], None]) -> list[LibraryReport]:
    """Check each library (shown on `display` while walking, `on_done(report)` after)."""
    if not 0 < args.sample <= 1:
        raise ConfigError(f"--sample {args.sample}: give a fraction in (0, 1], e.g. 0.05")
    wanted = [valid_repo_id(r) for r in args.libraries]
    # On object storage, presence is asked of the store itself, never of the agent's index of it.
    target = SeafileInstallation.open(args.conf_dir, args.data_dir, index=False)
    source: ObjectSource | None = None
    try:
        source = _source(args, target)
        backup_heads = dict(await asyncio.to_thread(lambda: list(target.rows.iter_heads())))
        primary_heads: dict[str, str] = {}
        if source is not None and not wanted:
            primary_heads = {repo: head async for repo, head in source.libraries()}
        wanted = wanted or sorted(backup_heads.keys() | primary_heads.keys())
        rng = random.Random()
        reports = []
        for repo in wanted:
            display.started(repo, len(wanted))
            started = time.monotonic()
            primary_head = primary_heads.get(repo)
            if source is not None and not primary_heads:
                meta = await source.library(repo)
                primary_head = meta.head if meta else None
            mine = await asyncio.to_thread(target.rows.meta, repo)
            closure = None
            if mine is not None:
                closure = await asyncio.to_thread(
                    check_closure, target.store, repo, mine.store_id, mine.head, truncate_time=mine.truncate_time,
                    sample=args.sample, rng=rng,
                    # From the walk's thread: the display only stores figures and prints a line.
                    progress=lambda check: display.advanced(check.objects, check.bytes_read))
            report = LibraryReport(repo, mine.head if mine else None, primary_head, source is not None, closure,
                                   round(time.monotonic() - started, 3))
            display.finished(closure.objects if closure else 0, closure.bytes_read if closure else 0)
            on_done(report)
            reports.append(report)
        _distrust_index(target, reports)
        return reports
    finally:
        if source is not None:
            await source.close()
        target.close()


def _distrust_index(target: SeafileInstallation, reports: list[LibraryReport]) -> None:
    """Objects missing from object storage: the agent's index of it lists them, so the next sync rebuilds it
    from a LIST (objectstore/object_index.py)."""
    kinds = {bad.kind for r in reports if r.closure for bad in r.closure.first_missing}
    if not kinds or target.conf.on_filesystem:
        return
    index = ObjectIndex(index_path(target.conf, target.data_dir))
    try:
        for kind in kinds:
            index.distrust({"commit": ObjType.COMMITS, "fs": ObjType.FS, "block": ObjType.BLOCKS}[kind])
    finally:
        index.close()


def verdict_text(report: LibraryReport) -> str:
    verdict = report.verdict
    closure = report.closure
    if verdict is Verdict.CORRUPT and closure:
        return f"corrupt {closure.corrupt}" + (f", missing {closure.missing}" if closure.missing else "")
    if verdict is Verdict.MISSING and closure:
        return f"missing {closure.missing}"
    if verdict is Verdict.BEHIND:
        if report.head is None:
            return "behind (not on the backup)"
        if report.primary_head is None:
            return "behind (deleted on the primary)"
        return f"behind (primary at {report.primary_head[:12]})"
    return "ok"


def report_lines(report: LibraryReport) -> list[str]:
    closure = report.closure
    head = report.head[:12] if report.head else "-"
    line = f"{report.repo_id} {verdict_text(report)}: head {head}"
    if closure is not None:
        sampled = f", {closure.blocks_read} read" if closure.blocks_read != closure.blocks else ""
        line += (f", {closure.commits} commits, {closure.fs_objects} fs objects, {closure.blocks} blocks{sampled}, "
                 f"{closure.bytes_read / 2**20:.1f} MiB in {report.seconds:.1f}s")
    lines = [line]
    if closure is not None:
        for bad in closure.first_missing:
            lines.append(f"  missing {bad.kind} {bad.obj_id}")
        for bad in closure.first_corrupt:
            lines.append(f"  corrupt {bad.kind} {bad.obj_id}: {bad.reason}")
    return lines


def report_doc(report: LibraryReport) -> dict:
    doc = asdict(report)
    doc["verdict"] = report.verdict.value
    return doc


def _summary_row(report: LibraryReport) -> tuple[str, ...]:
    closure = report.closure
    figures = ((str(closure.commits), str(closure.fs_objects), str(closure.blocks), f"{closure.bytes_read / 2**20:.1f}")
               if closure else ("", "", "", ""))
    return (report.repo_id, escape(verdict_text(report)), *figures, f"{report.seconds:.1f}")


def run(args: argparse.Namespace, console: Console) -> int:
    def plain_done(report: LibraryReport) -> None:
        if not args.json:
            for line in report_lines(report):
                print_text(console, line)

    with ProgressDisplay(console, verb="verifying", libraries=len(args.libraries) or None,
                         interval=args.progress_interval, bar=not args.json) as display:
        reports = asyncio.run(verify(args, display, plain_done))
    if args.json:
        print(json.dumps([report_doc(r) for r in reports], indent=2))
    else:
        console.print(summary_table("verify", ("library", "verdict", "commits", "fs", "blocks", "MiB read", "seconds"),
                                    [_summary_row(r) for r in reports]))
    return EXIT_CODES[Verdict.worst([r.verdict for r in reports])]
