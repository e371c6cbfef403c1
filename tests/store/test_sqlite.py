"""What the SQLite store promises beyond the protocol: durability, group commit, one
thread off the event loop, safe claims across processes (the file itself: see
test_sqlite_opening.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import NewMessage, RecipientState
from spoolbox.store.base import InboundMessage, RecipientUpdate, StoreError
from spoolbox.store.operations import Kind
from spoolbox.store.sqlite import SQLiteStore, schema


@pytest.fixture
async def store(tmp_path: Path) -> object:
    s = SQLiteStore(tmp_path / "spool.db")
    await s.open()
    yield s
    await s.close()


# -- group commit and durability ---------------------------------------------------------


async def test_concurrent_submits_share_commits(store: SQLiteStore) -> None:
    before = store.statistics()
    infos = await asyncio.gather(
        *(store.submit(new_message(i), now=T0, lifetime=3600) for i in range(50))
    )
    after = store.statistics()
    assert sorted(i.id for i in infos) == [f"m{i:04d}" for i in range(50)]
    assert after["submits"] == before["submits"] + 50  # type: ignore[operator]
    commits = after["commits"] - before["commits"]  # type: ignore[operator]
    assert 1 <= commits <= 5
    assert (await store.counts())[RecipientState.QUEUED] == 50


async def test_callers_cancelled_while_their_batch_runs_do_not_spoil_the_others(
    store: SQLiteStore,
) -> None:
    # The outcomes of one group reach the loop together; those of callers that gave
    # up meanwhile are dropped there, and every other caller still gets its own.
    tasks = [
        asyncio.create_task(store.submit(new_message(i), now=T0, lifetime=3600)) for i in range(40)
    ]
    await asyncio.sleep(0)  # the submissions are queued
    for t in tasks[::2]:
        t.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    assert [r.id for r in results[1::2]] == [f"m{i:04d}" for i in range(1, 40, 2)]  # type: ignore[union-attr]
    # A cancelled submission may have been committed or not; the store goes on.
    queued = (await store.counts())[RecipientState.QUEUED]
    assert 20 <= queued <= 40
    assert (await store.submit(new_message(99), now=T0, lifetime=3600)).id == "m0099"


async def test_a_job_whose_caller_gave_up_while_it_ran_is_dropped_quietly(
    store: SQLiteStore,
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    entered, gate = threading.Event(), threading.Event()

    def held(conn: sqlite3.Connection) -> int:
        entered.set()
        gate.wait(5)
        return 1

    job = asyncio.create_task(store._send("held", held, Kind.WRITE))
    await asyncio.to_thread(entered.wait, 5)  # the job is running on the store's thread
    job.cancel()
    after = asyncio.create_task(store.counts())  # queued behind it
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert (await asyncio.wait_for(after, 5))[RecipientState.QUEUED] == 0
    await asyncio.sleep(0.05)
    assert errors == []


def test_one_store_object_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "spool.db")

    async def use(i: int) -> int:
        async with s:
            await asyncio.gather(
                *(s.submit(new_message(10 * i + k), now=T0, lifetime=3600) for k in range(5))
            )
            return (await s.counts())[RecipientState.QUEUED]

    assert asyncio.run(use(0)) == 5
    assert asyncio.run(use(1)) == 10  # answered on the second loop, not the closed first


async def test_submits_arriving_during_a_commit_join_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")  # the first batch waits for this lock
            tasks = []
            for i in range(4):  # one submit per turn of the loop
                tasks.append(
                    asyncio.ensure_future(store.submit(new_message(i), now=T0, lifetime=3600))
                )
                await asyncio.sleep(0)  # a single yield to the loop, not a wait
            assert not any(t.done() for t in tasks)
            other.execute("ROLLBACK")
        await asyncio.gather(*tasks)
        stats = store.statistics()
        assert stats["submits"] == 4
        # Without group commit across turns this would be 4 commits.
        assert stats["commits"] == stats["submit_batches"]
        assert 1 <= stats["submit_batches"] <= 2  # type: ignore[operator]


async def test_a_submit_returns_after_its_batch_committed(tmp_path: Path) -> None:
    # Another connection sees only committed data: each submit is visible to it as soon
    # as that submit returns.
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as writer, SQLiteStore(path) as reader:
        pending = [writer.submit(new_message(i), now=T0, lifetime=3600) for i in range(20)]
        for done in asyncio.as_completed(pending):
            info = await done
            assert (await reader.get_message(info.id)).id == info.id


async def test_a_refused_submit_does_not_spoil_its_batch(store: SQLiteStore) -> None:
    good, other = new_message(1), new_message(2)
    clash = NewMessage(
        sender=None, recipients=good.recipients, content=b"Subject: other\r\n\r\n", id=good.id
    )
    results = await asyncio.gather(
        store.submit(good, now=T0, lifetime=3600),
        store.submit(clash, now=T0, lifetime=3600),
        store.submit(other, now=T0, lifetime=3600),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["MessageInfo", "StoreError", "MessageInfo"]
    assert "already used" in str(results[1])
    assert await store.read_content(good.id) == good.content
    assert store.statistics()["submit_batches"] == 1


async def test_close_commits_pending_submits(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    store = SQLiteStore(path)
    await store.open()
    tasks = [
        asyncio.ensure_future(store.submit(new_message(i), now=T0, lifetime=3600)) for i in range(5)
    ]
    await asyncio.sleep(0)  # one yield: the submits are queued, not yet committed
    await store.close()
    assert [(await t).id for t in tasks] == [f"m{i:04d}" for i in range(5)]
    async with SQLiteStore(path) as again:
        assert len(await again.list_messages(now=T0)) == 5


async def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    big = new_message(1, "X:a", "Y:b", size=700_000)
    async with SQLiteStore(path) as store:
        await store.submit(big, now=T0, lifetime=3600)
        await store.assign_routes([(big.id, 0, "x"), (big.id, 1, "y")])
        [job] = await store.claim("x", owner="o1", now=T0, lease=30)
        await store.settle(
            big.id,
            [RecipientUpdate(0, RecipientState.QUEUED, "4.4.1", "later", retry_at=T0 + 60)],
            owner="o1",
            now=T0 + 1,
            claim=job.claim,
        )
        await store.hold(big.id)
        entry = await store.deliver_inbound(
            InboundMessage("imap", b"Subject: in\r\n\r\nhi\r\n", remote_id="1:2"),
            profile_updates={"imap": {"uid": 2}},
        )
        before = (
            await store.list_messages(now=T0 + 2),
            await store.counts(),
            await store.list_inbox(),
        )
    async with SQLiteStore(path) as store:
        after = (
            await store.list_messages(now=T0 + 2),
            await store.counts(),
            await store.list_inbox(),
        )
        assert after == before
        assert await store.read_content(big.id) == big.content
        assert await store.read_inbox(entry.id) == b"Subject: in\r\n\r\nhi\r\n"
        assert await store.profile_get("imap") == {"uid": 2}
        assert (await store.recipients(big.id))[0].retry_at == T0 + 60
        assert job.recipients[0].index == 0


# -- threads and the event loop ---------------------------------------------------------


async def test_the_event_loop_runs_while_the_database_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
        await store.assign_routes([("m0001", 0, "x")])
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            claim = asyncio.ensure_future(store.claim("x", owner="o1", now=T0, lease=30))
            turns = 0
            for _ in range(100):
                await asyncio.sleep(0)
                turns += 1
            assert turns == 100
            assert not claim.done()  # waiting on the lock, in the store's thread
            other.execute("ROLLBACK")
        [job] = await claim
        assert job.message.id == "m0001"


async def test_a_write_waits_for_another_process_lock_in_short_pauses(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            submit = asyncio.ensure_future(store.submit(new_message(1), now=T0, lifetime=3600))
            await asyncio.sleep(0.2)
            assert not submit.done()
            other.execute("COMMIT")
            info = await submit
        assert info.id == "m0001"
        stats = store.statistics()
        # The store waited itself (SQLite's own busy handler, which sleeps 1 to 100 ms
        # between tries, would have waited without a word: no lock wait counted).
        assert stats["lock_waits"] == 1
        assert 0.15 < float(stats["lock_wait_seconds"]) < 5  # type: ignore[arg-type]
        assert float(stats["write_seconds"]) > 0  # type: ignore[arg-type]
    async with SQLiteStore(path) as again:
        assert [s.info.id for s in await again.list_messages(state=None, limit=10, now=T0)] == [
            "m0001"
        ]


async def _until_waiting_for_the_lock(store: SQLiteStore) -> None:
    for _ in range(1000):
        if store.statistics()["lock_waits"] == 1:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the store never waited for the lock")


async def test_what_arrives_while_a_commit_waits_for_the_lock_joins_it(tmp_path: Path) -> None:
    """Under contention transactions grow instead of queueing up: submissions made
    while the store waits for another process's lock share the waiting transaction."""
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")
            first = asyncio.ensure_future(store.submit(new_message(1), now=T0, lifetime=3600))
            await _until_waiting_for_the_lock(store)
            later = [
                asyncio.ensure_future(store.submit(new_message(i), now=T0, lifetime=3600))
                for i in (2, 3, 4)
            ]
            await asyncio.sleep(0.05)  # their batch signal reaches the store's thread
            other.execute("COMMIT")
            infos = await asyncio.gather(first, *later)
        assert [i.id for i in infos] == ["m0001", "m0002", "m0003", "m0004"]
        stats = store.statistics()
        assert (stats["commits"], stats["submit_batches"], stats["largest_batch"]) == (1, 1, 4)


