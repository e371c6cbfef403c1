"""Drain across processes: ``spoolbox run --workers W`` against django-post-office's
``send_queued_mail --processes P``, in the same run.

The in-process drain of ``bench/drain_vs_django.py`` is bound by one Python process
(its event loop and store thread share one GIL).  This bench measures the daemon
with delivery worker processes (``[daemon] workers``, docs/operations.md "Worker
processes") and the peer with its own processes, both as a user runs them: a
command that drains a queue filled beforehand.

* spoolbox (``--fill before``, the default since session 34): N messages
  (``drain_vs_django``'s, 2.3 KB each) are queued into a fresh SQLite store while no
  daemon runs (``Client.submit_many``: one transaction, ``via`` "store"), then the
  clock starts and ``spoolbox run --workers W`` starts on it (``--no-nice``; its
  profile: the ``smtp`` transport to the sink, ``tls = "none"``, ``max_connections``
  as given, per process: the profile says that many times the delivering processes,
  which share it); the drain ends when the sink has counted N.  Its time includes
  starting Python and the daemon, as the peer's includes starting Django.  With
  ``--fill running`` (the method before session 34) the daemon starts first, its
  start-up is timed until its ``running`` line (once the workers are ready:
  ``READY=1``) and every process's transport has logged on, and then the clock
  starts and the N messages are submitted through the daemon in one call (every
  node is woken at once): the time includes the daemon taking in the N messages,
  which the peer's does not.  ``W`` workers is ``W + 1`` delivering processes (the
  daemon's own spooler delivers too).  After the drain the store is checked (N
  recipients delivered) and the daemon's log says which process delivered what
  (each worker's lines are tagged ``[wN]``).
* django-post-office: the same N messages queued with ``mail.send_many`` into a
  fresh database (WAL, ``synchronous=FULL``: ``drain_vs_django``'s project), then
  ``python manage.py send_queued_mail --processes P`` timed; checked as there.  Its
  wall time includes starting Python and Django (about a second here), as spoolbox's
  does with ``--fill before`` (its ``start-up s`` column: seconds from the start to
  the sink's first message) and not with ``--fill running`` (the daemon was running;
  the column: its start-up before the clock).

Reported: medians over runs (the order of the systems rotates from run to run);
the disk's fsync rate and the load average; per spoolbox system and message
(``_counts.per_message``): the CPU time of the daemon and its workers in the drain
(with ``--fill before`` from their start),
their store's commits, waits for SQLite's write lock and time holding it; and
spoolbox's best against django-post-office's best, run by run.
The sink is Postfix's ``smtp-sink -c`` (``apt-get install postfix``).  Run it::

    .venv/bin/python bench/drain_workers.py --runs 3 --messages 2000 \\
        --workers 0,1,2,4 --processes 1,2,4 [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _counts import (
    COUNT_KEYS,
    cpu_seconds,
    daemon_store_counters,
    fsync_rate,
    per_message,
    process_tree,
)
from drain_vs_django import (
    DEFAULT_VENV,
    HOST,
    SMTP_SINK,
    WAIT,
    DjangoProject,
    Sink,
    _msg,
    peer_versions,
    peers_python,
)
from spoolbox.client import Client

CLI = [sys.executable, "-m", "spoolbox.cli"]
_DELIVERED = re.compile(r"spoolbox\.delivery(?:\[(w\d+)\])?: \S+: to=.*status=sent")
_RUNNING = b" running (pid"


def _profile(directory: Path, sink_port: int, max_connections: int, workers: int) -> Path:
    directory.mkdir(parents=True)
    path = directory / "spoolbox.toml"
    path.write_text(
        f"""
data_dir = "."
node = "bench"
[daemon]
workers = {workers}
[log]
format = "text"
[identities]
senders = ["SMTP:bench@example.org"]
[[transports]]
name = "smtp"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
host = "{HOST}"
port = {sink_port}
tls = "none"
max_connections = {max_connections * (workers + 1)}
helo_name = "bench.example.org"
"""
    )
    return path


def _launch(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*CLI, "--profile", str(profile), "run", "--no-nice"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=profile.parent,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=WAIT) != 0:
        raise RuntimeError(f"spoolbox run exited with status {proc.returncode}")


def _delivered(store: Path) -> int:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'").fetchone()
        return int(row[0])
    finally:
        conn.close()


def _logged_on(profile: Path, log: Path, workers: int) -> bool:
    """The daemon runs (READY), its transport and each worker's have logged on."""
    text = log.read_bytes()
    if _RUNNING not in text:
        return False
    if any(b"[w%d]: transports logged on" % i not in text for i in range(1, workers + 1)):
        return False
    rows = Client(profile).status()
    return any(row["name"] == "smtp" and row["status_code"] & 1 for row in rows)


