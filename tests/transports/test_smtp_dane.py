"""DANE (RFC 7672) in direct delivery: a real validating resolver (unbound, with the
``test.`` zone signed by ldns and its key as the trust anchor, ``plain.`` unsigned)
publishes the MX, address and TLSA records, and real SMTP servers (aiosmtpd,
STARTTLS with a certificate of a CA nobody trusts: DANE-EE does not ask a CA) take
the mail.

The pure parts (the records, which are usable, the certificate's public key, the
match) are fed bytes; the public key is checked against the ``cryptography``
package's reading of the same certificate."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_smtp_mta_sts as sts
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from smtp_servers import Recorder, aiosmtpd_server, open_spooler, send

from spoolbox import Address, MessageState, NewMessage
from spoolbox.cli import check_cmd
from spoolbox.transports.smtp import SMTPSettings
from spoolbox.transports.smtp import mx as mx_module
from spoolbox.transports.smtp.dane import TLSA, matches, spki_of, usable
from spoolbox.transports.smtp.mx import MXResolver, parse_nameserver
from unbound_server import Unbound, unbound

MX1 = "127.0.0.2"  # the MX host of most domains here
MX2 = "127.0.0.3"  # dane2.test's second MX host
WEB = sts.WEB  # the MTA-STS policy server
CONTENT = b"From: alice@example.org\r\nSubject: dane\r\n\r\nHello.\r\n"


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def spki(der: bytes) -> bytes:
    """The certificate's SubjectPublicKeyInfo, as the cryptography package reads it."""
    key = x509.load_der_x509_certificate(der).public_key()
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def message(*rcpts: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=CONTENT,
    )


# -- the pure parts ------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_the_public_key_is_found_in_the_certificate(key_type: trustme.KeyType) -> None:
    der = der_of(trustme.CA(key_type=key_type).issue_cert("mx1.dane.test", key_type=key_type))
    assert spki_of(der) == spki(der)
    for broken in (b"", b"\x30", der[:40], b"\x02\x01\x00" + der[3:]):
        with pytest.raises(ValueError, match=r"DER|certificate"):
            spki_of(broken)


_CERT = der_of(trustme.CA().issue_cert("mx1.dane.test"))


def _corrupted(at: int, junk: bytes) -> bytes:
    return _CERT[:at] + junk + _CERT[at + 1 :]


@given(
    st.binary(max_size=600)
    | st.builds(_corrupted, st.integers(0, len(_CERT) - 1), st.binary(min_size=1, max_size=3))
)
def test_whatever_a_server_sends_as_its_certificate_the_reading_only_says_no(
    der: bytes,
) -> None:
    """Hostile or broken DER: the public key is found (a part of what came) or
    ValueError says why, and a match is found or not; nothing else is raised."""
    try:
        key = spki_of(der)
    except ValueError:
        key = None
    if key is not None:
        assert der.find(key) > 0
    record = TLSA(3, 1, 1, hashlib.sha256(spki(_CERT)).digest())
    assert matches([record], der) in (None, record)


def test_a_certificate_matches_the_records_of_its_own_key_or_itself() -> None:
    der = der_of(trustme.CA().issue_cert("mx1.dane.test"))
    other = der_of(trustme.CA().issue_cert("mx1.dane.test"))
    key = spki(der)
    for record in (
        TLSA(3, 1, 1, hashlib.sha256(key).digest()),
        TLSA(3, 1, 2, hashlib.sha512(key).digest()),
        TLSA(3, 1, 0, key),
        TLSA(3, 0, 1, hashlib.sha256(der).digest()),
        TLSA(3, 0, 0, der),
    ):
        assert matches([record], der) == record
        assert matches([record], other) is None
    wrong = TLSA(3, 1, 1, hashlib.sha256(spki(other)).digest())
    right = TLSA(3, 1, 1, hashlib.sha256(key).digest())
    assert matches([wrong, right], der) == right  # any one of the set
    assert matches([right], b"not a certificate") is None


def test_only_records_this_client_can_check_are_usable() -> None:
    digest = bytes(32)
    records = [
        TLSA(3, 1, 1, digest),  # DANE-EE: usable
        TLSA(2, 0, 1, digest),  # DANE-TA: the chain is not shown to a client here
        TLSA(1, 1, 1, digest),  # PKIX-EE, PKIX-TA: not for SMTP (RFC 7672 3.1.3)
        TLSA(0, 1, 1, digest),
        TLSA(3, 2, 1, digest),  # no such selector
        TLSA(3, 1, 3, digest),  # no such matching type
        TLSA(3, 1, 1, bytes(20)),  # not a SHA-256 digest
        TLSA(3, 1, 0, b""),
    ]
    assert usable(records) == (TLSA(3, 1, 1, digest),)


