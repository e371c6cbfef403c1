"""BDAT (CHUNKING, RFC 3030) against DATA over a link with latency, against Postfix.

What it measures
----------------
``smtp-source`` (``-s 10`` sessions, ``-l 2048`` bytes of body, one message per
connection) submits N messages to the system under test, which relays them over a
link that delays every byte by ``--delay-ms`` each way (a proxy of this script, in
its own process) to a private Postfix instance, whose smtpd offers CHUNKING and
PIPELINING as shipped; that Postfix relays on to ``smtp-sink``.  The figure is N
divided by the time from starting smtp-source until the sink has counted the N-th
message.  The systems take turns in every run (the order rotates):

* ``spoolbox-bdat``: ``spoolbox run`` with the profile exactly as ``spoolbox init``
  writes it, plus an ``smtp`` transport to the link (``host``, ``port``, ``tls =
  "none"``; 10 connections, the default): MAIL, RCPT and ``BDAT <n> LAST`` with the
  content in one write, one round trip a message;
* ``spoolbox-data``: the same with ``chunking = false``: MAIL, RCPT and DATA in one
  write, the content after the ``354``: two round trips;
* ``postfix``: a second private Postfix instance relaying to the link
  (``relayhost``, ``smtp_destination_concurrency_limit = 10``); Postfix's smtp client
  sends DATA (it does not use BDAT), with PIPELINING.

Before the timed batch every system relays a warm-up batch (100 messages).  Medians
over runs; ratios per run, then their median.  The link's round trip is printed with
the figures (what the receiver's greeting takes to come through it: one delay, plus
what the proxy adds, measured).  Run it (as
root: the Postfix instances)::

    .venv/bin/python bench/chunking.py --runs 3 --messages 1000 --delay-ms 25
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _mta import (
    PostfixRelay,
    Sink,
    SpoolboxDaemon,
    ensure_peers,
    free_port,
    log,
    machine,
    smtp_source,
    stop_process,
    wait_port,
)

SYSTEMS = ("spoolbox-bdat", "spoolbox-data", "postfix")
BODY = 2048
SESSIONS = 10


# -- the link ------------------------------------------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            at, data = await queue.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(pump())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await task
    except OSError:
        task.cancel()


async def _link(listen: int, target: int, delay: float) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay), return_exceptions=True
        )
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", listen, backlog=256)
    async with server:
        await server.serve_forever()


class Link:
    """This script as ``--link LISTEN TARGET DELAY_MS`` in a process of its own."""

    def __init__(self, target: int, delay_ms: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--link", str(self.port), str(target), str(delay_ms)],
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, 10, self.proc)
        except BaseException:
            self.close()
            raise

    def greeting_ms(self) -> float:
        """The median time to connect and read the receiver's greeting through the link,
        of five (the greeting's way back: one delay, plus what the proxy adds)."""
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.recv(512)
                times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    def close(self) -> None:
        stop_process(self.proc, 5)


# -- one batch -----------------------------------------------------------------------------------
def batch(port: int, sink: Sink, n: int) -> float:
    """smtp-source sends ``n`` messages to ``port``; msg/s until the sink has them all."""
    before = sink.count
    t0 = time.perf_counter()
    src = smtp_source(port, n, SESSIONS, BODY)
    try:
        done = sink.wait_for(before + n, 600)
    finally:
        _, err = src.communicate(timeout=600)
    if src.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {err.decode(errors='replace')[-500:]}")
    return n / (done - t0)


def run_system(name: str, root: Path, link: Link, sink: Sink, args: Any) -> float:
    workdir = root / name
    if name == "postfix":
        with PostfixRelay(workdir, link.port, concurrency=10) as pf:
            batch(pf.port, sink, args.warmup)
            return batch(pf.port, sink, args.messages)
    keys = ["chunking = false"] if name == "spoolbox-data" else []
    with SpoolboxDaemon(workdir, link.port, as_init=True, init_sink=keys) as sb:
        batch(sb.port, sink, args.warmup)
        return batch(sb.port, sink, args.messages)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--delay-ms", type=float, default=25.0, help="the link's one-way delay")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--link", nargs=3, metavar=("LISTEN", "TARGET", "DELAY_MS"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.link:
        listen, target, delay = args.link
        asyncio.run(_link(int(listen), int(target), float(delay) / 1000))
        return 0
    ensure_peers()
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"bench: unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    print(machine())
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="spoolbox-chunking-", dir="/tmp") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the postfix user reaches its queues under it
        with Sink() as sink, PostfixRelay(root / "receiver", sink.port, concurrency=10) as rx:
            link = Link(rx.port, args.delay_ms)
            try:
                took = link.greeting_ms()
                print(
                    f"link: {args.delay_ms:g} ms each way; connect and the receiver's "
                    f"greeting through it: {took:.1f} ms (one way, and the proxy's own time)"
                )
                for r in range(args.runs):
                    order = systems[r % len(systems) :] + systems[: r % len(systems)]
                    res: dict[str, float] = {}
                    for name in order:
                        res[name] = run_system(name, root / f"run{r}", link, sink, args)
                    log(f"run {r + 1}: " + ", ".join(f"{k} {v:,.0f} msg/s" for k, v in res.items()))
                    runs.append(res)
            finally:
                link.close()
    print(
        f"\n{args.messages} messages of {BODY} body bytes, smtp-source -s {SESSIONS}, "
        f"{args.runs} runs (medians); link delay {args.delay_ms:g} ms each way"
    )
    print("| system | msg/s | per run | ratio to postfix | ratio to spoolbox-data |")
    print("|---|---:|---|---:|---:|")
    for name in systems:
        rates = [r[name] for r in runs]
        cells = [f"{statistics.median(rates):,.0f}", " / ".join(f"{x:,.0f}" for x in rates)]
        for peer in ("postfix", "spoolbox-data"):
            if peer in systems and peer != name:
                cells.append(f"{statistics.median(r[name] / r[peer] for r in runs):.2f}x")
            else:
                cells.append("-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
