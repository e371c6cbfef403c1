"""The listener refuses at RCPT TO what no transport serves (issue 15), with smtplib.

``550 5.1.2`` for such a recipient, the others accepted, as Postfix refuses at RCPT
time; the rule is the spooler's own (:func:`spoolbox.routing.refusal` on its routing
table), the one the daemon gives its listeners.  And the listener's name in its
banner and ``Received:`` line is the host's (:func:`spoolbox.model.default_hostname`)
unless its configuration says otherwise.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from spoolbox import Address, AlwaysIdle, Spooler, SpoolerConfig, TransportConfig
from spoolbox.ingress import ListenerConfig, SubmissionListener
from spoolbox.model import default_hostname
from spoolbox.routing import refusal

MESSAGE = b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


def spooler_serving(*types: str, tmp: Path) -> Spooler:
    """A spooler whose transports serve ``types``: Maildir (under ``tmp``) for
    MAILDIR, SMTP (to a port nobody listens on: mail waits) for SMTP."""
    transports = []
    if "MAILDIR" in types:
        transports.append(
            TransportConfig("local", "maildir", options={"root": str(tmp)}, inbound=False)
        )
    if "SMTP" in types:
        options = {"host": "127.0.0.1", "port": 9, "tls": "none"}
        transports.append(TransportConfig("relay", "smtp", options=options, inbound=False))
    return Spooler.open(SpoolerConfig(transports=tuple(transports)), idle=AlwaysIdle())


@asynccontextmanager
async def listening(sp: Spooler, **options: object) -> AsyncIterator[SubmissionListener]:
    """A listener with the spooler's rule, once every transport said its types (so
    that a recipient is refused or accepted by them, not left to wait)."""
    async with asyncio.timeout(10):
        while any(e.address_types is None for e in sp.routing_table().entries):
            await asyncio.sleep(0.01)

    def check(address: Address) -> str | None:
        return refusal(sp.routing_table(), str(address))

    listener = SubmissionListener(
        sp.submit,
        ListenerConfig(port=0, **options),
        check_recipient=check,  # type: ignore[arg-type]
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(grace=1.0)


def dialogue(port: int, *recipients: str) -> tuple[str, list[tuple[int, bytes]], object]:
    """EHLO, MAIL, one RCPT per recipient, DATA when any was accepted: the banner,
    the RCPT replies and what DATA gave (or the SMTPException)."""
    with smtplib.SMTP(timeout=30) as smtp:
        code, banner = smtp.connect("127.0.0.1", port)
        assert code == 220, banner
        smtp.ehlo("client.test")
        smtp.mail("alice@example.org")
        replies = [smtp.rcpt(r) for r in recipients]
        result: object
        try:
            result = smtp.data(MESSAGE)
        except smtplib.SMTPException as exc:
            result = exc
        return banner.decode(), replies, result


async def test_a_recipient_no_transport_serves_gets_550_5_1_2(tmp_path: Path) -> None:
    async with spooler_serving("MAILDIR", tmp=tmp_path) as sp, listening(sp) as listener:
        _, replies, result = await asyncio.to_thread(dialogue, listener.port, "bob@example.org")
        assert await sp.store.list_messages(now=0) == []  # nothing queued
    [(code, text)] = replies
    assert code == 550
    assert text.decode() == (
        "5.1.2 <bob@example.org>: Recipient address rejected: no transport serves "
        "address type SMTP (local serves MAILDIR)"
    )
    assert isinstance(result, smtplib.SMTPDataError) and result.smtp_code == 554
    stats = listener.statistics()
    assert stats["rejected_unroutable"] == 1 and stats["accepted"] == 0


async def test_a_served_type_is_accepted(tmp_path: Path) -> None:
    async with spooler_serving("SMTP", "MAILDIR", tmp=tmp_path) as sp, listening(sp) as listener:
        _, replies, result = await asyncio.to_thread(dialogue, listener.port, "bob@example.org")
        queued = await sp.store.list_messages(now=0)
    assert replies == [(250, b"2.1.5 OK")]
    assert isinstance(result, tuple) and result[0] == 250
    assert [str(r.address) for s in queued for r in s.recipients] == ["SMTP:bob@example.org"]


async def test_only_the_unroutable_recipients_are_refused(tmp_path: Path) -> None:
    """Per recipient, as Postfix at RCPT time: the listener's type is MAILDIR here, the
    transport serves it, and a rule that refuses one name shows the others pass."""
    async with spooler_serving("MAILDIR", tmp=tmp_path) as sp:

        def check(address: Address) -> str | None:
            return "not this one" if address.value == "x@example.org" else None

        listener = SubmissionListener(
            sp.submit,
            ListenerConfig(port=0, default_address_type="MAILDIR"),
            check_recipient=check,
        )
        await listener.start()
        try:
            _, replies, result = await asyncio.to_thread(
                dialogue, listener.port, "bob@example.org", "x@example.org", "carol@example.org"
            )
        finally:
            await listener.stop(grace=1.0)
        queued = await sp.store.list_messages(now=0)
    assert [code for code, _ in replies] == [250, 550, 250]
    assert replies[1][1] == b"5.1.2 <x@example.org>: Recipient address rejected: not this one"
    assert isinstance(result, tuple) and result[0] == 250
    assert [str(r.address) for s in queued for r in s.recipients] == [
        "MAILDIR:bob@example.org",
        "MAILDIR:carol@example.org",
    ]


async def test_a_recipient_address_parse_refuses_is_refused_at_rcpt(tmp_path: Path) -> None:
    """What the listener takes, the store can read back: the SMTP rule of
    ``Address.parse`` holds at RCPT TO too (a quoted local part may hold a space)."""
    async with spooler_serving("SMTP", tmp=tmp_path) as sp, listening(sp) as listener:
        _, replies, _ = await asyncio.to_thread(
            dialogue, listener.port, '"john"doe x@example.org', '"john doe"@example.org'
        )
    assert replies[0][0] == 553
    assert replies[0][1] == (
        b"5.1.3 Bad recipient address: the SMTP address '\"john\"doe x@example.org' "
        b"contains ' ' at position 9"
    )  # what is wrong and where, without the API's "SMTP:bob@..." advice
    assert replies[1] == (250, b"2.1.5 OK")


async def test_the_banner_says_the_host_name_unless_configured(tmp_path: Path) -> None:
    async with spooler_serving("SMTP", tmp=tmp_path) as sp:
        async with listening(sp) as listener:
            banner, _, _ = await asyncio.to_thread(dialogue, listener.port, "bob@example.org")
        async with listening(sp, hostname="mx.example.test") as listener:
            named, _, _ = await asyncio.to_thread(dialogue, listener.port, "bob@example.org")
        contents = [
            await sp.store.read_content(s.info.id) for s in await sp.store.list_messages(now=0)
        ]
    assert default_hostname() != "localhost"  # this machine has a name
    assert banner.startswith(f"{default_hostname()} ")
    assert named.startswith("mx.example.test ")
    assert sorted(c.split(b"\r\n")[1].split()[1] for c in contents) == sorted(
        [default_hostname().encode(), b"mx.example.test"]
    )
