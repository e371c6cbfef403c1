"""The next hop refuses the message at the final dot, after taking all of it: ``451``
defers the recipients (the retry delivers the message whole), ``552`` fails them with a
delivery report whose status and diagnostic code carry the server's reply.

Both with a real aiosmtpd server (no PIPELINING: command by command) and with a small
asyncio server that offers PIPELINING (the transport's other path)."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.message
import email.policy
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session
from smtp_servers import (
    EHLO,
    FAST,
    WAIT,
    Recorder,
    aiosmtpd_server,
    line,
    open_spooler,
    options,
    scripted_server,
)

from spoolbox import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    RecipientState,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.testing import FakeClock

CONTENT = (
    b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: final dot\r\n"
    b"Message-ID: <final-dot@test>\r\n\r\nLine one.\r\n.leading dot\r\nLast line.\r\n"
)

#: The reply to the final dot of the n-th message with a non-null sender (0-based);
#: the null-sender messages (delivery reports) are always taken.
Answers = Callable[[int], str]


@dataclass
class Taken:
    """What a server took: (MAIL FROM, RCPT TOs, content) per accepted message."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    refused: int = 0  # messages answered other than 250 at the final dot


class _FinalDotHandler(Recorder):
    def __init__(self, answers: Answers, taken: Taken) -> None:
        super().__init__()
        self.answers = answers
        self.taken = taken

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        sender = str(envelope.mail_from or "").strip("<>")  # aiosmtpd keeps "<>"
        content = bytes(envelope.original_content or b"")
        if sender:
            reply = self.answers(self.taken.refused + len(self.taken.messages))
            if not reply.startswith("250"):
                self.taken.refused += 1
                return reply
        self.taken.messages.append((sender, list(envelope.rcpt_tos), content))
        return "250 2.0.0 Ok: queued"


@asynccontextmanager
async def aiosmtpd_final_dot(answers: Answers, taken: Taken) -> AsyncIterator[int]:
    async with aiosmtpd_server(_FinalDotHandler(answers, taken)) as srv:
        yield srv.port


@asynccontextmanager
async def pipelining_final_dot(answers: Answers, taken: Taken) -> AsyncIterator[int]:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test.invalid ESMTP\r\n")
        sender, rcpts = "", []
        while True:
            await writer.drain()
            cmd = await line(reader)
            verb = cmd[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(EHLO)  # offers PIPELINING
            elif verb == b"MAIL":
                sender, rcpts = cmd.split(b"<", 1)[1].split(b">", 1)[0].decode(), []
                writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(cmd.split(b"<", 1)[1].split(b">", 1)[0].decode())
                writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = b""
                while (chunk := await line(reader)) != b".\r\n":
                    body += chunk[1:] if chunk.startswith(b".") else chunk
                reply = "250 2.0.0 Ok"
                if sender:
                    reply = answers(taken.refused + len(taken.messages))
                if reply.startswith("250"):
                    taken.messages.append((sender, rcpts, body))
                else:
                    taken.refused += 1
                writer.write(reply.encode() + b"\r\n")
            elif verb == b"RSET":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 what?\r\n")

    async with scripted_server(script) as srv:
        yield srv.port


#: A retry 30 (fake) seconds on; the periodic timers slow, so few wake-ups to advance.
RETRY_SOON = dataclasses.replace(
    FAST, retry_base=30.0, router_interval=5.0, housekeeping_interval=5.0
)

Server = Callable[[Answers, Taken], AbstractAsyncContextManager[int]]

SERVERS = pytest.mark.parametrize(
    "server", [aiosmtpd_final_dot, pipelining_final_dot], ids=["aiosmtpd", "pipelining"]
)


def _message() -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse("SMTP:bob@example.org"), Address.parse("SMTP:carol@example.org")),
        content=CONTENT,
    )


@SERVERS
async def test_451_at_the_final_dot_defers_and_the_retry_delivers_it_whole(server: Server) -> None:
    def answers(n: int) -> str:
        return "451 4.3.0 Temporary queue trouble" if n == 0 else "250 Ok"

    taken = Taken()
    clock = FakeClock()  # the retry comes when the test moves time on
    async with server(answers, taken) as port:
        cfg = SpoolerConfig(
            transports=(TransportConfig("smtp", "smtp", options=options(port)),),
            policy=RETRY_SOON,
            node="test-node",
        )
        async with Spooler.open(cfg, idle=AlwaysIdle(), clock=clock) as sp:
            await _deferred_then_retried(sp, clock, taken)
    [(sender, rcpts, content)] = taken.messages
    assert (sender, rcpts) == ("alice@example.org", ["bob@example.org", "carol@example.org"])
    assert content == CONTENT
    assert taken.refused == 1


