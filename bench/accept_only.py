"""The relay's acceptance alone: how fast spoolbox, as ``spoolbox init`` writes it,
answers ``250`` when it delivers nothing, against the same when it delivers.

Two systems, alternating, each a fresh ``spoolbox run`` (``bench/_mta.py``'s
``SpoolboxDaemon`` with ``as_init=True``, as ``bench/relay.py --systems
spoolbox-init`` runs it):

* ``hold``: the smtp transport points at a port that accepts connections and never
  greets: each lane's first delivery waits (for far longer than the run), so after
  the first claims the daemon neither claims nor settles; only the listener works;
* ``sink``: the transport points at a real sink (``bench/_mta.py``'s ``Sink``), as
  in the relay bench.

The figure is smtp-source's (``-s --sessions``, 2 KB) messages divided by its time
to get every ``250``, after a warm-up of 200.  The difference is what the daemon's
deliveries (their CPU, and their transactions on the store's one write lock) take
from the listener's answers.  The disk's fsync rate is printed beside each run::

    .venv/bin/python bench/accept_only.py --messages 3000 --runs 3
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from _counts import fsync_rate
from _mta import Sink, SpoolboxDaemon, ensure_peers, machine, smtp_source


def _silent_port() -> int:
    """A loopback port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(100)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1])


def one(mode: str, silent: int, n: int, sessions: int) -> float:
    """msg/s accepted by a fresh daemon whose transport goes to ``silent`` or a sink."""
    with tempfile.TemporaryDirectory(prefix="spoolbox-accept-") as tmp, Sink() as sink:
        to = silent if mode == "hold" else sink.port
        with SpoolboxDaemon(Path(tmp) / "spoolbox", to, as_init=True) as sb:
            warm = smtp_source(sb.port, 200, sessions, 2048)
            warm.communicate(timeout=120)
            time.sleep(0.5)
            t0 = time.perf_counter()
            proc = smtp_source(sb.port, n, sessions, 2048)
            _, err = proc.communicate(timeout=600)
            took = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"smtp-source exited {proc.returncode}: {err.decode()}")
    return n / took


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the relay's acceptance alone")
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sessions", type=int, default=10)
    args = p.parse_args(argv)
    ensure_peers()
    print(machine(), flush=True)
    silent = _silent_port()
    ratios: list[float] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as probe:
            rate = fsync_rate(Path(probe), 200)
        got = {mode: one(mode, silent, args.messages, args.sessions) for mode in ("hold", "sink")}
        ratios.append(got["sink"] / got["hold"])
        print(
            f"run {i + 1}: accepted, delivering nothing {got['hold']:,.0f} msg/s, "
            f"delivering {got['sink']:,.0f} msg/s ({ratios[-1]:.2f}x); disk {rate:,.0f} fsyncs/s",
            flush=True,
        )
    median = statistics.median(ratios)
    print(f"delivering / delivering nothing, median of {args.runs}: {median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
