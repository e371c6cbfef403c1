"""Hostile SMTP clients: the listener refuses cleanly, queues nothing bad, stays up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from smtp_client import Raw, chunked

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig
from spoolbox.ingress import ListenerConfig, SubmissionListener

MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture
async def spooler() -> AsyncIterator[Spooler]:
    async with Spooler.open(SpoolerConfig(), idle=AlwaysIdle()) as sp:
        yield sp


@pytest.fixture
async def listener(spooler: Spooler) -> AsyncIterator[SubmissionListener]:
    lst = SubmissionListener(spooler.submit, ListenerConfig(port=0, hostname="mx.test"))
    await lst.start()
    yield lst
    await lst.stop(grace=1.0)


@pytest.fixture
async def raw(listener: SubmissionListener) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    r = Raw(reader, writer)
    assert (await r.reply()).startswith("220")
    yield r
    await r.close()


async def queued(sp: Spooler) -> list[tuple[Any, bytes]]:
    out = []
    for summary in await sp.store.list_messages(now=0):
        if not summary.info.is_report:
            out.append((summary, await sp.store.read_content(summary.info.id)))
    return out


async def still_serves(listener: SubmissionListener, spooler: Spooler) -> None:
    """A well-behaved client right after: served, and its message queued."""
    before = len(await queued(spooler))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    r = Raw(reader, writer)
    try:
        assert (await r.reply()).startswith("220")
        assert (await r.cmd(b"EHLO good.test")).startswith("250")
        assert (await r.cmd(b"MAIL FROM:<a@example.org>")).startswith("250")
        assert (await r.cmd(b"RCPT TO:<b@example.org>")).startswith("250")
        assert (await r.cmd(b"DATA")).startswith("354")
        assert (await r.cmd(MESSAGE + b".")).startswith("250")
    finally:
        await r.close()
    assert len(await queued(spooler)) == before + 1


async def test_overlong_command_lines(
    raw: Raw, listener: SubmissionListener, spooler: Spooler
) -> None:
    await raw.cmd(b"EHLO hostile.test")
    assert (await raw.cmd(b"NOOP " + b"x" * 600)).startswith("500")
    assert (await raw.cmd(b"MAIL FROM:<" + b"a" * 100_000 + b"@example.org>")).startswith("500")
    assert (await raw.cmd(b"NOOP")).startswith("250")  # the session survived
    await still_serves(listener, spooler)


async def test_pipelining_flood(raw: Raw, listener: SubmissionListener, spooler: Spooler) -> None:
    flood = b"EHLO flood.test\r\n" + b"NOOP\r\n" * 500
    flood += b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    await raw.send(flood)
    replies = await raw.replies(1 + 500 + 3)
    assert all(r.startswith("250") for r in replies[:-1])
    assert replies[-1].startswith("354")
    assert (await raw.cmd(MESSAGE + b".")).startswith("250")
    assert len(await queued(spooler)) == 1
    await still_serves(listener, spooler)


async def test_ten_thousand_recipients(
    raw: Raw, listener: SubmissionListener, spooler: Spooler
) -> None:
    await raw.cmd(b"EHLO many.test")
    await raw.cmd(b"MAIL FROM:<a@example.org>")
    await raw.send(b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(10_000)))
    replies = await raw.replies(10_000)
    assert sum(r.startswith("250") for r in replies) == 1000
    assert sum(r.startswith("452 4.5.3") for r in replies) == 9000
    assert (await raw.cmd(b"DATA")).startswith("354")
    assert (await raw.cmd(MESSAGE + b".")).startswith("250")
    [(summary, _)] = await queued(spooler)
    assert len(summary.recipients) == 1000
    assert listener.statistics()["rejected_recipient_limit"] == 9000
    await still_serves(listener, spooler)


async def test_non_ascii_commands_and_8bit_content(raw: Raw, spooler: Spooler) -> None:
    await raw.cmd(b"EHLO enc.test")
    # UTF-8 only after MAIL's SMTPUTF8 (RFC 6531), and nothing but UTF-8.
    assert (await raw.cmd("MAIL FROM:<jürgen@example.org>".encode())).startswith("553 5.6.7")
    assert (await raw.cmd(b"MAIL FROM:<a@example.org>\xff\xfe")).startswith("500")
    assert (await raw.cmd(b"\xc3\x28 garbage")).startswith("500")
    assert (await raw.cmd(b"MAIL FROM:<a@example.org>")).startswith("250")
    assert (await raw.cmd(b"RCPT TO:<b@example.org>")).startswith("250")
    await raw.cmd(b"DATA")
    body = b"Subject: bytes\r\n\r\n\xff\xfe not UTF-8 \xc3\x28, Latin-1 \xe9\r\n"
    assert (await raw.cmd(body + b".")).startswith("250")
    [(_, content)] = await queued(spooler)
    assert content.endswith(body)  # relayed byte for byte


async def test_nul_bytes_in_data(raw: Raw, listener: SubmissionListener, spooler: Spooler) -> None:
    await raw.cmd(b"EHLO nul.test")
    await raw.cmd(b"MAIL FROM:<a@example.org>")
    await raw.cmd(b"RCPT TO:<b@example.org>")
    await raw.cmd(b"DATA")
    reply = await raw.cmd(b"Subject: x\r\n\r\nab\x00cd\r\n.")
    assert reply.startswith("554 5.6.0")
    assert "NUL" in reply
    assert "Line 3" in reply
    assert await queued(spooler) == []
    await still_serves(listener, spooler)


async def test_bare_line_feeds_cannot_smuggle_a_second_message(
    raw: Raw, listener: SubmissionListener, spooler: Spooler
) -> None:
    await raw.cmd(b"EHLO smuggle.test")
    await raw.cmd(b"MAIL FROM:<a@example.org>")
    await raw.cmd(b"RCPT TO:<b@example.org>")
    await raw.cmd(b"DATA")
    smuggled = (
        b"Subject: innocent\r\n\r\nhello\n.\nMAIL FROM:<ceo@example.org>\n"
        b"RCPT TO:<victim@example.org>\nDATA\nSubject: smuggled\n\n"
    )
    # "\n.\n" does not end the data (only CRLF.CRLF does); the bare LFs are refused.
    reply = await raw.cmd(smuggled + b"\r\n.")
    assert reply.startswith("554 5.6.0")
    assert "bare CR or LF" in reply
    await raw.cmd(b"MAIL FROM:<a@example.org>")
    await raw.cmd(b"RCPT TO:<b@example.org>")
    await raw.cmd(b"DATA")
    assert (await raw.cmd(b"Subject: cr\r\n\r\none\rtwo\r\n.")).startswith("554 5.6.0")
    assert await queued(spooler) == []
    assert listener.statistics()["rejected_bad_data"] == 2


@pytest.mark.parametrize(
    "after",
    [
        "mail",
        "data-header",
        "data-body-no-dot",
        "data-half-crlf",
        "bdat-in-command",
        "bdat-mid-chunk",
        "bdat-before-last",
    ],
)
async def test_dropping_the_connection_queues_nothing(
    listener: SubmissionListener, spooler: Spooler, after: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    r = Raw(reader, writer)
    await r.reply()
    await r.cmd(b"EHLO drop.test")
    await r.cmd(b"MAIL FROM:<a@example.org>")
    if after.startswith("data"):
        await r.cmd(b"RCPT TO:<b@example.org>")
        assert (await r.cmd(b"DATA")).startswith("354")
        tail = {
            "data-header": b"Subject: part",
            "data-body-no-dot": MESSAGE,
            "data-half-crlf": MESSAGE + b".\r",
        }[after]
        await r.send(tail)
    elif after.startswith("bdat"):
        await r.cmd(b"RCPT TO:<b@example.org>")
        await r.send(
            {
                "bdat-in-command": b"BDAT 10",
                "bdat-mid-chunk": b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE[:20],
                "bdat-before-last": b"BDAT %d\r\n" % len(MESSAGE) + MESSAGE,
            }[after]
        )
        if after == "bdat-before-last":
            assert (await r.reply()) == f"250 2.0.0 {len(MESSAGE)} octets received"
    await r.close()
    await still_serves(listener, spooler)
    [(_, content)] = await queued(spooler)  # only the good client's message
    assert b"drop.test" not in content


async def test_header_injection_in_envelope(
    raw: Raw, listener: SubmissionListener, spooler: Spooler
) -> None:
    await raw.cmd(b"EHLO inj.test")
    for bad in (
        b"<a\rX-Injected: 1@example.org>",
        b"<a\x00b@example.org>",
        b"<a\x0bb@example.org>",
    ):
        assert (await raw.cmd(b"MAIL FROM:" + bad)).startswith("5")
    assert (await raw.cmd(b"MAIL FROM:<a@example.org>")).startswith("250")
    for bad in (
        b"<b\rX-Injected: 1@example.org>",
        b"<b@example.org>\rX-Injected: yes",
        b"<b\x00@example.org>",
        b"<b\x1b[31m@example.org>",
    ):
        assert (await raw.cmd(b"RCPT TO:" + bad)).startswith("5"), bad
    assert (await raw.cmd(b"RCPT TO:<b@example.org>")).startswith("250")
    await raw.cmd(b"DATA")
    assert (await raw.cmd(MESSAGE + b".")).startswith("250")
    [(summary, content)] = await queued(spooler)
    assert [r.address.value for r in summary.recipients] == ["b@example.org"]
    assert b"X-Injected" not in content
    # Some are refused by the command parser (501/553) before reaching our address check.
    assert listener.statistics()["rejected_bad_address"] >= 3


async def test_helo_name_cannot_inject_into_the_trace_header(raw: Raw, spooler: Spooler) -> None:
    await raw.cmd(b"EHLO evil.test\rX-Injected: 1")
    await raw.cmd(b"MAIL FROM:<a@example.org>")
    await raw.cmd(b"RCPT TO:<b@example.org>")
    await raw.cmd(b"DATA")
    assert (await raw.cmd(MESSAGE + b".")).startswith("250")
    [(_, content)] = await queued(spooler)
    head = content.split(b"\r\n\r\n", 1)[0]
    assert b"\rX-Injected" not in head
    assert b"\nX-Injected" not in head
    assert head.startswith(b"Received: from evil.testX-Injected:1 ([127.0.0.1])\r\n\tby ")


async def test_garbage_then_disconnect_leaves_the_listener_up(
    listener: SubmissionListener, spooler: Spooler
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    r = Raw(reader, writer)
    await r.reply()
    await r.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n" * 3)
    await r.send(b"".join(b"BOGUS%d\r\n" % i for i in range(10)))
    # The listener hangs up after too many unknown commands; reading until EOF must end.
    rest = await reader.read()
    assert b"502 5.5.1 Too many unrecognized commands" in rest
    await r.close()
    await still_serves(listener, spooler)


async def test_bdat_chunks_cannot_smuggle_commands_or_a_second_message(
    raw: Raw, listener: SubmissionListener, spooler: Spooler
) -> None:
    """A refused BDAT's octets (no transaction yet) are read and dropped, never run as
    the commands they look like; a chunk with bare LFs hiding a second message is
    refused (554), and the chunk pipelined after it finds no transaction (503),
    its octets dropped as well; nothing is queued, and the listener serves on."""
    await raw.cmd(b"EHLO smuggle.test")
    hidden = b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.org>\r\nQUIT\r\n"
    assert (await raw.cmd(b"BDAT %d LAST\r\n" % len(hidden) + hidden + b"NOOP")) == (
        "503 5.5.1 Error: need RCPT command"
    )
    assert (await raw.reply()) == "250 2.0.0 OK"  # the NOOP: in step, QUIT never ran
    smuggled = b"Subject: innocent\r\n\r\nhello\n.\nMAIL FROM:<ceo@example.org>\n"
    tail = b"Subject: smuggled\r\n\r\nx\r\n"
    await raw.send(chunked(b"a@example.org", b"b@example.org", smuggled, tail))
    said = await raw.replies(4)
    assert said[2].startswith("554 5.6.0 Line 3 of the message contains a bare CR or LF"), said
    assert said[3] == "503 5.5.1 Error: need RCPT command"
    assert await queued(spooler) == []
    assert listener.statistics()["rejected_bad_data"] == 1
    await still_serves(listener, spooler)


async def test_an_idle_client_in_the_middle_of_a_chunk_gets_421(spooler: Spooler) -> None:
    """A chunk that promises more octets than ever come: the idle timeout ends it."""
    config = ListenerConfig(port=0, hostname="mx.test", idle_timeout=0.5)
    lst = SubmissionListener(spooler.submit, config)
    await lst.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        r = Raw(reader, writer)
        await r.reply()
        await r.cmd(b"EHLO slow.test")
        await r.cmd(b"MAIL FROM:<a@example.org>")
        await r.cmd(b"RCPT TO:<b@example.org>")
        await r.send(b"BDAT 1000000 LAST\r\n" + MESSAGE)
        reply = await r.reply()
        assert reply.startswith("421 4.4.2"), reply
        await r.close()
    finally:
        await lst.stop(grace=1.0)
    assert await queued(spooler) == []
