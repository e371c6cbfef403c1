"""What the IMAP and POP3 transports share: their options and TLS set-up.

Private to :mod:`spoolbox.transports.imap` and :mod:`spoolbox.transports.pop3`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spoolbox.contract import MAX_INBOUND_SIZE, Unconfigured

__all__ = ["MailboxSettings", "fetch_status"]

_COMMON = (
    "after_fetch",
    "ca_file",
    "host",
    "max_size",
    "password",
    "port",
    "timeout",
    "tls",
    "username",
    "verify",
)
_IMAP_ONLY = ("folder", "idle")
_TLS = ("implicit", "starttls", "none")
_PORTS = {("imap", True): 993, ("imap", False): 143, ("pop3", True): 995, ("pop3", False): 110}


def fetch_status(fetched: int, last: str | None, last_error: str | None) -> str:
    """The status string both inbound sessions show: count, last item, last error."""
    text = f"{fetched} fetched"
    if last:
        text += f", last: {last}"
    if last_error:
        text += f"; last error: {last_error}"
    return text


def _str(config: Mapping[str, Any], proto: str, key: str, default: str | None) -> str | None:
    value = config.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{proto} option {key!r} must be a string, not {type(value).__name__}")
    return value


def _bool(config: Mapping[str, Any], proto: str, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{proto} option {key!r} must be true or false, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class MailboxSettings:
    """The validated options of an IMAP or POP3 session."""

    protocol: str  # "imap" or "pop3"
    host: str
    port: int
    tls: str
    verify: bool
    ca_file: str | None
    username: str
    password: str
    folder: str
    after_fetch: str  # "keep", "delete" or "move"
    move_to: str | None
    idle: bool
    timeout: float
    #: Larger messages are left on the server, skipped with an error (bytes).
    max_size: int = MAX_INBOUND_SIZE

    @classmethod
    def from_config(cls, protocol: str, config: Mapping[str, Any]) -> MailboxSettings:
        p = protocol
        known = _COMMON + (_IMAP_ONLY if p == "imap" else ())
        unknown = sorted(str(k) for k in config if k not in known)
        if unknown:
            raise ValueError(
                f"unknown {p} option {unknown[0]!r}"
                + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
                + f"; the options are: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("host", "username", "password") if not config.get(k)]
        if missing:
            raise Unconfigured(missing, f"the {p} transport needs them")
        host = _str(config, p, "host", None) or ""
        username = _str(config, p, "username", None) or ""
        password = _str(config, p, "password", None) or ""
        tls = _str(config, p, "tls", "implicit") or ""
        if tls not in _TLS:
            raise ValueError(f"{p} option 'tls' must be one of {', '.join(_TLS)}, not {tls!r}")
        port = config.get("port", _PORTS[(p, tls == "implicit")])
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"{p} option 'port' must be an integer in 1..65535, not {port!r}")
        verify = _bool(config, p, "verify", True)
        ca_file = _str(config, p, "ca_file", None)
        folder = _str(config, p, "folder", "INBOX") or ""
        if not folder:
            raise ValueError(f"{p} option 'folder' must not be empty")
        after = _str(config, p, "after_fetch", "keep") or ""
        move_to: str | None = None
        if after.startswith("move:") and p == "imap":
            move_to = after[5:]
            if not move_to or move_to == folder:
                raise ValueError(
                    f"{p} option 'after_fetch' {after!r} must name a folder other than {folder!r}"
                )
            after = "move"
        elif after not in ("keep", "delete"):
            choices = "'keep', 'delete' or 'move:<folder>'" if p == "imap" else "'keep' or 'delete'"
            raise ValueError(f"{p} option 'after_fetch' must be {choices}, not {after!r}")
        idle = _bool(config, p, "idle", True)
        timeout = config.get("timeout", 60.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"{p} option 'timeout' must be a positive number, not {timeout!r}")
        max_size = config.get("max_size", MAX_INBOUND_SIZE)
        if (
            isinstance(max_size, bool)
            or not isinstance(max_size, int)
            or not 0 < max_size <= MAX_INBOUND_SIZE
        ):
            raise ValueError(
                f"{p} option 'max_size' must be a number of bytes from 1 to "
                f"{MAX_INBOUND_SIZE} (the spooler's limit), not {max_size!r}"
            )
        return cls(
            protocol=p,
            host=host,
            port=port,
            tls=tls,
            verify=verify,
            ca_file=ca_file,
            username=username,
            password=password,
            folder=folder,
            after_fetch=after,
            move_to=move_to,
            idle=idle and p == "imap",
            timeout=float(timeout),
            max_size=max_size,
        )

    @property
    def where(self) -> str:
        """``user@host:port`` (and the folder, for IMAP), for status lines and logs."""
        out = f"{self.username}@{self.host}:{self.port}"
        return f"{out}/{self.folder}" if self.protocol == "imap" else out

    def ssl_context(self, logger: logging.Logger) -> ssl.SSLContext | None:
        """The TLS context (None for ``tls = "none"``); ``verify = false`` is logged."""
        if self.tls == "none":
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if not self.verify:
            logger.warning(
                "%s %s: TLS certificate verification is OFF (verify = false): "
                "the connection is encrypted but the server is not authenticated",
                self.protocol,
                self.where,
            )
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def describe(self) -> str:
        tls = {"implicit": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[self.tls]
        if self.tls != "none" and not self.verify:
            tls += ", unverified"
        after = f"move to {self.move_to}" if self.after_fetch == "move" else self.after_fetch
        return f"{self.protocol.upper()} {self.where} ({tls}; after fetch: {after})"
