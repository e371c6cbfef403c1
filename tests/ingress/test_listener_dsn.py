"""DSN (RFC 3461) at the SMTP listener: what a client asks with NOTIFY, RET and ENVID
becomes the message's, through Python's own smtplib as an application sends."""

from __future__ import annotations

import asyncio
import smtplib

from smtp_client import Raw, Recorder, serving

from spoolbox import NewMessage, Notify
from spoolbox.ingress.local_names import LocalNames

MESSAGE = "From: app@example.org\r\nTo: b@example.org\r\nSubject: t\r\n\r\nbody\r\n"


def _send(port: int, rcpts: list[str], mail: list[str], rcpt: list[str]) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("app.test")
        assert smtp.has_extn("dsn")
        return smtp.sendmail(
            "app@example.org", rcpts, MESSAGE, mail_options=mail, rcpt_options=rcpt
        )


async def test_notify_ret_and_envid_become_the_messages() -> None:
    submit = Recorder()
    async with serving(submit) as listener:
        refused = await asyncio.to_thread(
            _send,
            listener.port,
            ["b@example.org", "c@example.org"],
            ["RET=HDRS", "ENVID=order+2B42"],
            ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;b@example.org"],
        )
    assert refused == {}
    [m] = submit.messages
    assert m.notify == Notify.SUCCESS | Notify.DELAY
    assert (m.envelope_id, m.return_content) == ("order+42", False)
    assert [a.value for a in m.recipients] == ["b@example.org", "c@example.org"]


async def test_never_asks_for_no_report_and_full_for_the_whole_message() -> None:
    submit = Recorder()
    async with serving(submit) as listener:
        await asyncio.to_thread(_send, listener.port, ["b@example.org"], ["RET=FULL"], [])
        await asyncio.to_thread(_send, listener.port, ["b@example.org"], [], ["NOTIFY=NEVER"])
    first, second = submit.messages
    assert (first.notify, first.return_content, first.envelope_id) == (Notify.FAILURE, True, None)
    assert (second.notify, second.return_content) == (Notify.NEVER, None)


async def test_a_recipient_with_another_notify_is_sent_in_another_transaction() -> None:
    """One NOTIFY per stored message: the recipient that differs gets 452 4.5.3 (as a
    recipient over a limit), and the client sends it on its own."""
    submit = Recorder()
    async with serving(submit) as listener:
        raw = await Raw.connect(listener.port, greeting="220 mx.test ")
        await raw.cmd(b"EHLO app.test")
        assert (await raw.cmd(b"MAIL FROM:<app@example.org>")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<b@example.org> NOTIFY=NEVER")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<c@example.org>")) == (
            "452 4.5.3 This recipient's NOTIFY differs from the other recipients': "
            "send it in another transaction"
        )
        assert (await raw.cmd(b"RCPT TO:<d@example.org> NOTIFY=never")).startswith("250")
        assert (await raw.cmd(b"DATA")).startswith("354")
        assert (await raw.cmd(MESSAGE.encode() + b".")).startswith("250")
        # The next transaction starts afresh: its first recipient sets its NOTIFY.
        assert (await raw.cmd(b"MAIL FROM:<app@example.org>")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<c@example.org>")).startswith("250")
        assert (await raw.cmd(b"DATA")).startswith("354")
        assert (await raw.cmd(MESSAGE.encode() + b".")).startswith("250")
        await raw.close()
        assert listener.statistics()["rejected_notify_differs"] == 1
    first, second = submit.messages
    assert ([a.value for a in first.recipients], first.notify) == (
        ["b@example.org", "d@example.org"],
        Notify.NEVER,
    )
    assert ([a.value for a in second.recipients], second.notify) == (
        ["c@example.org"],
        Notify.FAILURE,
    )


class ManyRecorder(Recorder):
    """``submit_many`` too: the batches it was given, committed together or not at all
    (``fail``: the next batch is refused whole)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[NewMessage]] = []
        self.fail = False

    async def many(self, messages: list[NewMessage]) -> list[object]:
        if self.fail:
            self.fail = False
            raise OSError("disk on fire")
        self.batches.append(messages)
        self.messages.extend(messages)
        return list(messages)


async def test_recipients_with_different_notifys_are_one_message_each() -> None:
    """With ``submit_many`` (the daemon's), a transaction whose recipients ask for
    different NOTIFYs is taken whole: one message per NOTIFY, committed together, the
    250 naming each; Python's smtplib (one rcpt_options for all) and a raw client."""
    submit = ManyRecorder()
    async with serving(submit, submit_many=submit.many) as listener:
        raw = await Raw.connect(listener.port, greeting="220 mx.test ")
        await raw.cmd(b"EHLO app.test")
        assert (await raw.cmd(b"MAIL FROM:<app@example.org> RET=HDRS ENVID=e1")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<b@example.org> NOTIFY=NEVER")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<c@example.org>")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<d@example.org> NOTIFY=never")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<e@example.org> NOTIFY=SUCCESS,FAILURE")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<c@example.org> NOTIFY=SUCCESS")).startswith("250")
        assert (await raw.cmd(b"DATA")).startswith("354")
        done = await raw.cmd(MESSAGE.encode() + b".")
        # One submit_many of three messages; a failing one is a 451, nothing taken.
        submit.fail = True
        assert (await raw.cmd(b"MAIL FROM:<app@example.org>")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<f@example.org> NOTIFY=NEVER")).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<g@example.org>")).startswith("250")
        assert (await raw.cmd(b"DATA")).startswith("354")
        refused = await raw.cmd(MESSAGE.encode() + b".")
        await raw.close()
        assert listener.statistics().get("rejected_notify_differs", 0) == 0
    [batch] = submit.batches
    assert [([a.value for a in m.recipients], m.notify) for m in batch] == [
        (["b@example.org", "d@example.org"], Notify.NEVER),
        (["c@example.org"], Notify.FAILURE),  # named again later: kept once, the first
        (["e@example.org"], Notify.SUCCESS | Notify.FAILURE),
    ]
    assert {(m.envelope_id, m.return_content, m.sender) for m in batch} == {
        ("e1", False, batch[0].sender)
    }
    assert len({m.id for m in batch}) == 3
    assert all(m.content.endswith(MESSAGE.encode()) for m in batch)
    assert all(f" id {m.id}" in m.content.split(b"\r\n\r\n")[0].decode() for m in batch)
    assert done == f"250 2.0.0 OK queued as {', '.join(m.id for m in batch)}"
    assert refused.startswith("451 4.3.0 Message not queued (OSError)")
    assert len(submit.messages) == 3