async def test_a_waiting_progress_commit_takes_in_progress_only(tmp_path: Path) -> None:
    """A claim waiting for the lock takes in a settle that arrives meanwhile (neither
    is fsynced), but not a submission: that one is fsynced in a transaction of its own."""
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        for i in (1, 2):
            await store.submit(new_message(i), now=T0, lifetime=3600, routes=["t"])
        [job] = await store.claim("t", owner="o", now=T0, lease=60.0)
        before = store.statistics()
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")
            claim = asyncio.ensure_future(store.claim("t", owner="o", now=T0, lease=60.0))
            await _until_waiting_for_the_lock(store)
            settle = asyncio.ensure_future(
                store.settle(
                    job.message.id,
                    [RecipientUpdate(0, RecipientState.DELIVERED)],
                    owner="o",
                    now=T0 + 1,
                    claim=job.claim,
                )
            )
            submit = asyncio.ensure_future(store.submit(new_message(3), now=T0, lifetime=3600))
            await asyncio.sleep(0.05)
            other.execute("COMMIT")
            [job2], _info, info3 = await asyncio.gather(claim, settle, submit)
        assert (job.message.id, job2.message.id, info3.id) == ("m0001", "m0002", "m0003")
        after = store.statistics()
        delta = {k: after[k] - before[k] for k in ("commits", "progress_commits", "submits")}  # type: ignore[operator]
        assert delta == {"commits": 2, "progress_commits": 1, "submits": 1}
        assert after["grouped_writes"] - before["grouped_writes"] == 2  # type: ignore[operator]