def spoolbox_drain(
    root: Path, sink: Sink, n: int, max_connections: int, workers: int, run: int, fill: str
) -> dict[str, Any]:
    directory = root / f"spoolbox-w{workers}-{run}"
    profile = _profile(directory, sink.port, max_connections, workers)
    log = directory / "daemon.log"
    lot = [_msg(i) for i in range(n)]
    if fill == "before":
        return _drain_filled(profile, log, sink, lot)
    t0 = time.perf_counter()
    proc = _launch(profile, log)
    try:
        while not _logged_on(profile, log, workers):
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        startup = time.perf_counter() - t0
        before = sink.count()
        cpu0 = cpu_seconds(process_tree(proc.pid))
        t0 = time.perf_counter()
        queued = Client(profile).submit_many(lot)  # one transaction, through the daemon
        if queued["via"] != "daemon" or len(queued["ids"]) != n:
            raise RuntimeError(f"queueing failed: {queued.get('via')}, {len(queued['ids'])} ids")
        took, _ = _drained(proc, log, sink, before, n, t0)
        cpu = cpu_seconds(process_tree(proc.pid)) - cpu0
        counts = per_message(cpu, daemon_store_counters(profile), n)
    finally:
        _stop(proc)
    return _result(log, n, took, startup, counts)


def _result(
    log: Path, n: int, took: float, startup: float, counts: dict[str, float]
) -> dict[str, Any]:
    """The figures of one drain, once the daemon's log shows ``n`` deliveries."""
    by = collections.Counter(
        m.group(1) or "daemon" for m in _DELIVERED.finditer(log.read_text(errors="replace"))
    )
    if sum(by.values()) != n:
        raise RuntimeError(f"the log shows {sum(by.values())} deliveries of {n}: {by}")
    return {
        "drain": n / took,
        "drain s": took,
        "start-up s": startup,
        **counts,
        "delivered by": dict(sorted(by.items())),
    }


def _drain_filled(profile: Path, log: Path, sink: Sink, lot: list[Any]) -> dict[str, Any]:
    """The queue filled with no daemon running, then ``spoolbox run`` timed from its
    start until the sink has every message."""
    n = len(lot)
    queued = Client(profile).submit_many(lot)  # no daemon: into the store directly
    if queued["via"] != "store" or len(queued["ids"]) != n:
        raise RuntimeError(f"queueing failed: {queued.get('via')}, {len(queued['ids'])} ids")
    before = sink.count()
    t0 = time.perf_counter()
    proc = _launch(profile, log)
    try:
        took, first = _drained(proc, log, sink, before, n, t0)
        cpu = cpu_seconds(process_tree(proc.pid))  # start-up included, as the time
        counts = per_message(cpu, daemon_store_counters(profile), n)
    finally:
        _stop(proc)
    return _result(log, n, took, first, counts)


def _drained(
    proc: subprocess.Popen[bytes], log: Path, sink: Sink, before: int, n: int, t0: float
) -> tuple[float, float]:
    """Seconds from ``t0`` until the sink has counted ``n`` more than ``before``, and
    until its first (then waits until the store has them all as delivered)."""
    deadline = t0 + WAIT
    first = None
    while (count := sink.count() - before) < n:
        if first is None and count > 0:
            first = time.perf_counter() - t0
        if proc.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"the drain stopped:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    took = time.perf_counter() - t0
    store = log.parent / "spool.sqlite3"
    while _delivered(store) < n:  # committed as delivered
        if time.perf_counter() > deadline:
            raise RuntimeError("not every recipient was settled delivered")
        time.sleep(0.05)
    return took, took if first is None else first


