"""SQLite store hot paths: the claim brings a small message's content along (one
store round trip less per message; a large one is left to ``read_content``), and
submissions and other writes that wait together share one commit."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate
from spoolbox.store.operations import Kind
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.store.sqlite.transactions import PREFETCH_LIMIT

T0 = 1000.0


def _message(mid: str, body: bytes) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse("X:bob"),),
        content=b"Subject: " + mid.encode() + b"\r\n\r\n" + body,
        id=mid,
    )


async def test_claim_carries_small_content_and_leaves_large_content(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "spool.db")
    await store.open()
    try:
        small = _message("small", b"hello\r\n" * 10)
        large = _message("large", b"x" * (PREFETCH_LIMIT + 1))
        for m in (small, large):
            await store.submit(m, now=T0, lifetime=3600, routes=["x"])
        jobs = await store.claim("x", owner="n", now=T0 + 1, lease=60, limit=8)
        by_id = {j.message.id: j for j in jobs}
        assert set(by_id) == {"small", "large"}
        assert by_id["small"].content == small.content
        assert by_id["small"].content == await store.read_content("small")
        assert by_id["large"].content is None
        assert await store.read_content("large") == large.content
    finally:
        await store.close()


async def test_submits_and_settles_waiting_together_share_one_commit(tmp_path: Path) -> None:
    """The relay case: new submissions and the settles of delivered messages arrive
    together; they go into one transaction (one fsync), not one each."""
    async with SQLiteStore(tmp_path / "mixed.db") as store:
        for i in range(10):
            await store.submit(_message(f"old{i}", b"x\r\n"), now=T0, lifetime=3600, routes=["x"])
        jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=10)
        # Hold the store thread in a write until everything below is waiting for it.
        # (No public call holds the store's thread still: the test uses _send.)
        gate, entered = threading.Event(), threading.Event()

        def hold(conn: object) -> bool:
            entered.set()
            return gate.wait(10)

        blocker = asyncio.ensure_future(store._send("test gate", hold, Kind.WRITE))
        assert await asyncio.to_thread(entered.wait, 10)
        before = store.statistics()
        settles = [
            asyncio.ensure_future(
                store.settle(
                    j.message.id, [RecipientUpdate(0, RecipientState.DELIVERED)], owner="n", now=T0
                )
            )
            for j in jobs
        ]
        submits = [
            asyncio.ensure_future(
                store.submit(_message(f"new{i}", b"y\r\n"), now=T0, lifetime=3600, routes=["x"])
            )
            for i in range(10)
        ]
        for _ in range(5):  # each call's first step queues its work (no clock involved)
            await asyncio.sleep(0)
        # Everything is queued behind the gate: ten settles and the submissions' signal.
        assert store.statistics()["pending_jobs"] == 11
        gate.set()
        await asyncio.gather(blocker, *settles, *submits)
        after = store.statistics()
        assert after["submits"] - before["submits"] == 10  # type: ignore[operator]
        # The gate's own commit, then one for the 10 settles and 10 submissions together
        # (they used to take one commit for the settles and one for the submissions).
        assert after["commits"] - before["commits"] == 2  # type: ignore[operator]
        counts = await store.counts()
        assert counts[RecipientState.DELIVERED] == 10
        assert counts[RecipientState.QUEUED] == 10