def test_dane_is_for_direct_delivery_and_off_unless_asked() -> None:
    assert SMTPSettings.from_config({"delivery": "mx"}).dane is False
    assert SMTPSettings.from_config({"delivery": "mx", "dane": True}).dane is True
    with pytest.raises(ValueError, match=r"dane.*is for delivery = 'mx'"):
        SMTPSettings.from_config({"host": "relay.example.org", "dane": True})
    with pytest.raises(ValueError, match=r"dane.*cannot be true with tls = 'none'"):
        SMTPSettings.from_config({"delivery": "mx", "dane": True, "tls": "none"})
    settings = SMTPSettings.from_config({"delivery": "mx", "dane": True, "tls": "starttls"})
    assert settings.dane and settings.tls == "starttls"


# -- real servers --------------------------------------------------------------------------------
def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class World:
    """The MX servers' certificate, the port, and the zones that describe them."""

    def __init__(self) -> None:
        self.cert = trustme.CA().issue_cert("mx1.dane.test", "mx2.dane2.test")
        self.port = free_port(MX1)
        key = spki(der_of(self.cert))
        self.right = right = f"3 1 1 {hashlib.sha256(key).hexdigest()}"
        other = trustme.CA().issue_cert("mx1.dane.test")
        wrong = f"3 1 1 {hashlib.sha256(spki(der_of(other))).hexdigest()}"
        tlsa = f"_{self.port}._tcp"
        self.signed = [
            "dane IN MX 10 mx1.dane.test.",
            f"mx1.dane IN A {MX1}",
            f"{tlsa}.mx1.dane IN TLSA {right}",
            f"{tlsa}.mx1.dane IN TLSA {wrong}",  # a key to come, say: one match is enough
            "wrong IN MX 10 mx1.wrong.test.",
            f"mx1.wrong IN A {MX1}",
            f"{tlsa}.mx1.wrong IN TLSA {wrong}",
            "fail IN MX 10 mx1.fail.test.",
            f"mx1.fail IN A {MX1}",
            f"{tlsa}.mx1.fail IN TLSA {right}",  # made bogus: its lookup fails
            "ta IN MX 10 mx1.ta.test.",
            f"mx1.ta IN A {MX1}",
            f"{tlsa}.mx1.ta IN TLSA 2 0 1 {'ab' * 32}",  # DANE-TA only: not usable here
            "none IN MX 10 mx1.none.test.",
            f"mx1.none IN A {MX1}",  # no TLSA record: DANE does not apply
            "dane2 IN MX 10 mx1.wrong.test.",
            "dane2 IN MX 20 mx2.dane2.test.",
            f"mx2.dane2 IN A {MX2}",
            f"{tlsa}.mx2.dane2 IN TLSA {right}",
            # MTA-STS policies (enforce) as well: both.test's host has a TLSA record,
            # stsonly.test's has none.
            "both IN MX 10 mx1.both.test.",
            f"mx1.both IN A {MX1}",
            f"{tlsa}.mx1.both IN TLSA {right}",
            "stsonly IN MX 10 mx1.stsonly.test.",
            f"mx1.stsonly IN A {MX1}",
            *(f'_mta-sts.{d} IN TXT "v=STSv1; id=20261207"' for d in ("both", "stsonly")),
            *(f"mta-sts.{d} IN A {WEB}" for d in ("both", "stsonly")),
        ]
        # An unsigned domain whose MX host has TLSA records its certificate does not
        # match: without DNSSEC for the MX record, DANE does not apply.
        self.plain = ["x IN MX 10 mx1.wrong.test."]
        self.bogus = [f"{tlsa}.mx1.fail"]

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    def options(self, dns: Unbound, **more: Any) -> dict[str, Any]:
        return {
            "delivery": "mx",
            "nameservers": [dns.nameserver],
            "port": self.port,
            "dane": True,
            "mta_sts": False,
            "dns_timeout": 3,
            "timeouts": {"connect": 3, "greeting": 5, "mail": 5},
            **more,
        }


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def dns(world: World, tmp_path: Path) -> Iterator[Unbound]:
    with unbound(world.signed, world.plain, tmp_path / "dns", bogus=world.bogus) as server:
        yield server


