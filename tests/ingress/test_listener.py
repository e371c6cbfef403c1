"""The SMTP submission listener against a real Spooler (memory store, no transports)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import smtplib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from smtp_client import Raw, chunked, serving

from spoolbox import Address, AlwaysIdle, NewMessage, Spooler, SpoolerConfig, StoreError
from spoolbox.ingress import ListenerConfig, SubmissionListener

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello Bob.\r\n"


@pytest.fixture
async def spooler() -> AsyncIterator[Spooler]:
    async with Spooler.open(SpoolerConfig(), idle=AlwaysIdle()) as sp:
        yield sp


@asynccontextmanager
async def client(port: int) -> AsyncIterator[Raw]:
    c = await Raw.connect(port)
    try:
        yield c
    finally:
        await c.close()


async def stopped_listening(port: int, timeout: float = 5.0) -> None:
    """Return once connecting to ``port`` is refused (fail after ``timeout`` s)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return
            except ConnectionResetError:
                pass  # accepted into the backlog as the socket closed: try again
            else:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            await asyncio.sleep(0.005)


async def queued(sp: Spooler) -> list[tuple[Any, bytes]]:
    """The submitted messages (not the spooler's own reports: with no transports every
    recipient fails at once and the sender gets a non-delivery report)."""
    out = []
    for summary in await sp.store.list_messages(now=0):
        if summary.info.is_report:
            continue
        out.append((summary, await sp.store.read_content(summary.info.id)))
    return out


async def test_a_message_is_queued_with_a_received_line(spooler: Spooler) -> None:
    async with serving(spooler.submit) as listener:
        errors, reply = await aiosmtplib.send(
            MESSAGE,
            sender="alice@example.org",
            recipients=["bob@example.org", "carol@example.org"],
            hostname="127.0.0.1",
            port=listener.port,
        )
        assert errors == {}
        assert "queued as" in reply
    [(summary, content)] = await queued(spooler)
    assert reply.split()[-1] == summary.info.id
    assert summary.info.sender == Address("SMTP", "alice@example.org")
    assert [r.address for r in summary.recipients] == [
        Address("SMTP", "bob@example.org"),
        Address("SMTP", "carol@example.org"),
    ]
    assert content.startswith(b"Received: from ")
    assert b"by mx.test (spoolbox) with ESMTP id " + summary.info.id.encode() in content
    assert b"\tfor <" not in content  # two recipients: none is named in the trace
    # The trace ends with the date and time it was received (RFC 5322).
    stamp = content.split(b"\r\n", 3)[2]
    assert stamp.startswith(b"\t")
    when = email.utils.parsedate_to_datetime(stamp.decode().strip())
    assert abs(when.timestamp() - time.time()) < 60
    assert content.endswith(MESSAGE)
    assert listener.statistics()["accepted"] == 1
    assert listener.statistics()["connections"] == 1


async def test_over_ipv6_the_peer_is_an_ipv6_address_literal(spooler: Spooler) -> None:
    if not socket.has_ipv6:
        pytest.skip("SKIPPED LOUDLY: no IPv6 on this machine: the ::1 listener is not tried")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"SKIPPED LOUDLY: cannot bind ::1 here ({exc}): IPv6 listener not tried")
    async with serving(spooler.submit, host="::1") as listener:
        assert repr(listener) == f"<SubmissionListener [::1]:{listener.port}>"
        errors, _ = await aiosmtplib.send(
            MESSAGE,
            sender="alice@example.org",
            recipients=["bob@example.org"],
            hostname="::1",
            port=listener.port,
        )
        assert errors == {}
    [(_, content)] = await queued(spooler)
    # RFC 5321 4.1.3: an IPv6 address literal says "IPv6:" (as Postfix writes it).
    first = content.split(b"\r\n", 1)[0]
    assert first.endswith(b" ([IPv6:::1])"), first


async def test_utf8_addresses_under_smtputf8(spooler: Spooler) -> None:
    async with serving(spooler.submit) as listener:

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as smtp:
                smtp.ehlo("client.test")
                assert smtp.has_extn("smtputf8")
                return smtp.sendmail(
                    "jörg@bücher.example",
                    ["用户@例子.广告"],
                    "Subject: grüße\r\n\r\nHallo.\r\n".encode(),
                    mail_options=["SMTPUTF8"],
                )

        assert await asyncio.to_thread(send) == {}
    [(summary, content)] = await queued(spooler)
    assert summary.info.sender == Address("SMTP", "jörg@bücher.example")
    assert [r.address for r in summary.recipients] == [Address("SMTP", "用户@例子.广告")]
    assert b" with UTF8SMTP id " in content  # RFC 6531 section 4.3
    assert content.endswith("Subject: grüße\r\n\r\nHallo.\r\n".encode())