async def _deferred_then_retried(sp: Spooler, clock: FakeClock, taken: Taken) -> None:
    """The first attempt ends with the 451; the retry, once it is due, delivers."""
    info = await sp.submit(_message())
    state = await sp.wait_for(info.id, (MessageState.DEFERRED,), timeout=WAIT)
    assert state is MessageState.DEFERRED
    recs = await sp.store.recipients(info.id)
    assert [(r.state, r.status) for r in recs] == [(RecipientState.QUEUED, "4.3.0")] * 2
    for r in recs:
        assert "451 4.3.0 Temporary queue trouble" in (r.diagnostic or "")
        assert "end of data" in (r.diagnostic or "")
    assert (taken.refused, taken.messages) == (1, [])
    # The retry time comes: delivered once, whole, to both; no report.
    await clock.advance(RETRY_SOON.retry_base * 1.5)
    assert await sp.wait_for(info.id, timeout=WAIT) is MessageState.SENT
    assert [r.attempts for r in await sp.store.recipients(info.id)] == [2, 2]
    reports = [s for s in await sp.store.list_messages(now=0) if s.info.is_report]
    assert reports == []


@SERVERS
async def test_552_at_the_final_dot_fails_with_a_delivery_report(server: Server) -> None:
    def answers(n: int) -> str:
        return "552 5.3.4 Message too big for this system"

    taken = Taken()
    async with server(answers, taken) as port, open_spooler(options(port)) as sp:
        info = await sp.submit(_message())
        assert await sp.wait_for(info.id, timeout=WAIT) is MessageState.FAILED
        recs = await sp.store.recipients(info.id)
        assert [(r.state, r.status) for r in recs] == [(RecipientState.FAILED, "5.3.4")] * 2
        # The report goes to the sender through the same server (null sender).
        async with asyncio.timeout(WAIT):
            while not taken.messages:
                await asyncio.sleep(0.02)
    assert taken.refused == 1  # the message was sent once, not retried
    [(sender, rcpts, raw)] = taken.messages
    assert (sender, rcpts) == ("", ["alice@example.org"])
    dsn = email.message_from_bytes(raw, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    status = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    per_recipient = [dict(block.items()) for block in status.get_payload()[1:]]
    assert [b["Final-Recipient"] for b in per_recipient] == [
        "rfc822; bob@example.org",
        "rfc822; carol@example.org",
    ]
    for block in per_recipient:
        assert block["Action"] == "failed"
        assert block["Status"] == "5.3.4"
        assert block["Diagnostic-Code"].startswith(
            "smtp; 552 5.3.4 Message too big for this system"
        )
        assert block["Remote-MTA"] == "dns; 127.0.0.1"


@SERVERS
async def test_the_connection_is_kept_after_a_refusal_at_the_final_dot(server: Server) -> None:
    """A 4xx or 5xx to the final dot ends the transaction, not the session (RFC 5321
    4.1.1.4): the next message goes over the same connection, after an RSET, as
    Postfix's client does; a server that answers 451 to every message of a busy queue
    is not connected to again for each one."""
    replies = ["451 4.3.0 Try again later", "554 5.7.1 Rejected", "250 Ok"]
    taken = Taken()
    async with (
        server(lambda n: replies[min(n, 2)], taken) as port,
        open_spooler(options(port, max_connections=1)) as sp,
    ):
        states = []
        for i, domain in enumerate(("one.example", "two.example", "three.example")):
            info = await sp.submit(
                NewMessage(
                    sender=Address.parse("SMTP:alice@example.org"),
                    recipients=(Address.parse(f"SMTP:r{i}@{domain}"),),
                    content=CONTENT,
                )
            )
            final = (MessageState.DEFERRED, MessageState.FAILED) if i < 2 else None
            states.append(
                await sp.wait_for(info.id, final, timeout=WAIT)
                if final
                else await sp.wait_for(info.id, timeout=WAIT)
            )
        status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
    assert states == [MessageState.DEFERRED, MessageState.FAILED, MessageState.SENT]
    assert taken.refused == 2
    assert [rcpts for sender, rcpts, _ in taken.messages if sender] == [["r2@three.example"]]
    assert status["connections_opened"] == 1  # the report to alice went over it too
