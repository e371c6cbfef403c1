"""The daemon's whole work a delivered message, counted in CPU instructions, not timed.

``bench/store_instructions.py`` counts the SQLite store's transactions alone; this
bench counts everything one ``spoolbox run`` process does to deliver a message: the
claim and the settle in its store thread, the smtp transport's dialogue, the
spooler's scheduling, the status table, the log line.  N messages
(``drain_vs_django``'s, 2.3 KB, one recipient) are queued into a fresh SQLite store
with no daemon running; then ``spoolbox run`` (``[daemon] workers = 0``, the ``smtp``
transport with ``max_connections`` 4 to Postfix's ``smtp-sink -c``) runs under
Valgrind's cachegrind (``--cache-sim=no``: it counts instructions, ``I refs``) until
the sink has the N and the store has them delivered, and is stopped with SIGTERM.
Two N; the difference of the counts divided by the difference of N is the count a
message (start-up and shutdown left out).

Only the daemon's own process is counted, in user space: its system calls' work in
the kernel is not, nor the sink's.  Valgrind runs one thread at a time.  Without
``--fair-sched=yes`` the thread that holds Valgrind's lock keeps it, and the count
follows that: a tree without one suspension a message counted a fifth fewer
instructions so (the store thread waited, the work was batched differently), 1%
fewer with fair scheduling, where a timed drain saw no difference in its noise.  The
batches a claim takes and the settles a commit groups may still differ from a timed
run's, the same way for every tree.  A timed run on this machine moves by a factor
of two from one process to the next; this count repeats to within a fraction of a
percent (``--repeat`` says how much), which is what comparing two trees needs.
``PYTHONHASHSEED=0`` as in ``store_instructions``.  Needs ``valgrind`` and
``smtp-sink`` (``apt-get install -y valgrind postfix``).  Run it, and the tree
before with ``PYTHONPATH``::

    .venv/bin/python bench/drain_instructions.py [--small 200] [--large 1200] [--repeat 2]
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/drain_instructions.py
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _counts import cachegrind, counted_tree, find_valgrind, instructions, pairs
from drain_vs_django import Sink, _msg
from drain_workers import CLI, _delivered, _profile
from spoolbox.client import Client

#: Seconds a count may take (a message takes about 0.05 s under cachegrind).
_LIMIT = 900.0


def _count(valgrind: str, root: Path, sink: Sink, n: int, tag: str) -> int:
    """Instructions of one ``spoolbox run`` that delivers ``n`` queued messages."""
    profile = _profile(root / tag, sink.port, 4, 0)
    queued = Client(profile).submit_many([_msg(i) for i in range(n)])
    if queued["via"] != "store" or len(queued["ids"]) != n:
        raise SystemExit(f"queueing failed: {queued.get('via')}, {len(queued['ids'])} ids")
    vg_log = root / f"{tag}.valgrind"
    before = sink.count()
    prefix, env = cachegrind(valgrind, "--fair-sched=yes", f"--log-file={vg_log}")
    cmd = [*prefix, *CLI, "--profile", str(profile), "run", "--no-nice"]
    with (root / f"{tag}.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + _LIMIT
    try:
        while sink.count() - before < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the drain stopped:\n{_tail(root / f'{tag}.log')}")
            time.sleep(0.2)
        store = profile.parent / "spool.sqlite3"
        while _delivered(store) < n:  # every settle committed before the stop
            if time.monotonic() > deadline:
                raise SystemExit("not every recipient was settled delivered")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    count = instructions(vg_log.read_text(errors="replace"))
    if code != 0 or count is None:
        raise SystemExit(f"spoolbox run under valgrind exited {code}:\n{_tail(vg_log)}")
    return count


def _tail(path: Path) -> str:
    """The end of a log (the directory it is in goes away when the bench exits)."""
    return path.read_text(errors="replace")[-3000:] if path.exists() else f"({path} is missing)"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the daemon's instructions a delivered message")
    p.add_argument("--small", type=int, default=200, help="messages of the smaller run")
    p.add_argument("--large", type=int, default=1200, help="messages of the larger run")
    p.add_argument("--repeat", type=int, default=2, help="pairs of runs (the median)")
    args = p.parse_args(argv)
    valgrind = find_valgrind()
    counted_tree()
    with tempfile.TemporaryDirectory(prefix="drain-instr-") as tmp:
        root = Path(tmp)
        (root / "sink").mkdir()
        sink = Sink(root / "sink")
        sink.start()
        try:
            per = pairs(
                lambda n, tag: _count(valgrind, root, sink, n, tag),
                args.small,
                args.large,
                args.repeat,
            )
        finally:
            sink.stop()
    print(f"instructions a delivered message (median of {args.repeat}): {per:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
