"""Store scale: does picking the next job, counting the queue and memory stay flat
from 1,000 to 1,000,000 queued messages?

For each size N, a fresh ``SQLiteStore`` is filled with N queued, routed messages
(through the public ``submit`` and ``assign_routes``, concurrently so group commit
applies).  Then, on the full queue, it measures the median time of:

* ``claim``: claim the next job for the transport and put it back (claim + settle);
* ``counts``: ``store.counts()`` (recipients per state);
* ``next_ready_at``: the earliest ready time for the transport;

and the resident memory (RSS) of this process with a ``Spooler`` open on that store
(its transport held back, so the spooler has started, routed and is idle).
Content is never loaded to pick a job.  Run it::

    .venv/bin/python bench/store_scale.py --sizes 1000 1000000 [--dir DIR]

Filling a million messages takes a few minutes; the figures come after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from spoolbox import (
    Address,
    AlwaysIdle,
    NewMessage,
    Policy,
    RecipientState,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)
from spoolbox.store import RecipientUpdate
from store_throughput import NullProvider

BODY = b"From: bench@example.org\r\nSubject: scale\r\n\r\n" + b"y" * 1000 + b"\r\n"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 1e6


async def fill(store: SQLiteStore, n: int) -> None:
    batch = 2000
    now = time.time()
    for start in range(0, n, batch):
        msgs = [
            NewMessage(
                Address("SMTP", "bench@example.org"),
                (Address("SMTP", f"r{i}@example.org"),),
                BODY,
                id=f"m{i:09d}",
            )
            for i in range(start, min(n, start + batch))
        ]
        await asyncio.gather(*(store.submit(m, now=now, lifetime=86400.0) for m in msgs))
        await store.assign_routes([(m.id, 0, "null") for m in msgs])
        if start and start % 100_000 == 0:
            print(f"  filled {start:,}", file=sys.stderr)


async def median_time(fn: Callable[[], Awaitable[Any]], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(directory: Path, n: int, reps: int) -> dict[str, float]:
    db = directory / f"scale-{n}.db"
    store = SQLiteStore(db)
    await store.open()
    t0 = time.perf_counter()
    await fill(store, n)
    fill_s = time.perf_counter() - t0

    async def claim_and_return() -> None:
        jobs = await store.claim("null", owner="bench", now=time.time(), lease=60, limit=1)
        for job in jobs:
            await store.settle(
                job.message.id,
                [RecipientUpdate(r.index, RecipientState.QUEUED) for r in job.recipients],
                owner="bench",
                now=time.time(),
                claim=job.claim,
            )

    out = {
        "fill s": fill_s,
        "claim ms": 1000 * await median_time(claim_and_return, reps),
        "counts ms": 1000 * await median_time(store.counts, reps),
        "next_ready_at ms": 1000 * await median_time(lambda: store.next_ready_at("null"), reps),
    }
    await store.close()
    cfg = SpoolerConfig(
        transports=(TransportConfig("null", NullProvider),),
        policy=Policy(router_interval=0.2),
        node="bench",
    )
    async with Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True) as sp:
        with sp.foreground_busy():
            await sp.wait_ready(timeout=30)
            await sp.route_now()
            await asyncio.sleep(1.0)
            out["spooler RSS MB"] = rss_mb()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="store scale")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args(argv)
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.sizes:
            print(f"size {n:,}", file=sys.stderr)
            results[n] = asyncio.run(measure(Path(tmp), n, args.reps))
            print(f"  {results[n]}", file=sys.stderr)
    keys = list(next(iter(results.values())))
    print("| figure | " + " | ".join(f"{n:,} queued" for n in results) + " | ratio |")
    print("|---|" + "---:|" * (len(results) + 1))
    first, last = results[args.sizes[0]], results[args.sizes[-1]]
    for k in keys:
        cells = " | ".join(f"{results[n][k]:.3f}" for n in results)
        print(f"| {k} | {cells} | {last[k] / first[k]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
