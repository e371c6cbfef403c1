"""The room left on the disk under a SQLite store, for the SMTP listener's check at
``MAIL``: with too little, it answers ``452 4.3.1 Insufficient system storage``
before the client sends a message that could not be stored (RFC 1870; Postfix's smtpd
does the same with its queue's free space), instead of after the whole message.

A PostgreSQL store's disk is the database server's, not visible here: no check (a
full disk there still answers ``452 4.3.1`` at the end of the data, as here).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["MIN_FREE", "free_bytes", "no_room", "room_check", "room_needed"]

#: With less free space than this, every MAIL is refused, whatever its SIZE.
MIN_FREE: Final = 1 << 20


def free_bytes(directory: Path) -> int | None:
    """The bytes an unprivileged user may still write under ``directory`` (``df``'s
    "Avail"), or None if the file system cannot say."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def room_needed(declared_size: int) -> int:
    """The free space a message of ``declared_size`` bytes (MAIL's SIZE=, 0 without)
    needs: twice its size (SQLite writes it to the write-ahead log, then the
    checkpoint copies it into the database file) and :data:`MIN_FREE` besides."""
    return 2 * declared_size + MIN_FREE


def no_room(directory: Path, declared_size: int) -> str | None:
    """Why the file system of ``directory`` has no room for a message of
    ``declared_size`` bytes, or None if it has (or cannot say)."""
    free = free_bytes(directory)
    needed = room_needed(declared_size)
    if free is None or free >= needed:
        return None
    return f"{free:,} bytes free under {directory}, {needed:,} needed"


def room_check(backend: str, path: Path) -> Callable[[int], str | None] | None:
    """The listener's ``no_room`` for the store of ``[store] backend`` at ``path``:
    None for a store whose disk is not on this host (PostgreSQL)."""
    if backend != "sqlite":
        return None
    return functools.partial(no_room, path.parent)
