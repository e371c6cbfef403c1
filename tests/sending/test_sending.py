"""``spoolbox.send`` and ``spoolbox.send_message``: what they queue (read back from the
store), their errors, and through a real ``spoolbox run`` what arrives at aiosmtpd."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import spoolbox
from spoolbox.client import Client, UnroutableRecipient
from spoolbox.profile import ProfileError

Spool = Any  # conftest's Spool (not imported: see conftest's docstring)


def parsed(content: bytes) -> EmailMessage:
    message = message_from_bytes(content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_send_builds_and_queues_the_message(spool: Spool, tmp_path: Path) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4 " + bytes(range(256)))
    message_id = spoolbox.send(
        profile=spool.path,
        to=["Bob <bob@example.org>", "carol@example.org"],
        cc="dave@bücher.example",
        bcc=["boss@example.org"],
        reply_to="help@example.org",
        sender="Reports <reports@example.org>",
        subject="Weekly report ü",
        body="See attached.",
        html="<p>See attached.</p>",
        attachments=[report, ("data.csv", b"a,b\r\n1,2\r\n", "text/csv")],
        headers={"X-Job": "weekly"},
    )
    [stored] = spool.stored()
    assert stored.id == message_id
    assert stored.sender == "SMTP:reports@example.org"
    assert stored.recipients == [
        "SMTP:bob@example.org",
        "SMTP:carol@example.org",
        "SMTP:dave@xn--bcher-kva.example",  # the IDNA form of the domain
        "SMTP:boss@example.org",
    ]
    got = parsed(stored.content)
    assert got["From"] == "Reports <reports@example.org>"
    assert got["To"] == "Bob <bob@example.org>, carol@example.org"
    assert got["Cc"] == "dave@xn--bcher-kva.example"
    assert got["Reply-To"] == "help@example.org"
    assert got["Subject"] == "Weekly report ü"
    assert got["X-Job"] == "weekly"
    assert got["Date"] and got["Message-ID"]
    assert "Bcc" not in got and b"boss@" not in stored.content
    assert b"\r\n" in stored.content and b"\n" not in stored.content.replace(b"\r\n", b"")
    parts = {
        p.get_filename() or p.get_content_type(): p for p in got.walk() if not p.is_multipart()
    }
    assert parts["text/plain"].get_content().strip() == "See attached."
    assert parts["text/html"].get_content().strip() == "<p>See attached.</p>"
    assert parts["report.pdf"].get_content_type() == "application/pdf"  # guessed from the name
    assert parts["report.pdf"].get_content() == report.read_bytes()
    assert parts["data.csv"].get_content_type() == "text/csv"


def test_send_defaults_the_sender_and_routes_other_address_types(
    spool: Spool, tmp_path: Path
) -> None:
    profile = spool.path
    profile.write_text(
        profile.read_text()
        + '[[transports]]\nname = "local"\nprovider = "maildir"\naddress_types = ["MAILDIR"]\n'
        '[transports.options]\nroot = "mail"\n'
    )
    spoolbox.send(profile=profile, to="MAILDIR:bob", subject="local", body="hi")
    [stored] = spool.stored()
    assert stored.sender == "SMTP:script@example.org"  # the profile's first identity
    assert stored.recipients == ["MAILDIR:bob"]
    got = parsed(stored.content)
    assert got["From"] == "script@example.org"
    assert got["To"] == "undisclosed-recipients:;"  # a MAILDIR path is no header address


def test_send_message_takes_the_recipients_from_the_headers_and_drops_bcc(
    spool: Spool,
) -> None:
    message = EmailMessage()
    message["From"] = "Ops <ops@example.org>"
    message["To"] = "Bob <bob@example.org>, carol@example.org"
    message["Cc"] = "dave@example.org"
    message["Bcc"] = "audit@example.org"
    message["Subject"] = "Disk full"
    message.set_content("on /var")
    message_id = spoolbox.send_message(message, profile=spool.path)
    [stored] = spool.stored()
    assert stored.id == message_id
    assert stored.sender == "SMTP:ops@example.org"
    assert stored.recipients == [
        "SMTP:bob@example.org",
        "SMTP:carol@example.org",
        "SMTP:dave@example.org",
        "SMTP:audit@example.org",
    ]
    got = parsed(stored.content)
    assert "Bcc" not in got and b"audit@" not in stored.content
    assert got["Date"] and got["Message-ID"]  # added: the message had none
    assert got["Subject"] == "Disk full" and got.get_content().strip() == "on /var"
    assert message["Bcc"] == "audit@example.org"  # the caller's object is unchanged
    assert "Date" not in message


def test_send_message_keeps_its_date_and_id_and_takes_explicit_recipients(
    spool: Spool,
) -> None:
    message = EmailMessage()
    message["To"] = "list@example.org"
    message["Subject"] = "digest"
    message["Date"] = "Tue, 01 Dec 2026 10:00:00 +0000"
    message["Message-ID"] = "<digest-1@example.org>"
    message.set_content("...")
    spoolbox.send_message(message, profile=spool.path, to=["member@example.org"])
    [stored] = spool.stored()
    assert stored.recipients == ["SMTP:member@example.org"]
    assert stored.sender == "SMTP:script@example.org"  # no From: the profile's identity
    got = parsed(stored.content)
    assert got.get_all("Date") == ["Tue, 01 Dec 2026 10:00:00 +0000"]
    assert got.get_all("Message-ID") == ["<digest-1@example.org>"]


def test_the_profile_defaults_to_the_environment(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOOLBOX_PROFILE", str(spool.path))
    spoolbox.send(to="bob@example.org", subject="env", body="x")
    assert [parsed(s.content)["Subject"] for s in spool.stored()] == ["env"]


def test_an_edited_profile_is_read_again(spool: Spool) -> None:
    spoolbox.send(profile=spool.path, to="bob@example.org", subject="before")
    text = spool.path.read_text().replace("script@example.org", "robot@example.org")
    spool.path.write_text(text)
    stat = spool.path.stat()  # the same mtime is possible on a coarse clock: move it on
    os.utime(spool.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    spoolbox.send(profile=str(spool.path), to="bob@example.org", subject="after")
    assert [s.sender for s in spool.stored()] == [
        "SMTP:script@example.org",
        "SMTP:robot@example.org",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        (
            {"to": ["bob@example.org", "bob at example.org"]},
            spoolbox.AddressError,
            "to[1]: 'bob at example.org' is not an e-mail address (write it as bob@example.org)",
        ),
        (
            {"to": "bob@"},
            spoolbox.AddressError,
            "to[0]: 'bob@' is not an e-mail address (write it as bob@example.org)",
        ),
        (
            {"to": "a@example.org, b@example.org"},
            spoolbox.AddressError,
            "to[0]: 'a@example.org, b@example.org' is not one e-mail address",
        ),
        (
            {"to": "bob@example.org", "cc": "Bob <bob@example.org"},
            spoolbox.AddressError,
            "cc[0]: 'Bob <bob@example.org' is not an e-mail address",
        ),
        ({"to": []}, spoolbox.AddressError, "no recipient: give to="),
        (
            {"to": "bob@example.org", "attachments": ["missing.pdf"]},
            FileNotFoundError,
            "attachments[0]: cannot attach 'missing.pdf': No such file or directory",
        ),
        (
            {"to": "bob@example.org", "headers": {"BCC": "x@example.org"}},
            ValueError,
            "headers['BCC']: use bcc= (a Bcc field is never sent)",
        ),
    ],
)
def test_send_refuses_bad_input_saying_what_and_where(
    spool: Spool, kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        spoolbox.send(profile=spool.path, subject="s", **kwargs)
    assert text in str(caught.value)
    assert spool.stored() == []


def test_a_missing_profile_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as caught:
        spoolbox.send(profile=tmp_path / "nope.toml", to="bob@example.org", subject="s")
    assert str(caught.value) == (
        f"{tmp_path / 'nope.toml'}: no such profile (create one with `spoolbox init`, "
        "or pass --profile)"
    )


def test_no_sender_anywhere_is_refused(tmp_path: Path, smart_host: tuple[Any, int]) -> None:
    profile = tmp_path / "spoolbox.toml"
    profile.write_text(
        'data_dir = "."\n[[transports]]\nname = "relay"\nprovider = "smtp"\n'
        f'address_types = ["SMTP"]\n[transports.options]\nport = {smart_host[1]}\n'
    )
    with pytest.raises(spoolbox.AddressError, match="no sender: pass sender="):
        spoolbox.send(profile=profile, to="bob@example.org", subject="s")


def test_an_unroutable_recipient_queues_nothing(spool: Spool) -> None:
    with pytest.raises(UnroutableRecipient, match=r"FAX:\+15551234: no transport serves"):
        spoolbox.send(profile=spool.path, to=["bob@example.org", "FAX:+15551234"], subject="s")
    assert spool.stored() == []


def test_send_message_refuses_what_is_not_a_message(spool: Spool) -> None:
    with pytest.raises(TypeError, match=r"takes an email\.message\.EmailMessage, not bytes"):
        spoolbox.send_message(b"Subject: x\r\n\r\n", profile=spool.path)  # type: ignore[arg-type]
    empty = EmailMessage()
    empty["Subject"] = "to nobody"
    with pytest.raises(spoolbox.AddressError, match="no recipient: the message has no To"):
        spoolbox.send_message(empty, profile=spool.path)
    bad = EmailMessage()
    bad["To"] = "nobody at all"
    with pytest.raises(
        spoolbox.AddressError, match=r"the To field: .*nobody at all.* is not an e-mail address"
    ):
        spoolbox.send_message(bad, profile=spool.path)


def test_through_a_running_daemon_the_bytes_arrive(
    spool: Spool, daemon: Callable[[Path], Any]
) -> None:
    running = daemon(spool.path)
    spoolbox.send(
        profile=spool.path,
        to="bob@example.org",
        bcc="boss@example.org",
        subject="via the daemon",
        body="hello",
        attachments=[("blob.bin", bytes(range(256)))],
    )
    host = spool.host
    end = time.monotonic() + 60
    while not host.received:
        assert time.monotonic() < end, "timed out waiting for the smart host"
        time.sleep(0.05)
    [arrived] = host.received
    assert arrived.mail_from == "script@example.org"
    assert sorted(arrived.rcpt_tos) == ["bob@example.org", "boss@example.org"]
    got = parsed(arrived.original_content)
    assert got["Subject"] == "via the daemon" and "Bcc" not in got
    [blob] = [p for p in got.walk() if p.get_filename() == "blob.bin"]
    assert blob.get_content() == bytes(range(256))
    assert "local API: submit [" in running.text()  # it went through the daemon
    assert Client(spool.path).running()


def test_a_kept_store_connection_is_reused_until_closed(spool: Spool) -> None:
    """``keep_store_open`` (what spoolbox.send's clients use): the daemon down, the
    submissions share one open connection.  SQLite removes the -wal file when its last
    connection closes, so the file's presence between submissions shows it open."""
    wal = spool.path.parent / "spool.sqlite3-wal"
    kept = Client(spool.path, keep_store_open=True)
    plain = Client(spool.path)

    def message(subject: str) -> spoolbox.NewMessage:
        content = f"Subject: {subject}\r\n\r\nx\r\n".encode()
        return spoolbox.NewMessage.from_bytes(content, recipients=["SMTP:bob@example.org"])

    assert plain.submit(message("plain"))["via"] == "store"
    assert not wal.exists()  # opened and closed for the one submission
    kept.submit(message("kept 1"))
    assert wal.exists()
    kept.submit(message("kept 2"))
    kept.close()
    assert not wal.exists()
    kept.submit(message("kept 3"))  # opened again after close()
    kept.close()
    subjects = [parsed(s.content)["Subject"] for s in spool.stored()]
    assert subjects == ["plain", "kept 1", "kept 2", "kept 3"]


@pytest.mark.parametrize(
    "plain",
    ["Bob@Example.ORG", "a.b+tag@x-y.example.org", "o'neil@example.org", "a@-x.org", "~!#@x.y"],
)
def test_a_bare_address_is_read_as_the_parser_reads_it(plain: str) -> None:
    """Bare ASCII addresses skip the header parser (the common case, 20 times faster):
    the same address comes out as from the parsed ``Name <address>`` form."""
    from spoolbox.api.sending import envelope_address

    assert envelope_address(plain, "to[0]") == envelope_address(f"Name <{plain}>", "to[0]")
    assert str(envelope_address(plain, "to[0]")) == f"SMTP:{plain}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"A: 1\r\nBcc: x@y.org,\r\n\tz@y.org\r\n\r\nbody\r\n", b"A: 1\r\n\r\nbody\r\n"),
        (b"Bcc: x@y.org\r\nA: 1\r\n\r\nBcc: in the body\r\n", b"A: 1\r\n\r\nBcc: in the body\r\n"),
        (b"A: 1\nRESENT-BCC: x@y.org\n\nbody\n", b"A: 1\n\nbody\n"),
        (b"A: 1\r\nBcc: x@y.org\r\n", b"A: 1\r\n"),
        (b"A: 1\r\nBccx: kept\r\n\r\nb", b"A: 1\r\nBccx: kept\r\n\r\nb"),
    ],
)
def test_without_bcc_drops_the_fields_and_nothing_else(content: bytes, expected: bytes) -> None:
    from spoolbox.api.sending import without_bcc

    assert without_bcc(content) == expected


