"""SQLite store hot paths: the claim brings a small message's content along (one
store round trip less per message; a large one is left to ``read_content``), and
submissions and other writes that wait together share one commit."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlite_helpers import later_message

from spoolbox.model import Address, MessageInfo, NewMessage, RecipientState
from spoolbox.store import ClaimedJob, LeaseLost, RecipientUpdate, StoreError, UnknownMessage
from spoolbox.store.operations import Kind
from spoolbox.store.sqlite import SQLiteStore, schema
from spoolbox.store.sqlite import transactions as tx
from spoolbox.store.sqlite.rows import (
    RECIPIENT_KEYS,
    recipient_from_row,
    recipient_params,
    recipient_values,
)
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
                    j.message.id,
                    [RecipientUpdate(0, RecipientState.DELIVERED)],
                    owner="n",
                    now=T0,
                    claim=j.claim,
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
        # Everything is queued behind the gate: the ten settles (made in one turn of the
        # loop: one group) and the submissions' signal.
        assert store.statistics()["pending_jobs"] == 2
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


async def test_settles_of_one_turn_of_the_loop_share_one_commit(tmp_path: Path) -> None:
    """Group commit of settles: the lanes that finish in one turn of the event loop
    settle in one transaction, even when the store's thread is idle (before, the
    first settle went alone and the rest queued behind it)."""
    async with SQLiteStore(tmp_path / "settles.db") as store:
        for i in range(10):
            await store.submit(_message(f"m{i}", b"x\r\n"), now=T0, lifetime=3600, routes=["x"])
        jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=10)
        assert len(jobs) == 10
        before = store.statistics()

        def settle(job: ClaimedJob) -> asyncio.Future[MessageInfo]:
            update = [RecipientUpdate(0, RecipientState.DELIVERED)]
            return asyncio.ensure_future(
                store.settle(job.message.id, update, owner="n", now=T0, claim=job.claim)
            )

        async def busy_turn() -> None:
            # Keeps this turn of the loop going while the store's thread is free to
            # pick up what was queued so far (the first settle did that, before).
            time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is the point here

        # Every task's first step runs in the same turn of the loop, in this order.
        first = settle(jobs[0])
        busy = asyncio.ensure_future(busy_turn())
        rest = [settle(j) for j in jobs[1:]]
        infos = await asyncio.gather(first, *rest)
        await busy
        after = store.statistics()
        assert [i.id for i in infos] == [j.message.id for j in jobs]
        assert after["commits"] - before["commits"] == 1  # type: ignore[operator]
        assert (await store.counts())[RecipientState.DELIVERED] == 10


async def test_a_refused_settle_in_a_group_fails_only_its_caller(tmp_path: Path) -> None:
    """Each settle of a group is in a savepoint of its own: one whose lease is not its
    caller's is refused (LeaseLost) and undone alone; the others commit."""
    async with SQLiteStore(tmp_path / "refused.db") as store:
        for i in range(3):
            await store.submit(_message(f"m{i}", b"x\r\n"), now=T0, lifetime=3600, routes=["x"])
        jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=3)
        owners = ["n", "someone-else", "n"]
        outcomes = await asyncio.gather(
            *(
                store.settle(
                    j.message.id,
                    [RecipientUpdate(0, RecipientState.DELIVERED)],
                    owner=o,
                    now=T0,
                    claim=j.claim,
                )
                for j, o in zip(jobs, owners, strict=True)
            ),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], LeaseLost)
        assert not isinstance(outcomes[0], BaseException)
        assert not isinstance(outcomes[2], BaseException)
        counts = await store.counts()
        assert counts[RecipientState.DELIVERED] == 2
        assert counts[RecipientState.ACTIVE] == 1
        assert store.statistics()["rollbacks"] == 0