@contextlib.asynccontextmanager
async def mx_server(
    starttls: ssl.SSLContext | None, port: int, host: str = MX1
) -> AsyncIterator[Recorder]:
    rec = Recorder()
    async with aiosmtpd_server(rec, host=host, port=port, starttls=starttls):
        yield rec


async def test_a_certificate_that_matches_its_tlsa_record_gets_the_mail(
    world: World, dns: Unbound, caplog: pytest.LogCaptureFixture
) -> None:
    """dane.test's MX host has a signed TLSA record of its key: the mail goes over
    STARTTLS, although no CA vouches for the certificate (and the transport's own
    ``tls`` is opportunistic, which would take any); the log says so once for the
    connection, which the second message reuses."""
    caplog.set_level(logging.INFO, logger="spoolbox.transport.smtp")
    async with (
        mx_server(world.context(), world.port) as rec,
        open_spooler(world.options(dns)) as sp,
    ):
        for rcpt in ("SMTP:bob@dane.test", "SMTP:carol@dane.test"):
            state, recs = await send(sp, message(rcpt))
            assert state is MessageState.SENT, recs
        status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
    assert rec.tls == [True, True]
    assert [r.rcpt_tos for r in rec.received] == [["bob@dane.test"], ["carol@dane.test"]]
    assert status["dane"] is True
    said = [r.getMessage() for r in caplog.records if "DANE" in r.getMessage()]
    assert said == [
        f"mx1.dane.test[{MX1}]:{world.port}: its certificate matches its DANE TLSA record "
        f"3 1 1 {world.right[6:22]}"
    ]


async def test_a_certificate_that_matches_no_record_is_not_sent_to(
    world: World, dns: Unbound
) -> None:
    """wrong.test's TLSA record is of another key: the mail waits (4.7.5, naming
    DANE), the server receives nothing; the same server takes the mail of an
    unsigned domain whose MX record names it (no DNSSEC, no DANE) at once."""
    async with (
        mx_server(world.context(), world.port) as rec,
        open_spooler(world.options(dns)) as sp,
    ):
        state, [r] = await send(sp, message("SMTP:bob@wrong.test"))
        assert (state, r.status) == (MessageState.DEFERRED, "4.7.5"), r
        text = r.diagnostic or ""
        assert "the TLS certificate of mx1.wrong.test[127.0.0.2]" in text, text
        assert "matches none of its DANE TLSA records (3 1 1 " in text, text
        assert rec.received == []
        state, _ = await send(sp, message("SMTP:carol@x.plain"))
        assert state is MessageState.SENT
    assert [r.rcpt_tos for r in rec.received] == [["carol@x.plain"]]


async def test_a_server_without_starttls_is_refused_where_tlsa_records_are(
    world: World, dns: Unbound
) -> None:
    """With TLSA records (usable or not) the server must offer STARTTLS: the mail
    waits, never sent in plain text; none.test (no TLSA record) goes in plain text."""
    async with mx_server(None, world.port) as rec, open_spooler(world.options(dns)) as sp:
        for rcpt in ("SMTP:bob@dane.test", "SMTP:dan@ta.test"):
            state, [r] = await send(sp, message(rcpt))
            assert (state, r.status) == (MessageState.DEFERRED, "4.7.10"), r
            assert "does not offer STARTTLS, which its DANE TLSA records require" in (
                r.diagnostic or ""
            ), r
        assert rec.received == []
        state, _ = await send(sp, message("SMTP:erin@none.test"))
        assert state is MessageState.SENT
    assert rec.tls == [False]


async def test_records_none_of_which_is_usable_still_require_tls(
    world: World, dns: Unbound, caplog: pytest.LogCaptureFixture
) -> None:
    """ta.test has a DANE-TA record only, which this client cannot check: the mail
    goes over TLS, its certificate not checked (RFC 7672 2.2), and the log says so."""
    caplog.set_level(logging.INFO, logger="spoolbox.transport.smtp")
    async with (
        mx_server(world.context(), world.port) as rec,
        open_spooler(world.options(dns)) as sp,
    ):
        state, recs = await send(sp, message("SMTP:bob@ta.test"))
    assert state is MessageState.SENT, recs
    assert rec.tls == [True]
    assert f"mx1.ta.test[{MX1}]:{world.port}: TLS required by its DANE TLSA records, " in (
        caplog.text
    )


