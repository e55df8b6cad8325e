"""seaf-backup-cmd: one top-level handler maps errors to a message and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rich.console import Console

from seafbackup_agent.cli import agent_cmds, local_sync, verify
from seafbackup_agent.cli.output import print_error
from seafbackup_agent.errors import SeafBackupError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seaf-backup-cmd", description="seafbackup: Seafile real-time backup")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is copied")
    sub = parser.add_subparsers(dest="command", required=True)
    agent_cmds.add_parsers(sub)
    local_sync.add_parser(sub)
    verify.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    console = Console(no_color="NO_COLOR" in os.environ)
    try:
        return args.func(args, console)
    except SeafBackupError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
