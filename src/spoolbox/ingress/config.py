"""The settings of an SMTP submission listener (the ``[listeners.NAME]`` profile
table), checked on construction.  Apart from the listener itself so that reading a
profile does not import the listener's machinery (asyncio, ssl, the SMTP server)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..model import Address, AddressError

__all__ = ["TLS_MODES", "ListenerConfig"]

#: ``tls`` values: STARTTLS on a plain connection, or TLS from the first byte.
TLS_MODES = ("starttls", "implicit")


@dataclass(frozen=True)
class ListenerConfig:
    """Settings of one SMTP submission listener (the ``[listeners.NAME]`` profile table).

    Sequences given as lists (from TOML) are kept as tuples; the values are checked on
    construction and a :class:`ValueError` names the bad one.
    """

    host: str = "127.0.0.1"
    port: int = 2525  # 0 = any free port (tests)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    max_line_length: int = 998  # RFC 5321/5322 text line limit, octets without CRLF
    require_auth: bool = False
    users: Mapping[str, str] = field(default_factory=dict)  # username -> password
    allow_plain_auth: bool = False  # allow AUTH without TLS (loopback use)
    relay_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    local_domains: tuple[str, ...] = ()  # anyone may send to these (no relay needed)
    hostname: str | None = None
    default_address_type: str = "SMTP"
    tls_cert: str | None = None  # PEM certificate chain: enables STARTTLS
    tls_key: str | None = None  # PEM private key (default: in tls_cert)
    #: SMTPUTF8 (RFC 6531): addresses in UTF-8 (``jörg@example.de``) in MAIL and RCPT
    smtputf8: bool = True
    #: DSN (RFC 3461): a client may say which delivery reports it wants (NOTIFY), how
    #: much of the message they return (RET) and an id to find them by (ENVID)
    dsn: bool = True
    #: CHUNKING (RFC 3030): a client may send the message in BDAT chunks (with
    #: PIPELINING, MAIL, RCPT and the message in one round trip)
    chunking: bool = True
    #: "starttls": plain text, STARTTLS offered (with tls_cert); "implicit": TLS from
    #: the first byte (RFC 8314, the "submissions" port 465), needs tls_cert
    tls: str = "starttls"
    #: connections open at once (each listener process counts its own); more get 421
    max_connections: int = 500
    #: connections open at once from one client address outside relay_networks (a
    #: client in them is limited by max_connections only); more get 421
    max_connections_per_client: int = 50
    idle_timeout: float = 300.0  # seconds without a command before the connection closes
    shutdown_grace: float = 10.0  # stop(): how long transactions in progress may finish

    def __post_init__(self) -> None:
        object.__setattr__(self, "relay_networks", tuple(self.relay_networks))
        if not all(isinstance(d, str) for d in self.local_domains):
            raise ValueError(f"local_domains must be strings, not {self.local_domains!r}")
        object.__setattr__(
            self, "local_domains", tuple(d.lower().rstrip(".") for d in self.local_domains)
        )
        object.__setattr__(self, "users", dict(self.users))
        for name in (
            "max_message_size",
            "max_recipients",
            "max_line_length",
            "max_connections",
            "max_connections_per_client",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0 to 65535, not {self.port}")
        for net in self.relay_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"relay_networks: {exc}") from None
        try:
            Address(self.default_address_type, "x@y")
        except AddressError as exc:
            raise ValueError(f"default_address_type: {exc}") from None
        if self.require_auth and not self.users:
            raise ValueError("require_auth needs at least one entry in users")
        if self.require_auth and not (self.allow_plain_auth or self.tls_cert):
            raise ValueError(
                "require_auth without TLS needs allow_plain_auth = true (or set tls_cert)"
            )
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key is set but tls_cert is not")
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {self.tls!r}")
        if self.tls == "implicit" and not self.tls_cert:
            raise ValueError('tls = "implicit" needs tls_cert (the certificate to serve)')
        if self.idle_timeout <= 0 or self.shutdown_grace < 0:
            raise ValueError("idle_timeout must be positive and shutdown_grace not negative")