async def test_a_tlsa_lookup_that_fails_keeps_the_host_unused(world: World, dns: Unbound) -> None:
    """fail.test's TLSA record does not validate (unbound answers SERVFAIL, as for a
    forged answer): the host is not used, the mail waits with why."""
    async with (
        mx_server(world.context(), world.port) as rec,
        open_spooler(world.options(dns)) as sp,
    ):
        state, [r] = await send(sp, message("SMTP:bob@fail.test"))
    assert state is MessageState.DEFERRED, r
    assert r.status is not None and r.status.startswith("4."), r
    assert f"the TLSA record of _{world.port}._tcp.mx1.fail.test" in (r.diagnostic or ""), r
    assert rec.received == [] and rec.peers == []


async def test_the_next_mx_host_gets_the_mail_when_the_first_does_not_match(
    world: World, dns: Unbound
) -> None:
    """dane2.test's first MX host fails DANE; the second, whose record matches, takes
    the mail."""
    first = Recorder()
    async with (
        aiosmtpd_server(first, host=MX1, port=world.port, starttls=world.context()) as tried,
        mx_server(world.context(), world.port, host=MX2) as second,
        open_spooler(world.options(dns)) as sp,
    ):
        state, recs = await send(sp, message("SMTP:bob@dane2.test"))
    assert state is MessageState.SENT, recs
    assert tried.connections == 1 and first.received == []  # tried, its TLS refused
    assert second.tls == [True]


async def test_without_the_option_tlsa_records_change_nothing(world: World, dns: Unbound) -> None:
    async with (
        mx_server(world.context(), world.port) as rec,
        open_spooler(world.options(dns, dane=False)) as sp,
    ):
        state, recs = await send(sp, message("SMTP:bob@wrong.test"))
        status = sp.host("smtp").session.status_object()  # type: ignore[union-attr]
    assert state is MessageState.SENT, recs
    assert rec.tls == [True] and status["dane"] is False


