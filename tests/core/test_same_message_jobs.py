"""Two jobs of one message in one lane: a recipient whose retry time comes while
another recipient of the same message is still being delivered is claimed as a job
of its own.  The transport knows a message by its reference (the message's id): it
gets one delivery of a message at a time, the second job waits for the first, and
both keep their leases meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from helpers import SLOW_TIMERS, message, transport, until

from spoolbox import AlwaysIdle, RecipientState, Spooler, SpoolerConfig
from spoolbox._core.hosts.outbound import OutboundLane
from spoolbox.store import MemoryStore, RecipientUpdate
from spoolbox.testing import Act, FakeClock, Script

LEASE = 30.0


async def _two_jobs_pending(store: MemoryStore, clock: FakeClock) -> str:
    """A message whose bob is ready now and carol in 20 s, as after an attempt that
    deferred them with different retry times; its id."""
    info = await store.submit(
        message("SMTP:bob@example.org", "SMTP:carol@example.org"),
        now=clock.now(),
        lifetime=86400.0,
        routes=["smtp", "smtp"],
    )
    [earlier] = await store.claim("smtp", owner="before", now=clock.now(), lease=60.0)
    await store.settle(
        info.id,
        [
            RecipientUpdate(0, RecipientState.QUEUED),
            RecipientUpdate(1, RecipientState.QUEUED, retry_at=clock.now() + 20.0),
        ],
        owner="before",
        now=clock.now(),
        claim=earlier.claim,
    )
    return info.id


def _config(script: Script) -> SpoolerConfig:
    return SpoolerConfig(
        transports=(transport("smtp", script),),
        policy=replace(SLOW_TIMERS, lease=LEASE, housekeeping_interval=3600.0),
        node="lane",
    )


async def _claimed_both(store: MemoryStore, message_id: str) -> bool:
    return all(r.state is RecipientState.ACTIVE for r in await store.recipients(message_id))


@asynccontextmanager
async def _both_jobs_in_the_lane(
    script: Script,
) -> AsyncIterator[tuple[Spooler, OutboundLane, MemoryStore, FakeClock, str]]:
    """A spooler whose lane has bob's job under way (the transport has it) and has
    claimed carol's, whose retry time came meanwhile, as a second job of the message."""
    store = MemoryStore()
    clock = FakeClock()
    mid = await _two_jobs_pending(store, clock)
    async with Spooler.open(
        _config(script), store=store, clock=clock, idle=AlwaysIdle(), close_store=False
    ) as sp:
        lane = sp.host("smtp").outbound
        await until(lambda: script.names().count("submit_message") == 1, what="bob's job")
        await clock.advance(21.0)
        await until(lambda: _claimed_both(store, mid), what="carol's job claimed")
        yield sp, lane, store, clock, mid


async def test_a_second_job_of_a_message_waits_for_the_first_in_its_lane() -> None:
    stall = asyncio.Event()
    script = Script(submit=[Act.SUCCEED], stall=stall, concurrency=2)
    # Carol's retry time comes while bob's delivery stalls: her recipient is claimed,
    # as a second job of the same message, by the lane's other worker.
    async with _both_jobs_in_the_lane(script) as (_, lane, store, clock, mid):
        assert lane.inflight == 2  # both held: both renewed
        for _ in range(3):  # longer than a lease: both jobs' leases are renewed
            await clock.advance(LEASE / 2)
        assert script.names().count("submit_message") == 1  # carol's waits for bob's
        # Neither lease ran out (each was renewed: nothing expired to release).
        assert await store.release_expired(now=clock.now()) == 0
        assert [r.state for r in await store.recipients(mid)] == [RecipientState.ACTIVE] * 2
        stall.set()
        await until(lambda: script.names().count("submit_message") == 2, what="carol's job after")
        await until(lambda: lane.inflight == 0, what="both settled")
    assert [r.state for r in await store.recipients(mid)] == [RecipientState.DELIVERED] * 2
    refs = [detail[0] for name, detail in script.calls if name == "submit_message"]
    assert refs == [mid, mid]


async def test_a_cancel_reaches_the_job_that_waits_behind_its_messages_first() -> None:
    script = Script(submit=[Act.HANG], concurrency=2)
    async with _both_jobs_in_the_lane(script) as (sp, lane, store, _, mid):
        await sp.cancel(mid)
        # Bob's delivery is told to stop; carol's job, waiting behind it, is cancelled
        # when its turn comes, without reaching the transport.
        await until(lambda: lane.inflight == 0, what="both jobs ended")
    assert script.cancelled == [mid]
    assert script.names().count("submit_message") == 1
    assert [r.state for r in await store.recipients(mid)] == [RecipientState.CANCELLED] * 2
