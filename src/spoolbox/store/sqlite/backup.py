"""A consistent copy of a SQLite store, taken while the daemon runs (``spoolbox store
backup``).

SQLite's online backup copies the database's pages as one read snapshot: in WAL mode
the daemon's writers go on meanwhile, and the copy is the store as it was at one
commit (every message whole, or absent).  The copy is written beside the destination,
checked (``PRAGMA quick_check``), synced and renamed into place, readable by its
owner only (it holds mail), and left as one file (no write-ahead log beside it): it
can be copied elsewhere as it is.  A restore is the daemon stopped and the file put
back at ``[store] path``; operations.md, "Backups", says what a restored queue does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..base import StoreError
from .connection import BUSY_TIMEOUT

__all__ = ["Backup", "backup"]


@dataclass(frozen=True, slots=True)
class Backup:
    """What a backup wrote: where, how many bytes, messages and inbox entries, how long."""

    source: str
    dest: str
    size: int
    messages: int
    inbox: int
    seconds: float


def backup(source: Path, dest: Path, *, replace: bool = False) -> Backup:
    """Copy the store at ``source`` to ``dest`` (refused if it exists, unless
    ``replace``); StoreError saying what went wrong, with nothing left at ``dest``."""
    if not source.exists():
        raise StoreError(f"there is no store at {source}")
    if dest.exists() and not replace:
        raise StoreError(f"{dest} exists: pass --force to replace it")
    if dest.exists() and dest.resolve() == source.resolve():
        raise StoreError(f"{dest} is the store itself")
    if dest.is_dir():
        raise StoreError(f"{dest} is a directory: name the file to write")
    began = time.monotonic()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        messages, inbox = _copy(source, tmp, dest)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _sync_dir(dest.parent)
    except OSError as exc:
        raise StoreError(f"cannot write the backup {dest}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        with contextlib.suppress(OSError):
            Path(f"{tmp}-journal").unlink()
    return Backup(
        str(source), str(dest), dest.stat().st_size, messages, inbox, time.monotonic() - began
    )


def _copy(source: Path, target: Path, dest: Path) -> tuple[int, int]:
    """The pages of ``source`` into ``target`` (the file to become ``dest``) in one step
    (one read snapshot), then checked; the copy's message and inbox counts."""
    try:
        src = sqlite3.connect(source, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {source}: {exc}") from exc
    try:
        src.execute("PRAGMA query_only = ON")
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages at once: a step at a time would restart on writes
            # One file, no write-ahead log beside it (the store opens it in WAL again).
            dst.execute("PRAGMA journal_mode = DELETE")
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the copy of {source} does not check out: {check}")
            messages = int(dst.execute("SELECT count(*) FROM messages").fetchone()[0])
            inbox = int(dst.execute("SELECT count(*) FROM inbox").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot copy the store {source} to {dest}: {exc}") from exc
    finally:
        src.close()
    return messages, inbox


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
