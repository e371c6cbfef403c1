"""The PostgreSQL store alone: a drain through its calls, and what the server spends.

A private PostgreSQL (``initdb`` + ``pg_ctl`` in a temporary directory, as the tests
start it) and one ``PostgresStore`` in this process, nothing else: ``--messages``
messages of 2 KB committed by one ``submit_many``, then ``--lanes`` loops that each
claim 8 messages and settle them together (the settles of one loop go out as one
group, as a daemon's lanes' do), until every message is delivered and deleted (kept
for no time, as ``spoolbox init`` writes it).  Per message it prints:

* ``msg/s``: the drain's rate (claims and settles only);
* ``client CPU`` and ``server CPU`` (ms a message): this process (``getrusage``) and
  the PostgreSQL processes (``/proc``, the postmaster's children), during the drain;
``--keep`` settles without deleting (the default retention keeps a delivered message:
its recipient row is written, as are the indexes of finished recipients).
``--backlog N`` first queues N more messages for another transport, which stay in the
store while the drain runs (a deep queue: what a statement that scans a table pays).

* ``counters``: the time the server spent in the recipient counters' trigger
  functions (``pg_stat_user_functions`` with ``track_functions = all``), ms a call
  and a message: the part of the server's work that keeps ``counts()`` cheap.

``--statements`` starts the server with ``pg_stat_statements`` and prints, for each
run, the drain's statements that took the server the most time: calls, ms a call and
shared buffers a call (the plans' work: a statement whose buffers grow with the queue
scans it).

Medians over ``--runs`` fresh databases.  The disk's fsync rate is printed beside.
To compare two trees, run each with ``PYTHONPATH``::

    .venv/bin/python bench/pg_store_ops.py --runs 5
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/pg_store_ops.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "store"))

import postgres_cluster as pgc
import psycopg

import spoolbox
from _counts import fsync_rate, postgres_cpu_seconds
from spoolbox import Address, MessageState, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate
from spoolbox.store.postgres import PostgresStore

BODY = b"From: bench@example.org\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"
DROP = frozenset({MessageState.SENT, MessageState.FAILED})
BATCH = 8


def _client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _functions(dsn: str) -> tuple[int, float]:
    """Calls of the counters' trigger functions and their own time (ms) so far."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(self_time), 0) "
            "FROM pg_stat_user_functions WHERE funcname LIKE 'spoolbox_count%'"
        ).fetchone()
        conn.execute("SELECT pg_stat_clear_snapshot()")
    assert row is not None
    return int(row[0]), float(row[1])


_TOP_STATEMENTS = """
SELECT calls, total_exec_time / calls, shared_blks_hit::float8 / calls,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) AND calls > 10
ORDER BY total_exec_time DESC LIMIT 6
"""


