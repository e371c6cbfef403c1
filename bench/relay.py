"""Relay throughput: smtp-source -> system under test -> smtp-sink, against Postfix.

What it measures
----------------
``smtp-source`` (Postfix's load generator: ``-s 10`` parallel sessions, ``-l 2048``
bytes of body per message, ``-m N`` messages, one message per connection) submits to
the system under test, which relays every message to ``smtp-sink`` on another loopback
port.  The figure is the time from starting smtp-source until smtp-sink has received
the N-th message (the sink's own ``-c`` counter, read from its output), and N divided
by it.  Also reported: when smtp-source finished (every message answered ``250``).

Systems, each with a fresh sink, a fresh data directory and a fresh process in every
run (the order rotates from run to run):

* ``wire``: smtp-source straight to smtp-sink, the limit of the load generator, the
  sink and loopback on this machine;
* ``spoolbox``: the ``spoolbox run`` daemon with a generated profile: SQLite store with
  ``synchronous = "FULL"`` (a message is committed and fsynced before the listener
  answers 250 to its final dot; claims and settles at the default
  ``progress_synchronous = "NORMAL"``, as Postfix crosses off delivered recipients
  without an fsync), the SMTP submission listener, the ``smtp`` transport
  to the sink (``tls = "none"``, ``max_connections = 10``), ``[policy] idle =
  "always"``, ``[daemon] nice = 0`` and ``event_loop`` from ``--event-loop`` (default
  ``auto``: uvloop);
* ``spoolbox-procs``: the same with ``[listeners.submission] processes = 1``
  (``--listener-processes``): the listener runs in a process of its own and commits
  to the store itself, the daemon relays;
* ``spoolbox-init``: the daemon with the profile exactly as ``spoolbox init`` writes
  it (its listener moved to a free port), plus an ``smtp`` transport to the sink
  with only ``host``, ``port`` and ``tls = "none"``: the shipped defaults (the
  transport's ``max_connections``, the listener's ``processes``, ``nice``, the log
  level), as a user who ran ``spoolbox init`` gets them;
* ``spoolbox-mx`` (not in the default ``--systems``): ``spoolbox-init`` whose ``smtp``
  transport delivers directly (``delivery = "mx"``, TLS as shipped): a dnsmasq started
  by the bench names the sink as the MX of the recipients' domain, so each message
  costs what direct delivery costs (a DNS answer is kept for its 60 s TTL);
* ``spoolbox-wN`` (``--workers 1,2,4`` adds one system per value): ``spoolbox-procs``
  with ``[daemon] workers = N`` delivery worker processes (docs/operations.md,
  "Worker processes"): N + 1 processes deliver, each with ``max_connections = 10``
  (the profile says 10 times N + 1: they share it); ``store lock held`` counts only the
  daemon's and its listener processes' write transactions, not the workers';
* ``postfix``: a private Postfix instance (own config, queue and data directories in
  the temporary directory, ``postfix -c DIR start``) with ``relayhost`` the sink and
  ``smtp_destination_concurrency_limit = 10``; cleanup(8) fsyncs each queue file
  before smtpd answers 250 (Postfix's default).

Before the timed batch every system relays a warm-up batch (default 100 messages),
so process start-up, imports and connection set-up are not timed.  The table shows
medians over runs; ratios are medians of the per-run ratios (each system against the
peer measured in the same run).  For spoolbox the table also shows the CPU its
daemon and the daemon's children used during the batch (``daemon CPU``, in cores; and
``CPU ms/msg``, per message, the daemon's own and its children's: the listener
processes'; each run's line in the log has it too: the figure that survives load) and
``store lock held``: the time the daemon's store and its listener processes' stores
spent in write transactions during the batch (their own counters, read through the
local API before and about a second after it), as a share of the batch's time.
SQLite lets one writer at a time hold the write lock, so near 100% the lock is the
limit.

What each message costs the disk (``bench/_counts.py``), printed per message beside
Postfix's: ``commits`` and ``durable`` (spoolbox: the write transactions of the
daemon's store and its listener processes' during the batch, all and those fsynced:
their own counters); ``bytes written`` (``write_bytes`` of ``/proc/PID/io``, summed
over the system's process tree: the daemon and its children, Postfix's master and
its children); and, from one extra run of each system under ``strace -f -c`` after
the timed ones (ptrace slows a process down, so never in a timed run; ``--fsync-runs
0`` skips it), ``fsyncs`` (calls of ``fsync``, ``fdatasync`` and their family).  Each
run also measures the disk's own fsync rate in the same directory (``write(512 B) +
fsync`` 300 times, before the systems) and prints it beside the figures: the relay's
ceiling at one fsync per message; ``wire`` is the ceiling of the load generator, the
sink and loopback.

``--py-spy DIR`` adds one untimed spoolbox run under ``py-spy record --threads --idle``
(install it with ``.venv/bin/pip install py-spy``) and prints, for each busy thread of
the daemon, where its wall-clock time went (leaf frames with line numbers) and what it
was inside of, from the collapsed stacks it writes to ``DIR/relay.txt``; each child
process of the daemon (a listener process) gets a recorder and a profile of its own
(``DIR/relay-PID.txt``).  ``--py-spy-system spoolbox-init`` profiles that system (with
the ``--init-*`` keys) instead of the bench's profile.
With ``--py-spy-gil`` it samples only the thread that holds the GIL (``py-spy record
--gil``): where the daemon's Python CPU goes, not where its threads wait.
``--event-loop asyncio`` runs the daemon on the standard library's loop instead.
``--slow-sync-us N`` emulates a slow disk: it builds ``bench/slowsync.c`` and runs again
with it preloaded, so that every fsync and fdatasync of the bench (its probe of the
disk), of spoolbox's processes and of Postfix's (through Postfix's
``import_environment``) takes N microseconds longer, one sync at a time across all of them (a lock
file held for the sync and the delay: a disk that makes one flush at a time); the
probe's rate shows what the disk then is.
``--synchronous NORMAL|OFF`` runs spoolbox's store without fsync at commit: a
diagnostic of what the fsyncs cost, not a durable configuration.

Run it (as root, for the private Postfix instance; installs Postfix if missing)::

    .venv/bin/python bench/relay.py [--messages 5000] [--runs 5] [--dir /path/on/the/disk]
        [--systems wire,spoolbox,spoolbox-procs,postfix] [--json out.json] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from _counts import SyscallCount, fsync_rate, process_tree, written_bytes
from _mta import (
    SLOW_SYNC_VARIABLES,
    Dnsmasq,
    PostfixRelay,
    Sink,
    SpoolboxDaemon,
    ensure_peers,
    log,
    machine,
    slow_sync_library,
    smtp_source,
    stop_process,
)

SYSTEMS = ("wire", "spoolbox", "spoolbox-procs", "spoolbox-init", "postfix", "spoolbox-mx")
SPOOLBOXES = ("spoolbox", "spoolbox-procs", "spoolbox-init", "spoolbox-mx")
OURS = re.compile(r"[(/](spoolbox|aiosmtpd|aiosmtplib)/")  # frames worth showing


@contextmanager
def system_under_test(
    name: str,
    workdir: Path,
    sink: Sink,
    args: argparse.Namespace,
    listener_processes: int | None = None,
) -> Iterator[tuple[int, SpoolboxDaemon | PostfixRelay | None]]:
    """The port smtp-source submits to, and the daemon or the Postfix instance;
    ``listener_processes`` overrides the bench profile's (0 for ``spoolbox``)."""
    if name == "wire":
        yield sink.port, None
    elif name == "spoolbox-mx":
        with (
            Dnsmasq(workdir / "dns") as dns,
            SpoolboxDaemon(
                workdir / "spoolbox", sink.port, as_init=True, init_mx=dns.nameserver
            ) as sb,
        ):
            yield sb.port, sb
    elif name == "spoolbox-init":
        with SpoolboxDaemon(
            workdir,
            sink.port,
            as_init=True,
            init_sink=args.init_transport,
            init_listener=args.init_listener,
            init_daemon=args.init_daemon,
            init_without_local=args.init_without_local,
            init_store=args.init_store,
        ) as sb:
            yield sb.port, sb
    elif name.startswith("spoolbox"):
        if listener_processes is None:
            listener_processes = 0 if name == "spoolbox" else args.listener_processes
        with SpoolboxDaemon(
            workdir,
            sink.port,
            args.max_connections,
            args.synchronous,
            args.event_loop,
            listener_processes,
            workers=int(name.removeprefix("spoolbox-w")) if name.startswith("spoolbox-w") else 0,
        ) as sb:
            yield sb.port, sb
    else:
        with PostfixRelay(workdir, sink.port, args.max_connections) as pf:
            yield pf.port, pf


