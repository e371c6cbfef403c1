"""CHUNKING (RFC 3030) in the SMTP transport: a message held whole goes as ``BDAT <n>
LAST`` to a server that offers it, with PIPELINING in the same write as MAIL and RCPT
(one round trip a message instead of two).

Scripted servers on loopback say what went on the wire and answer what real servers
answer (refusals at each step, a server that offers CHUNKING and does not know BDAT);
a private Postfix instance (its smtpd offers CHUNKING) takes the mail for real and
relays it to an aiosmtpd server, byte-exact, and its log counts the BDAT command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_smtp_pipelining as pipelining
from smtp_servers import (
    WAIT,
    Recorder,
    aiosmtpd_server,
    greet,
    line,
    open_spooler,
    options,
    scripted_server,
    send,
    serve_rest,
)

from spoolbox import MessageState, NewMessage, RecipientState
from spoolbox.smtp.data import message_octets

CHUNKING_EHLO = b"250-test.invalid\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
CONTENT = (
    b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: chunks\r\n"
    b"Date: Mon, 07 Dec 2026 02:00:00 +0000\r\nMessage-ID: <chunks@test>\r\n\r\n"
    b"Hello, Bob.\r\n.leading dot\r\n"
)
MAIL = b"MAIL FROM:<alice@example.org>"


def message(*names: str, content: bytes = CONTENT, null_sender: bool = False) -> NewMessage:
    """From alice, or from ``<>`` (no delivery report, so no extra transaction)."""
    return pipelining.message(*names, content=content, null_sender=null_sender)


async def read_bdat(reader: asyncio.StreamReader, commands: int) -> tuple[list[bytes], bytes, int]:
    """``commands`` command lines, then ``BDAT <n> LAST`` and its ``n`` octets, read
    before anything is answered; and how many reads it took."""
    data = b""
    reads = 0
    while True:
        head = data.split(b"\r\n", commands + 1)
        if len(head) == commands + 2:
            match = re.fullmatch(rb"BDAT (\d+) LAST", head[commands])
            assert match, f"no BDAT after {commands} commands: {data!r}"
            if len(head[-1]) >= int(match[1]):
                assert len(head[-1]) == int(match[1]), f"more than the chunk: {data!r}"
                return [h + b"\r\n" for h in head[: commands + 1]], head[-1], reads
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
        reads += 1


async def test_a_message_goes_in_one_write_and_one_round_trip() -> None:
    """MAIL, both RCPTs and ``BDAT <n> LAST`` with the content in one write; the three
    replies in one segment; the octets are the content's (no dot stuffing, no final
    dot); the next message goes on the same connection, no RSET between."""
    seen: list[tuple[list[bytes], bytes, int]] = []
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, CHUNKING_EHLO)
        for n in (3, 2):
            seen.append(await read_bdat(reader, n))
            writer.write(b"250 2.1.0 Ok\r\n" + b"250 2.1.5 Ok\r\n" * (n - 1))
            writer.write(b"250 2.0.0 Ok: queued as C%d\r\n" % n)
            await writer.drain()
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        state, recs = await send(sp, message("bob", "carol"))
        assert state is MessageState.SENT
        assert [(r.state, r.status) for r in recs] == [(RecipientState.DELIVERED, "2.0.0")] * 2
        assert recs[0].diagnostic == "smtp; 250 2.0.0 Ok: queued as C3"
        state, _ = await send(sp, message("dan", content=b"Subject: two\n\nbare LF\n"))
        assert state is MessageState.SENT
        assert srv.connections == 1
        status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
        assert (status["chunking"], status["sent_with_bdat"]) == (True, 2)
    (commands, octets, reads), (commands2, octets2, _) = seen
    assert commands[0].startswith(MAIL)
    assert commands[1:] == [
        b"RCPT TO:<bob@example.org>\r\n",
        b"RCPT TO:<carol@example.org>\r\n",
        b"BDAT %d LAST\r\n" % len(CONTENT),
    ]
    assert reads == 1  # one write: the commands and the content
    assert octets == CONTENT
    assert commands2[1:] == [b"RCPT TO:<dan@example.org>\r\n", b"BDAT 25 LAST\r\n"]
    assert octets2 == b"Subject: two\r\n\r\nbare LF\r\n"
    assert rest == [b"QUIT\r\n"]


async def test_chunking_false_sends_data() -> None:
    """``chunking = false``: DATA and the dot-stuffed stream, CHUNKING or not."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, CHUNKING_EHLO)
        for _ in range(3):
            seen.append(await line(reader))
        writer.write(b"250 Ok\r\n250 Ok\r\n354 go on\r\n")
        await writer.drain()
        body = b""
        while (chunk := await line(reader)) != b".\r\n":
            body += chunk
        seen.append(body)
        writer.write(b"250 2.0.0 Ok\r\n")
        await writer.drain()
        await serve_rest(reader, writer, [])

    async with scripted_server(script) as srv:
        opts = options(srv.port, chunking=False)
        async with open_spooler(opts) as sp:
            state, _ = await send(sp, message("bob"))
            status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
            assert (status["chunking"], status["sent_with_bdat"]) == (False, 0)
    assert state is MessageState.SENT
    assert seen[2] == b"DATA\r\n"
    assert seen[3] == CONTENT.replace(b"\r\n.", b"\r\n..")


