"""DSN through a real daemon, its SMTP listener (in a process of its own, as ``spoolbox
init`` writes it) and the smtp transport to a real aiosmtpd server that refuses
``bad*``: one transaction whose recipients ask for different NOTIFYs is queued as one
message per NOTIFY, and each recipient gets the reports its NOTIFY asked for."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session

from conftest import DEADLINE, Daemons, relay_home, smtp_server, wait_until


class _Server:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_RCPT(
        self,
        server: AiosmtpdSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        self.received.append((list(envelope.rcpt_tos), content))
        return "250 2.0.0 queued"


@pytest.fixture
def server() -> Iterator[tuple[int, _Server]]:
    handler = _Server()
    with smtp_server(handler) as port:
        yield port, handler


def test_one_transaction_with_two_notifys_is_two_messages(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _Server]
) -> None:
    port, sink = server
    home = relay_home(tmp_path / "d", port)
    proc = daemons.start(home)
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        smtp.ehlo("app.test")
        assert smtp.has_extn("dsn")
        assert smtp.mail("app@example.org", ["ENVID=order-7"])[0] == 250
        assert smtp.rcpt("ok@example.org", ["NOTIFY=SUCCESS,FAILURE"])[0] == 250
        assert smtp.rcpt("bad@example.org", ["NOTIFY=NEVER"])[0] == 250
        code, text = smtp.data(b"Subject: two notifys\r\n\r\nbody\r\n")
    assert code == 250, text
    ids = text.decode().removeprefix("2.0.0 OK queued as ").split(", ")
    assert len(ids) == 2, text
    listed = home.json("queue", "list", "--all")["messages"]
    assert {m["id"] for m in listed} >= set(ids)
    # ok@ is delivered and its success reported to the sender (through the relay too);
    # bad@ is refused (550) and, asking NEVER, reported to nobody.
    wait_until(
        "the delivery and its report",
        lambda: len(sink.received) >= 2 and "status=bounced" in daemons.logs[-1].read_text(),
    )
    assert daemons.stop(proc) == 0
    log = daemons.logs[-1].read_text()
    assert log.count("sender delivery status notification") == 1, log
    assert "non-delivery notification" not in log, log
    to = sorted(rcpts[0] for rcpts, _ in sink.received)
    assert to == ["app@example.org", "ok@example.org"], sink.received
    [report] = [content for rcpts, content in sink.received if rcpts == ["app@example.org"]]
    assert b"Original-Envelope-Id: order-7" in report
    assert b"Final-Recipient: rfc822; ok@example.org" in report
    assert b"bad@example.org" not in report


def test_a_bounce_names_the_original_recipient_the_client_gave(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _Server]
) -> None:
    """ORCPT (RFC 3461) given at the listener is kept with the recipient: ``queue show``
    lists it, and the bounce of the refused recipient names it as its
    Original-Recipient beside the Final-Recipient."""
    port, sink = server
    home = relay_home(tmp_path / "d", port)
    proc = daemons.start(home)
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        smtp.ehlo("app.test")
        assert smtp.mail("app@example.org")[0] == 250
        assert smtp.rcpt("bad@example.org", ["ORCPT=rfc822;Old+2Bbad@old.example"])[0] == 250
        assert smtp.rcpt("bad2@example.org")[0] == 250
        code, text = smtp.data(b"Subject: orcpt\r\n\r\nbody\r\n")
    assert code == 250, text
    message_id = text.decode().removeprefix("2.0.0 OK queued as ")
    wait_until("the bounce", lambda: any(r == ["app@example.org"] for r, _ in sink.received))
    shown = home.json("queue", "show", message_id)
    assert [(r["address"], r["original"]) for r in shown["recipients"]] == [
        ("SMTP:bad@example.org", "rfc822;Old+bad@old.example"),
        ("SMTP:bad2@example.org", None),
    ]
    said = home.run("queue", "show", message_id).stdout
    assert "[0] SMTP:bad@example.org (originally rfc822;Old+bad@old.example): failed" in said
    assert "[1] SMTP:bad2@example.org: failed" in said
    assert daemons.stop(proc) == 0
    [report] = [content for rcpts, content in sink.received if rcpts == ["app@example.org"]]
    status = report.split(b"message/delivery-status", 1)[1]
    assert (
        b"Original-Recipient: rfc822; Old+bad@old.example\r\n"
        b"Final-Recipient: rfc822; bad@example.org\r\n" in status
    ), status
    assert status.count(b"Original-Recipient") == 1, status  # bad2@ came without one
