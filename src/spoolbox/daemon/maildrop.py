"""The daemon's side of the maildrop (:mod:`spoolbox.api.maildrop`): it makes the
directory, and takes in what users left there, at its start and then every second.

For each drop file (a name not starting with ``.``) it opens it without following a
link, checks that it is a regular file with one link and at most
:data:`~spoolbox.api.maildrop.MAX_DROP` bytes, reads it, commits its messages in one
transaction (``Spooler.submit_many``: idempotent per message id, so a file taken in
again after a crash between the commit and the removal queues nothing twice), then
removes it.  A file that is not a drop (or is too large, or has more than one link)
is moved to ``corrupt/`` (the daemon's own, mode 0700) and logged; a link is
removed.  A store that fails leaves the file for the next round.  A name starting
with ``.`` is a drop being written; one older than a day was left by a writer that
died, and is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..api.maildrop import MAX_DROP, DropError, decode_drop, is_drop_name
from ..model import NewMessage
from ..profile import ProfileError
from ..store import StoreError

if TYPE_CHECKING:
    from .. import Spooler

__all__ = ["DIRECTORY_MODE", "MaildropPickup"]

log = logging.getLogger("spoolbox.daemon")

#: sticky (only a file's owner, or the directory's, removes or renames it), the owner
#: everything, the group write and search (no listing), others nothing.
DIRECTORY_MODE = 0o1730
#: How often the directory is looked at while the daemon runs (seconds).
INTERVAL = 1.0
#: A ``.name`` (a drop being written) older than this was left by a writer that died.
STALE = 86400.0


class MaildropPickup:
    """``[daemon] maildrop``, taken in by ``daemon`` (module doc)."""

    def __init__(
        self,
        spooler: Callable[[], Spooler | None],
        directory: Path,
        group: str,
        profile_path: Path,
    ) -> None:
        self._spooler = spooler  # the daemon's spooler of the moment (a reload replaces it)
        self.directory = directory
        self._group = group
        self._profile_path = profile_path
        self._task: asyncio.Task[None] | None = None
        self._failing = ""  # the store error of the last round, logged once

    def prepare(self) -> None:
        """Make the directory (or put its owner, group and mode right); ProfileError or
        OSError if it cannot be made safe."""
        try:
            gid = grp.getgrnam(self._group).gr_gid
        except KeyError:
            raise ProfileError(
                self._profile_path,
                f"no such group {self._group!r} (create it: groupadd --system {self._group})",
                "[daemon] socket_group",
            ) from None
        path = self.directory
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise ProfileError(
                self._profile_path,
                f"{path} is not a directory (a link or a file): it cannot be the maildrop",
                "[daemon] maildrop",
            )
        if st.st_uid != os.geteuid():
            raise ProfileError(
                self._profile_path,
                f"{path} belongs to {_user(st.st_uid)}, not to the daemon's user "
                f"{_user(os.geteuid())}: the maildrop must be the daemon's",
                "[daemon] maildrop",
            )
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        if stat.S_IMODE(st.st_mode) != DIRECTORY_MODE:
            os.chmod(path, DIRECTORY_MODE)
        corrupt = path / "corrupt"
        with contextlib.suppress(FileExistsError):
            os.mkdir(corrupt, 0o700)
        os.chmod(corrupt, 0o700)

    async def start(self) -> None:
        self.prepare()
        try:  # what was left while the daemon was down, before it says it is ready
            await self.take()
        except OSError as exc:
            log.warning("maildrop %s: %s", self.directory, exc)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.take()
            except OSError as exc:
                log.warning("maildrop %s: %s", self.directory, exc)

    async def take(self) -> int:
        """Take in every drop there now; how many files were taken."""
        taken = 0
        for name in await asyncio.to_thread(self._names):
            read = await asyncio.to_thread(self._read, name)
            if read is not None and await self._submit(name, *read):
                taken += 1
        return taken

    def _names(self) -> list[str]:
        """The finished drops' names, oldest first (the others cleaned up)."""
        with os.scandir(self.directory) as entries:
            names = sorted(e.name for e in entries if e.name != "corrupt")
        finished = []
        for name in names:
            if is_drop_name(name):
                finished.append(name)
            else:
                self._stale(name)
        return finished

    def _read(self, name: str) -> tuple[list[NewMessage], int] | None:
        """The messages of drop ``name`` and its owner's uid, or None (the file is
        gone, or was not a drop and is moved away)."""
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            try:
                link = stat.S_ISLNK(os.lstat(path).st_mode)  # O_NOFOLLOW: ELOOP
            except OSError:
                return None  # gone meanwhile
            if link:
                log.error("maildrop: %s is a link, not a drop: removed", name)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:  # a socket, say: moved aside, not tried again every second
                self._quarantine(name, f"it cannot be read: {exc.strerror or exc}", -1)
            return None
        try:
            st = os.fstat(fd)
            why = _not_a_drop(st)
            data = b"" if why else _read_all(fd, MAX_DROP + 1)
        finally:
            os.close(fd)
        if not why and len(data) > MAX_DROP:
            why = f"more than {MAX_DROP} bytes"
        if not why:
            try:
                return decode_drop(data), st.st_uid
            except DropError as exc:
                why = str(exc)
        self._quarantine(name, why, st.st_uid)
        return None

    async def _submit(self, name: str, messages: list[NewMessage], uid: int) -> bool:
        spooler = self._spooler()
        if spooler is None:  # between two spoolers (a reload): the next round
            return False
        try:
            infos = await spooler.submit_many(messages)
        except StoreError as exc:
            if str(exc) != self._failing:
                log.warning("maildrop: %s waits: the store failed: %s", name, exc)
            self._failing = str(exc)
            return False
        self._failing = ""
        await asyncio.to_thread(_remove, self.directory / name)
        log.info("maildrop: queued %s from %s", ", ".join(i.id for i in infos), _user(uid))
        return True

    def _quarantine(self, name: str, why: str, uid: int) -> None:
        log.error(
            "maildrop: %s from %s is not a drop (%s): moved to corrupt/", name, _user(uid), why
        )
        try:
            os.rename(self.directory / name, self.directory / "corrupt" / name)
        except OSError as exc:
            log.error("maildrop: %s cannot be moved to corrupt/: %s; removed", name, exc)
            with contextlib.suppress(OSError):
                os.unlink(self.directory / name)

    def _stale(self, name: str) -> None:
        """Remove ``name`` (a drop being written) if its writer left it a day ago."""
        path = self.directory / name
        with contextlib.suppress(OSError):
            if time.time() - os.lstat(path).st_mtime > STALE:
                os.unlink(path)
                log.warning("maildrop: %s, a drop never finished, removed", name)


def _read_all(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``fd``, to its end."""
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _not_a_drop(st: os.stat_result) -> str:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"{st.st_nlink} links to it (a drop has one)"
    if st.st_size > MAX_DROP:
        return f"{st.st_size} bytes, more than {MAX_DROP}"
    return ""


def _user(uid: int) -> str:
    if uid < 0:
        return "an unknown user"
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
