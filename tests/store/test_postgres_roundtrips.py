"""What the PostgreSQL store sends per operation: its counters (``statistics()``:
transactions, statements, round trips) and the statements each operation is made
of.  These counts are the design (one statement per submit, two per claim, no
``SET LOCAL``, no savepoints in a group that does not fail), so they are asserted."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlite_helpers import T0, new_message

from spoolbox.model import Address, MessageInfo, MessageState, NewMessage, RecipientState
from spoolbox.store.base import ClaimedJob, RecipientUpdate, StoreError, UnknownMessage
from spoolbox.store.postgres import PostgresStore

_R = RecipientState
_KEYS = ("transactions", "statements", "round_trips")


class _Meter:
    """The store's counters since the last call."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._last = self._now()

    def _now(self) -> tuple[int, ...]:
        stats = self._store.statistics()
        return tuple(int(stats[k]) for k in _KEYS)  # type: ignore[call-overload]

    def __call__(self) -> tuple[int, ...]:
        now = self._now()
        delta = tuple(a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        return delta


async def _four_claimed(store: PostgresStore) -> list[ClaimedJob]:
    """Four messages of one recipient each, submitted and claimed by node ``n``."""
    for i in range(4):
        await store.submit(new_message(i), now=T0, lifetime=60, routes=["x"])
    return await store.claim("x", owner="n", now=T0, lease=60, limit=4)


def _delivered(job_recipients: int) -> list[RecipientUpdate]:
    return [RecipientUpdate(i, _R.DELIVERED, status="2.0.0") for i in range(job_recipients)]


async def test_a_submit_is_two_statements_and_one_wait(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        meter = _Meter(store)
        await store.submit(new_message(1, "X:a", "X:b", size=300_000), now=T0, lifetime=60)
        # The submission (content in 2 chunks, message, 2 recipients, wake-up) and the
        # drop of its content had the id been taken: an implicit transaction committed
        # at the pipeline's sync, one wait
        assert meter() == (1, 2, 1)
        assert [str(r.address) for r in await store.recipients("m0001")] == ["X:a", "X:b"]
        assert await store.read_content("m0001") == new_message(1, size=300_000).content


async def test_a_claim_is_two_statements_and_two_waits(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        for i in range(3):
            await store.submit(new_message(i, "X:a", "X:b"), now=T0, lifetime=60, routes=["x"] * 2)
        meter = _Meter(store)
        jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=2)
        # Pick and take (one wait), the messages with their contents (the second, the
        # pipeline's sync, which commits them: no BEGIN, no COMMIT; read after it)
        assert meter() == (1, 2, 2)
        assert [j.message.id for j in jobs] == ["m0000", "m0001"]
        assert [len(j.recipients) for j in jobs] == [2, 2]
        assert jobs[0].content == new_message(0).content
        assert jobs[0].claim == jobs[1].claim
        await store.settle("m0000", _delivered(2), owner="n", now=T0, claim=jobs[0].claim)
        # Pipelined, one implicit transaction: the message, its recipients (one round
        # trip), the two recipients' updates in one statement (the second, the sync)
        assert meter() == (1, 3, 2)


async def test_a_group_of_settles_waits_twice_and_has_no_savepoints_unless_one_fails(
    pg_dsn: str,
) -> None:
    async with PostgresStore(pg_dsn) as store:
        jobs = await _four_claimed(store)
        meter = _Meter(store)
        await asyncio.gather(
            *(
                store.settle(j.message.id, _delivered(1), owner="n", now=T0, claim=j.claim)
                for j in jobs[:2]
            )
        )
        # One pipelined implicit transaction: the messages, the recipients, the
        # updates (one statement); two round trips however many settles
        assert meter() == (1, 2 + 1, 2)
        results = await asyncio.gather(
            *(
                store.settle(j.message.id, _delivered(1), owner=o, now=T0, claim=j.claim)
                for j, o in zip(jobs[2:], ["n", "other"], strict=True)
            ),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException)
        assert isinstance(results[1], StoreError)
        # Pipelined, given up after the reads (the lease is someone else's: two round
        # trips; the implicit transaction wrote nothing), then again with a savepoint
        # each (the first's 3 statements; the second's 2 reads, rolled back to:
        # ROLLBACK TO and RELEASE).
        transactions, _, round_trips = meter()
        assert transactions == 2
        assert round_trips == 2 + (2 + (2 + 3) + (3 + 2))
        counts = await store.counts()
        assert counts[_R.DELIVERED] == 3
        assert counts[_R.ACTIVE] == 1


async def test_settles_that_finish_messages_kept_for_no_time_delete_them_in_one_statement(
    pg_dsn: str,
) -> None:
    async with PostgresStore(pg_dsn) as store:
        jobs = await _four_claimed(store)
        meter = _Meter(store)
        sent = frozenset({MessageState.SENT})
        await asyncio.gather(
            *(
                store.settle(
                    j.message.id,
                    _delivered(1),
                    owner="n",
                    now=T0,
                    claim=j.claim,
                    drop_finished=sent,
                )
                for j in jobs[:3]
            )
        )
        # The reads, then one delete of the three messages: nothing of their
        # recipients written first
        assert meter() == (1, 2 + 1, 2)
        for j in jobs[:3]:
            with pytest.raises(UnknownMessage):
                await store.get_message(j.message.id)
        last = jobs[3]
        meter()
        await asyncio.gather(
            store.settle(
                last.message.id,
                [RecipientUpdate(0, _R.QUEUED, status="4.4.1", retry_at=T0 + 600)],
                owner="n",
                now=T0,
                claim=last.claim,
                drop_finished=sent,
            )
        )
        # Not finished: its recipient written (the reads, the update), nothing deleted
        assert meter() == (1, 2 + 1, 2)
        [r] = await store.recipients(last.message.id)
        assert (r.state, r.retry_at) == (_R.QUEUED, T0 + 600)
        counts = await store.counts()
        assert {s: n for s, n in counts.items() if n} == {_R.QUEUED: 1}


async def test_a_settle_with_a_report_that_finishes_its_message_deletes_it_alone(
    pg_dsn: str,
) -> None:
    async with PostgresStore(pg_dsn) as store:
        for i in (1, 2):
            await store.submit(new_message(i, "X:a", "X:b"), now=T0, lifetime=60, routes=["x"] * 2)
        jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=2)
        updates = [RecipientUpdate(0, _R.DELIVERED), RecipientUpdate(1, _R.FAILED, status="5.1.1")]
        finished = frozenset({MessageState.SENT, MessageState.FAILED})
        meter = _Meter(store)
        statements = []
        for job, drop in zip(jobs, [frozenset(), finished], strict=True):
            report = NewMessage(
                sender=Address.parse("X:postmaster"),
                recipients=(Address.parse("X:sender"),),
                content=f"Subject: report on {job.message.id}\r\n\r\nfailed\r\n".encode(),
            )
            # A settle with reports goes alone (its own transaction)
            await store.settle(
                job.message.id,
                updates,
                owner="n",
                now=T0,
                claim=job.claim,
                reports=[report],
                drop_finished=drop,
            )
            statements.append(meter()[1])
        # The same settle, once kept and once dropped: the two recipients' updates
        # are not sent when their message is deleted, the delete is one statement
        assert statements[1] == statements[0] - 2 + 1
        with pytest.raises(UnknownMessage):
            await store.get_message("m0002")
        assert [r.state for r in await store.recipients("m0001")] == [_R.DELIVERED, _R.FAILED]
        # Two reports queued, the kept message's two recipients, nothing of the other
        counts = await store.counts()
        assert {s: n for s, n in counts.items() if n} == {
            _R.QUEUED: 2,
            _R.DELIVERED: 1,
            _R.FAILED: 1,
        }


async def test_a_read_says_its_isolation_in_its_begin(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        await store.submit(new_message(1), now=T0, lifetime=60)
        meter = _Meter(store)
        assert (await store.get_message("m0001")).id == "m0001"
        assert meter() == (1, 3, 3)  # BEGIN ... READ ONLY, the message, COMMIT


@pytest.mark.parametrize("routes", [None, ["x", None]])
async def test_a_submission_wakes_the_nodes_of_its_routes(
    pg_dsn: str, routes: list[str | None] | None
) -> None:
    async with PostgresStore(pg_dsn) as store, PostgresStore(pg_dsn) as other:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await other.listen(heard.put_nowait)
        await store.submit(new_message(1, "X:a", "X:b"), now=T0, lifetime=60, routes=routes)
        got = {await asyncio.wait_for(heard.get(), 30)}
        expected = {"route"} if routes is None else {"x", "route"}
        while len(got) < len(expected):
            got.add(await asyncio.wait_for(heard.get(), 30))
        assert got == expected


async def test_submits_that_arrive_together_wait_once_and_fail_alone(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        meter = _Meter(store)
        await asyncio.gather(
            *(store.submit(new_message(i), now=T0, lifetime=60, routes=["x"]) for i in range(3))
        )
        # One pipelined implicit transaction: two statements each, one wait.
        assert meter() == (1, 2 * 3, 1)
        assert [m.info.id for m in await store.list_messages(now=T0)] == ["m0000", "m0001", "m0002"]
        # The same submission again is recognised (its fingerprint); a different
        # message under a taken id is refused, and only its caller fails.
        impostor = NewMessage(
            sender=None, recipients=(Address.parse("X:eve"),), content=b"other\r\n", id="m0001"
        )
        results = await asyncio.gather(
            store.submit(new_message(0), now=T0, lifetime=60, routes=["x"]),
            store.submit(impostor, now=T0, lifetime=60, routes=["x"]),
            store.submit(new_message(3), now=T0, lifetime=60, routes=["x"]),
            return_exceptions=True,
        )
        assert isinstance(results[0], MessageInfo) and results[0].id == "m0000"
        assert isinstance(results[1], StoreError)
        assert "already used by a different message" in str(results[1])
        assert isinstance(results[2], MessageInfo) and results[2].id == "m0003"
        ids = [m.info.id for m in await store.list_messages(now=T0)]
        assert ids == ["m0000", "m0001", "m0002", "m0003"]
        assert [str(r.address) for r in await store.recipients("m0001")] == ["X:bob"]
        assert (await store.counts())[_R.QUEUED] == 4


async def test_the_same_submission_again_reads_the_stored_one_in_a_round_trip_counted(
    pg_dsn: str,
) -> None:
    async with PostgresStore(pg_dsn) as store:
        first = await store.submit(new_message(0), now=T0, lifetime=60, routes=["x"])
        meter = _Meter(store)
        again = await store.submit(new_message(0), now=T0, lifetime=60, routes=["x"])
        assert again == first
        # The submission (nothing inserted) and the drop of its content row, committed
        # at the sync (one wait); then, its id taken, the stored message read to
        # compare fingerprints: a statement after the commit, a wait of its own.
        assert meter() == (1, 2 + 1, 1 + 1)


async def test_submit_many_waits_twice_for_any_number_and_is_all_or_nothing(
    pg_dsn: str,
) -> None:
    async with PostgresStore(pg_dsn) as store:
        meter = _Meter(store)
        lot = [new_message(i) for i in range(50)]
        infos = await store.submit_many(lot, now=T0, lifetime=60, routes=[["x"]] * 50)
        assert [i.id for i in infos] == [m.id for m in lot]
        assert meter() == (1, 2 + 50, 2)
        assert (await store.counts())[_R.QUEUED] == 50
        impostor = NewMessage(
            sender=None, recipients=(Address.parse("X:eve"),), content=b"other\r\n", id="m0007"
        )
        with pytest.raises(StoreError, match="m0007"):
            await store.submit_many(
                [new_message(60), impostor], now=T0, lifetime=60, routes=[["x"], ["x"]]
            )
        assert (await store.counts())[_R.QUEUED] == 50
        assert "m0060" not in {m.info.id for m in await store.list_messages(now=T0, limit=100)}


async def test_a_hand_off_is_one_transaction_of_one_wait(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        meter = _Meter(store)
        info, job = await store.submit_claiming(
            new_message(1, "X:a", "Y:b"),
            now=T0,
            lifetime=60,
            routes=["x", "y"],
            transport="x",
            owner="n",
            lease=60,
        )
        # The submission, its content's drop had the id been taken, the claim of its
        # recipients for x, committed at the sync
        assert meter() == (1, 3, 1)
        assert job is not None and [r.index for r in job.recipients] == [0]
        assert job.content == new_message(1).content
        states = [r.state for r in await store.recipients(info.id)]
        assert states == [_R.ACTIVE, _R.QUEUED]


async def test_a_hand_off_under_a_taken_id_claims_nothing_of_the_other_message(
    pg_dsn: str,
) -> None:
    """The submission commits before its answers are read: a different message that
    had the id first is neither claimed by the hand-off nor left with a second content
    row; the same submission again is recognised and handed off."""
    async with PostgresStore(pg_dsn) as store:
        await store.submit(new_message(1, "X:a"), now=T0, lifetime=60, routes=["x"])
        impostor = NewMessage(
            sender=None, recipients=(Address.parse("X:eve"),), content=b"other\r\n", id="m0001"
        )
        handoff = {"transport": "x", "owner": "n", "lease": 60.0}
        with pytest.raises(StoreError, match="already used by a different message"):
            await store.submit_claiming(impostor, now=T0, lifetime=60, routes=["x"], **handoff)
        assert [r.state for r in await store.recipients("m0001")] == [_R.QUEUED]
        info, job = await store.submit_claiming(
            new_message(1, "X:a"), now=T0, lifetime=60, routes=["x"], **handoff
        )
        assert info.id == "m0001" and job is not None
        assert [r.state for r in await store.recipients("m0001")] == [_R.ACTIVE]
        assert job.content == new_message(1, "X:a").content
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM messages)")
        assert row.fetchone() == (1, 1)  # no content row left by the two refused inserts


async def _finished(store: PostgresStore, n: int) -> list[str]:
    """``n`` messages of one recipient delivered at T0 + 1 (submitted together)."""
    infos = await store.submit_many(
        [new_message(i) for i in range(n)], now=T0, lifetime=3600, routes=[["x"]] * n
    )
    jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=n)
    assert len(jobs) == n
    for job in jobs:
        await store.settle(job.message.id, _delivered(1), owner="n", claim=job.claim, now=T0 + 1)
    return [i.id for i in infos]


async def test_a_purge_batch_is_a_few_statements_whatever_its_size(pg_dsn: str) -> None:
    """Finding, locking, reading again and deleting 300 finished messages: six
    statements in all (three a message before, 0.7 ms a message purged)."""
    async with PostgresStore(pg_dsn) as store:
        ids = await _finished(store, 300)
        meter = _Meter(store)
        gone = await store.purge(finished_before={MessageState.SENT: T0 + 2}, limit=500)
        assert sorted(gone) == sorted(ids)
        transactions, statements, _ = meter()
        # BEGIN, find the candidates, lock them, read them again, delete them, COMMIT
        assert (transactions, statements) == (1, 6)
        assert await store.purge(finished_before={MessageState.SENT: T0 + 2}, limit=500) == []
        assert sum((await store.counts()).values()) == 0


async def test_two_nodes_purging_together_delete_each_message_once(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as one, PostgresStore(pg_dsn) as two:
        ids = await _finished(one, 1200)
        cutoff = {MessageState.SENT: T0 + 2}

        async def drain(store: PostgresStore) -> list[str]:
            out: list[str] = []
            while gone := await store.purge(finished_before=cutoff, limit=100):
                out.extend(gone)
            return out

        first, second = await asyncio.gather(drain(one), drain(two))
        assert sorted(first + second) == sorted(ids)  # each once, none left behind
        assert not set(first) & set(second)
        assert sum((await one.counts()).values()) == 0
