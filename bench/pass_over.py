"""A claim passing over full destinations, with a long queue for one of them.

A direct-delivery lane whose domain ``slow.example`` has its ``destination_concurrency``
under way claims with ``skip_destinations={"slow.example"}``: the store passes over
that domain's queued recipients to find the mail for other domains.  For each store
(SQLite, and PostgreSQL as a private cluster started here), this queues ``--queued``
messages to ``slow.example``, then ``--others`` to ``fast.example`` behind them (0:
none, the claim finds nothing), and times ``--claims`` such claims of 8 (each job put
back).  It prints the median time of a claim, how many jobs it found, and the
machine's own speed beside (the disk's fsyncs a second, the load average)::

    .venv/bin/python bench/pass_over.py --queued 100000 --others 10
    .venv/bin/python bench/pass_over.py --queued 100000 --others 0

To compare two trees, run each with ``PYTHONPATH=<tree>/src``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "store"))

import postgres_cluster as pgc

from _counts import fsync_rate
from spoolbox import Address, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate, Store
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.sqlite import SQLiteStore

BODY = b"From: bench@example.org\r\nSubject: bench\r\n\r\nhello\r\n"
SENDER = Address("SMTP", "bench@example.org")


async def _fill(store: Store, queued: int, others: int) -> None:
    now = time.time() - 100
    for start in range(0, queued, 5000):
        k = min(5000, queued - start)
        batch = [
            NewMessage(SENDER, (Address("SMTP", f"r{start + i}@slow.example"),), BODY)
            for i in range(k)
        ]
        await store.submit_many(batch, now=now, lifetime=86400.0, routes=[["smtp"]] * k)
    if others:
        batch = [
            NewMessage(SENDER, (Address("SMTP", f"f{i}@fast.example"),), BODY)
            for i in range(others)
        ]
        await store.submit_many(batch, now=now + 1, lifetime=86400.0, routes=[["smtp"]] * others)


async def _claims(store: Store, claims: int) -> tuple[float, int]:
    times: list[float] = []
    found = 0
    for _ in range(claims):
        t0 = time.perf_counter()
        jobs = await store.claim(
            "smtp",
            owner="bench",
            now=time.time(),
            lease=60.0,
            limit=8,
            skip_destinations={"slow.example"},
        )
        times.append(time.perf_counter() - t0)
        found = len(jobs)
        for job in jobs:  # put back, for the next claim to find again
            updates = [RecipientUpdate(r.index, RecipientState.QUEUED) for r in job.recipients]
            await store.settle(
                job.message.id, updates, owner="bench", now=time.time(), claim=job.claim
            )
    return statistics.median(times), found


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
            f"disk {fsync_rate(Path(tmp)):,.0f} fsyncs/s; {args.queued:,} queued for "
            f"slow.example, {args.others} for fast.example behind them",
            flush=True,
        )
        async with SQLiteStore(Path(tmp) / "spool.sqlite3") as sqlite:
            await _fill(sqlite, args.queued, args.others)
            median, found = await _claims(sqlite, args.claims)
        print(f"sqlite:     a claim {median * 1000:.1f} ms (median), {found} jobs", flush=True)
    cluster = pgc.start_cluster()
    try:
        async with PostgresStore(cluster.dsn(cluster.new_database())) as postgres:
            await _fill(postgres, args.queued, args.others)
            median, found = await _claims(postgres, args.claims)
        print(f"postgresql: a claim {median * 1000:.1f} ms (median), {found} jobs", flush=True)
    finally:
        pgc.remove_cluster(cluster)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=10)
    parser.add_argument("--claims", type=int, default=7)
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