def batch(port: int, sink: Sink, n: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """Submit n messages; (start, smtp-source finished, sink has them all)."""
    base = sink.count
    t0 = time.perf_counter()
    proc = smtp_source(port, n, args.sessions, args.size)
    try:
        _, err = proc.communicate(timeout=args.timeout)
    finally:
        stop_process(proc, 1)
    t_accept = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source exited {proc.returncode}: {err.decode(errors='replace')}")
    t_done = sink.wait_for(base + n, args.timeout)
    return t0, t_accept, t_done


def _root_pid(system: SpoolboxDaemon | PostfixRelay | None) -> int | None:
    if isinstance(system, SpoolboxDaemon):
        return system.pid
    if isinstance(system, PostfixRelay):
        return system.master_pid()
    return None


def one(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    with Sink() as sink, system_under_test(name, workdir, sink, args) as (port, system):
        sb = system if isinstance(system, SpoolboxDaemon) else None
        root = _root_pid(system)
        batch(port, sink, args.warmup, args)
        time.sleep(0.5 if sb is None else _REPORTED)
        base = sink.count
        lock0 = sb.lock_seconds() if sb else 0.0
        commits0 = sb.store_commits() if sb else (0, 0)
        cpu0 = sb.cpu_split() if sb else (0.0, 0.0)
        bytes0 = written_bytes(process_tree(root)) if root else 0
        t0, t_accept, t_done = batch(port, sink, args.messages, args)
        cpu1 = sb.cpu_split() if sb else (0.0, 0.0)
        time.sleep(0.3 if sb is None else _REPORTED)
        lock1 = sb.lock_seconds() if sb else 0.0
        commits1 = sb.store_commits() if sb else (0, 0)
        bytes1 = written_bytes(process_tree(root)) if root else 0
        extra = sink.count - base - args.messages
        if extra:
            log(f"bench: {name}: the sink received {extra} messages more than were sent")
    wall = t_done - t0
    n = args.messages
    res = {"wall": wall, "rate": n / wall, "accept": t_accept - t0}
    if root:
        res["bytes"] = (bytes1 - bytes0) / n
    if sb is not None:
        own, children = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        res["cpu"] = (own + children) / wall
        # CPU per message: the figure that survives load (a busy machine slows the
        # relay but hardly changes what each message costs).
        res["cpu_ms"] = 1000 * (own + children) / n
        res["cpu_ms_daemon"] = 1000 * own / n
        res["cpu_ms_children"] = 1000 * children / n
        # Write transactions of the daemon and its listener processes during the batch
        # (and the last settles just after it), as a share of the batch's time: SQLite
        # lets one of them hold the write lock at a time.
        res["lock"] = (lock1 - lock0) / wall
        res["commits"] = (commits1[0] - commits0[0]) / n
        res["durable"] = (commits1[1] - commits0[1]) / n
    return res


@contextlib.contextmanager
def _warmed(name: str, workdir: Path, args: argparse.Namespace) -> Iterator[tuple[int, Sink, int]]:
    """``name`` running against a sink, its warm-up batch sent: (its port, the sink,
    the pid of its root process) for a batch under strace."""
    with Sink() as sink, system_under_test(name, workdir, sink, args) as (port, system):
        batch(port, sink, args.warmup, args)
        time.sleep(0.5)
        root = _root_pid(system)
        if root is None:
            raise RuntimeError(f"{name}: no process to trace")
        yield port, sink, root


def count_fsyncs(name: str, workdir: Path, args: argparse.Namespace) -> float:
    """fsync-family calls per message of ``name``, from one batch under strace."""
    n = args.fsync_messages
    with _warmed(name, workdir, args) as (port, sink, root):
        with SyscallCount(process_tree(root), workdir / "strace.txt") as calls:
            batch(port, sink, n, args)
            time.sleep(_REPORTED)  # the last settles, then strace detaches
        counts = calls.counts()
    log(f"fsync count: {name}: {counts} for {n} messages")
    return sum(counts.values()) / n


def count_syscalls(
    name: str, workdir: Path, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Every syscall per message of each process of ``name`` (the daemon, each child),
    from one batch of ``--fsync-messages`` under one ``strace -f -c`` per process."""
    n = args.fsync_messages
    with _warmed(name, workdir, args) as (port, sink, root):
        with contextlib.ExitStack() as stack:
            traced = [
                (
                    "daemon" if pid == root else f"child {pid}",
                    stack.enter_context(
                        SyscallCount([pid], workdir / f"strace-{pid}.txt", calls=None)
                    ),
                )
                for pid in process_tree(root)
            ]
            batch(port, sink, n, args)
            time.sleep(_REPORTED)
        return {what: {k: v / n for k, v in calls.counts().items()} for what, calls in traced}


#: Long enough for a listener process to have reported its store's counters.
_REPORTED = 1.3


def profile_spoolbox(root: Path, args: argparse.Namespace) -> None:
    """One untimed run of ``--py-spy-system`` (default: the bench's profile with
    ``--listener-processes``) under py-spy: one recorder per process of the daemon's
    tree (the daemon, its listener processes), each profile printed."""
    out_dir: Path = args.py_spy
    out_dir.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if py_spy is None:
        raise SystemExit("bench: --py-spy needs py-spy: .venv/bin/pip install py-spy")
    with Sink() as sink, _profiled_system(root / "profile", sink, args) as sb:
        batch(sb.port, sink, args.warmup, args)
        time.sleep(0.5)
        spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        for pid in process_tree(sb.pid):
            what = "daemon" if pid == sb.pid else f"child {pid}"
            raw = out_dir / ("relay.txt" if pid == sb.pid else f"relay-{pid}.txt")
            cmd = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
            cmd += ["--threads", "--gil"] if args.py_spy_gil else ["--threads", "--idle"]
            spy = subprocess.Popen(
                [*cmd, "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            spies.append((f"{what}: {_cmdline(pid)}", raw, spy))
        try:
            time.sleep(1.0)  # py-spy attaches
            cpu0 = sb.cpu_split()
            t0, _, t_done = batch(sb.port, sink, args.messages, args)
            cpu1 = sb.cpu_split()
        finally:
            errors = []
            for _, _, spy in spies:
                if spy.poll() is None:
                    spy.send_signal(signal.SIGINT)
                errors.append(spy.communicate(timeout=60)[1])
        log(
            f"profiled run: {args.messages / (t_done - t0):,.0f} msg/s under py-spy, CPU "
            f"{1000 * (cpu1[0] - cpu0[0]) / args.messages:.2f} ms/msg daemon + "
            f"{1000 * (cpu1[1] - cpu0[1]) / args.messages:.2f} children"
        )
    for (what, raw, _), err in zip(spies, errors, strict=True):
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote nothing for {what}: {err.decode(errors='replace')}")
        print(f"\n## {what} ({raw})")
        print_profile(raw, args.top, gil=args.py_spy_gil)


@contextmanager
def _profiled_system(
    workdir: Path, sink: Sink, args: argparse.Namespace
) -> Iterator[SpoolboxDaemon]:
    # By default the bench's profile with --listener-processes (0: on the loop).
    name = args.py_spy_system or "spoolbox"
    processes = None if args.py_spy_system else args.listener_processes
    with system_under_test(name, workdir, sink, args, processes) as (_, system):
        assert isinstance(system, SpoolboxDaemon)
        yield system


def _cmdline(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(Path(a.decode(errors="replace")).name for a in argv[:4] if a)


def print_profile(raw: Path, top: int, *, gil: bool = False) -> None:
    """Per thread, where its wall-clock time went, from py-spy's collapsed stacks.

    Recorded with ``--threads --idle``: every thread is sampled whether it runs or
    waits, so a thread's samples are its wall-clock time; a leaf frame is where the
    thread was (``function:line``: the line tells a COMMIT from a query), an inclusive
    frame what it was inside of.
    """
    threads: collections.Counter[str] = collections.Counter()
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        first, *frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", first).split(" ")[0]
        threads[thread] += n
        if frames:
            leaf[thread][_frame(frames[-1], line_number=True)] += n
        for f in {_frame(f) for f in frames if OURS.search(f)}:
            incl[thread][f] += n
    for thread, total in threads.most_common():
        if len(leaf[thread]) < 2:
            continue  # a thread that only waited (watchdog, idle executor)
        what = "holding the GIL" if gil else "wall clock"
        print(f"\nthread {thread}: {total} samples ({what}, 200/s)")
        print("| share of wall time | where the thread was (leaf frame) |\n|---:|---|")
        for f, n in leaf[thread].most_common(top):
            print(f"| {100 * n / total:.1f}% | `{f}` |")
        print("| inclusive | inside (spoolbox, aiosmtpd, aiosmtplib frames) |\n|---:|---|")
        for f, n in incl[thread].most_common(top):
            print(f"| {100 * n / total:.1f}% | `{f}` |")


def _frame(frame: str, line_number: bool = False) -> str:
    """``func (path/to/file.py:123)`` -> ``func (to/file.py)`` (``:123`` if asked)."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short}:{line})" if line_number else f"{name} ({short})"


def _with_slow_sync(us: int) -> None:
    """Run this bench again with ``bench/slowsync.c`` preloaded (unless it already
    is); the library is removed when that run ends."""
    if os.environ.get("SLOW_SYNC_US") == str(us) and "slowsync" in os.environ.get("LD_PRELOAD", ""):
        built = os.environ.get("SPOOLBOX_BENCH_SLOWSYNC_DIR")
        if built:
            atexit.register(shutil.rmtree, built, True)
        return
    built = tempfile.mkdtemp(prefix="spoolbox-slowsync-")
    library = slow_sync_library(Path(built))
    lock = Path(built) / "disk.lock"
    lock.touch()
    lock.chmod(0o666)  # Postfix's processes take it too, as the postfix user
    Path(built).chmod(0o755)
    env = dict(os.environ, SPOOLBOX_BENCH_SLOWSYNC_DIR=built)
    env.update(zip(SLOW_SYNC_VARIABLES, (str(library), str(us), str(lock)), strict=True))
    log(f"bench: every fsync {us} us slower ({library} preloaded)")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay throughput against Postfix")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--sessions", type=int, default=10, help="smtp-source -s")
    p.add_argument("--size", type=int, default=2048, help="smtp-source -l (body bytes)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-connections", type=int, default=10, help="towards the sink")
    p.add_argument("--systems", default=",".join(s for s in SYSTEMS if s != "spoolbox-mx"))
    p.add_argument(
        "--synchronous",
        default="FULL",
        help="spoolbox's [store] synchronous; anything but FULL is a diagnostic, not durable",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="spoolbox's [daemon] event_loop (auto: uvloop, installed with spoolbox)",
    )
    p.add_argument(
        "--listener-processes",
        type=int,
        default=1,
        help="[listeners.submission] processes of the spoolbox-procs system "
        "(and of --py-spy's run); the spoolbox system has 0 (the daemon's own loop)",
    )
    p.add_argument(
        "--workers",
        default="",
        help="comma-separated [daemon] workers values: one system spoolbox-wN each "
        "(spoolbox-procs with N delivery worker processes)",
    )
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--py-spy", type=Path, default=None, help="profile one extra spoolbox run")
    p.add_argument(
        "--py-spy-system",
        choices=SPOOLBOXES,
        default=None,
        help="the system --py-spy profiles (with --init-* for spoolbox-init); default: "
        "the bench's profile with --listener-processes",
    )
    p.add_argument("--top", type=int, default=20)
    p.add_argument(
        "--fsync-runs",
        type=int,
        default=1,
        help="untimed runs per system under strace that count fsyncs (0: none)",
    )
    p.add_argument("--fsync-messages", type=int, default=1000, help="messages of such a run")
    p.add_argument(
        "--init-transport",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="spoolbox-init: a line added to the sink transport's options (repeatable)",
    )
    p.add_argument(
        "--init-listener",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="spoolbox-init: a line added to [listeners.submission] (repeatable)",
    )
    p.add_argument(
        "--init-daemon",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="spoolbox-init: a line set in [daemon], e.g. 'nice = 0' (repeatable)",
    )
    p.add_argument(
        "--init-without-local",
        action="store_true",
        help="spoolbox-init: without the local (maildir) transport init writes",
    )
    p.add_argument(
        "--init-store",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="spoolbox-init: a line set in [store], e.g. 'keep_sent = 0' (repeatable)",
    )
    p.add_argument(
        "--syscalls",
        action="store_true",
        help="one untimed run per spoolbox system under strace: every syscall per "
        "message of each of its processes (--fsync-messages of them)",
    )
    p.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="--py-spy samples only the thread holding the GIL (where the Python CPU "
        "goes) instead of every thread's wall-clock time",
    )
    p.add_argument(
        "--slow-sync-us",
        type=int,
        default=0,
        metavar="N",
        help="emulate a slow disk: every fsync of every system N microseconds longer",
    )
    args = p.parse_args(argv)
    if args.slow_sync_us > 0:
        _with_slow_sync(args.slow_sync_us)
    systems = [s for s in args.systems.split(",") if s]
    systems += [f"spoolbox-w{int(w)}" for w in args.workers.split(",") if w]
    if unknown := {s for s in systems if not s.startswith("spoolbox-w")} - set(SYSTEMS):
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    ensure_peers()
    runs: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="spoolbox-relay-", dir=args.dir) as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the postfix user must reach its queue directory
        for r in range(args.runs):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            res: dict[str, dict[str, float]] = {"disk": {"fsync_rate": fsync_rate(root)}}
            for name in order:
                res[name] = one(name, root / f"run{r}-{name}", args)
            runs.append(res)
            log(
                f"run {r + 1}: "
                + ", ".join(
                    f"{k} {v['rate']:,.0f} msg/s ({v['wall']:.2f} s"
                    + (
                        f", CPU {v['cpu_ms']:.2f} ms/msg = {v['cpu_ms_daemon']:.2f} daemon"
                        f" + {v['cpu_ms_children']:.2f} children"
                        if "cpu_ms" in v
                        else ""
                    )
                    + ")"
                    for k, v in sorted(res.items())
                    if k != "disk"
                )
                + f"; disk {res['disk']['fsync_rate']:,.0f} fsync/s"
            )
        fsyncs: dict[str, list[float]] = {}
        for r in range(args.fsync_runs):
            for name in systems:
                if name != "wire":
                    work = root / f"fsyncs{r}-{name}"
                    fsyncs.setdefault(name, []).append(count_fsyncs(name, work, args))
        if args.syscalls:
            for name in systems:
                if name.startswith("spoolbox"):
                    per = count_syscalls(name, root / f"syscalls-{name}", args)
                    for what, calls in per.items():
                        top = sorted(calls.items(), key=lambda kv: -kv[1])[:14]
                        print(
                            f"syscalls per message, {name}, {what}: {sum(calls.values()):.1f} "
                            "in all; " + ", ".join(f"{k} {v:.2f}" for k, v in top)
                        )
        if args.py_spy is not None:
            profile_spoolbox(root, args)
    if runs:
        print_table(runs, systems, args, fsyncs)
    if args.json is not None:
        out = {"args": vars(args), "runs": runs, "fsyncs_per_message": fsyncs}
        args.json.write_text(json.dumps(out, default=str, indent=1))
    return 0