async def test_where_a_domain_has_both_dane_decides_the_certificate_check(
    world: World, dns: Unbound, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both domains have an MTA-STS policy in enforce mode, and the MX server's
    certificate is from a CA the transport does not trust: both.test's host has a
    matching TLSA record, so DANE checks it and the mail goes (RFC 8461 section 2);
    stsonly.test's has none, so MTA-STS checks it against the CAs and the mail waits."""
    for d in ("both", "stsonly"):
        policy = f"version: STSv1\nmode: enforce\nmx: mx1.{d}.test\nmax_age: 86400\n"
        monkeypatch.setitem(sts.POLICIES, f"mta-sts.{d}.test", (200, "text/plain", policy))
    ca = trustme.CA()  # the policy server's: the one the transport trusts
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with sts.policy_server(ca) as web:
        options = world.options(dns, mta_sts=True, mta_sts_port=web.port, ca_file=str(ca_file))
        async with mx_server(world.context(), world.port) as rec, open_spooler(options) as sp:
            state, recs = await send(sp, message("SMTP:bob@both.test"))
            assert state is MessageState.SENT, recs
            state, [r] = await send(sp, message("SMTP:carol@stsonly.test"))
            assert state is MessageState.DEFERRED, r
            assert "as its MTA-STS policy asks" in (r.diagnostic or ""), r
    assert sorted(web.asked) == ["mta-sts.both.test", "mta-sts.stsonly.test"]
    assert [r.rcpt_tos for r in rec.received] == [["bob@both.test"]]
    assert rec.tls == [True]


async def test_the_resolver_says_whether_it_validates(
    world: World, dns: Unbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``validates`` asks (the root zone's keys) stands in for any signed name: a
    signed zone's keys come with AD (True), an unsigned zone's answer without (False),
    and a failed lookup tells nothing (None).  (unbound here has no root zone.)"""
    resolver = MXResolver([parse_nameserver(dns.nameserver)], 3, dnssec=True)
    for probe, expected in (
        (("test.", "DNSKEY"), True),
        (("plain.", "SOA"), False),
        ((f"{world.bogus[0]}.test.", "TLSA"), None),
    ):
        monkeypatch.setattr(mx_module, "DNSSEC_PROBE", probe)
        assert await resolver.validates() is expected, probe


async def test_check_says_dane_cannot_work_behind_a_resolver_that_does_not_validate(
    world: World, dns: Unbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spoolbox check``'s ValidateState: with ``dane = true`` and DNS servers that
    answer without the AD bit, the transport cannot do what it is asked (not "ok");
    with a validating one, or without DANE, it is fine."""
    monkeypatch.setattr(mx_module, "DNSSEC_PROBE", ("plain.", "SOA"))  # no AD
    async with open_spooler(world.options(dns)) as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state(transport="smtp") == {"smtp": "error"}
        said = sp.host("smtp").last_error or ""
        # what spoolbox check prints of it: a setting that cannot work, not a server
        # that cannot be reached
        told = await check_cmd._validate(sp, "smtp", 10, 10)
        assert told is not None and told.startswith(
            "logged on, but cannot work: OptionError: smtp option 'nameservers' "
        ), told
    assert (
        "OptionError: smtp option 'nameservers' cannot serve DANE (dane = true): "
        "the DNS server(s) 127.0.0.1:"
    ) in said, said
    assert "do not validate DNSSEC (their answer for the root zone's keys lacks" in said
    async with open_spooler(world.options(dns, dane=False)) as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state(transport="smtp") == {"smtp": "ok"}
    monkeypatch.setattr(mx_module, "DNSSEC_PROBE", ("test.", "DNSKEY"))  # AD
    async with open_spooler(world.options(dns)) as sp:
        await sp.wait_ready(timeout=10)
        assert await sp.validate_state(transport="smtp") == {"smtp": "ok"}


async def _probed(sp: Any) -> Any:
    """The smtp session, once its probe of the DNS servers has answered."""
    session = sp.host("smtp").session
    assert session._probe is not None, "no probe made at the first delivery"
    await session._probe
    return session


async def test_the_daemon_says_when_its_dns_servers_do_not_validate(
    world: World, dns: Unbound, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At the first delivery with ``dane = true`` the DNS servers are asked whether they
    validate DNSSEC (as Postfix's ``dnssec_probe``).  Answering without the AD bit,
    they leave every domain without DANE: one warning, and the status row says so
    while the mail goes as without DANE; a flush asks again (and says nothing new); a
    validated answer (a signed domain's MX record, here: the resolver "fixed") clears
    it."""
    monkeypatch.setattr(mx_module, "DNSSEC_PROBE", ("plain.", "SOA"))  # no AD
    caplog.set_level(logging.INFO, logger="spoolbox.transport.smtp")
    async with (
        mx_server(world.context(), world.port) as rec,
        open_spooler(world.options(dns)) as sp,
    ):
        state, _ = await send(sp, message("SMTP:carol@x.plain"))
        assert state is MessageState.SENT
        session = await _probed(sp)
        row = sp.status["smtp"].status_string or ""
        assert "1 sent; DANE does not apply: the DNS server(s) 127.0.0.1:" in row, row
        assert "do not validate DNSSEC" in row, row
        assert "DANE does not apply" in session.status_object()["dane_trouble"]
        await sp.flush(download=False)
        state, _ = await send(sp, message("SMTP:dave@x.plain"))
        assert state is MessageState.SENT
        await _probed(sp)
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "DANE does not apply" in r.getMessage()
        ]
        assert len(warned) == 1, warned
        assert warned[0].startswith("smtp transport 'smtp': DANE does not apply: the DNS")
        assert "mail goes as without DANE until they do" in warned[0]
        state, _ = await send(sp, message("SMTP:bob@dane.test"))
        assert state is MessageState.SENT
        row = sp.status["smtp"].status_string or ""
        assert "DANE" not in row, row
        assert "dane_trouble" not in session.status_object()
    assert rec.tls == [True, True, True]  # opportunistic TLS (no DANE for x.plain)
    assert any("validate DNSSEC now: DANE applies" in r.getMessage() for r in caplog.records)


async def test_dns_servers_that_validate_are_not_warned_about(
    world: World, dns: Unbound, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe answered with the AD bit: nothing said, the row as ever; and a
    transport without ``dane`` does not probe at all."""
    monkeypatch.setattr(mx_module, "DNSSEC_PROBE", ("test.", "DNSKEY"))  # AD
    caplog.set_level(logging.INFO, logger="spoolbox.transport.smtp")
    async with mx_server(world.context(), world.port), open_spooler(world.options(dns)) as sp:
        state, _ = await send(sp, message("SMTP:carol@x.plain"))
        assert state is MessageState.SENT
        await _probed(sp)
        assert "DANE" not in (sp.status["smtp"].status_string or "")
    assert not [r for r in caplog.records if "DNSSEC" in r.getMessage()]
    monkeypatch.setattr(mx_module, "DNSSEC_PROBE", ("plain.", "SOA"))  # no AD
    async with (
        mx_server(world.context(), world.port),
        open_spooler(world.options(dns, dane=False)) as sp,
    ):
        state, _ = await send(sp, message("SMTP:carol@x.plain"))
        assert state is MessageState.SENT
        assert sp.host("smtp").session._probe is None
