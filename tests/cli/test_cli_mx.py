"""Direct delivery as a user runs it: a profile from ``spoolbox init`` plus an smtp
transport with ``delivery = "mx"``, ``spoolbox check``, the daemon (on its default
event loop) and ``spoolbox send`` to two domains, against a real DNS server
(dnsmasq) and real SMTP servers (aiosmtpd, in threads) on loopback addresses of their
own."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session

from conftest import Daemons, Home, wait_until
from dns_server import dnsmasq

SHOP, CORP = "127.0.0.2", "127.0.0.3"  # mx.shop.test, mx2.corp.test (mx1: nothing)


class Keep:
    def __init__(self) -> None:
        self.rcpts: list[str] = []

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.rcpts.extend(envelope.rcpt_tos)
        return "250 2.0.0 queued"


def _port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind((SHOP, 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind((CORP, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free on both addresses")


@pytest.fixture
def servers() -> Iterator[tuple[int, Keep, Keep]]:
    port = _port()
    shop, corp = Keep(), Keep()
    started: list[Controller] = []
    try:
        for host, handler in ((SHOP, shop), (CORP, corp)):
            c = Controller(handler, hostname=host, port=port, server_hostname=f"mx-{host}")
            c.start()
            started.append(c)
        yield port, shop, corp
    finally:
        for c in started:
            c.stop()


def test_the_daemon_delivers_each_domain_to_its_own_mail_server(
    home: Home, daemons: Daemons, servers: tuple[int, Keep, Keep], tmp_path: Path
) -> None:
    port, shop, corp = servers
    records = [
        "--mx-host=shop.test,mx.shop.test,10",
        f"--host-record=mx.shop.test,{SHOP}",
        "--mx-host=corp.test,mx1.corp.test,10",
        "--mx-host=corp.test,mx2.corp.test,20",
        "--host-record=mx1.corp.test,127.0.0.9",
        f"--host-record=mx2.corp.test,{CORP}",
    ]
    with dnsmasq(records, tmp_path) as dns:
        text = home.profile.read_text()
        transport = (
            '[[transports]]\nname = "internet"\nprovider = "smtp"\naddress_types = ["SMTP"]\n'
            'inbound = false\n[transports.options]\ndelivery = "mx"\n'
            f'nameservers = ["{dns.nameserver}"]\nport = {port}\n\n'
        )
        at = text.index("[listeners.submission]")
        home.profile.write_text(text[:at] + transport + text[at:])
        r = home.run("check")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "internet: ok" in r.stdout
        daemons.start(home)
        r = home.run(
            "send", "--to", "SMTP:ann@shop.test", "--to", "SMTP:bob@corp.test", "--subject", "mx"
        )
        assert r.returncode == 0, r.stderr

        def both() -> bool:
            return shop.rcpts == ["ann@shop.test"] and corp.rcpts == ["bob@corp.test"]

        wait_until("both servers to have their mail", both)
        status: Any = home.json("status")
        [row] = [x for x in status["rows"] if x["name"] == "internet"]
        assert "delivering by MX lookup, 2 sent" in row["status"], row
    log = daemons.logs[0].read_text()
    assert "to=<ann@shop.test>, transport=internet, relay=mx.shop.test," in log
    assert "to=<bob@corp.test>, transport=internet, relay=mx2.corp.test," in log