def print_table(
    runs: list[dict[str, dict[str, float]]],
    systems: list[str],
    args: argparse.Namespace,
    fsyncs: dict[str, list[float]],
) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in runs)

    def per_msg(name: str, key: str, fmt: str) -> str:
        return format(med(name, key), fmt) if key in runs[0][name] else "-"

    def ratio(a: str, b: str) -> str:
        if b not in systems:
            return "-"
        return f"{statistics.median(r[a]['rate'] / r[b]['rate'] for r in runs):.2f}"

    print(
        f"\n{args.messages} messages of {args.size} body bytes, smtp-source -s {args.sessions}, "
        f"{len(runs)} runs (medians); spoolbox synchronous={args.synchronous}, "
        f"event_loop={args.event_loop}, spoolbox-procs: listener processes "
        f"{args.listener_processes}; {machine()}"
    )
    rates = [r["disk"]["fsync_rate"] for r in runs]
    print(
        f"disk fsync rate (write 512 B + fsync, same directory, each run): median "
        f"{statistics.median(rates):,.0f}/s, per run " + " / ".join(f"{x:,.0f}" for x in rates)
    )
    print(
        "| system | relay time s | msg/s | smtp-source done s | ratio to postfix "
        "| ratio to wire | daemon CPU | CPU ms/msg (daemon + children) | store lock held "
        "| commits/msg | durable/msg | fsyncs/msg | bytes written/msg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in systems:
        cpu = f"{med(name, 'cpu'):.0%}" if "cpu" in runs[0][name] else "-"
        lock = f"{med(name, 'lock'):.0%}" if "lock" in runs[0][name] else "-"
        cpu_ms = (
            f"{med(name, 'cpu_ms'):.2f} ({med(name, 'cpu_ms_daemon'):.2f} + "
            f"{med(name, 'cpu_ms_children'):.2f})"
            if "cpu_ms" in runs[0][name]
            else "-"
        )
        print(
            f"| {name} | {med(name, 'wall'):.2f} | {med(name, 'rate'):,.0f} "
            f"| {med(name, 'accept'):.2f} | {ratio(name, 'postfix')} | {ratio(name, 'wire')} "
            f"| {cpu} | {cpu_ms} | {lock} | {per_msg(name, 'commits', '.2f')} "
            f"| {per_msg(name, 'durable', '.2f')} "
            f"| {f'{statistics.median(fsyncs[name]):.2f}' if name in fsyncs else '-'} "
            f"| {per_msg(name, 'bytes', ',.0f')} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
