"""A report that cannot be delivered lands in the inbox as a double bounce (issue 15).

Before, a failure report whose own recipient failed was dropped (no report about a
report: that could loop), so the user learnt nothing.  Now the spooler keeps it in
the inbox for the postmaster, marked, and makes no further report: each scenario
below checks that exactly one inbox entry and no new message came of it.  The
failures are real: an aiosmtpd server that answers 550, and a sender whose address
type no transport serves.  The spooler's ``hostname`` is set, so the same tests see
it in Reporting-MTA, the MAILER-DAEMON address and the SMTP transport's EHLO.
"""

from __future__ import annotations

import logging
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session
from smtp_servers import FAST, WAIT, Recorder, aiosmtpd_server, options

from spoolbox import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.store import InboxEntry

HOSTNAME = "mail.example.test"
CONTENT = b"From: alice@example.org\r\nSubject: lost?\r\nMessage-ID: <lost@test>\r\n\r\nhi\r\n"


class EhloRecorder(Recorder):
    """The Recorder, also noting the name each client gave in EHLO."""

    ehlo_names: list[str]

    async def handle_RCPT(
        self,
        server: AiosmtpdSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self.ehlo_names.append(str(session.host_name))
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def open_spooler(port: int) -> Spooler:
    cfg = SpoolerConfig(
        transports=(TransportConfig("smtp", "smtp", options=options(port)),),
        policy=FAST,
        node="test-node",
        hostname=HOSTNAME,
    )
    return Spooler.open(cfg, idle=AlwaysIdle())


async def settle_all(sp: Spooler) -> list[tuple[bool, MessageState]]:
    """Wait until every message is final and a flush adds none; then (is_report,
    state) of each, the reports last."""
    while True:
        found = await sp.store.list_messages(now=sp.clock.now(), limit=10)
        for summary in found:
            await sp.wait_for(
                summary.info.id, (MessageState.SENT, MessageState.FAILED), timeout=WAIT
            )
        await sp.flush()  # whatever was still to route or send is done after this
        final = await sp.store.list_messages(now=sp.clock.now(), limit=10)
        if len(final) == len(found):
            return [
                (s.info.is_report, s.state) for s in sorted(final, key=lambda s: s.info.is_report)
            ]


def parsed(content: bytes) -> EmailMessage:
    msg = message_from_bytes(content, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


async def only_double_bounce(sp: Spooler) -> tuple[InboxEntry, EmailMessage]:
    entries = await sp.store.list_inbox()
    assert len(entries) == 1, entries
    entry = entries[0]
    return entry, parsed(await sp.store.read_inbox(entry.id))


async def test_a_report_refused_by_its_server_is_kept_in_the_inbox_once() -> None:
    """alice's mail to gone@ fails (550); its report to alice fails too (550): the
    report comes back into the inbox as a double bounce, and nothing more happens."""
    rec = EhloRecorder(
        rcpt_replies={
            "gone@example.org": "550 5.1.1 no such user",
            "alice@example.org": "550 5.1.1 alice left",
        }
    )
    rec.ehlo_names = []
    async with aiosmtpd_server(rec) as srv, open_spooler(srv.port) as sp:
        await sp.submit(
            NewMessage(
                sender=Address.parse("SMTP:alice@example.org"),
                recipients=(Address.parse("SMTP:gone@example.org"),),
                content=CONTENT,
            )
        )
        states = await settle_all(sp)
        entry, bounce = await only_double_bounce(sp)
    # the original and its report, both failed; no third message (no report of a report)
    assert states == [(False, MessageState.FAILED), (True, MessageState.FAILED)]
    assert entry.transport == "spooler"
    assert entry.subject == "Double Bounce: Undelivered Mail Returned to Sender"
    assert bounce["X-Spoolbox-Double-Bounce"] == "yes"
    assert bounce["To"] == f"postmaster@{HOSTNAME}"
    assert bounce["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOSTNAME}"
    text, status, returned = bounce.iter_parts()
    assert "alice left" in text.get_content()
    assert f"Reporting-MTA: dns; {HOSTNAME}" in status.as_string()
    assert "rfc822; alice@example.org" in status.as_string()
    # the failed report, returned whole, and inside it the first report about gone@
    inner = returned.get_content()
    assert inner["Subject"] == "Undelivered Mail Returned to Sender"
    assert "no such user" in inner.as_string()
    # the SMTP transport said the spooler's hostname in EHLO, on every connection
    assert rec.ehlo_names and set(rec.ehlo_names) == {HOSTNAME}
    assert rec.received == []


async def test_a_report_to_an_unroutable_sender_is_kept_in_the_inbox(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's scenario: the recipient fails later (550) and the report's own
    recipient, the sender, has an address type no transport serves (5.4.4)."""
    caplog.set_level(logging.WARNING, logger="spoolbox.delivery")
    rec = EhloRecorder(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"})
    rec.ehlo_names = []
    async with aiosmtpd_server(rec) as srv, open_spooler(srv.port) as sp:
        await sp.submit(
            NewMessage(
                sender=Address.parse("FAX:+15550100"),
                recipients=(Address.parse("SMTP:gone@example.org"),),
                content=CONTENT,
            )
        )
        states = await settle_all(sp)
        entry, bounce = await only_double_bounce(sp)
    assert states == [(False, MessageState.FAILED), (True, MessageState.FAILED)]
    assert entry.subject == "Double Bounce: Undelivered Mail Returned to Sender"
    status = list(bounce.iter_parts())[1].as_string().replace("\n ", " ")  # unfolded
    assert "x-fax; +15550100" in status
    assert "Status: 5.4.4" in status
    assert "no transport provider was available for address type FAX" in status
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    doubles = [w for w in warned if "kept in the inbox as a double bounce" in w]
    assert len(doubles) == 1, warned
    assert ": report could not be delivered: " in doubles[0]
    assert doubles[0].endswith(", to=<postmaster@" + sp.config.reporting_mta + ">")


async def test_a_delivered_report_makes_no_double_bounce() -> None:
    """The control: the report reaches alice; the inbox stays empty."""
    rec = EhloRecorder(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"})
    rec.ehlo_names = []
    async with aiosmtpd_server(rec) as srv, open_spooler(srv.port) as sp:
        await sp.submit(
            NewMessage(
                sender=Address.parse("SMTP:alice@example.org"),
                recipients=(Address.parse("SMTP:gone@example.org"),),
                content=CONTENT,
            )
        )
        states = await settle_all(sp)
        assert await sp.store.list_inbox() == []
    assert states == [(False, MessageState.FAILED), (True, MessageState.SENT)]
    assert [r.rcpt_tos for r in rec.received] == [["alice@example.org"]]
