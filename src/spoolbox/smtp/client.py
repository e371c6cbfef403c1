"""The client side of SMTP (RFC 5321) as a pure state machine: commands in, bytes out;
bytes in, events out.

In the manner of h11 (and of :mod:`spoolbox.smtp.server`): no sockets, no asyncio, no
clock.  The I/O layer (:mod:`spoolbox.transports.smtp`) calls a command method
(:meth:`ClientMachine.hello`, :meth:`~ClientMachine.transaction`, ...), writes
:meth:`~ClientMachine.data_to_send`, feeds what it reads to
:meth:`~ClientMachine.receive_data` (``b""`` for the end of the stream) and takes
events from :meth:`~ClientMachine.next_event` until :data:`NEED_DATA`.  Every reply
comes out as :class:`Replied`, paired with the command it answers; the I/O layer decides
what a reply means for the mail (timeouts, results, pooling are its business).

What the machine decides on its own:

* the pairing of replies with commands, in order, and that a reply nobody asked for,
  or a line that is not a reply (:mod:`spoolbox.smtp.replies`), breaks the dialogue
  (:class:`ProtocolError`: hang up);
* the EHLO keywords (:attr:`ClientMachine.extensions`, :attr:`~ClientMachine.auth_mechanisms`);
* STARTTLS (RFC 3207): after ``220`` it says :class:`UpgradeTLS` and takes nothing more
  until :meth:`~ClientMachine.tls_started`; octets that came with the ``220`` (a
  plaintext injection) are a :class:`ProtocolError`; what EHLO said before is forgotten;
* AUTH PLAIN, LOGIN and CRAM-MD5 (RFC 4954): the ``334`` challenges are answered here,
  the final reply comes out as ``Replied(Step.AUTH, ...)``;
* PIPELINING (RFC 2920): when EHLO offered it, :meth:`~ClientMachine.transaction`
  sends ``MAIL``, every ``RCPT`` and ``DATA`` in one go; without it each command waits
  for the reply to the one before, no ``RCPT`` follows a refused ``MAIL``, and ``DATA``
  is sent only if a ``RCPT`` was accepted.  When every ``RCPT`` of a pipelined
  transaction was refused and ``DATA`` got ``354`` all the same, the machine ends the
  empty message at once (RFC 2920 section 3.1) and reports the reply to that dot;
* the DATA stream (:class:`~spoolbox.smtp.data.DataEncoder`) between ``354`` and the
  final dot;
* CHUNKING (RFC 3030): given the whole content, :meth:`~ClientMachine.transaction`
  sends ``BDAT <size> LAST`` and the content (:func:`~spoolbox.smtp.data.message_octets`)
  where it would send DATA: with PIPELINING in the same write as MAIL and the RCPTs
  (one round trip for the whole message), without it only once a RCPT was accepted;
  its reply comes as ``Replied(Step.BDAT, ...)``;
* no control character in a command's arguments (:class:`LocalProtocolError`).
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from spoolbox._quick import quick_init

from .data import DataEncoder, message_octets
from .replies import Reply, ReplyError, ReplyReader, clean_text, reply_text

__all__ = [
    "AUTH_MECHANISMS",
    "NEED_DATA",
    "ClientMachine",
    "ConnectionClosed",
    "Event",
    "LocalProtocolError",
    "ProtocolError",
    "Replied",
    "Step",
    "UpgradeTLS",
]

_INJECTION_RE = re.compile(rb"[\x00-\x1f\x7f]")
_OLDSTYLE_AUTH_RE = re.compile(r"auth=(?P<auth>.*)", re.IGNORECASE)
#: The AUTH mechanisms the machine can answer.
AUTH_MECHANISMS = ("plain", "login", "cram-md5")


class Step(enum.Enum):
    """What a reply answers."""

    GREETING = "the greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "end of data"
    BDAT = "BDAT"  # the one chunk (BDAT ... LAST) with the whole message
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_GREETING: Final = Step.GREETING
_EHLO: Final = Step.EHLO
_HELO: Final = Step.HELO
_STARTTLS: Final = Step.STARTTLS
_AUTH: Final = Step.AUTH
_MAIL: Final = Step.MAIL
_RCPT: Final = Step.RCPT
_DATA: Final = Step.DATA
_END_OF_DATA: Final = Step.END_OF_DATA
_BDAT: Final = Step.BDAT
_RSET: Final = Step.RSET
_NOOP: Final = Step.NOOP
_QUIT: Final = Step.QUIT


class _Need(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: :meth:`ClientMachine.next_event`: no event until more bytes are received.
NEED_DATA = _Need.NEED_DATA


@quick_init
@dataclass(frozen=True, slots=True)
class Replied:
    """The server's reply to ``step``; ``index`` is the recipient's (0-based) for RCPT."""

    step: Step
    reply: Reply
    index: int = -1


@dataclass(frozen=True, slots=True)
class UpgradeTLS:
    """``220`` to STARTTLS: wrap the connection in TLS, then call ``tls_started()``."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The server broke the protocol (``text`` says how): the dialogue is over."""

    text: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the connection with commands unanswered (or after QUIT)."""


Event = Replied | UpgradeTLS | ProtocolError | ConnectionClosed


class LocalProtocolError(ValueError):
    """The machine was asked for something the dialogue does not allow now."""


@dataclass(slots=True)
class _Auth:
    """An AUTH exchange in progress: the answers to the server's ``334`` challenges."""

    mechanism: str
    username: str
    password: str
    round: int = 0

    def answer(self, challenge: str) -> bytes | None:
        """The answer to the next 334 (None: the mechanism has no more to say)."""
        self.round += 1
        if self.mechanism == "login" and self.round == 1:
            return base64.b64encode(self.password.encode())
        if self.mechanism == "cram-md5" and self.round == 1:
            try:
                decoded = base64.b64decode(challenge.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ReplyError(
                    f"CRAM-MD5 challenge is not base64: {clean_text(challenge)[:80]}"
                ) from None
            digest = hmac.new(self.password.encode(), decoded, "md5").hexdigest()
            return base64.b64encode(f"{self.username} {digest}".encode())
        return None


class ClientMachine:
    """One SMTP client connection's dialogue, from the greeting to QUIT."""

    def __init__(self, *, tls: bool = False) -> None:
        """``tls``: the connection is TLS from the first byte (RFC 8314)."""
        self._reader = ReplyReader()
        self._out = bytearray()
        #: commands sent and not answered yet, oldest first: (step, recipient index)
        self._waiting: collections.deque[tuple[Step, int]] = collections.deque([(_GREETING, -1)])
        #: commands of a transaction held back until their turn (no PIPELINING)
        self._held: collections.deque[tuple[Step, int, bytes]] = collections.deque()
        self._extensions: dict[str, str] = {}
        self._auth_mechanisms: tuple[str, ...] = ()
        self._auth: _Auth | None = None
        self._any_accepted = False  # a RCPT of the current transaction was accepted
        self._mail_accepted = False  # the current transaction's MAIL was
        self._encoder: DataEncoder | None = None  # between 354 and the final dot
        self._upgrading = False
        self._tls = tls
        self._eof = False
        self._error: ProtocolError | None = None

    # -- what the machine knows -------------------------------------------------------------
    @property
    def extensions(self) -> Mapping[str, str]:
        """The EHLO keywords (lower case) and their parameters; empty after HELO."""
        return self._extensions

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        """The AUTH mechanisms offered (lower case), in the server's order."""
        return self._auth_mechanisms

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self._extensions

    @property
    def chunking(self) -> bool:
        """Whether EHLO offered CHUNKING (RFC 3030): BDAT instead of DATA."""
        return "chunking" in self._extensions

    @property
    def tls(self) -> bool:
        """Whether :meth:`tls_started` was called (or ``tls=True`` given for implicit TLS)."""
        return self._tls

    @property
    def size_limit(self) -> int | None:
        """The SIZE extension's limit, or None (absent, 0 = no limit, or not a number)."""
        value = self._extensions.get("size")
        if value is None:
            return None
        word = value.strip().split(" ", 1)[0]
        if not word.isdigit() or len(word) > 30:
            return None
        return int(word) or None

    @property
    def awaiting(self) -> int:
        """How many commands have been sent and not answered (or are held back)."""
        return len(self._waiting) + len(self._held)

    @property
    def in_step(self) -> bool:
        """True when every command was answered and the dialogue can go on."""
        return (
            self._error is None
            and not self._eof
            and not self._waiting
            and not self._held
            and self._encoder is None
            and not self._upgrading
            and not self._reader.pending
        )

    # -- bytes --------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything the commands since the last call put on the wire."""
        out = bytes(self._out)
        del self._out[:]
        return out

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the server; ``b""`` when the server closed the connection."""
        if not data:
            self._eof = True
        elif not self._upgrading:
            self._reader.feed(data)
        elif self._error is None:  # octets after 220 to STARTTLS, before the handshake
            self._error = ProtocolError("data from the server before the TLS handshake")

    def next_event(self) -> Event | _Need:
        if self._error is not None:
            return self._error
        if self._upgrading:
            return NEED_DATA
        try:
            reply = self._reader.next_reply()
        except ReplyError as exc:
            return self._broken(str(exc))
        if reply is None:
            return ConnectionClosed() if self._eof else NEED_DATA
        if not self._waiting:
            return self._broken(f"a reply nobody asked for: {reply_text(reply)}")
        step, index = self._waiting.popleft()
        try:
            return self._answered(step, index, reply)
        except ReplyError as exc:
            return self._broken(str(exc))

    def _broken(self, text: str) -> ProtocolError:
        self._error = ProtocolError(text)
        return self._error

    def _answered(self, step: Step, index: int, reply: Reply) -> Event | _Need:
        if step is _EHLO and reply.code == 250:
            self._parse_ehlo(reply)
        elif step is _EHLO or step is _HELO:  # a refused EHLO forgets, as HELO does
            self._forget()
        elif step is _STARTTLS and reply.code == 220:
            if self._reader.pending or self._reader.next_reply() is not None:
                raise ReplyError("data from the server after 220 to STARTTLS")
            self._upgrading = True
            return UpgradeTLS(reply)
        elif step is _AUTH:
            answer = self._auth.answer(reply.text) if self._auth and reply.code == 334 else None
            if answer is not None:
                self._line(_AUTH, -1, answer)
                return self.next_event()
            self._auth = None
        elif step is _MAIL:
            self._mail_accepted = reply.code == 250
            if not self._mail_accepted:
                self._held.clear()  # no RCPT after a refused MAIL
            self._release()
        elif step is _RCPT:
            self._any_accepted = self._any_accepted or reply.code in (250, 251)
            self._release()
        elif step is _DATA and reply.code == 354:
            self._encoder = DataEncoder()
            if self._mail_accepted and not self._any_accepted:  # RFC 2920 section 3.1
                self.end_data()
        return Replied(step, reply, index)

    def _parse_ehlo(self, reply: Reply) -> None:
        extensions: dict[str, str] = {}
        mechanisms: list[str] = []
        for line in reply.lines[1:]:  # the first line is the server's name
            line = line.strip()
            if not line:
                continue
            old = _OLDSTYLE_AUTH_RE.fullmatch(line)  # AUTH=LOGIN PLAIN, from older servers
            if old:
                keyword, params = "auth", old["auth"]
            else:
                keyword, _, params = line.partition(" ")
                keyword = keyword.lower()
            extensions[keyword] = params
            if keyword == "auth":
                mechanisms += [m.lower() for m in params.split() if m.lower() not in mechanisms]
        self._extensions, self._auth_mechanisms = extensions, tuple(mechanisms)

    def _forget(self) -> None:
        self._extensions, self._auth_mechanisms = {}, ()

    def _release(self) -> None:
        """Send the next held command of the transaction, if its turn has come."""
        if not self._held or self._waiting:
            return
        step, index, line = self._held.popleft()
        if (step is _DATA or step is _BDAT) and not self._any_accepted:
            return  # every RCPT refused: no DATA or BDAT (the transaction is over)
        self._waiting.append((step, index))
        self._out += line

    # -- commands -----------------------------------------------------------------------------
    def _line(self, step: Step, index: int, *args: bytes) -> None:
        self._out += self._command(*args)
        self._waiting.append((step, index))

    @staticmethod
    def _command(*args: bytes) -> bytes:
        for arg in args:
            if _INJECTION_RE.search(arg):
                raise LocalProtocolError(f"a control character in a command argument: {arg!r}")
        return b" ".join(args) + b"\r\n"

    def _check_ready(self, what: str) -> None:
        if not self.in_step:
            raise LocalProtocolError(f"{what}: the previous commands are not all answered")

    def hello(self, name: str) -> None:
        """``EHLO name``; after a refusal the I/O layer may try :meth:`helo`."""
        self._check_ready("EHLO")
        self._line(_EHLO, -1, b"EHLO", name.encode("ascii"))

    def helo(self, name: str) -> None:
        self._check_ready("HELO")
        self._line(_HELO, -1, b"HELO", name.encode("ascii"))

    def starttls(self) -> None:
        self._check_ready("STARTTLS")
        if self._tls or "starttls" not in self._extensions:
            raise LocalProtocolError("STARTTLS is not offered (or TLS is already on)")
        self._line(_STARTTLS, -1, b"STARTTLS")

    def tls_started(self) -> None:
        """The TLS handshake is done: the dialogue starts again with EHLO (RFC 3207)."""
        if not self._upgrading:
            raise LocalProtocolError("TLS started without a 220 to STARTTLS")
        self._upgrading, self._tls = False, True
        self._forget()

    def auth(self, mechanism: str, username: str, password: str) -> None:
        """AUTH with one of :data:`AUTH_MECHANISMS`; the final reply comes as ``_AUTH``."""
        self._check_ready("AUTH")
        mechanism = mechanism.lower()
        if mechanism not in AUTH_MECHANISMS:
            raise LocalProtocolError(f"AUTH {mechanism}: not a mechanism we know")
        self._auth = _Auth(mechanism, username, password)
        if mechanism == "plain":
            token = base64.b64encode(f"\0{username}\0{password}".encode())
            self._line(_AUTH, -1, b"AUTH", b"PLAIN", token)
        elif mechanism == "login":
            self._line(_AUTH, -1, b"AUTH", b"LOGIN", base64.b64encode(username.encode()))
        else:
            self._line(_AUTH, -1, b"AUTH", b"CRAM-MD5")

    def transaction(
        self,
        mail: Sequence[bytes],
        rcpts: Sequence[bytes],
        rcpt_options: Sequence[bytes] = (),
        each_rcpt: Sequence[Sequence[bytes]] = (),
        content: bytes | None = None,
    ) -> None:
        """``MAIL FROM:<...> [options]`` (``mail``: the sender path and the options),
        ``RCPT TO:<...> [rcpt_options] [each_rcpt[i]]`` for each of ``rcpts``
        (``each_rcpt``: options of one recipient each, such as ``ORCPT=``; empty or one
        per recipient), then ``DATA``; or, given the whole ``content`` (the server
        must offer CHUNKING), ``BDAT <size> LAST`` with it (see the module docstring
        for what goes out when)."""
        self._check_ready("MAIL")
        if not rcpts:
            raise LocalProtocolError("a transaction needs at least one recipient")
        if content is not None and not self.chunking:
            raise LocalProtocolError("BDAT: the server does not offer CHUNKING")
        if each_rcpt and len(each_rcpt) != len(rcpts):
            raise LocalProtocolError(
                f"{len(each_rcpt)} recipients' options for {len(rcpts)} recipients"
            )
        path, *options = mail
        lines = [(_MAIL, -1, self._command(b"MAIL", b"FROM:<" + path + b">", *options))]
        lines += [
            (
                _RCPT,
                i,
                self._command(
                    b"RCPT", b"TO:<" + r + b">", *rcpt_options, *(each_rcpt[i] if each_rcpt else ())
                ),
            )
            for i, r in enumerate(rcpts)
        ]
        if content is None:
            lines.append((_DATA, -1, self._command(b"DATA")))
        else:
            octets = message_octets(content)
            lines.append((_BDAT, -1, b"BDAT %d LAST\r\n" % len(octets) + octets))
        self._any_accepted = False
        if self.pipelining:
            for step, index, line in lines:
                self._out += line
                self._waiting.append((step, index))
        else:
            self._held.extend(lines)
            self._release()

    def send_data(self, chunk: bytes) -> None:
        """Message content after ``354`` (dot stuffed, CRLF line endings)."""
        if self._encoder is None:
            raise LocalProtocolError("content before 354 to DATA")
        self._out += self._encoder.feed(chunk)

    def end_data(self) -> None:
        """The end of the content: the final dot (its reply comes as ``END_OF_DATA``)."""
        if self._encoder is None:
            raise LocalProtocolError("end of data before 354 to DATA")
        self._out += self._encoder.finish()
        self._encoder = None
        self._waiting.append((_END_OF_DATA, -1))

    def rset(self) -> None:
        self._check_ready("RSET")
        self._line(_RSET, -1, b"RSET")

    def noop(self) -> None:
        self._check_ready("NOOP")
        self._line(_NOOP, -1, b"NOOP")

    def quit(self) -> None:
        self._check_ready("QUIT")
        self._line(_QUIT, -1, b"QUIT")