async def test_a_lock_held_beyond_busy_timeout_fails_the_write_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path, busy_timeout=0.3) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match=r"submit failed.*locked"):
                await store.submit(new_message(2), now=T0, lifetime=3600)
            other.execute("ROLLBACK")
        await store.submit(new_message(3), now=T0, lifetime=3600)
        ids = [s.info.id for s in await store.list_messages(state=None, limit=10, now=T0)]
        assert sorted(ids) == ["m0001", "m0003"]
        assert store.statistics()["lock_waits"] == 1


async def test_the_thread_ends_with_close(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "spool.db")
    await store.open()
    name = f"spoolbox-sqlite {tmp_path / 'spool.db'}"
    assert [t.name for t in threading.enumerate()].count(name) == 1
    await store.close()
    assert name not in [t.name for t in threading.enumerate()]


async def test_lifecycle_errors(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "spool.db")
    with pytest.raises(StoreError, match="not open"):
        await store.counts()
    with pytest.raises(StoreError, match="not open"):
        await store.submit(new_message(1), now=T0, lifetime=3600)
    await store.open()
    with pytest.raises(StoreError, match="already open"):
        await store.open()
    await store.submit(new_message(1), now=T0, lifetime=3600)
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError, match="not open"):
        await store.get_message("m0001")
    await store.open()  # and it opens again
    assert (await store.get_message("m0001")).id == "m0001"
    await store.close()


