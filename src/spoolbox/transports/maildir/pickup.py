"""Inbound: the files of a pickup maildir, read and removed.

:func:`_scan_pickup` lists what may be picked up (regular, non-empty, non-dot files
of ``new/`` and ``cur/``, oldest first), :class:`_Source` reads one in worker
threads, :func:`_remove_picked` removes it once its message is committed (also
after a reader moved it to ``cur/``, and only if it is still the same file), and
:class:`_PickupFile` is how a picked-up file is recorded in the profile section.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import Any

from .files import _fsync_dir
from .naming import _unique_part

#: Profile-section key prefix of picked-up files committed but not yet removed.
_PICKED = "picked:"


@dataclass(frozen=True, slots=True)
class _PickupFile:
    sub: str  # "new" or "cur"
    name: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """The unique part of the name (a reader moving it to cur/ appends ``:2,...``)."""
        return _unique_part(self.name)

    @property
    def rel(self) -> str:
        return f"{self.sub}/{self.name}"

    def to_state(self) -> dict[str, str | int]:
        return {"sub": self.sub, "name": self.name, "size": self.size, "mtime": str(self.mtime_ns)}

    @classmethod
    def from_state(cls, value: Any) -> _PickupFile | None:
        try:
            f = cls(str(value["sub"]), str(value["name"]), int(value["size"]), int(value["mtime"]))
        except (TypeError, KeyError, ValueError):
            return None
        if f.sub not in ("new", "cur") or "/" in f.name or f.name in ("", ".", ".."):
            return None
        return f


def _scan_pickup(pickup: str) -> list[_PickupFile]:
    """Regular, non-empty, non-dot files of new/ and cur/, oldest first."""
    found: list[_PickupFile] = []
    for sub in ("new", "cur"):
        try:
            entries = os.scandir(os.path.join(pickup, sub))
        except FileNotFoundError:
            continue
        with entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_size > 0:
                    found.append(_PickupFile(sub, e.name, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: (f.mtime_ns, f.name))
    return found


def _remove_picked(pickup: str, f: _PickupFile) -> bool:
    """Remove the file picked up as ``f`` (also after a reader moved it to cur/) if it
    is still the same file (size and mtime); make the removal durable.  False if gone."""
    candidates = [os.path.join(pickup, f.sub, f.name)]
    with contextlib.suppress(FileNotFoundError), os.scandir(os.path.join(pickup, "cur")) as it:
        candidates += [e.path for e in it if _unique_part(e.name) == f.key]
    for path in candidates:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == f.size and st.st_mtime_ns == f.mtime_ns:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            _fsync_dir(os.path.dirname(path))
            return True
    return False


class _Source:
    """A picked-up file being read (in worker threads; see :class:`_TmpFile`)."""

    def __init__(self, fd: int) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: str) -> _Source:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def read(self, size: int) -> bytes:
        with self._lock:
            if self._fd is None:
                return b""
            return os.read(self._fd, size)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
