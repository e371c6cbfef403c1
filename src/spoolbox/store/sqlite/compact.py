"""How much of a SQLite store's file is free, and giving it back (``spoolbox store
compact``).

SQLite does not shrink its file when rows are deleted: a purged message's pages go
to the file's free list and are used again by later messages.  A store stays as
large as its largest queue ever was; after a burst (a million messages queued, then
purged) most of it may be free.  :func:`space` says how much; :func:`compact` runs
``VACUUM``, which writes the live pages into a new file and puts it in place (in WAL
mode through the WAL, which is then truncated).  It holds the write lock while it
runs: a daemon's writes wait for it (up to their busy timeout), so the command asks
for the daemon to be stopped unless told otherwise.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..base import StoreError
from .connection import BUSY_TIMEOUT

__all__ = ["Compacted", "Space", "compact", "space", "space_of"]


@dataclass(frozen=True, slots=True)
class Space:
    """A store file's size, what of it is free pages, and its WAL's size (bytes)."""

    path: str
    size: int
    free: int
    wal: int

    @property
    def used(self) -> int:
        return self.size - self.free


@dataclass(frozen=True, slots=True)
class Compacted:
    before: Space
    after: Space
    seconds: float


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if not path.exists():
        raise StoreError(f"no store at {path}")
    mode = "ro" if read_only else "rw"
    uri = "file:" + urllib.parse.quote(os.fspath(path)) + f"?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from None
    return conn


def space_of(conn: sqlite3.Connection, path: Path) -> Space:
    """The file's space, read on an open connection (also the store's thread's)."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    wal = Path(f"{path}-wal")
    return Space(
        str(path), pages * page_size, free * page_size, wal.stat().st_size if wal.exists() else 0
    )


def space(path: Path) -> Space:
    """The store file's size and free pages, read without writing anything."""
    conn = _connect(path, read_only=True)
    try:
        return space_of(conn, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from None
    finally:
        conn.close()


def compact(path: Path) -> Compacted:
    """``VACUUM`` the store: its free pages given back to the file system.  StoreError
    (nothing changed) when the disk has not the room the copy needs or the file
    cannot be written."""
    conn = _connect(path, read_only=False)
    try:
        before = space_of(conn, path)
        # The live pages are written twice: into a temporary copy (SQLite's temporary
        # directory) and back through the WAL, next to the store.
        room = shutil.disk_usage(path.parent).free
        if room < before.used:
            raise StoreError(
                f"compacting {path} needs about {_mb(before.used)} free next to it "
                f"(the live pages pass through its WAL); the file system has {_mb(room)}"
            )
        t0 = time.monotonic()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        seconds = time.monotonic() - t0
        return Compacted(before, space_of(conn, path), seconds)
    except sqlite3.Error as exc:
        raise StoreError(f"compacting {path} failed (the store is unchanged): {exc}") from None
    finally:
        conn.close()


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
