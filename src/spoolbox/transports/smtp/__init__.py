"""The SMTP transport (address type ``SMTP``): outbound relay through a smart host.

Every recipient ``SMTP:bob@example.org`` is relayed to one configured smart host
(no MX lookup): ``MAIL FROM`` is the message's sender (``<>`` when it has none, or
when the sender is not an ``SMTP:`` address), one ``RCPT TO`` per recipient this
transport is responsible for, then ``DATA`` with the content byte for byte (dot
stuffed, bare CR and LF written as CRLF, as RFC 5321 asks).

Configuration (the transport's ``options`` in the profile):

``host``
    The smart host (name or IP address).  Required: without it the logon fails with
    :class:`~spoolbox.contract.Unconfigured`.
``port``
    Default 25; 587 for ``tls="starttls"``, 465 for ``tls="implicit"``.
``tls``
    ``"starttls"`` (the default: the server must offer STARTTLS, or every recipient
    is deferred with 4.7.10), ``"implicit"`` (TLS from the first byte, RFC 8314) or
    ``"none"``.
``verify``
    Bool, default true: check the server's certificate and host name.  ``false``
    must be written out, and is logged at WARNING once at logon.
``ca_file``
    A PEM bundle of the certificate authorities to trust instead of the system's.
``username``, ``password``
    AUTH credentials (both or neither).  Only over TLS, unless
    ``allow_plain_auth`` is true: with ``tls="none"`` the logon is refused with a
    :class:`ValueError` saying so.
``helo_name``
    The name sent in EHLO/HELO (default: this host's fully qualified name).
``max_connections``
    Default 2: the size of the connection pool, which is also the number of
    messages the spooler may hand this session at once (``concurrency``), i.e. the
    concurrency limit towards the smart host.
``timeouts``
    A mapping of step to seconds, or the individual keys ``connect_timeout``,
    ``greeting_timeout``, ``mail_timeout``, ``rcpt_timeout``,
    ``data_init_timeout``, ``data_block_timeout`` and ``data_term_timeout``.
    The defaults are the minimums of RFC 5321 section 4.5.3.2: greeting 300 s,
    MAIL 300 s, RCPT 300 s, DATA initiation 120 s, each data block 180 s, the reply
    to the final dot 600 s.  ``connect`` (30 s) is not in the RFC: it bounds name
    resolution plus the TCP connection.  EHLO, STARTTLS, AUTH, RSET and QUIT use the
    MAIL timeout.
``max_message_size``
    Optional byte limit of our own: larger messages fail with 5.3.4 before any
    connection is made.  A server's ``SIZE`` announcement is honoured the same way
    (5.3.4 before ``MAIL FROM``).

An unknown key or a value of the wrong type fails the logon with a
:class:`ValueError` that names the key.

Results (one ``status_recips`` call per message):

* ``250``/``251`` to RCPT and ``250`` after the final dot: delivered, diagnostic
  ``smtp; 250 2.0.0 ...``, status from the reply's enhanced code (else 2.0.0),
  ``remote_mta`` ``dns; <host>``.
* ``4xx`` to RCPT: that recipient deferred with the reply's enhanced code (else
  4.0.0); ``5xx``: failed (enhanced code, else 5.0.0).
* ``4xx``/``5xx`` to MAIL, DATA or the final dot: every recipient still open
  deferred or failed accordingly.
* A timeout (4.4.1, "no answer") or a dropped connection (4.4.2) at any point after
  the connection was made defers every recipient not yet delivered; a connection
  that cannot be made defers them with 4.4.1; a certificate that does not verify
  with 4.7.5, another TLS failure with 4.7.0; a malformed or oversized reply with
  4.5.0; a refused AUTH (one mechanism is tried: PLAIN, LOGIN or CRAM-MD5) with the
  reply's code made class 4 (a credentials problem is fixed by an administrator,
  not by bouncing the mail), e.g. 4.7.8.  A ``421`` reply at any step defers what is
  left with the server's text.
  Nothing is reported delivered before the server answered ``250`` to the final
  dot, so a connection lost in the middle of DATA leaves the message queued.
* Addresses that cannot go into a command line (spaces, ``<`` or ``>``) fail with
  5.1.3; non-ASCII addresses need the server's SMTPUTF8 (else 5.6.7).

PIPELINING (RFC 2920): when the server's EHLO reply lists it, ``MAIL FROM``, every
``RCPT TO`` and ``DATA`` go out in one write and their replies are read in order,
then (after ``354``) the content and the final dot in one write (content over
``_WHOLE_LIMIT`` is streamed in chunks, the final dot with the last one): two round
trips per message.  The results are those of the dialogue command by command; after
a refused ``MAIL`` the replies to the RCPTs and DATA sent with it are read (and the
connection kept if they are errors, as they should be); when every recipient was
refused but ``DATA`` got ``354`` only the final dot is sent (RFC 2920 section 3.1).
aiosmtplib reads one reply per command written, so the replies to a batch are read
by ``_Replies``, our own (see there why).  Without PIPELINING each command waits for
the reply to the one before.

Connections are pooled: a connection is reused for the next message (after an
``RSET`` that also proves it still alive; a dead one is replaced silently), dropped
after any error, and closed (``QUIT``) at logoff.  ``transport_notify(CANCEL_MESSAGE,
ref)`` closes the connection of the message being sent, so the send stops at once
and the message ends cancelled (unless the server had already accepted it).

Hostile servers: every network step has its timeout; a reply longer than
aiosmtplib's limit (32 KiB, so an endless ``250-`` reply ends quickly) or a line
that is not a reply is a protocol error (4.5.0); reply text is cleaned (8-bit junk
decoded with replacement characters, control characters removed) before it goes
into a diagnostic or the status row.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol

from spoolbox.contract import (
    BaseTransportSession,
    LogoffFlags,
    LogonFlags,
    MessageCancelled,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    StatusCode,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
    Unconfigured,
)

__all__ = ["DEFAULT_TIMEOUTS", "SMTPProvider", "SMTPSession", "SMTPSettings"]

ADDRESS_TYPE = "SMTP"

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
_CHUNK = 65536
#: Messages up to this size are read whole (``content()``); larger ones are streamed.
_WHOLE_LIMIT = 1 << 20
_QUIT_TIMEOUT = 5.0
#: AUTH mechanisms in order of preference, over TLS and (allow_plain_auth) without it.
_AUTH_TLS = ("plain", "login", "cram-md5")
_AUTH_PLAIN = ("cram-md5", "plain", "login")

_ENHANCED_RE = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![\d.])")  # ASCII digits only
_EOL_RE = re.compile(rb"\r\n|\n|\r(?!\n)")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]+")
_BAD_ADDRESS_RE = re.compile(r"[\s<>]")


# -- configuration -----------------------------------------------------------------------
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
        if helo is not None and (not helo.isascii() or re.search(r"[\s\x00-\x1f\x7f]", helo)):
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


def _tls_context(settings: SMTPSettings) -> ssl.SSLContext | None:
    """Blocking (reads certificate files): run through ``support.run_blocking``."""
    if settings.tls == "none":
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- reply text and codes --------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Server text made safe for a diagnostic: undecodable bytes replaced, no controls."""
    raw = text.encode("utf-8", "surrogateescape")
    return " ".join(_CONTROL_RE.sub(" ", raw.decode("utf-8", "replace")).split())


