"""seaf-backup-cmd: one top-level handler maps errors to a message and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rich.console import Console

from seafbackup_agent.cli import agent_cmds, index, local_sync, verify
from seafbackup_agent.cli.output import print_error
from seafbackup_agent.errors import SeafBackupError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seaf-backup-cmd", description="seafbackup: Seafile real-time backup")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more: the agent logs its start, each sync and each problem at INFO, with -v also "
                             "each request (DEBUG); the other commands log warnings, with -v what they copy")
    sub = parser.add_subparsers(dest="command", required=True)
    agent_cmds.add_parsers(sub)
    local_sync.add_parser(sub)
    verify.add_parser(sub)
    index.add_parser(sub)
    return parser


JOURNAL_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Lines for journald, which stamps each line itself: no timestamp, and the syslog priority as a `<N>` prefix
    (what systemd reads from a service's stderr), so `journalctl -p warning` finds warnings."""

    def format(self, record: logging.LogRecord) -> str:
        priority = JOURNAL_PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to `device:inode` of the stream it connected to the journal; only when stderr is
    still that stream (not redirected to a file) do the lines go to journald."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM", "") == f"{st.st_dev}:{st.st_ino}"


def configure_logging(command: str, verbose: bool) -> None:
    """The agent logs at INFO (its start, each sync, each problem), its own DEBUG lines too with -v (each request
    served, each retry); the one-shot commands log warnings, INFO with -v."""
    level = logging.INFO if command == "agent" or verbose else logging.WARNING
    if command == "agent" and verbose:
        logging.getLogger("seafbackup_agent").setLevel(logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.command, args.verbose)
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
