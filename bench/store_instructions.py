"""The SQLite store's transactions counted in CPU instructions, not timed.

On this shared 2-CPU machine the time a transaction takes moves by a factor of two
from one process to the next (``bench/store_ops.py``); the number of instructions
it executes does not. This bench runs a small program under Valgrind's cachegrind
(``--cache-sim=no``: it counts instructions, ``I refs``) that submits N messages
(``store_ops``'s: 2 KB body, one recipient, groups of five), then claims each
(``limit = 1``) and, in the third mode, settles it delivered (the message kept). Each
mode runs with two N; the difference divided by the difference of N is the count a
message, start-up (Python, imports, the schema) left out:

* ``submit``: instructions a submitted message;
* ``claim``: a claim, its content read with it (mode 2 less mode 1);
* ``settle``: a settle (mode 3 less mode 2).

SQLite's work and Python's are both counted; system calls are not (``synchronous =
OFF``: no fsync). Python's string hashes are seeded the same in every run
(``PYTHONHASHSEED=0``: they decide dictionary probes, which move the count by a few
thousand a message otherwise). Even so the submit can come out at one of two counts
about 11,000 apart, the claim moving the other way by as much (their sum steady):
compare the claim and the submit together, or run each tree more than once
(docs/benchmarks.md, "Session 39"). Needs ``valgrind`` (``apt-get install -y
valgrind``). Run it, and the tree before with ``PYTHONPATH``::

    .venv/bin/python bench/store_instructions.py
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/store_instructions.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _counts import cachegrind, find_valgrind, instructions

MODES = ("submit", "claim", "settle")


def _program(mode: str, n: int, directory: Path) -> None:
    """The measured program: ``mode``'s transactions on ``n`` messages."""
    from spoolbox import RecipientState
    from spoolbox.store import RecipientUpdate
    from spoolbox.store.sqlite import schema
    from spoolbox.store.sqlite import transactions as tx
    from store_ops import GROUP, _messages

    conn = schema.connect(directory / "count.db", synchronous="OFF", busy_timeout=30)
    now = time.time()
    messages = _messages(n)
    for i in range(0, n, GROUP):
        conn.execute("BEGIN IMMEDIATE")
        for message in messages[i : i + GROUP]:
            tx.submit(conn, message, now=now, lifetime=86400.0, routes=["smtp"])
        conn.execute("COMMIT")
    if mode != "submit":
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            (job,) = tx.claim(conn, "smtp", owner="bench", now=now + 1, lease=60.0)
            conn.execute("COMMIT")
            if mode == "settle":
                done = [RecipientUpdate(r.index, RecipientState.DELIVERED) for r in job.recipients]
                conn.execute("BEGIN IMMEDIATE")
                tx.settle(conn, job.message.id, done, owner="bench", now=now + 2, claim=job.claim)
                conn.execute("COMMIT")
    conn.close()


def _count(valgrind: str, mode: str, n: int) -> int:
    """Instructions of the program in ``mode`` on ``n`` messages (a fresh store)."""
    prefix, env = cachegrind(valgrind)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*prefix, sys.executable, __file__, "--program", mode, str(n), tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    count = instructions(done.stderr)
    if done.returncode != 0 or count is None:
        raise SystemExit(f"valgrind failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="SQLite store transactions in instructions")
    p.add_argument("--small", type=int, default=200, help="messages of the smaller run")
    p.add_argument("--large", type=int, default=1000, help="messages of the larger run")
    p.add_argument("--program", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.program:
        mode, n, directory = args.program
        _program(mode, int(n), Path(directory))
        return 0
    valgrind = find_valgrind()
    counts = {
        (mode, n): _count(valgrind, mode, n) for mode in MODES for n in (args.small, args.large)
    }
    per = {
        m: (counts[(m, args.large)] - counts[(m, args.small)]) / (args.large - args.small)
        for m in MODES
    }
    from spoolbox.store.sqlite import transactions as tx

    print(f"Python {sys.version.split()[0]}, spoolbox {os.path.dirname(tx.__file__)}")
    print("| transaction | instructions a message |")
    print("|---|---:|")
    print(f"| submit | {per['submit']:,.0f} |")
    print(f"| claim | {per['claim'] - per['submit']:,.0f} |")
    print(f"| settle | {per['settle'] - per['claim']:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
