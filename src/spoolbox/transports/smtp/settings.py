"""The SMTP transport's options: read and checked once at logon (``SMTPSettings``)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spoolbox.contract import Unconfigured

__all__ = ["DEFAULT_TIMEOUTS", "SMTPSettings", "tls_context", "usable_helo"]

#: RFC 5321 section 4.5.3.2 minimums (seconds); ``connect`` is ours, not the RFC's.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "connect": 30.0,
    "greeting": 300.0,
    "mail": 300.0,
    "rcpt": 300.0,
    "data_init": 120.0,
    "data_block": 180.0,
    "data_term": 600.0,
}
_TIMEOUT_KEYS = tuple(f"{k}_timeout" for k in DEFAULT_TIMEOUTS)
_OPTIONS = (
    "allow_plain_auth",
    "ca_file",
    "helo_name",
    "host",
    "max_connections",
    "max_message_size",
    "password",
    "port",
    "timeouts",
    "tls",
    "username",
    "verify",
    *_TIMEOUT_KEYS,
)
_TLS_MODES = ("none", "starttls", "implicit")
_DEFAULT_PORT = {"none": 25, "starttls": 587, "implicit": 465}
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]+")


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"smtp option {key!r} must be true or false, not {value!r}")
    return value


def _str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"smtp option {key!r} must be a non-empty string, not {value!r}")
    return value


def _int(config: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"smtp option {key!r} must be a whole number from {low} to {high}, not {value!r}"
        )
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"smtp option {key!r} must be a positive number of seconds, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """The validated options of one SMTP transport."""

    host: str
    port: int
    tls: str = "starttls"
    verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    allow_plain_auth: bool = False
    helo_name: str | None = None
    max_connections: int = 2
    max_message_size: int | None = None
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SMTPSettings:
        unknown = sorted(str(k) for k in config if k not in _OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown smtp option {unknown[0]!r}"
                + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
                + f"; the options are: {', '.join(_OPTIONS)}"
            )
        host = config.get("host")
        if host is None or host == "":
            raise Unconfigured(["host"], "the smart host to relay through")
        if not isinstance(host, str) or _CONTROL_RE.search(host) or host != host.strip():
            raise ValueError(f"smtp option 'host' must be a host name or address, not {host!r}")
        tls = config.get("tls", "starttls")
        if tls not in _TLS_MODES:
            raise ValueError(
                f"smtp option 'tls' must be one of {', '.join(_TLS_MODES)}, not {tls!r}"
            )
        port = _int(config, "port", 1, 65535) or _DEFAULT_PORT[tls]
        verify = _bool(config, "verify", True)
        allow_plain = _bool(config, "allow_plain_auth", False)
        username = _str(config, "username")
        password = config.get("password")
        if password is not None and not isinstance(password, str):
            raise ValueError("smtp option 'password' must be a string")
        if username is not None and password is None:
            raise Unconfigured(["password"], f"AUTH as {username!r} needs a password")
        if password is not None and username is None:
            raise Unconfigured(["username"], "a password was given without a username")
        if username is not None and tls == "none" and not allow_plain:
            raise ValueError(
                "smtp: refusing AUTH over a plaintext connection (tls='none'): the password "
                "would cross the network in clear. Use tls='starttls' or tls='implicit', or "
                "set allow_plain_auth=true if the path to the server is trusted"
            )
        helo = _str(config, "helo_name")
        if helo is not None and not usable_helo(helo):
            raise ValueError(f"smtp option 'helo_name' must be an ASCII host name, not {helo!r}")
        timeouts = dict(DEFAULT_TIMEOUTS)
        given = config.get("timeouts")
        if given is not None:
            if not isinstance(given, Mapping):
                raise ValueError("smtp option 'timeouts' must be a mapping of step to seconds")
            for step, value in given.items():
                if step not in DEFAULT_TIMEOUTS:
                    raise ValueError(
                        f"unknown smtp timeout {step!r} in 'timeouts'; the steps are: "
                        + ", ".join(DEFAULT_TIMEOUTS)
                    )
                timeouts[step] = _seconds(f"timeouts.{step}", value)
        for key in _TIMEOUT_KEYS:
            if key in config:
                step = key.removesuffix("_timeout")
                if given is not None and step in given:
                    raise ValueError(
                        f"smtp timeout {step!r} is given twice: 'timeouts' and {key!r}"
                    )
                timeouts[step] = _seconds(key, config[key])
        return cls(
            host=host,
            port=port,
            tls=tls,
            verify=verify,
            ca_file=_str(config, "ca_file"),
            username=username,
            password=password,
            allow_plain_auth=allow_plain,
            helo_name=helo,
            max_connections=_int(config, "max_connections", 1, 1000) or 2,
            max_message_size=_int(config, "max_message_size", 1, 1 << 62),
            timeouts=timeouts,
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
