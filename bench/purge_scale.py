"""Retention purge at scale: what one ``Store.purge(limit=500)`` batch and the drain of a
backlog of finished messages cost, beside a large queue of unfinished ones.

For each backend (SQLite, and PostgreSQL in a private cluster started as the tests
start it), each ``--queued`` Q and each ``--finished`` F, a fresh store is made by
the store itself (its schema, indexes and counters' triggers), then filled by direct
SQL (the rows the store would hold: filling 200,000 messages through ``submit_many``
and settles takes minutes a store): Q + F one-recipient messages, interleaved in
insertion order, of which F are finished long enough ago to go (nine in ten
delivered 10 days ago, one in ten failed 40 days ago: past the default retention of
7 and 30 days) and Q are queued.  The PostgreSQL tables are then ``VACUUM ANALYZE``d
(as autovacuum leaves them; ``--no-analyze``: a fresh database without statistics).
Then, as the spooler's housekeeping purges (``Retention().cutoffs(now)``):

* ``batch ms``: the first ``purge(limit=500)``;
* ``drain s``: every batch until one returns fewer than 500 (the first included),
  and ``batches``;
* ``idle ms``: one more purge, which finds nothing (every purge of a store with
  nothing to purge, every five minutes).

The drain must leave exactly the Q queued messages (the bench checks).  Medians over
``--runs`` fresh stores.  The disk's fsync rate and the machine are printed first.
To compare two trees, run each with ``PYTHONPATH``::

    .venv/bin/python bench/purge_scale.py --runs 3 --json new.json
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/purge_scale.py --runs 3 --json old.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

import spoolbox
from _counts import fsync_rate
from spoolbox.store.base import Store
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.retention import Retention
from spoolbox.store.sqlite import SQLiteStore

BATCH = 500
DAY = 86400.0

# One row per message: i in [0, n); message i is finished when i % stride = 0 and
# i / stride < F (spread over the insertion order), queued otherwise.
_SQLITE_FILL = [
    """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n)
    INSERT INTO blobs (id, size, chunks) SELECT i + 1, 1, 0 FROM s""",
    """INSERT INTO messages (id, fingerprint, sender, priority, submitted_at, send_at,
        expires_at, notify, is_report, envelope_id, size, subject, held, blob_id)
    SELECT printf('m%09d', id - 1), x'00', 'SMTP:bench@example.org', 0, :then, NULL,
        :expires, 0, 0, NULL, 1, 'purge bench', 0, id FROM blobs""",
    """INSERT INTO recipients (message_id, idx, address, state, route, updated_at,
        priority, send_at, ready_at, expires_at)
    SELECT printf('m%09d', i), 0, 'SMTP:r' || i || '@example.org',
        CASE WHEN NOT (i % :stride = 0 AND i / :stride < :f) THEN 'queued'
             WHEN (i / :stride) % 10 = 9 THEN 'failed' ELSE 'delivered' END,
        'smtp',
        CASE WHEN NOT (i % :stride = 0 AND i / :stride < :f) THEN :recent
             WHEN (i / :stride) % 10 = 9 THEN :failed_at ELSE :sent_at END,
        0, :then, :then, :expires
    FROM (SELECT id - 1 AS i FROM blobs)""",
]

_PG_FILL = [
    """INSERT INTO blobs (size, chunks) SELECT 1, 0 FROM generate_series(1, %(n)s)""",
    """INSERT INTO messages (id, fingerprint, sender, priority, submitted_at, send_at,
        expires_at, notify, is_report, envelope_id, size, subject, held, blob_id)
    SELECT 'm' || lpad((id - 1)::text, 9, '0'), '\\x00', 'SMTP:bench@example.org', 0,
        %(then)s, NULL, %(expires)s, 0, 0, NULL, 1, 'purge bench', 0, id FROM blobs""",
    """INSERT INTO recipients (message_id, idx, address, state, route, updated_at,
        priority, send_at, ready_at, expires_at)
    SELECT 'm' || lpad(i::text, 9, '0'), 0, 'SMTP:r' || i || '@example.org',
        CASE WHEN NOT (i %% %(stride)s = 0 AND i / %(stride)s < %(f)s) THEN 'queued'
             WHEN (i / %(stride)s) %% 10 = 9 THEN 'failed' ELSE 'delivered' END,
        'smtp',
        CASE WHEN NOT (i %% %(stride)s = 0 AND i / %(stride)s < %(f)s) THEN %(recent)s
             WHEN (i / %(stride)s) %% 10 = 9 THEN %(failed_at)s ELSE %(sent_at)s END,
        0, %(then)s, %(then)s, %(expires)s
    FROM (SELECT id - 1 AS i FROM blobs ORDER BY id) AS s""",
]


def _params(q: int, f: int, now: float) -> dict[str, Any]:
    n = q + f
    return {
        "n": n,
        "f": f,
        "stride": max(1, n // f) if f else n + 1,
        "then": now - 11 * DAY,
        "expires": now + 5 * DAY,
        "recent": now - 3600.0,
        "sent_at": now - 10 * DAY,
        "failed_at": now - 40 * DAY,
    }


async def _purges(store: Store, now: float, q: int, f: int) -> dict[str, float]:
    cutoffs = Retention().cutoffs(now)
    t0 = time.perf_counter()
    gone = await store.purge(finished_before=cutoffs, limit=BATCH)
    batch = time.perf_counter() - t0
    total, batches = len(gone), 1
    while len(gone) == BATCH:
        gone = await store.purge(finished_before=cutoffs, limit=BATCH)
        total += len(gone)
        batches += 1
    drain = time.perf_counter() - t0
    t1 = time.perf_counter()
    idle = await store.purge(finished_before=cutoffs, limit=BATCH)
    idle_s = time.perf_counter() - t1
    left = sum((await store.counts()).values())
    if total != f or idle or left != q:
        raise SystemExit(f"purged {total} of {f}, then {len(idle)}; {left} left of {q}: wrong")
    return {"batch ms": batch * 1e3, "drain s": drain, "batches": batches, "idle ms": idle_s * 1e3}


def _sqlite_fill(path: Path, q: int, f: int, now: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql in _SQLITE_FILL:
            conn.execute(sql, {k: v for k, v in _params(q, f, now).items() if f":{k}" in sql})
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _remove(directory: Path) -> None:
    for p in directory.glob("purge.db*"):
        p.unlink()


async def sqlite_run(directory: Path, q: int, f: int) -> dict[str, float]:
    path = directory / "purge.db"
    now = time.time()
    try:
        async with SQLiteStore(path):
            pass  # the store makes its file, schema and all
        _sqlite_fill(path, q, f, now)
        async with SQLiteStore(path) as store:
            return await _purges(store, now, q, f)
    finally:
        _remove(directory)


async def postgres_run(cluster: pgc.Cluster, q: int, f: int, analyze: bool) -> dict[str, float]:
    db = cluster.new_database()
    dsn = cluster.dsn(db)
    now = time.time()
    try:
        async with PostgresStore(dsn, pool_size=2):
            pass  # the store migrates the new database
        with psycopg.connect(dsn, autocommit=True) as conn:
            if not analyze:
                for table in ("recipients", "messages", "blobs"):
                    conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            with conn.transaction():
                for sql in _PG_FILL:
                    conn.execute(sql, _params(q, f, now))  # type: ignore[arg-type]
            if analyze:
                conn.execute("VACUUM ANALYZE")
        async with PostgresStore(dsn, pool_size=2) as store:
            return await _purges(store, now, q, f)
    finally:
        cluster.drop_database(db)


def _facts(cluster: pgc.Cluster | None, directory: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "spoolbox": spoolbox.__file__,
        "fsync/s (store dir)": round(fsync_rate(directory, 300)),
    }
    if cluster is not None:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        facts["postgresql"] = None if row is None else str(row[0])
        facts["fsync/s (cluster dir)"] = round(fsync_rate(cluster.root, 300))
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="retention purge at scale")
    p.add_argument("--queued", type=int, nargs="+", default=[0, 50_000, 200_000])
    p.add_argument("--finished", type=int, nargs="+", default=[2000, 20_000])
    p.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--no-analyze", action="store_true", help="PostgreSQL without statistics")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cluster = pgc.start_cluster() if "postgres" in args.backends else None
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            facts = _facts(cluster, Path(tmp))
            print(" ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
            for backend in args.backends:
                for q in args.queued:
                    for f in args.finished:
                        runs = []
                        for _ in range(args.runs):
                            if backend == "sqlite":
                                run = asyncio.run(sqlite_run(Path(tmp), q, f))
                            else:
                                assert cluster is not None
                                run = asyncio.run(postgres_run(cluster, q, f, not args.no_analyze))
                            runs.append(run)
                        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                        row = {"backend": backend, "queued": q, "finished": f, **med}
                        results.append({**row, "runs": runs})
                        print(
                            f"{backend} Q={q:,} F={f:,}: "
                            + ", ".join(f"{k} {v:,.3f}" for k, v in med.items()),
                            flush=True,
                        )
    finally:
        if cluster is not None:
            pgc.remove_cluster(cluster)
    print(f"\nmedians of {args.runs} runs; spoolbox from {spoolbox.__file__}")
    print("| backend | queued | finished | batch ms | drain s | batches | idle ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['backend']} | {r['queued']:,} | {r['finished']:,} | {r['batch ms']:,.1f} "
            f"| {r['drain s']:,.2f} | {r['batches']:.0f} | {r['idle ms']:,.1f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"facts": facts, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
