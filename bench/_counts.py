"""What a system under test costs the disk, per message: fsyncs, bytes written, and the
disk's own fsync rate to read them against.

* :func:`fsync_rate`: ``write(512 bytes) + os.fsync`` in a loop on a file in a
  directory: the disk's rate of durable writes (what one fsync per message caps a
  system at), measured in the same run as the figures it is printed beside.
* :func:`process_tree`: a process and its descendants (from ``/proc/*/stat``);
  :func:`cpu_seconds`: the CPU time they used so far.
* :func:`daemon_store_counters`: a running daemon's store counters with its delivery
  workers' (commits, waits for SQLite's write lock, time holding it), and
  :func:`per_message`: those and the CPU time per message (:data:`COUNT_KEYS`).
* :func:`written_bytes`: the sum of ``write_bytes`` of ``/proc/PID/io`` over
  processes: the bytes they caused to be sent to the storage layer (page cache pages
  they dirtied, so page-granular).  The kernel adds a reaped child's counts to its
  parent's, so the sum over a tree taken before and after a batch is what the tree
  wrote meanwhile, including processes that came and went (Postfix's).
* :func:`counted_tree` and :func:`pairs`: the tree compiled before it is counted,
  and the instructions a message from pairs of runs of two sizes.
* :func:`find_valgrind`, :func:`cachegrind` and :func:`instructions`: a command run
  under Valgrind's cachegrind counting only instructions (``--cache-sim=no``), with a
  fixed string hash seed (``PYTHONHASHSEED=0``: hashes decide dict probes, which move
  the count), and the count (``I refs``) read from its report.
* :class:`SyscallCount`: ``strace -f -c`` attached to running processes for the
  fsync family (``fsync``, ``fdatasync``, ``sync_file_range``, ``syncfs``, ``sync``,
  ``msync``), detached with SIGINT; :meth:`SyscallCount.counts` parses its summary.
  ptrace slows the traced processes down, so counts come from a run of their own,
  never from a timed one.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "COUNT_KEYS",
    "SYNC_CALLS",
    "SyscallCount",
    "cachegrind",
    "counted_tree",
    "cpu_seconds",
    "daemon_store_counters",
    "find_valgrind",
    "fsync_rate",
    "instructions",
    "pairs",
    "per_message",
    "process_tree",
    "written_bytes",
]

SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "sync", "msync")


def find_valgrind() -> str:
    """The ``valgrind`` program, or SystemExit saying how to install it."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit(
            "bench: counting instructions needs valgrind (apt-get install -y valgrind)"
        )
    return valgrind


def cachegrind(valgrind: str, *options: str) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that count a program's instructions (append
    the program); ``options``: Valgrind's own more (``--fair-sched=yes``, a log file)."""
    cmd = [
        valgrind,
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        *options,
    ]
    return cmd, {**os.environ, "PYTHONHASHSEED": "0"}


def counted_tree() -> None:
    """Compile the spoolbox tree being counted (a tree's first run would compile its
    modules: half a billion instructions) and print which tree it is."""
    import spoolbox

    where = os.path.dirname(spoolbox.__file__)
    compileall.compile_dir(where, quiet=1)
    print(f"Python {sys.version.split()[0]}, spoolbox {where}")


def pairs(count: Callable[[int, str], int], small: int, large: int, repeat: int) -> float:
    """The instructions a message, the median of ``repeat`` pairs of runs of
    ``count(n, tag)`` (one run's instructions with ``n`` messages): the difference of
    a pair over the difference of its sizes, start-up and shutdown left out.  Each
    pair is printed."""
    per: list[float] = []
    for i in range(repeat):
        low, high = count(small, f"s{i}"), count(large, f"l{i}")
        per.append((high - low) / (large - small))
        print(f"pair {i + 1}: {low:,} / {high:,} instructions: {per[-1]:,.0f} a message")
    return statistics.median(per)


def instructions(report: str) -> int | None:
    """The instruction count (``I refs``) of cachegrind's report; None if it has none."""
    found = re.search(r"I\s+refs:\s+([\d,]+)", report)
    return None if found is None else int(found.group(1).replace(",", ""))


