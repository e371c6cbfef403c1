"""DSN (RFC 3461) through the SMTP transport: the sender's NOTIFY, RET and ENVID go on
to a next hop that offers DSN, which then reports the delivery itself; to one that
does not, nothing extra is sent and the spooler reports as before.  The next hop is
spoolbox's own SMTP listener (aiosmtpd does not take DSN parameters), with DSN on
and off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from smtp_servers import open_spooler, options, scripted_server, send

from spoolbox import Address, MessageState, NewMessage, Notify
from spoolbox.ingress.config import ListenerConfig
from spoolbox.ingress.listener import SubmissionListener
from spoolbox.transports.smtp.session import notify_keyword

CONTENT = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: dsn\r\n\r\nhello\r\n"


@contextlib.asynccontextmanager
async def serving(
    submit: Callable[[NewMessage], Awaitable[object]], **options: Any
) -> AsyncIterator[SubmissionListener]:
    """spoolbox's SMTP listener on a free port, as the next hop."""
    listener = SubmissionListener(submit, ListenerConfig(port=0, hostname="next.test", **options))
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(grace=1.0)


class Next:
    """The next hop's submit: what it was given."""

    def __init__(self) -> None:
        self.messages: list[NewMessage] = []

    async def __call__(self, message: NewMessage) -> object:
        self.messages.append(message)
        return message


def _message(**kw: object) -> NewMessage:
    return NewMessage(
        Address("SMTP", "alice@example.org"),
        (Address("SMTP", "bob@example.org"),),
        CONTENT,
        **kw,  # type: ignore[arg-type]
    )


async def test_the_senders_wishes_go_on_to_a_next_hop_with_dsn() -> None:
    hop = Next()
    async with serving(hop) as listener, open_spooler(options(listener.port)) as sp:
        msg = _message(notify=Notify.NEVER, envelope_id="order+42", return_content=False)
        state, _ = await send(sp, msg)
        assert state is MessageState.SENT
    [got] = hop.messages
    assert (got.notify, got.envelope_id, got.return_content) == (Notify.NEVER, "order+42", False)


async def test_orcpt_goes_on_to_a_next_hop_with_dsn_and_not_to_one_without() -> None:
    """Each recipient's ORCPT as it came (xtext encoded on the wire, '+' and '=' and a
    space included); a recipient without one gets its own address as it was queued
    (as Postfix adds it), except one that is not ASCII; a next hop without DSN gets
    none (it would refuse the parameter with 555)."""
    bob, carol = Address("SMTP", "bob@example.org"), Address("SMTP", "c+rol@example.org")
    jorg = Address("SMTP", "jörg@example.org")
    original = "rfc822;B+b=x y@old.example"
    msg = NewMessage(
        Address("SMTP", "alice@example.org"),
        (bob, carol, jorg),
        CONTENT,
        original_recipients=((bob, original),),
    )
    for dsn in (True, False):
        hop = Next()
        async with serving(hop, dsn=dsn) as listener, open_spooler(options(listener.port)) as sp:
            state, _ = await send(sp, msg if dsn else replace(msg, id=msg.id + "b"))
            assert state is MessageState.SENT
        [got] = [m for m in hop.messages if not m.is_report and m.sender is not None]
        assert [got.original_of(r) for r in got.recipients] == (
            [original, "rfc822;c+rol@example.org", None] if dsn else [None, None, None]
        )


async def test_the_longest_address_goes_with_its_orcpt_within_the_line_limit() -> None:
    """The longest address there can be (254 octets, a local part of 64 '+', each
    three characters as xtext) with NOTIFY and the ORCPT added for it: a RCPT line
    of about 700 characters, within the 500 more RFC 3461 allows; the next hop (the
    spoolbox listener) takes it and keeps the ORCPT."""
    local = "+" * 64
    domain = ".".join(["d" * 60] * 3) + ".exampl"  # 189 octets
    long = Address("SMTP", f"{local}@{domain}")
    assert len(long.value) == 254
    hop = Next()
    async with serving(hop) as listener, open_spooler(options(listener.port)) as sp:
        msg = NewMessage(
            Address("SMTP", "alice@example.org"),
            (long,),
            CONTENT,
            notify=Notify.SUCCESS | Notify.FAILURE | Notify.DELAY,
        )
        state, recs = await send(sp, msg)
        assert state is MessageState.SENT, recs
    [got] = hop.messages
    assert got.recipients == (long,)
    assert got.original_of(long) == f"rfc822;{long.value}"


