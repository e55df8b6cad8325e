"""Progress of a long command (`local-sync`, `verify`): a rich bar on a terminal, plain lines otherwise.

On a terminal: libraries done of the total, objects, bytes and the rate, redrawn in place (and gone at the
end, where the command prints its summary table). Not on a terminal (a log, CI): one line every `interval`
seconds and one at the end, each `progress` then `key=value` fields, for example

    progress libraries=1/3 objects=1204 bytes=5242880 objects_per_second=602.0 bytes_per_second=2621440.0 \
elapsed=2.0 library=3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2

The bar is drawn on the command's console (what it prints meanwhile appears above it); the plain lines go to
stderr, so that stdout keeps the command's result (its table or `--json`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from seafbackup_agent.cli.agent_cmds import rate_text, size_text
from seafbackup_agent.cli.output import print_text
from seafbackup_agent.sync.progress import Rate

PLAIN_FIELDS = ("libraries", "objects", "bytes", "objects_per_second", "bytes_per_second", "elapsed", "library")
"""The fields of a plain line, in order (`library` is the one being worked on, `-` at the end)."""


def add_interval_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                        help="not on a terminal (or with --json): a progress line on stderr this often "
                        "(default %(default)s; 0: at every step)")


def parse_line(line: str) -> dict[str, str]:
    """The fields of one plain line (what a log reader or a test does with it)."""
    word, *fields = line.split()
    if word != "progress":
        raise ValueError(f"not a progress line: {line!r}")
    return dict(field.split("=", 1) for field in fields)


class ProgressDisplay:
    """Figures of a run over libraries: the finished libraries' totals plus the running one's live counts."""

    def __init__(self, console: Console, *, verb: str, libraries: int | None, interval: float = 10.0,
                 bar: bool = True) -> None:
        """`bar`: draw the bar when `console` is a terminal (not for `--json`); plain lines otherwise."""
        self.console = console
        self.use_bar = bar and console.is_terminal
        self._lines = Console(stderr=True, no_color=console.no_color)
        self.verb = verb
        self.libraries_total = libraries
        self.interval = interval
        self.libraries_done = 0
        self._done_objects = self._done_bytes = 0
        self._objects = self._bytes = 0
        self._library = "-"
        self._rate = Rate()
        self._started = time.monotonic()
        self._last_line: float | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.use_bar:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[figures]}"), TimeElapsedColumn(), console=self.console,
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.verb, total=self.libraries_total, figures="")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif exc_type is None:
            self._library = "-"
            self._print_line()

    def started(self, library: str, total: int | None = None) -> None:
        """A library begins (`total`: the number of libraries, once known)."""
        self._library = library
        if total is not None:
            self.libraries_total = total
        self._show()

    def advanced(self, objects: int, nbytes: int) -> None:
        """The running library's figures so far."""
        self._objects, self._bytes = objects, nbytes
        self._show()

    def finished(self, objects: int, nbytes: int) -> None:
        """The running library is done, with these final figures."""
        self._done_objects += objects
        self._done_bytes += nbytes
        self._objects = self._bytes = 0
        self.libraries_done += 1
        self._show()

    @property
    def objects(self) -> int:
        return self._done_objects + self._objects

    @property
    def bytes(self) -> int:
        return self._done_bytes + self._bytes

    def _show(self) -> None:
        self._rate.sample(self.objects, self.bytes)
        if self._bar is not None and self._task is not None:
            objects_rate, bytes_rate = self._rate.per_second()
            self._bar.update(self._task, total=self.libraries_total, completed=self.libraries_done,
                             description=f"{self.verb} {self._library}",
                             figures=f"{self.objects} objects, {size_text(self.bytes)}, "
                                     f"{rate_text(objects_rate, bytes_rate)}")
            return
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self.interval:
            self._print_line()

    def _print_line(self) -> None:
        self._last_line = time.monotonic()
        objects_rate, bytes_rate = self._rate.per_second()
        total = "?" if self.libraries_total is None else self.libraries_total
        values = (f"{self.libraries_done}/{total}", self.objects, self.bytes,
                  "-" if objects_rate is None else f"{objects_rate:.1f}",
                  "-" if bytes_rate is None else f"{bytes_rate:.1f}",
                  f"{self._last_line - self._started:.1f}", self._library)
        print_text(self._lines, "progress " + " ".join(f"{k}={v}" for k, v in zip(PLAIN_FIELDS, values, strict=True)))


def summary_table(title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, left: int = 2) -> Table:
    """The table a command prints at the end: one row per library; the first `left` columns are text."""
    table = Table(title=title)
    for n, column in enumerate(columns):
        table.add_column(column, justify="left" if n < left else "right")
    for row in rows:
        table.add_row(*row)
    return table
