"""What the IMAP and POP3 transports share: their options and TLS set-up.

The options are read by :func:`spoolbox.contract.read_options` into
:class:`IMAPOptions` or :class:`POP3Options`, then resolved into the
:class:`MailboxSettings` a session uses (the port by ``tls``, ``move:<folder>``
split).

Private to :mod:`spoolbox.transports.imap` and :mod:`spoolbox.transports.pop3`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from spoolbox.contract import MAX_INBOUND_SIZE, OptionError, option, read_options

__all__ = ["IMAPOptions", "MailboxSettings", "POP3Options", "fetch_status"]

_PORTS = {("imap", True): 993, ("imap", False): 143, ("pop3", True): 995, ("pop3", False): 110}
_MAX_SIZE_WORDS = f"a number of bytes from 1 to {MAX_INBOUND_SIZE} (the spooler's limit)"


def fetch_status(fetched: int, last: str | None, last_error: str | None) -> str:
    """The status string both inbound sessions show: count, last item, last error."""
    text = f"{fetched} fetched"
    if last:
        text += f", last: {last}"
    if last_error:
        text += f"; last error: {last_error}"
    return text


# -- the options, as the profile gives them (read by spoolbox.contract.read_options) ---------
@dataclass(frozen=True, slots=True)
class _ServerOptions:
    """The options IMAP and POP3 share (see the modules' docstrings for each)."""

    host: str
    username: str
    password: str = option(secret=True)
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    #: None: 993 / 995 with implicit TLS, else 143 / 110.
    port: int | None = option(None, low=1, high=65535)
    verify: bool = True
    ca_file: str | None = option(None, empty=True)  # "": the system's CAs, as if unset
    timeout: float = option(60.0, positive=True)
    max_size: int = option(MAX_INBOUND_SIZE, low=1, high=MAX_INBOUND_SIZE, what=_MAX_SIZE_WORDS)


@dataclass(frozen=True, slots=True)
class POP3Options(_ServerOptions):
    """The POP3 transport's options."""

    after_fetch: Literal["keep", "delete"] = option("keep", what="'keep' or 'delete'")


@dataclass(frozen=True, slots=True)
class IMAPOptions(_ServerOptions):
    """The IMAP transport's options: POP3's, a folder, ``move:<folder>`` and IDLE."""

    folder: str = "INBOX"
    after_fetch: str = option("keep", what="'keep', 'delete' or 'move:<folder>'")
    idle: bool = True

    def __post_init__(self) -> None:
        after = self.after_fetch
        if after.startswith("move:"):
            if after[5:] in ("", self.folder):
                raise OptionError(
                    "after_fetch", f"{after!r} must name a folder other than {self.folder!r}"
                )
        elif after not in ("keep", "delete"):
            raise OptionError(
                "after_fetch", f"must be 'keep', 'delete' or 'move:<folder>', not {after!r}"
            )


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
    password: str = field(repr=False)
    folder: str
    after_fetch: str  # "keep", "delete" or "move"
    move_to: str | None
    idle: bool
    timeout: float
    #: Larger messages are left on the server, skipped with an error (bytes).
    max_size: int = MAX_INBOUND_SIZE

    @classmethod
    def from_config(cls, protocol: str, config: Mapping[str, Any]) -> MailboxSettings:
        """``config`` read as ``protocol``'s options (:class:`IMAPOptions` or
        :class:`POP3Options`); raises :class:`~spoolbox.contract.OptionError` or
        :class:`~spoolbox.contract.Unconfigured`."""
        o: IMAPOptions | POP3Options
        if protocol == "imap":
            o = read_options(IMAPOptions, config, kind="imap")
            folder, idle = o.folder, o.idle
        else:
            o = read_options(POP3Options, config, kind=protocol)
            folder, idle = "INBOX", False
        after, move_to = o.after_fetch, None
        if after.startswith("move:"):
            after, move_to = "move", after[5:]
        return cls(
            protocol=protocol,
            host=o.host,
            port=o.port if o.port is not None else _PORTS[(protocol, o.tls == "implicit")],
            tls=o.tls,
            verify=o.verify,
            ca_file=o.ca_file,
            username=o.username,
            password=o.password,
            folder=folder,
            after_fetch=after,
            move_to=move_to,
            idle=idle,
            timeout=o.timeout,
            max_size=o.max_size,
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
