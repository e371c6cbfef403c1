"""Outbound: one message written into one maildir, and what a failure means.

Written to ``tmp/`` under a unique name, fsynced, hard-linked into ``new/`` (renamed
where the file system has no hard links), the ``tmp/`` name removed and ``new/``
fsynced (:class:`_TmpFile`); ``tmp/`` files a crash left are swept after 36 hours
(:func:`_remove_stale_tmp`); an ``errno`` maps to a recipient's enhanced status
(:func:`status_for_error`); the trace lines take the content's line ending
(:func:`_line_ending`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading

from .files import _fsync_dir
from .naming import unique_name

_NAME_TRIES = 100
_NO_HARDLINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}
)

#: errno -> (enhanced status, what it means); the class says failed (5) or deferred (4).
_ERRNO_STATUS: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("5.1.1", "no such maildir"),
    errno.ENOTDIR: ("5.1.1", "not a maildir"),
    errno.ENAMETOOLONG: ("5.1.3", "maildir path too long"),
    errno.EFBIG: ("5.3.4", "message too big for the file system"),
    errno.EACCES: ("4.2.0", "permission denied"),
    errno.EPERM: ("4.2.0", "operation not permitted"),
    errno.EROFS: ("4.3.0", "read-only file system"),
    errno.ENOSPC: ("4.3.1", "file system full"),
    errno.EDQUOT: ("4.2.2", "quota exceeded"),
}
_DEFAULT_STATUS = ("4.3.0", "file system error")


def status_for_error(exc: OSError) -> tuple[str, str]:
    """The enhanced status code (RFC 3463) and a short reason for a delivery error.

    A code of class 5 fails the recipient for good, class 4 defers it.
    """
    return _ERRNO_STATUS.get(exc.errno or 0, _DEFAULT_STATUS)


#: A ``tmp/`` file not touched for this long is left over from a crash (the Maildir
#: specification's 36 hours): the first delivery of a session to a maildir removes it.
STALE_TMP_SECONDS = 36 * 3600


def _remove_stale_tmp(path: str, now: float) -> list[str]:
    """Remove the regular files in ``path/tmp`` not accessed or modified for
    STALE_TMP_SECONDS (left by a delivery cut off by a crash); returns their names."""
    removed: list[str] = []
    tmp = os.path.join(path, "tmp")
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return removed
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - max(st.st_atime, st.st_mtime) > (
                STALE_TMP_SECONDS
            ):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue  # gone meanwhile, or not ours to remove: leave it
    return removed


class _TmpFile:
    """One delivery in progress: ``tmp/<name>`` being written, then put into ``new/``.

    Every method runs in a worker thread; a lock keeps :meth:`abort` from closing
    the descriptor under a write still running in another thread after a cancel.
    """

    def __init__(self, maildir: str, host: str, name: str, fd: int) -> None:
        self._lock = threading.Lock()
        self.maildir = maildir
        self.host = host
        self.name = name
        self.tmp = os.path.join(maildir, "tmp", name)
        self._fd: int | None = fd
        self._tmp_exists = True

    @classmethod
    def create(cls, maildir: str, host: str) -> _TmpFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(_NAME_TRIES):
            name = unique_name(host)
            try:
                fd = os.open(os.path.join(maildir, "tmp", name), flags, 0o600)
            except FileExistsError:
                continue
            return cls(maildir, host, name, fd)
        raise FileExistsError(errno.EEXIST, "no unique name found", os.path.join(maildir, "tmp"))

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("write to a delivery already finished")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def commit(self) -> str:
        """fsync, close, put into ``new/`` and fsync it; the path in ``new/``."""
        with self._lock:
            if self._fd is None:
                raise ValueError("commit of a delivery already finished")
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final = self._publish()
            try:
                _fsync_dir(os.path.join(self.maildir, "new"))
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(final)  # not durable: take it back, the recipient is retried
                raise
            return final

    def _publish(self) -> str:
        new_dir = os.path.join(self.maildir, "new")
        name = self.name
        for _ in range(_NAME_TRIES):
            target = os.path.join(new_dir, name)
            try:
                os.link(self.tmp, target)
            except FileExistsError:
                name = unique_name(self.host)
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARDLINKS:
                    raise
                if os.path.lexists(target):
                    name = unique_name(self.host)
                    continue
                os.rename(self.tmp, target)  # a file system without hard links
                self._tmp_exists = False
                return target
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
                self._tmp_exists = False
            return target
        raise FileExistsError(errno.EEXIST, "no unique name found", new_dir)

    def abort(self) -> None:
        """Close and remove the ``tmp/`` file (best effort, idempotent)."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self._tmp_exists:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)
                self._tmp_exists = False


def _line_ending(first: bytes) -> bytes:
    """The line ending the content uses (CRLF, RFC 5322's, when it cannot tell)."""
    i = first.find(b"\n")
    if i == -1 or first[i - 1 : i] == b"\r":
        return b"\r\n"
    return b"\n"
