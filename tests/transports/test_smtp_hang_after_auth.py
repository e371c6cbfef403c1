"""A smart host that accepts the connection and AUTH, then never answers MAIL FROM
(issue #15: ``flush`` blocked ~300 s on one).  ``command_timeout`` bounds the wait:
the recipient is deferred with a response that says what was waited for, and a flush
ends reporting it deferred and still queued."""

from __future__ import annotations

import asyncio

from smtp_servers import HOST, line, open_spooler, options, scripted_server, send

from spoolbox import Address, MessageState, NewMessage
from spoolbox.model import RecipientState

EHLO_AUTH = b"250-test.invalid\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"


class HangsAfterAuth:
    """A server script: greeting, EHLO, AUTH accepted, then silence after MAIL FROM."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.mail_seen = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test.invalid ESMTP\r\n")
        await writer.drain()
        self.commands.append(await line(reader))  # EHLO
        writer.write(EHLO_AUTH)
        await writer.drain()
        self.commands.append(await line(reader))  # AUTH PLAIN <initial response>
        writer.write(b"235 2.7.0 Authentication successful\r\n")
        await writer.drain()
        self.commands.append(await line(reader))  # MAIL FROM
        self.mail_seen.set()
        await asyncio.Event().wait()  # never answers


def _options(port: int) -> dict[str, object]:
    opts = options(port, username="alice", password="secret", allow_plain_auth=True)
    del opts["timeouts"]  # the test is of command_timeout, not of the finer keys
    return {**opts, "command_timeout": 0.5}


def _message() -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=[Address.parse("SMTP:bob@example.org")],
        content=b"Subject: hang\r\n\r\nbody\r\n",
    )


async def test_hang_after_auth_defers_with_the_step_waited_for() -> None:
    script = HangsAfterAuth()
    async with scripted_server(script) as srv, open_spooler(_options(srv.port)) as sp:
        state, recs = await send(sp, _message())
    assert script.mail_seen.is_set()
    assert [c.split(b" ", 1)[0].upper() for c in script.commands] == [b"EHLO", b"AUTH", b"MAIL"]
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.1")
    assert recs[0].diagnostic == (
        f"x-spoolbox; timed out after 0.5 s waiting for the reply of {HOST}:{srv.port} "
        "to MAIL FROM:<alice@example.org>"
    )


async def test_a_flush_against_it_ends_and_counts_the_recipient_deferred() -> None:
    script = HangsAfterAuth()
    async with scripted_server(script) as srv, open_spooler(_options(srv.port)) as sp:
        await sp.submit(_message())
        report = await sp.flush(upload=True, download=False, deadline=60)
    assert script.mail_seen.is_set()
    result = report.for_transport("smtp")
    assert (result.delivered, result.deferred, result.failed) == (0, 1, 0)
    assert result.queued == 1  # deferred: still queued, for its retry
    assert not (result.timed_out or report.timed_out or result.cancelled)
