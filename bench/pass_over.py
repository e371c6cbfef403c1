"""A claim passing over full destinations, with a long queue for one of them.

A direct-delivery lane whose domain ``slow.example`` has its ``destination_concurrency``
under way claims with ``skip_destinations={"slow.example"}``: the store passes over
that domain's queued recipients to find the mail for other domains.  For each store
(SQLite, and PostgreSQL as a private cluster started here), this queues ``--queued``
messages to ``slow.example``, then ``--others`` to ``fast.example`` behind them (0:
none, the claim finds nothing), and times ``--claims`` such claims of 8 (each job put
back).  It prints the median time of a claim, how many jobs it found, and the
machine's own speed beside (the disk's fsyncs a second, the load average).
``--more N`` passes over N other destinations besides (none queued: as a lane
whose ``destination_rate_delay`` rests every domain it sent to; SQLite looks more
than 16 up in a list).  ``--per-row`` times, on 100,000 addresses in one statement,
what each store's filter costs a row: SQLite's ``LIKE`` and its destination in a
list (of 17, 1,000 and 20,000), PostgreSQL's destination expression and the one it
replaced::

    .venv/bin/python bench/pass_over.py --queued 100000 --others 10
    .venv/bin/python bench/pass_over.py --queued 100000 --others 0
    .venv/bin/python bench/pass_over.py --queued 30000 --others 10 --more 1500
    .venv/bin/python bench/pass_over.py --per-row

To compare two trees, run each with ``PYTHONPATH=<tree>/src``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "store"))

import postgres_cluster as pgc
import psycopg

from _counts import fsync_rate
from spoolbox import Address, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate, Store
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.postgres import queries as pg_queries
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.store.sqlite import queries as sqlite_queries

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


async def _claims(store: Store, claims: int, more: int) -> tuple[float, int]:
    times: list[float] = []
    found = 0
    skip = {"slow.example", *(f"d{i}.example" for i in range(more))}
    for _ in range(claims):
        t0 = time.perf_counter()
        jobs = await store.claim(
            "smtp", owner="bench", now=time.time(), lease=60.0, limit=8, skip_destinations=skip
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
            f"slow.example, {args.others} for fast.example behind them, "
            f"{args.more:,} more destinations passed over",
            flush=True,
        )
        async with SQLiteStore(Path(tmp) / "spool.sqlite3") as sqlite:
            await _fill(sqlite, args.queued, args.others)
            median, found = await _claims(sqlite, args.claims, args.more)
        print(f"sqlite:     a claim {median * 1000:.1f} ms (median), {found} jobs", flush=True)
    cluster = pgc.start_cluster()
    try:
        async with PostgresStore(cluster.dsn(cluster.new_database())) as postgres:
            await _fill(postgres, args.queued, args.others)
            median, found = await _claims(postgres, args.claims, args.more)
        print(f"postgresql: a claim {median * 1000:.1f} ms (median), {found} jobs", flush=True)
    finally:
        pgc.remove_cluster(cluster)


#: PostgreSQL's destination expression before session 31 (a regular expression and
#: ``translate``), timed beside the one in use.
_PG_BEFORE = (
    "CASE WHEN strpos(address, '@') > 0 THEN translate(substring(address from '[^@]*$'), "
    "'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') "
    "ELSE substring(address from strpos(address, ':') + 1) END"
)
_ROWS = 100_000


def _per_row() -> None:
    """Each filter's time a row: the best of three counts over 100,000 addresses."""
    names = [f"d{i}.example" for i in range(20_000)]

    def best(run: Any) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e6 / _ROWS

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE recipients (address TEXT)")
    conn.executemany(
        "INSERT INTO recipients VALUES (?)", ((f"SMTP:r{i}@slow.example",) for i in range(_ROWS))
    )
    # Up to LIKE_MOST (16) destinations SQLite matches with LIKE; more, in a list.
    for form, given in (
        ("LIKE", ["slow.example"]),
        ("list", ["slow.example", *names[:16]]),
        ("list", ["slow.example", *names[:999]]),
        ("list", ["slow.example", *names[:19_999]]),
    ):
        condition, params = sqlite_queries.skipped(given, 250_000)
        sql = f"SELECT count(*) FROM recipients WHERE NOT ({condition})"
        us = best(lambda sql=sql, params=params: conn.execute(sql, params).fetchone())
        print(f"sqlite {form} of {len(given):,}: {us:.2f} us a row", flush=True)
    cluster = pgc.start_cluster()
    try:
        with psycopg.connect(cluster.dsn(cluster.new_database()), autocommit=True) as pg:
            pg.execute(
                "CREATE TABLE t AS SELECT 'SMTP:r' || g || '@slow.example' AS address "
                f"FROM generate_series(1, {_ROWS}) AS g"
            )
            for form, expression in (("now", pg_queries.DESTINATION), ("before", _PG_BEFORE)):
                sql = f"SELECT count(*) FROM t WHERE NOT ({expression}) = ANY(%s)"
                us = best(lambda sql=sql: pg.execute(sql, (["slow.example"],)).fetchone())
                print(f"postgresql destination ({form}): {us:.2f} us a row", flush=True)
    finally:
        pgc.remove_cluster(cluster)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=10)
    parser.add_argument("--claims", type=int, default=7)
    parser.add_argument("--more", type=int, default=0)
    parser.add_argument("--per-row", action="store_true")
    args = parser.parse_args(argv)
    if args.per_row:
        _per_row()
    else:
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