def peer_drain(
    project: DjangoProject, sink: Sink, n: int, processes: int, run: int
) -> dict[str, Any]:
    name = f"post-office-p{processes}-{run}"
    db = project.fresh_db(name)
    project.enqueue(db, "django-post-office", n, 0)  # send_many: one transaction
    before = sink.count()
    t0 = time.perf_counter()
    project.run(db, "manage.py", "send_queued_mail", "--processes", str(processes))
    took = time.perf_counter() - t0
    time.sleep(0.2)  # the sink's counter line for the last transaction
    sent = sink.count() - before
    state = project.check(db)
    if sent != n or not state["post_office_sent"] == state["post_office_total"] == n:
        raise RuntimeError(f"{name}: the sink counted {sent} of {n}; queue state {state}")
    for p in project.dir.glob(f"{name}.*"):
        p.unlink()
    return {"drain": n / took, "drain s": took}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="drain across processes: spoolbox workers vs -p")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--max-connections", type=int, default=4)
    p.add_argument("--workers", type=_ints, default=[0, 1, 2, 4])
    p.add_argument("--processes", type=_ints, default=[1, 2, 4])
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--no-peer", action="store_true", help="spoolbox only")
    p.add_argument(
        "--fill",
        choices=("before", "running"),
        default="before",
        help="queue the messages before the daemon starts (as the peer's are), or "
        "submit them through the running daemon inside the timed drain",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not os.path.exists(SMTP_SINK):
        print("smtp-sink not installed: apt-get install postfix", file=sys.stderr)
        return 2
    python = None if args.no_peer else peers_python(args.peers_venv)
    versions = peer_versions(python) if python is not None else {}
    print(
        f"python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start, peers {versions}"
    )
    systems = [f"spoolbox --workers {w}" for w in args.workers]
    if python is not None:
        systems += [f"post-office -p {p}" for p in args.processes]
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="drain-workers-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        rate = fsync_rate(root)
        print(f"fsync rate of the disk: {rate:,.0f}/s")
        sink = Sink(root)
        try:
            sink.start()
            project = DjangoProject(python, root / "django", sink.port) if python else None
            for r in range(args.runs):
                order = systems[r % len(systems) :] + systems[: r % len(systems)]
                res: dict[str, dict[str, Any]] = {}
                for system in order:
                    count = int(system.rsplit(" ", 1)[1])
                    if system.startswith("spoolbox"):
                        res[system] = spoolbox_drain(
                            root, sink, args.messages, args.max_connections, count, r, args.fill
                        )
                    else:
                        assert project is not None
                        res[system] = peer_drain(project, sink, args.messages, count, r)
                    print(f"run {r + 1}: {system}: {res[system]}", file=sys.stderr)
                runs.append(res)
        finally:
            sink.stop()
    print(
        f"\nN = {args.messages} messages, {len(runs)} runs, medians; load average at the end "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print("| system | delivering processes | drain msg/s | drain s | start-up s |")
    print("|---|---:|---:|---:|---:|")
    summary: dict[str, dict[str, float]] = {}
    for system in systems:
        med = {
            key: statistics.median(r[system][key] for r in runs)
            for key in ("drain", "drain s", "start-up s")
            if key in runs[0][system]
        }
        summary[system] = med
        count = int(system.rsplit(" ", 1)[1])
        procs = count + 1 if system.startswith("spoolbox") else count
        startup = f"{med['start-up s']:.2f}" if "start-up s" in med else ""
        print(f"| {system} | {procs} | {med['drain']:,.0f} | {med['drain s']:.2f} | {startup} |")
    mine = [system for system in systems if system.startswith("spoolbox")]
    print("\nspoolbox per message (medians; CPU: the daemon and its workers, in the drain)\n")
    print(f"| system | {' | '.join(COUNT_KEYS)} |")
    print(f"|---|{'---:|' * len(COUNT_KEYS)}")
    for system in mine:
        med = {key: statistics.median(r[system][key] for r in runs) for key in COUNT_KEYS}
        print(f"| {system} | {' | '.join(f'{med[k]:.3f}' for k in COUNT_KEYS)} |")
    for system in mine:
        print(f"{system}: delivered by (run 1) {runs[0][system]['delivered by']}")
    if python is not None:
        best = [
            max(r[s]["drain"] for s in mine)
            / max(r[s]["drain"] for s in systems if s.startswith("post-office"))
            for r in runs
        ]
        print(
            "spoolbox's best / django-post-office's best, per run: "
            f"{', '.join(f'{x:.2f}' for x in best)} (median {statistics.median(best):.2f}x)"
        )
    if args.json is not None:
        report = {"runs": runs, "summary": summary, "fsync/s": rate}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