async def test_submit_claiming_claims_in_the_same_commit_what_is_ready(tmp_path: Path) -> None:
    """The hand-off: the message and the claim of its ready recipients routed to the
    transport, in one transaction; nothing to claim (routed elsewhere, or to be sent
    later) gives no job and leaves the message queued."""
    async with SQLiteStore(tmp_path / "handoff.db") as store:
        before = store.statistics()["commits"]
        info, job = await store.submit_claiming(
            _message("now", b"x\r\n"),
            now=T0,
            lifetime=3600,
            routes=["x"],
            transport="x",
            owner="n",
            lease=60,
        )
        assert store.statistics()["commits"] == before + 1  # type: ignore[operator]
        assert job is not None
        assert (job.message.id, job.owner, job.lease_until) == ("now", "n", T0 + 60)
        assert [r.state for r in job.recipients] == [RecipientState.ACTIVE]
        assert job.content == await store.read_content("now")
        [stored] = await store.recipients("now")
        assert (stored.state, stored.route) == (RecipientState.ACTIVE, "x")
        later = later_message(T0 + 600)
        for msg, route in ((_message("elsewhere", b"y\r\n"), "y"), (later, "x")):
            got, none = await store.submit_claiming(
                msg, now=T0, lifetime=3600, routes=[route], transport="x", owner="n", lease=60
            )
            assert none is None
            [r] = await store.recipients(got.id)
            assert r.state is RecipientState.QUEUED
        assert info.id == "now"


def _raw_recipients(path: Path, message_id: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(
            "SELECT * FROM recipients WHERE message_id = ? ORDER BY idx", (message_id,)
        ).fetchall()
    finally:
        conn.close()


async def test_a_claim_writes_the_lease_and_leaves_the_rest_of_the_row(tmp_path: Path) -> None:
    """A claim writes only the state, the time, the lease and the claim's token (one
    narrow UPDATE); every other column of a recipient that was tried before (its
    attempts, status, retry time, refusals, delay warning) stays as it was, and the
    job's records are the rows as stored."""
    path = tmp_path / "claim.db"
    message = NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse("X:bob"), Address.parse("X:carol")),
        content=b"Subject: t\r\n\r\nx\r\n",
        id="tried",
    )
    async with SQLiteStore(path) as store:
        await store.submit(message, now=T0, lifetime=3600, routes=["x", "x"])
        [first] = await store.claim("x", owner="n", now=T0 + 1, lease=60)
        deferred = RecipientUpdate(
            0,
            RecipientState.QUEUED,
            status="4.2.0",
            diagnostic="451 4.2.0 try later",
            retry_at=T0 + 100,
            refused_by=("y",),
            count_attempt=True,
            delay_warned=True,
        )
        done = RecipientUpdate(1, RecipientState.DELIVERED, status="2.0.0", count_attempt=True)
        await store.settle("tried", [deferred, done], owner="n", now=T0 + 2, claim=first.claim)
        before = _raw_recipients(path, "tried")
        [again] = await store.claim("x", owner="m", now=T0 + 200, lease=60)
        after = _raw_recipients(path, "tried")
    lease_columns = {"state", "updated_at", "owner", "lease_until", "claim"}
    assert before[1] == after[1]  # delivered: not claimed again
    old, new = dict(before[0]), dict(after[0])
    assert {k: v for k, v in old.items() if k not in lease_columns} == {
        k: v for k, v in new.items() if k not in lease_columns
    }
    assert (old["attempts"], old["status"], old["retry_at"], old["delay_warned"]) == (
        1,
        "4.2.0",
        T0 + 100,
        1,
    )
    assert (new["state"], new["updated_at"], new["owner"], new["lease_until"]) == (
        "active",
        T0 + 200,
        "m",
        T0 + 260,
    )
    assert new["claim"] == again.claim > first.claim
    assert list(again.recipients) == [recipient_from_row(after[0])]


async def test_a_settle_names_a_missing_recipient_or_message(tmp_path: Path) -> None:
    """A recipient the message has not is named, an unknown message is
    UnknownMessage, and neither writes anything of the settle."""
    async with SQLiteStore(tmp_path / "missing.db") as store:
        await store.submit(_message("m", b"x\r\n"), now=T0, lifetime=3600, routes=["x"])
        [job] = await store.claim("x", owner="n", now=T0, lease=60)
        delivered = RecipientUpdate(0, RecipientState.DELIVERED)
        with pytest.raises(StoreError, match=r"m has no recipient #3"):
            await store.settle(
                "m",
                [delivered, RecipientUpdate(3, RecipientState.DELIVERED)],
                owner="n",
                now=T0,
                claim=job.claim,
            )
        with pytest.raises(UnknownMessage, match="no message with id 'gone'"):
            await store.settle("gone", [delivered], owner="n", now=T0, claim=job.claim)
        [r] = await store.recipients("m")
        assert r.state is RecipientState.ACTIVE
        info = await store.settle("m", [delivered], owner="n", now=T0, claim=job.claim)
        assert info.id == "m"
        assert info.sender == Address.parse("SMTP:alice@example.org")


