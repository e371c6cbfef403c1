"""The server side of SMTP (RFC 5321) as a pure state machine: bytes in, events out.

In the manner of h11: no sockets, no asyncio, no clock.  The I/O layer
(:mod:`spoolbox.ingress.listener`) feeds received bytes with
:meth:`ServerMachine.receive_data`, pulls events with :meth:`ServerMachine.next_event`,
answers the events that need a decision with :meth:`ServerMachine.respond`, and sends
:meth:`ServerMachine.data_to_send`: every reply produced since the last call, in one
bytes object, so one feed costs one write.

Why not aiosmtpd's protocol class (which the listener used before, and which the tests
still use as a peer): in the relay benchmark (smtp-source, one 2 KB message per
connection) a py-spy profile of the event-loop thread put ``SMTP._handle_client`` at
28.8% of the thread's wall time: per-connection ``SMTP.__init__`` 7.4% (it walks the
handler and itself with ``inspect.getmembers``/``dir``/``inspect.signature`` for every
connection), ``SMTP.push`` 10% (one ``socket.send`` per reply line; the EHLO answer
alone is five), ``SMTP._getaddr`` 7.8% (addresses go through
``email._header_value_parser``), plus a ``readuntil`` per line of DATA.  None of that
can be switched off from outside, and what a submission listener needs of SMTP is
small; so this module owns the dialogue and nothing else.

What it decides on its own:

* the sequence rules (``503``), syntax (``501``), unknown commands (``500``; after
  :data:`BOGUS_LIMIT` of them ``502`` and the connection closes), non-ASCII command
  lines (``500``; with ``smtputf8``, UTF-8 is taken in the paths of MAIL and RCPT,
  after ``MAIL FROM:<...> SMTPUTF8`` only: ``553 5.6.7`` otherwise), the command
  line limit (512 octets with CRLF, RFC 5321 section 4.5.3.1.4; MAIL, RCPT (with
  DSN) and AUTH get the room their extensions add; longer is ``500 5.5.2``);
* NOOP, RSET, QUIT, HELP, VRFY (``252``), HELO/EHLO and the EHLO keywords;
* the paths of MAIL and RCPT: angle brackets (may be left out: the first word is then
  the address), ``<>`` is the null sender,
  source routes are refused, ``SIZE=``, ``BODY=`` and ``SMTPUTF8`` checked; with
  ``dsn`` (RFC 3461) ``RET=FULL|HDRS`` and ``ENVID=`` (xtext of 1-100 printable
  characters) on MAIL, ``NOTIFY=`` and ``ORCPT=addr-type;xtext`` on RCPT (``501``
  when malformed); any other parameter ``555``, one given twice ``501``; the SIZE
  limit (``552 5.3.4``) and the recipient limit (``452 4.5.3``);
* the DATA rules: size limit (``552 5.3.4``), text lines longer than
  ``max_line_length`` (``554 5.6.0`` naming the line), NUL bytes and bare CR or LF
  (``554 5.6.0`` naming the line: a bare line break is how SMTP smuggling hides a
  second message from the next hop), dot-unstuffing; the data is read to its end before
  the answer and is not kept once a limit is hit.  The buffer is scanned in bulk
  (``find``/``count``/``replace``), not line by line;
* CHUNKING (RFC 3030, with ``chunking``): ``BDAT <n> [LAST]`` and its ``n`` octets,
  pipelined or not, several chunks a message; each chunk is read to its end before
  its reply (``250`` for one that is not the last; the last one's is the message's;
  a chunk that breaks a rule ends the transaction with the refusal at once),
  also when the command is refused (``503``/``554``: the octets are discarded, RFC
  3030 section 2); the content gets DATA's checks (size, line length, NUL, bare CR or
  LF), no dot-unstuffing; a chunk that does not end the message in CRLF gets one;
  DATA or RCPT after BDAT is ``503``; a BDAT whose size cannot
  be read ends the session (``501``: the octets after it could not be told from
  commands);
* the AUTH PLAIN and LOGIN dialogue (initial response, ``334`` challenges, ``*``,
  base64 errors); whether the credentials are good is the I/O layer's decision.

What it asks (events), answered with :meth:`~ServerMachine.respond`: :class:`MailFrom`,
:class:`RcptTo`, :class:`AuthCredentials`, :class:`MessageData`.  :class:`StartTLS` is
answered with :meth:`~ServerMachine.tls_started`.  :class:`Refused` only reports a
refusal the machine made (for statistics).  While a decision is pending the machine
keeps what it receives but processes none of it: the reply to a pipelined command
never overtakes the reply to the one before.
"""

from __future__ import annotations

import base64
import binascii
import enum
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from spoolbox._quick import quick_init

from . import xtext

__all__ = [
    "BOGUS_LIMIT",
    "NEED_DATA",
    "PAUSED",
    "AuthCredentials",
    "Event",
    "MailFrom",
    "MessageData",
    "RcptTo",
    "Refused",
    "ServerMachine",
    "ServerSettings",
    "StartTLS",
    "State",
]

