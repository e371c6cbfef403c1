"""The relay's whole work a message, counted in CPU instructions, not timed.

``bench/drain_instructions.py`` counts the daemon delivering mail queued beforehand;
this bench counts everything spoolbox does to relay a message: the profile exactly as
``spoolbox init`` writes it (plus the ``smtp`` transport to Postfix's ``smtp-sink``,
as ``bench/relay.py``'s ``spoolbox-init``), ``spoolbox run`` and every process it
starts (its listener processes) under Valgrind's cachegrind (``--trace-children=yes``,
``--fair-sched=yes``, ``--cache-sim=no``: instructions, ``I refs``), while
``smtp-source`` sends N messages (one a connection, ten sessions at a time, 2 KiB):
the listener's SMTP dialogue and its commit, the claim, the delivery, the settle, the
log lines.  The daemon is stopped with SIGTERM once the sink has the N and the store
has them settled.  Two N; the difference of the counts (summed over the processes)
divided by the difference of N is the count a message: start-up, shutdown and the
sessions' own set-up left out.  Only user space is counted, and only spoolbox's
processes (not the sink's, not smtp-source's).  Needs ``valgrind`` and Postfix's
``smtp-sink`` and ``smtp-source`` (``apt-get install -y valgrind postfix``).  Run it,
and the tree before with ``PYTHONPATH``::

    .venv/bin/python bench/relay_instructions.py [--small 100] [--large 600] [--repeat 2]
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/relay_instructions.py
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _counts import cachegrind, counted_tree, find_valgrind, instructions, pairs
from _mta import Sink, SpoolboxDaemon, smtp_source

#: Seconds a count may take (a relayed message takes about 0.1 s under cachegrind).
_LIMIT = 1200.0


def _delivered(profile: Path) -> int:
    """Recipients settled ``delivered`` in the daemon's store (read-only)."""
    store = profile.parent / "spool.sqlite3"
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return int(
            conn.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'").fetchone()[0]
        )
    finally:
        conn.close()


def _count(valgrind: str, root: Path, n: int, tag: str, sessions: int, size: int) -> int:
    """Instructions of spoolbox's processes relaying ``n`` messages."""
    logs = root / tag
    logs.mkdir()
    prefix, env = cachegrind(
        valgrind, "--fair-sched=yes", "--trace-children=yes", f"--log-file={logs}/vg.%p"
    )
    deadline = time.monotonic() + _LIMIT
    with Sink() as sink:
        sb = SpoolboxDaemon(
            root / f"{tag}-spoolbox",
            sink.port,
            as_init=True,
            command_prefix=prefix,
            env=env,
            start_timeout=600.0,
        )
        try:
            source = smtp_source(sb.port, n, sessions, size)
            _, err = source.communicate(timeout=_LIMIT)
            if source.returncode != 0:
                raise SystemExit(f"smtp-source exited {source.returncode}: {err.decode()}")
            sink.wait_for(n, max(1.0, deadline - time.monotonic()))
            while _delivered(sb.profile) < n:  # every settle committed before the stop
                if time.monotonic() > deadline:
                    raise SystemExit("not every recipient was settled delivered")
                time.sleep(0.2)
            sb.proc.send_signal(signal.SIGTERM)
            code = sb.proc.wait(600)
        finally:
            sb.close()
    counts = [instructions(p.read_text(errors="replace")) for p in logs.iterdir()]
    if code != 0 or any(c is None for c in counts):
        tail = sb.log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"spoolbox run under valgrind exited {code}:\n{tail}")
    return sum(c for c in counts if c is not None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="spoolbox's instructions a relayed message")
    p.add_argument("--small", type=int, default=100, help="messages of the smaller run")
    p.add_argument("--large", type=int, default=600, help="messages of the larger run")
    p.add_argument("--repeat", type=int, default=2, help="pairs of runs (the median)")
    p.add_argument("--sessions", type=int, default=10, help="smtp-source's parallel sessions")
    p.add_argument("--size", type=int, default=2048, help="message size (smtp-source -l)")
    args = p.parse_args(argv)
    valgrind = find_valgrind()
    counted_tree()
    with tempfile.TemporaryDirectory(prefix="relay-instr-") as tmp:
        root = Path(tmp)
        per = pairs(
            lambda n, tag: _count(valgrind, root, n, tag, args.sessions, args.size),
            args.small,
            args.large,
            args.repeat,
        )
    print(f"instructions a relayed message (median of {args.repeat}): {per:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
