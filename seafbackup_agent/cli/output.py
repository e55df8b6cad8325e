"""Printing through rich without losing text: every message is escaped, so "[backup]" stays "[backup]", and
soft-wrapped, so a message piped to a file or a log stays on one line."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def print_error(message: object, *, label: str = "error:") -> None:
    """`label` in red, then the message verbatim, on stderr."""
    Console(stderr=True).print(f"[red]{escape(label)}[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


def print_text(console: Console, message: object) -> None:
    """A message verbatim: no markup, no highlighting."""
    console.print(escape(str(message)), highlight=False, soft_wrap=True)