async def test_an_address_longer_than_a_path_gets_no_orcpt_added() -> None:
    """On the wire (a scripted server that offers DSN): an address as long as a path
    may be (254 octets) gets the ORCPT made up for it, one longer (255, which the
    server refuses or not as it likes) gets none."""
    domain = ".".join(["d" * 60] * 3)  # 182 octets
    fits = Address("SMTP", "a" * 64 + "@" + domain + ".exampl")
    over = Address("SMTP", "a" * 64 + "@" + domain + ".example")
    assert (len(fits.value), len(over.value)) == (254, 255)
    rcpts: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test.invalid ESMTP\r\n")
        while cmd := await reader.readline():
            word = cmd[:4].upper()
            if word == b"EHLO":
                writer.write(b"250-test.invalid\r\n250-PIPELINING\r\n250 DSN\r\n")
            elif word == b"RCPT":
                rcpts.append(cmd)
                writer.write(b"250 2.1.5 Ok\r\n")
            elif word == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while await reader.readline() != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 Ok\r\n")
            elif word == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        msg = NewMessage(Address("SMTP", "alice@example.org"), (fits, over), CONTENT)
        state, recs = await send(sp, msg)
        assert state is MessageState.SENT, recs
    assert len(rcpts) == 2
    assert f"ORCPT=rfc822;{fits.value}".encode() in rcpts[0]
    assert b"ORCPT=" not in rcpts[1]
    assert rcpts[1].startswith(f"RCPT TO:<{over.value}> NOTIFY=FAILURE".encode())


async def test_a_next_hop_with_dsn_reports_the_delivery_not_the_spooler() -> None:
    """NOTIFY=SUCCESS relayed to a server that offers DSN: that server (or the one
    after it) reports the delivery; the spooler sends no report of its own."""
    hop = Next()
    async with serving(hop) as listener, open_spooler(options(listener.port)) as sp:
        state, _ = await send(sp, _message(notify=Notify.SUCCESS | Notify.FAILURE))
        assert state is MessageState.SENT
        await asyncio.sleep(0.3)  # a report, were there one, would be on its way
    [got] = hop.messages
    assert got.notify == Notify.SUCCESS | Notify.FAILURE
    assert got.sender is not None


async def test_a_next_hop_without_dsn_gets_none_and_the_spooler_reports() -> None:
    hop = Next()
    async with serving(hop, dsn=False) as listener, open_spooler(options(listener.port)) as sp:
        state, _ = await send(sp, _message(notify=Notify.SUCCESS, return_content=True))
        assert state is MessageState.SENT
        for _ in range(100):
            if len(hop.messages) == 2:
                break
            await asyncio.sleep(0.02)
    original, report = hop.messages
    # Nothing of DSN went out (the server would have refused it with 555): its defaults.
    assert (original.notify, original.return_content) == (Notify.FAILURE, None)
    assert report.sender is None and report.is_report is False  # as the wire carries it
    # Handed to a server that says nothing more of it: relayed, not delivered.
    assert b"Action: relayed" in report.content
    assert b"Action: delivered" not in report.content
    assert b"<bob@example.org>: relayed (status 2.0.0)" in report.content
    assert b"message/rfc822" in report.content  # RET=FULL: the whole message came back


@pytest.mark.parametrize(
    ("notify", "keyword"),
    [
        (Notify.NEVER, b"NEVER"),
        (Notify.FAILURE, b"FAILURE"),
        (Notify.DELAY | Notify.SUCCESS, b"SUCCESS,DELAY"),
        (Notify.SUCCESS | Notify.FAILURE | Notify.DELAY, b"SUCCESS,FAILURE,DELAY"),
    ],
)
def test_notify_keywords(notify: Notify, keyword: bytes) -> None:
    assert notify_keyword(notify) == keyword
