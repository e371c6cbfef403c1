"""Where a durable SQLite commit's fsync is made, for one writer alone: inside COMMIT
(``synchronous = FULL``, SQLite's own) or by the caller after it (``NORMAL``, then
``os.fdatasync`` of the WAL file: what ``SQLiteStore(sync_after_unlock=True)`` does),
and what a ``stat``/``fstat`` of the WAL next to that ``fdatasync`` costs.

Plain ``sqlite3``, no spoolbox code: a table with two indexes, a row of 2 KB and two
index entries a commit, ``--commits`` commits a run, the modes taking turns within
each of ``--runs`` rounds; medians of commits a second, with the disk's fsync rate
(``write(512 bytes) + fsync``) measured in the same directory each round::

    .venv/bin/python bench/wal_sync.py --runs 5 --commits 1000

This is the measurement behind two choices in ``spoolbox.store.sqlite.walsync``:
the sync after the lock only where other processes write the file (alone, a process
gains nothing from releasing the lock early), and no ``stat`` before each sync.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from _counts import fsync_rate

MODES = ("full", "after", "fstat+after", "stat+after")


def _run(directory: Path, mode: str, commits: int) -> float:
    path = directory / f"{mode}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x BLOB, y TEXT, z INTEGER)")
        conn.execute("CREATE INDEX ty ON t (y)")
        conn.execute("CREATE INDEX tz ON t (z)")
        conn.execute(f"PRAGMA synchronous = {'FULL' if mode == 'full' else 'NORMAL'}")
        conn.execute("INSERT INTO t VALUES (x'00', 'first', 0)")  # the WAL exists now
        wal = f"{path}-wal"
        fd = os.open(wal, os.O_RDONLY)

        def after() -> None:
            if mode == "fstat+after":
                os.fstat(fd)
            elif mode == "stat+after":
                os.stat(wal)
            if mode != "full":
                os.fdatasync(fd)

        started = time.perf_counter()
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO t VALUES (?, ?, ?)", (os.urandom(2000), os.urandom(8).hex(), i)
            )
            conn.execute("COMMIT")
            after()
        elapsed = time.perf_counter() - started
        os.close(fd)
    finally:
        conn.close()
    return commits / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    disk: list[float] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            disk.append(fsync_rate(Path(tmp)))
            order = MODES[run % len(MODES) :] + MODES[: run % len(MODES)]
            for mode in order:
                rates[mode].append(_run(Path(tmp), mode, args.commits))
        print(
            f"run {run + 1}: "
            + ", ".join(f"{m} {rates[m][-1]:,.0f}/s" for m in MODES)
            + f"; disk {disk[-1]:,.0f} fsync/s"
        )
    full = statistics.median(rates["full"])
    print(
        f"\nmedians of {args.runs} runs of {args.commits} commits (disk {min(disk):,.0f}-"
        f"{max(disk):,.0f} fsync/s):"
    )
    for mode in MODES:
        median = statistics.median(rates[mode])
        print(f"  {mode:12} {median:8,.0f} commits/s  {median / full:5.2f}x full")


if __name__ == "__main__":
    main()
