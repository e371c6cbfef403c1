"""The SQLite store's write transactions, timed alone: how long each holds the lock.

SQLite lets one writer at a time hold a file's write lock, and in the relay the
listener's submissions and the daemon's claims and settles take turns at it
(docs/benchmarks.md: the lock is held 70-80% of a relay batch).  This bench times the
store's own transaction functions (``spoolbox.store.sqlite.transactions``) on one
connection, with nothing else running, from ``BEGIN IMMEDIATE`` to ``COMMIT``: the
time a transaction keeps the other writers out, without the thread hop, the event
loop or the contention of the real system.

* ``submit``: groups of five submissions of one message each (2 KB body, one
  recipient), as the listener's group commit makes them under load; per message.
  What the store's caller prepares before it joins a group (``Prepared.of``, when the
  tree has it) is prepared outside the timed part, as the store does.
* ``claim``: one message claimed (``limit = 1``), its content read with it.
* ``settle``: that message's recipient delivered, the message deleted with it (kept
  for no time: ``keep_sent = 0``, as ``spoolbox init`` writes it); with ``--keep``
  the message is kept (the default retention: its delivered recipient is written, as
  are the indexes of finished recipients).

Commits use ``synchronous = NORMAL`` (no fsync: the fsync's cost is the disk's, and
``bench/store_throughput.py`` and ``bench/relay.py`` measure it); the disk's fsync
rate is printed beside the figures all the same.  Figures are medians over runs of
microseconds per operation.  Each run is a Python process of its own (with the
tree's ``PYTHONPATH``): in one process some runs took every claim about twice as long
as the others, at run positions that changed from process to process (not the
garbage collector: its pauses were 1-2 ms a run), so runs in one process
(``--same-process``, the way before session 38) compare trees badly.  To compare
two trees, run each with ``PYTHONPATH``::

    .venv/bin/python bench/store_ops.py --runs 5
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/store_ops.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _counts import fsync_rate
from spoolbox import Address, MessageState, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate
from spoolbox.store.sqlite import schema
from spoolbox.store.sqlite import transactions as tx

BODY = (
    b"From: bench@example.org\r\nTo: r@example.org\r\nSubject: bench\r\n"
    b"Message-ID: <bench@example.org>\r\nDate: Fri, 4 Dec 2026 18:00:00 +0000\r\n\r\n"
    + b"x" * 2000
    + b"\r\n"
)
GROUP = 5
DROP = frozenset({MessageState.SENT, MessageState.FAILED})


def _messages(n: int) -> list[NewMessage]:
    sender = Address("SMTP", "bench@example.org")
    return [NewMessage(sender, (Address("SMTP", f"r{i}@example.org"),), BODY) for i in range(n)]


def one_run(directory: Path, n: int, keep: bool = False) -> dict[str, float]:
    conn = schema.connect(directory / "ops.db", synchronous="NORMAL", busy_timeout=30)
    try:
        now = time.time()
        messages = _messages(n)
        prepare = getattr(tx, "Prepared", None)
        if prepare is not None:
            items: list[Any] = [prepare.of(m, now=now, lifetime=86400.0) for m in messages]
        else:
            items = messages
        t0 = time.perf_counter()
        for i in range(0, n, GROUP):
            conn.execute("BEGIN IMMEDIATE")
            for item in items[i : i + GROUP]:
                if prepare is not None:
                    tx.submit_prepared(conn, item, now=now, routes=["smtp"])
                else:
                    tx.submit(conn, item, now=now, lifetime=86400.0, routes=["smtp"])
            conn.execute("COMMIT")
        submit = (time.perf_counter() - t0) / n
        claim = settle = 0.0
        for _ in range(n):
            t1 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            (job,) = tx.claim(conn, "smtp", owner="bench", now=time.time(), lease=60.0)
            conn.execute("COMMIT")
            t2 = time.perf_counter()
            updates = [RecipientUpdate(r.index, RecipientState.DELIVERED) for r in job.recipients]
            conn.execute("BEGIN IMMEDIATE")
            tx.settle(
                conn,
                job.message.id,
                updates,
                owner="bench",
                now=time.time(),
                claim=job.claim,
                drop_finished=() if keep else DROP,
            )
            conn.execute("COMMIT")
            t3 = time.perf_counter()
            claim += t2 - t1
            settle += t3 - t2
        left = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        if left != (n if keep else 0):
            raise SystemExit(f"{left} messages left after the settles: the bench is wrong")
    finally:
        conn.close()
        for p in directory.glob("ops.db*"):
            p.unlink()
    return {"submit": submit * 1e6, "claim": claim / n * 1e6, "settle": settle / n * 1e6}


def _run_apart(directory: Path, n: int, keep: bool) -> dict[str, float]:
    """:func:`one_run` in a new Python process (the same interpreter and environment)."""
    cmd = [sys.executable, __file__, "--one-run", "--dir", str(directory), "--messages", str(n)]
    if keep:
        cmd.append("--keep")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a run failed (exit {done.returncode}):\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="SQLite store transactions, timed alone")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--keep", action="store_true", help="settles keep the delivered messages")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--same-process", action="store_true", help="every run in this process (as before)"
    )
    p.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_run:  # a run in a process of its own: its figures as JSON
        print(json.dumps(one_run(args.dir, args.messages, args.keep)))
        return 0
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        for i in range(args.runs):
            if args.same_process:
                run = one_run(directory, args.messages, args.keep)
            else:
                run = _run_apart(directory, args.messages, args.keep)
            run["fsync"] = fsync_rate(directory, 300)
            runs.append(run)
            print(
                f"run {i + 1}: submit {run['submit']:.0f} µs/msg (groups of {GROUP}), "
                f"claim {run['claim']:.0f} µs, settle {run['settle']:.0f} µs; "
                f"disk {run['fsync']:,.0f} fsync/s",
                flush=True,
            )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    apart = "one process" if args.same_process else "a process each"
    print(
        f"\n{args.messages} messages{' (kept)' if args.keep else ''}, {args.runs} runs "
        f"({apart}; medians), Python "
        f"{sys.version.split()[0]}, spoolbox {tx.__file__}"
    )
    print("| transaction | µs inside the write lock (median) | per run |")
    print("|---|---:|---|")
    for k in ("submit", "claim", "settle"):
        per = ", ".join(f"{r[k]:.0f}" for r in runs)
        print(f"| {k} | {med[k]:.0f} | {per} |")
    print(f"disk fsync rate: median {med['fsync']:,.0f}/s")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
