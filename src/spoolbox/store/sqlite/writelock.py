"""A queue in the kernel for the store's write lock, shared by every process.

SQLite's write lock has no queue: a writer that finds it taken can only try again
later (:mod:`.connection` does so after 50 µs, then after pauses doubled up to 1 ms),
so it learns of the release up to a pause late, and the processes sharing one file
(the daemon and its delivery workers, the listener process) wait for each other
longer than the other holds the lock.  Each writer of spoolbox therefore first takes
an exclusive ``flock(2)`` on a file beside the store, ``<store>-lock``, and only then
SQLite's lock: the kernel wakes a writer waiting for the side file the moment the
holder lets it go.  SQLite's lock is then free, unless a program that does not know
the side file holds it (the ``sqlite3`` shell, ``spoolbox store compact``'s
connection, an older spoolbox): then the writer waits for it as before.

The side file holds nothing; it is made with the store's mode (less the umask) and
opened read-only (``flock`` needs no more), so every user who may read it queues in
it.  Where it cannot be opened (a directory this user may not write to create it, a
file this user may not read) or locked (a file system without ``flock``), the store
goes on without it: SQLite's lock alone serialises the writers, as before.

A blocking ``flock`` has no time limit, and a writer must not wait for ever behind a
process that was stopped (SIGSTOP) while it held the lock: a wait goes to a helper
thread, which blocks in ``flock``, and the writer waits for the helper at most the
busy timeout.  A wait that timed out leaves the helper blocked; when it gets the lock
it hands it to the writer waiting then, or lets it go at once.  ``flock`` belongs to
the open file, so a lock the helper took is released by the writer's thread.  A
process killed while holding the lock loses it with its files.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
from typing import Final

__all__ = ["WriteLock", "lock_path"]

_CLOSE: Final = -1


def lock_path(db_path: str) -> str:
    """The side file of the store at ``db_path`` (beside the file its path resolves
    to, so two paths to one store share one lock)."""
    return os.path.realpath(db_path) + "-lock"


class WriteLock:
    """The exclusive lock on one store's side file, for one connection (its methods
    are called from one thread at a time).  :meth:`open` it, :meth:`try_acquire` or
    :meth:`acquire`, :meth:`release` after COMMIT or ROLLBACK, :meth:`close`."""

    def __init__(self, fd: int, path: str) -> None:
        self.path = path
        self.held = False
        self._fd = fd
        self._mu = threading.Lock()
        self._granted = threading.Event()
        self._waiting = False  # a writer waits for the helper's flock now
        self._asked = False  # the helper has a flock to make (or is making it)
        self._closed = False
        self._requests: queue.SimpleQueue[int] | None = None
        self._helper: threading.Thread | None = None

    @classmethod
    def open(cls, db_path: str) -> WriteLock | None:
        """The lock of the store at ``db_path``, its side file made if missing; None
        where it cannot be opened (the store then relies on SQLite's lock alone)."""
        path = lock_path(db_path)
        try:
            mode = os.stat(db_path).st_mode & 0o666
        except OSError:
            mode = 0o600
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError:
            return None
        try:  # a file system without flock (some network and FUSE ones) says so now
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another process holds it: flock works here
        except OSError:
            os.close(fd)
            return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return cls(fd, path)

    def try_acquire(self) -> bool:
        """Take the lock if no other open file holds it (True), else nothing (False)."""
        if self._asked:  # the helper is still blocked for an earlier wait: join it
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds: True once held, False if
        another process held it all that time."""
        if self.try_acquire():
            return True
        with self._mu:
            self._granted.clear()
            self._waiting = True
            if not self._asked:
                self._asked = True
                self._ask()
        if not self._granted.wait(timeout):
            with self._mu:
                if not self._granted.is_set():
                    self._waiting = False
                    return False
        self.held = True
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the lock and close the side file (by the helper, if it is still
        blocked in a wait: closing the file under it would not wake it); once."""
        self.release()
        with self._mu:
            if self._closed:
                return
            self._closed = True
            if self._requests is not None:
                self._requests.put(_CLOSE)
            else:
                os.close(self._fd)

    # -- the helper thread ---------------------------------------------------------------
    def _ask(self) -> None:
        if self._requests is None:
            self._requests = queue.SimpleQueue()
            self._helper = threading.Thread(
                target=self._wait_loop, name="spoolbox-store-lock", daemon=True
            )
            self._helper.start()
        self._requests.put(0)

    def _wait_loop(self) -> None:
        requests = self._requests
        assert requests is not None
        while True:
            if requests.get() == _CLOSE:
                os.close(self._fd)
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._mu:
                self._asked = False
                if self._waiting and not self._closed:
                    self._waiting = False
                    self._granted.set()
                else:  # the writer gave up (or closed): let go at once
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
