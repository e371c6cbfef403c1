"""The daemon's own files, removed or replaced under it: a stop, not silent data loss.

A daemon keeps its SQLite store open and its pid file locked for its whole life.
When someone deletes the data directory (or the store file, or puts another file in
its place) while it runs, the open descriptors still work: SQLite goes on writing
mail into a file that no path leads to any more, every message accepted from then on
is gone at the next start, and a second daemon may start on the same path, since
the lock it would have met is on the removed file.  Postfix's daemons stop when
their queue directory goes; so does spoolbox's.

The daemon records each watched file's identity (device and inode) once it has
opened it (and again after a reload, whose profile may name another store), looks
again every :data:`INTERVAL` seconds, and when one of them is
missing or is another file, logs an error that says which and what it means, and
stops with exit status :data:`EXIT_FILES_GONE` (``EX_IOERR``; systemd's
``Restart=on-failure`` starts it again, on whatever is at the path then).

:func:`identity` and :func:`watch_files` do the I/O; :func:`changes` is the
decision: which files are not what they were, in words.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "EXIT_FILES_GONE",
    "INTERVAL",
    "FileIdentity",
    "changes",
    "identities",
    "identity",
    "watch_files",
]

#: Seconds between two looks (a ``stat`` of each file: nothing to measure).
INTERVAL: Final = 2.0
#: The daemon's exit status when a file it holds went (sysexits.h EX_IOERR).
EXIT_FILES_GONE: Final = 74


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a path leads to: its device and inode."""

    device: int
    inode: int


def identity(path: Path) -> FileIdentity | None:
    """The file at ``path`` now (None: nothing is there)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a parent became a file
        return None
    return FileIdentity(st.st_dev, st.st_ino)


def identities(paths: Mapping[str, Path]) -> dict[str, tuple[Path, FileIdentity]]:
    """Each named file's identity now, for those that exist (a file the daemon has not
    made, such as a store on PostgreSQL, is simply not given)."""
    found: dict[str, tuple[Path, FileIdentity]] = {}
    for what, path in paths.items():
        ident = identity(path)
        if ident is not None:
            found[what] = (path, ident)
    return found


def changes(
    watched: Mapping[str, tuple[Path, FileIdentity]],
    now: Mapping[str, FileIdentity | None],
) -> dict[str, str]:
    """What became of each watched file that is not there any more, in words, by its
    name (empty: each is still there): ``now`` holds each one's identity at its path
    as just looked up (None: missing)."""
    said: dict[str, str] = {}
    for what, (path, was) in watched.items():
        if what not in now:
            continue
        current = now[what]
        if current is None:
            said[what] = f"the {what} {path} was removed"
        elif current != was:
            said[what] = f"the {what} {path} was replaced by another file"
    return said


async def watch_files(
    watched: Callable[[], Mapping[str, tuple[Path, FileIdentity]]],
    gone: Callable[[dict[str, str]], None],
    *,
    interval: float = INTERVAL,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Look at the files ``watched()`` gives (the daemon records them again at a
    reload, which may open another store) every ``interval`` seconds; when one is
    missing or replaced, call ``gone`` with what happened (once) and return."""
    while True:
        await sleep(interval)
        now = watched()
        said = changes(now, {what: identity(path) for what, (path, _) in now.items()})
        if said:
            gone(said)
            return
