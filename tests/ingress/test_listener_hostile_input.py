"""Hostile input for the listener's own SMTP parser (beyond test_hostile_clients.py)."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path

import pytest
from smtp_client import Raw, Recorder, serving

from spoolbox import NewMessage
from spoolbox.ingress.listener import MAX_HOPS, received_lines

GREETING = "220 mx.test "
MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: t\r\n\r\nbody\r\n"


async def test_command_line_over_512_octets() -> None:
    async with serving(Recorder()) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO x.test")
        assert (await raw.cmd(b"NOOP " + b"x" * 505)).startswith("250")  # 512 with CRLF
        assert (await raw.cmd(b"NOOP " + b"x" * 506)).startswith("500 5.5.2")
        # RCPT gets the room DSN's NOTIFY= and ORCPT= add (RFC 3461): 1,049 with CRLF.
        assert (await raw.cmd(b"RCPT TO:<" + b"b" * 1100 + b"@example.org>")).startswith("500")
        assert (await raw.cmd(b"NOOP")).startswith("250")
        await raw.close()
    async with serving(Recorder(), dsn=False) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO x.test")
        assert (await raw.cmd(b"RCPT TO:<" + b"b" * 600 + b"@example.org>")).startswith("500")
        assert (await raw.cmd(b"NOOP")).startswith("250")
        await raw.close()


async def test_smuggling_with_lf_dot_lf_is_refused_and_not_run_as_commands() -> None:
    submit = Recorder()
    async with serving(submit) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO smuggle.test")
        await raw.cmd(b"MAIL FROM:<a@example.org>")
        await raw.cmd(b"RCPT TO:<b@example.org>")
        assert (await raw.cmd(b"DATA")).startswith("354")
        for end in (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"):
            await raw.send(b"Subject: x\r\n\r\nhello" + end)
        await raw.send(b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.org>\r\n")
        await raw.send(b"DATA\r\nSubject: smuggled\r\n\r\nhi\r\n.\r\nNOOP\r\n")
        reply = await raw.reply()  # exactly one answer for the whole of the data
        assert reply.startswith("554 5.6.0 Line 3 of the message contains a bare CR or LF")
        assert await raw.reply() == "250 2.0.0 OK"  # the NOOP after the real end
        await raw.close()
    assert submit.messages == []
    assert listener.statistics()["rejected_bad_data"] == 1


async def test_nul_in_commands() -> None:
    submit = Recorder()
    async with serving(submit) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        assert (await raw.cmd(b"EH\x00LO x")).startswith("500")
        await raw.cmd(b"EHLO nul\x00.test")
        assert (await raw.cmd(b"MAIL FROM:<a\x00@example.org>")).startswith("553")
        assert (await raw.cmd(b"MAIL FROM:<a@example.org>")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<b@example.org\x00>")).startswith("553")
        assert (await raw.cmd(b"RCPT TO:<b@example.org>")).startswith("250")
        assert (await raw.cmd(b"DATA")).startswith("354")
        assert (await raw.cmd(MESSAGE + b".")).startswith("250")
        await raw.close()
    [message] = submit.messages
    assert b"\x00" not in message.content
    assert message.content.startswith(b"Received: from nul.test ([127.0.0.1])")
    assert listener.statistics()["rejected_bad_address"] == 2


async def test_pipelined_transaction_in_one_segment_is_answered_in_order() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    submit = Recorder()

    async def slow(message: NewMessage) -> object:
        entered.set()
        await release.wait()
        return await submit(message)

    async with serving(slow) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.send(
            b"EHLO pipe.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
            b"RCPT TO:<c@example.org>\r\nDATA\r\n" + MESSAGE + b".\r\nNOOP\r\nQUIT\r\n"
        )
        got = [await raw.reply() for _ in range(5)]
        assert [r[:3] for r in got] == ["250", "250", "250", "250", "354"]
        await entered.wait()
        # The NOOP after the data waits for the decision on the data.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(raw.reader.readline(), 0.1)
        release.set()
        assert (await raw.reply()).startswith("250 2.0.0 OK queued as ")
        assert await raw.reply() == "250 2.0.0 OK"
        assert await raw.reply() == "221 2.0.0 Bye"
        assert await raw.reader.read() == b""
        await raw.close()
    assert len(submit.messages) == 1


async def test_a_client_that_half_closes_after_quit_gets_its_answers() -> None:
    release = asyncio.Event()
    submit = Recorder()

    async def slow(message: NewMessage) -> object:
        await release.wait()
        return await submit(message)

    async with serving(slow) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.send(
            b"EHLO nc.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
            b"DATA\r\n" + MESSAGE + b".\r\nQUIT\r\n"
        )
        raw.writer.write_eof()  # as `nc` does at the end of its input
        got = [await raw.reply() for _ in range(4)]
        assert got[-1].startswith("354")
        release.set()
        assert (await raw.reply()).startswith("250 2.0.0 OK queued as ")
        assert await raw.reply() == "221 2.0.0 Bye"
        await raw.close()
    assert len(submit.messages) == 1


async def test_commands_sent_before_the_greeting() -> None:
    async with serving(Recorder()) as listener:
        raw = await Raw.connect(listener.port, greeting=None)
        await raw.send(b"EHLO early.test\r\nNOOP\r\n")
        assert (await raw.reply()).startswith("220 mx.test ")
        assert (await raw.reply()).startswith("250-mx.test")
        assert (await raw.reply()) == "250 2.0.0 OK"
        await raw.close()


@pytest.mark.parametrize("tail", [b"", b"half a line", b".", b".\r", b"\r\n.\r"])
async def test_a_client_vanishing_mid_data_queues_nothing(tail: bytes) -> None:
    submit = Recorder()
    async with serving(submit) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO gone.test")
        await raw.cmd(b"MAIL FROM:<a@example.org>")
        await raw.cmd(b"RCPT TO:<b@example.org>")
        await raw.cmd(b"DATA")
        await raw.send(MESSAGE + b"x" * 50_000 + b"\r\n" + tail)
        await raw.close()
        for _ in range(50):
            if listener.statistics()["active"] == 0:
                break
            await asyncio.sleep(0.01)
        assert listener.statistics()["active"] == 0
    assert submit.messages == []


async def test_auth_with_bad_base64() -> None:
    async with serving(Recorder(), users={"ann": "pw"}, allow_plain_auth=True) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO auth.test")
        assert (await raw.cmd(b"AUTH PLAIN not*base64")).startswith("501 5.5.2")
        assert (await raw.cmd(b"AUTH LOGIN")).startswith("334 ")
        assert (await raw.cmd(b"%%%")).startswith("501 5.5.2")
        assert (await raw.cmd(b"AUTH PLAIN")).startswith("334 ")
        assert (await raw.cmd(b"*")).startswith("501 5.7.0")
        assert (await raw.cmd(b"AUTH PLAIN " + base64.b64encode(b"ann\x00pw"))).startswith("501")
        good = base64.b64encode(b"\x00ann\x00pw")
        assert (await raw.cmd(b"AUTH PLAIN " + good)).startswith("235")
        await raw.close()
    assert listener.statistics()["rejected_auth_failed"] == 0


async def test_idle_client_gets_421() -> None:
    async with serving(Recorder(), idle_timeout=0.2) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO slow.test")
        assert (await raw.reply()).startswith("421 4.4.2")
        assert await raw.reader.read() == b""
        await raw.close()


async def test_commands_pipelined_after_starttls_are_dropped(certificate: Path) -> None:
    submit = Recorder()
    async with serving(submit, tls_cert=str(certificate)) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO tls.test")
        await raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        assert (await raw.reply()).startswith("220 2.0.0")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await raw.writer.start_tls(ctx)
        # The session starts over: the injected MAIL was not run, EHLO is needed again.
        assert (await raw.cmd(b"RCPT TO:<b@example.org>")).startswith("503")
        ehlo = await raw.cmd(b"EHLO tls.test")
        assert "STARTTLS" not in ehlo
        assert (await raw.cmd(b"MAIL FROM:<a@example.org>")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<b@example.org>")).startswith("250")
        await raw.cmd(b"DATA")
        assert (await raw.cmd(MESSAGE + b".")).startswith("250")
        await raw.close()
    [message] = submit.messages
    assert b" with ESMTPS id " in message.content


def test_received_lines_are_counted_in_the_header_only() -> None:
    head = b"Received: from a\r\n\tby b;\r\nRECEIVED : from c\r\nX-Received: no\r\nSubject: s\r\n"
    assert received_lines(head + b"\r\nReceived: in the body\r\n") == 2
    assert received_lines(head) == 2  # no body
    assert received_lines(b"\r\nReceived: x\r\n") == 0  # an empty header


@pytest.mark.parametrize("hops", [MAX_HOPS - 1, MAX_HOPS])
async def test_a_message_round_a_mail_loop_is_refused(hops: int) -> None:
    # Each pass through an MTA adds a Received: line; MAX_HOPS - 1 come in, and this
    # listener's own makes MAX_HOPS: still taken (Postfix's hopcount_limit is the same).
    submit = Recorder()
    trace = b"".join(b"Received: from hop%d.test by hop%d.test;\r\n" % (i, i) for i in range(hops))
    async with serving(submit) as listener:
        raw = await Raw.connect(listener.port, greeting=GREETING)
        await raw.cmd(b"EHLO loop.test")
        await raw.cmd(b"MAIL FROM:<a@example.org>")
        await raw.cmd(b"RCPT TO:<b@example.org>")
        assert (await raw.cmd(b"DATA")).startswith("354")
        reply = await raw.cmd(trace + MESSAGE + b".")
        await raw.close()
    if hops < MAX_HOPS:
        assert reply.startswith("250 2.0.0"), reply
        assert len(submit.messages) == 1
        assert received_lines(submit.messages[0].content) == MAX_HOPS
    else:
        assert reply == f"554 5.4.6 Too many hops ({MAX_HOPS} Received: lines): a mail loop?"
        assert submit.messages == []
        assert listener.statistics()["rejected_too_many_hops"] == 1
