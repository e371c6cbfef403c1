"""The listener when the store's disk has no room (RFC 1870, RFC 3463 X.3.1).

At MAIL it asks whether the store's disk has room for a message of the SIZE the
client announced (``no_room``; the daemon's is :func:`spoolbox.store.space.room_check`,
here one on a free-space figure the test sets) and answers ``452 4.3.1`` when it has
not, before the client sends it; a submission the store refuses as full
(:class:`spoolbox.StoreFull`) gets ``452 4.3.1`` after the data, any other store error
``451 4.3.0``.  Both are
temporary: the client keeps the message and tries again.  The real full disk is in
tests/crash/test_disk_full.py and tests/cli/test_os_errors.py (they mount a tmpfs).
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from spoolbox import NewMessage, StoreError, StoreFull
from spoolbox.ingress import ListenerConfig, SubmissionListener
from spoolbox.store.space import MIN_FREE, room_needed

MESSAGE = b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


class Submits:
    """A submit that keeps what it is given, or raises ``refuse`` if set."""

    def __init__(self) -> None:
        self.kept: list[NewMessage] = []
        self.refuse: Exception | None = None

    async def __call__(self, message: NewMessage) -> object:
        if self.refuse is not None:
            raise self.refuse
        self.kept.append(message)
        return None


@asynccontextmanager
async def listening(
    submit: Submits, free_space: Callable[[], int | None] | None
) -> AsyncIterator[SubmissionListener]:
    """A listener whose store's disk has ``free_space()`` bytes free (None: cannot
    say; no callable: no check), judged as the daemon's check judges them."""

    def no_room(size: int) -> str | None:
        assert free_space is not None
        free = free_space()
        return None if free is None or free >= room_needed(size) else f"{free} free"

    listener = SubmissionListener(
        submit, ListenerConfig(port=0), no_room=None if free_space is None else no_room
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(grace=1.0)


def mail(port: int, size: int | None) -> tuple[int, str, object]:
    """MAIL (with SIZE=size unless None), RCPT, DATA: MAIL's reply, and what DATA gave
    (the reply to the data, or the SMTPException), None when MAIL was refused."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        options = [] if size is None else [f"SIZE={size}"]
        code, text = smtp.mail("alice@example.org", options)
        if code != 250:
            return code, text.decode(), None
        assert smtp.rcpt("bob@example.org")[0] == 250
        try:
            result: object = smtp.data(MESSAGE)
        except smtplib.SMTPException as exc:
            result = exc
        return code, text.decode(), result


async def test_mail_is_refused_with_452_when_the_announced_size_does_not_fit() -> None:
    free = [room_needed(10_000)]
    submits = Submits()
    async with listening(submits, lambda: free[0]) as listener:
        # Room for 10,000 bytes, not for 10,001: SIZE= decides.
        code, _, data = await asyncio.to_thread(mail, listener.port, 10_000)
        assert code == 250 and isinstance(data, tuple) and data[0] == 250
        code, text, data = await asyncio.to_thread(mail, listener.port, 10_001)
        assert (code, data) == (452, None)
        assert text.startswith("4.3.1 Insufficient system storage"), text
        # Without SIZE= only the floor counts.
        free[0] = MIN_FREE
        code, _, _ = await asyncio.to_thread(mail, listener.port, None)
        assert code == 250
        free[0] = MIN_FREE - 1
        code, text, _ = await asyncio.to_thread(mail, listener.port, None)
        assert code == 452 and "4.3.1" in text
        # Room again: taken.
        free[0] = room_needed(50_000)
        code, _, _ = await asyncio.to_thread(mail, listener.port, 50_000)
        assert code == 250
    stats = listener.statistics()
    assert stats["rejected_store_full"] == 2
    assert len(submits.kept) == 3


async def test_a_file_system_that_cannot_say_does_not_refuse() -> None:
    submits = Submits()
    async with listening(submits, lambda: None) as listener:
        code, _, data = await asyncio.to_thread(mail, listener.port, 10**6)
    assert code == 250 and isinstance(data, tuple) and data[0] == 250
    assert len(submits.kept) == 1


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (StoreFull("/x/spool.sqlite3: submit failed: database or disk is full"), (452, "4.3.1")),
        (StoreError("/x/spool.sqlite3: submit failed: disk I/O error"), (451, "4.3.0")),
    ],
    ids=["full", "other"],
)
async def test_a_store_that_refuses_the_data_gets_a_temporary_reply(
    error: Exception, reply: tuple[int, str]
) -> None:
    submits = Submits()
    submits.refuse = error
    async with listening(submits, None) as listener:
        code, _, data = await asyncio.to_thread(mail, listener.port, 100)
    assert code == 250
    assert isinstance(data, tuple), data  # smtplib returns the reply to the data
    assert (data[0], data[1].decode()[:5]) == reply
    reason = "store_full" if isinstance(error, StoreFull) else "submit_failed"
    assert listener.statistics()[f"rejected_{reason}"] == 1
