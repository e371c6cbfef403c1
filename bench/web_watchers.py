"""Does the web page cost the delivery anything?  Relay throughput with five browsers
watching and Prometheus scraping every second, against the same daemon unwatched.

Each run relays a batch through ``spoolbox run`` (the relay benchmark's daemon and
sink, :mod:`_mta`) twice, in alternating order: ``off`` (no ``[web]``) and
``watched`` (``[web] enabled``; five clients read ``/events`` the whole batch, as five
open pages do, and a sixth GETs ``/metrics`` once a second).  The figure is messages
per second from the start of ``smtp-source`` until ``smtp-sink`` has the last one.
The bench daemon logs at ``warning``, so the delivery-latency histogram (fed by the
delivery log's info lines) is idle in both.

With ``--drain`` the batch is a drain from the API instead: the messages go in
through the daemon's local API in one ``Client.submit_many`` call, and the figure is
messages per second from that call until ``smtp-sink`` has the last one.

Run it::

    .venv/bin/python bench/web_watchers.py [--messages 3000] [--runs 3] [--drain]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from _mta import Sink, SpoolboxDaemon, ensure_peers, free_port, log, machine
from latency import content
from relay import batch
from spoolbox import Address, NewMessage
from spoolbox.client import Client

CLIENTS = 5
SCRAPE_EVERY = 1.0


class Watchers:
    """Five event-stream readers and a scraper, in threads, until :meth:`stop`."""

    def __init__(self, base: str, token: str) -> None:
        self._stop = threading.Event()
        self._headers = {"authorization": f"Bearer {token}"}
        self._base = base
        self.event_bytes = [0] * CLIENTS
        self.scrapes = 0
        self._threads = [
            threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(CLIENTS)
        ] + [threading.Thread(target=self._scrape, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read(self, n: int) -> None:
        with (
            httpx.Client(base_url=self._base, headers=self._headers, timeout=None) as client,
            client.stream("GET", "/events") as response,
        ):
            for chunk in response.iter_bytes():
                self.event_bytes[n] += len(chunk)
                if self._stop.is_set():
                    return

    def _scrape(self) -> None:
        with httpx.Client(base_url=self._base, headers=self._headers) as client:
            while not self._stop.wait(SCRAPE_EVERY):
                client.get("/metrics").raise_for_status()
                self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()


def drain(sb: SpoolboxDaemon, sink: Sink, args: argparse.Namespace) -> tuple[float, float]:
    """``args.messages`` through the daemon's API at once; (start, sink has them all)."""
    lot = [
        NewMessage(
            Address("SMTP", "bench@example.org"), (Address("SMTP", "sink@example.org"),), content(i)
        )
        for i in range(args.messages)
    ]
    base = sink.count
    t0 = time.perf_counter()
    queued = Client(sb.profile).submit_many(lot)
    if queued.get("via") != "daemon":
        raise RuntimeError(f"the messages went in {queued.get('via')}, not through the daemon")
    return t0, sink.wait_for(base + args.messages, args.timeout)


def one(mode: str, workdir: Path, args: argparse.Namespace) -> tuple[float, str]:
    web_port = free_port()
    extra = f"\n[web]\nenabled = true\nport = {web_port}\n" if mode == "watched" else ""
    with Sink() as sink, SpoolboxDaemon(workdir, sink.port, extra_profile=extra) as sb:
        batch(sb.port, sink, args.warmup, args)
        watchers = None
        if mode == "watched":
            token = (workdir / "web.token").read_text().strip()
            watchers = Watchers(f"http://127.0.0.1:{web_port}", token)
            time.sleep(1.0)  # connected and past the first events
        cpu0, own0 = sb.cpu_seconds(), time.process_time()
        try:
            if args.drain:
                t0, t_done = drain(sb, sink, args)
            else:
                t0, _, t_done = batch(sb.port, sink, args.messages, args)
        finally:
            cpu1, own1 = sb.cpu_seconds(), time.process_time()
            if watchers is not None:
                watchers.stop()
        # The daemon's CPU per 1,000 messages: what the page costs the delivery,
        # apart from what the watchers (threads of this process) take from the CPUs.
        per_k = (cpu1 - cpu0) / args.messages * 1000
        note = f"daemon {per_k:.2f} CPU s / 1,000 msg"
        if watchers is not None:
            note += (
                f", watchers {own1 - own0:.2f} CPU s; {watchers.scrapes} scrapes, "
                f"event bytes per client {watchers.event_bytes}"
            )
    return args.messages / (t_done - t0), per_k, note


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay throughput with the web page watched")
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--drain", action="store_true", help="a drain from the API, not a relay")
    args = p.parse_args(argv)
    ensure_peers()
    rates: dict[str, list[float]] = {"off": [], "watched": []}
    cpu: dict[str, list[float]] = {"off": [], "watched": []}
    with tempfile.TemporaryDirectory(prefix="spoolbox-web-bench-") as tmp:
        for run in range(args.runs):
            order = ("off", "watched") if run % 2 == 0 else ("watched", "off")
            for mode in order:
                rate, per_k, note = one(mode, Path(tmp) / f"{run}-{mode}", args)
                rates[mode].append(rate)
                cpu[mode].append(per_k)
                log(f"run {run + 1} {mode}: {rate:,.0f} msg/s {note}")
    what = "drained from the API" if args.drain else "relayed"
    print(f"\n{args.messages} messages {what} a batch, {args.runs} runs; {machine()}\n")
    print("| web page | msg/s (median) | runs | daemon CPU s / 1,000 msg (median) | runs |")
    print("|---|---:|---|---:|---|")
    for mode, values in rates.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        spent = ", ".join(f"{v:.2f}" for v in cpu[mode])
        print(
            f"| {mode} | {statistics.median(values):,.0f} | {shown} "
            f"| {statistics.median(cpu[mode]):.2f} | {spent} |"
        )
    ratios = [w / o for w, o in zip(rates["watched"], rates["off"], strict=True)]
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"\nwatched / off, msg/s per run: {shown}; median {statistics.median(ratios):.2f}")
    ratios = [w / o for w, o in zip(cpu["watched"], cpu["off"], strict=True)]
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    median = statistics.median(ratios)
    print(f"watched / off, daemon CPU per message, per run: {shown}; median {median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
