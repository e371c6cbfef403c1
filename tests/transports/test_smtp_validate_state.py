"""ValidateState of the SMTP transport: can the smart host be reached now?

``Spooler.validate_state`` asks the session; the SMTP session connects (greeting, EHLO,
AUTH as configured), keeps the connection for the next message, and shows the result
on its status row as a send would: FAILURE with the reason while the host cannot be
reached, cleared once it can.  ``spoolbox check`` relies on it (tests/cli/test_check.py).
"""

from __future__ import annotations

import asyncio

from smtp_servers import (
    HOST,
    Recorder,
    aiosmtpd_server,
    free_port,
    open_spooler,
    options,
    scripted_server,
    send,
)

from spoolbox import Address, MessageState, NewMessage
from spoolbox.model import StatusCode


def _message() -> NewMessage:
    return NewMessage(
        sender=None,
        recipients=(Address.parse("SMTP:bob@example.org"),),
        content=b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n",
    )


async def test_a_host_that_answers_is_ok_and_its_connection_serves_the_next_message() -> None:
    handler = Recorder()
    async with aiosmtpd_server(handler) as srv, open_spooler(options(srv.port)) as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state(transport="smtp") == {"smtp": "ok"}
        assert srv.connections == 1
        row = sp.status["smtp"]
        assert not row.status_code & StatusCode.FAILURE
        assert row.status_string == f"connected to {HOST}:{srv.port}, 0 sent"
        state, _ = await send(sp, _message())
        assert state is MessageState.SENT
        assert srv.connections == 1  # the message went over the validated connection
        assert len(handler.received) == 1


async def test_a_host_that_cannot_be_reached_is_an_error_with_its_reason() -> None:
    port = free_port()  # nothing listens there
    async with open_spooler(options(port)) as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state(transport="smtp") == {"smtp": "error"}
        host = sp.host("smtp")
        assert host.last_error.startswith(
            f"validate_state raised NetworkError: cannot connect to {HOST}:{port}: "
        ), host.last_error
        row = sp.status["smtp"]
        assert row.status_code & StatusCode.FAILURE
        assert (row.status_string or "").startswith(
            f"cannot relay via {HOST}:{port}: x-spoolbox; cannot connect"
        )


async def test_a_refusing_greeting_is_the_reason_and_a_later_good_answer_clears_it() -> None:
    answer = [b"554 5.7.1 no relaying for you\r\n"]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer[0])
        await writer.drain()
        if answer[0].startswith(b"554"):
            return
        await reader.readline()  # EHLO
        writer.write(b"250 test.invalid\r\n")
        await writer.drain()
        while line := await reader.readline():
            if line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state(transport="smtp") == {"smtp": "error"}
        assert "smtp; 554 5.7.1 no relaying for you (the greeting)" in sp.host("smtp").last_error
        assert sp.status["smtp"].status_code & StatusCode.FAILURE
        answer[0] = b"220 test.invalid ESMTP\r\n"
        assert await sp.validate_state(transport="smtp") == {"smtp": "ok"}
        assert not sp.status["smtp"].status_code & StatusCode.FAILURE
