"""A process that submits, claims and settles on a SQLite store with ``settle(...,
drop_finished={SENT})``, for ``tests/crash/test_crash_drop.py``, which SIGKILLs it.

Run as ``python tests/crash/drop_worker.py --db DB --start S --count N``: for each
message from ``S`` on not yet in the store (ids ``m00000`` ...; a message an earlier
run committed but was killed before acknowledging is there), submit it (two
recipients routed to ``x``), print ``accepted <id>``, then claim the oldest ready
message and settle every recipient DELIVERED, dropping it, and print ``settled
<id>`` once the settle returned.  Then it settles what is left and exits 0.  Every
run first releases the leases an earlier (killed) run left under the node name
``w``.

``--crash-in-drop N`` kills the process itself (SIGKILL) at the N-th message it
drops, inside the settle transaction, after the recipients and the message row were
deleted and before the content was: the half-deleted window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import time

from spoolbox import Address, MessageState, NewMessage, RecipientState, SQLiteStore
from spoolbox.store import RecipientUpdate
from spoolbox.store.sqlite import transactions

OWNER = "w"
DROP = frozenset({MessageState.SENT})


def message_id(i: int) -> str:
    return f"m{i:05d}"


def message(i: int) -> NewMessage:
    body = f"message {i}\r\n".encode() * 40
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse("X:a"), Address.parse("X:b")),
        content=b"From: alice@example.org\r\nSubject: drop\r\n\r\n" + body,
        id=message_id(i),
    )


def crash_in_drop(n: int) -> None:
    """SIGKILL inside the n-th drop, between the message's rows and its content."""
    original = transactions.delete_message
    calls = 0

    def delete_message(conn: sqlite3.Connection, mid: str, blob_id: int | None) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            conn.execute("DELETE FROM recipients WHERE message_id = ?", (mid,))
            conn.execute("DELETE FROM messages WHERE id = ?", (mid,))
            os.kill(os.getpid(), signal.SIGKILL)
        original(conn, mid, blob_id)

    transactions.delete_message = delete_message


async def settle_one(store: SQLiteStore) -> bool:
    jobs = await store.claim("x", owner=OWNER, now=time.time(), lease=600.0, limit=1)
    for job in jobs:
        await store.settle(
            job.message.id,
            [RecipientUpdate(r.index, RecipientState.DELIVERED, "2.0.0") for r in job.recipients],
            owner=OWNER,
            now=time.time(),
            claim=job.claim,
            drop_finished=DROP,
        )
        print(f"settled {job.message.id}", flush=True)
    return bool(jobs)


async def main(db: str, start: int, count: int) -> None:
    store = SQLiteStore(db)
    await store.open()
    try:
        await store.release_owner(OWNER)
        for i in range(start, count):
            try:
                await store.get_message(message_id(i))
                continue  # in the store from an earlier run
            except KeyError:
                pass
            await store.submit(message(i), now=time.time(), lifetime=3600.0, routes=["x", "x"])
            print(f"accepted {message_id(i)}", flush=True)
            await settle_one(store)
        while await settle_one(store):
            pass
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--crash-in-drop", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.crash_in_drop:
        crash_in_drop(arguments.crash_in_drop)
    asyncio.run(main(arguments.db, arguments.start, arguments.count))
