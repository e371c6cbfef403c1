"""The SMTP transport, through the real spooler, against real servers on loopback ports.

aiosmtpd (in the test's loop) for the normal and scripted behaviours, a raw asyncio
server for replies no real server sends, Postfix's smtp-sink for volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smtp_servers import (
    EHLO,
    FINISHED,
    HOST,
    SHORT,
    WAIT,
    Recorder,
    ServerInfo,
    Sink,
    aiosmtpd_server,
    free_port,
    line,
    open_spooler,
    options,
    scripted_server,
    send,
    smtp_dialogue,
    smtp_sink,
)

from spoolbox import (
    Address,
    MessageState,
    NewMessage,
    RecipientState,
)
from spoolbox.contract import Unconfigured
from spoolbox.model import RecipientRecord
from spoolbox.testing import check_provider
from spoolbox.transports.smtp import (
    DEFAULT_TIMEOUTS,
    DataEncoder,
    SMTPProvider,
    SMTPSettings,
    clean_text,
)
from spoolbox.transports.smtp.session import envelope_sender

CONTENT = (
    b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hello\r\n"
    b"Message-ID: <hello@test>\r\n\r\nHello, Bob.\r\n"
)


# -- helpers -------------------------------------------------------------------------------
def message(
    *rcpts: str, content: bytes = CONTENT, sender: str | None = "SMTP:alice@example.org"
) -> NewMessage:
    return NewMessage(
        sender=Address.parse(sender) if sender else None,
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=content,
    )


async def send_with(
    opts: Mapping[str, Any], msg: NewMessage
) -> tuple[MessageState, list[RecipientRecord], str]:
    async with open_spooler(opts) as sp:
        state, recs = await send(sp, msg)
        row = sp.status["smtp"]
    return state, recs, row.status_string or ""


# -- options ----------------------------------------------------------------------------------
def test_options_defaults_and_ports() -> None:
    s = SMTPSettings.from_config({"host": "mx.example.org"})
    assert (s.port, s.tls, s.verify, s.max_connections) == (587, "starttls", True, 10)
    assert dict(s.timeouts) == dict(DEFAULT_TIMEOUTS)
    assert DEFAULT_TIMEOUTS["data_term"] == 600 and DEFAULT_TIMEOUTS["data_init"] == 60
    assert DEFAULT_TIMEOUTS["mail"] == DEFAULT_TIMEOUTS["greeting"] == 60
    assert SMTPSettings.from_config({"host": "h", "tls": "implicit"}).port == 465
    assert SMTPSettings.from_config({"host": "h", "tls": "none"}).port == 25
    s = SMTPSettings.from_config(
        {"host": "h", "timeouts": {"rcpt": 7}, "data_term_timeout": 9, "max_connections": 5}
    )
    assert (s.timeouts["rcpt"], s.timeouts["data_term"], s.timeouts["mail"]) == (7, 9, 60)
    assert s.max_connections == 5
    # command_timeout and data_timeout set their steps; the finer keys win over them.
    s = SMTPSettings.from_config(
        {"host": "h", "command_timeout": 5, "data_timeout": 8, "rcpt_timeout": 2}
    )
    assert {k: s.timeouts[k] for k in ("greeting", "mail", "data_init", "rcpt")} == {
        "greeting": 5,
        "mail": 5,
        "data_init": 5,
        "rcpt": 2,
    }
    assert (s.timeouts["data_block"], s.timeouts["data_term"], s.timeouts["connect"]) == (8, 8, 30)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"host": "h", "hots": "x"}, "'hots'"),
        ({"host": "h", "tls": "ssl"}, "'tls'"),
        ({"host": "h", "port": 0}, "'port'"),
        ({"host": "h", "port": True}, "'port'"),
        ({"host": "h", "verify": "no"}, "'verify'"),
        ({"host": "h", "timeouts": {"data": 3}}, "'data'"),
        ({"host": "h", "timeouts": {"rcpt": 0}}, "timeouts.rcpt"),
        ({"host": "h", "timeouts": {"rcpt": 1}, "rcpt_timeout": 2}, "given twice"),
        ({"host": "h", "command_timeout": 0}, "'command_timeout'"),
        ({"host": "h", "data_timeout": "soon"}, "'data_timeout'"),
        ({"host": "h", "max_connections": 0}, "'max_connections'"),
        ({"host": "h", "idle_timeout": 0}, "'idle_timeout' must be seconds, from 0.1 to 3600"),
        ({"host": "h", "helo_name": "a b"}, "'helo_name'"),
        ({"host": "h", "tls": "none", "username": "u", "password": "p"}, "plaintext"),
    ],
)
def test_bad_options_are_refused_naming_the_key(config: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        SMTPSettings.from_config(config)


def test_missing_host_and_half_credentials_are_unconfigured() -> None:
    with pytest.raises(Unconfigured) as err:
        SMTPSettings.from_config({"port": 25})
    assert err.value.missing == ("host",)
    with pytest.raises(Unconfigured) as err:
        SMTPSettings.from_config({"host": "h", "username": "u"})
    assert err.value.missing == ("password",)
    s = SMTPSettings.from_config(
        {"host": "h", "tls": "none", "username": "u", "password": "p", "allow_plain_auth": True}
    )
    assert s.username == "u"


async def test_auth_over_plaintext_is_refused_at_logon() -> None:
    opts = {"host": HOST, "port": 25, "tls": "none", "username": "u", "password": "p"}
    async with open_spooler(opts) as sp:
        host = sp.host("smtp")
        async with asyncio.timeout(WAIT):
            while host.last_error is None:
                await asyncio.sleep(0.01)
        assert host.session is None
        assert "plaintext" in host.last_error and "allow_plain_auth" in host.last_error


# -- the DATA stream ----------------------------------------------------------------------------
def unstuff(stream: bytes) -> bytes:
    assert stream.endswith(b".\r\n")
    body = stream[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)


@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=12))
def test_data_encoder_is_chunking_independent(content: bytes, cuts: list[int]) -> None:
    whole = DataEncoder()
    expected = whole.feed(content) + whole.finish()
    enc = DataEncoder()
    out = b""
    pos = 0
    for n in cuts:
        out += enc.feed(content[pos : pos + n])
        pos += n
    out += enc.feed(content[pos:]) + enc.finish()
    assert out == expected
    # Every line ends CRLF, no line is a lone dot, and unstuffing gives the content back.
    normalized = re.sub(rb"\r\n|\n|\r", b"\r\n", content)
    if normalized and not normalized.endswith(b"\r\n"):
        normalized += b"\r\n"
    assert b"\r\n.\r\n" not in b"\r\n" + out[:-3]
    assert unstuff(out) == normalized


def test_data_encoder_examples() -> None:
    enc = DataEncoder()
    assert enc.feed(b".a\nb\r") + enc.feed(b"\n.c\r") + enc.finish() == (
        b"..a\r\nb\r\n..c\r\n.\r\n"
    )
    assert DataEncoder().finish() == b".\r\n"


def test_clean_text_removes_controls_and_bad_bytes() -> None:
    junk = b"5.1.1 \xff\xfe bad \x1b[31mred\x00".decode("utf-8", "surrogateescape")
    text = clean_text(junk)
    assert "\x1b" not in text and "\x00" not in text
    assert "\ufffd" in text and "red" in text
    text.encode("utf-8")  # storable


# -- delivery through aiosmtpd -------------------------------------------------------------
async def test_message_is_relayed_and_every_recipient_delivered() -> None:
    rec = Recorder()
    async with aiosmtpd_server(rec) as srv:
        state, recs, row = await send_with(
            options(srv.port), message("SMTP:bob@example.org", "SMTP:carol@example.org")
        )
    assert state is MessageState.SENT
    assert [r.state for r in recs] == [RecipientState.DELIVERED] * 2
    assert all(r.status == "2.0.0" for r in recs)
    assert recs[0].diagnostic == "smtp; 250 2.0.0 Ok: queued as TEST"
    assert len(rec.received) == 1
    got = rec.received[0]
    assert got.mail_from == "alice@example.org"
    assert got.rcpt_tos == ["bob@example.org", "carol@example.org"]
    assert got.content == CONTENT
    assert "2 sent" in row


async def test_null_sender_and_content_conversion() -> None:
    rec = Recorder()
    content = b"Subject: dots\n\n.hidden line\n..two\nend"  # bare LF, leading dots, no EOL
    async with aiosmtpd_server(rec) as srv:
        state, _, _ = await send_with(
            options(srv.port), message("SMTP:bob@example.org", sender=None, content=content)
        )
    assert state is MessageState.SENT
    assert rec.received[0].mail_from == "<>"
    assert rec.received[0].content == content.replace(b"\n", b"\r\n") + b"\r\n"


async def test_a_local_sender_goes_out_qualified_with_the_host_name() -> None:
    # `spoolbox init`'s default sender is MAILDIR:postmaster; `spoolbox send` shows it
    # as From: postmaster@<hostname>.  Over SMTP it is that address, not the null
    # sender (which servers keep for delivery reports), as Postfix appends myorigin.
    rec = Recorder()
    msg = message("SMTP:bob@example.org", sender="MAILDIR:postmaster")
    async with aiosmtpd_server(rec) as srv:
        opts = options(srv.port)
        async with open_spooler(opts, hostname="mail.example.net") as sp:
            state, _ = await send(sp, msg)
    assert state is MessageState.SENT
    assert rec.received[0].mail_from == "postmaster@mail.example.net"


@pytest.mark.parametrize("hostname", ["vm", "mail.example.net"])
async def test_a_local_sender_under_a_host_name_not_fully_qualified_is_warned_of(
    hostname: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A relay may refuse MAIL FROM:<postmaster@vm> (Postfix: reject_non_fqdn_sender):
    # said once a logon, when a local sender first goes out so.
    caplog.set_level(logging.WARNING)
    rec = Recorder()
    msg = message("SMTP:bob@example.org", sender="MAILDIR:postmaster")
    async with aiosmtpd_server(rec) as srv:
        opts = options(srv.port)
        async with open_spooler(opts, hostname=hostname) as sp:
            state, _ = await send(sp, msg)
            await send(sp, message("SMTP:bob@example.org", sender="MAILDIR:postmaster"))
            await send(sp, message("SMTP:bob@example.org"))  # an SMTP sender: nothing to say
    assert state is MessageState.SENT
    assert rec.received[0].mail_from == f"postmaster@{hostname}"
    warned = [r.getMessage() for r in caplog.records if "not fully qualified" in r.getMessage()]
    if "." in hostname:
        assert warned == []
    else:
        assert len(warned) == 1, warned
        assert "MAIL FROM:<postmaster@vm>" in warned[0], warned
        assert "set hostname in the profile" in warned[0], warned


def test_envelope_sender_of_each_kind_of_sender() -> None:
    origin = "mail.example.net"
    assert envelope_sender(Address.parse("SMTP:alice@example.org"), origin) == "alice@example.org"
    assert envelope_sender(None, origin) == ""  # delivery reports: <>
    assert envelope_sender(Address.parse("MAILDIR:postmaster"), origin) == f"postmaster@{origin}"
    assert envelope_sender(Address.parse("MAILDIR:first.last"), origin) == f"first.last@{origin}"
    assert envelope_sender(Address.parse("SMS:+15551234567"), origin) == f"+15551234567@{origin}"
    # No SMTP form: not a dot-atom local part (spaces, a leading dot, non-ASCII, an @).
    for value in ("two words", ".dot", "dot.", "a..b", "jos\u00e9", "x@y"):
        assert envelope_sender(Address("MAILDIR", value), origin) == "", value


async def test_8bit_content_is_declared_8bitmime() -> None:
    rec = Recorder()
    content = "Subject: é\r\n\r\nvoilà\r\n".encode()
    async with aiosmtpd_server(rec) as srv:
        state, _, _ = await send_with(
            options(srv.port), message("SMTP:bob@example.org", content=content)
        )
    assert state is MessageState.SENT
    assert rec.received[0].content == content
    assert "BODY=8BITMIME" in rec.received[0].mail_options
    assert any(o.startswith("SIZE=") for o in rec.received[0].mail_options)


async def test_rcpt_replies_map_to_per_recipient_results() -> None:
    rec = Recorder(
        rcpt_replies={
            "busy@example.org": "450 4.2.1 mailbox busy",
            "gone@example.org": "550 5.1.1 no such user",
            "old@example.org": "451 try later",
            "bad@example.org": "553 not here",
        }
    )
    rcpts = ("ok", "busy", "gone", "old", "bad")
    async with aiosmtpd_server(rec) as srv:
        state, recs, row = await send_with(
            options(srv.port), message(*(f"SMTP:{r}@example.org" for r in rcpts))
        )
    assert state is MessageState.DEFERRED
    by = {r.address.value.split("@")[0]: r for r in recs}
    assert by["ok"].state is RecipientState.DELIVERED
    assert (by["busy"].state, by["busy"].status) == (RecipientState.QUEUED, "4.2.1")
    assert by["busy"].diagnostic == "smtp; 450 4.2.1 mailbox busy"
    assert (by["gone"].state, by["gone"].status) == (RecipientState.FAILED, "5.1.1")
    assert "no such user" in (by["gone"].diagnostic or "")
    assert (by["old"].state, by["old"].status) == (RecipientState.QUEUED, "4.0.0")
    assert (by["bad"].state, by["bad"].status) == (RecipientState.FAILED, "5.0.0")
    assert rec.received[0].rcpt_tos == ["ok@example.org"]
    assert "last error" in row


@pytest.mark.parametrize(
    ("reply", "state", "status"),
    [
        ("554 5.6.0 content rejected", RecipientState.FAILED, "5.6.0"),
        ("452 4.3.1 out of space", RecipientState.QUEUED, "4.3.1"),
    ],
)
async def test_data_refusal_applies_to_every_accepted_recipient(
    reply: str, state: RecipientState, status: str
) -> None:
    rec = Recorder(data_reply=reply, rcpt_replies={"x@example.org": "550 5.1.1 unknown"})
    async with aiosmtpd_server(rec) as srv:
        _, recs, _ = await send_with(
            options(srv.port),
            message("SMTP:a@example.org", "SMTP:b@example.org", "SMTP:x@example.org"),
        )
    assert [(r.state, r.status) for r in recs[:2]] == [(state, status)] * 2
    assert reply.split(" ", 2)[2] in (recs[0].diagnostic or "")
    assert (recs[2].state, recs[2].status) == (RecipientState.FAILED, "5.1.1")


async def test_connection_dropped_at_end_of_data_leaves_message_queued() -> None:
    rec = Recorder(drop_at_data=True)
    async with aiosmtpd_server(rec) as srv:
        state, recs, _ = await send_with(options(srv.port), message("SMTP:bob@example.org"))
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.2")
    assert "lost" in (recs[0].diagnostic or "")


async def test_server_that_never_answers_the_final_dot_times_out() -> None:
    rec = Recorder(stall_data=True)
    async with aiosmtpd_server(rec) as srv:
        opts = options(srv.port, timeouts={**SHORT, "data_term": 0.3})
        state, recs, _ = await send_with(opts, message("SMTP:bob@example.org"))
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.1")
    assert "timed out after 0.3 s" in (recs[0].diagnostic or "")
    assert rec.received == []


async def test_message_over_max_message_size_fails_without_connecting() -> None:
    rec = Recorder()
    async with aiosmtpd_server(rec) as srv:
        _, recs, _ = await send_with(
            options(srv.port, max_message_size=50), message("SMTP:bob@example.org")
        )
        assert srv.connections == 0
    assert (recs[0].state, recs[0].status) == (RecipientState.FAILED, "5.3.4")
    assert "max_message_size" in (recs[0].diagnostic or "")


async def test_message_over_the_servers_size_fails_before_mail_from() -> None:
    rec = Recorder()
    async with aiosmtpd_server(rec, data_size_limit=100) as srv:
        _, recs, _ = await send_with(
            options(srv.port), message("SMTP:bob@example.org", content=CONTENT * 3)
        )
    assert (recs[0].state, recs[0].status) == (RecipientState.FAILED, "5.3.4")
    assert "SIZE" in (recs[0].diagnostic or "")
    assert rec.received == []


async def test_connections_are_reused_up_to_max_connections() -> None:
    rec = Recorder()
    async with (
        aiosmtpd_server(rec) as srv,
        open_spooler(options(srv.port, max_connections=2)) as sp,
    ):
        infos = [
            await sp.submit(message(f"SMTP:r{i}@example.org", content=CONTENT + b"%d\r\n" % i))
            for i in range(20)
        ]
        states = [await sp.wait_for(i.id, timeout=WAIT) for i in infos]
        status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
        assert states == [MessageState.SENT] * 20
        assert len(rec.received) == 20
        assert 1 <= srv.connections <= 2
        assert status["connections_opened"] == srv.connections
        assert "20 sent" in (sp.status["smtp"].status_string or "")


async def test_a_connection_closed_by_the_server_while_idle_is_replaced() -> None:
    rec = Recorder()
    async with (
        aiosmtpd_server(rec) as srv,
        open_spooler(options(srv.port, max_connections=1)) as sp,
    ):
        state, _ = await send(sp, message("SMTP:a@example.org"))
        assert state is MessageState.SENT
        for proto in srv.protocols:  # the server times the idle connection out
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.close()
        state, _ = await send(sp, message("SMTP:b@example.org"))
        assert state is MessageState.SENT
        assert srv.connections == 2
        assert [r.rcpt_tos for r in rec.received] == [["a@example.org"], ["b@example.org"]]


async def _row_until(sp: Any, words: str, within: float) -> str:
    """The smtp row's text once it has ``words`` (or as it is after ``within`` s)."""
    said = ""
    for _ in range(int(within / 0.05)):
        said = sp.status["smtp"].status_string or ""
        if words in said:
            break
        await asyncio.sleep(0.05)
    return said


