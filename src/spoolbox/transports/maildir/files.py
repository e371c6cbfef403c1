"""The blocking file-system steps both directions share: a durable ``mkdir -p``, a
maildir made or checked, a directory fsynced; and a cleanup run off the loop.

Every blocking function here runs in a worker thread (``support.run_blocking``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from spoolbox.contract import Support


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(path: str) -> None:
    """Create ``path`` and missing parents (0o700), each made durable in its parent."""
    missing: list[str] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile, or a file: the delivery reports ENOTDIR
        _fsync_dir(os.path.dirname(d))


def _ensure_maildir(path: str, create: bool) -> None:
    if create:
        _mkdirs(path)
        for sub in ("tmp", "new", "cur"):
            _mkdirs(os.path.join(path, sub))
        return
    st = os.stat(path)  # FileNotFoundError -> 5.1.1
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


async def _finally_blocking(support: Support, fn: Callable[[], None]) -> None:
    """Run cleanup ``fn`` off the loop; if cancelled meanwhile, finish it here."""
    try:
        await support.run_blocking(fn)
    except BaseException:
        fn()  # idempotent; a cancel arrived while the cleanup was on its way
        raise
