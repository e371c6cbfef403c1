"""Helpers of the SQLite store's tests: messages, and the file seen from outside."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from spoolbox.model import Address, NewMessage

T0 = 1000.0


def new_message(i: int, *recipients: str, size: int = 0) -> NewMessage:
    body = b"x" * size if size else b"body\r\n"
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in (recipients or ("X:bob",))),
        content=b"Subject: message %d\r\n\r\n" % i + body,
        id=f"m{i:04d}",
    )


def later_message(send_at: float, id: str = "later") -> NewMessage:
    """A message to X:bob that is not to be sent before ``send_at``."""
    return NewMessage(
        sender=None,
        recipients=(Address.parse("X:bob"),),
        content=b"Subject: later\r\n\r\nx\r\n",
        id=id,
        send_at=send_at,
    )


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def snapshot_dir(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