BOB_REFUSED = (RecipientState.FAILED, "5.1.1")


@pytest.mark.parametrize(
    ("bdat_reply", "bob", "carol"),
    [
        (b"250 2.0.0 Ok", BOB_REFUSED, (RecipientState.DELIVERED, "2.0.0")),
        (b"452 4.3.1 out of space", BOB_REFUSED, (RecipientState.QUEUED, "4.3.1")),
        (b"552 5.3.4 too big", BOB_REFUSED, (RecipientState.FAILED, "5.3.4")),
    ],
)
async def test_the_reply_to_bdat_is_the_result_of_the_accepted_recipients(
    bdat_reply: bytes, bob: tuple[RecipientState, str], carol: tuple[RecipientState, str]
) -> None:
    """bob refused at RCPT, carol accepted: BDAT's reply is carol's result; the
    connection stays in step (RSET before the next transaction)."""
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, CHUNKING_EHLO)
        await read_bdat(reader, 3)
        writer.write(b"250 Ok\r\n550 5.1.1 no such user\r\n250 Ok\r\n" + bdat_reply + b"\r\n")
        await writer.drain()
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        state, recs = await send(sp, message("bob", "carol", null_sender=True))
        got = {r.address.value.split("@")[0]: (r.state, r.status) for r in recs}
        assert got == {"bob": bob, "carol": carol}, recs
        if carol[0] is RecipientState.DELIVERED:
            assert state is MessageState.SENT
    assert rest[-1] == b"QUIT\r\n"  # closed in step, with QUIT


async def test_every_rcpt_refused_the_chunk_is_discarded_and_the_connection_kept() -> None:
    """The chunk went with the RCPTs all the same: the server discards it and answers
    BDAT 554; in step, the next message (after RSET) goes on the same connection."""
    rest: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, CHUNKING_EHLO)
        await read_bdat(reader, 2)
        writer.write(b"250 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n")
        await writer.drain()
        assert await line(reader) == b"RSET\r\n"
        writer.write(b"250 Ok\r\n")
        await writer.drain()
        await read_bdat(reader, 2)
        writer.write(b"250 Ok\r\n250 Ok\r\n250 2.0.0 Ok\r\n")
        await writer.drain()
        await serve_rest(reader, writer, rest)

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        state, [r] = await send(sp, message("bob", null_sender=True))
        assert (state, r.status) == (MessageState.FAILED, "5.1.1")
        state, recs = await send(sp, message("carol"))
        assert state is MessageState.SENT, recs
        assert srv.connections == 1