async def test_an_idle_connection_is_closed_with_quit_after_idle_timeout() -> None:
    rec = Recorder()
    async with (
        aiosmtpd_server(rec) as srv,
        open_spooler(options(srv.port, idle_timeout=2.0)) as sp,
    ):
        assert (await send(sp, message("SMTP:a@example.org")))[0] is MessageState.SENT
        session = sp.host("smtp").session
        assert "connected to" in (sp.status["smtp"].status_string or "")  # for 2 s
        said = await _row_until(sp, "idle, relaying via", within=10)
        assert said.startswith(f"idle, relaying via {HOST}:{srv.port}, 1 sent"), said
        assert session.status_object()["connections_open"] == 0  # type: ignore[union-attr]
        assert rec.quits == 1  # closed politely, without another message
        # The next message opens a new connection.
        assert (await send(sp, message("SMTP:b@example.org")))[0] is MessageState.SENT
        assert srv.connections == 2


async def test_the_row_stops_saying_connected_once_the_server_closed_the_connection() -> None:
    """A server that drops an idle connection (it timed the client out, or stopped):
    the status row stops saying "connected" within the sweep's 5 s, long before the
    connection's own idle_timeout (30 s by default), and without a message to send."""
    rec = Recorder()
    async with aiosmtpd_server(rec) as srv, open_spooler(options(srv.port)) as sp:
        assert (await send(sp, message("SMTP:a@example.org")))[0] is MessageState.SENT
        assert (sp.status["smtp"].status_string or "").startswith("connected to")
        for proto in srv.protocols:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.close()
        said = await _row_until(sp, "idle, relaying via", within=15)
        assert said.startswith("idle, relaying via"), said
        assert rec.quits == 0  # nothing to say QUIT to