#: unrecognized commands a client may send before ``502`` and the end of the session
BOGUS_LIMIT = 5

#: RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
COMMAND_LIMIT = 512
#: MAIL may carry SIZE= (RFC 1870: 26 more), BODY= (16 more) and AUTH= (RFC 4954: 500).
MAIL_LIMIT = COMMAND_LIMIT + 26 + 16 + 500
#: With DSN (RFC 3461): MAIL may carry RET=HDRS (9 more) and ENVID= (100 characters,
#: up to 300 as xtext); RCPT NOTIFY= (30) and ORCPT= (500, section 4.2).
DSN_MAIL_LIMIT = MAIL_LIMIT + 9 + 7 + 300
DSN_RCPT_LIMIT = COMMAND_LIMIT + 30 + 7 + 500
#: RFC 4954 section 4: AUTH lines (and their continuations) may be 12288 octets.
AUTH_LIMIT = 12288


class State(enum.Enum):
    """Where the dialogue is."""

    GREETED = "greeted"  # the greeting is sent; no HELO/EHLO yet
    READY = "ready"  # after HELO/EHLO, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message
    BDAT = "bdat"  # reading a BDAT chunk
    AUTH = "auth"  # waiting for the client's answer to a 334 challenge
    CLOSED = "closed"  # after QUIT, 502, 421: nothing more is read


# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_GREETED: Final = State.GREETED
_READY: Final = State.READY
_MAIL: Final = State.MAIL
_RCPT: Final = State.RCPT
_DATA: Final = State.DATA
_BDAT: Final = State.BDAT
_AUTH: Final = State.AUTH
_CLOSED: Final = State.CLOSED


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: :meth:`ServerMachine.next_event`: everything received is processed; feed more
NEED_DATA = _Sentinel("NEED_DATA")
#: :meth:`ServerMachine.next_event`: a decision (or the TLS handshake) is pending
PAUSED = _Sentinel("PAUSED")


@quick_init
@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL passed the machine's checks: accept (``2xx``) or refuse it.  ``address`` is
    ``""`` for the null sender; ``params`` the parameters as given (upper-case keys)."""

    address: str
    params: tuple[tuple[str, str | None], ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT passed the machine's checks: accept (``2xx``) or refuse it.  ``params``
    the parameters as given (upper-case keys): with DSN, ``NOTIFY`` and ``ORCPT``."""

    address: str
    params: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """The client's credentials: answer ``235`` (authenticated) or a refusal."""

    mechanism: str
    login: bytes
    password: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class MessageData:
    """The end of DATA with a clean message (dot-unstuffed, CRLF line ends): answer with
    the final reply.  The transaction ends whatever the answer."""

    content: bytes
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]
    #: The parameters of the accepted MAIL, and of each accepted RCPT (in order; ``()``
    #: when none had any).
    params: tuple[tuple[str, str | None], ...] = ()
    recipient_params: tuple[tuple[tuple[str, str | None], ...], ...] = ()


@dataclass(frozen=True, slots=True)
class StartTLS:
    """``220`` to STARTTLS is queued: send it, run the server side of the TLS handshake,
    then call :meth:`ServerMachine.tls_started` (or close on failure)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The machine refused something itself (the reply is queued); for statistics.
    ``reason`` is one of ``size``, ``line_length``, ``bad_data``, ``no_recipients``,
    ``recipient_limit``."""

    reason: str


Event = MailFrom | RcptTo | AuthCredentials | MessageData | StartTLS | Refused


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the machine needs to know of the listener's configuration."""

    hostname: str
    max_message_size: int
    max_line_length: int = 998
    max_recipients: int = 1000
    ident: str = "spoolbox ESMTP"
    tls_available: bool = False  # STARTTLS may be offered
    auth: bool = False  # AUTH PLAIN/LOGIN may be offered (there are users)
    auth_without_tls: bool = False  # ... also on a connection without TLS
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531): UTF-8 addresses in MAIL and RCPT
    dsn: bool = False  # DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT
    chunking: bool = False  # CHUNKING (RFC 3030): BDAT


_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?")
#: A non-ASCII path in a transaction whose MAIL did not say SMTPUTF8 (RFC 6531 3.4).
_NEEDS_UTF8 = "553 5.6.7 Error: a non-ASCII address needs SMTPUTF8 on MAIL FROM"
_LOGIN_USER = "334 " + base64.b64encode(b"Username:").decode()
_LOGIN_PASSWORD = "334 " + base64.b64encode(b"Password:").decode()
#: ``BDAT <octets> [LAST]`` (RFC 3030 section 4); a size of 18 digits at most.
_BDAT_RE = re.compile(r"([0-9]{1,18})(?:[ \t]+(LAST))?", re.IGNORECASE)
_TOO_LONG = (
    "554 5.6.0 Line {} of the message is longer than {} octets "
    "(RFC 5322 section 2.1.1); message not queued"
)


def _printable(text: str, limit: int = 64) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:limit]