def test_synchronous_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        SQLiteStore(tmp_path / "x.db", synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="progress_synchronous must be one of"):
        SQLiteStore(tmp_path / "x.db", progress_synchronous="LATER")


async def test_progress_is_never_committed_more_strongly_than_acceptance(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(
        tmp_path / "off.db", synchronous="OFF", progress_synchronous="FULL"
    ) as store:
        assert store.statistics()["pragmas"]["progress_synchronous"] == 0  # type: ignore[index]
    async with SQLiteStore(tmp_path / "full.db", progress_synchronous="extra") as store:
        assert store.statistics()["pragmas"]["progress_synchronous"] == 2  # type: ignore[index]


async def test_progress_commits_are_told_apart_from_acceptance(tmp_path: Path) -> None:
    """Claims, renewals, settles and lease releases commit at progress_synchronous;
    submits, holds and cancels at synchronous; a group holding both kinds commits at
    the stronger level (which fsyncs is checked with strace in test_sqlite_fsync.py)."""
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:

        def progress() -> int:
            return int(store.statistics()["progress_commits"])  # type: ignore[call-overload]

        for i in (1, 2, 3):
            await store.submit(new_message(i), now=T0, lifetime=3600, routes=["t"])
        assert progress() == 0
        [job] = await store.claim("t", owner="o", now=T0, lease=60.0)
        job = await store.renew(job, now=T0 + 1, lease=60.0)
        await store.settle(
            job.message.id,
            [RecipientUpdate(0, RecipientState.DELIVERED)],
            owner="o",
            now=T0 + 2,
            claim=job.claim,
        )
        assert progress() == 3
        await store.hold("m0002")
        await store.cancel("m0002")
        assert progress() == 3
        [job3] = await store.claim("t", owner="o", now=T0 + 3, lease=60.0)
        assert job3.message.id == "m0003" and progress() == 4
        assert await store.release_owner("o") == 1
        assert progress() == 5
        # A settle that shares its transaction with a submission is fsynced with it.
        [job3] = await store.claim("t", owner="o", now=T0 + 4, lease=60.0)
        commits, progress_before = store.statistics()["commits"], progress()
        await asyncio.gather(
            store.submit(new_message(4), now=T0 + 5, lifetime=3600, routes=["t"]),
            store.settle(
                "m0003",
                [RecipientUpdate(0, RecipientState.DELIVERED)],
                owner="o",
                now=T0 + 5,
                claim=job3.claim,
            ),
        )
        # (The submission is pending before the settle's job is queued, so the store's
        # thread always takes both into one transaction.)
        assert store.statistics()["commits"] == commits + 1  # type: ignore[operator]
        assert progress() == progress_before
    # All of it is there after a reopen (a clean close loses nothing at NORMAL).
    async with SQLiteStore(path) as again:
        states = {
            s.info.id: s.state for s in await again.list_messages(state=None, limit=10, now=T0 + 9)
        }
        assert {k: str(v) for k, v in states.items()} == {
            "m0001": "sent",
            "m0002": "cancelled",
            "m0003": "sent",
            "m0004": "queued",
        }


async def test_pragmas(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "full.db") as store:
        assert store.statistics()["pragmas"] == {
            "journal_mode": "wal",
            "synchronous": 2,
            "progress_synchronous": 1,
            "foreign_keys": 1,
            "user_version": schema.SCHEMA_VERSION,
        }
    async with SQLiteStore(tmp_path / "normal.db", synchronous="normal") as store:
        assert store.statistics()["pragmas"]["synchronous"] == 1  # type: ignore[index]
    with raw(tmp_path / "full.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID


# -- two spoolers on one file -----------------------------------------------------------


async def test_two_stores_on_one_file_never_claim_the_same_recipient(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as a, SQLiteStore(path) as b:
        for i in range(40):
            await a.submit(new_message(i, "X:one", "X:two"), now=T0, lifetime=3600)
        await a.assign_routes([(f"m{i:04d}", k, "x") for i in range(40) for k in (0, 1)])

        async def drain(store: SQLiteStore, owner: str) -> list[tuple[str, int]]:
            got: list[tuple[str, int]] = []
            while jobs := await store.claim("x", owner=owner, now=T0, lease=30, limit=3):
                got += [(r.message_id, r.index) for j in jobs for r in j.recipients]
            return got

        got_a, got_b = await asyncio.gather(drain(a, "a"), drain(b, "b"))
        claimed = got_a + got_b
        assert len(claimed) == len(set(claimed)) == 80
        assert (await b.counts())[RecipientState.ACTIVE] == 80
        assert await a.release_owner("b") == len(got_b)


async def test_profile_values_must_be_json(store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match=r"s\.k"):
        await store.profile_update("s", {"ok": 1, "k": object()})
    assert await store.profile_get("s") == {}
    with pytest.raises(StoreError, match="JSON"):
        await store.deliver_inbound(
            InboundMessage("imap", b"Subject: x\r\n\r\n"),
            profile_updates={"s": {"n": float("nan")}},
        )
    assert await store.list_inbox() == []


async def test_concurrent_writes_share_a_commit(tmp_path: Path) -> None:
    """Group commit for every write, not only submits: settles from concurrent lanes
    that wait for the store thread go into one transaction, each in its own savepoint
    (one that fails is undone alone)."""
    from spoolbox import Address, NewMessage, RecipientState
    from spoolbox.store import RecipientUpdate

    async with SQLiteStore(tmp_path / "g.db") as store:
        for i in range(40):
            await store.submit(
                NewMessage(None, (Address("X", f"r{i}"),), b"Subject: x\r\n\r\nx\r\n", id=f"g{i}"),
                now=1000.0,
                lifetime=3600.0,
                routes=["t"],
            )
        jobs = await store.claim("t", owner="o", now=1000.0, lease=60.0, limit=40)
        assert len(jobs) == 40
        before = store.statistics()["commits"]
        updates = [
            store.settle(
                j.message.id,
                [RecipientUpdate(0, RecipientState.DELIVERED)],
                owner="o",
                now=1001.0,
                claim=j.claim,
            )
            for j in jobs[:39]
        ]
        bad = store.settle(  # recipient #0 is fine, #5 does not exist: the whole settle fails
            jobs[39].message.id,
            [
                RecipientUpdate(0, RecipientState.DELIVERED),
                RecipientUpdate(5, RecipientState.FAILED),
            ],
            owner="o",
            now=1001.0,
            claim=jobs[39].claim,
        )
        results = await asyncio.gather(*updates, bad, return_exceptions=True)
        assert all(not isinstance(r, BaseException) for r in results[:39])
        assert isinstance(results[39], StoreError)
        commits = store.statistics()["commits"] - before
        assert commits < 20  # 40 writes, far fewer commits
        assert store.statistics()["grouped_writes"] > 0
        counts = await store.counts()
        assert counts[RecipientState.DELIVERED] == 39
        (last,) = await store.recipients("g39")
        assert last.state is RecipientState.ACTIVE  # its failed write left no trace
