"""Claims: one store round trip feeds several lanes; unstarted claims go back at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from helpers import FAST, message, transport, until

from spoolbox import (
    AlwaysIdle,
    MessageState,
    RecipientState,
    Spooler,
    SpoolerConfig,
)
from spoolbox.store import ClaimedJob, MemoryStore
from spoolbox.testing import Act, FakeClock, Script


class CountingStore(MemoryStore):
    """The memory store, recording the size of every claim that found work."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[int] = []

    async def claim(self, transport: str, **kw: Any) -> list[ClaimedJob]:
        jobs = await super().claim(transport, **kw)
        if jobs:
            self.claims.append(len(jobs))
        return jobs


def _open(store: MemoryStore, *transports: Any, **policy: Any) -> Spooler:
    cfg = SpoolerConfig(transports=transports, policy=replace(FAST, **policy), node="test-node")
    return Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=False)


async def test_one_claim_feeds_several_lanes() -> None:
    store = CountingStore()
    script = Script(concurrency=4)
    async with _open(store, transport("pool", script), claim_batch=8) as sp:
        with sp.foreground_busy():
            infos = [await sp.submit(message(f"SMTP:r{i}@example.org")) for i in range(40)]
        for info in infos:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
    # Each message delivered once, and the four lanes shared claims of up to eight:
    # far fewer store round trips than messages (one per message before).
    assert len(script.sent) == 40
    assert len({ref for ref, _ in script.sent}) == 40
    assert sum(store.claims) == 40
    assert max(store.claims) == 8
    assert len(store.claims) <= 10


async def test_claimed_but_unstarted_jobs_go_back_to_the_queue_when_the_session_ends() -> None:
    store = CountingStore()
    script = Script(submit=[Act.HANG], concurrency=1)
    sp = _open(store, transport("slow", script), claim_batch=8, shutdown_grace=0.2)
    async with sp:
        with sp.foreground_busy():
            infos = [await sp.submit(message(f"SMTP:r{i}@example.org")) for i in range(5)]
        # The lane claimed all five and is stuck in the first one.
        for _ in range(200):
            if script.names().count("submit_message") == 1 and store.claims:
                break
            await asyncio.sleep(0.01)
        assert store.claims == [5]
    states = [[r.state for r in await store.recipients(info.id)] for info in infos]
    # The four never started are QUEUED again at once (not left ACTIVE until their
    # leases run out); the one in the transport's hands is ACTIVE or QUEUED.
    assert states[1:] == [[RecipientState.QUEUED]] * 4
    assert states[0][0] in (RecipientState.ACTIVE, RecipientState.QUEUED)
    await store.close()


async def test_a_lease_taken_over_stops_the_transport_and_writes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spooler stalled past its lease and another one claimed the message: at the
    next renewal the transport is told to cancel it (it stops working on something
    that is no longer its), nothing is written over the other spooler's claim, and
    the loss is logged once, not at every renewal."""
    store = MemoryStore()
    clock = FakeClock()
    script = Script(submit=[Act.HANG])
    cfg = SpoolerConfig(
        transports=(transport("smtp", script),),
        policy=replace(FAST, lease=30.0, housekeeping_interval=3600.0),
        node="stalled",
    )
    async with Spooler.open(
        cfg, store=store, clock=clock, idle=AlwaysIdle(), close_store=False
    ) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await until(lambda: "submit_message" in script.names(), what="the transport has it")
        # Another spooler takes the message over (as after this one's lease ran out).
        assert await store.release_owner("stalled") == 1
        [stolen] = await store.claim("smtp", owner="thief", now=clock.now(), lease=300.0)
        assert stolen.message.id == info.id
        for _ in range(3):  # three renewal periods (lease / 3 each)
            await clock.advance(10.0)
        await until(lambda: script.cancelled == [info.id], what="the transport is told")
        [rec] = await store.recipients(info.id)
        assert rec.state is RecipientState.ACTIVE
        # Still the thief's: nothing was settled or renewed over its claim.
        assert await store.release_owner("thief") == 1
    lost = [r for r in caplog.records if "lost its lease" in r.getMessage()]
    assert len(lost) == 1