async def test_with_dsn_off_it_is_not_offered_nor_taken() -> None:
    async with serving(Recorder(), dsn=False) as listener:
        raw = await Raw.connect(listener.port, greeting="220 mx.test ")
        assert "DSN" not in await raw.cmd(b"EHLO app.test")
        assert await raw.cmd(b"MAIL FROM:<app@example.org> RET=FULL") == (
            "555 5.5.4 MAIL parameter RET not supported"
        )
        await raw.close()


async def test_orcpt_is_kept_with_its_recipient() -> None:
    """RFC 3461 ORCPT, one per recipient, its xtext decoded; a recipient without one has
    none; a recipient named twice keeps the first one's."""
    submit = Recorder()
    async with serving(submit) as listener:
        raw = await Raw.connect(listener.port, greeting="220 mx.test ")
        await raw.cmd(b"EHLO app.test")
        assert (await raw.cmd(b"MAIL FROM:<app@example.org>")).startswith("250")
        line = b"RCPT TO:<b@example.org> ORCPT=rfc822;Bob+2Bold@old.example"
        assert (await raw.cmd(line)).startswith("250")
        assert (await raw.cmd(b"RCPT TO:<c@example.org>")).startswith("250")
        again = b"RCPT TO:<b@example.org> ORCPT=rfc822;other@old.example"
        assert (await raw.cmd(again)).startswith("250")
        assert (await raw.cmd(b"DATA")).startswith("354")
        assert (await raw.cmd(MESSAGE.encode() + b".")).startswith("250")
        await raw.close()
    [m] = submit.messages
    assert [a.value for a in m.recipients] == ["b@example.org", "c@example.org"]
    assert [m.original_of(a) for a in m.recipients] == ["rfc822;Bob+old@old.example", None]


async def test_a_local_name_keeps_the_address_it_was_given_as_its_original() -> None:
    """root@localhost stands for the local mailbox here: reports name the address the
    client gave (Original-Recipient), as Postfix keeps it before alias expansion; an
    ORCPT the client gave wins."""
    submit = Recorder()
    rule = LocalNames.build(host_names=["localhost"], address_type="MAILDIR")
    async with serving(submit, local_names=rule) as listener:
        await asyncio.to_thread(
            _send, listener.port, ["root@localhost", "b@example.org"], [], ["NOTIFY=FAILURE"]
        )
        await asyncio.to_thread(
            _send, listener.port, ["root@localhost"], [], ["ORCPT=rfc822;admin@old.example"]
        )
    first, second = submit.messages
    assert [(str(a), first.original_of(a)) for a in first.recipients] == [
        ("MAILDIR:root", "rfc822;root@localhost"),
        ("SMTP:b@example.org", None),
    ]
    assert [second.original_of(a) for a in second.recipients] == ["rfc822;admin@old.example"]