async def test_cancel_aborts_the_send_in_progress() -> None:
    rec = Recorder(stall_data=True)
    async with aiosmtpd_server(rec) as srv:
        opts = options(srv.port, timeouts={**SHORT, "data_term": 60})
        async with open_spooler(opts) as sp:
            info = await sp.submit(message("SMTP:bob@example.org"))
            async with asyncio.timeout(WAIT):  # until the server holds the final dot
                await rec.data_started.wait()
            status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
            assert status["connections_open"] == 1
            await sp.cancel(info.id)
            state = await sp.wait_for(info.id, timeout=WAIT)
            recs = await sp.store.recipients(info.id)
            after = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
    assert state is MessageState.CANCELLED
    assert recs[0].state is RecipientState.CANCELLED
    assert after["connections_open"] == 0  # the connection of the cancelled send was closed
    assert rec.received == []


async def test_conformance() -> None:
    rec = Recorder()
    async with aiosmtpd_server(rec) as srv:
        report = await check_provider(
            SMTPProvider, address="SMTP:x@example.org", options=options(srv.port)
        )
    assert report.ok, report.text()
    assert rec.received and rec.received[0].rcpt_tos == ["x@example.org"]


# -- network failures and hostile servers ------------------------------------------------------
async def test_connection_refused_defers_with_4_4_1() -> None:
    state, recs, row = await send_with(options(free_port()), message("SMTP:bob@example.org"))
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.1")
    assert "cannot connect" in (recs[0].diagnostic or "")
    assert "cannot connect" in row


