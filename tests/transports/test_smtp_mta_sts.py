"""MTA-STS (RFC 8461) in direct delivery: a real DNS server (dnsmasq) publishes the
``_mta-sts`` TXT records and the MX records, a real HTTPS server (the standard
library's, TLS from a test CA) serves the policies, and real SMTP servers (aiosmtpd,
STARTTLS with a certificate of that CA, or of a CA nobody trusts) take the mail.

The pure parts (the TXT record, the policy's text, the MX patterns) are fed text."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from smtp_servers import Recorder, aiosmtpd_server, open_spooler, send

from dns_server import Dnsmasq, dnsmasq
from spoolbox import Address, MessageState, NewMessage, SQLiteStore
from spoolbox.transports.smtp import SMTPSettings, mta_sts
from spoolbox.transports.smtp.mta_sts import (
    Policy,
    PolicyError,
    PolicyFinder,
    parse_policy,
    policy_id,
)
from spoolbox.transports.smtp.mx import MXResolver, parse_nameserver

MX1 = "127.0.0.2"  # mx1.sts.test: every domain's one MX host
WEB = "127.0.0.5"  # mta-sts.<domain>: the policy server
NOWHERE = "127.0.0.6"  # mta-sts.down.test: nothing listens
CONTENT = b"From: alice@example.org\r\nSubject: sts\r\n\r\nHello.\r\n"

ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.test\r\nmax_age: 86400\r\n"
#: What the policy server answers, by the Host it is asked for (status, type, body).
POLICIES: dict[str, tuple[int, str, str]] = {
    "mta-sts.sts.test": (200, "text/plain", ENFORCE),
    "mta-sts.strict.test": (200, "text/plain", ENFORCE),
    "mta-sts.mismatch.test": (
        200,
        "text/plain; charset=utf-8",
        "version: STSv1\nmode: enforce\nmx: mail.mismatch.test\nmx: *.elsewhere.test\n"
        "max_age: 86400\n",
    ),
    "mta-sts.testing.test": (200, "text/plain", ENFORCE.replace("enforce", "testing")),
    "mta-sts.moved.test": (301, "text/plain", ""),
    "mta-sts.html.test": (200, "text/html", ENFORCE),
    "mta-sts.brief.test": (200, "text/plain", ENFORCE.replace("86400", "0")),
}
DOMAINS = ("sts", "strict", "mismatch", "testing", "moved", "html", "down", "plain", "brief")
RECORDS = [
    f"--host-record=mx1.sts.test,{MX1}",
    *(f"--mx-host={d}.test,mx1.sts.test,10" for d in DOMAINS),
    *(f"--txt-record=_mta-sts.{d}.test,v=STSv1; id=20261206" for d in DOMAINS if d != "plain"),
    *(f"--host-record=mta-sts.{d}.test,{WEB}" for d in DOMAINS if d not in ("down", "plain")),
    f"--host-record=mta-sts.down.test,{NOWHERE}",
    "--txt-record=_mta-sts.plain.test,v=spf1 -all",  # another TXT record: no policy
]


def message(*rcpts: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=CONTENT,
    )


# -- the pure parts ------------------------------------------------------------------------------
def test_the_txt_record_says_whether_there_is_a_policy_and_its_id() -> None:
    assert policy_id(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert policy_id(["v=spf1 -all", "v=STSv1;id=abc"]) == "abc"  # others are left out
    assert policy_id(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two: none
    assert policy_id([]) is None
    assert policy_id(["v=STSv1; id="]) is None
    assert policy_id(["v=STSv1; id=has-dash"]) is None  # 1-32 letters and digits
    assert policy_id(["v=STSv1; id=" + "a" * 33]) is None
    assert policy_id(["v=STSv10; id=a"]) is None


def test_a_policy_is_read_and_its_mx_patterns_match_one_label() -> None:
    mode, mx, age = parse_policy(
        "version: STSv1\r\nmode: enforce\r\nmx: Mail.Example.ORG.\r\nmx: *.example.net\r\n"
        "max_age: 604800\r\nextension: ignored\r\n"
    )
    assert (mode, mx, age) == ("enforce", ("mail.example.org", "*.example.net"), 604800)
    policy = Policy(mode, mx, age)
    assert policy.matches("mail.example.org.") and policy.matches("MAIL.example.org")
    assert policy.matches("mx1.example.net")
    assert not policy.matches("example.net")  # the wildcard is one label, not none
    assert not policy.matches("a.b.example.net")  # nor two
    assert not policy.matches("mail.example.org.evil.test")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version is None, not 'STSv1'"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode is 'strict'"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mode enforce names no mx"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age '-1' is not"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n", "is not 0 to"),
        ("version: STSv1\nmode: enforce\nmx: a b.test\nmax_age: 1\n", "is not a host name"),
        ("<html>\n<body>moved</body>\n", "line 1 is not 'key: value'"),
    ],
    ids=["no-version", "bad-mode", "no-mx", "negative-age", "huge-age", "bad-mx", "html"],
)
def test_a_bad_policy_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert says in str(caught.value)


def test_mta_sts_is_on_for_direct_delivery_and_refused_for_a_smart_host() -> None:
    settings = SMTPSettings.from_config({"delivery": "mx"})
    assert (settings.mta_sts, settings.mta_sts_port) == (True, 443)
    assert SMTPSettings.from_config({"delivery": "mx", "mta_sts": False}).mta_sts is False
    assert SMTPSettings.from_config({"host": "relay.example.org"}).mta_sts is False
    with pytest.raises(ValueError, match=r"mta_sts.*is for delivery = 'mx'"):
        SMTPSettings.from_config({"host": "relay.example.org", "mta_sts": True})


# -- real servers -----------------------------------------------------------------------------
@dataclass
class PolicyServer:
    port: int
    asked: list[str] = field(default_factory=list)  # the Host of each request


@contextlib.contextmanager
def policy_server(ca: trustme.CA, port: int = 0) -> Iterator[PolicyServer]:
    """An HTTPS server (http.server, in a thread) on WEB answering POLICIES by Host."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*POLICIES).configure_cert(context)
    state = PolicyServer(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0]
            state.asked.append(host)
            status, kind, body = POLICIES.get(host, (404, "text/plain", "no"))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            if status == 301:
                self.send_header("Location", "https://elsewhere.test/")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((WEB, port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    with dnsmasq(RECORDS, tmp_path) as server:
        yield server


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def mx_context(ca: trustme.CA) -> ssl.SSLContext:
    """An MX server's STARTTLS context, its certificate for mx1.sts.test from ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx1.sts.test").configure_cert(ctx)
    return ctx


@contextlib.asynccontextmanager
async def mx_server(starttls: ssl.SSLContext | None, port: int) -> AsyncIterator[Recorder]:
    rec = Recorder()
    async with aiosmtpd_server(rec, host=MX1, port=port, starttls=starttls):
        yield rec


def options(dns: Dnsmasq, smtp_port: int, web_port: int, ca_file: str) -> dict[str, Any]:
    return {
        "delivery": "mx",
        "nameservers": [dns.nameserver],
        "port": smtp_port,
        "mta_sts_port": web_port,
        "ca_file": ca_file,
        "dns_timeout": 3,
        "timeouts": {"connect": 3, "greeting": 5, "mail": 5},
    }


async def test_an_enforced_policy_sends_over_tls_verified_for_the_mx_host(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str
) -> None:
    """sts.test's policy (enforce, mx1.sts.test): the mail goes over STARTTLS whose
    certificate verifies for mx1.sts.test; the policy is fetched once and kept, the
    TXT record asked once in five minutes; a second message asks neither."""
    smtp_port = free_port(MX1)
    with policy_server(ca) as web:
        async with (
            mx_server(mx_context(ca), smtp_port) as rec,
            open_spooler(options(dns, smtp_port, web.port, ca_file)) as sp,
        ):
            for rcpt in ("SMTP:bob@sts.test", "SMTP:carol@sts.test"):
                state, recs = await send(sp, message(rcpt))
                assert state is MessageState.SENT, recs
    assert rec.tls == [True, True]
    assert web.asked == ["mta-sts.sts.test"]
    assert dns.queries("TXT _mta-sts.sts.test") == 1


async def test_an_enforced_policy_refuses_what_does_not_verify_and_holds_the_mail(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str
) -> None:
    """The MX host's certificate is from a CA nobody trusts: under sts.test's policy
    the mail waits (a temporary failure naming the policy and the certificate), while
    plain.test's mail (no policy) goes to the same server at once, opportunistically.
    A server without STARTTLS is refused the same way."""
    smtp_port = free_port(MX1)
    with policy_server(ca) as web:
        async with open_spooler(options(dns, smtp_port, web.port, ca_file)) as sp:
            async with mx_server(mx_context(trustme.CA()), smtp_port) as rec:
                state, [r] = await send(sp, message("SMTP:bob@sts.test"))
                assert state is MessageState.DEFERRED, r
                text = r.diagnostic or ""
                assert r.status is not None and r.status.startswith("4."), r
                assert "as its MTA-STS policy asks (enforce (mx: mx1.sts.test))" in text, text
                assert "TLS certificate of mx1.sts.test[127.0.0.2]" in text, text
                assert "not verified (STARTTLS)" in text, text
                assert rec.received == []
                state, _ = await send(sp, message("SMTP:dora@plain.test"))
                assert state is MessageState.SENT
                assert [r.rcpt_tos for r in rec.received] == [["dora@plain.test"]]
            async with mx_server(None, smtp_port) as rec:  # no STARTTLS at all
                # (strict.test: sts.test's mail waits in the destination's back-off)
                state, [r] = await send(sp, message("SMTP:erin@strict.test"))
                assert (state, r.status) == (MessageState.DEFERRED, "4.7.10"), r
                assert "does not offer STARTTLS" in (r.diagnostic or ""), r
                assert rec.received == []


async def test_an_mx_host_the_policy_does_not_name_is_not_used(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str
) -> None:
    smtp_port = free_port(MX1)
    with policy_server(ca) as web:
        async with (
            mx_server(mx_context(ca), smtp_port) as rec,
            open_spooler(options(dns, smtp_port, web.port, ca_file)) as sp,
        ):
            state, [r] = await send(sp, message("SMTP:bob@mismatch.test"))
    assert (state, r.status) == (MessageState.DEFERRED, "4.7.5"), r
    assert (r.diagnostic or "").startswith(
        "x-spoolbox; no MX host of mismatch.test (mx1.sts.test) is one its MTA-STS policy "
        "names (enforce (mx: mail.mismatch.test, *.elsewhere.test)): not sent"
    ), r
    assert rec.received == [] and rec.peers == []


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("testing", None),  # a policy in testing mode changes nothing
        # its policy server cannot be reached
        ("down", f"https://mta-sts.down.test/.well-known/mta-sts.txt ({NOWHERE}): "),
        ("moved", "answered 301 (a redirect is not followed)"),
        ("html", "its content type is 'text/html', not text/plain"),
    ],
)
async def test_without_a_policy_to_enforce_the_mail_goes_as_before(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str, domain: str, why: str | None
) -> None:
    """No policy in force (section 5.1: none fetched, none kept): delivered as without
    MTA-STS, here over TLS whose certificate nobody trusts (opportunistic)."""
    smtp_port = free_port(MX1)
    with policy_server(ca) as web:
        async with (
            mx_server(mx_context(trustme.CA()), smtp_port) as rec,
            open_spooler(options(dns, smtp_port, web.port, ca_file)) as sp,
        ):
            state, recs = await send(sp, message(f"SMTP:bob@{domain}.test"))
            trouble = sp.host("smtp").session.status_object().get("mta_sts_trouble", {})  # type: ignore[union-attr]
    assert state is MessageState.SENT, recs
    assert rec.tls == [True]
    if why is None:
        assert trouble == {}
    else:
        assert why in trouble[f"{domain}.test"], trouble


async def test_a_kept_policy_stands_when_its_server_and_dns_are_gone(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """Once fetched, a policy holds for its max_age (section 5.1): with the policy
    server and DNS gone, it is still the one in force (an attacker who blocks them
    gains nothing); once its max_age passed, there is none."""
    now = [1000.0]
    context = ssl.create_default_context(cafile=ca_file)
    with dnsmasq(RECORDS, tmp_path) as dns:
        resolver = MXResolver((parse_nameserver(dns.nameserver),), 1.0)
        with policy_server(ca) as web:
            finder = PolicyFinder(resolver, context, port=web.port, clock=lambda: now[0])
            policy = await finder.policy("sts.test")
            assert policy == Policy("enforce", ("mx1.sts.test",), 86400, "20261206")
            now[0] += 60
            assert await finder.policy("sts.test") is policy  # kept: nothing asked
            assert (web.asked, dns.queries("TXT _mta-sts.sts.test")) == (["mta-sts.sts.test"], 1)
    now[0] += 600  # past the five minutes: the TXT record is asked again, and fails
    assert await finder.policy("sts.test") is policy
    assert "the _mta-sts TXT record: DNS: " in finder.trouble["sts.test"], finder.trouble
    now[0] += 86400  # its max_age passed: none (and none to be had)
    assert await finder.policy("sts.test") is None


async def test_a_policy_that_cannot_be_had_is_not_asked_for_at_every_message(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moved.test's policy server answers a redirect: no policy, and it is asked again
    only after five minutes, not for each message (a server that times out would
    cost every message its timeout)."""
    now = [1000.0]
    resolver = MXResolver((parse_nameserver(dns.nameserver),), 3.0)
    context = ssl.create_default_context(cafile=ca_file)
    with policy_server(ca) as web:
        finder = PolicyFinder(resolver, context, port=web.port, clock=lambda: now[0])
        assert await finder.policy("moved.test") is None
        now[0] += 200
        assert await finder.policy("moved.test") is None
        assert web.asked == ["mta-sts.moved.test"]
        assert dns.queries("TXT _mta-sts.moved.test") == 1
        now[0] += 200  # 400 s: asked again
        assert await finder.policy("moved.test") is None
        assert web.asked == ["mta-sts.moved.test"] * 2
        assert "answered 301" in finder.trouble["moved.test"]
        # Why each domain failed is kept for the latest few only (a daemon that runs
        # for months meets many such domains).
        monkeypatch.setattr(mta_sts, "_TROUBLE_KEPT", 2)
        for domain in ("html", "down"):
            assert await finder.policy(f"{domain}.test") is None
    assert list(finder.trouble) == ["html.test", "down.test"]


async def test_an_enforced_policy_outlives_a_restart(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """The policy is kept in the store: after a restart, with its server gone (an
    attacker blocking the fetch), a MX host whose certificate does not verify still
    gets nothing; a policy past its max_age is dropped from the store at the next
    logon."""
    smtp_port = free_port(MX1)
    path = tmp_path / "spool.sqlite3"
    with policy_server(ca) as web:
        opts = options(dns, smtp_port, web.port, ca_file)
        async with (
            mx_server(mx_context(ca), smtp_port),
            open_spooler(opts, store=SQLiteStore(path)) as sp,
        ):
            assert (await send(sp, message("SMTP:bob@sts.test")))[0] is MessageState.SENT
            # (testing.test's policy changes nothing: not kept in the store)
            assert (await send(sp, message("SMTP:ann@testing.test")))[0] is MessageState.SENT
    store = SQLiteStore(path)
    await store.open()
    kept = await store.profile_get("transport:smtp")
    await store.close()
    assert set(kept) == {"mta_sts:sts.test"}, kept
    assert kept["mta_sts:sts.test"]["mx"] == ["mx1.sts.test"]
    async with (
        mx_server(mx_context(trustme.CA()), smtp_port) as rec,
        open_spooler(opts, store=SQLiteStore(path)) as sp,
    ):
        state, [r] = await send(sp, message("SMTP:carol@sts.test"))
        assert state is MessageState.DEFERRED, r
        assert "as its MTA-STS policy asks (enforce (mx: mx1.sts.test))" in (r.diagnostic or "")
        assert rec.received == []
    # Past its max_age (written back as such): the next logon drops it.
    store = SQLiteStore(path)
    await store.open()
    await store.profile_update(
        "transport:smtp", {"mta_sts:sts.test": {**kept["mta_sts:sts.test"], "until": 1.0}}
    )
    await store.close()
    async with (
        mx_server(mx_context(trustme.CA()), smtp_port) as rec,
        open_spooler(opts, store=SQLiteStore(path)) as sp,
    ):
        # Its server gone, nothing kept: sent as without MTA-STS.
        assert (await send(sp, message("SMTP:dora@strict.test")))[0] is MessageState.SENT
        assert (await send(sp, message("SMTP:erin@sts.test")))[0] is MessageState.SENT
    store = SQLiteStore(path)
    await store.open()
    assert "mta_sts:sts.test" not in await store.profile_get("transport:smtp")
    await store.close()


async def test_lanes_asking_at_once_share_one_look(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str
) -> None:
    """Ten lanes with the first messages to a domain: one TXT query, one fetch."""
    resolver = MXResolver((parse_nameserver(dns.nameserver),), 3.0)
    context = ssl.create_default_context(cafile=ca_file)
    with policy_server(ca) as web:
        finder = PolicyFinder(resolver, context, port=web.port)
        found = await asyncio.gather(*(finder.policy("sts.test") for _ in range(10)))
    assert {p.mode if p else None for p in found} == {"enforce"}
    assert web.asked == ["mta-sts.sts.test"]
    assert dns.queries("TXT _mta-sts.sts.test") == 1


async def test_a_policy_not_to_be_cached_is_fetched_once_for_the_lanes_waiting(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str
) -> None:
    """brief.test's policy says max_age 0: it is not kept, so the next message asks
    again (section 3.2); but ten lanes asking at once share one fetch, instead of
    fetching it ten times, one after the other."""
    resolver = MXResolver((parse_nameserver(dns.nameserver),), 3.0)
    context = ssl.create_default_context(cafile=ca_file)
    with policy_server(ca) as web:
        finder = PolicyFinder(resolver, context, port=web.port)
        found = await asyncio.gather(*(finder.policy("brief.test") for _ in range(10)))
        assert {(p.mode, p.max_age) if p else None for p in found} == {("enforce", 0)}
        assert web.asked == ["mta-sts.brief.test"]
        assert dns.queries("TXT _mta-sts.brief.test") == 1
        again = await finder.policy("brief.test")
    assert again is not None and again.mode == "enforce"
    assert web.asked == ["mta-sts.brief.test"] * 2  # not kept: fetched again


async def test_a_full_cache_forgets_domains_without_an_enforced_policy_first(
    dns: Dnsmasq, ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three domains kept at most: sts.test's enforce policy stays while plain.test and
    testing.test (none in force) make room for the newer ones."""
    monkeypatch.setattr(mta_sts, "_CACHE_SIZE", 3)
    now = [1000.0]
    resolver = MXResolver((parse_nameserver(dns.nameserver),), 3.0)
    context = ssl.create_default_context(cafile=ca_file)
    with policy_server(ca) as web:
        finder = PolicyFinder(resolver, context, port=web.port, clock=lambda: now[0])
        for domain in ("sts", "plain", "testing", "moved", "html"):
            await finder.policy(f"{domain}.test")
        asked = list(web.asked)
        assert (await finder.policy("sts.test") or Policy("none", (), 0)).mode == "enforce"
    assert web.asked == asked  # still kept: not fetched again
    assert dns.queries("TXT _mta-sts.sts.test") == 1