class ServerMachine:
    """One SMTP session, server side.  The greeting is queued on construction."""

    def __init__(self, settings: ServerSettings, *, tls_active: bool = False) -> None:
        self.settings = settings
        self.state = _GREETED
        self.tls_active = tls_active
        self.authenticated = False
        self.helo_name: str | None = None
        self.extended = False  # EHLO (not HELO) was used
        self.utf8 = False  # this transaction's MAIL said SMTPUTF8
        #: grows on every recognized command and every chunk of DATA: the I/O layer's
        #: idle clock restarts when it changes
        self.activity = 0
        self._buf = bytearray()
        self._scan = 0  # the command buffer holds no LF before this offset
        self._overlong = False  # discarding the rest of an overlong line
        self._out: list[bytes] = []
        self._pending: Event | None = None
        self._bogus = 0
        # the transaction
        self._sender = ""
        self._recipients: list[str] = []
        self._mail_params: tuple[tuple[str, str | None], ...] = ()
        self._rcpt_params: list[tuple[tuple[str, str | None], ...]] = []
        self._refused = 0
        # DATA
        self._content = io.BytesIO()  # the message so far, checked and unstuffed
        self._size = 0
        self._lineno = 0
        self._midline = False
        self._problem: tuple[str, str] | None = None
        # BDAT: the transaction's content came in chunks (DATA is refused then); the
        # octets of the chunk being read still to come; whether it is the last; the
        # refusal to send once it is read (None: taken); the start of a line not
        # complete yet; the state to go back to after a refused chunk.
        self._chunking = False
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal: tuple[str, str | None] | None = None
        self._partial = b""
        self._before_chunk = _READY
        # AUTH
        self._auth_mechanism = ""
        self._auth_login: bytes | None = None
        self._reply(f"220 {settings.hostname} {settings.ident}")

    # -- the API of the I/O layer -------------------------------------------------------
    @property
    def pending(self) -> Event | None:
        """The event that waits for :meth:`respond` or :meth:`tls_started`, if any."""
        return self._pending

    @property
    def in_transaction(self) -> bool:
        """A MAIL was accepted and the transaction has not ended (DATA included)."""
        return self.state in (_MAIL, _RCPT, _DATA, _BDAT) or isinstance(self._pending, MessageData)

    @property
    def closing(self) -> bool:
        """The session is over: send what is queued, then close the connection."""
        return self.state is _CLOSED

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; nothing is processed until :meth:`next_event`."""
        if self.state is not _CLOSED:
            self._buf += data

    def data_to_send(self) -> bytes:
        """Every reply queued since the last call, as one bytes object."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def next_event(self) -> Event | _Sentinel:
        """Process received bytes up to the next event; :data:`NEED_DATA` when all is
        processed, :data:`PAUSED` while a decision is pending."""
        while True:
            if self._pending is not None:
                return PAUSED
            if self.state is _CLOSED:
                return NEED_DATA
            if self.state is _DATA:
                event = self._data_step()
            elif self.state is _BDAT:
                event = self._bdat_step()
            else:
                event = self._line_step()
            if event is not None:
                return event

    def respond(self, reply: str) -> None:
        """Answer the pending :class:`MailFrom`, :class:`RcptTo`, :class:`AuthCredentials`
        or :class:`MessageData` with a reply line; a ``2xx`` accepts."""
        event = self._pending
        if event is None or isinstance(event, StartTLS | Refused):
            raise RuntimeError(f"no decision is pending ({event!r})")
        self._pending = None
        ok = reply[:1] == "2"
        if isinstance(event, MailFrom):
            if ok:
                self.state = _MAIL
                self._sender = event.address
                self._mail_params = event.params
                self._recipients = []
                self._rcpt_params = []
                self._refused = 0
        elif isinstance(event, RcptTo):
            if ok:
                self._recipients.append(event.address)
                self._rcpt_params.append(event.params)
                self.state = _RCPT
            else:
                self._refused += 1
        elif isinstance(event, AuthCredentials):
            self.authenticated = reply[:3] == "235"
        else:
            self._reset_transaction()
        self._reply(reply)

    def tls_started(self) -> None:
        """The TLS handshake after :class:`StartTLS` succeeded: the session starts again
        (RFC 3207 section 4.2: nothing learnt before it is kept)."""
        if not isinstance(self._pending, StartTLS):
            raise RuntimeError("no STARTTLS is pending")
        self._pending = None
        self.tls_active = True
        self.authenticated = False
        self.helo_name = None
        self.extended = False
        self._reset_transaction()
        self.state = _GREETED
        # What was received since STARTTLS came under TLS (the clear text after it was
        # dropped then): it is kept.

    def close(self, reply: str | None = None) -> None:
        """End the session (idle timeout, shutdown), with a last reply if given."""
        if self.state is not _CLOSED:
            if reply is not None:
                self._reply(reply)
            self._set_closed()

    # -- internals ------------------------------------------------------------------------
    def _reply(self, text: str) -> None:
        self._out.append(text.encode("ascii", "replace") + b"\r\n")

    def _set_closed(self) -> None:
        self.state = _CLOSED
        self._buf.clear()
        self._content = io.BytesIO()

    def _reset_transaction(self) -> None:
        self.utf8 = False
        self._sender = ""
        self._recipients = []
        self._mail_params = ()
        self._rcpt_params = []
        self._refused = 0
        self._content = io.BytesIO()
        self._problem = None
        self._chunking = False
        self._partial = b""
        if self.state in (_MAIL, _RCPT, _DATA, _BDAT):
            self.state = _READY

    # -- command lines ----------------------------------------------------------------
    def _line_step(self) -> Event | _Sentinel | None:
        buf = self._buf
        end = buf.find(b"\n", self._scan)
        if end < 0:
            if len(buf) > AUTH_LIMIT:  # longer than any command may be: stop keeping it
                self._overlong = True
                buf.clear()
            self._scan = len(buf)
            return NEED_DATA
        line = bytes(buf[:end]).rstrip(b"\r")
        del buf[: end + 1]
        self._scan = 0
        if self._overlong:
            self._overlong = False
            self._reply("500 5.5.2 Line too long (RFC 5321 allows 512 octets)")
            return None
        if self.state is _AUTH:
            return self._auth_answer(line)
        return self._command(line)

    def _command(self, line: bytes) -> Event | None:
        verb_b, _, arg_b = line.partition(b" ")
        verb_b = verb_b.upper()
        if verb_b == b"MAIL":
            limit = DSN_MAIL_LIMIT if self.settings.dsn else MAIL_LIMIT
        elif verb_b == b"RCPT":
            limit = DSN_RCPT_LIMIT if self.settings.dsn else 0
        else:
            limit = AUTH_LIMIT if verb_b == b"AUTH" else 0
        if len(line) + 2 > (limit or COMMAND_LIMIT):
            self._reply("500 5.5.2 Line too long (RFC 5321 allows 512 octets)")
            return None
        if not line:
            self._reply("500 5.5.2 Error: bad syntax")
            return None
        if line.isascii():
            arg = arg_b.decode("ascii")
        elif not self.settings.smtputf8:
            self._reply("500 5.5.2 Error: strict ASCII mode (SMTPUTF8 is not offered)")
            return None
        elif verb_b not in (b"MAIL", b"RCPT"):  # RFC 6531: UTF-8 in the paths only
            self._reply("500 5.5.2 Error: non-ASCII octets outside MAIL and RCPT")
            return None
        else:
            try:
                arg = arg_b.decode("utf-8")
            except UnicodeDecodeError:
                self._reply("500 5.5.2 Error: the command is not UTF-8")
                return None
        verb = verb_b.decode("ascii")
        handler = _COMMANDS.get(verb)
        if handler is None:
            self._unknown(verb)
            return None
        self.activity += 1
        return handler(self, arg.strip(" \t"))

    def _unknown(self, verb: str) -> None:
        self._bogus += 1
        if self._bogus >= BOGUS_LIMIT:
            self._reply("502 5.5.1 Too many unrecognized commands, goodbye.")
            self._set_closed()
            return
        self._reply(f'500 5.5.1 Error: command "{_printable(verb, 20)}" not recognized')

    def _need_helo(self) -> bool:
        if self.helo_name is None:
            self._reply("503 5.5.1 Error: send HELO first")
            return True
        return False

    def _hello(self, arg: str, extended: bool) -> Event | None:
        verb = "EHLO" if extended else "HELO"
        if not arg:
            self._reply(f"501 5.5.4 Syntax: {verb} hostname")
            return None
        self._reset_transaction()
        self.state = _READY
        self.helo_name = arg
        self.extended = extended
        host = self.settings.hostname
        if not extended:
            self._reply(f"250 {host}")
            return None
        s = self.settings
        lines = [
            host,
            f"SIZE {s.max_message_size}",
            "PIPELINING",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
        ]
        if s.smtputf8:
            lines.append("SMTPUTF8")
        if s.dsn:
            lines.append("DSN")
        if s.chunking:
            lines.append("CHUNKING")
        if s.tls_available and not self.tls_active:
            lines.append("STARTTLS")
        if s.auth and (self.tls_active or s.auth_without_tls):
            lines.append("AUTH LOGIN PLAIN")
        last = len(lines) - 1
        self._out.append(
            "".join(
                f"250{' ' if i == last else '-'}{text}\r\n" for i, text in enumerate(lines)
            ).encode("ascii", "replace")
        )
        return None

    def _ehlo(self, arg: str) -> Event | None:
        return self._hello(arg, True)

    def _helo(self, arg: str) -> Event | None:
        return self._hello(arg, False)

    def _path(self, arg: str, keyword: str) -> tuple[str, list[str]] | None:
        """``keyword:<address> [params]`` -> (address, params), or None with a 501 queued
        (a malformed parameter, or one given twice)."""
        n = len(keyword)
        rest = arg[n:].lstrip(" ") if arg[:n].upper() == keyword else ""
        if rest[:1] == "<":
            end = rest.find(">")
            tail = rest[end + 1 :] if end >= 0 else ""
            address = rest[1:end]
        else:
            # Without angle brackets (RFC 5321 wants them; old clients omit them, and
            # Postfix accepts it by default): the address is the first word.
            address, _, tail = rest.partition(" ")
            tail = " " + tail if tail else ""
            end = len(address) if address and "<" not in address and ">" not in address else -1
        params = tail.split(" ")
        if end < 0 or (tail and tail[0] != " ") or (params[1:] and not self.extended):
            verb = "MAIL FROM" if keyword == "FROM:" else "RCPT TO"
            extra = " [SP <parameters>]" if self.extended else ""
            self._reply(f"501 5.5.4 Syntax: {verb}:<address>{extra}")
            return None
        if address[:1] == "@" and ":" in address:
            self._reply("501 5.5.4 Source routes are not accepted (RFC 5321 section 4.1.2)")
            return None
        params = [p for p in params if p]
        seen: set[str] = set()
        for p in params:
            if _PARAM.fullmatch(p) is None:
                self._reply(f"501 5.5.4 Syntax error in parameter {_printable(p, 40)}")
                return None
            key = p.partition("=")[0].upper()
            if key in seen:
                verb = "MAIL" if keyword == "FROM:" else "RCPT"
                self._reply(f"501 5.5.4 Duplicate {verb} parameter {_printable(key, 20)}")
                return None
            seen.add(key)
        return address, params

    def _mail(self, arg: str) -> Event | None:
        if self._need_helo():
            return None
        if self.state is not _READY:
            self._reply("503 5.5.1 Error: nested MAIL command")
            return None
        parsed = self._path(arg, "FROM:")
        if parsed is None:
            return None
        address, raw = parsed
        params: list[tuple[str, str | None]] = []
        utf8 = False
        dsn = self.settings.dsn
        for p in raw:
            key, eq, value = p.partition("=")
            key = key.upper()
            if key == "RET" and dsn:
                if value.upper() not in ("FULL", "HDRS"):
                    self._reply("501 5.5.4 RET must be FULL or HDRS")
                    return None
                value = value.upper()
            elif key == "ENVID" and dsn:
                if _envelope_id(value) is None:
                    self._reply(
                        "501 5.5.4 ENVID must be xtext of 1 to 100 printable ASCII characters"
                    )
                    return None
            elif key == "SIZE":
                if not value.isdigit():
                    self._reply("501 5.5.4 Syntax: SIZE=<octets>")
                    return None
                limit = self.settings.max_message_size
                if int(value) > limit:
                    self._reply(
                        f"552 5.3.4 Message size {value} exceeds the limit of {limit} octets"
                    )
                    return Refused("size")
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    self._reply("501 5.5.4 BODY can only be one of 7BIT, 8BITMIME")
                    return None
            elif key == "AUTH" and self.settings.auth and eq:
                pass  # RFC 4954 section 5: accepted where AUTH is offered, not used
            elif key == "SMTPUTF8" and self.settings.smtputf8 and not eq:
                utf8 = True
            else:
                self._reply(f"555 5.5.4 MAIL parameter {_printable(key, 20)} not supported")
                return None
            params.append((key, value if eq else None))
        if not (utf8 or address.isascii()):
            self._reply(_NEEDS_UTF8)
            return None
        self.utf8 = utf8
        event = MailFrom(address, tuple(params))
        self._pending = event
        return event

    def _rcpt(self, arg: str) -> Event | None:
        if self._need_helo():
            return None
        if self.state not in (_MAIL, _RCPT):
            self._reply("503 5.5.1 Error: need MAIL command")
            return None
        if self._chunking:
            self._reply("503 5.5.1 Error: RCPT after BDAT")
            return None
        parsed = self._path(arg, "TO:")
        if parsed is None:
            return None
        address, raw = parsed
        params: list[tuple[str, str | None]] = []
        for p in raw:
            key, eq, value = p.partition("=")
            key = key.upper()
            if key == "NOTIFY" and self.settings.dsn:
                if not _notify_ok(value):
                    self._reply(
                        "501 5.5.4 NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY "
                        "joined by commas"
                    )
                    return None
                value = value.upper()
            elif key == "ORCPT" and self.settings.dsn:
                if not _orcpt_ok(value):
                    self._reply(
                        "501 5.5.4 ORCPT must be addr-type;xtext, at most 500 characters, "
                        "no control character"
                    )
                    return None
            else:
                self._reply(f"555 5.5.4 RCPT parameter {_printable(key, 20)} not supported")
                return None
            params.append((key, value if eq else None))
        if not (self.utf8 or address.isascii()):
            self._reply(_NEEDS_UTF8)
            return None
        limit = self.settings.max_recipients
        if len(self._recipients) >= limit:
            self._reply(f"452 4.5.3 Too many recipients (at most {limit} per message)")
            return Refused("recipient_limit")
        event = RcptTo(address, tuple(params))
        self._pending = event
        return event

    def _no_content_now(self) -> tuple[str, str | None] | None:
        """Why DATA or BDAT cannot bring a message now (the reply, and the reason a
        :class:`Refused` reports, if any), or None: no HELO, no MAIL, no recipient."""
        if self.helo_name is None:
            return ("503 5.5.1 Error: send HELO first", None)
        if self.state is not _RCPT:
            if self.state is _MAIL and self._refused:
                return ("554 5.5.1 No valid recipients", "no_recipients")
            return ("503 5.5.1 Error: need RCPT command", None)
        return None

    def _refuse(self, refusal: tuple[str, str | None]) -> Event | None:
        self._reply(refusal[0])
        return Refused(refusal[1]) if refusal[1] is not None else None

    def _start_content(self) -> None:
        """A message's content starts (DATA, or the first BDAT chunk)."""
        self._content = io.BytesIO()
        self._size = 0
        self._lineno = 0
        self._midline = False
        self._partial = b""
        self._problem = None

    def _data(self, arg: str) -> Event | None:
        refusal = self._no_content_now()
        if refusal is not None:
            return self._refuse(refusal)
        if self._chunking:
            self._reply("503 5.5.1 Error: DATA after BDAT")
            return None
        if arg:
            self._reply("501 5.5.4 Syntax: DATA")
            return None
        self.state = _DATA
        self._start_content()
        self._reply("354 End data with <CR><LF>.<CR><LF>")
        return None

    def _bdat(self, arg: str) -> Event | None:
        if not self.settings.chunking:
            self._unknown("BDAT")
            return None
        match = _BDAT_RE.fullmatch(arg)
        if match is None:
            # The octets that follow cannot be told from commands: the session ends.
            self._reply("501 5.5.4 Syntax: BDAT octets [LAST]")
            self._set_closed()
            return None
        self._chunk_left = int(match[1])
        self._chunk_last = match[2] is not None
        self._before_chunk = self.state
        # Refused: sent once the chunk is read (and dropped), RFC 3030 section 2.
        self._chunk_refusal = self._no_content_now()
        if self._chunk_refusal is None and not self._chunking:  # the message's first
            self._chunking = True
            self._start_content()
        self.state = _BDAT
        return None

    def _rset(self, arg: str) -> Event | None:
        if arg:
            self._reply("501 5.5.4 Syntax: RSET")
            return None
        self._reset_transaction()
        self._reply("250 2.0.0 OK")
        return None

    def _noop(self, arg: str) -> Event | None:
        self._reply("250 2.0.0 OK")
        return None

    def _quit(self, arg: str) -> Event | None:
        if arg:
            self._reply("501 5.5.4 Syntax: QUIT")
            return None
        self._reply("221 2.0.0 Bye")
        self._set_closed()
        return None

    def _vrfy(self, arg: str) -> Event | None:
        if not arg:
            self._reply("501 5.5.4 Syntax: VRFY <address>")
        else:
            self._reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
        return None

    def _help(self, arg: str) -> Event | None:
        names = sorted(
            name
            for name in _COMMANDS
            if (name != "STARTTLS" or self.settings.tls_available)
            and (name != "AUTH" or self.settings.auth)
            and (name != "BDAT" or self.settings.chunking)
        )
        self._reply("214 2.0.0 Supported commands: " + " ".join(names))
        return None

    def _starttls(self, arg: str) -> Event | None:
        if not self.settings.tls_available:
            self._reply("454 4.7.0 TLS not available")
            return None
        if self.tls_active:
            self._reply("503 5.5.1 Error: TLS already active")
            return None
        if arg:
            self._reply("501 5.5.4 Syntax: STARTTLS")
            return None
        self._reply("220 2.0.0 Ready to start TLS")
        # Whatever follows STARTTLS in the same read was sent in clear text before the
        # handshake: it is dropped, not run as if it came under TLS (CVE-2011-0411).
        self._buf.clear()
        self._scan = 0
        event = StartTLS()
        self._pending = event
        return event

    # -- AUTH -------------------------------------------------------------------------
    def _auth(self, arg: str) -> Event | None:
        if self.helo_name is None:
            self._reply("503 5.5.1 Error: send EHLO first")
            return None
        if not self.extended:
            self._reply('500 5.5.1 Error: command "AUTH" not recognized')
            return None
        s = self.settings
        if not (self.tls_active or s.auth_without_tls):
            self._reply("538 5.7.11 Encryption required for requested authentication mechanism")
            return None
        if not s.auth:
            self._reply("502 5.5.1 AUTH is not available here")
            return None
        if self.authenticated:
            self._reply("503 5.5.1 Already authenticated")
            return None
        if self.state is not _READY:
            self._reply("503 5.5.1 AUTH is not allowed during a mail transaction")
            return None
        args = arg.split()
        if not args or len(args) > 2:
            self._reply("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return None
        mechanism = args[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            self._reply("504 5.5.4 Unrecognized authentication type")
            return None
        self._auth_mechanism = mechanism
        self._auth_login = None
        if len(args) == 1:
            self.state = _AUTH
            self._reply("334 " if mechanism == "PLAIN" else _LOGIN_USER)
            return None
        return self._auth_value(args[1].encode("ascii"))

    def _auth_answer(self, line: bytes) -> Event | None:
        self.state = _READY
        if len(line) + 2 > AUTH_LIMIT:
            self._reply("500 5.5.2 Line too long (RFC 5321 allows 512 octets)")
            return None
        if line.strip() == b"*":
            self._reply("501 5.7.0 Auth aborted")
            return None
        return self._auth_value(line.strip())

    def _auth_value(self, blob: bytes) -> Event | None:
        if blob == b"=":  # RFC 4954 section 4: an empty initial response
            blob = b""
        try:
            value = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            self.state = _READY
            self._reply("501 5.5.2 Can't decode base64")
            return None
        if self._auth_mechanism == "LOGIN" and self._auth_login is None:
            self._auth_login = value
            self.state = _AUTH
            self._reply(_LOGIN_PASSWORD)
            return None
        if self._auth_mechanism == "LOGIN":
            assert self._auth_login is not None
            event = AuthCredentials("LOGIN", self._auth_login, value)
        else:
            parts = value.split(b"\x00")
            if len(parts) != 3:
                self._reply("501 5.5.2 Can't split auth value")
                return None
            event = AuthCredentials("PLAIN", parts[1], parts[2])
        self._auth_login = None
        self.state = _READY
        self._pending = event
        return event

    # -- DATA -------------------------------------------------------------------------
    def _data_step(self) -> Event | _Sentinel | None:
        buf = self._buf
        if not buf:
            return NEED_DATA
        self.activity += 1
        if self._midline:  # the rest of an overlong line, never the end marker
            i = buf.find(b"\r\n")
            if i < 0:
                n = len(buf) - (1 if buf[-1] == 13 else 0)  # a CR may start the CRLF
                self._size += n
                del buf[:n]
                return NEED_DATA
            self._size += i + 2
            del buf[: i + 2]
            self._midline = False
            return None
        if buf.startswith(b".\r\n"):
            del buf[:3]
            return self._end_of_data()
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            block = bytes(buf[: end + 2])
            del buf[: end + 5]
            self._take(block)
            return self._end_of_data()
        last = buf.rfind(b"\r\n")
        if last >= 0:
            block = bytes(buf[: last + 2])
            del buf[: last + 2]
            self._take(block)
        # What is left is the start of a line (and maybe of the end marker).  A text
        # line of max_line_length may have a stuffed dot and the CR of its CRLF here.
        if len(buf) > self.settings.max_line_length + 2:
            self._lineno += 1
            self._fail("line_length", _TOO_LONG.format(self._lineno, self.settings.max_line_length))
            self._midline = True
            n = len(buf) - (1 if buf[-1] == 13 else 0)
            self._size += n
            del buf[:n]
        return NEED_DATA

    # -- BDAT ---------------------------------------------------------------------------
    def _bdat_step(self) -> Event | _Sentinel | None:
        """Read the chunk's octets; at its end, its reply (or the message's event)."""
        buf = self._buf
        if self._chunk_left:
            if not buf:
                return NEED_DATA
            n = min(len(buf), self._chunk_left)
            piece = bytes(buf[:n])
            del buf[:n]
            self._chunk_left -= n
            self.activity += 1
            if self._chunk_refusal is None:
                self._take_piece(piece)
            if self._chunk_left:
                return NEED_DATA
        refusal = self._chunk_refusal
        if refusal is not None:  # read and discarded; now the refusal (RFC 3030 section 2)
            self._chunk_refusal = None
            self.state = self._before_chunk
            return self._refuse(refusal)
        if self._problem is not None:  # refused at once: the chunks after it find no
            return self._end_of_data()  # transaction (503), their octets discarded
        if not self._chunk_last:
            self.state = _RCPT
            self._reply(f"250 2.0.0 {self._size + len(self._partial)} octets received")
            return None
        if self._partial:  # the message did not end with CRLF: it does now
            self._partial, rest = b"", self._partial
            self._take_piece(rest + b"\r\n")
        return self._end_of_data()

    def _take_piece(self, piece: bytes) -> None:
        """Check and keep the whole lines of a chunk's octets; the start of a line that
        goes on in the next piece is kept back (a line too long for that is refused)."""
        data = self._partial + piece if self._partial else piece
        last = data.rfind(b"\r\n")
        if last >= 0:
            self._take(data[: last + 2], stuffed=False)
            data = data[last + 2 :]
        if (
            data
            and self._problem is None
            and (b"\n" in data or b"\x00" in data or b"\r" in data[:-1])
        ):  # a bare LF or CR, or a NUL, in the line to come: refused now, by its rules
            self._take(data + b"\r\n", stuffed=False)
            data = b""
        elif len(data) > self.settings.max_line_length + 1:  # (+1: the CR of its CRLF)
            if self._problem is None:
                self._lineno += 1
                self._fail(
                    "line_length", _TOO_LONG.format(self._lineno, self.settings.max_line_length)
                )
            self._size += len(data)
            data = b""
        self._partial = data

    def _fail(self, reason: str, reply: str) -> None:
        if self._problem is None:
            self._problem = (reason, reply)
            self._content = io.BytesIO()  # discarded at once: no memory held for a refused message

    def _take(self, block: bytes, *, stuffed: bool = True) -> None:
        """Check and keep a run of whole lines (CRLF-terminated, starting a line);
        ``stuffed``: of the DATA stream (a line's leading dot is taken off), else of
        a BDAT chunk (kept as it is)."""
        s = self.settings
        lines = block.count(b"\r\n")
        first = self._lineno + 1
        size_before = self._size
        self._lineno += lines
        self._size += len(block)
        if self._problem is not None:
            return
        if (
            self._size <= s.max_message_size
            and b"\x00" not in block
            and block.count(b"\r") == lines
            and block.count(b"\n") == lines
        ):
            text = _unstuff(block) if stuffed else block
            if len(text) <= s.max_line_length + 2 or (
                max(map(len, text.split(b"\r\n"))) <= s.max_line_length
            ):
                self._content.write(text)
                return
        self._take_slowly(block, first, size_before, stuffed)

    def _take_slowly(self, block: bytes, lineno: int, size: int, stuffed: bool) -> None:
        """Line by line, to name the first offending line as the rules order them."""
        s = self.settings
        kept: list[bytes] = []
        for raw in block.split(b"\r\n")[:-1]:
            size += len(raw) + 2
            if size > s.max_message_size:
                self._fail(
                    "size", f"552 5.3.4 Message too big: the limit is {s.max_message_size} octets"
                )
                return
            text = raw[1:] if stuffed and raw[:1] == b"." else raw
            if len(text) > s.max_line_length:
                self._fail("line_length", _TOO_LONG.format(lineno, s.max_line_length))
                return
            if b"\x00" in text:
                self._fail(
                    "bad_data", f"554 5.6.0 Line {lineno} of the message contains a NUL byte"
                )
                return
            if b"\r" in text or b"\n" in text:
                self._fail(
                    "bad_data",
                    f"554 5.6.0 Line {lineno} of the message contains a bare CR or LF: "
                    "end every line with CRLF",
                )
                return
            kept.append(text)
            lineno += 1
        kept.append(b"")
        self._content.write(b"\r\n".join(kept))

    def _end_of_data(self) -> Event:
        if self._problem is not None:
            reason, reply = self._problem
            self._reset_transaction()
            self._reply(reply)
            return Refused(reason)
        # One buffer, handed over without a copy: the message is held once (a list of
        # chunks joined here would be held twice).
        content = self._content.getvalue()
        self._content = io.BytesIO()
        event = MessageData(
            content,
            self._sender,
            tuple(self._recipients),
            self._mail_params,
            tuple(self._rcpt_params) if any(self._rcpt_params) else (),
        )
        self._pending = event
        return event


def _unstuff(block: bytes) -> bytes:
    """Remove the first dot of every line that starts with one (RFC 5321 4.5.2)."""
    if block[:1] == b".":
        block = block[1:]
    if b"\r\n." in block:
        block = block.replace(b"\r\n.", b"\r\n")
    return block


_COMMANDS: dict[str, Callable[[ServerMachine, str], Event | None]] = {
    "AUTH": ServerMachine._auth,
    "BDAT": ServerMachine._bdat,
    "DATA": ServerMachine._data,
    "EHLO": ServerMachine._ehlo,
    "HELO": ServerMachine._helo,
    "HELP": ServerMachine._help,
    "MAIL": ServerMachine._mail,
    "NOOP": ServerMachine._noop,
    "QUIT": ServerMachine._quit,
    "RCPT": ServerMachine._rcpt,
    "RSET": ServerMachine._rset,
    "STARTTLS": ServerMachine._starttls,
    "VRFY": ServerMachine._vrfy,
}


_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _envelope_id(value: str) -> str | None:
    """ENVID's text, if ``value`` is xtext of 1 to 100 printable ASCII characters."""
    text = xtext.decode(value)
    if text is None or not 1 <= len(text) <= 100 or not all("!" <= c <= "~" for c in text):
        return None
    return text


def _notify_ok(value: str) -> bool:
    """``NEVER``, or a comma list of SUCCESS, FAILURE, DELAY (each once)."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return True
    return all(w in _NOTIFY_WORDS for w in words) and len(set(words)) == len(words)


def _orcpt_ok(value: str) -> bool:
    """``addr-type;xtext`` of at most 500 characters (RFC 3461 section 4.2), the xtext
    standing for no control character (it would end up in reports' header fields)."""
    kind, sep, rest = value.partition(";")
    decoded = xtext.decode(rest) if sep and rest else None
    return (
        decoded is not None
        and len(value) <= 500
        and _ADDR_TYPE.fullmatch(kind) is not None
        and _CONTROL.search(decoded) is None
    )