async def test_a_refused_connection_names_no_relay_and_a_refusing_server_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolbox.delivery")
    await send_with(options(free_port()), message("SMTP:bob@example.org"))
    rec = Recorder(data_reply="451 4.3.0 try later")
    async with aiosmtpd_server(rec) as srv:
        await send_with(options(srv.port), message("SMTP:carol@example.org"))
    lines = [r.getMessage() for r in caplog.records if "status=deferred" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "to=<bob@example.org>, transport=smtp, relay=none," in lines[0]
    assert "to=<carol@example.org>, transport=smtp, relay=127.0.0.1," in lines[1]


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def test_server_that_never_greets_times_out() -> None:
    async with scripted_server(stall) as srv:
        opts = options(srv.port, timeouts={**SHORT, "greeting": 0.3})
        state, recs, _ = await send_with(opts, message("SMTP:bob@example.org"))
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.1")
    assert "timed out after 0.3 s waiting for the greeting" in (recs[0].diagnostic or "")


async def test_connection_dropped_in_the_middle_of_data() -> None:
    got: list[bytes] = []

    async def take_some_and_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        got.append(await reader.read(1000))
        writer.transport.abort()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await smtp_dialogue(reader, writer, after_354=take_some_and_drop)

    big = CONTENT + b"x" * 70 + b"\r\n"
    big = big * (3_000_000 // len(big))  # streamed (over 1 MiB), dropped early
    async with scripted_server(script) as srv:
        state, recs, _ = await send_with(
            options(srv.port), message("SMTP:bob@example.org", content=big)
        )
    assert got and got[0]
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.4.2")


@pytest.mark.parametrize(
    ("greeting", "ehlo", "words"),
    [
        (b"hello, I am not an SMTP server\r\n", EHLO, "Malformed"),
        (b"220 fine\r\n", b"250-ok\r\nGARBAGE\r\n250 done\r\n", "Malformed"),
        (b"220 fine\r\n", None, "too long"),
        (b"554 5.7.1 go away\r\n", EHLO, "554 5.7.1 go away"),
    ],
)
async def test_hostile_replies_defer_with_a_clear_diagnostic(
    greeting: bytes, ehlo: bytes | None, words: str
) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await line(reader)
        while True:  # a multi-line reply that never ends
            writer.write(b"250-" + b"x" * 200 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if ehlo is None:
            await endless(reader, writer)
        else:
            await smtp_dialogue(reader, writer, greeting=greeting, ehlo=ehlo)

    async with scripted_server(script) as srv:
        state, recs, row = await send_with(options(srv.port), message("SMTP:bob@example.org"))
    assert state is MessageState.DEFERRED
    assert recs[0].state is RecipientState.QUEUED and (recs[0].status or "").startswith("4.")
    assert words in (recs[0].diagnostic or "")
    assert words in row


async def test_huge_size_announcement_and_8bit_junk_replies() -> None:
    received: list[bytes] = []
    ehlo = b"250-test.invalid\r\n250-SIZE 2147483648\r\n250 8BITMIME\r\n"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await smtp_dialogue(reader, writer, ehlo=ehlo, received=received)

    async with scripted_server(script) as srv:
        state, recs, _ = await send_with(options(srv.port), message("SMTP:bob@example.org"))
    assert state is MessageState.SENT and recs[0].state is RecipientState.DELIVERED
    assert received == [CONTENT]

    junk = b"550 5.1.1 \xff\xfe\x80 no \x1b[2Jway\x07\r\n"

    async def junk_script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await smtp_dialogue(reader, writer, rcpt=junk)

    async with scripted_server(junk_script) as srv:
        state, recs, row = await send_with(options(srv.port), message("SMTP:bob@example.org"))
    assert (recs[0].state, recs[0].status) == (RecipientState.FAILED, "5.1.1")
    diag = recs[0].diagnostic or ""
    assert diag.startswith("smtp; 550 5.1.1") and "way" in diag and "\ufffd" in diag
    assert not re.search("[\x00-\x1f\x7f]", diag)
    assert "way" in row


async def test_421_at_rcpt_defers_the_rest() -> None:
    rec = Recorder(rcpt_replies={"b@example.org": "421 4.3.2 shutting down"})
    async with aiosmtpd_server(rec) as srv:
        _, recs, _ = await send_with(
            options(srv.port),
            message("SMTP:a@example.org", "SMTP:b@example.org", "SMTP:c@example.org"),
        )
    assert [(r.state, r.status) for r in recs] == [(RecipientState.QUEUED, "4.3.2")] * 3
    assert rec.received == []


@pytest.mark.parametrize(
    ("reply", "held"),
    [("451 4.2.0 greylisted, try again later", False), ("421 4.3.2 shutting down", True)],
    ids=["451-one-mailbox", "421-the-server"],
)
async def test_one_mailbox_deferred_at_rcpt_does_not_hold_its_domain(
    reply: str, held: bool
) -> None:
    # A message to one greylisted mailbox is deferred; the next message to the same
    # domain goes out at once (the server answered: it is up).  A 421 is the whole
    # server's: the domain waits for the retry (an hour here), the message not tried.
    rec = Recorder(rcpt_replies={"later@example.org": reply})
    async with aiosmtpd_server(rec) as srv, open_spooler(options(srv.port)) as sp:
        state, _ = await send(sp, message("SMTP:later@example.org"))
        assert state is MessageState.DEFERRED
        if held:
            info = await sp.submit(message("SMTP:bob@example.org"))
            assert await sp.wait_for(info.id, FINISHED, timeout=WAIT) is MessageState.DEFERRED
            (rec_bob,) = await sp.store.recipients(info.id)
            assert rec_bob.attempts == 0, rec_bob
        else:
            state, _ = await send(sp, message("SMTP:bob@example.org"))
            assert state is MessageState.SENT
    assert [m.rcpt_tos for m in rec.received] == ([] if held else [["bob@example.org"]])


# -- TLS and AUTH -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> Any:
    # Only the tests that need a certificate skip without trustme, not the whole module.
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the TLS certs")
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def ca_file(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@contextlib.asynccontextmanager
async def tls_server(
    mode: str, ctx: ssl.SSLContext, rec: Recorder, **kw: Any
) -> AsyncIterator[ServerInfo]:
    if mode == "starttls":
        async with aiosmtpd_server(rec, starttls=ctx, **kw) as srv:
            yield srv
    else:
        async with aiosmtpd_server(rec, implicit=ctx, **kw) as srv:
            yield srv


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_with_a_pinned_ca_delivers(
    mode: str, server_ctx: ssl.SSLContext, ca_file: str
) -> None:
    rec = Recorder()
    async with tls_server(mode, server_ctx, rec) as srv:
        state, recs, _ = await send_with(
            options(srv.port, tls=mode, ca_file=ca_file), message("SMTP:bob@example.org")
        )
    assert state is MessageState.SENT, recs[0].diagnostic
    assert rec.received[0].content == CONTENT


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_with_an_unknown_ca_defers_with_a_certificate_error(
    mode: str, server_ctx: ssl.SSLContext
) -> None:
    rec = Recorder()
    async with tls_server(mode, server_ctx, rec) as srv:
        state, recs, _ = await send_with(
            options(srv.port, tls=mode), message("SMTP:bob@example.org")
        )
    assert state is MessageState.DEFERRED
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.7.5")
    assert "certificate" in (recs[0].diagnostic or "")
    assert rec.received == []


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_on_uvloop_delivers_and_checks_the_certificate(
    mode: str, server_ctx: ssl.SSLContext, ca_file: str
) -> None:
    """The daemon's default loop is uvloop, whose transports and TLS hand-over
    (``loop.start_tls``) are its own: the connection's link works on it too."""
    import uvloop  # a test dependency (pyproject.toml): missing, the test fails

    async def main() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        rec = Recorder()
        async with tls_server(mode, server_ctx, rec) as srv:
            state, recs, _ = await send_with(
                options(srv.port, tls=mode, ca_file=ca_file), message("SMTP:bob@example.org")
            )
            assert state is MessageState.SENT, recs[0].diagnostic
            state, recs, _ = await send_with(
                options(srv.port, tls=mode), message("SMTP:carol@example.org")
            )
            assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.7.5")
        assert [r.content for r in rec.received] == [CONTENT]

    uvloop.run(main())


async def test_verify_false_delivers_and_warns(
    server_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    caplog.set_level(logging.WARNING)
    async with tls_server("starttls", server_ctx, rec) as srv:
        state, _, _ = await send_with(
            options(srv.port, tls="starttls", verify=False), message("SMTP:bob@example.org")
        )
    assert state is MessageState.SENT
    warnings = [r for r in caplog.records if "verify=false" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_starttls_required_but_not_offered_defers() -> None:
    rec = Recorder()
    async with aiosmtpd_server(rec) as srv:
        _, recs, _ = await send_with(
            options(srv.port, tls="starttls"), message("SMTP:bob@example.org")
        )
    assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.7.10")
    assert "STARTTLS" in (recs[0].diagnostic or "")


@pytest.mark.parametrize(("password", "ok"), [("secret", True), ("wrong", False)])
async def test_auth_over_starttls(
    password: str, ok: bool, server_ctx: ssl.SSLContext, ca_file: str
) -> None:
    rec = Recorder()
    async with tls_server("starttls", server_ctx, rec, users={"alice": "secret"}) as srv:
        opts = options(
            srv.port, tls="starttls", ca_file=ca_file, username="alice", password=password
        )
        state, recs, _ = await send_with(opts, message("SMTP:bob@example.org"))
    if ok:
        assert state is MessageState.SENT
        assert len(rec.received) == 1
    else:
        assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.7.8")
        assert "authentication as alice failed" in (recs[0].diagnostic or "")
        assert rec.received == []


async def test_auth_over_plaintext_when_allowed() -> None:
    rec = Recorder()
    async with aiosmtpd_server(rec, users={"alice": "secret"}, auth_require_tls=False) as srv:
        opts = options(srv.port, username="alice", password="secret", allow_plain_auth=True)
        state, _, _ = await send_with(opts, message("SMTP:bob@example.org"))
    assert state is MessageState.SENT and len(rec.received) == 1


@pytest.mark.parametrize(("password", "ok"), [("secret", True), ("wrong", False)])
async def test_auth_login_when_plain_is_not_offered(password: str, ok: bool) -> None:
    rec = Recorder()
    async with aiosmtpd_server(
        rec, users={"alice": "secret"}, auth_require_tls=False, auth_exclude=("PLAIN",)
    ) as srv:
        opts = options(srv.port, username="alice", password=password, allow_plain_auth=True)
        state, recs, _ = await send_with(opts, message("SMTP:bob@example.org"))
    if ok:
        assert state is MessageState.SENT and len(rec.received) == 1
    else:
        assert (recs[0].state, recs[0].status) == (RecipientState.QUEUED, "4.7.8")
        assert "535" in (recs[0].diagnostic or "")
        assert rec.received == []


# -- Postfix smtp-sink ------------------------------------------------------------------------
@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    with smtp_sink(tmp_path / "sink.out") as running:
        yield running


async def test_200_messages_through_postfix_smtp_sink(sink: Sink) -> None:
    port, dump, output = sink.port, sink.dump, sink.output
    ids = [f"<m{i}.spoolbox@test>" for i in range(200)]
    async with open_spooler(options(port, max_connections=4)) as sp:
        infos = [
            await sp.submit(
                message(
                    f"SMTP:user{i}@example.org",
                    content=b"Subject: %d\r\nMessage-ID: %s\r\n\r\nbody %d\r\n"
                    % (i, m.encode(), i),
                )
            )
            for i, m in enumerate(ids)
        ]
        states = [await sp.wait_for(info.id, FINISHED, timeout=60) for info in infos]
        first = await sp.store.recipients(infos[0].id)
    assert states == [MessageState.SENT] * 200, (first[0].diagnostic, output())
    found: set[str] = set()
    async with asyncio.timeout(WAIT):
        while len(found) < 200:
            found = set()
            for f in dump.iterdir():
                m = re.search(rb"(?im)^Message-ID: (<[^>]+>)", f.read_bytes())
                if m:
                    found.add(m.group(1).decode())
            await asyncio.sleep(0.05)
    assert found == set(ids)
    counts = re.findall(r"mesg=(\d+)", output())
    assert counts and int(counts[-1]) == 200
