"""A durable commit's fsync, made after SQLite has released the write lock.

At ``synchronous = FULL`` SQLite syncs the WAL inside ``COMMIT``, while it still holds
the database's one write lock: every other writer (the daemon's claims and settles
while the listener accepts) waits for the disk too.  The store commits such a
transaction at ``NORMAL`` instead (the frames are written to the WAL, the lock is
released) and then syncs the WAL file itself with :class:`WalSync`, before the
submitter is told the message is taken.  The commit is then as durable as at
``FULL`` when the caller hears of it, by what SQLite documents of the WAL
(https://sqlite.org/wal.html, https://sqlite.org/pragma.html#pragma_synchronous):

* the WAL is a log appended in order: the sync makes our frames durable and, with
  them, every frame written before ours (the header included, and the progress
  commits of other connections, which were ordered before ours anyway);
* at ``NORMAL`` SQLite syncs the WAL before each checkpoint, the database file after
  it, and the WAL header when the log starts over: if a checkpoint copied our frames
  into the database before our sync, they were durable there before the WAL could be
  written over;
* a new WAL file's name is made durable by syncing its directory, once per file.

What changes is only when others may see the commit: at ``NORMAL`` a transaction is
visible the moment its lock is released, before the sync.  The daemon may therefore
claim a message (even send it) a fraction of a millisecond before its submitter
hears "taken".  If the power fails in that moment the submitter never heard "taken"
and sends again: a duplicate, the same bound as for a message in flight at a crash,
never a loss.  If the sync itself fails (an I/O error), the submitter gets the error,
as at ``FULL``, and the message may still be delivered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["WalSync"]


class WalSync:
    """Syncs the WAL file of the database at ``db_path`` (``<db_path>-wal``, beside
    the file the path resolves to) with ``fsync`` (``os.fdatasync``).

    The file is opened at the first sync and kept open: SQLite removes a WAL file
    only when its last connection closes, and the connection this object serves is
    open as long as it is.  Nothing is checked before each sync: a ``stat`` or
    ``fstat`` of the WAL before its ``fdatasync`` made a loop of commits 11-20% slower
    here (ext4; ``bench/wal_sync.py``)."""

    def __init__(self, db_path: str, *, fsync: Callable[[int], None] = os.fdatasync) -> None:
        real = os.path.realpath(db_path)
        self.db_path = real
        self.wal_path = real + "-wal"
        self._fsync = fsync
        self._fd: int | None = None
        self.opened = 0  # WAL files opened (and their directory synced)

    def sync(self) -> None:
        """Make every commit written to the WAL so far durable; OSError if the disk
        refuses."""
        fd = self._fd
        if fd is None:
            try:
                fd = self._open()
            except FileNotFoundError:
                # No WAL (a connection that is not ours checkpointed and removed it
                # before ours wrote): what was committed is in the database file.
                self._sync_path(self.db_path)
                return
        self._fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        self._fd = fd
        self.opened += 1
        # A WAL file SQLite may have just created: its name must survive a power cut.
        self._sync_path(str(Path(self.wal_path).parent))
        return fd

    def _sync_path(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)
