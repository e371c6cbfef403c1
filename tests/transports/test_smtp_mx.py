"""The SMTP transport's direct delivery (``delivery = "mx"``): each recipient domain's
mail to the servers its MX records name, looked up in a real DNS server (dnsmasq,
:mod:`dns_server`) and delivered to real SMTP servers (aiosmtpd) on loopback
addresses of their own (127.0.0.2, .3, .4 on one port: the transport's ``port``
option is every server's).

The options and the pure parts (the order of MX hosts, address literals, name
server entries) are tested without the network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from smtp_servers import (
    SHORT,
    Recorder,
    aiosmtpd_server,
    open_spooler,
    scripted_server,
    send,
    smtp_dialogue,
)

from dns_server import Dnsmasq, dnsmasq
from spoolbox import Address, MessageState, NewMessage, RecipientState
from spoolbox.contract import Unconfigured
from spoolbox.model import StatusCode
from spoolbox.transports.smtp import SMTPProvider, SMTPSettings
from spoolbox.transports.smtp import session as smtp_session
from spoolbox.transports.smtp.failures import Failure
from spoolbox.transports.smtp.mx import MXResolver, literal_address, order_mx, parse_nameserver

CONTENT = b"From: alice@example.org\r\nSubject: mx\r\n\r\nHello.\r\n"
MX1, MX2, MX3 = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def message(*rcpts: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=CONTENT,
    )


def mx_options(dns: Dnsmasq | str, port: int, **extra: Any) -> dict[str, Any]:
    ns = dns if isinstance(dns, str) else dns.nameserver
    return {
        "delivery": "mx",
        "nameservers": [ns],
        "port": port,
        "tls": "none",
        "timeouts": dict(SHORT),
        "dns_timeout": 3,
        **extra,
    }


def common_port() -> int:
    """A port free on 127.0.0.2, .3 and .4 (the servers' addresses)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((MX1, 0))
            port = int(s.getsockname()[1])
        ok = True
        for host in (MX1, MX2, MX3):
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


#: example.test: mx1 (10), mx2 (20); other.test: mx3; implicit.test: an A record only;
#: nullmx.test: the null MX; nodata.test: a TXT record only; lost.test: an MX host
#: without an address; 例子.test (IDNA xn--fsqu00a.test) and shared.test: mx1.
RECORDS = [
    "--mx-host=example.test,mx1.example.test,10",
    "--mx-host=example.test,mx2.example.test,20",
    "--mx-host=other.test,mx3.other.test,10",
    f"--host-record=mx1.example.test,{MX1}",
    f"--host-record=mx2.example.test,{MX2}",
    f"--host-record=mx3.other.test,{MX3}",
    f"--host-record=implicit.test,{MX3}",
    "--dns-rr=nullmx.test,15,000000",
    "--txt-record=nodata.test,no mail here",
    "--mx-host=lost.test,nowhere.lost.test,10",
    "--mx-host=xn--fsqu00a.test,mx1.example.test,10",
    "--mx-host=shared.test,mx1.example.test,10",
    "--mx-host=split.test,mx.elsewhere.org,5",  # a name this DNS server REFUSES
    "--mx-host=split.test,mx1.example.test,10",
]


@pytest.fixture
def dns(tmp_path: Path) -> Any:
    with dnsmasq(RECORDS, tmp_path) as server:
        yield server


class Servers:
    def __init__(self, port: int) -> None:
        self.port = port
        self.by_host: dict[str, Recorder] = {}


@contextlib.asynccontextmanager
async def serve(hosts: Sequence[str], port: int = 0, **kw: Any) -> AsyncIterator[Servers]:
    """An aiosmtpd server on each of ``hosts``, all on one port (``port``, else free)."""
    servers = Servers(port or common_port())
    async with contextlib.AsyncExitStack() as stack:
        for host in hosts:
            rec = servers.by_host[host] = Recorder()
            await stack.enter_async_context(
                aiosmtpd_server(rec, host=host, port=servers.port, **kw)
            )
        yield servers


# -- the options ---------------------------------------------------------------------------------
def test_mx_delivery_options_and_their_defaults() -> None:
    s = SMTPSettings.from_config({"delivery": "mx"})
    assert (s.delivery, s.host, s.port, s.tls, s.verify) == ("mx", "", 25, "opportunistic", False)
    assert s.nameservers == () and s.dns_timeout == 10
    s = SMTPSettings.from_config(
        {"delivery": "mx", "nameservers": ["192.0.2.53", "[2001:db8::53]:5353"], "tls": "starttls"}
    )
    assert s.nameservers == (("192.0.2.53", 53), ("2001:db8::53", 5353))
    assert (s.tls, s.verify, s.port) == ("starttls", True, 25)
    # A relay with tls = "opportunistic" takes any certificate too.
    s = SMTPSettings.from_config({"host": "h", "tls": "opportunistic"})
    assert (s.port, s.verify) == (25, False)
    # Postfix's defaults: 100 connections, 20 to one domain; of fewer than 40, half
    # (rounded up).  A relay has one destination, and 10 connections.
    s = SMTPSettings.from_config({"delivery": "mx"})
    assert (s.max_connections, s.destination_concurrency) == (100, 20)
    s = SMTPSettings.from_config({"delivery": "mx", "max_connections": 3})
    assert (s.max_connections, s.destination_concurrency) == (3, 2)
    s = SMTPSettings.from_config({"delivery": "mx", "max_connections": 39})
    assert (s.max_connections, s.destination_concurrency) == (39, 20)
    s = SMTPSettings.from_config({"host": "h"})
    assert (s.max_connections, s.destination_concurrency) == (10, None)
    s = SMTPSettings.from_config({"delivery": "mx", "destination_concurrency": 10})
    assert s.destination_concurrency == 10
    assert SMTPSettings.from_config({"host": "h"}).destination_concurrency is None
    # No rate delay unless asked for; 0 is none.
    assert SMTPSettings.from_config({"delivery": "mx"}).destination_rate_delay is None
    s = SMTPSettings.from_config({"delivery": "mx", "destination_rate_delay": 0})
    assert s.destination_rate_delay is None
    s = SMTPSettings.from_config({"delivery": "mx", "destination_rate_delay": 1.5})
    assert s.destination_rate_delay == 1.5


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            {"delivery": "mx", "host": "smart.example.org"},
            "option 'host' is for delivery = 'relay'",
        ),
        ({"delivery": "mx", "username": "u", "password": "p"}, "option 'username' is for"),
        ({"host": "h", "nameservers": ["192.0.2.53"]}, "option 'nameservers' is for delivery"),
        ({"host": "h", "dns_timeout": 3}, "option 'dns_timeout' is for delivery = 'mx'"),
        (
            {"host": "h", "destination_concurrency": 2},
            "option 'destination_concurrency' is for delivery = 'mx'",
        ),
        ({"delivery": "mx", "destination_concurrency": 0}, "option 'destination_concurrency'"),
        (
            {"host": "h", "destination_rate_delay": 1},
            "option 'destination_rate_delay' is for delivery = 'mx'",
        ),
        ({"delivery": "mx", "destination_rate_delay": -1}, "option 'destination_rate_delay'"),
        ({"delivery": "mx", "destination_rate_delay": "5s"}, "option 'destination_rate_delay'"),
        ({"delivery": "mx", "nameservers": ["dns.example.org"]}, "is not an IP address"),
        ({"delivery": "mx", "nameservers": ["192.0.2.53:99999"]}, "port must be a number"),
        ({"delivery": "mx", "nameservers": []}, "at least one server"),
        ({"delivery": "mx", "tls": "opportunistic", "verify": True}, "option 'verify' cannot"),
        ({"delivery": "direct"}, "option 'delivery'"),
        ({"host": "h", "tls": "opportunistic", "username": "u", "password": "p"}, "plaintext"),
    ],
)
def test_bad_mx_options_are_refused_naming_the_key(config: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        SMTPSettings.from_config(config)


def test_a_relay_still_needs_its_host() -> None:
    with pytest.raises(Unconfigured) as err:
        SMTPSettings.from_config({"tls": "none"})
    assert err.value.missing == ("host",)
    assert "delivery = 'mx'" in str(err.value)


def test_without_dnspython_the_check_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("dns", "dns.asyncresolver", "dns.nameserver", "dns.resolver"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ValueError, match=re.escape("needs dnspython: pip install 'spoolbox[mx]'")):
        SMTPProvider.check_options({"delivery": "mx"})
    SMTPProvider.check_options({"host": "smart.example.org"})  # a relay does not need it


def test_without_httpx_the_check_names_the_extra_unless_mta_sts_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # as if not installed
    opts = {"delivery": "mx", "nameservers": ["127.0.0.1"]}
    with pytest.raises(ValueError, match=re.escape("'mta_sts' needs httpx: pip install")):
        SMTPProvider.check_options(opts)
    SMTPProvider.check_options({**opts, "mta_sts": False})


def test_no_dns_server_to_ask_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver line\n")
    with pytest.raises(ValueError, match="this system names no DNS server") as err:
        MXResolver((), 10, resolv_conf=str(empty))
    assert f"({empty}: no nameservers); set the option 'nameservers'" in str(err.value)
    assert MXResolver((("127.0.0.1", 53),), 10, resolv_conf=str(empty)).nameservers == [
        "127.0.0.1:53"
    ]


# -- the pure parts ------------------------------------------------------------------------------
def test_mx_hosts_go_by_preference_equal_ones_in_random_order() -> None:
    records = [(20, "b.example."), (10, "a.example."), (20, "c.example."), (30, "A.example.")]
    orders = {tuple(order_mx(records, random.Random(seed)) or ()) for seed in range(40)}
    assert orders == {
        ("a.example", "b.example", "c.example"),
        ("a.example", "c.example", "b.example"),
    }  # a host listed twice (any case) is tried once, at its best preference
    assert order_mx([(0, ".")], random.Random(1)) is None  # the null MX
    assert order_mx([(0, "."), (10, "mx.example.")], random.Random(1)) == ["mx.example"]


def test_address_literals() -> None:
    assert literal_address("example.org") is None
    assert literal_address("[192.0.2.1]") == "192.0.2.1"
    assert literal_address("[IPv6:2001:DB8::1]") == "2001:db8::1"
    for bad in ("[2001:db8::1]", "[IPv6:192.0.2.1]", "[300.1.1.1]", "[192.0.2.1", "[]"):
        with pytest.raises(Failure) as err:
            literal_address(bad)
        assert err.value.status == "5.1.2" and bad in err.value.text


def test_name_server_entries() -> None:
    assert parse_nameserver("192.0.2.53") == ("192.0.2.53", 53)
    assert parse_nameserver("192.0.2.53:5353") == ("192.0.2.53", 5353)
    assert parse_nameserver("2001:db8::53") == ("2001:db8::53", 53)
    assert parse_nameserver("[2001:db8::53]:853") == ("2001:db8::53", 853)
    for bad in ("ns.example.org", "[2001:db8::53", "192.0.2.53:x", "[::1]x"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_nameserver(bad)


# -- delivery ------------------------------------------------------------------------------------
async def test_each_domain_goes_to_its_own_mail_server_in_one_transaction_each(
    dns: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve([MX1, MX3]) as servers, open_spooler(mx_options(dns, servers.port)) as sp:
        msg = message("SMTP:bob@example.test", "SMTP:carol@Other.Test", "SMTP:dave@example.test")
        state, recs = await send(sp, msg)
        assert state is MessageState.SENT, recs
        first, third = servers.by_host[MX1], servers.by_host[MX3]
        assert [r.rcpt_tos for r in first.received] == [["bob@example.test", "dave@example.test"]]
        assert [r.rcpt_tos for r in third.received] == [["carol@Other.Test"]]
        assert first.received[0].content.endswith(b"Hello.\r\n")
        row = sp.status["smtp"].status_string or ""
        assert "delivering by MX lookup, 3 sent" in row, row
    assert "to=<bob@example.test>, transport=smtp, relay=mx1.example.test" in caplog.text
    assert "to=<carol@Other.Test>, transport=smtp, relay=mx3.other.test" in caplog.text
    assert dns.queries("MX example.test") == 1 and dns.queries("MX other.test") == 1


async def test_the_next_mx_takes_the_mail_when_the_first_does_not_answer(
    dns: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Nothing listens on mx1 (127.0.0.2).
    async with serve([MX2]) as servers, open_spooler(mx_options(dns, servers.port)) as sp:
        state, recs = await send(sp, message("SMTP:bob@example.test"))
        assert state is MessageState.SENT, recs
        assert [r.rcpt_tos for r in servers.by_host[MX2].received] == [["bob@example.test"]]
        # The next message to the domain: the answer from the cache, mx1 tried first
        # again (it may be back), then mx2.
        state, recs = await send(sp, message("SMTP:carol@example.test"))
        assert state is MessageState.SENT, recs
    assert "relay=mx2.example.test" in caplog.text
    assert dns.queries("MX example.test") == 1  # kept for the answer's TTL


async def test_a_domain_without_mx_is_its_own_mail_server_and_an_idn_is_looked_up_as_idna(
    dns: Dnsmasq,
) -> None:
    async with serve([MX1, MX3]) as servers, open_spooler(mx_options(dns, servers.port)) as sp:
        state, recs = await send(sp, message("SMTP:erin@implicit.test", "SMTP:用户@例子.test"))
        assert state is MessageState.SENT, recs
        assert [r.rcpt_tos for r in servers.by_host[MX3].received] == [["erin@implicit.test"]]
        [got] = servers.by_host[MX1].received
        assert got.rcpt_tos == ["用户@例子.test"] and "SMTPUTF8" in got.mail_options
    assert dns.queries("MX xn--fsqu00a.test") == 1


async def test_an_address_literal_needs_no_lookup(
    tls_server_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a DNS server that
        silent.bind(("127.0.0.1", 0))  # never answers: a lookup would defer the mail
        ns = f"127.0.0.1:{silent.getsockname()[1]}"
        async with (
            serve([MX1], starttls=tls_server_context) as servers,
            open_spooler(mx_options(ns, servers.port, dns_timeout=1, tls="opportunistic")) as sp,
        ):
            state, recs = await send(sp, message(f"SMTP:bob@[{MX1}]"))
            assert state is MessageState.SENT, recs
            assert [r.rcpt_tos for r in servers.by_host[MX1].received] == [[f"bob@[{MX1}]"]]
            assert servers.by_host[MX1].tls == [True]  # STARTTLS to a server named by address
    assert f"to=<bob@[{MX1}]>, transport=smtp, relay={MX1}," in caplog.text


async def test_what_dns_says_no_to_fails_and_what_it_cannot_answer_is_deferred(
    dns: Dnsmasq,
) -> None:
    async with serve([MX1]) as servers, open_spooler(mx_options(dns, servers.port)) as sp:
        rcpts = [
            "SMTP:a@nowhere.test",  # NXDOMAIN
            "SMTP:b@nullmx.test",  # the null MX
            "SMTP:c@nodata.test",  # neither MX nor address
            "SMTP:d@lost.test",  # an MX host without an address
            "SMTP:e@example.org",  # the server REFUSED (it forwards nothing)
            "SMTP:f@bad..test",  # not a domain name
            "SMTP:g@[IPv6:192.0.2.1]",  # not an address literal
            "SMTP:h@example.test",  # delivered
        ]
        state, recs = await send(sp, message(*rcpts))
        assert state is MessageState.DEFERRED, recs
        got = {r.address.value.split("@")[1]: r for r in recs}
        expect = {
            "nowhere.test": (RecipientState.FAILED, "5.1.2", "nowhere.test: no such domain"),
            "nullmx.test": (RecipientState.FAILED, "5.1.10", "null MX, RFC 7505"),
            "nodata.test": (RecipientState.FAILED, "5.1.2", "no MX record and no address"),
            "lost.test": (RecipientState.QUEUED, "4.4.4", "nowhere.lost.test: no A or AAAA"),
            "example.org": (
                RecipientState.QUEUED,
                "4.4.3",
                f"the MX record of example.org ({dns.nameserver} answered REFUSED)",
            ),
            "bad..test": (RecipientState.FAILED, "5.1.2", "not a valid domain name"),
            "[IPv6:192.0.2.1]": (RecipientState.FAILED, "5.1.2", "not an address literal"),
            "example.test": (RecipientState.DELIVERED, "2.0.0", "250"),
        }
        for domain, (want_state, status, words) in expect.items():
            r = got[domain]
            assert (r.state, r.status) == (want_state, status), r
            assert words in (r.diagnostic or ""), r
        assert [r.rcpt_tos for r in servers.by_host[MX1].received] == [["h@example.test"]]


async def test_an_mx_host_dns_does_not_answer_for_is_passed_over(dns: Dnsmasq) -> None:
    async with serve([MX1]) as servers, open_spooler(mx_options(dns, servers.port)) as sp:
        for rcpt in ("SMTP:a@split.test", "SMTP:b@split.test"):
            state, recs = await send(sp, message(rcpt))
            assert state is MessageState.SENT, recs
        assert len(servers.by_host[MX1].received) == 2
    # An answer with a part missing is not kept: asked again for the second message.
    assert dns.queries("MX split.test") == 2
    assert dns.queries("A mx.elsewhere.org") == 2


async def test_a_hosts_addresses_come_through_when_one_of_its_two_queries_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = MXResolver((("127.0.0.1", 9),), 1)
    failure = Failure("4.4.3", "x-spoolbox; DNS: no answer for the AAAA record", connected=False)

    async def query(name: str, rdtype: str, domain: str, *, missing_ok: bool = False) -> Any:
        if rdtype == "AAAA":
            raise failure
        return None if name == "none.test" else _Answer("192.0.2.25")

    monkeypatch.setattr(resolver, "_query", query)
    assert await resolver._addresses("mx.test", "test") == (["192.0.2.25"], 0.0, False)
    with pytest.raises(Failure) as err:
        await resolver._addresses("none.test", "test")
    assert err.value is failure


class _Answer:
    """What ``_query`` returns, as dnspython's Answer: records, and an RRset's TTL."""

    def __init__(self, *addresses: str) -> None:
        self.records = [_Text(a) for a in addresses]
        self.rrset = _Text("")
        self.rrset.ttl = 300

    def __iter__(self) -> Any:
        return iter(self.records)


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text
        self.ttl = 0

    def to_text(self) -> str:
        return self.text


async def test_a_dns_server_that_does_not_answer_defers_the_mail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        ns = f"127.0.0.1:{silent.getsockname()[1]}"
        async with open_spooler(mx_options(ns, 25, dns_timeout=1)) as sp:
            state, recs = await send(sp, message("SMTP:bob@example.test"))
    assert state is MessageState.DEFERRED
    [r] = recs
    assert r.status == "4.4.3", r
    assert f"no answer for the MX record of example.test within 1 s (asked {ns}" in (
        r.diagnostic or ""
    ), r


async def test_no_server_of_the_domain_answers_defers_naming_each(dns: Dnsmasq) -> None:
    # Neither mx1 nor mx2 listens.
    async with serve([]) as servers, open_spooler(mx_options(dns, servers.port)) as sp:
        state, recs = await send(sp, message("SMTP:bob@example.test"))
    assert state is MessageState.DEFERRED
    [r] = recs
    assert r.status == "4.4.1", r
    text = r.diagnostic or ""
    assert text.startswith("x-spoolbox; no mail server of example.test could be used: "), text
    assert f"mx1.example.test[{MX1}]:{servers.port}" in text, text
    assert f"mx2.example.test[{MX2}]:{servers.port}" in text, text


async def test_a_refusal_of_the_recipient_is_final_the_next_mx_is_not_asked(dns: Dnsmasq) -> None:
    async with serve([MX1, MX2]) as servers:
        servers.by_host[MX1].rcpt_replies["bob@example.test"] = "550 5.1.1 no such user"
        async with open_spooler(mx_options(dns, servers.port)) as sp:
            state, recs = await send(sp, message("SMTP:bob@example.test"))
        assert state is MessageState.FAILED
        [r] = recs
        assert (r.status, r.diagnostic) == ("5.1.1", "smtp; 550 5.1.1 no such user"), r
        assert servers.by_host[MX2].received == []


async def test_a_server_of_the_domain_that_is_this_host_fails_the_mail_as_a_loop(
    dns: Dnsmasq,
) -> None:
    # The servers answer EHLO as "test.invalid": this host's name in this test.
    async with (
        serve([MX1, MX2]) as servers,
        open_spooler(mx_options(dns, servers.port), hostname="test.invalid") as sp,
    ):
        state, recs = await send(sp, message("SMTP:bob@example.test"))
        assert state is MessageState.FAILED
        [r] = recs
        assert r.status == "5.4.6", r
        assert f"mx2.example.test[{MX2}]:{servers.port} is this host (it answers EHLO as " in (
            r.diagnostic or ""
        ), r
        assert all(rec.received == [] for rec in servers.by_host.values())


async def test_a_servers_connection_carries_the_next_message_until_it_idles_too_long(
    dns: Dnsmasq,
) -> None:
    async with serve([MX1]) as servers:
        # idle_timeout 3 s: the three messages, one after another, share a connection.
        async with open_spooler(mx_options(dns, servers.port, idle_timeout=3.0)) as sp:
            for rcpt in ("SMTP:a@example.test", "SMTP:b@example.test", "SMTP:c@example.test"):
                assert (await send(sp, message(rcpt)))[0] is MessageState.SENT
            session = sp.host("smtp").session
            assert isinstance(session, smtp_session.SMTPSession)
            assert session.connections_opened == 1
            # Idle for longer than that: closed, with QUIT, without another message
            # (the status row says so just after the count of open connections drops).
            idle = "idle, delivering by MX lookup, 3 sent"
            for _ in range(300):
                said = sp.status["smtp"].status_string or ""
                if session.status_object()["connections_open"] == 0 and idle in said:
                    break
                await asyncio.sleep(0.05)
            assert session.status_object()["connections_open"] == 0
            assert idle in (sp.status["smtp"].status_string or "")
            assert servers.by_host[MX1].quits == 1
            assert (await send(sp, message("SMTP:d@example.test")))[0] is MessageState.SENT
            assert session.connections_opened == 2
        assert len(servers.by_host[MX1].received) == 4


@dataclass
class Holding(Recorder):
    """A server that holds every message at its final dot until ``go`` is set, then
    takes it; counts how many it holds at once."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0
    most: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            await self.go.wait()
        finally:
            self.holding -= 1
        return await super().handle_DATA(server, session, envelope)


async def test_a_queue_for_one_slow_domain_leaves_connections_to_the_others(
    dns: Dnsmasq,
) -> None:
    """``destination_concurrency`` (2 of 4 connections here): ten messages for
    example.test, whose server holds each at the final dot, take two connections to
    it; a message for other.test that came after them goes on another at once."""
    port = common_port()
    slow = Holding()
    fast = Recorder()
    opts = mx_options(
        dns,
        port,
        max_connections=4,
        destination_concurrency=2,
        timeouts={**SHORT, "data_term": 60},
    )
    async with (
        aiosmtpd_server(slow, host=MX1, port=port),
        aiosmtpd_server(fast, host=MX3, port=port),
        open_spooler(opts) as sp,
    ):
        queued = [await sp.submit(message(f"SMTP:u{i}@example.test")) for i in range(10)]
        async with asyncio.timeout(20):
            while slow.holding < 2:
                await asyncio.sleep(0.02)
        other = await sp.submit(message("SMTP:bob@other.test"))
        assert await sp.wait_for(other.id, timeout=20) is MessageState.SENT
        assert [r.rcpt_tos for r in fast.received] == [["bob@other.test"]]
        assert (slow.holding, slow.most, slow.received) == (2, 2, [])
        session = sp.host("smtp").session
        assert isinstance(session, smtp_session.SMTPSession)
        assert session.status_object()["destination_concurrency"] == 2
        slow.go.set()
        for info in queued:
            assert await sp.wait_for(info.id, timeout=30) is MessageState.SENT
    assert slow.most == 2
    assert sorted(r.rcpt_tos[0] for r in slow.received) == sorted(
        f"u{i}@example.test" for i in range(10)
    )


async def test_cancel_stops_the_send_to_a_domains_server(dns: Dnsmasq) -> None:
    async with serve([MX1]) as servers:
        rec = servers.by_host[MX1]
        rec.stall_data = True
        opts = mx_options(dns, servers.port, timeouts={**SHORT, "data_term": 60})
        async with open_spooler(opts) as sp:
            info = await sp.submit(message("SMTP:bob@example.test"))
            async with asyncio.timeout(20):  # until the server holds the final dot
                await rec.data_started.wait()
            session = sp.host("smtp").session
            assert isinstance(session, smtp_session.SMTPSession)
            assert session.status_object()["connections_open"] == 1
            await sp.cancel(info.id)
            state = await sp.wait_for(info.id, timeout=20)
            assert session.status_object()["connections_open"] == 0
    assert state is MessageState.CANCELLED
    assert rec.received == []


async def test_a_server_that_failed_is_not_tried_again_for_a_while(
    dns: Dnsmasq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_session, "_MX_DEAD_FOR", 3.0)

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 too busy, try later\r\n")
        await writer.drain()

    port = common_port()
    async with (
        scripted_server(busy, host=MX1, port=port) as first,  # mx1.example.test
        serve([MX2], port=port) as servers,
        open_spooler(mx_options(dns, port)) as sp,
    ):
        for rcpt in ("SMTP:a@example.test", "SMTP:b@example.test"):
            assert (await send(sp, message(rcpt)))[0] is MessageState.SENT
        assert first.connections == 1  # the second message went to mx2 at once
        assert len(servers.by_host[MX2].received) == 2
        # Another domain whose one MX is that server: its mail waits without a try.
        state, [r] = await send(sp, message("SMTP:c@shared.test"))
        assert (state, r.status) == (MessageState.DEFERRED, "4.3.2"), r
        text = r.diagnostic or ""
        assert "too busy, try later (the greeting) (not tried again for " in text, r
        assert first.connections == 1
        await asyncio.sleep(3.1)  # then it is tried again
        assert (await send(sp, message("SMTP:d@example.test")))[0] is MessageState.SENT
        assert first.connections == 2


async def test_no_domains_servers_taking_a_connection_asks_whether_port_25_is_blocked(
    dns: Dnsmasq, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every server of three domains refused the connection (as behind a firewall that
    blocks outgoing port 25): the row says FAILURE and asks; a warning is logged once.
    The next connection made clears it.  One domain's servers down says nothing."""
    caplog.set_level(logging.INFO, "spoolbox")
    monkeypatch.setattr(smtp_session, "_MX_DEAD_FOR", 0.0)  # each server tried each time
    port = common_port()
    async with open_spooler(mx_options(dns, port)) as sp:
        state, _ = await send(sp, message("SMTP:a@example.test"))  # mx1, mx2: refused
        assert state is MessageState.DEFERRED
        row = sp.status["smtp"]
        assert not row.status_code & StatusCode.FAILURE, row  # one domain: its trouble
        state, _ = await send(sp, message("SMTP:b@other.test", "SMTP:c@implicit.test"))
        assert state is MessageState.DEFERRED
        row = sp.status["smtp"]
        assert row.status_code & StatusCode.FAILURE, row
        text = row.status_string or ""
        assert text.startswith(
            "cannot connect to the mail servers of 3 domains (example.test, other.test, "
            f"implicit.test) since the last connection made; is outgoing port {port} "
            "blocked here (many cloud providers block port 25)? The last, implicit.test: "
            f"cannot connect to implicit.test[{MX3}]:{port}: "
        ), text
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [m for m in warned if "is outgoing port" in m] == [f"smtp: {text}"], warned
        # A server that answers: the next connection made clears it.
        async with serve([MX1], port=port) as servers:
            state, _ = await send(sp, message("SMTP:d@shared.test"))
            assert state is MessageState.SENT
            assert len(servers.by_host[MX1].received) == 1
        row = sp.status["smtp"]
        assert not row.status_code & StatusCode.FAILURE, row
        assert "delivering by MX lookup, 1 sent" in (row.status_string or ""), row


async def test_a_flush_tries_the_servers_held_back_and_asks_dns_again(dns: Dnsmasq) -> None:
    answer = [b"421 4.3.2 too busy, try later\r\n"]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer[0].startswith(b"421"):
            writer.write(answer[0])
            await writer.drain()
            return
        await smtp_dialogue(reader, writer)

    port = common_port()
    async with (
        scripted_server(script, host=MX1, port=port) as only,  # shared.test's one MX
        open_spooler(mx_options(dns, port)) as sp,
    ):
        info = await sp.submit(message("SMTP:a@shared.test"))
        await sp.wait_for(info.id, (MessageState.DEFERRED,), timeout=20)
        assert only.connections == 1
        assert dns.queries("MX shared.test") == 1
        answer[0] = b""  # the server is fixed; the user says "now"
        result = await sp.flush(download=False)
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT, result
        assert only.connections == 2  # not held back for the rest of the minute
        assert dns.queries("MX shared.test") == 2  # the kept answer was dropped


# -- TLS ----------------------------------------------------------------------------------------
@pytest.fixture
def tls_server_context() -> ssl.SSLContext:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx1.example.test").configure_cert(ctx)
    return ctx


async def test_opportunistic_tls_is_used_when_offered_whatever_the_certificate(
    dns: Dnsmasq, tls_server_context: ssl.SSLContext
) -> None:
    # A certificate from a CA nobody trusts: taken (RFC 7435), as Postfix's "may".
    async with serve([MX1], starttls=tls_server_context) as servers:
        opts = mx_options(dns, servers.port)
        del opts["tls"]  # the default for delivery "mx": opportunistic
        async with open_spooler(opts) as sp:
            state, recs = await send(sp, message("SMTP:bob@example.test"))
        assert state is MessageState.SENT, recs
        assert servers.by_host[MX1].tls == [True]


async def test_a_server_whose_tls_fails_gets_the_mail_without_tls(tmp_path: Path) -> None:
    connections: list[str] = []
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ehlo = b"250-test.invalid\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
        if connections:  # the second connection: a plain dialogue
            connections.append("plain")
            await smtp_dialogue(reader, writer, ehlo=ehlo, received=received)
            return
        connections.append("tls")
        writer.write(b"220 test.invalid ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(ehlo)
        line = await reader.readline()
        assert line.upper().startswith(b"STARTTLS"), line
        writer.write(b"220 2.0.0 go ahead\r\n")
        await writer.drain()
        await reader.read(65536)  # the client's TLS hello
        writer.write(b"this is not a TLS server hello\r\n" * 20)
        await writer.drain()
        await reader.read(65536)  # the client gives up

    async with scripted_server(script) as srv:
        records = ["--host-record=broken.test,127.0.0.1"]
        with dnsmasq(records, tmp_path) as server:
            opts = mx_options(server, srv.port, tls="opportunistic")
            async with open_spooler(opts) as sp:
                state, recs = await send(sp, message("SMTP:bob@broken.test"))
    assert state is MessageState.SENT, recs
    assert connections == ["tls", "plain"]
    assert len(received) == 1 and received[0].endswith(b"Hello.\r\n")


async def test_check_and_status_say_how_mail_goes(
    dns: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_spooler(mx_options(dns, 25), hostname="vm") as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state() == {"smtp": "ok"}
        obj = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
        row = sp.status["smtp"].status_string or ""
    assert obj["delivery"] == "mx" and obj["nameservers"] == [f"127.0.0.1:{dns.port}"], obj
    assert (obj["port"], obj["tls"]) == (25, "none")
    assert "delivering by MX lookup" in row, row
    # A host name that is not fully qualified: the servers will likely refuse it.
    assert "delivery = 'mx' greets the domains' mail servers as 'vm' (EHLO)" in caplog.text


@dataclass
class Timing(Recorder):
    """A server that writes down when it took each message (the final dot)."""

    times: list[float] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.times.append(time.monotonic())
        return await super().handle_DATA(server, session, envelope)


async def test_a_rate_delay_spaces_the_messages_to_one_domain(dns: Dnsmasq) -> None:
    """``destination_rate_delay``: three messages for example.test reach its server one
    at a time, 0.5 s apart at least; one for other.test, after them, goes at once."""
    port = common_port()
    slow = Timing()
    fast = Timing()
    opts = mx_options(dns, port, max_connections=4, destination_rate_delay=0.5)
    async with (
        aiosmtpd_server(slow, host=MX1, port=port),
        aiosmtpd_server(fast, host=MX3, port=port),
        open_spooler(opts) as sp,
    ):
        queued = [await sp.submit(message(f"SMTP:u{i}@example.test")) for i in range(3)]
        other = await sp.submit(message("SMTP:bob@other.test"))
        for info in [*queued, other]:
            assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
        session = sp.host("smtp").session
        assert isinstance(session, smtp_session.SMTPSession)
        assert session.status_object()["destination_rate_delay"] == 0.5
    assert len(slow.times) == 3 and len(fast.times) == 1
    gaps = [b - a for a, b in zip(slow.times, slow.times[1:], strict=False)]
    assert min(gaps) >= 0.45, gaps
    assert fast.times[0] < slow.times[1], (fast.times, slow.times)
