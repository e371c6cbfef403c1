"""spoolbox.django.EmailBackend under a real Django (settings.configure, see conftest),
driven through Django's own mail API, checked in the bytes the store keeps and, through
a real ``spoolbox run``, in the bytes an aiosmtpd smart host receives."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage as ParsedMessage
from email.mime.image import MIMEImage
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import spoolbox.django
from spoolbox import AddressError
from spoolbox.client import Client, UnroutableRecipient

Spool = Any  # conftest's Spool (not imported: see conftest's docstring)

#: Binary bytes no text encoding would keep: every byte value, four times.
BLOB = bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


def parsed(content: bytes) -> ParsedMessage:
    message = message_from_bytes(content, policy=policy.default)
    assert isinstance(message, ParsedMessage)
    return message


def rich_message() -> mail.EmailMultiAlternatives:
    """Every feature at once: cc, bcc, reply_to, custom headers, an HTML alternative
    with an inline image, a binary and a non-ASCII text attachment."""
    message = mail.EmailMultiAlternatives(
        subject="Quarterly figures ü",
        body="Figures attached.",
        from_email="Reports <reports@example.org>",
        to=["Bob <bob@example.org>"],
        cc=["carol@example.org"],
        bcc=["Hidden Boss <boss@example.org>"],
        reply_to=["finance@example.org"],
        headers={"X-Campaign": "q3", "List-Unsubscribe": "<mailto:unsub@example.org>"},
    )
    message.attach_alternative('<p>Figures: <img src="cid:chart"></p>', "text/html")
    message.attach("figures.bin", BLOB, "application/octet-stream")
    message.attach("notes.txt", "Grüße, Zoë\n", "text/plain")
    image = MIMEImage(PNG, "png")
    image.add_header("Content-ID", "<chart>")
    image.add_header("Content-Disposition", "inline", filename="chart.png")
    message.attach(image)
    return message


def check_rich(content: bytes) -> None:
    """The rich message's bytes as they must leave: parts intact, no Bcc anywhere."""
    got = parsed(content)
    assert "Bcc" not in got
    assert b"boss@example.org" not in content
    assert got["To"] == "Bob <bob@example.org>"
    assert got["Cc"] == "carol@example.org"
    assert got["Reply-To"] == "finance@example.org"
    assert got["X-Campaign"] == "q3"
    assert got["List-Unsubscribe"] == "<mailto:unsub@example.org>"
    assert got["Subject"] == "Quarterly figures ü"
    parts = {
        part.get_filename() or part.get_content_type(): part
        for part in got.walk()
        if not part.is_multipart()
    }
    assert parts["text/plain"].get_content() == "Figures attached."
    assert "cid:chart" in parts["text/html"].get_content()
    assert parts["figures.bin"].get_content() == BLOB
    # (a text part travels in its canonical form, CRLF line ends: RFC 2046 4.1.1)
    assert parts["notes.txt"].get_content() == "Grüße, Zoë\r\n"
    assert parts["chart.png"]["Content-ID"] == "<chart>"
    assert parts["chart.png"].get_content() == PNG


def test_send_mail_queues_the_envelope_django_gives(django_spool: Spool) -> None:
    assert mail.send_mail("Hello", "Hi Bob.", None, ["Bob <bob@example.org>"]) == 1
    [stored] = django_spool.stored()
    assert stored.sender == "SMTP:web@example.org"  # DEFAULT_FROM_EMAIL, without its name
    assert stored.recipients == ["SMTP:bob@example.org"]
    got = parsed(stored.content)
    assert (got["From"], got["To"], got["Subject"]) == (
        "Web <web@example.org>",
        "Bob <bob@example.org>",
        "Hello",
    )
    assert got.get_content().strip() == "Hi Bob."
    assert b"\r\n" in stored.content and b"\n" not in stored.content.replace(b"\r\n", b"")


def test_a_rich_message_keeps_its_parts_and_bcc_stays_out_of_the_headers(
    django_spool: Spool,
) -> None:
    message = rich_message()
    assert message.send() == 1
    [stored] = django_spool.stored()
    assert message.spoolbox_id == stored.id
    assert stored.sender == "SMTP:reports@example.org"
    assert stored.recipients == [
        "SMTP:bob@example.org",
        "SMTP:carol@example.org",
        "SMTP:boss@example.org",
    ]
    check_rich(stored.content)