def _statements(cluster: pgc.Cluster, db: str | None) -> list[tuple[int, float, float, str]]:
    """The reset of ``pg_stat_statements`` (``db`` None), or the database's top six."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        if db is None:
            conn.execute("SELECT pg_stat_statements_reset()")
            return []
        return [
            (int(a), float(b), float(c), str(d))
            for a, b, c, d in conn.execute(_TOP_STATEMENTS, (db,))
        ]


def _with_statements(cluster: pgc.Cluster) -> None:
    """The server restarted with ``pg_stat_statements`` loaded and created."""
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write("\nshared_preload_libraries = 'pg_stat_statements'\n")
    cluster.stop()
    cluster.start()
    cluster.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


async def one_run(
    cluster: pgc.Cluster,
    n: int,
    lanes: int,
    backlog: int,
    statements: bool = False,
    keep: bool = False,
) -> dict[str, float]:
    db = cluster.new_database()
    cluster.execute(f"ALTER DATABASE {db} SET track_functions = 'all'")
    dsn = cluster.dsn(db)
    try:
        async with PostgresStore(dsn, pool_size=lanes + 1) as store:
            sender = Address("SMTP", "bench@example.org")
            messages = [
                NewMessage(sender, (Address("SMTP", f"r{i}@example.org"),), BODY) for i in range(n)
            ]
            await store.submit_many(
                messages, now=time.time(), lifetime=86400.0, routes=[["smtp"]] * n
            )
            for start in range(0, backlog, 2000):  # a deep queue of another transport
                lot = [
                    NewMessage(sender, (Address("SMTP", f"q{i}@example.org"),), BODY)
                    for i in range(start, min(backlog, start + 2000))
                ]
                await store.submit_many(
                    lot, now=time.time(), lifetime=86400.0, routes=[["other"]] * len(lot)
                )
            await asyncio.sleep(1.0)  # let the function statistics of the submit arrive
            calls0, self0 = _functions(dsn)
            if statements:
                _statements(cluster, None)
            server0, client0, t0 = (
                postgres_cpu_seconds(cluster.data),
                _client_cpu(),
                time.perf_counter(),
            )

            async def lane() -> None:
                while True:
                    jobs = await store.claim(
                        "smtp", owner="bench", now=time.time(), lease=60.0, limit=BATCH
                    )
                    if not jobs:
                        return
                    await asyncio.gather(
                        *(
                            store.settle(
                                job.message.id,
                                [
                                    RecipientUpdate(r.index, RecipientState.DELIVERED)
                                    for r in job.recipients
                                ],
                                owner="bench",
                                now=time.time(),
                                claim=job.claim,
                                drop_finished=() if keep else DROP,
                            )
                            for job in jobs
                        )
                    )

            await asyncio.gather(*(lane() for _ in range(lanes)))
            took = time.perf_counter() - t0
            client, server = _client_cpu() - client0, postgres_cpu_seconds(cluster.data) - server0
            counts = await store.counts()
            left = (
                sum(counts.values()) - backlog - (counts[RecipientState.DELIVERED] if keep else 0)
            )
            if statements:
                print("| calls | ms a call | buffers a call | statement |\n|---:|---:|---:|---|")
                for calls, ms, hits, query in _statements(cluster, db):
                    print(f"| {calls:,} | {ms:.3f} | {hits:,.0f} | `{query}` |")
    finally:
        await asyncio.sleep(1.0)  # the statistics collector's last report
        calls1, self1 = _functions(dsn)
        cluster.drop_database(db)
    if left:
        raise SystemExit(f"{left} recipients left after the drain: the bench is wrong")
    calls = calls1 - calls0
    return {
        "msg/s": n / took,
        "client ms/msg": client / n * 1000,
        "server ms/msg": server / n * 1000,
        "counter calls/msg": calls / n,
        "counter ms/call": (self1 - self0) / calls if calls else 0.0,
        "counter ms/msg": (self1 - self0) / n,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the PostgreSQL store alone: a drain")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--lanes", type=int, default=4)
    p.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="messages queued for another transport, left in the store during the drain",
    )
    p.add_argument(
        "--statements",
        action="store_true",
        help="print the drain's costliest statements (pg_stat_statements)",
    )
    p.add_argument("--keep", action="store_true", help="settles keep the delivered messages")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cluster = pgc.start_cluster()
    runs: list[dict[str, float]] = []
    try:
        if args.statements:
            _with_statements(cluster)
        for i in range(args.runs):
            run = asyncio.run(
                one_run(
                    cluster, args.messages, args.lanes, args.backlog, args.statements, args.keep
                )
            )
            run["fsync"] = fsync_rate(cluster.root, 300)
            runs.append(run)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:,.3f}" for k, v in run.items()), flush=True)
    finally:
        pgc.remove_cluster(cluster)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"\n{args.messages} messages ({args.backlog} more queued for another transport), "
        f"{args.lanes} lanes claiming {BATCH}, {args.runs} runs "
        f"(medians); Python {sys.version.split()[0]}, spoolbox from {spoolbox.__file__}"
    )
    print("| " + " | ".join(med) + " |")
    print("|" + "---:|" * len(med))
    print("| " + " | ".join(f"{v:,.3f}" for v in med.values()) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