def test_a_user_who_may_not_write_the_store_is_told_nothing_was_queued(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web application's user (a member of ``socket_group``) submits through the
    daemon; with the daemon down it falls back to the store, which it may not write
    (the data directory is 0700): a temporary error saying both, not "permission
    denied" alone (sendmail exited 77, EX_NOPERM, as if it were never allowed).
    Tests run as root, whom the OS lets write anything: the store's directory is
    given to another user, and its refusal is the OS's error, raised where the store
    is opened (tried for real as another user: docs/operations.md, "Letting an
    application submit")."""
    from spoolbox.api.client import StoreNotWritable
    from spoolbox.ingress.sendmail import EX_TEMPFAIL, _exit_for

    client = Client(spool.path)
    store_dir = client.profile.store.path.parent
    owner = store_dir.stat()
    os.chown(store_dir, 65534, 65534)  # the service's, not this user's (nobody's here)

    def refused(op: str, messages: object) -> list[str]:
        raise PermissionError(13, "Permission denied", str(spool.path.parent / "spool.sqlite3"))

    monkeypatch.setattr(client, "_put", refused)
    message = spoolbox.NewMessage.from_bytes(
        b"Subject: s\r\n\r\nx\r\n", recipients=["SMTP:b@x.org"]
    )
    with pytest.raises(StoreNotWritable) as err:
        client.submit(message)
    text = str(err.value)
    assert text.startswith("the spooler daemon is not running")
    assert text.endswith(
        f"; and this user may not write the store itself ({spool.path.parent / 'spool.sqlite3'}: "
        "Permission denied): nothing was queued"
    )
    assert _exit_for(err.value) == (
        EX_TEMPFAIL,
        f"the spool is busy or unavailable, try again later: {text}",
    )
    os.chown(store_dir, owner.st_uid, owner.st_gid)
    assert spool.stored() == []
    # A directory of this user's that the OS refuses all the same is an OS error, as
    # it was (tests/cli/test_os_errors.py, a store under /sys).
    with pytest.raises(PermissionError):
        client.submit(message)


def test_the_reports_a_sender_asks_for(spool: Spool) -> None:
    """``notify=``: a delay report (after the policy's delay_warning_after) only when
    asked for; the default is failure reports alone."""
    spoolbox.send(profile=spool.path, to="bob@example.org", subject="default", body="x")
    spoolbox.send(
        profile=spool.path,
        to="bob@example.org",
        subject="with delay",
        notify=spoolbox.Notify.FAILURE | spoolbox.Notify.DELAY,
    )
    message = EmailMessage()
    message["To"] = "bob@example.org"
    message["Subject"] = "never"
    spoolbox.send_message(message, profile=spool.path, notify=spoolbox.Notify.NEVER)
    assert [s.notify for s in spool.stored()] == [
        spoolbox.Notify.FAILURE,
        spoolbox.Notify.FAILURE | spoolbox.Notify.DELAY,
        spoolbox.Notify.NEVER,
    ]
