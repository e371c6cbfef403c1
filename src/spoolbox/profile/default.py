"""The profile ``spoolbox init`` writes: ``default.toml`` (package data) filled in."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from ..model.hostname import is_hostname, split_host_port

__all__ = [
    "RELAY_PASSWORD_FILE",
    "Outbound",
    "default_listener_processes",
    "default_profile_text",
    "parse_relay",
]

#: Where ``spoolbox init --relay HOST --relay-user USER`` has the relay's password read
#: from (relative to the profile's directory).
RELAY_PASSWORD_FILE = "relay.password"


@dataclass(frozen=True, slots=True)
class Outbound:
    """The SMTP transport ``spoolbox init`` writes, if any: a smart host (``relay``:
    host and port or None, ``user``) or direct delivery (``direct``)."""

    relay: tuple[str, int | None] | None = None
    user: str | None = None
    direct: bool = False


def parse_relay(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port or None); ValueError
    says what is wrong."""
    host, port = split_host_port(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not is_hostname(host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or address") from None
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ``::1``): a smart
    host there is a local MTA or a development server (Mailpit on 1025), whose mail
    does not cross a network."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _outbound_text(outbound: Outbound) -> str:
    """The ``[[transports]]`` table of ``outbound`` (the TOML strings JSON-quoted)."""
    if not outbound.direct and outbound.relay is None:
        return ""
    lines = [
        "[[transports]]",
        'name = "internet"' if outbound.direct else 'name = "relay"',
        'provider = "smtp"',
        'address_types = ["SMTP"]       # bare addresses (bob@example.org) go here',
        "inbound = false",
        '# max_rate = "14/s"            # at most so many messages a period, as the provider',
        "                               # allows (SES 14/s, Gmail 2000/d; docs/operations.md)",
        "[transports.options]",
    ]
    if outbound.direct:
        lines += [
            'delivery = "mx"                # each domain to its own mail servers (port 25)',
            "# mta_sts = false              # on by default: a domain's MTA-STS policy (RFC",
            "                               # 8461) is followed (verified TLS to its MX hosts)",
            "# dane = true                  # DNSSEC-signed TLSA records (RFC 7672) are",
            "                               # followed: needs a validating resolver here",
            "# max_connections = 100        # messages in flight (each on a connection)",
            "# destination_concurrency = 20 # of them to one domain at most: the rest are",
            "                               # for the mail to other domains",
            "# destination_rate_delay = 0   # seconds between two messages to one domain",
            "                               # (one at a time then), for slow receivers",
        ]
    else:
        assert outbound.relay is not None
        host, port = outbound.relay
        lines.append(f"host = {json.dumps(host)}")
        if port is not None:
            lines.append(f"port = {port}")
        loopback = is_loopback(host)
        if loopback:
            # A local MTA offers STARTTLS with a certificate no CA signed (Debian's
            # Postfix: snakeoil), a development server none: either way nothing to gain.
            lines += [
                'tls = "none"                   # on this machine: the mail crosses no',
                "                               # network (a remote relay: STARTTLS)",
            ]
        if outbound.user is not None:
            lines += [
                f"username = {json.dumps(outbound.user)}",
                f'password_file = "{RELAY_PASSWORD_FILE}"  # next to this file, mode 0600',
            ]
            if loopback:
                lines.append("allow_plain_auth = true        # AUTH on loopback, no TLS")
    return "\n".join(lines) + "\n\n"


def default_listener_processes(cpus: int | None) -> int:
    """``processes`` of the listener ``spoolbox init`` writes on a machine of ``cpus``
    CPUs: 1 (a process of its own) where there is a second CPU for it, else 0 (the
    daemon's loop).  Measured on 2 CPUs (docs/benchmarks.md, issue 17, session 10);
    more processes gave no more (they take turns at SQLite's write lock)."""
    return 1 if (cpus or 1) >= 2 else 0


def default_profile_text(
    data_dir: Path,
    *,
    smtp_port: int = 2525,
    outbound: Outbound | None = None,
    hostname: str | None = None,
) -> str:
    """A commented profile that works at once: SQLite store in ``data_dir``, a Maildir
    transport delivering under ``data_dir/mail``, the SMTP listener on loopback; with
    ``outbound``, an SMTP transport for bare addresses too, and with ``hostname``,
    this host's mail name.

    ``default.toml`` holds it, with ``${hostname}``, ``${mail}``, ``${smtp_port}``,
    ``${listener_processes}`` (:func:`default_listener_processes`), ``${hostname_line}``
    and ``${outbound}`` where this machine's values and the options' tables go."""
    template = resources.files(__package__).joinpath("default.toml").read_text("utf-8")
    return Template(template).substitute(
        hostname=socket.gethostname(),
        mail=(data_dir / "mail").resolve(),
        smtp_port=smtp_port,
        listener_processes=default_listener_processes(os.cpu_count()),
        hostname_line="" if hostname is None else f"hostname = {json.dumps(hostname)}\n",
        outbound=_outbound_text(outbound or Outbound()),
    )
