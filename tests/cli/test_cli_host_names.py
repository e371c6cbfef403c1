"""Mail for this host's own name through the SMTP listener: an application that sends
its alerts to ``root@localhost`` (as to a local Postfix) gets them into root's local
Maildir, or wherever ``[local_names]`` sends root, with the listener on the daemon's
loop and in a process of its own; a reload that changes the rule restarts it."""

from __future__ import annotations

import json
import smtplib

import pytest

from conftest import DEADLINE, Daemons, Home, wait_until
from spoolbox import Address, NewMessage
from spoolbox.api.client import Client
from spoolbox.profile import load_profile


def _send(home: Home, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        smtp.sendmail("monitor@example.org", [to], f"Subject: {subject}\r\n\r\nbody\r\n")


@pytest.mark.parametrize("processes", [0, 1])
def test_root_at_localhost_is_delivered_here(home: Home, daemons: Daemons, processes: int) -> None:
    text = home.profile.read_text()
    line = next(x for x in text.splitlines() if x.startswith("processes = "))
    text = text.replace(line, f"processes = {processes}", 1)
    home.profile.write_text(text)
    daemons.start(home)
    _send(home, "root@localhost", "disk full")
    wait_until("the alert in root's Maildir", lambda: "disk full" in home.delivered())
    [file] = home.delivered()["disk full"]
    assert file.parent.parent.name == "root"

    old = 'address_type = "MAILDIR"\n'
    home.profile.write_text(text.replace(old, old + 'aliases = { root = "MAILDIR:admin" }\n'))
    r = home.run("reload")
    assert r.returncode == 0, r.stderr
    _send(home, "Root@LOCALHOST", "disk still full")
    wait_until("the alert in admin's Maildir", lambda: "disk still full" in home.delivered())
    [file] = home.delivered()["disk still full"]
    assert file.parent.parent.name == "admin"


def test_the_python_api_takes_root_at_this_hosts_name_as_root(home: Home, daemons: Daemons) -> None:
    """``spoolbox send`` and ``Client.submit`` (Django's backend goes through it), with
    and without the daemon: as sendmail and the listener take it."""
    host = load_profile(home.profile).spooler.hostname
    r = home.run("send", "--to", f"root@{host}", "--subject", "offline", "--json")
    assert r.returncode == 0, r.stderr
    offline = json.loads(r.stdout)
    assert offline["via"] == "store"
    shown = home.json("queue", "show", offline["id"])
    assert [x["address"] for x in shown["recipients"]] == ["MAILDIR:root"]
    # The address as it was given is the recipient's original (RFC 3461 ORCPT): a
    # report names it, as the listener's do.
    assert [x["original"] for x in shown["recipients"]] == [f"rfc822;root@{host}"]
    daemons.start(home)
    client = Client(load_profile(home.profile))
    result = client.submit(
        NewMessage(
            sender=Address("SMTP", "app@example.org"),
            recipients=(Address("SMTP", "root@localhost"), Address("MAILDIR", "root")),
            content=b"Subject: online\r\n\r\nbody\r\n",
        )
    )
    assert result["via"] == "daemon"
    wait_until(
        "both in root's Maildir",
        lambda: {"offline", "online"} <= set(home.delivered()),
    )
    assert home.json("queue", "show", result["id"])["recipients"][0]["address"] == "MAILDIR:root"
    assert len(home.json("queue", "show", result["id"])["recipients"]) == 1  # root once
    assert [r["original"] for r in home.json("queue", "show", result["id"])["recipients"]] == [
        "rfc822;root@localhost"
    ]
    # An original the client gave for root@localhost goes with what it stands for.
    given = client.submit(
        NewMessage(
            sender=Address("SMTP", "app@example.org"),
            recipients=(Address("SMTP", "root@localhost"),),
            content=b"Subject: given\r\n\r\nbody\r\n",
            original_recipients=((Address("SMTP", "root@localhost"), "rfc822;ops@old.example"),),
        )
    )
    recipients = home.json("queue", "show", given["id"])["recipients"]
    assert [(r["address"], r["original"]) for r in recipients] == [
        ("MAILDIR:root", "rfc822;ops@old.example")
    ]
    # Given as it is first, then as root@localhost: as first given, no original (the
    # listener's and sendmail's rule).
    direct = client.submit(
        NewMessage(
            sender=Address("SMTP", "app@example.org"),
            recipients=(Address("MAILDIR", "root"), Address("SMTP", "root@localhost")),
            content=b"Subject: direct\r\n\r\nbody\r\n",
        )
    )
    recipients = home.json("queue", "show", direct["id"])["recipients"]
    assert [(r["address"], r["original"]) for r in recipients] == [("MAILDIR:root", None)]
