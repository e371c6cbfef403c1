"""Refused at submit, through the real ``spoolbox`` command and daemon (issue 15).

With the profile ``spoolbox init`` writes, only MAILDIR is served (the ``local``
transport); an SMTP recipient used to be queued and fail at once, its report lost.
Now ``spoolbox send`` refuses it, exit 67, nothing stored, with the daemon running
or not (the same rule, :func:`spoolbox.routing.unroutable`); the daemon's SMTP
listener answers ``550 5.1.2`` at RCPT TO; and the profile's ``hostname`` is the
name the listener, the Message-IDs and the Maildir file names carry.
"""

from __future__ import annotations

import json
import smtplib

import pytest

from conftest import Daemons, Home, wait_until
from spoolbox.api.client import EXIT_UNROUTABLE, Client, UnroutableRecipient
from spoolbox.model import Address, NewMessage

HOSTNAME = "mx.example.test"
REASON = "no transport serves address type SMTP (local serves MAILDIR)"


def refused_send(home: Home) -> str:
    """``spoolbox send`` to an SMTP and a MAILDIR recipient: refused whole."""
    r = home.run("send", "--to", "SMTP:bob@example.org", "--to", "MAILDIR:carol", "--json")
    assert r.returncode == EXIT_UNROUTABLE == 67, (r.returncode, r.stdout, r.stderr)
    error = json.loads(r.stdout)["error"]
    assert error["code"] == "unroutable" and error["exit_code"] == 67
    assert f"SMTP:bob@example.org: {REASON}" in error["message"]
    assert "MAILDIR:carol" not in error["message"]  # served: not named
    assert home.json("queue", "list", "--all")["messages"] == []  # nothing stored
    return str(error["message"])


def _message(*recipients: str) -> NewMessage:
    return NewMessage(
        sender=None,
        recipients=tuple(Address.parse(r) for r in recipients),
        content=b"Subject: x\r\n\r\nx\r\n",
    )


def test_send_to_an_unroutable_recipient_is_refused_without_the_daemon(home: Home) -> None:
    message = refused_send(home)
    assert message.startswith("refused, nothing queued: ")
    client = Client(home.profile)
    with pytest.raises(UnroutableRecipient, match=r"^messages\[1\]: refused, nothing queued"):
        client.submit_many([_message("MAILDIR:bob"), _message("FAX:+1555")])
    assert client.queue() == []  # the whole batch refused
    assert client.submit(_message("MAILDIR:bob"))["via"] == "store"


def test_the_daemon_refuses_the_same_and_its_listener_says_550(
    home: Home, daemons: Daemons
) -> None:
    home.profile.write_text(f'hostname = "{HOSTNAME}"\n' + home.profile.read_text())
    daemons.start(home)
    refused_send(home)
    with pytest.raises(UnroutableRecipient, match=r"SMTP:bob@example\.org: no transport"):
        Client(home.profile).submit(_message("SMTP:bob@example.org"), fallback=False)

    def listening() -> str:
        rows = {r["name"]: r for r in home.json("status")["rows"]}
        return str(rows.get("listener:submission", {}).get("status", ""))

    wait_until("the listener", lambda: listening().startswith("listening on"))
    port = int(listening().rsplit(":", 1)[1])
    with smtplib.SMTP(timeout=30) as smtp:
        code, banner = smtp.connect("127.0.0.1", port)
        assert code == 220 and banner.startswith(HOSTNAME.encode() + b" ")
        smtp.ehlo("client.test")
        smtp.mail("alice@example.org")
        code, text = smtp.rcpt("bob@example.org")
    assert code == 550
    assert text.decode() == f"5.1.2 <bob@example.org>: Recipient address rejected: {REASON}"

    # What is routable goes through, named after the profile's hostname.
    r = home.run("send", "--to", "MAILDIR:carol", "--subject", "named")
    assert r.returncode == 0, r.stderr
    wait_until("delivery", lambda: "named" in home.delivered())
    [path] = home.delivered()["named"]
    assert path.name.endswith("." + HOSTNAME)
    assert f"@{HOSTNAME}>" in path.read_text().split("Message-ID:", 1)[1].splitlines()[0]


def test_a_display_name_is_refused_at_send_saying_what_to_write(home: Home) -> None:
    r = home.run("send", "--to", "SMTP:Web <web@example.org>")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "display names are not part of an address: use SMTP:web@example.org" in r.stderr
