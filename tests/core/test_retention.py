"""Housekeeping purges what the retention settings let go, in bounded batches, on the
spooler's clock; never an unfinished message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace

import pytest
from helpers import SLOW_TIMERS, message, spooler, transport, until

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig
from spoolbox._core.hosts.hooked import HOOKS_SECTION
from spoolbox._core.housekeeping import PURGE_BATCH
from spoolbox.model import MessageState, RecipientState
from spoolbox.store import InboundMessage, MemoryStore, RecipientUpdate, UnknownMessage
from spoolbox.store.retention import Retention
from spoolbox.testing import Act, FakeClock, Script

DAY = 86400.0
POLICY = replace(
    SLOW_TIMERS,
    housekeeping_interval=3600.0,
    router_interval=3600.0,
    idle_interval=3600.0,
    poll_interval=3600.0,
)


class CountingStore(MemoryStore):
    """Records the size of every purge transaction, and whether another task ran
    between two of them (the housekeeper yields between batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.turns = 0  # bumped by a task that runs whenever the loop is free
        self.turns_at_batch: list[int] = []

    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        gone = await super().purge(finished_before=finished_before, limit=limit)
        self.batches.append(len(gone))
        self.turns_at_batch.append(self.turns)
        return gone


async def _finished(
    store: MemoryStore, at: float, state: RecipientState = RecipientState.DELIVERED
) -> str:
    info = await store.submit(message("X:bob"), now=at - 60, lifetime=3 * DAY, routes=["x"])
    [job] = await store.claim("x", owner="elsewhere", now=at - 1, lease=30)
    update = [RecipientUpdate(0, state)]
    await store.settle(info.id, update, owner="elsewhere", now=at, claim=job.claim)
    return info.id


async def _gone(store: MemoryStore, message_id: str) -> bool:
    return not await _exists(store, message_id)


def _spooler(cfg: SpoolerConfig, store: MemoryStore, clock: FakeClock) -> Spooler:
    return Spooler.open(cfg, store=store, clock=clock, idle=AlwaysIdle(), close_store=False)


async def _exists(store: MemoryStore, message_id: str) -> bool:
    try:
        await store.get_message(message_id)
    except UnknownMessage:
        return False
    return True


async def test_housekeeping_purges_by_age_and_keeps_unfinished_mail() -> None:
    clock = FakeClock()
    now = clock.now()
    store = CountingStore()
    old = await _finished(store, now - 8 * DAY)
    recent = await _finished(store, now - 6 * DAY)
    failed = await _finished(store, now - 8 * DAY, RecipientState.FAILED)  # kept 30 days
    ancient = await store.submit(
        message("X:carol", lifetime=1000 * DAY), now=now - 100 * DAY, lifetime=DAY
    )
    await store.hold(ancient.id)  # unfinished, 100 days old
    gone_entry = await store.deliver_inbound(
        InboundMessage("pop", b"Subject: old\r\n\r\nx", received_at=now - 31 * DAY)
    )
    kept_entry = await store.deliver_inbound(
        InboundMessage("pop", b"Subject: new\r\n\r\nx", received_at=now - 29 * DAY)
    )
    cfg = SpoolerConfig(policy=POLICY, node="test-node")
    assert cfg.retention == Retention()  # the defaults: 7, 30 and 30 days
    async with _spooler(cfg, store, clock):
        await until(lambda: bool(store.batches), what="the first purge")
        assert not await _exists(store, old)
        assert await _exists(store, recent)
        assert await _exists(store, failed)
        assert await _exists(store, ancient.id)
        assert [e.id for e in await store.list_inbox()] == [kept_entry.id]
        assert gone_entry.id != kept_entry.id
        # A day later the 6-day-old message is exactly 7 days old: kept (strictly older
        # goes); an hour after that it goes.  The unfinished one stays for ever.
        await clock.advance(DAY)
        assert await _exists(store, recent)
        await clock.advance(3600)
        await until(lambda: _gone(store, recent), what="the 7-day-old message purged")
        assert await _exists(store, ancient.id)
        assert (await store.recipients(ancient.id))[0].state is RecipientState.HELD


async def test_purge_goes_in_bounded_batches_and_yields_between_them() -> None:
    clock = FakeClock()
    now = clock.now()
    store = CountingStore()
    for _ in range(2 * PURGE_BATCH + 200):
        await _finished(store, now - 8 * DAY)
    keep = await _finished(store, now - DAY)

    async def ticker() -> None:
        while True:
            store.turns += 1
            await asyncio.sleep(0)

    cfg = SpoolerConfig(policy=POLICY, node="test-node")
    tick = asyncio.create_task(ticker())
    try:
        async with _spooler(cfg, store, clock):
            await until(lambda: sum(store.batches) >= 2 * PURGE_BATCH + 200, what="the purge")
    finally:
        tick.cancel()
    assert store.batches == [PURGE_BATCH, PURGE_BATCH, 200]
    # other tasks ran between two batches: the write lock is never held across them
    first, second, third = store.turns_at_batch
    assert first < second < third
    assert await _exists(store, keep)
    assert len(await store.list_messages(now=now, limit=10_000)) == 1


async def test_a_manual_retry_lifts_the_destinations_back_off() -> None:
    clock = FakeClock()
    script = Script(("SMTP",), submit=[Act.FAIL_TEMP, Act.SUCCEED])
    async with spooler(transport("smtp", script), clock=clock) as sp:
        first = await sp.submit(message("SMTP:a@down.example"))
        await sp.wait_for(first.id, [MessageState.DEFERRED], timeout=5)
        second = await sp.submit(message("SMTP:b@down.example"))
        await sp.wait_for(second.id, [MessageState.DEFERRED], timeout=5)
        assert script.names().count("submit_message") == 1  # held back by the back-off
        assert await sp.retry(second.id) == 1
        # No clock advance: the retry alone makes it go, past the destination's back-off.
        assert await sp.wait_for(second.id, timeout=5) is MessageState.SENT
        (rec,) = await sp.store.recipients(second.id)
        assert rec.attempts == 1


async def test_stored_hook_verdicts_left_behind_their_message_go_at_the_next_purge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A crash between a job's last settle and the dropping of its hook verdict leaves
    ``spoolbox.hooks:<id>`` behind; housekeeping deletes it once it has seen it
    orphaned at two purges (a reroute writes its verdict just before its message)."""
    clock = FakeClock()
    now = clock.now()
    store = CountingStore()
    old = await _finished(store, now - 8 * DAY)  # purged at the first purge
    live = (await store.submit(message("X:carol"), now=now, lifetime=DAY)).id
    verdict = {"out": {"changed_by": ["a"]}}
    # "ghost": its message dropped by its settle; "late": its message not stored yet.
    for mid in (old, live, "ghost", "late"):
        await store.profile_update(HOOKS_SECTION + mid, verdict)
    await store.profile_update("spoolbox.other:ghost", {"x": 1})
    cfg = SpoolerConfig(policy=POLICY, node="test-node")
    with caplog.at_level(logging.INFO, logger="spoolbox.spooler"):
        async with _spooler(cfg, store, clock):
            await until(lambda: bool(store.batches), what="the first purge")
            await until(lambda: _gone(store, old), what="the old message purged")
            # Seen orphaned once: kept until the next purge.
            for mid in (old, "ghost"):
                assert await store.profile_get(HOOKS_SECTION + mid) == verdict
            # A verdict written before its message (as a reroute does), the message
            # submitted before the next purge, is not taken for one left behind.
            await store.submit(message("X:dave", id="late"), now=now, lifetime=DAY)
            await clock.advance(3600)

            async def swept() -> bool:
                return await store.profile_get(HOOKS_SECTION + "ghost") == {}

            await until(swept, what="the orphaned verdicts deleted")
    assert await store.profile_get(HOOKS_SECTION + old) == {}
    assert await store.profile_get(HOOKS_SECTION + live) == verdict
    assert await store.profile_get(HOOKS_SECTION + "late") == verdict
    assert await store.profile_get("spoolbox.other:ghost") == {"x": 1}
    assert "deleted 2 stored hook verdict(s) of messages no longer in the store" in caplog.text


async def test_purges_that_find_nothing_come_less_often_until_one_finds_something() -> None:
    # Each purge scans every recipient: with nothing to purge, 5, 10, 20, 40 minutes
    # apart, then hourly; one that purges something brings the 5 minutes back.
    clock = FakeClock()
    store = CountingStore()
    policy = replace(POLICY, housekeeping_interval=60.0)
    cfg = SpoolerConfig(policy=policy, node="test-node")
    start = clock.now()
    async with _spooler(cfg, store, clock):
        await until(lambda: bool(store.batches), what="the first purge")
        for _ in range(120):  # two hours, a housekeeping round a minute
            await clock.advance(60)
        # at 0, 5, 15, 35, 75 and 135 minutes (the last just past the two hours: not yet)
        assert len(store.batches) == 5, store.batches
        assert sum(store.batches) == 0
        gone = await _finished(store, clock.now() - 8 * DAY)  # purgeable at once
        for _ in range(20):  # the next purge is at 135 minutes
            if await _gone(store, gone):
                break
            await clock.advance(60)
        assert await _gone(store, gone)
        found_at = len(store.batches)
        for _ in range(6):
            await clock.advance(60)
        assert len(store.batches) == found_at + 1  # five minutes later, again
    assert clock.now() - start > 2 * 3600