def test_a_settle_of_more_recipients_than_a_statement_takes_parameters(tmp_path: Path) -> None:
    """A settle of 1,200 recipients goes through on a SQLite built to take at most 999
    parameters a statement (no statement of it names every recipient)."""
    conn = schema.connect(str(tmp_path / "many.db"), synchronous="NORMAL", busy_timeout=5)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        n = 1200
        message = NewMessage(
            sender=Address.parse("SMTP:alice@example.org"),
            recipients=tuple(Address.parse(f"X:r{i}") for i in range(n)),
            content=b"Subject: many\r\n\r\nx\r\n",
            id="many",
        )
        conn.execute("BEGIN IMMEDIATE")
        tx.submit(conn, message, now=T0, lifetime=3600, routes=["x"] * n)
        [job] = tx.claim(conn, "x", owner="n", now=T0, lease=60)
        done = [RecipientUpdate(r.index, RecipientState.DELIVERED) for r in job.recipients]
        info = tx.settle(conn, "many", done, owner="n", now=T0 + 1, claim=job.claim)
        conn.execute("COMMIT")
        assert info.id == "many"
        states = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state")
        assert dict(states.fetchall()) == {"delivered": n}
    finally:
        conn.close()


async def test_a_settle_writes_each_column_of_the_recipient_where_it_belongs(
    tmp_path: Path,
) -> None:
    """The settle's UPDATE takes its values by number (``?1`` to ``?15``): a deferral
    with every column set differently lands each value in its own column, ``ready_at``
    follows ``retry_at``, the lease is dropped and the claim's token kept; the names
    the PostgreSQL store binds are the same values."""
    path = tmp_path / "columns.db"
    async with SQLiteStore(path) as store:
        await store.submit(_message("cols", b"x\r\n"), now=T0, lifetime=3600, routes=["x"])
        [job] = await store.claim("x", owner="n", now=T0 + 1, lease=60)
        deferred = RecipientUpdate(
            0,
            RecipientState.QUEUED,
            status="4.7.1",
            diagnostic="smtp; 451 4.7.1 greylisted",
            retry_at=T0 + 300,
            refused_by=("y", "z"),
            count_attempt=True,
            delay_warned=True,
        )
        await store.settle("cols", [deferred], owner="n", now=T0 + 2, claim=job.claim)
        [record] = await store.recipients("cols")
    [row] = _raw_recipients(path, "cols")
    stored = dict(row)
    expected = {
        "state": "queued",
        "route": "x",
        "refused_by": '["y", "z"]',
        "attempts": 1,
        "retry_at": T0 + 300,
        "ready_at": T0 + 300,
        "status": "4.7.1",
        "diagnostic": "smtp; 451 4.7.1 greylisted",
        "updated_at": T0 + 2,
        "first_failed_at": T0 + 2,
        "delay_warned": 1,
        "owner": None,
        "lease_until": None,
        "claim": job.claim,
    }
    assert {k: stored[k] for k in expected} == expected
    for owner, lease_until, claim in ((None, None, None), ("n", T0 + 9, 7)):
        active = dataclasses.replace(record, state=RecipientState.ACTIVE)
        for r in (record, active):
            named = recipient_params(r, owner=owner, lease_until=lease_until, claim=claim)
            numbered = recipient_values(r, owner=owner, lease_until=lease_until, claim=claim)
            assert named == dict(zip(RECIPIENT_KEYS, numbered, strict=True))
            assert named["state"] == r.state.value and named["claim"] == claim
            assert named["owner"] == (owner if r.state is RecipientState.ACTIVE else None)
