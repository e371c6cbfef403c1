"""DestinationBackoff.learn: which attempts put a destination in back-off."""

from __future__ import annotations

import pytest

from spoolbox._core.destinations import DestinationBackoff
from spoolbox._core.policy import Policy
from spoolbox.model import (
    Address,
    NewMessage,
    Outcome,
    RecipientResult,
    RecipientState,
    ResultError,
)
from spoolbox.store import ClaimedJob, MemoryStore, RecipientUpdate
from spoolbox.testing import FakeClock


async def _job(*rcpts: str) -> ClaimedJob:
    store = MemoryStore()
    await store.open()
    message = NewMessage(
        sender=None,
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=b"Subject: x\r\n\r\nx\r\n",
    )
    await store.submit(message, now=0.0, lifetime=3600, routes=["relay"] * len(rcpts))
    [job] = await store.claim("relay", owner="n", now=0.0, lease=60)
    return job


T0 = FakeClock().now()


def _deferred(index: int, retry_at: float = 60.0) -> RecipientUpdate:
    return RecipientUpdate(
        index,
        RecipientState.QUEUED,
        "4.3.0",
        "smtp; 451 4.3.0 try later",
        retry_at=T0 + retry_at,
        count_attempt=True,
    )


def _delivered(index: int) -> RecipientUpdate:
    return RecipientUpdate(index, RecipientState.DELIVERED, "2.0.0", count_attempt=True)


async def test_a_destination_that_took_a_recipient_of_the_attempt_is_not_held_back() -> None:
    job = await _job("SMTP:good@example.org", "SMTP:later@example.org", "SMTP:x@other.org")
    backoff = DestinationBackoff(Policy(), FakeClock())
    # Delivered first, deferred after it, in the same settle (and the other order).
    backoff.learn(job, [_delivered(0), _deferred(1), _deferred(2)])
    assert backoff.wait("relay", Address.parse("SMTP:new@example.org")) is None
    held = backoff.wait("relay", Address.parse("SMTP:new@other.org"))
    assert held is not None and held.until == T0 + 60 and held.status == "4.3.0"
    backoff = DestinationBackoff(Policy(), FakeClock())
    backoff.learn(job, [_deferred(1), _delivered(0)])
    assert backoff.wait("relay", Address.parse("SMTP:new@example.org")) is None


async def test_a_deferred_attempt_alone_holds_its_destination_until_its_retry() -> None:
    job = await _job("SMTP:a@example.org", "SMTP:b@example.org")
    backoff = DestinationBackoff(Policy(), FakeClock())
    backoff.learn(job, [_deferred(0, retry_at=30.0), _deferred(1, retry_at=45.0)])
    held = backoff.wait("relay", Address.parse("SMTP:c@EXAMPLE.org"))
    assert held is not None and held.until == T0 + 45


async def test_a_recipient_deferred_alone_leaves_its_destination_up() -> None:
    # One mailbox's 451 to its RCPT (the SMTP transport marks it recipient_only): the
    # destination answered, so a message with that one recipient holds no other mail.
    job = await _job("SMTP:later@example.org")
    alone = RecipientResult.deferred(
        0, "smtp; 451 4.2.0 greylisted", status="4.2.0", recipient_only=True
    )
    backoff = DestinationBackoff(Policy(), FakeClock())
    backoff.learn(job, [_deferred(0)], [alone])
    assert backoff.wait("relay", Address.parse("SMTP:new@example.org")) is None
    # The same deferral without the mark (the session failed: 421, a lost connection).
    backoff.learn(job, [_deferred(0)], [RecipientResult.deferred(0, "smtp; 421 bye")])
    assert backoff.wait("relay", Address.parse("SMTP:new@example.org")) is not None
    # ... and a destination in back-off that answers a recipient's RCPT is up again.
    backoff.learn(job, [_deferred(0)], [alone])
    assert backoff.wait("relay", Address.parse("SMTP:new@example.org")) is None


def test_recipient_only_is_for_deferred_results() -> None:
    with pytest.raises(ResultError, match="recipient_only is only for deferred results"):
        RecipientResult(0, Outcome.FAILED, "5.1.1", "no such user", recipient_only=True)