def reply_text(resp: SMTPResponse) -> str:
    """``550 5.1.1 user unknown``: the reply on one clean line."""
    return f"{resp.code} {clean_text(resp.message)}".rstrip()


def enhanced_status(resp: SMTPResponse, cls: str) -> str:
    """The reply's enhanced status code (RFC 3463) if it has one of class ``cls``."""
    m = _ENHANCED_RE.match(resp.message.lstrip())
    if m is not None and m.group(1) == cls:
        return m.group(0)
    return f"{cls}.0.0"


class _Failure(Exception):
    """Every recipient still open gets ``status`` (class 4 or 5) and ``text``."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _reply_failure(resp: SMTPResponse, step: str) -> _Failure:
    """A 4xx/5xx reply to a command concerning all open recipients."""
    cls = "5" if 500 <= resp.code <= 599 else "4"
    return _Failure(enhanced_status(resp, cls), f"smtp; {reply_text(resp)} (in reply to {step})")


def _protocol_failure(resp: SMTPResponse, step: str, where: str) -> _Failure:
    return _Failure(
        "4.5.0",
        f"x-spoolbox; unexpected reply from {where} to {step}: {reply_text(resp)}",
    )


# -- DATA encoding ------------------------------------------------------------------------------
class DataEncoder:
    """Content chunks to the DATA stream: CRLF line endings, dot stuffing, final dot.

    Works across chunk boundaries (a CR at the end of one chunk and LF at the start
    of the next are one line ending).
    """

    def __init__(self) -> None:
        self._bol = True  # at the start of a line
        self._cr = False  # a CR held back from the previous chunk

    def feed(self, chunk: bytes) -> bytes:
        data = (b"\r" if self._cr else b"") + bytes(chunk)
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if crlf != data.count(b"\n") or crlf != data.count(b"\r"):  # not all CRLF already
            data = _EOL_RE.sub(b"\r\n", data)
        if self._bol and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._bol = data.endswith(b"\r\n")
        return data

    def finish(self) -> bytes:
        out = b""
        if self._cr:
            out, self._cr, self._bol = b"\r\n", False, True
        if not self._bol:
            out += b"\r\n"
        return out + b".\r\n"


# -- connections --------------------------------------------------------------------------------
#: A connection idle for less than this is reused without an RSET probe.
_FRESH = 2.0


class _Conn:
    """One connected client of the pool."""

    def __init__(self, client: aiosmtplib.SMTP, number: int) -> None:
        self.client = client
        self.number = number
        self.messages = 0
        self.clean = False  # the last transaction ended with 250 after the data
        self.idle_since = 0.0

    @property
    def alive(self) -> bool:
        return self.client.is_connected

    @property
    def extensions(self) -> Mapping[str, str]:
        return self.client.esmtp_extensions

    def close(self) -> None:
        self.client.close()


async def _tcp_connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected non-blocking socket: name resolution plus connect within ``timeout``."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        errors: list[OSError] = []
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                errors.append(exc)
                continue
            except BaseException:
                sock.close()
                raise
            return sock
    if errors:
        raise errors[0]
    raise OSError(f"no address found for {host}")


#: aiosmtplib's limits for one reply line and one whole (multi-line) reply.
_MAX_LINE = 8192
_MAX_REPLY = _MAX_LINE * 4


class _Replies(asyncio.Protocol):
    """The replies to pipelined commands (RFC 2920), read in order, none lost.

    Our own because aiosmtplib's reader does not serve here: ``read_response`` takes
    one reply per command written, so of several replies in one TCP segment it returns
    the first and leaves the rest unparsed until more data arrives, and data arriving
    while a parsed reply waits to be picked up is dropped.  For one pipelined
    transaction this reader stands in as the transport's protocol (asyncio's
    ``set_protocol``), handing flow control and the loss of the connection on to the
    client's protocol; :meth:`detach` puts the client's protocol back.  Replies are
    parsed by aiosmtplib's rules (the same limits, the same errors).
    """

    def __init__(self, inner: SMTPProtocol, transport: asyncio.BaseTransport) -> None:
        self._inner = inner
        self._transport = transport
        self._buffer = bytearray()
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._error: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    def detach(self) -> bool:
        """Give the transport back to the client; False if replies were left unread."""
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._inner)
        return not self._replies and not self._buffer and self._error is None

    async def read(self, timeout: float) -> SMTPResponse:
        """The next reply; TimeoutError after ``timeout`` seconds without one."""
        if self._replies:  # pipelined replies mostly arrive together: no timer for them
            return self._replies.popleft()
        async with asyncio.timeout(timeout):
            while not self._replies:
                if self._error is not None:
                    raise self._error
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._replies.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: aiosmtplib.SMTPException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            while (resp := self._parse()) is not None:
                self._replies.append(resp)
        except aiosmtplib.SMTPResponseException as exc:
            del self._buffer[:]
            self._fail(exc)
            return
        if len(self._buffer) > _MAX_REPLY:
            del self._buffer[:]
            self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
            return
        self._wake()

    def _parse(self) -> SMTPResponse | None:
        """One complete reply off the front of the buffer, or None."""
        buf = self._buffer
        lines: list[bytes] = []
        offset = 0
        while (end := buf.find(b"\n", offset)) != -1:
            line = bytes(buf[offset : end + 1])
            if len(line) > _MAX_LINE:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            if not line[:3].isdigit():
                text = line.decode("utf-8", errors="ignore")
                raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}")
            offset = end + 1
            if offset > _MAX_REPLY:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del buf[:offset]
                return SMTPResponse(
                    int(line[:3]), b"\n".join(lines).decode("utf-8", "surrogateescape")
                )
        return None

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


# -- the session ---------------------------------------------------------------------------------
class SMTPSession(BaseTransportSession):
    """One logon of the SMTP transport; see the module docstring."""

    ADDRESS_TYPES: ClassVar[Collection[str]] = (ADDRESS_TYPE,)

    def __init__(
        self,
        support: Support,
        settings: SMTPSettings,
        tls_context: ssl.SSLContext | None,
        helo_name: str,
    ) -> None:
        super().__init__(support)
        self.settings = settings
        self.concurrency = settings.max_connections
        self._tls_context = tls_context
        self._helo = helo_name
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[_Conn] = []
        self._busy: dict[str, _Conn] = {}  # message ref -> its connection
        self._cancelled: set[str] = set()
        self._closed = False
        self.connections_opened = 0
        self.counts = {"delivered": 0, "failed": 0, "deferred": 0, "messages": 0}
        self.last_error = ""

    def __repr__(self) -> str:
        return f"<SMTPSession {self.settings.where} tls={self.settings.tls}>"

    @property
    def t(self) -> Mapping[str, float]:
        return self.settings.timeouts

    def describe(self) -> str:
        s = self.settings
        auth = f", AUTH as {s.username}" if s.username else ""
        return f"relaying via {s.where} (tls={s.tls}{auth})"

    def status_object(self) -> Mapping[str, Any]:
        s = self.settings
        return {
            "host": s.host,
            "port": s.port,
            "tls": s.tls,
            "verify": s.verify,
            "max_connections": s.max_connections,
            "connections_open": len(self._idle) + len(self._busy),
            "connections_opened": self.connections_opened,
            **self.counts,
            "last_error": self.last_error,
        }

    def _update_status(self) -> None:
        open_ = sum(c.alive for c in self._idle) + len(self._busy)
        where = self.settings.where
        text = f"connected to {where}" if open_ else f"idle, relaying via {where}"
        text += f", {self.counts['delivered']} sent"
        if self.counts["deferred"] or self.counts["failed"]:
            text += f", {self.counts['deferred']} deferred, {self.counts['failed']} failed"
        if self.last_error:
            text += f"; last error: {self.last_error}"
        self.support.modify_status_row(status_string=text)

    # -- notifications ------------------------------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        if flags & TransportNotifyFlags.CANCEL_MESSAGE and ref is not None:
            conn = self._busy.get(ref)
            if conn is not None:
                self._cancelled.add(ref)
                conn.close()  # the send in progress fails at its next network await

    # -- the pool -------------------------------------------------------------------------------
    async def _acquire(self, ref: str) -> _Conn:
        await self._slots.acquire()
        try:
            conn = await self._reuse()
            if conn is None:
                conn = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        self._busy[ref] = conn
        return conn

    def _release(self, ref: str, conn: _Conn, reusable: bool) -> None:
        self._busy.pop(ref, None)
        if reusable and conn.alive and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    async def _reuse(self) -> _Conn | None:
        """An idle connection that answers RSET, or None (dead ones are dropped)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.alive:
                conn.close()
                continue
            if conn.clean and time.monotonic() - conn.idle_since < _FRESH:
                # A transaction that just ended with 250 leaves the session clean
                # (RFC 5321 4.1.4): no RSET round trip for a connection this fresh.
                conn.clean = False
                return conn
            try:
                resp = await conn.client.execute_command(b"RSET", timeout=self.t["mail"])
            except (aiosmtplib.SMTPException, OSError):
                conn.close()
                continue
            if resp.code == 250:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Conn:
        s = self.settings
        where = s.where
        try:
            sock = await _tcp_connect(s.host, s.port, self.t["connect"])
        except TimeoutError:
            raise _Failure(
                "4.4.1",
                f"x-spoolbox; cannot connect to {where}: no connection within "
                f"{self.t['connect']:g} s (connect timeout)",
            ) from None
        except OSError as exc:
            raise _Failure(
                "4.4.1", f"x-spoolbox; cannot connect to {where}: {exc.strerror or exc}"
            ) from None
        client = aiosmtplib.SMTP(
            hostname=s.host,
            sock=sock,
            local_hostname=self._helo,
            timeout=self.t["mail"],
            use_tls=s.tls == "implicit",
            start_tls=False,
            tls_context=self._tls_context,
        )
        self.connections_opened += 1
        conn = _Conn(client, self.connections_opened)
        try:
            step = "the greeting"
            try:
                await client.connect(timeout=self.t["greeting"])
            finally:
                if not client.is_connected:
                    sock.close()
            step = "EHLO"
            await self._hello(client)
            if s.tls == "starttls":
                if not client.supports_extension("starttls"):
                    raise _Failure(
                        "4.7.10",
                        f"x-spoolbox; {where} does not offer STARTTLS, which tls='starttls' "
                        "requires",
                    )
                step = "STARTTLS"
                await client.starttls(server_hostname=s.host, timeout=self.t["mail"])
                step = "EHLO after STARTTLS"
                await self._hello(client)
            if s.username is not None:
                step = "AUTH"
                await self._auth(client)
        except _Failure:
            client.close()
            raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            timeout = self.t["greeting" if step == "the greeting" else "mail"]
            raise self._failure(exc, step, timeout) from None
        except BaseException:
            client.close()
            raise
        return conn

    async def _hello(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo(timeout=self.t["mail"])
        except aiosmtplib.SMTPHeloError as exc:
            if not client.is_connected:
                raise
            resp = await client.execute_command(
                b"HELO", self._helo.encode("ascii"), timeout=self.t["mail"]
            )
            if resp.code != 250:
                raise aiosmtplib.SMTPHeloError(resp.code, resp.message) from exc
            client.last_helo_response = resp

    async def _auth(self, client: aiosmtplib.SMTP) -> None:
        s = self.settings
        assert s.username is not None and s.password is not None
        if not client.supports_extension("auth"):
            raise _Failure(
                "4.7.0", f"x-spoolbox; {s.where} does not offer AUTH, but a username is set"
            )
        offered = client.server_auth_methods
        order = _AUTH_TLS if client.get_transport_info("sslcontext") else _AUTH_PLAIN
        mechanism = next((m for m in order if m in offered), None)
        if mechanism is None:
            raise _Failure(
                "4.7.0",
                f"x-spoolbox; {s.where} offers no AUTH mechanism we know "
                f"({', '.join(offered) or 'none'}; we know {', '.join(order)})",
            )
        # One mechanism only: trying the next after a refusal just repeats wrong
        # credentials (and some servers lose track of the dialogue doing so).
        method = getattr(client, "auth_" + mechanism.replace("-", ""))
        try:
            await method(s.username, s.password, timeout=self.t["mail"])
        except aiosmtplib.SMTPAuthenticationError as exc:
            resp = SMTPResponse(exc.code, exc.message)
            status = enhanced_status(resp, "4" if exc.code < 500 else "5")
            raise _Failure(
                "4." + status.split(".", 1)[1],  # a configuration problem: keep retrying
                f"smtp; {reply_text(resp)} (authentication as {s.username} failed)",
            ) from None

    def _failure(self, exc: BaseException, step: str, timeout: float) -> _Failure:
        """A network or protocol exception as the result of the open recipients."""
        where = self.settings.where
        exc = _tls_cause(exc) or exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = exc.verify_message or str(exc)
            return _Failure(
                "4.7.5", f"x-spoolbox; TLS certificate of {where} not verified ({step}): {why}"
            )
        if isinstance(exc, ssl.SSLError):
            return _Failure("4.7.0", f"x-spoolbox; TLS failure with {where} ({step}): {exc}")
        if isinstance(exc, TimeoutError):
            return _Failure(
                "4.4.1", f"x-spoolbox; no answer from {where} within {timeout:g} s ({step})"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            if exc.code < 400 or exc.code > 599:
                return _Failure(
                    "4.5.0",
                    f"x-spoolbox; bad reply from {where} ({step}): {clean_text(exc.message)}",
                )
            resp = SMTPResponse(exc.code, exc.message)
            status = enhanced_status(resp, "4" if exc.code < 500 else "5")
            # Before a transaction (greeting, EHLO, STARTTLS) a refusal is the server's
            # state, not a verdict on the message: defer.
            return _Failure("4." + status.split(".", 1)[1], f"smtp; {reply_text(resp)} ({step})")
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError | OSError):
            detail = clean_text(str(exc)) or type(exc).__name__
            return _Failure("4.4.2", f"x-spoolbox; connection to {where} lost ({step}): {detail}")
        return _Failure("4.3.0", f"x-spoolbox; SMTP error with {where} ({step}): {exc}")

    async def _command(
        self, conn: _Conn, step: str, timeout_key: str, *args: bytes
    ) -> SMTPResponse:
        timeout = self.t[timeout_key]
        return await self._checked(
            conn, step, timeout, conn.client.execute_command(*args, timeout=timeout)
        )

    async def _checked(
        self, conn: _Conn, step: str, timeout: float, reply: Awaitable[SMTPResponse]
    ) -> SMTPResponse:
        """``reply``, or the failure of ``step`` with the connection closed: a network
        error, a timeout, or 421 (the server is closing: everything open waits)."""
        try:
            resp = await reply
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            conn.close()
            raise self._failure(exc, step, timeout) from None
        if resp.code == 421:
            conn.close()
            raise _reply_failure(resp, step)
        return resp

    # -- outbound -------------------------------------------------------------------------------
    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        recipients = message.recipients
        if not recipients:
            return
        ref = message.ref
        results: dict[int, RecipientResult] = {}
        try:
            await self._send(message, recipients, results)
        except _Failure as f:
            self._settle(recipients, results, f)
        finally:
            cancelled = ref in self._cancelled
            self._cancelled.discard(ref)
        if cancelled and not any(r.status.startswith("2") for r in results.values()):
            raise MessageCancelled(ref)
        ordered = [results[r.index] for r in recipients if r.index in results]
        await self.support.status_recips(message, ordered)
        self._count(ordered)

    def _settle(
        self,
        recipients: Sequence[OutboundRecipient],
        results: dict[int, RecipientResult],
        f: _Failure,
    ) -> None:
        mta = f"dns; {self.settings.host}"
        for r in recipients:
            if r.index in results:
                continue
            if f.status.startswith("5"):
                results[r.index] = RecipientResult.failed(
                    r, f.text, status=f.status, remote_mta=mta
                )
            else:
                results[r.index] = RecipientResult.deferred(
                    r, f.text, status=f.status, remote_mta=mta
                )

    def _count(self, results: Sequence[RecipientResult]) -> None:
        self.counts["messages"] += 1
        for res in results:
            self.counts[str(res.outcome)] += 1
            if not res.status.startswith("2"):
                self.last_error = res.diagnostic
        self._update_status()

    async def _send(
        self,
        message: OutboundMessage,
        recipients: Sequence[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> None:
        s = self.settings
        size = message.size
        if s.max_message_size is not None and size > s.max_message_size:
            raise _Failure(
                "5.3.4",
                f"x-spoolbox; message of {size} bytes is over this transport's "
                f"max_message_size of {s.max_message_size} bytes",
            )
        sender = message.sender
        mail_from = sender.value if sender is not None and sender.type == ADDRESS_TYPE else ""
        if _BAD_ADDRESS_RE.search(mail_from):
            raise _Failure("5.1.7", f"x-spoolbox; sender {mail_from!r} cannot be used in MAIL FROM")
        todo: list[OutboundRecipient] = []
        for r in recipients:
            if _BAD_ADDRESS_RE.search(r.value):
                results[r.index] = RecipientResult.failed(
                    r, f"x-spoolbox; {r.value!r} cannot be used in RCPT TO", status="5.1.3"
                )
            else:
                todo.append(r)
        if not todo:
            return
        await self.support.spooler_yield()  # a cancel before we connect: MessageCancelled
        conn = await self._acquire(message.ref)
        reusable = False
        try:
            reusable = await self._transaction(conn, message, mail_from, todo, results)
        finally:
            self._release(message.ref, conn, reusable)

    async def _transaction(
        self,
        conn: _Conn,
        message: OutboundMessage,
        mail_from: str,
        todo: list[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> bool:
        """One MAIL/RCPT/DATA transaction; True when the connection may be reused."""
        where = self.settings.where
        mta = f"dns; {self.settings.host}"
        ext = conn.extensions
        size = message.size
        limit = _size_limit(ext.get("size"))
        if limit is not None and size > limit:
            raise _Failure(
                "5.3.4",
                f"x-spoolbox; message of {size} bytes is over the limit of {limit} bytes "
                f"that {where} announces (SIZE)",
            )
        utf8 = "smtputf8" in ext
        if not mail_from.isascii() and not utf8:
            raise _Failure(
                "5.6.7", f"x-spoolbox; sender {mail_from} is not ASCII and {where} lacks SMTPUTF8"
            )
        rcpts: list[OutboundRecipient] = []
        for r in todo:
            if r.value.isascii() or utf8:
                rcpts.append(r)
            else:
                results[r.index] = RecipientResult.failed(
                    r,
                    f"x-spoolbox; {r.value} is not ASCII and {where} lacks SMTPUTF8",
                    status="5.6.7",
                    remote_mta=mta,
                )
        if not rcpts:
            return True
        content: bytes | None = None
        if size <= _WHOLE_LIMIT:
            content = await message.content()
        options: list[bytes] = []
        if "size" in ext:
            options.append(f"SIZE={size}".encode())
        if "8bitmime" in ext and (content is None or not content.isascii()):
            options.append(b"BODY=8BITMIME")
        need_utf8 = not mail_from.isascii() or any(not r.value.isascii() for r in rcpts)
        if need_utf8:
            options.append(b"SMTPUTF8")
        enc = "utf-8" if need_utf8 else "ascii"

        step = f"MAIL FROM:<{mail_from}>"
        mail = [b"MAIL", b"FROM:<" + mail_from.encode(enc) + b">", *options]
        if "pipelining" in ext:
            commands = [b" ".join(mail) + b"\r\n"]
            commands += [b"RCPT TO:<" + r.value.encode(enc) + b">\r\n" for r in rcpts]
            return await self._pipelined(conn, message, content, step, commands, rcpts, results)

        resp = await self._command(conn, step, "mail", *mail)
        if resp.code != 250:
            raise self._unexpected(conn, resp, step)

        accepted: list[OutboundRecipient] = []
        for r in rcpts:
            step = f"RCPT TO:<{r.value}>"
            resp = await self._command(
                conn, step, "rcpt", b"RCPT", b"TO:<" + r.value.encode(enc) + b">"
            )
            self._rcpt_result(conn, r, resp, results, accepted)
        if not accepted:
            return True  # RSET before the next transaction (in _reuse)

        resp = await self._command(conn, "DATA", "data_init", b"DATA")
        if resp.code != 354:
            raise self._unexpected(conn, resp, "DATA")
        async with self._exclusive(conn, "DATA") as (protocol, replies):
            resp = await self._data(conn, message, content, protocol, replies)
        self._delivered(conn, resp, accepted, results)
        return True

    def _rcpt_result(
        self,
        conn: _Conn,
        r: OutboundRecipient,
        resp: SMTPResponse,
        results: dict[int, RecipientResult],
        accepted: list[OutboundRecipient],
    ) -> None:
        """The reply to ``RCPT TO`` as the recipient's result (or accepted, for now)."""
        mta = f"dns; {self.settings.host}"
        if resp.code in (250, 251):
            accepted.append(r)
        elif 400 <= resp.code <= 499:
            results[r.index] = RecipientResult.deferred(
                r, f"smtp; {reply_text(resp)}", status=enhanced_status(resp, "4"), remote_mta=mta
            )
        elif 500 <= resp.code <= 599:
            results[r.index] = RecipientResult.failed(
                r, f"smtp; {reply_text(resp)}", status=enhanced_status(resp, "5"), remote_mta=mta
            )
        else:
            conn.close()
            raise _protocol_failure(resp, f"RCPT TO:<{r.value}>", self.settings.where)

    def _delivered(
        self,
        conn: _Conn,
        resp: SMTPResponse,
        accepted: Sequence[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> None:
        """The reply to the final dot: every accepted recipient delivered, or a failure."""
        if resp.code != 250:
            raise self._unexpected(conn, resp, "end of data")
        conn.messages += 1
        conn.clean = True
        status = enhanced_status(resp, "2")
        text = f"smtp; {reply_text(resp)}"
        mta = f"dns; {self.settings.host}"
        for r in accepted:
            results[r.index] = RecipientResult.delivered(r, text, status=status, remote_mta=mta)

    def _unexpected(self, conn: _Conn, resp: SMTPResponse, step: str) -> _Failure:
        if 400 <= resp.code <= 599:
            return _reply_failure(resp, step)
        conn.close()  # a reply we do not understand: the dialogue is out of step
        return _protocol_failure(resp, step, self.settings.where)

    # -- PIPELINING (RFC 2920) --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _exclusive(
        self, conn: _Conn, step: str
    ) -> AsyncIterator[tuple[SMTPProtocol, _Replies]]:
        """The connection to ourselves (aiosmtplib's command lock), replies through ``_Replies``.

        On the way out the connection is closed if the dialogue may be out of step:
        replies left unread, or an exception other than a result (``_Failure``).
        """
        protocol = conn.client.protocol
        transport = protocol.transport if protocol is not None else None
        lock = protocol._command_lock if protocol is not None else None
        if protocol is None or transport is None or lock is None:
            conn.close()
            raise _Failure(
                "4.4.2", f"x-spoolbox; connection to {self.settings.where} lost ({step})"
            )
        async with lock:  # as execute_command takes it: no other command interleaves
            replies = _Replies(protocol, transport)
            try:
                yield protocol, replies
            except _Failure:
                if not replies.detach():
                    conn.close()
                raise
            except BaseException:
                replies.detach()
                conn.close()  # cancelled, or an error we did not expect
                raise
            if not replies.detach():
                conn.close()

    async def _pipelined(
        self,
        conn: _Conn,
        message: OutboundMessage,
        content: bytes | None,
        mail_step: str,
        commands: list[bytes],
        rcpts: list[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> bool:
        """MAIL, every RCPT and DATA in one write, then their replies in order.

        The same results as the dialogue command by command (see ``_transaction``);
        True when the connection may be reused.
        """
        async with self._exclusive(conn, mail_step) as (protocol, replies):
            try:
                protocol.write(b"".join(commands) + b"DATA\r\n")
            except (aiosmtplib.SMTPException, OSError) as exc:
                conn.close()
                raise self._failure(exc, mail_step, self.t["mail"]) from None
            return await self._pipelined_replies(
                conn, protocol, replies, message, content, mail_step, rcpts, results
            )

    async def _pipelined_replies(
        self,
        conn: _Conn,
        protocol: SMTPProtocol,
        replies: _Replies,
        message: OutboundMessage,
        content: bytes | None,
        mail_step: str,
        rcpts: list[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> bool:
        resp = await self._reply(conn, replies, mail_step, "mail")
        if resp.code != 250:
            refused = self._unexpected(conn, resp, mail_step)
            if conn.alive:
                # The RCPTs and the DATA were sent all the same: read their replies
                # (errors such as 503) to stay in step, or close if we are not.  In
                # step, the connection serves the next message (after an RSET).
                for r in rcpts:
                    step = f"RCPT TO:<{r.value}>"
                    if not await self._refused_reply(conn, replies, step, "rcpt"):
                        break
                else:
                    await self._refused_reply(conn, replies, "DATA", "data_init")
            self._settle(rcpts, results, refused)
            return True

        accepted: list[OutboundRecipient] = []
        for r in rcpts:
            resp = await self._reply(conn, replies, f"RCPT TO:<{r.value}>", "rcpt")
            self._rcpt_result(conn, r, resp, results, accepted)

        if not accepted:  # every recipient has its result; DATA should be refused
            try:
                resp = await self._reply(conn, replies, "DATA", "data_init")
                if resp.code == 354:  # RFC 2920 section 3.1: end the empty message at once
                    protocol.write(b".\r\n")
                    await self._reply(conn, replies, "end of data", "data_term")
                elif not 400 <= resp.code <= 599:
                    conn.close()
            except (_Failure, aiosmtplib.SMTPException, OSError):
                conn.close()
            return True  # kept only if still open (_release), with an RSET before reuse

        resp = await self._reply(conn, replies, "DATA", "data_init")
        if resp.code != 354:
            raise self._unexpected(conn, resp, "DATA")
        resp = await self._data(conn, message, content, protocol, replies)
        self._delivered(conn, resp, accepted, results)
        return True

    async def _reply(
        self, conn: _Conn, replies: _Replies, step: str, timeout_key: str
    ) -> SMTPResponse:
        """The next pipelined reply, checked as ``_command`` checks one."""
        timeout = self.t[timeout_key]
        return await self._checked(conn, step, timeout, replies.read(timeout))

    async def _refused_reply(
        self, conn: _Conn, replies: _Replies, step: str, timeout_key: str
    ) -> bool:
        """Read a reply after MAIL was refused; False (and closed) if out of step."""
        try:
            resp = await self._reply(conn, replies, step, timeout_key)
        except _Failure:
            return False  # closed; MAIL's refusal is the result all the same
        if 400 <= resp.code <= 599:
            return True
        conn.close()  # accepted without a MAIL, or not understood
        return False

    async def _data(
        self,
        conn: _Conn,
        message: OutboundMessage,
        content: bytes | None,
        protocol: SMTPProtocol,
        replies: _Replies,
    ) -> SMTPResponse:
        """Send the content after 354 and read the reply to the final dot.

        Content held whole goes out in one write with the final dot; streamed content
        chunk by chunk (with flow control), the final dot with the last chunk.
        """
        encoder = DataEncoder()
        step, timeout = "sending data", self.t["data_block"]
        try:
            pending: list[bytes] = []  # encoded, not yet written
            async for chunk in _chunks(message, content):
                data = encoder.feed(chunk)
                if content is not None:  # held whole: one write at the end
                    pending.append(data)
                    if self.support.slice_spent():
                        await self.support.spooler_yield()
                elif data:  # streamed: write the chunk before, keep this one back
                    if pending:
                        await self._write(protocol, pending.pop(), timeout)
                    pending.append(data)
            pending.append(encoder.finish())
            await self._write(protocol, b"".join(pending), timeout)
            step, timeout = "after end of data", self.t["data_term"]
            return await replies.read(timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            conn.close()
            raise self._failure(exc, step, timeout) from None
        except BaseException:
            conn.close()  # cancelled mid-DATA: the stream is unusable
            raise

    @staticmethod
    async def _write(protocol: SMTPProtocol, data: bytes, timeout: float) -> None:
        protocol.write(data)
        # A stream transport: asyncio's, or uvloop's, which is no asyncio.WriteTransport
        # subclass but has the same methods.
        transport = cast("asyncio.WriteTransport | None", protocol.transport)
        if (
            transport is not None
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        ):
            return  # all handed to the kernel: nothing to wait for, no timer
        async with asyncio.timeout(timeout):
            await protocol._drain_helper()  # flow control, as StreamWriter.drain

    # -- logoff ---------------------------------------------------------------------------------
    async def logoff(self, flags: LogoffFlags) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in list(self._busy.values()):
            conn.close()
        for conn in idle:
            if conn.alive and not flags & LogoffFlags.HURRY:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await conn.client.quit(timeout=min(_QUIT_TIMEOUT, self.t["mail"]))
            conn.close()
        self.support.modify_status_row(status_string=f"logged off from {self.settings.where}")


async def _chunks(message: OutboundMessage, content: bytes | None) -> AsyncIterator[bytes]:
    if content is None:
        async for chunk in message.iter_content(_CHUNK):
            yield chunk
        return
    view = memoryview(content)
    for i in range(0, len(view), _CHUNK):
        yield bytes(view[i : i + _CHUNK])


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (aiosmtplib wraps a failed handshake), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _size_limit(value: str | None) -> int | None:
    """The SIZE extension's limit, or None (absent, 0 = no limit, or not a number)."""
    if value is None:
        return None
    word = value.strip().split(" ", 1)[0]
    if not word.isdigit() or len(word) > 30:
        return None
    n = int(word)
    return n or None


class SMTPProvider:
    """The SMTP transport provider (entry point ``smtp``)."""

    display_name: ClassVar[str] = "SMTP"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> SMTPSession:
        settings = SMTPSettings.from_config(config)
        try:
            tls_context = await support.run_blocking(_tls_context, settings)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"smtp option 'ca_file' ({settings.ca_file}): {exc}") from exc
        helo = settings.helo_name or await support.run_blocking(socket.getfqdn) or "localhost"
        if not helo.isascii() or re.search(r"[\s\x00-\x1f\x7f]", helo):
            helo = "localhost"
        if settings.tls != "none" and not settings.verify:
            support.logger.warning(
                "smtp transport %r: verify=false, the certificate of %s is NOT checked "
                "(anyone in the path can read and change the mail)",
                support.transport_name,
                settings.where,
            )
        session = SMTPSession(support, settings, tls_context, helo)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=session.describe()
        )
        return session

    async def shutdown(self) -> None:
        return None