def test_a_bcc_header_given_as_a_custom_header_is_dropped_too(django_spool: Spool) -> None:
    message = mail.EmailMessage(
        "s", "b", to=["bob@example.org"], headers={"Bcc": "sneaky@example.org"}
    )
    assert message.send() == 1
    [stored] = django_spool.stored()
    assert b"sneaky@example.org" not in stored.content
    assert "Bcc" not in parsed(stored.content)


def test_a_batch_is_queued_with_an_id_for_each_message(django_spool: Spool) -> None:
    messages = [
        mail.EmailMessage(f"n{i}", "b", "f@example.org", [f"t{i}@example.org"]) for i in range(3)
    ]
    with mail.get_connection() as connection:
        assert connection.send_messages(messages) == 3
    stored = {one.id: one for one in django_spool.stored()}
    assert sorted(stored) == sorted(m.spoolbox_id for m in messages)
    for i, message in enumerate(messages):
        assert stored[message.spoolbox_id].recipients == [f"SMTP:t{i}@example.org"]


def test_send_mass_mail_and_mail_admins(django_spool: Spool) -> None:
    datatuple = (
        ("one", "first", "news@example.org", ["a@example.org"]),
        ("two", "second", "news@example.org", ["b@example.org", "c@example.org"]),
    )
    assert mail.send_mass_mail(datatuple) == 2
    mail.mail_admins("boom", "Traceback ...")
    stored = django_spool.stored()
    assert [(s.sender, s.recipients) for s in stored] == [
        ("SMTP:news@example.org", ["SMTP:a@example.org"]),
        ("SMTP:news@example.org", ["SMTP:b@example.org", "SMTP:c@example.org"]),
        ("SMTP:server@example.org", ["SMTP:ops@example.org"]),  # SERVER_EMAIL -> ADMINS
    ]
    assert parsed(stored[2].content)["Subject"] == "[Django] boom"


def test_messages_without_recipients_are_skipped_as_django_does(django_spool: Spool) -> None:
    backend = mail.get_connection()
    assert backend.send_messages([]) == 0
    nobody = mail.EmailMessage("nobody", "b", "f@example.org", [])
    somebody = mail.EmailMessage("somebody", "b", "f@example.org", ["x@example.org"])
    assert backend.send_messages([nobody, somebody]) == 1
    assert [parsed(s.content)["Subject"] for s in django_spool.stored()] == ["somebody"]
    assert not hasattr(nobody, "spoolbox_id")


def test_batches_over_the_limit_go_in_several_transactions(
    django_spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spoolbox.django, "MAX_SUBMIT_MANY", 2)
    messages = [
        mail.EmailMessage(f"n{i}", "b", "f@example.org", ["x@example.org"]) for i in range(5)
    ]
    assert mail.get_connection().send_messages(messages) == 5
    assert sorted(s.id for s in django_spool.stored()) == sorted(m.spoolbox_id for m in messages)


def _maildir_only(tmp_path: Path) -> Path:
    """A profile whose one transport serves MAILDIR: every SMTP recipient is unroutable."""
    directory = tmp_path / "maildir-only"
    directory.mkdir()
    path = directory / "spoolbox.toml"
    path.write_text(
        'data_dir = "."\n[[transports]]\nname = "local"\nprovider = "maildir"\n'
        'address_types = ["MAILDIR"]\n[transports.options]\nroot = "mail"\n'
    )
    return path


def _nothing_stored(profile: Path) -> bool:
    return int(Client(profile).queue_listing(all=True)["total"]) == 0