def fsync_rate(directory: Path, n: int = 300) -> float:
    """Durable writes a second on ``directory``'s disk: ``n`` x (512 bytes + fsync)."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 512)
            os.fsync(fd)
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it, as found now."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    tree = [root]
    frontier = [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` (those still there) so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds so far of a PostgreSQL server's processes (the postmaster and its
    children: the backends, the writers), found from ``postmaster.pid`` in ``data_dir``."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    return cpu_seconds(process_tree(postmaster))


#: what :func:`per_message` reports
COUNT_KEYS = ("cpu ms/msg", "commits/msg", "lock waits/msg", "lock wait ms/msg", "write ms/msg")


def daemon_store_counters(profile: Path) -> dict[str, float]:
    """The store counters of the daemon running ``profile`` and of its delivery
    workers (each worker reports its own to the daemon every second, on its status
    row: read after a pause), added up."""
    from spoolbox.client import Client

    time.sleep(1.5)
    client = Client(profile)
    store = client.statistics()["store"]
    total = {
        "commits": float(store["commits"]),
        "lock waits": float(store.get("lock_waits", 0)),
        "lock wait s": float(store.get("lock_wait_seconds", 0.0)),
        "write s": float(store.get("write_seconds", 0.0)),
    }
    for row in client.status():
        if str(row["name"]).startswith("worker:"):
            c = row.get("counters") or {}
            total["commits"] += c.get("store_commits", 0)
            total["lock waits"] += c.get("store_lock_waits", 0)
            total["lock wait s"] += c.get("store_lock_wait_ms", 0) / 1000
            total["write s"] += c.get("store_write_ms", 0) / 1000
    return total


def per_message(cpu: float, counters: dict[str, float], n: int) -> dict[str, float]:
    """:data:`COUNT_KEYS` of ``n`` messages that took ``cpu`` seconds of CPU."""
    return {
        "cpu ms/msg": 1000 * cpu / n,
        "commits/msg": counters["commits"] / n,
        "lock waits/msg": counters["lock waits"] / n,
        "lock wait ms/msg": 1000 * counters["lock wait s"] / n,
        "write ms/msg": 1000 * counters["write s"] / n,
    }


def written_bytes(pids: Iterable[int]) -> int:
    """``write_bytes`` of ``/proc/PID/io`` summed over ``pids`` (those still there)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/io").read_text()
        except OSError:
            continue
        m = re.search(r"^write_bytes: (\d+)$", text, re.MULTILINE)
        if m:
            total += int(m.group(1))
    return total


class SyscallCount:
    """``strace -f -c`` on ``pids`` for the fsync family (or the ``calls`` named; empty:
    every call), while the ``with`` block runs."""

    def __init__(
        self, pids: Iterable[int], out: Path, calls: Sequence[str] | None = SYNC_CALLS
    ) -> None:
        strace = shutil.which("strace")
        if strace is None:
            raise SystemExit("bench: counting fsyncs needs strace (apt-get install -y strace)")
        self.out = out
        self._calls = tuple(calls or ())
        cmd = [strace, "-f", "-c", "-o", str(out)]
        if self._calls:
            cmd += ["-e", "trace=" + ",".join(self._calls)]
        for pid in pids:
            cmd += ["-p", str(pid)]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(1.0)  # strace attaches to every thread before it reports anything
        if self._proc.poll() is not None:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            raise RuntimeError(f"strace exited at once: {err}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)  # detach and write the summary
        try:
            self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()

    def counts(self) -> dict[str, int]:
        """Calls per syscall (of those traced), from strace's summary table."""
        found: dict[str, int] = {}
        for line in self.out.read_text().splitlines():
            cols = line.split()
            if (
                len(cols) >= 5
                and (cols[-1] in self._calls or not self._calls)
                and cols[0][0].isdigit()
                and cols[-1] != "total"
            ):
                found[cols[-1]] = int(cols[3])
        return found
