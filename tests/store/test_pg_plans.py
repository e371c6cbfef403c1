"""The PostgreSQL store's statements read what they take, not the queue.

A new database has no statistics until autovacuum's first ``ANALYZE`` (a minute or
more): a burst submitted to a fresh store is drained with the planner guessing.  With
a few thousand messages queued, the claim's look-up of the picked messages' rows read
the whole queue of the transport through ``recipients_flush`` and the read of the
claimed messages hashed the whole ``blob_chunks`` table, on every claim.  These tests
run the two statements under ``EXPLAIN ANALYZE`` (in a transaction rolled back) on
such a database and count the rows each scan of a table went through.  The same for
the statement every submission runs after its insert (the content dropped again if
the id was taken): it compared the content's key with ``currval(...)``, a volatile
function, row by row, and so read every content row in the store each time (a relay
into PostgreSQL fell to 131 msg/s after 5,000 messages).  And a queue whose recipients
wait for a retry (a destination down): a claim and the next ready time read them all,
at every empty claim, where they should read a few index pages.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from spoolbox import Address, MessageState, NewMessage, RecipientState
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.postgres import queries as q

QUEUED = 3000
DRAINED = 400  # claimed and settled first: the queue's index has dead entries too
BATCH = 8
DELIVERED = RecipientState.DELIVERED
BODY = b"Subject: queued\r\n\r\n" + b"x" * 2000 + b"\r\n"


def _scans(plan: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(node type, relation, rows the scan went through) of every scan in ``plan``."""
    out: list[tuple[str, str, int]] = []
    if "Relation Name" in plan:
        seen = int(plan["Actual Rows"]) + int(plan.get("Rows Removed by Filter", 0))
        out.append((plan["Node Type"], plan["Relation Name"], seen * int(plan["Actual Loops"])))
    for child in plan.get("Plans", []):
        out.extend(_scans(child))
    return out


def _analyzed(
    dsn: str, sql: str, params: Any, *, buffers: bool = False, before: str = ""
) -> dict[str, Any]:
    """The plan of ``sql`` as ``EXPLAIN ANALYZE`` ran it (``before`` first, in the same
    transaction), rolled back: a claim's UPDATE runs and is undone."""
    options = "ANALYZE, BUFFERS, FORMAT JSON" if buffers else "ANALYZE, FORMAT JSON"
    with psycopg.connect(dsn) as conn:
        cur = psycopg.ClientCursor(conn)  # the values inline: the custom plan of them
        if before:
            cur.execute(before)
        cur.execute(f"EXPLAIN ({options}) " + sql, params)
        row = cur.fetchone()
        conn.rollback()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    plan: dict[str, Any] = doc[0]["Plan"]
    return plan


def _buffers(dsn: str, sql: str, params: Any) -> int:
    """Shared buffers ``sql`` touched."""
    plan = _analyzed(dsn, sql, params, buffers=True)
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def _explain(
    dsn: str, sql: str, params: dict[str, Any], before: str = ""
) -> list[tuple[str, str, int]]:
    return _scans(_analyzed(dsn, sql, params, before=before))