def test_an_unroutable_recipient_refuses_the_whole_batch(
    django_configured: None, tmp_path: Path
) -> None:
    profile = _maildir_only(tmp_path)
    batch = [mail.EmailMessage(f"n{i}", "b", "f@example.org", ["x@example.org"]) for i in range(2)]
    backend = mail.get_connection(profile=str(profile))
    with pytest.raises(UnroutableRecipient, match=r"SMTP:x@example\.org: no transport serves"):
        backend.send_messages(batch)
    assert not any(hasattr(m, "spoolbox_id") for m in batch)
    quiet = mail.get_connection(profile=str(profile), fail_silently=True)
    assert quiet.send_messages(batch) == 0  # swallowed: the spooler refused the batch
    assert _nothing_stored(profile)


def test_fail_silently_does_not_hide_a_bad_profile_or_a_bad_address(
    django_spool: Spool, tmp_path: Path
) -> None:
    message = mail.EmailMessage("s", "b", "f@example.org", ["x@example.org"])
    missing = mail.get_connection(profile=str(tmp_path / "nowhere.toml"), fail_silently=True)
    with pytest.raises(ImproperlyConfigured, match=r"nowhere\.toml: no such profile"):
        missing.send_messages([message])
    bad = mail.EmailMessage("s", "b", "f@example.org", ["x@example.org", "not an address"])
    quiet = mail.get_connection(fail_silently=True)
    with pytest.raises(AddressError, match=r"to\[1\]: 'not an address' is not an e-mail"):
        quiet.send_messages([message, bad])
    assert django_spool.stored() == []  # the good message was not queued either


def test_the_profile_comes_from_the_setting_the_environment_or_the_directory(
    django_configured: None, spool: Spool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def send(subject: str) -> None:
        mail.EmailMessage(subject, "b", "f@example.org", ["x@example.org"]).send()

    with override_settings(SPOOLBOX_PROFILE=None):
        monkeypatch.setenv("SPOOLBOX_PROFILE", str(spool.path))
        send("from the environment")
        monkeypatch.delenv("SPOOLBOX_PROFILE")
        monkeypatch.chdir(spool.path.parent)
        send("from ./spoolbox.toml")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ImproperlyConfigured, match=r"spoolbox\.toml: no such profile"):
            send("from nowhere")
    with override_settings(SPOOLBOX_PROFILE=str(tmp_path / "elsewhere.toml")):
        mail.get_connection(profile=str(spool.path)).send_messages(
            [mail.EmailMessage("from the argument", "b", "f@example.org", ["x@example.org"])]
        )
    subjects = [parsed(s.content)["Subject"] for s in spool.stored()]
    assert subjects == ["from the environment", "from ./spoolbox.toml", "from the argument"]


def test_through_a_running_daemon_one_request_and_the_bytes_arrive(
    django_spool: Spool, daemon: Callable[[Path], Any]
) -> None:
    """``spoolbox run`` relays to aiosmtpd: the batch is one ``submit_many`` request
    (the daemon's debug log names each request), and what arrives is Django's message
    with its parts intact and no Bcc."""
    running = daemon(django_spool.path)
    rich = rich_message()
    plain = [
        mail.EmailMessage(f"n{i}", "b", "f@example.org", [f"t{i}@example.org"]) for i in range(2)
    ]
    assert mail.get_connection().send_messages([rich, *plain]) == 3
    host = django_spool.host
    deadline_wait(lambda: len(host.received) == 3)
    by_subject = {parsed(e.original_content)["Subject"]: e for e in host.received}
    arrived = by_subject["Quarterly figures ü"]
    assert arrived.mail_from == "reports@example.org"
    assert sorted(arrived.rcpt_tos) == ["bob@example.org", "boss@example.org", "carol@example.org"]
    check_rich(arrived.original_content)
    assert by_subject["n1"].rcpt_tos == ["t1@example.org"]
    requests = [line for line in running.text().splitlines() if "local API: submit" in line]
    assert len(requests) == 1 and "local API: submit_many" in requests[0], requests


def deadline_wait(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
    import time

    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "timed out waiting for the smart host"
        time.sleep(0.05)


def test_without_django_the_import_names_the_extra(tmp_path: Path) -> None:
    code = "import sys\nsys.modules['django'] = None\nimport spoolbox.django\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: spoolbox.django needs Django (django cannot be imported): "
        "pip install 'spoolbox[django]'"
    )
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-c", "import spoolbox.django"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr  # with Django there, importing it needs no settings