async def test_smtputf8_can_be_turned_off(spooler: Spooler) -> None:
    async with serving(spooler.submit, smtputf8=False) as listener:
        c = await Raw.connect(listener.port)
        try:
            ehlo = await c.cmd("EHLO client.test")
            assert "SMTPUTF8" not in ehlo
            reply = await c.cmd("MAIL FROM:<jörg@example.de> SMTPUTF8".encode())
            assert reply.startswith("500 5.5.2 Error: strict ASCII mode")
        finally:
            await c.close()


async def test_250_comes_only_after_submit_returned(spooler: Spooler) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    events: list[str] = []

    async def slow_submit(message: NewMessage) -> object:
        entered.set()
        await release.wait()
        info = await spooler.submit(message)
        events.append("committed")
        return info

    async with serving(slow_submit) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<alice@example.org>")).startswith("250")
        assert (await c.cmd("RCPT TO:<bob@example.org>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        c.writer.write(MESSAGE + b".\r\n")
        await c.writer.drain()

        async def read_final() -> str:
            reply = await c.reply()
            events.append("client got " + reply[:3])
            return reply

        final = asyncio.create_task(read_final())
        await entered.wait()
        # A witness: another session answered while this one waits in submit.  A
        # server that answered this one early wrote that answer first, so it has
        # reached this client by the time the witness's answer has.
        async with client(listener.port) as witness:
            assert (await witness.cmd("NOOP")).startswith("250")
        for _ in range(3):
            await asyncio.sleep(0)  # let read_final take what arrived
        assert not final.done()
        assert await queued(spooler) == []
        release.set()
        reply = await final
        assert reply.startswith("250 2.0.0")
    assert events == ["committed", "client got 250"]
    assert len(await queued(spooler)) == 1


async def test_submit_failure_answers_451_and_queues_nothing(spooler: Spooler) -> None:
    calls = 0

    async def failing(message: NewMessage) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("/var/spool/x.sqlite3: database is locked")
        return await spooler.submit(message)

    async with serving(failing) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.org>")
        await c.cmd("RCPT TO:<bob@example.org>")
        reply = await c.data(MESSAGE)
        assert reply.startswith("451 4.3.0")
        assert "/var/spool" not in reply  # no internals leak to the client
        assert await queued(spooler) == []
        # The session goes on: the client retries and succeeds.
        await c.cmd("MAIL FROM:<alice@example.org>")
        await c.cmd("RCPT TO:<bob@example.org>")
        assert (await c.data(MESSAGE)).startswith("250")
    assert len(await queued(spooler)) == 1
    stats = listener.statistics()
    assert stats["rejected_submit_failed"] == 1
    assert stats["accepted"] == 1


async def test_size_limit(spooler: Spooler) -> None:
    async with serving(spooler.submit, max_message_size=1000) as listener:
        async with client(listener.port) as c:
            ehlo = await c.cmd("EHLO client.test")
            assert "250-SIZE 1000" in ehlo
            reply = await c.cmd("MAIL FROM:<alice@example.org> SIZE=5000")
            assert reply.startswith("552 5.3.4")
            assert (await c.cmd("MAIL FROM:<alice@example.org> SIZE=500")).startswith("250")
            await c.cmd("RCPT TO:<bob@example.org>")
            big = MESSAGE + b"x" * 80 + b"\r\n"
            reply = await c.data(big * 20)
            assert reply.startswith("552 5.3.4")
            assert "1000" in reply
            # A message within the limit still goes through on the same connection.
            await c.cmd("MAIL FROM:<alice@example.org>")
            await c.cmd("RCPT TO:<bob@example.org>")
            assert (await c.data(MESSAGE)).startswith("250")
        assert listener.statistics()["rejected_size"] == 2
    assert len(await queued(spooler)) == 1


async def test_recipient_limit(spooler: Spooler) -> None:
    async with serving(spooler.submit, max_recipients=3) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.org>")
        replies = [await c.cmd(f"RCPT TO:<r{i}@example.org>") for i in range(5)]
        assert [r[:3] for r in replies] == ["250", "250", "250", "452", "452"]
        assert "4.5.3" in replies[3]
        assert "too many recipients" in replies[3].lower()
        assert (await c.data(MESSAGE)).startswith("250")
    [(summary, _)] = await queued(spooler)
    assert [r.address.value for r in summary.recipients] == [f"r{i}@example.org" for i in range(3)]


async def test_line_length_limit(spooler: Spooler) -> None:
    async with serving(spooler.submit) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        for length in (999, 5000):
            await c.cmd("MAIL FROM:<alice@example.org>")
            await c.cmd("RCPT TO:<bob@example.org>")
            reply = await c.data(MESSAGE + b"y" * length + b"\r\n")
            assert reply.startswith("554 5.6.0"), reply
            assert "Line 6" in reply
            assert "998" in reply
        assert await queued(spooler) == []
        # 998 octets is fine, and so is 998 after a stuffed dot (999 on the wire).
        await c.cmd("MAIL FROM:<alice@example.org>")
        await c.cmd("RCPT TO:<bob@example.org>")
        body = b"z" * 998 + b"\r\n" + b".." + b"d" * 997 + b"\r\n"
        assert (await c.data(MESSAGE + body)).startswith("250")
    [(_, content)] = await queued(spooler)
    assert content.endswith(MESSAGE + b"z" * 998 + b"\r\n." + b"d" * 997 + b"\r\n")
    assert listener.statistics()["rejected_line_length"] == 2


async def test_relay_denied_outside_relay_networks(spooler: Spooler) -> None:
    async with (
        serving(spooler.submit, relay_networks=(), local_domains=("example.org",)) as listener,
        client(listener.port) as c,
    ):
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@elsewhere.net>")
        assert (await c.cmd("RCPT TO:<bob@Example.ORG>")).startswith("250")
        denied = await c.cmd("RCPT TO:<victim@elsewhere.net>")
        assert denied.startswith("554 5.7.1")
        assert "relay" in denied.lower()
        assert (await c.data(MESSAGE)).startswith("250")
    [(summary, _)] = await queued(spooler)
    assert [r.address.value for r in summary.recipients] == ["bob@Example.ORG"]
    assert listener.statistics()["rejected_relay"] == 1


ROUTED = (
    "victim%foreign.example@local.test",
    "victim@foreign.example@local.test",
    '"victim@foreign.example"@local.test',
    '"victim%foreign.example"@local.test',
    "foreign.example!victim@local.test",
    '"foreign.example!victim"@local.test',
    "victim\\@foreign.example@local.test",
)


async def test_sender_specified_routing_is_refused_for_untrusted_clients(
    spooler: Spooler,
) -> None:
    """A local domain does not make ``victim%far@local`` local: the next hop may route
    by the local part (Postfix: allow_untrusted_routing = no, 554 5.7.1)."""
    async with (
        serving(spooler.submit, relay_networks=(), local_domains=("local.test",)) as listener,
        client(listener.port) as c,
    ):
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@elsewhere.net>")
        for address in ROUTED:
            reply = await c.cmd(f"RCPT TO:<{address}>")
            assert reply.startswith("554 5.7.1"), (address, reply)
            assert "Relay access denied" in reply
        # Quoting without a routing character is an ordinary local part.
        assert (await c.cmd('RCPT TO:<"bob smith"@local.test>')).startswith("250")
        assert (await c.cmd("RCPT TO:<bob.smith+tag@local.test>")).startswith("250")
        assert (await c.data(MESSAGE)).startswith("250")
    [(summary, _)] = await queued(spooler)
    assert [r.address.value for r in summary.recipients] == [
        '"bob smith"@local.test',
        "bob.smith+tag@local.test",
    ]
    assert listener.statistics()["rejected_relay"] == len(ROUTED)


async def test_sender_specified_routing_is_allowed_for_trusted_clients(
    spooler: Spooler,
) -> None:
    """From relay_networks, or authenticated, the same addresses are taken as given."""
    async with (
        serving(spooler.submit, local_domains=("local.test",)) as listener,
        client(listener.port) as c,
    ):
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.org>")
        for address in ROUTED:
            assert (await c.cmd(f"RCPT TO:<{address}>")).startswith("250"), address
    async with (
        serving(
            spooler.submit,
            relay_networks=(),
            allow_plain_auth=True,
            users={"ann": "secret"},
        ) as listener,
        client(listener.port) as c,
    ):
        await c.cmd("EHLO client.test")
        assert (await c.cmd("AUTH PLAIN " + _plain("ann", "secret"))).startswith("235")
        await c.cmd("MAIL FROM:<ann@example.org>")
        for address in ROUTED:
            assert (await c.cmd(f"RCPT TO:<{address}>")).startswith("250"), address


async def test_relay_allowed_from_relay_networks(spooler: Spooler) -> None:
    async with serving(spooler.submit) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.org>")
        assert (await c.cmd("RCPT TO:<someone@elsewhere.net>")).startswith("250")


async def test_all_recipients_refused_queues_nothing(spooler: Spooler) -> None:
    async with (
        serving(spooler.submit, relay_networks=(), local_domains=("example.org",)) as listener,
        client(listener.port) as c,
    ):
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.org>")
        assert (await c.cmd("RCPT TO:<x@elsewhere.net>")).startswith("554")
        assert (await c.cmd("RCPT TO:<no-domain>")).startswith("553")
        reply = await c.cmd("DATA")
        assert reply.startswith("554 5.5.1")
        # Without any RCPT at all it is a sequence error, not a refusal.
        await c.cmd("RSET")
        await c.cmd("MAIL FROM:<alice@example.org>")
        assert (await c.cmd("DATA")).startswith("503")
    assert await queued(spooler) == []
    assert listener.statistics()["rejected_no_recipients"] == 1


async def test_null_sender(spooler: Spooler) -> None:
    async with serving(spooler.submit) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<>")).startswith("250")
        assert (await c.cmd("RCPT TO:<bob@example.org>")).startswith("250")
        assert (await c.data(MESSAGE)).startswith("250")
    [(summary, content)] = await queued(spooler)
    assert summary.info.sender is None
    assert b"\tfor <bob@example.org>;" in content


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_auth_is_refused_without_tls(spooler: Spooler) -> None:
    async with (
        serving(spooler.submit, users={"ann": "secret"}) as listener,
        client(listener.port) as c,
    ):
        ehlo = await c.cmd("EHLO client.test")
        assert "AUTH" not in ehlo
        reply = await c.cmd("AUTH PLAIN " + _plain("ann", "secret"))
        assert reply.startswith("538")


def test_require_auth_without_tls_needs_allow_plain_auth() -> None:
    with pytest.raises(ValueError, match="allow_plain_auth"):
        ListenerConfig(require_auth=True, users={"ann": "secret"})
    with pytest.raises(ValueError, match="users"):
        ListenerConfig(require_auth=True, allow_plain_auth=True)
    with pytest.raises(ValueError, match="relay_networks"):
        ListenerConfig(relay_networks=("not-a-net",))


async def test_auth_required_when_allowed_in_plain(spooler: Spooler) -> None:
    async with (
        serving(
            spooler.submit,
            require_auth=True,
            allow_plain_auth=True,
            users={"ann": "secret"},
            relay_networks=(),
        ) as listener,
        client(listener.port) as c,
    ):
        ehlo = await c.cmd("EHLO client.test")
        assert "AUTH LOGIN PLAIN" in ehlo
        assert (await c.cmd("MAIL FROM:<ann@example.org>")).startswith("530 5.7.0")
        assert (await c.cmd("AUTH PLAIN " + _plain("ann", "wrong"))).startswith("535")
        assert (await c.cmd("AUTH PLAIN " + _plain("bob", "secret"))).startswith("535")
        assert (await c.cmd("AUTH PLAIN " + _plain("ann", "secret"))).startswith("235")
        assert (await c.cmd("MAIL FROM:<ann@example.org>")).startswith("250")
        # Authenticated: may relay although relay_networks is empty.
        assert (await c.cmd("RCPT TO:<far@elsewhere.net>")).startswith("250")
        assert (await c.data(MESSAGE)).startswith("250")
    [(_, content)] = await queued(spooler)
    assert b" with ESMTPA id " in content
    assert listener.statistics()["rejected_auth_failed"] == 2
    assert listener.statistics()["rejected_auth_required"] == 1


async def test_a_client_refused_relay_may_relay_once_authenticated(spooler: Spooler) -> None:
    """The peer's relay_networks look-up is made once a connection; AUTH still counts."""
    async with (
        serving(
            spooler.submit, allow_plain_auth=True, users={"ann": "secret"}, relay_networks=()
        ) as listener,
        client(listener.port) as c,
    ):
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<ann@example.org>")).startswith("250")
        assert (await c.cmd("RCPT TO:<far@elsewhere.net>")).startswith("554 5.7.1")
        assert (await c.cmd("RCPT TO:<far@elsewhere.net>")).startswith("554 5.7.1")
        assert (await c.cmd("RSET")).startswith("250")
        assert (await c.cmd("AUTH PLAIN " + _plain("ann", "secret"))).startswith("235")
        assert (await c.cmd("MAIL FROM:<ann@example.org>")).startswith("250")
        assert (await c.cmd("RCPT TO:<far@elsewhere.net>")).startswith("250")
        assert (await c.data(MESSAGE)).startswith("250 2.0.0 OK queued as ")
    assert listener.statistics()["rejected_relay"] == 2


async def test_starttls_then_auth(spooler: Spooler, certificate: Path) -> None:
    async with serving(
        spooler.submit,
        require_auth=True,
        users={"ann": "secret"},
        relay_networks=(),
        tls_cert=str(certificate),
    ) as listener:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=listener.port, start_tls=True, validate_certs=False
        )
        async with smtp:
            await smtp.login("ann", "secret")
            errors, _ = await smtp.sendmail("ann@example.org", ["far@elsewhere.net"], MESSAGE)
            assert errors == {}
    [(_, content)] = await queued(spooler)
    assert b" with ESMTPSA id " in content


async def test_stop_lets_a_transaction_in_progress_finish(spooler: Spooler) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow_submit(message: NewMessage) -> object:
        entered.set()
        await release.wait()
        return await spooler.submit(message)

    listener = SubmissionListener(slow_submit, ListenerConfig(port=0, shutdown_grace=30))
    await listener.start()
    port = listener.port
    c = await Raw.connect(port)
    try:
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.org>")
        await c.cmd("RCPT TO:<bob@example.org>")
        await c.cmd("DATA")
        c.writer.write(MESSAGE + b".\r\n")
        await c.writer.drain()
        await entered.wait()
        stopping = asyncio.create_task(listener.stop())
        await stopped_listening(port)
        # stop() has run (it closed the listening socket) and waits for the transaction.
        assert not stopping.done()
        release.set()
        assert (await c.reply()).startswith("250")
        await stopping
        assert (await c.reply()).startswith("421")
    finally:
        await c.close()
    assert len(await queued(spooler)) == 1


async def test_start_on_a_taken_port_says_so(spooler: Spooler) -> None:
    async with serving(spooler.submit) as first:
        second = SubmissionListener(spooler.submit, ListenerConfig(port=first.port))
        with pytest.raises(OSError, match=f"cannot listen for SMTP on 127.0.0.1:{first.port}"):
            await second.start()
        await second.stop()  # not started: harmless


async def test_invalid_addresses_are_refused(spooler: Spooler) -> None:
    async with serving(spooler.submit) as listener, client(listener.port) as c:
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<alice>")).startswith("553 5.1.7")
        assert (await c.cmd("MAIL FROM:<alice@example.org>")).startswith("250")
        assert (await c.cmd("RCPT TO:<@example.org>")).startswith("5")
        assert (await c.cmd("RCPT TO:<" + "a" * 300 + "@example.org>")).startswith("5")
    assert listener.statistics()["rejected"] >= 2


async def test_bdat_chunks_pipelined_are_queued_byte_exact(spooler: Spooler) -> None:
    """CHUNKING is offered: MAIL, RCPT and two BDAT chunks in one write; the message is
    the chunks' octets (no dot-unstuffing) after the Received line; a dot-leading line
    and a line split across the chunks survive as sent."""
    body = MESSAGE + b".a dot leads\r\n..two\r\n"
    first, second = body[:50], body[50:]
    async with serving(spooler.submit) as listener, client(listener.port) as c:
        ehlo = await c.cmd("EHLO client.test")
        assert "CHUNKING" in ehlo.split("\n")[-1] or "250-CHUNKING" in ehlo, ehlo
        await c.send(chunked(b"alice@example.org", b"bob@example.org", first, second))
        said = await c.replies(4)
        assert said[:3] == ["250 2.1.0 OK", "250 2.1.5 OK", "250 2.0.0 50 octets received"]
        assert said[3].startswith("250 2.0.0 OK queued as "), said
    [(summary, content)] = await queued(spooler)
    assert said[3].split()[-1] == summary.info.id
    assert content.startswith(b"Received: from ")
    assert content.endswith(body)


async def test_chunking_can_be_turned_off(spooler: Spooler) -> None:
    async with serving(spooler.submit, chunking=False) as listener, client(listener.port) as c:
        assert "CHUNKING" not in await c.cmd("EHLO client.test")
        assert (await c.cmd("BDAT 0 LAST")).startswith('500 5.5.1 Error: command "BDAT"')