@pytest.fixture
async def deep_queue(pg_dsn: str) -> str:
    """``QUEUED`` one-recipient messages for ``smtp``, ``DRAINED`` of them delivered
    and dropped, autovacuum off for the tables: no statistics."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for table in ("recipients", "messages", "blobs", "blob_chunks"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    sender = Address("SMTP", "sender@example.org")
    async with PostgresStore(pg_dsn, pool_size=2) as store:
        messages = [
            NewMessage(sender, (Address("SMTP", f"r{i}@example.org"),), BODY) for i in range(QUEUED)
        ]
        now = time.time() - 60
        await store.submit_many(messages, now=now, lifetime=86400.0, routes=[["smtp"]] * QUEUED)
        done = 0
        while done < DRAINED:
            jobs = await store.claim("smtp", owner="a", now=time.time(), lease=60.0, limit=BATCH)
            assert jobs
            for job in jobs:
                updates = [RecipientUpdate(r.index, DELIVERED) for r in job.recipients]
                await store.settle(
                    job.message.id,
                    updates,
                    owner="a",
                    now=time.time(),
                    claim=job.claim,
                    drop_finished=frozenset({MessageState.SENT}),
                )
            done += len(jobs)
    with psycopg.connect(pg_dsn) as conn:
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename IN ('recipients', 'blob_chunks')"
        ).fetchone()
    assert analyzed == (0,), "the tables have statistics: the test needs none"
    return pg_dsn


@pytest.mark.parametrize("sql", [q.CLAIM_TAKE_READY, q.CLAIM_TAKE_FLUSH], ids=["ready", "flush"])
async def test_a_claim_goes_through_a_few_rows_of_a_deep_queue(deep_queue: str, sql: str) -> None:
    params = {
        "owner": "b",
        "until": time.time() + 60,
        "now": time.time(),
        "route": "smtp",
        "rows": 4 * BATCH,
        "limit": BATCH,
    }
    scans = _explain(deep_queue, sql, params)
    assert scans
    through = sum(rows for _, table, rows in scans if table == "recipients")
    # The picked rows, their messages' rows by primary key, the rows updated, and the
    # queue's index entries of the rows drained before (not yet vacuumed): a few
    # hundred.  The whole queue of the transport is thousands.
    assert through < QUEUED // 3, scans


async def test_the_claimed_messages_are_read_through_their_keys(deep_queue: str) -> None:
    with psycopg.connect(deep_queue) as conn:
        ids = [
            str(r[0])
            for r in conn.execute(
                "SELECT message_id FROM recipients WHERE state = 'queued' ORDER BY seq LIMIT %s",
                (BATCH,),
            )
        ]
    scans = _explain(
        deep_queue,
        q.SELECT_MESSAGES_WITH_CONTENT,
        {"ids": ids, "prefetch": 256 * 1024},
    )
    assert ("Seq Scan", "blob_chunks") not in {(kind, table) for kind, table, _ in scans}, scans
    assert sum(rows for _, table, rows in scans if table == "blob_chunks") == BATCH, scans


async def test_a_submission_drops_its_unused_content_by_key(deep_queue: str) -> None:
    # As after an INSERT_SUBMISSION in the same session: a content row just made
    # (the sequence's current value), and the message id of a stored message that
    # points to another content row, so the statement deletes it.
    with psycopg.connect(deep_queue) as conn:
        row = conn.execute("SELECT id FROM messages LIMIT 1").fetchone()
    assert row is not None
    scans = _explain(
        deep_queue,
        q.DROP_UNUSED_CONTENT,
        {"id": str(row[0])},
        before="INSERT INTO blobs (size, chunks) VALUES (0, 0)",
    )
    assert scans
    assert ("Seq Scan", "blobs") not in {(kind, table) for kind, table, _ in scans}, scans
    assert sum(rows for _, table, rows in scans if table == "blobs") <= 1, scans


WAITING = 20_000


@pytest.fixture
def waiting_queue(pg_dsn: str) -> str:
    """``WAITING`` recipients of ``smtp``, each waiting an hour for its retry, nothing
    ready; made by SQL (the rows a store would hold), analyzed."""
    now = time.time()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO blobs (size, chunks) SELECT 1, 0 FROM generate_series(1, %s)",
            (WAITING,),
        )
        conn.execute(
            "INSERT INTO messages (id, fingerprint, sender, priority, submitted_at, send_at, "
            "expires_at, notify, is_report, envelope_id, size, subject, held, blob_id) "
            "SELECT 'w' || id, '\\x00', NULL, 0, %s, %s, %s, 0, 0, NULL, 1, '', 0, id "
            "FROM blobs",
            (now, now, now + 86400),
        )
        conn.execute(
            "INSERT INTO recipients (message_id, idx, address, state, route, updated_at, "
            "priority, send_at, ready_at, expires_at) SELECT id, 0, 'SMTP:r@example.org', "
            "'queued', 'smtp', %s, priority, %s, %s, %s FROM messages",
            (now, now, now + 3600, now + 86400),
        )
        conn.execute("ANALYZE")
    return pg_dsn


def test_an_empty_claim_does_not_read_the_recipients_waiting_for_a_retry(
    waiting_queue: str,
) -> None:
    now = time.time()
    params = {"owner": "b", "until": now + 60, "now": now, "route": "smtp", "rows": 32, "limit": 8}
    # The old claim: 109 buffers here (the index's whole range for the transport).
    assert _buffers(waiting_queue, q.CLAIM_TAKE_READY, params) < 40


def test_the_next_ready_time_reads_one_row_a_priority(waiting_queue: str) -> None:
    # min(ready_at) over the transport: 409 buffers here (every row).
    assert _buffers(waiting_queue, q.NEXT_READY, ("smtp",)) < 40
    with psycopg.connect(waiting_queue) as conn:
        (t,) = conn.execute(q.NEXT_READY, ("smtp",)).fetchone() or (None,)
        (expected,) = conn.execute(
            "SELECT min(ready_at) FROM recipients WHERE state = 'queued' AND route = 'smtp'"
        ).fetchone() or (None,)
    assert t == expected and t is not None
