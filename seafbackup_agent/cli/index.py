"""`seaf-backup-cmd index rebuild`: the index of what the backup's buckets and pools hold, rebuilt now from a LIST.

The agent rebuilds the index by itself when it cannot trust it (objectstore/object_index.py); this is for an
operator who knows better: objects deleted or restored behind the agent's back (a lifecycle rule, a restore of
the bucket from a snapshot), before the next sync rather than after a `verify`. It needs neither database: only
seafile.conf's backends and the agent's state directory. Safe while the agent runs: the index only ever lists
objects that a LIST or a returned PUT showed in the store, and an object the index lacks is only copied again.
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from seafbackup_agent.cli.locations import add_conf_dir, add_data_dir
from seafbackup_agent.cli.output import print_text
from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import ConfigError, ExitCode
from seafbackup_agent.objectstore.store import BackendStore, open_store
from seafbackup_agent.seafile.installation import index_path
from seafbackup_agent.seafile.storage import ObjType


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="the agent's index of what the backup's buckets and pools hold (object storage only)",
        description="On object storage the agent keeps a local index of the objects the backup holds, so that a "
        "sync asks no HEAD per object. It rebuilds it by itself when it cannot trust it; `index rebuild` does it "
        "now.",
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    rebuild = verbs.add_parser(
        "rebuild",
        help="rebuild the index from a LIST of each bucket and pool now",
        description="Lists every object of the backup's buckets and pools (1000 keys per request on S3) and "
        "replaces the index with what the store holds. Use it after objects were deleted or restored behind the "
        "agent's back. Safe while the agent runs; needs no database.",
        epilog=f"Exit codes: 0 rebuilt, {ExitCode.FAILED} a bucket or pool could not be listed (the index of that "
        f"type is then left untrusted: the next sync rebuilds it), {ExitCode.USAGE} bad arguments or configuration "
        "(e.g. every type on the filesystem: no index).",
    )
    add_conf_dir(rebuild, "the backup's conf dir")
    add_data_dir(rebuild, "the backup's seafile-data dir")
    rebuild.add_argument("--type", dest="types", action="append", choices=[t.value for t in ObjType],
                         help="only this object type (repeatable; default: every type on object storage)")
    rebuild.add_argument("--json", action="store_true", help="machine-readable output")
    rebuild.set_defaults(func=run_rebuild)


def run_rebuild(args: argparse.Namespace, console: Console) -> int:
    conf = load_seafile_conf(args.conf_dir)
    store = open_store(conf.backends, args.data_dir, index_path=index_path(conf, args.data_dir))
    if not isinstance(store, BackendStore) or store.index is None:
        raise ConfigError(f"{conf.path}: every object type is on the filesystem: there is no index to rebuild")
    try:
        on_objects = [t for t in ObjType if t in store.indexed_types()]
        wanted = [ObjType(t) for t in args.types] if args.types else on_objects
        for obj_type in wanted:
            if obj_type not in on_objects:
                raise ConfigError(f"{conf.path}: {obj_type.value} are on the filesystem: they have no index")
        rows = []
        for obj_type in wanted:
            started = time.monotonic()
            listed = store.rebuild_index([obj_type])[obj_type]
            rows.append({"type": obj_type.value, "store": store.describe()[obj_type], "objects": listed,
                         "seconds": round(time.monotonic() - started, 2)})
            if not args.json:
                print_text(console, f"{obj_type.value}: {listed} objects listed in {rows[-1]['seconds']:.1f}s "
                           f"({rows[-1]['store']})")
    finally:
        store.close()
    if args.json:
        print(json.dumps({"index": str(index_path(conf, args.data_dir)), "types": rows}, indent=2))
    else:
        print_text(console, f"index {index_path(conf, args.data_dir)} rebuilt")
    return ExitCode.OK