async def test_a_server_that_offers_chunking_but_does_not_know_bdat() -> None:
    """``500`` to BDAT: the server may have read the content as commands, so the
    connection is dropped and the message waits (4.5.0, saying why); the next
    attempt to that server goes with DATA."""
    dialogues: list[list[bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, CHUNKING_EHLO)
        said: list[bytes] = []
        dialogues.append(said)
        while True:
            cmd = await line(reader)
            said.append(cmd)
            word = cmd[:4].upper()
            if word in (b"MAIL", b"RCPT", b"RSET"):
                writer.write(b"250 Ok\r\n")
            elif word == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while await line(reader) != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif word == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:  # BDAT, and each line of the content after it
                writer.write(b"500 5.5.1 Error: unknown command\r\n")
            await writer.drain()

    async with scripted_server(script) as srv, open_spooler(options(srv.port)) as sp:
        state, [r] = await send(sp, message("bob"), (MessageState.DEFERRED,))
        assert (state, r.status) == (MessageState.DEFERRED, "4.5.0")
        assert f"127.0.0.1:{srv.port} offers CHUNKING but refused BDAT (500 5.5.1 Error: " in (
            r.diagnostic or ""
        ), r
        assert "sent with DATA next time" in (r.diagnostic or "")
        state, recs = await send(sp, message("carol"))
        assert state is MessageState.SENT, recs
    assert dialogues[0][2].startswith(b"BDAT ")
    assert b"DATA\r\n" in dialogues[1] and not any(c.startswith(b"BDAT") for c in dialogues[1])


# -- spoolbox to spoolbox ------------------------------------------------------------------------
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "starttls-auth"])
async def test_spoolbox_relays_to_a_spoolbox_listener_with_bdat(
    secure: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener offers CHUNKING: the transport's BDAT (one chunk, counted at the
    listener's machine) lands in the receiving spooler's store byte-exact (after its
    Received line), a dot-leading line and 8-bit text included; also after STARTTLS
    and AUTH (the listener's certificate from a CA the transport is given)."""
    import trustme

    from spoolbox import AlwaysIdle, Spooler, SpoolerConfig
    from spoolbox.ingress import ListenerConfig, SubmissionListener
    from spoolbox.smtp import server as server_machine

    chunks: list[str] = []
    bdat = server_machine._COMMANDS["BDAT"]

    def counted(machine: Any, arg: str) -> Any:
        chunks.append(arg)
        return bdat(machine, arg)

    monkeypatch.setitem(server_machine._COMMANDS, "BDAT", counted)
    listener_options: dict[str, Any] = {}
    sender_options: dict[str, Any] = {}
    if secure:
        ca = trustme.CA()
        pem, ca_file = tmp_path / "listener.pem", tmp_path / "ca.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        ca.cert_pem.write_to_path(str(ca_file))
        listener_options = {"tls_cert": str(pem), "require_auth": True, "users": {"app": "pw"}}
        sender_options = {
            "tls": "starttls",
            "ca_file": str(ca_file),
            "username": "app",
            "password": "pw",
        }
    content = CONTENT + b"..two dots\r\n" + b"8bit: \xc3\xa9t\xc3\xa9\r\n"
    async with Spooler.open(SpoolerConfig(), idle=AlwaysIdle()) as receiver:
        config = ListenerConfig(port=0, hostname="mx.test", local_domains=(), **listener_options)
        listener = SubmissionListener(receiver.submit, config)
        await listener.start()
        try:
            async with open_spooler({**options(listener.port), **sender_options}) as sp:
                state, recs = await send(sp, message("bob", content=content))
                assert state is MessageState.SENT, recs
        finally:
            await listener.stop(grace=1.0)
        [summary] = [m for m in await receiver.store.list_messages(now=0) if not m.info.is_report]
        stored = await receiver.store.read_content(summary.info.id)
    assert chunks == [f"{len(message_octets(content))} LAST"]
    assert stored.startswith(b"Received: from ")
    assert (b" with ESMTPSA id " in stored) is secure  # TLS and AUTH, as the trace says
    assert stored.endswith(b"\r\n" + content)
    assert listener.statistics()["accepted"] == 1


# -- a real server: Postfix's smtpd ----------------------------------------------------------
@contextlib.contextmanager
def postfix(relay_port: int) -> Iterator[Any]:
    """A private Postfix instance (the benchmarks' ``bench/_mta.py``, not written
    twice) relaying to ``relay_port``; in a directory the postfix user can reach
    (pytest's are 0700)."""
    bench = str(Path(__file__).resolve().parents[2] / "bench")
    if bench not in sys.path:
        sys.path.append(bench)
    from _mta import PostfixRelay

    if shutil.which("postfix", path=f"/usr/sbin:{os.environ.get('PATH', '')}") is None:
        pytest.skip("NOT RUN: Postfix is not installed (apt-get install postfix); CI has it")
    if os.geteuid() != 0:
        pytest.skip("NOT RUN: a private Postfix instance must be started as root")
    root = Path(tempfile.mkdtemp(prefix="spoolbox-postfix-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with PostfixRelay(root / "pf", relay_port) as pf:
            yield pf
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_postfix_takes_the_message_with_bdat_byte_exact(tmp_path: Path) -> None:
    """Postfix's smtpd offers CHUNKING: the message goes with BDAT (its log counts
    ``bdat=1``), and what Postfix relays on is the content, byte for byte, after the
    Received header Postfix adds."""
    rec = Recorder()
    lines = b"".join(b"line %d: " % i + b"x" * 70 + b"\r\n" for i in range(200))
    content = CONTENT + b".\r\n..two dots\r\n" + lines + b"no final newline"
    async with aiosmtpd_server(rec) as relay:
        with postfix(relay.port) as pf:
            async with open_spooler(options(pf.port)) as sp:
                state, recs = await send(sp, message("bob", content=content))
                assert state is MessageState.SENT, recs
            for _ in range(int(WAIT / 0.1)):  # Postfix relays it on
                if rec.received:
                    break
                await asyncio.sleep(0.1)
            log = pf.maillog.read_text(errors="replace")
    assert re.search(r"disconnect from \S+ ehlo=1 mail=1 rcpt=1 bdat=1 quit=1", log), log[-2000:]
    [got] = rec.received
    assert got.rcpt_tos == ["bob@example.org"]
    assert got.content.startswith(b"Received: ")
    assert got.content.endswith(b"\r\n" + message_octets(content)), got.content[-300:]


def test_the_option_is_read() -> None:
    from spoolbox.transports.smtp import SMTPSettings

    base: dict[str, Any] = {"host": "relay.example.org"}
    assert SMTPSettings.from_config(base).chunking is True
    assert SMTPSettings.from_config({**base, "chunking": False}).chunking is False
