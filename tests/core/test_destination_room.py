"""The per-destination decisions of a lane (``_core/hosts/destination_room.py``), fed
claimed jobs and a fake clock: which job goes, what a claim passes over, when a rest
ends, and the texts that say why mail waits."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pytest

from spoolbox._core.hosts.destination_room import DestinationRoom
from spoolbox.model import Address, MessageInfo, Notify, Priority, RecipientRecord, RecipientState
from spoolbox.store import ClaimedJob
from spoolbox.testing import FakeClock


@dataclass
class Limits:
    destination_concurrency: int | None = None
    destination_rate_delay: float | None = None


def job(mid: str, *addresses: str) -> ClaimedJob:
    info = MessageInfo(
        id=mid,
        sender=None,
        priority=Priority.NORMAL,
        submitted_at=0.0,
        send_at=None,
        expires_at=1e12,
        notify=Notify.NEVER,
        is_report=False,
        envelope_id=None,
        size=10,
        subject="s",
    )
    recipients = tuple(
        RecipientRecord(mid, i, Address.parse(f"SMTP:{a}"), RecipientState.ACTIVE, route="mx")
        for i, a in enumerate(addresses)
    )
    return ClaimedJob(info, recipients, "mx", "n", 1e12)


def test_without_a_limit_every_job_goes_in_claim_order() -> None:
    room = DestinationRoom(Limits(), FakeClock())
    ready = collections.deque([job("a", "x@slow.test"), job("b", "y@slow.test")])
    assert room.limit() is None
    assert room.full(ready) == frozenset()
    first = room.take(ready)
    assert first is not None and first.message.id == "a"
    assert room.start(first) == (frozenset(), False)
    assert room.can_start(ready)
    assert room.hold(ready) is None and room.queued_wait("z@slow.test") is None


def test_a_full_destination_is_passed_over_and_freed() -> None:
    room = DestinationRoom(Limits(destination_concurrency=1), FakeClock())
    ready = collections.deque(
        [job("a", "x@slow.test"), job("b", "y@Slow.Test"), job("c", "z@fast.test")]
    )
    a = room.take(ready)
    assert a is not None and a.message.id == "a"
    started, reached = room.start(a)
    assert started == {"slow.test"} and reached and room.at_limit == {"slow.test"}
    # b (slow.test, in any case) waits; c goes past it.
    c = room.take(ready)
    assert c is not None and c.message.id == "c"
    assert [j.message.id for j in ready] == ["b"] and not room.can_start(ready)
    assert room.full(ready) == {"slow.test"}
    assert room.job_wait(ready, "b", 0) == (
        "slow.test has 1 message under way, its destination_concurrency; "
        "claimed, it goes when one of them is done"
    )
    assert room.queued_wait("q@slow.test") == (
        "slow.test has 1 message under way, its destination_concurrency; queued behind them"
    )
    assert room.queued_wait("q@fast.test") is None
    assert room.at_limit_text() == (
        "slow.test has 1 message under way (destination_concurrency): "
        "the mail to other domains goes first"
    )
    assert room.finish(started) == (True, True)
    assert room.at_limit == set() and room.at_limit_text() is None
    assert room.can_start(ready) and room.full(ready) == {"slow.test"}  # b, claimed


async def test_a_rate_delay_rests_a_destination_after_each_job() -> None:
    clock = FakeClock()
    room = DestinationRoom(Limits(destination_concurrency=10, destination_rate_delay=3.0), clock)
    assert room.limit() == 1
    ready = collections.deque([job("a", "x@slow.test"), job("b", "y@slow.test")])
    a = room.take(ready)
    assert a is not None
    started, reached = room.start(a)
    assert not reached  # every destination is at its one: no news for the row
    assert room.job_wait(ready, "b", 0) == (
        "slow.test gets one message every 3 s, its destination_rate_delay; "
        "claimed, it goes 3 s after the one under way"
    )
    assert room.finish(started) == (True, False)
    assert room.take(ready) is None and set(room.resting()) == {"slow.test"}
    await clock.advance(1.0)
    assert room.rest_bound(60.0) == 2.0 and room.rest_bound(0.5) == 0.5
    assert room.hold(ready) == (
        "slow.test gets one message every 3 s, its destination_rate_delay; the next one goes in 2 s"
    )
    await clock.advance(2.0)
    assert room.resting() == {} and room.rest_bound(60.0) == 60.0
    b = room.take(ready)
    assert b is not None and b.message.id == "b"


def test_the_hold_names_the_first_destination_and_counts_the_others() -> None:
    room = DestinationRoom(Limits(destination_concurrency=1), FakeClock())
    ready = collections.deque(
        [job("1", "u@b.test"), job("2", "u@a.test"), job("3", "u@c.test"), job("4", "u@d.test")]
    )
    for _ in range(4):
        j = room.take(ready)
        assert j is not None
        room.start(j)
    ready.extend([job("5", "v@a.test"), job("6", "v@b.test"), job("7", "v@c.test")])
    assert room.hold(ready) == (
        "a.test has 1 message under way, its destination_concurrency; the next one "
        "goes when one of them is done; and 2 other destinations the same way"
    )
    assert room.at_limit_text() == (
        "a.test, b.test, c.test and 1 more each have 1 message under way "
        "(destination_concurrency): the mail to other domains goes first"
    )


async def test_a_claim_that_found_nothing_past_the_same_destinations_pauses() -> None:
    clock = FakeClock()
    room = DestinationRoom(Limits(destination_concurrency=1), clock)
    full = frozenset({"slow.test"})
    assert room.pass_over_pause(full) is None
    began = clock.now()
    await clock.advance(0.01)  # the claim took 10 ms and found nothing
    room.claimed(full, False, began)
    assert room.pass_over_pause(full) == pytest.approx(0.2)  # twenty times as long
    assert room.pass_over_pause(frozenset({"other.test"})) is None
    await clock.advance(0.21)
    assert room.pass_over_pause(full) is None
    # A slow claim: a second at most; one that found jobs: no pause.
    room.claimed(full, False, clock.now() - 5.0)
    assert room.pass_over_pause(full) == 1.0
    room.claimed(full, True, clock.now())
    assert room.pass_over_pause(full) is None
