"""``[[transports]] domains``: a transport limited to recipient domains (Postfix's
``transport_maps``).  A real daemon with two smtp transports, each to its own real
aiosmtpd server: corp.example's mail (and its subdomains') to the internal relay
written after the smart host, the rest to the smart host."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session

from conftest import DEADLINE, Daemons, Home, free_port, relay_home, wait_until


class _Server:
    def __init__(self) -> None:
        self.rcpts: list[str] = []

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.rcpts.extend(envelope.rcpt_tos)
        return "250 2.0.0 queued"


@pytest.fixture
def servers() -> Iterator[tuple[tuple[int, _Server], tuple[int, _Server]]]:
    made = []
    for _ in range(2):
        handler, port = _Server(), free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        made.append((controller, port, handler))
    try:
        yield (made[0][1], made[0][2]), (made[1][1], made[1][2])
    finally:
        for controller, _, _ in made:
            controller.stop()


def _home(directory: Path, relay: int, corp: int, domains: str) -> Home:
    home = relay_home(directory, relay)
    text = home.profile.read_text()
    text += (
        '\n[[transports]]\nname = "corp"\nprovider = "smtp"\naddress_types = ["SMTP"]\n'
        f"inbound = false\ndomains = {domains}\n"
        f'[transports.options]\nhost = "127.0.0.1"\nport = {corp}\ntls = "none"\n'
    )
    home.profile.write_text(text)
    return home


def test_each_domain_goes_to_its_transport(
    tmp_path: Path,
    daemons: Daemons,
    servers: tuple[tuple[int, _Server], tuple[int, _Server]],
) -> None:
    (relay_port, relay), (corp_port, corp) = servers
    home = _home(tmp_path / "d", relay_port, corp_port, '["corp.example", ".corp.example"]')
    r = home.run("sendmail", "-bv", "ann@corp.example", "eve@eu.corp.example", "bob@example.org")
    assert (r.returncode, r.stdout) == (
        0,
        "SMTP:ann@corp.example: deliverable: transport corp\n"
        "SMTP:eve@eu.corp.example: deliverable: transport corp\n"
        "SMTP:bob@example.org: deliverable: transport relay\n",
    )
    listed = home.json("transports")["configured"]
    assert [(t["name"], t["domains"]) for t in listed] == [
        ("local", None),
        ("relay", None),
        ("corp", [".corp.example", "corp.example"]),
    ]
    r = home.run("transports")
    assert "SMTP at .corp.example, corp.example" in r.stdout
    daemons.start(home)
    assert [(t["name"], t["domains"]) for t in home.json("transports")["configured"]] == [
        ("local", None),
        ("relay", None),
        ("corp", [".corp.example", "corp.example"]),
    ]
    for to in ("ann@corp.example", "eve@eu.corp.example", "bob@example.org"):
        r = home.run("send", "--to", to, "--subject", f"to {to}")
        assert r.returncode == 0, r.stderr
    wait_until("both servers to have their mail", lambda: len(corp.rcpts + relay.rcpts) == 3)
    assert sorted(corp.rcpts) == ["ann@corp.example", "eve@eu.corp.example"]
    assert relay.rcpts == ["bob@example.org"]


def test_a_domain_no_transport_serves_is_refused_and_a_bad_entry_named(
    tmp_path: Path,
    daemons: Daemons,
    servers: tuple[tuple[int, _Server], tuple[int, _Server]],
) -> None:
    (relay_port, _), (corp_port, _) = servers
    home = _home(tmp_path / "d", relay_port, corp_port, '["corp.example"]')
    # Without the smart host, mail for other domains has nowhere to go: refused.
    text = home.profile.read_text()
    home.profile.write_text(
        text.replace('\nname = "relay"\n', '\nname = "relay"\noutbound = false\n')
    )
    r = home.run("sendmail", "-bv", "bob@example.org")
    assert r.returncode == 67
    assert r.stdout == (
        "SMTP:bob@example.org: undeliverable: no transport serves address type SMTP at "
        "domain example.org (corp: SMTP at corp.example)\n"
    )
    r = home.run("send", "--to", "bob@example.org", "--subject", "x")
    assert r.returncode != 0
    assert "no transport serves address type SMTP at domain example.org" in r.stderr
    # The listener (in a process of its own where there are two CPUs: it gets the
    # routing table from the daemon) refuses it at RCPT, and takes corp.example's.
    proc = daemons.start(home)
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("app@example.org")[0] == 250
        code, reply = smtp.rcpt("bob@example.org")
        assert code == 550, reply
        assert b"no transport serves address type SMTP at domain example.org" in reply
        assert smtp.rcpt("ann@corp.example")[0] == 250
    assert daemons.stop(proc) == 0
    home.profile.write_text(
        text.replace('domains = ["corp.example"]', 'domains = ["corp example"]')
    )
    r = home.run("check", "--no-logon")
    assert r.returncode == 5
    assert "[transports.corp] domains" in r.stderr
    assert "'corp example' is not a domain name" in r.stderr
    home.profile.write_text(text.replace('domains = ["corp.example"]', "domains = []"))
    r = home.run("check", "--no-logon")
    assert r.returncode == 5, r.stderr
    assert "domains: empty: the transport would serve nothing" in r.stderr
