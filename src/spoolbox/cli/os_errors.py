"""One line for an operating system or store error, with a hint at the fix.

``spoolbox: error: cannot open the store /x/y.db: read-only file system (hint: ...)``
instead of a traceback (``spoolbox --debug`` shows the traceback).  The cause is
found by its errno, or by SQLite's result code when SQLite met it; the wording of
each cause and its hint is one table (:data:`_CAUSES`).
"""

from __future__ import annotations

import errno
import os
import re

__all__ = ["EXIT_OS_ERROR", "os_error_line"]

#: The exit code of an operating system or store error (sysexits.h EX_IOERR).
EXIT_OS_ERROR = 74

#: errno -> (what it is, in words; what to do)
_CAUSES: dict[int, tuple[str, str]] = {
    errno.EROFS: (
        "read-only file system",
        "put the data directory (data_dir, [store] path) on a writable file system, "
        "or remount it read-write; under systemd, list it in ReadWritePaths= or use "
        "StateDirectory=",
    ),
    errno.ENOENT: (
        "no such file or directory",
        "create the directory or fix the path in the profile (paths are relative to "
        "the profile's directory)",
    ),
    errno.EACCES: (
        "permission denied",
        "run spoolbox as the user who owns the data directory, or give that user "
        "access (chown/chmod)",
    ),
    errno.ENOSPC: (
        "no space left on the device",
        "free space on that file system (df -h shows it) and try again; what was "
        "accepted before is still in the store",
    ),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space or raise the user's quota on that file system and try again",
    ),
    errno.ENOTDIR: (
        "a part of the path is not a directory",
        "fix the path in the profile",
    ),
}
_CAUSES[errno.EPERM] = _CAUSES[errno.EACCES]

#: SQLite's primary result codes (the low byte of the extended code) -> errno
_SQLITE: dict[int, int] = {
    3: errno.EACCES,  # SQLITE_PERM
    8: errno.EROFS,  # SQLITE_READONLY
    13: errno.ENOSPC,  # SQLITE_FULL
    14: errno.ENOENT,  # SQLITE_CANTOPEN
    23: errno.EACCES,  # SQLITE_AUTH
}


#: what the SQLite store's own checks say (store/sqlite/schema.py) -> errno
_STORE_WORDS = (("mounted read-only", errno.EROFS), ("is not writable", errno.EACCES))
_ERRNO_TAIL = re.compile(r"\[Errno \d+\] .*$")


def _errno(exc: BaseException) -> int | None:
    """The errno behind ``exc`` or the exceptions it was raised from."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        number = getattr(e, "os_errno", None)  # spoolbox.store.StoreFull
        if isinstance(number, int):
            return number
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE:
            return _SQLITE[code & 0xFF]
        for words, number in _STORE_WORDS:  # the SQLite store's own checks
            if words in str(e):
                return number
        e = e.__cause__ or e.__context__
    return None


def os_error_line(exc: BaseException) -> str:
    """``exc`` as one line: what failed, on which file, why, and a hint."""
    number = _errno(exc)
    cause, hint = _CAUSES.get(number or 0, (None, None))
    if isinstance(exc, OSError):
        why = cause or exc.strerror or str(exc)
        names = [os.fsdecode(f) for f in (exc.filename, exc.filename2) if f is not None]
        text = f"cannot use {' -> '.join(names)}: {why}" if names else why
    else:
        text = str(exc).rstrip(".")
        if cause is not None:
            # "...: [Errno 2] No such file or directory: '/x/.y.new'" -> "...: <cause>"
            text, n = _ERRNO_TAIL.subn(cause, text)
            said = any(words in text for words, _ in _STORE_WORDS)
            if not n and not said and cause not in text:
                text = f"{text}: {cause}"
    if hint is not None:
        text += f" (hint: {hint})"
    return text
