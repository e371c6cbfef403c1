"""SMTP PIPELINING (RFC 2920) in the SMTP transport, against real servers on loopback.

With PIPELINING in the EHLO reply a transaction is two writes: MAIL, every RCPT and
DATA together, then (after 354) the content with the final dot.  The scripted servers
read the whole batch before they answer anything (a client that waits for a reply
would stall them), and count the reads it took; Postfix's smtp-sink checks the
dialogue against a real implementation.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from smtp_servers import (
    HOST,
    NO_PIPELINING_EHLO,
    SHORT,
    WAIT,
    Sink,
    greet,
    line,
    lockstep_server,
    open_spooler,
    options,
    read_commands,
    read_data,
    scripted_server,
    send,
    serve_rest,
    smtp_sink,
)

from spoolbox import (
    Address,
    MessageState,
    NewMessage,
    RecipientState,
)
from spoolbox.model import RecipientRecord

CONTENT = (
    b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hello\r\n"
    b"Message-ID: <hello@test>\r\n\r\nHello, Bob.\r\n.leading dot\r\n"
)
STUFFED = CONTENT.replace(b"\r\n.", b"\r\n..") + b".\r\n"
MAIL = b"MAIL FROM:<alice@example.org>"
OK = b"250 2.0.0 Ok\r\n"


def message(*names: str, content: bytes = CONTENT, null_sender: bool = False) -> NewMessage:
    """From alice, or from ``<>`` (no delivery report, so no extra transaction)."""
    return NewMessage(
        sender=None if null_sender else Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(f"SMTP:{n}@example.org") for n in names),
        content=content,
    )


async def send_with(
    opts: Mapping[str, Any], msg: NewMessage
) -> tuple[MessageState, list[RecipientRecord]]:
    async with open_spooler(opts) as sp:
        return await send(sp, msg)


def by_name(recs: list[RecipientRecord]) -> dict[str, RecipientRecord]:
    return {r.address.value.split("@")[0]: r for r in recs}


def rcpt(name: str) -> bytes:
    return b"RCPT TO:<%s@example.org>\r\n" % name.encode()


# -- the batch and the replies ------------------------------------------------------------------
async def test_replies_in_one_segment_are_all_read() -> None:
    seen: dict[str, Any] = {}
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        seen["batch"] = await read_commands(reader, 4)
        writer.write(OK + b"250 2.1.5 Ok\r\n" * 2 + b"354 go ahead\r\n")  # one segment
        await writer.drain()
        seen["data"] = await read_data(reader)
        writer.write(b"250 2.0.0 Ok: queued as X1\r\n")
        await writer.drain()
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("bob", "carol"))
        assert srv.connections == 1
    assert state is MessageState.SENT
    assert [(r.state, r.status) for r in recs] == [(RecipientState.DELIVERED, "2.0.0")] * 2
    assert recs[0].diagnostic == "smtp; 250 2.0.0 Ok: queued as X1"
    commands, reads = seen["batch"]
    assert [c.split(b" SIZE=")[0].rstrip(b"\r\n") for c in commands[:1]] == [MAIL]
    assert commands[1:] == [rcpt("bob"), rcpt("carol"), b"DATA\r\n"]
    assert reads == 1  # MAIL, both RCPTs and DATA in one write
    assert seen["data"] == (STUFFED, 1)  # the content and the final dot in one write
    assert rest == [b"QUIT\r\n"]  # in step to the end


@pytest.mark.parametrize(
    ("reply", "state", "status"),
    [
        (b"451 4.3.0 try again later", RecipientState.QUEUED, "4.3.0"),
        (b"550 5.7.1 sender refused", RecipientState.FAILED, "5.7.1"),
    ],
)
async def test_refused_mail_reads_the_other_replies_and_keeps_the_connection(
    reply: bytes, state: RecipientState, status: str
) -> None:
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        while True:
            await read_commands(reader, 4)
            writer.write(reply + b"\r\n" + b"503 5.5.1 need MAIL first\r\n" * 3)
            await writer.drain()
            cmd = await line(reader)
            rest.append(cmd)
            if not cmd.startswith(b"RSET"):
                break
            writer.write(OK)
            await writer.drain()
        writer.write(b"221 bye\r\n")
        await writer.drain()

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        sent = [await send(sp, message("bob", "carol", null_sender=True))]
        if state is RecipientState.FAILED:  # (after a 4xx the destination waits a while)
            sent.append(await send(sp, message("dave", "erin", null_sender=True)))
    assert srv.connections == 1  # kept: every reply was read, the dialogue is in step
    assert rest == [b"RSET\r\n"] * (len(sent) - 1) + [b"QUIT\r\n"]
    for _, recs in sent:
        for r in recs:
            assert (r.state, r.status) == (state, status)
            assert r.diagnostic == f"smtp; {reply.decode()} (in reply to MAIL FROM:<>)"


async def test_rcpt_refusals_are_per_recipient() -> None:
    got: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 5)
        writer.write(
            OK
            + b"250 2.1.5 Ok\r\n"
            + b"550 5.1.1 <gone@example.org>: no such user\r\n"
            + b"451 4.2.0 greylisted, come back later\r\n"
            + b"354 go ahead\r\n"
        )
        await writer.drain()
        got.append((await read_data(reader))[0])
        writer.write(b"250 2.0.0 Ok: queued\r\n")
        await writer.drain()
        await serve_rest(reader, writer, [])

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("ok", "gone", "grey"))
    by = by_name(recs)
    assert (by["ok"].state, by["ok"].status) == (RecipientState.DELIVERED, "2.0.0")
    assert (by["gone"].state, by["gone"].status) == (RecipientState.FAILED, "5.1.1")
    assert by["gone"].diagnostic == "smtp; 550 5.1.1 <gone@example.org>: no such user"
    assert (by["grey"].state, by["grey"].status) == (RecipientState.QUEUED, "4.2.0")
    assert by["grey"].diagnostic == "smtp; 451 4.2.0 greylisted, come back later"
    assert got == [STUFFED]
    assert state is not MessageState.SENT


async def test_no_recipient_accepted_but_354_sends_only_the_final_dot() -> None:
    after_354: list[bytes] = []
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 4)
        writer.write(OK + b"550 5.1.1 no such user\r\n" * 2 + b"354 go ahead\r\n")
        await writer.drain()
        after_354.append(await line(reader))
        writer.write(b"554 5.5.1 no valid recipients\r\n")
        await writer.drain()
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("x", "y"))
    assert after_354 == [b".\r\n"]  # no content
    assert rest == [b"QUIT\r\n"]  # the reply to the dot was read: still in step
    assert state is MessageState.FAILED
    assert [(r.state, r.status) for r in recs] == [(RecipientState.FAILED, "5.1.1")] * 2


async def test_no_recipient_accepted_and_data_refused_keeps_the_connection() -> None:
    batches: list[list[bytes]] = []
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        commands, _ = await read_commands(reader, 3)
        batches.append(commands)
        writer.write(OK + b"550 5.1.1 no such user\r\n" + b"503 5.5.1 no valid recipients\r\n")
        await writer.drain()
        rest.append(await line(reader))  # RSET: the session is not clean after a refusal
        writer.write(OK)
        await writer.drain()
        commands, _ = await read_commands(reader, 3)
        batches.append(commands)
        writer.write(OK + b"250 2.1.5 Ok\r\n354 go ahead\r\n")
        await writer.drain()
        await read_data(reader)
        writer.write(b"250 2.0.0 Ok: queued\r\n")
        await writer.drain()
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        first = await send(sp, message("nobody", null_sender=True))
        second = await send(sp, message("bob", null_sender=True))
    assert srv.connections == 1
    assert first[0] is MessageState.FAILED and first[1][0].status == "5.1.1"
    assert second[0] is MessageState.SENT
    assert rest == [b"RSET\r\n", b"QUIT\r\n"]
    assert [b[1:] for b in batches] == [[rcpt("nobody"), b"DATA\r\n"], [rcpt("bob"), b"DATA\r\n"]]


async def test_421_to_rcpt_defers_everything_open() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 5)
        writer.write(OK + b"550 5.1.1 no such user\r\n250 2.1.5 Ok\r\n421 4.3.2 shutting down\r\n")
        await writer.drain()

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("gone", "a", "b"))
    by = by_name(recs)
    assert (by["gone"].state, by["gone"].status) == (RecipientState.FAILED, "5.1.1")
    for name in ("a", "b"):  # a was accepted, but nothing is delivered before the dot
        assert (by[name].state, by[name].status) == (RecipientState.QUEUED, "4.3.2")
        assert by[name].diagnostic == (
            "smtp; 421 4.3.2 shutting down (in reply to RCPT TO:<b@example.org>)"
        )
    assert state is MessageState.DEFERRED


async def test_connection_dropped_after_the_mail_reply() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 4)
        writer.write(OK)
        await writer.drain()
        writer.transport.abort()

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("a", "b"))
    assert state is MessageState.DEFERRED
    for r in recs:
        assert (r.state, r.status) == (RecipientState.QUEUED, "4.4.2")
        assert "lost (RCPT TO:<a@example.org>)" in (r.diagnostic or "")


async def test_server_that_never_answers_the_batch_times_out() -> None:
    batch: list[list[bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        batch.append((await read_commands(reader, 3))[0])
        await asyncio.Event().wait()

    async with scripted_server(script) as srv:
        opts = options(srv.port, timeouts={**SHORT, "mail": 0.3})
        state, recs = await send_with(opts, message("bob"))
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.1")
    assert recs[0].diagnostic == (
        f"x-spoolbox; timed out after 0.3 s waiting for the reply of {HOST}:{srv.port} "
        "to MAIL FROM:<alice@example.org>"
    )
    assert batch and batch[0][1:] == [rcpt("bob"), b"DATA\r\n"]


async def test_a_reply_code_not_understood_closes_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 4)
        writer.write(OK + b"250 2.1.5 Ok\r\n" + b"299 whatever\r\n" + b"354 go ahead\r\n")
        await writer.drain()
        await asyncio.Event().wait()  # the client must hang up on its own

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("a", "b"))
    assert state is MessageState.DEFERRED
    assert [(r.state, r.status) for r in recs] == [(RecipientState.QUEUED, "4.5.0")] * 2
    assert "unexpected reply" in (recs[0].diagnostic or "")
    assert "299 whatever" in (recs[0].diagnostic or "")


async def test_cancel_during_pipelined_data() -> None:
    holding = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 3)
        writer.write(OK + b"250 2.1.5 Ok\r\n354 go ahead\r\n")
        await writer.drain()
        await read_data(reader)
        holding.set()
        await asyncio.Event().wait()  # never answers the final dot

    async with scripted_server(script) as srv:
        opts = options(srv.port, timeouts={**SHORT, "data_term": 60})
        async with open_spooler(opts) as sp:
            info = await sp.submit(message("bob"))
            async with asyncio.timeout(WAIT):
                await holding.wait()
            await sp.cancel(info.id)
            state = await sp.wait_for(info.id, timeout=WAIT)
            recs = await sp.store.recipients(info.id)
            after = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
    assert state is MessageState.CANCELLED
    assert recs[0].state is RecipientState.CANCELLED
    assert after["connections_open"] == 0


# -- with and without PIPELINING: who waits for what ----------------------------------------
@pytest.mark.parametrize("pipelining", [True, False])
async def test_commands_wait_for_replies_only_without_pipelining(pipelining: bool) -> None:
    ehlo = b"250-test.invalid\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    big = (b"x" * 76 + b"\r\n") * 30_000  # 2.3 MB: streamed in chunks
    async with (
        lockstep_server(ehlo if pipelining else NO_PIPELINING_EHLO) as log,
        open_spooler(options(log.port)) as sp,
    ):
        first = await send(sp, message("a", "b", "c"))
        second = await send(sp, message("d", content=b"Subject: big\r\n\r\n" + big))
    assert first[0] is MessageState.SENT and second[0] is MessageState.SENT
    assert log.messages == [CONTENT.replace(b"\r\n.", b"\r\n.."), b"Subject: big\r\n\r\n" + big]
    verbs = [c[:4] for c in log.commands]
    assert verbs[:1] == [b"EHLO"] and verbs[-1:] == [b"QUIT"]
    if pipelining:  # each RCPT and DATA came before the reply to MAIL
        assert [c[:4] for c in log.early] == [b"RCPT"] * 3 + [b"DATA", b"RCPT", b"DATA"]
    else:  # one command at a time, each after the reply to the one before
        assert log.early == []
        assert verbs[1:6] == [b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA"]


# -- Postfix smtp-sink ------------------------------------------------------------------------
@pytest.fixture(params=["pipelining", "no-pipelining"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Sink, bool]]:
    pipelining = request.param == "pipelining"
    extra = () if pipelining else ("-p",)  # -p: do not announce PIPELINING
    with smtp_sink(tmp_path / "sink.out", *extra) as running:
        yield running, pipelining


async def test_messages_through_postfix_smtp_sink(sink: tuple[Sink, bool]) -> None:
    running, pipelining = sink
    port, dump = running.port, running.dump
    n = 60
    big = b"Message-ID: <big@test>\r\n\r\n" + (b"y" * 98 + b"\r\n") * 15_000  # streamed
    contents = [
        b"Message-ID: <m%d@test>\r\nSubject: %d\r\n\r\n.body %d\r\n" % (i, i, i) for i in range(n)
    ]
    async with open_spooler(options(port, max_connections=3)) as sp:
        infos = [
            await sp.submit(message(f"u{i}", f"v{i}", f"w{i}", content=c))
            for i, c in enumerate(contents)
        ]
        infos.append(await sp.submit(message("big", content=big)))
        states = [await sp.wait_for(info.id, timeout=60) for info in infos]
        session = sp.host("smtp").session
        ext = [c.machine.extensions for c in session.pool.idle]  # type: ignore[union-attr]
    assert states == [MessageState.SENT] * (n + 1)
    assert ext and all(("pipelining" in e) is pipelining for e in ext)
    ids: set[str] = set()
    async with asyncio.timeout(WAIT):
        while len(ids) < n + 1:
            ids = set()
            for f in dump.iterdir():
                m = re.search(rb"(?im)^Message-ID: <([^>]+)>", f.read_bytes())
                if m:
                    ids.add(m.group(1).decode())
            await asyncio.sleep(0.05)
    assert ids == {f"m{i}@test" for i in range(n)} | {"big@test"}
    counts = re.findall(r"mesg=(\d+)", running.output())
    assert counts and int(counts[-1]) == n + 1


async def test_a_connection_that_failed_a_transaction_is_reset_before_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connection clean after a 250, idle past the fresh window (RSET), then a
    # transaction whose only recipient is greylisted (451; DATA refused): the next
    # message's MAIL must come after an RSET. It came straight after, the server
    # answered "503 nested MAIL command", and the message bounced (found by hand
    # against aiosmtpd; Postfix's smtpd answers the same).
    import spoolbox.transports.smtp.pool as pool_module

    monkeypatch.setattr(pool_module, "_FRESH", 0.05)
    seen: list[bytes] = []
    rest: list[bytes] = []

    async def transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands, _ = await read_commands(reader, 3)
        seen.extend(commands)
        writer.write(OK + b"250 2.1.5 Ok\r\n354 go ahead\r\n")
        await writer.drain()
        await read_data(reader)
        writer.write(b"250 2.0.0 Ok: queued\r\n")
        await writer.drain()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await transaction(reader, writer)
        seen.append(await line(reader))  # RSET: idle past the fresh window
        writer.write(OK)
        await writer.drain()
        commands, _ = await read_commands(reader, 3)
        seen.extend(commands)
        writer.write(OK + b"451 4.2.0 greylisted\r\n" + b"554 5.5.1 no valid recipients\r\n")
        await writer.drain()
        nested = await line(reader)
        seen.append(nested)
        if nested.startswith(b"MAIL"):  # (the bug) refused as Postfix does
            await read_commands(reader, 2)
            writer.write(b"503 5.5.1 Error: nested MAIL command\r\n" * 3)
            await writer.drain()
            return
        writer.write(OK)
        await writer.drain()
        await transaction(reader, writer)
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        first = await send(sp, message("bob", null_sender=True))
        await asyncio.sleep(0.2)
        second = await send(sp, message("later", null_sender=True))
        third = await send(sp, message("carol", null_sender=True))
    assert first[0] is MessageState.SENT
    assert second[0] is MessageState.DEFERRED and second[1][0].status == "4.2.0"
    assert third[0] is MessageState.SENT, third[1][0].diagnostic
    assert [c for c in seen if not c.startswith((b"MAIL", b"DATA"))] == [
        rcpt("bob"),
        b"RSET\r\n",
        rcpt("later"),
        b"RSET\r\n",
        rcpt("carol"),
    ]
    assert srv.connections == 1


async def test_503_to_mail_is_a_session_out_of_step_not_a_refusal() -> None:
    # "503 bad sequence" to MAIL says the session is out of step (a transaction left
    # open), nothing about the message: deferred, and the connection dropped; before,
    # the message bounced.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await read_commands(reader, 3)
        writer.write(
            b"503 5.5.1 Error: nested MAIL command\r\n" + b"503 5.5.1 Error: need MAIL\r\n" * 2
        )
        await writer.drain()
        await reader.read()  # until the client closes

    async with scripted_server(script) as srv:
        state, recs = await send_with(options(srv.port), message("bob", null_sender=True))
    assert state is MessageState.DEFERRED
    [rec] = recs
    assert rec.status == "4.5.0"
    assert "answered MAIL out of sequence (503 5.5.1 Error: nested MAIL command)" in (
        rec.diagnostic or ""
    )
