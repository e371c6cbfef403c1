"""Mail for this host's own name through the SMTP listener: an application that sends
its alerts to ``root@localhost`` (as to a local Postfix) gets them into root's local
Maildir, or wherever ``[local_names]`` sends root, with the listener on the daemon's
loop and in a process of its own; a reload that changes the rule restarts it."""

from __future__ import annotations

import smtplib

import pytest

from conftest import DEADLINE, Daemons, Home, wait_until


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
