"""The SMTP transport's options: read and checked once at logon (``SMTPSettings``), with
the contract's typed options reader (:mod:`spoolbox.contract.options`)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from spoolbox.contract import Unconfigured
from spoolbox.contract.options import OptionError, option, read_options

from .dane import TLSA
from .mx import parse_nameserver

__all__ = [
    "COMMAND_STEPS",
    "DATA_STEPS",
    "DEFAULT_DNS_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MX_IDLE_TIMEOUT",
    "DEFAULT_TIMEOUTS",
    "SMTPOptions",
    "SMTPSettings",
    "default_destination_concurrency",
    "tls_context",
    "usable_helo",
    "verified_context",
]

#: The steps whose wait ``command_timeout`` bounds (EHLO, STARTTLS, AUTH, RSET and
#: QUIT wait as long as MAIL) and those ``data_timeout`` bounds.
COMMAND_STEPS = ("greeting", "mail", "rcpt", "data_init")
DATA_STEPS = ("data_block", "data_term")
#: Seconds.  Waits for a command's reply: 60 s (``command_timeout``), shorter than
#: RFC 5321 section 4.5.3.2's 5 minutes, which suit a queue run, not a smart host a
#: user waits for.  The data blocks and the final dot keep the RFC's 3 and 10
#: minutes: a server may scan a message long before it answers, and giving up then
#: risks a duplicate.  ``connect`` is ours, not the RFC's.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "connect": 30.0,
    **dict.fromkeys(COMMAND_STEPS, 60.0),
    "data_block": 180.0,
    "data_term": 600.0,
}
_DEFAULT_PORT = {"none": 25, "starttls": 587, "implicit": 465, "opportunistic": 25}
#: Seconds a domain's DNS lookups may take, all together (``dns_timeout``).
DEFAULT_DNS_TIMEOUT = 10.0
#: Connections to the smart host at most (and messages in flight), unless the profile
#: says otherwise.  Chosen by measurement (docs/benchmarks.md, "Shipped defaults"): in
#: the relay benchmark 10 lanes took 0.37 store transactions a message against 0.78
#: with 2 (the default before), the settles of several lanes sharing a commit, at the
#: same rate within that day's noise; 20 (Postfix's default destination concurrency)
#: gave no fewer.  Many submission servers refuse more than about 10 connections
#: from one client.
DEFAULT_MAX_CONNECTIONS = 10
#: Delivery "mx"'s: Postfix's ``default_process_limit`` (its smtp processes, each a
#: connection), for mail to many domains, each with its own servers.
DEFAULT_MX_CONNECTIONS = 100
#: Seconds a connection nobody uses is kept open before it is closed with QUIT
#: (``idle_timeout``): to the smart host 30, long enough for a trickle of mail to
#: reuse it, short of the 60 s to 5 minutes after which servers drop an idle client
#: themselves; to a domain's server (delivery "mx") 10, as each is one of many
#: (Postfix keeps either 2 s, ``smtp_connection_cache_time_limit``).
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MX_IDLE_TIMEOUT = 10.0
#: Delivery "mx"'s most to one domain by default: Postfix's
#: ``default_destination_concurrency_limit``.
DEFAULT_DESTINATION_CONCURRENCY = 20
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]+")
_SECONDS = "a positive number of seconds"


def _seconds() -> Any:
    return option(None, positive=True, what=_SECONDS)


@dataclass(frozen=True, slots=True)
class SMTPOptions:
    """The options as written in the profile (see :mod:`spoolbox.transports.smtp`)."""

    host: str | None = option(None, help="the smart host to relay through")
    delivery: Literal["relay", "mx"] = "relay"
    nameservers: tuple[str, ...] | None = None
    dns_timeout: float | None = _seconds()
    mta_sts: bool | None = None
    mta_sts_port: int | None = option(None, low=1, high=65535)
    dane: bool | None = None
    chunking: bool = True
    port: int | None = option(None, low=1, high=65535)
    tls: Literal["none", "starttls", "implicit", "opportunistic"] | None = None
    verify: bool | None = None
    ca_file: str | None = None
    username: str | None = None
    password: str | None = option(None, secret=True, empty=True)
    allow_plain_auth: bool = False
    helo_name: str | None = None
    max_connections: int | None = option(None, low=1, high=1000)
    destination_concurrency: int | None = option(None, low=1, high=1000)
    destination_rate_delay: float | None = option(
        None, low=0, high=86400, what="seconds, from 0 (none) to 86400"
    )
    max_message_size: int | None = option(None, low=1, high=1 << 62)
    idle_timeout: float | None = option(None, low=0.1, high=3600, what="seconds, from 0.1 to 3600")
    timeouts: dict[str, float] | None = option(
        None,
        positive=True,
        keys=tuple(DEFAULT_TIMEOUTS),
        what="a mapping of step (" + ", ".join(DEFAULT_TIMEOUTS) + ") to seconds",
    )
    command_timeout: float | None = _seconds()
    data_timeout: float | None = _seconds()
    connect_timeout: float | None = _seconds()
    greeting_timeout: float | None = _seconds()
    mail_timeout: float | None = _seconds()
    rcpt_timeout: float | None = _seconds()
    data_init_timeout: float | None = _seconds()
    data_block_timeout: float | None = _seconds()
    data_term_timeout: float | None = _seconds()

    def __post_init__(self) -> None:
        host = self.host
        if host is not None and (_CONTROL_RE.search(host) or host != host.strip()):
            raise OptionError("host", f"must be a host name or address, not {host!r}")
        if self.delivery == "mx":
            for key in ("host", "username", "password"):
                if getattr(self, key) is not None:
                    raise OptionError(
                        key,
                        "is for delivery = 'relay' (a smart host); delivery = 'mx' sends "
                        "to each domain's own mail servers",
                    )
        else:
            for key in (
                "nameservers",
                "dns_timeout",
                "mta_sts",
                "mta_sts_port",
                "dane",
                "destination_concurrency",
                "destination_rate_delay",
            ):
                if getattr(self, key) is not None:
                    raise OptionError(key, "is for delivery = 'mx'")
        for ns in self.nameservers or ():
            try:
                parse_nameserver(ns)
            except ValueError as exc:
                raise OptionError("nameservers", str(exc)) from None
        if self.nameservers == ():
            raise OptionError("nameservers", "must name at least one server (or be left out)")
        if self.tls == "opportunistic" and self.verify:
            raise OptionError(
                "verify",
                "cannot be true with tls = 'opportunistic', which takes any certificate "
                "(and goes on without TLS where it is missing); tls = 'starttls' "
                "requires TLS with a certificate that verifies",
            )
        if self.dane and self.tls in ("none", "implicit"):
            raise OptionError(
                "dane",
                f"cannot be true with tls = {self.tls!r}: DANE asks for STARTTLS on the "
                "MX hosts that publish TLSA records (tls = 'opportunistic', the default "
                "for delivery = 'mx', or 'starttls')",
            )
        if self.helo_name is not None and not usable_helo(self.helo_name):
            raise OptionError("helo_name", f"must be an ASCII host name, not {self.helo_name!r}")

    def timeout_table(self) -> dict[str, float]:
        """The timeouts: the defaults, ``command_timeout`` and ``data_timeout`` for their
        steps, then ``timeouts`` and the ``<step>_timeout`` keys."""
        table = dict(DEFAULT_TIMEOUTS)
        for steps, value in (
            (COMMAND_STEPS, self.command_timeout),
            (DATA_STEPS, self.data_timeout),
        ):
            if value is not None:
                table.update(dict.fromkeys(steps, value))
        given = self.timeouts or {}
        table.update(given)
        for step in DEFAULT_TIMEOUTS:
            key = f"{step}_timeout"
            value = getattr(self, key)
            if value is None:
                continue
            if step in given:
                raise ValueError(f"smtp timeout {step!r} is given twice: 'timeouts' and {key!r}")
            table[step] = value
        return table


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """The validated options of one SMTP transport, defaults filled in."""

    host: str  # the smart host; with delivery "mx", "" (each hop's settings name one)
    port: int
    tls: str = "starttls"
    verify: bool = True
    delivery: str = "relay"
    #: The address to connect to, when ``host`` (a name) was resolved beforehand: an
    #: MX host's address (delivery "mx").
    address: str | None = None
    nameservers: tuple[tuple[str, int], ...] = ()
    dns_timeout: float = DEFAULT_DNS_TIMEOUT
    #: Delivery "mx": follow the domains' MTA-STS policies (RFC 8461), fetched from
    #: ``https://mta-sts.<domain>`` on this port.
    mta_sts: bool = False
    mta_sts_port: int = 443
    #: Delivery "mx": follow the MX hosts' DNSSEC-signed TLSA records (DANE, RFC
    #: 7672, :mod:`.dane`); the ``nameservers`` must validate DNSSEC.
    dane: bool = False
    #: One MX host's connections under DANE: the usable TLSA records its certificate
    #: must match, or none (TLS required, the certificate not checked); None: no DANE.
    tlsa: tuple[TLSA, ...] | None = None
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    allow_plain_auth: bool = False
    helo_name: str | None = None
    #: Send a message held whole with BDAT (RFC 3030) to a server that offers
    #: CHUNKING: with PIPELINING, one round trip for MAIL, RCPT and the content.
    chunking: bool = True
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Delivery "mx": how many of the ``max_connections`` messages may be for one
    #: domain at once (None: delivery "relay", where every message goes to the one
    #: smart host).
    destination_concurrency: int | None = None
    #: Delivery "mx": the least seconds between two messages to one domain, one at a
    #: time (None: none).
    destination_rate_delay: float | None = None
    max_message_size: int | None = None
    #: Seconds an unused connection stays open; then it is closed with QUIT.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))

    @property
    def where(self) -> str:
        """``host:port``, ``[v6]:port``, or ``name[address]:port`` for a resolved host
        (as Postfix's logs write ``relay=mx.example.org[192.0.2.25]:25``)."""
        if self.address is not None and self.address != self.host:
            return f"{self.host}[{self.address}]:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SMTPSettings:
        o = read_options(SMTPOptions, config, kind="smtp")
        if o.delivery == "relay" and o.host is None:
            raise Unconfigured(["host"], "the smart host; or delivery = 'mx' to send directly")
        mx = o.delivery == "mx"
        tls = o.tls or ("opportunistic" if mx else "starttls")
        if o.username is not None and o.password is None:
            raise Unconfigured(["password"], f"AUTH as {o.username!r} needs a password")
        if o.password is not None and o.username is None:
            raise Unconfigured(["username"], "a password was given without a username")
        if o.username is not None and tls in ("none", "opportunistic") and not o.allow_plain_auth:
            raise ValueError(
                f"smtp: refusing AUTH over a connection that may be plaintext (tls={tls!r}): "
                "the password would cross the network in clear. Use tls='starttls' or "
                "tls='implicit', or "
                "set allow_plain_auth=true if the path to the server is trusted"
            )
        connections = o.max_connections or (
            DEFAULT_MX_CONNECTIONS if mx else DEFAULT_MAX_CONNECTIONS
        )
        return cls(
            host=o.host or "",
            port=o.port or (25 if mx else _DEFAULT_PORT[tls]),
            tls=tls,
            verify=tls != "opportunistic" and o.verify is not False,
            delivery=o.delivery,
            nameservers=tuple(parse_nameserver(ns) for ns in o.nameservers or ()),
            dns_timeout=o.dns_timeout or DEFAULT_DNS_TIMEOUT,
            mta_sts=mx and o.mta_sts is not False,
            mta_sts_port=o.mta_sts_port or 443,
            dane=mx and o.dane is True,
            ca_file=o.ca_file,
            username=o.username,
            password=o.password,
            allow_plain_auth=o.allow_plain_auth,
            helo_name=o.helo_name,
            chunking=o.chunking,
            max_connections=connections,
            destination_concurrency=(
                (o.destination_concurrency or default_destination_concurrency(connections))
                if mx
                else None
            ),
            destination_rate_delay=o.destination_rate_delay or None,
            max_message_size=o.max_message_size,
            idle_timeout=o.idle_timeout
            or (DEFAULT_MX_IDLE_TIMEOUT if mx else DEFAULT_IDLE_TIMEOUT),
            timeouts=o.timeout_table(),
        )


def default_destination_concurrency(max_connections: int) -> int:
    """Delivery "mx"'s default ``destination_concurrency``: 20 (Postfix's
    ``default_destination_concurrency_limit``: 20 of its 100 delivery processes), or
    half the connections, rounded up, when they are fewer than 40 (5 of 10), so that
    a long queue for one domain leaves the rest to the mail for other domains."""
    return min(DEFAULT_DESTINATION_CONCURRENCY, (max_connections + 1) // 2)


def usable_helo(name: str) -> bool:
    """Whether ``name`` can go into EHLO/HELO: ASCII, no spaces or control characters."""
    return name.isascii() and not re.search(r"[\s\x00-\x1f\x7f]", name)


def verified_context(settings: SMTPSettings) -> ssl.SSLContext:
    """A context that verifies certificates and names, with ``ca_file``'s CAs if given
    (else the system's): MTA-STS's policy servers and the MX hosts its policies name.
    Blocking: run through ``support.run_blocking``."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)


def dane_context() -> ssl.SSLContext:
    """The context of a connection under DANE: no CA, no name check (the certificate
    is matched against the TLSA records after the handshake, :mod:`.dane`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_context(settings: SMTPSettings) -> ssl.SSLContext | None:
    """Blocking (reads certificate files): run through ``support.run_blocking``."""
    if settings.tls == "none":
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if not settings.verify:  # tls = "opportunistic" too: any certificate is taken
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
