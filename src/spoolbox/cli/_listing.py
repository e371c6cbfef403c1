"""What the queue and inbox listings share: times, terminal-safe text, tables that
fit 80 columns without wrapping an id."""

from __future__ import annotations

import time
import unicodedata

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["print_table", "safe", "short_when", "when"]


def when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else ""


def short_when(timestamp: float | None) -> str:
    """A listing's time: month, day, hours and minutes (as mailq shows them)."""
    return time.strftime("%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def safe(value: str | None) -> str:
    """``value`` with control and format characters escaped (``\\x1b``, ``\\u202e``),
    so that a header cannot move the cursor, recolour or reorder the terminal."""
    if not value:
        return ""
    out = []
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table whose first column (the id) never wraps; the others fold.  Cells are
    plain text (never rich markup: a subject "[red]" stays as it is)."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        if i == 0:
            table.add_column(col, no_wrap=True, overflow="ignore")
        else:
            table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    Console().print(table)
