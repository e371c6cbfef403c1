"""The hand-off on PostgreSQL (``PostgresStore.submit_claiming``, used by
``_core/handoff.py`` when a lane of this node waits for work): the message and the
claim of its ready recipients routed to the transport in one transaction, under a
claim token that fences every other claim; nothing claimable gives no job and leaves
the message queued for any node."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlite_helpers import T0, later_message, new_message

from spoolbox import AlwaysIdle, MessageState, Policy, Spooler, SpoolerConfig, TransportConfig
from spoolbox._core.handoff import SubmitClaiming
from spoolbox.model import Address, MessageInfo, NewMessage, RecipientState
from spoolbox.store.base import ClaimedJob, RecipientUpdate, StoreError
from spoolbox.store.postgres import PostgresStore
from spoolbox.testing import Script, ScriptedProvider

_R = RecipientState


async def test_submit_claiming_claims_in_the_same_transaction_what_is_ready(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store, PostgresStore(pg_dsn) as other:
        assert isinstance(store, SubmitClaiming)  # so the spooler hands off on PostgreSQL
        before = store.statistics()["transactions"]
        info, job = await store.submit_claiming(
            new_message(1, "X:a", "Y:b"),
            now=T0,
            lifetime=3600,
            routes=["x", "y"],
            transport="x",
            owner="n1",
            lease=60,
        )
        assert store.statistics()["transactions"] == before + 1  # type: ignore[operator]
        assert job is not None
        assert (job.message.id, job.owner, job.lease_until) == (info.id, "n1", T0 + 60)
        assert [(r.index, r.state) for r in job.recipients] == [(0, _R.ACTIVE)]
        assert job.content == await store.read_content(info.id)
        states = {r.index: r.state for r in await store.recipients(info.id)}
        assert states == {0: _R.ACTIVE, 1: _R.QUEUED}
        # Another node finds only what was not handed off.
        [theirs] = await other.claim("y", owner="n2", now=T0, lease=60, limit=5)
        assert [r.index for r in theirs.recipients] == [1]
        assert await other.claim("x", owner="n2", now=T0, lease=60, limit=5) == []
        # The token is the claim's: a settle with another token is refused.
        update = [RecipientUpdate(0, _R.DELIVERED, status="2.0.0")]
        try:
            await store.settle(info.id, update, owner="n1", now=T0 + 1, claim=job.claim + 1)
        except StoreError:
            pass
        else:
            raise AssertionError("a settle with a claim token the claim did not give was taken")
        await store.settle(info.id, update, owner="n1", now=T0 + 1, claim=job.claim)
        assert (await store.recipients(info.id))[0].state is _R.DELIVERED


async def test_nothing_claimable_gives_no_job_and_stays_queued(pg_dsn: str) -> None:
    later = later_message(T0 + 600)
    async with PostgresStore(pg_dsn) as store:
        for msg, route in ((new_message(2, "Y:c"), "y"), (later, "x")):
            got, none = await store.submit_claiming(
                msg, now=T0, lifetime=3600, routes=[route], transport="x", owner="n1", lease=60
            )
            assert none is None
            [r] = await store.recipients(got.id)
            assert r.state is _R.QUEUED
        [job] = await store.claim("x", owner="n1", now=T0 + 600, lease=60, limit=5)
        assert job.message.id == "later"


async def test_a_message_submitted_again_is_not_claimed_again(pg_dsn: str) -> None:
    """A retried submission of a message already claimed (the same id and content) is
    recognised, and its recipients keep the first claim (its owner settles them)."""
    async with PostgresStore(pg_dsn) as store:

        async def hand_off(owner: str) -> tuple[MessageInfo, ClaimedJob | None]:
            return await store.submit_claiming(
                new_message(3),
                now=T0,
                lifetime=3600,
                routes=["x"],
                transport="x",
                owner=owner,
                lease=60,
            )

        _, first = await hand_off("n1")
        assert first is not None
        info, again = await hand_off("n2")
        assert (info.id, again) == (first.message.id, None)
        [r] = await store.recipients(info.id)
        assert r.state is _R.ACTIVE
        done = [RecipientUpdate(0, _R.DELIVERED, status="2.0.0")]
        await store.settle(info.id, done, owner="n1", now=T0 + 1, claim=first.claim)
        assert (await store.recipients(info.id))[0].state is _R.DELIVERED


async def test_a_node_hands_a_new_message_to_its_waiting_lane(pg_dsn: str) -> None:
    """Through the spooler: a message submitted while the lane waits for work is ACTIVE
    (claimed for this node) when its submit returns, and no claim of its own follows:
    every claim the lane makes after the submit finds nothing (the store's commits are
    not counted: the node's status rows are written on a timer of their own)."""
    script = Script(address_types=("SMTP",))
    policy = Policy(housekeeping_interval=3600.0, router_interval=0.02, idle_interval=0.02)
    cfg = SpoolerConfig(
        transports=(TransportConfig("smtp", ScriptedProvider, options={"script": script}),),
        policy=policy,
        node="n1",
    )
    store = _ClaimsSeen(pg_dsn)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        await sp.wait_ready(timeout=10)
        lane = sp.host("smtp").outbound
        await _until(lambda: lane.waiting == 1)
        store.claimed.clear()
        info = await sp.submit(message_to("SMTP:bob@example.org"))
        [rcpt] = await store.recipients(info.id)
        assert rcpt.state in (_R.ACTIVE, _R.DELIVERED)
        assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        await _until(lambda: lane.waiting == 1)
        assert store.claimed and not any(store.claimed)  # the lane looked, and found none
    assert script.sent == [(info.id, 0)]


class _ClaimsSeen(PostgresStore):
    """The store, noting what each claim returned (the message ids)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.claimed: list[list[str]] = []

    async def claim(self, transport: str, **kw: Any) -> list[ClaimedJob]:
        jobs = await super().claim(transport, **kw)
        self.claimed.append([j.message.id for j in jobs])
        return jobs


def message_to(rcpt: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse(rcpt),),
        content=b"From: alice@example.org\r\nSubject: test\r\n\r\nhello\r\n",
    )


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.002)
