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

__all__ = [
    "COMMAND_STEPS",
    "DATA_STEPS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUTS",
    "SMTPOptions",
    "SMTPSettings",
    "tls_context",
    "usable_helo",
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
_DEFAULT_PORT = {"none": 25, "starttls": 587, "implicit": 465}
#: Connections to the smart host at most (and messages in flight), unless the profile
#: says otherwise.  Chosen by measurement (docs/benchmarks.md, "Shipped defaults"): in
#: the relay benchmark 10 lanes took 0.37 store transactions a message against 0.78
#: with 2 (the default before), the settles of several lanes sharing a commit, at the
#: same rate within that day's noise; 20 (Postfix's default destination concurrency)
#: gave no fewer.  Many submission servers refuse more than about 10 connections
#: from one client.
DEFAULT_MAX_CONNECTIONS = 10
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]+")
_SECONDS = "a positive number of seconds"


def _seconds() -> Any:
    return option(None, positive=True, what=_SECONDS)


@dataclass(frozen=True, slots=True)
class SMTPOptions:
    """The options as written in the profile (see :mod:`spoolbox.transports.smtp`)."""

    host: str = option(help="the smart host to relay through")
    port: int | None = option(None, low=1, high=65535)
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = option(None, secret=True, empty=True)
    allow_plain_auth: bool = False
    helo_name: str | None = None
    max_connections: int | None = option(None, low=1, high=1000)
    max_message_size: int | None = option(None, low=1, high=1 << 62)
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
        if _CONTROL_RE.search(self.host) or self.host != self.host.strip():
            raise OptionError("host", f"must be a host name or address, not {self.host!r}")
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

    host: str
    port: int
    tls: str = "starttls"
    verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    allow_plain_auth: bool = False
    helo_name: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_message_size: int | None = None
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SMTPSettings:
        o = read_options(SMTPOptions, config, kind="smtp")
        if o.username is not None and o.password is None:
            raise Unconfigured(["password"], f"AUTH as {o.username!r} needs a password")
        if o.password is not None and o.username is None:
            raise Unconfigured(["username"], "a password was given without a username")
        if o.username is not None and o.tls == "none" and not o.allow_plain_auth:
            raise ValueError(
                "smtp: refusing AUTH over a plaintext connection (tls='none'): the password "
                "would cross the network in clear. Use tls='starttls' or tls='implicit', or "
                "set allow_plain_auth=true if the path to the server is trusted"
            )
        return cls(
            host=o.host,
            port=o.port or _DEFAULT_PORT[o.tls],
            tls=o.tls,
            verify=o.verify,
            ca_file=o.ca_file,
            username=o.username,
            password=o.password,
            allow_plain_auth=o.allow_plain_auth,
            helo_name=o.helo_name,
            max_connections=o.max_connections or DEFAULT_MAX_CONNECTIONS,
            max_message_size=o.max_message_size,
            timeouts=o.timeout_table(),
        )


def usable_helo(name: str) -> bool:
    """Whether ``name`` can go into EHLO/HELO: ASCII, no spaces or control characters."""
    return name.isascii() and not re.search(r"[\s\x00-\x1f\x7f]", name)


def tls_context(settings: SMTPSettings) -> ssl.SSLContext | None:
    """Blocking (reads certificate files): run through ``support.run_blocking``."""
    if settings.tls == "none":
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
