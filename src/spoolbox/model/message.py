"""Messages as the spooler sees them: what a client submits, and what the store keeps.

* :class:`NewMessage` is a submission: envelope (sender, typed recipients), RFC 5322
  content as bytes, and the client's requests (priority, send-at time, which reports
  it wants).  It validates itself on construction, so bad input fails at the door
  with a message that says what was wrong, before anything is written.
* :class:`MessageInfo` and :class:`RecipientRecord` are the store's view of a queued
  message and of each recipient; built by the store backends with ``from_row`` style
  constructors, never shaped by a database schema.

Content is opaque bytes here; it is parsed lazily (and only when a transport or a
report needs it) with the standard :mod:`email` package.
"""

from __future__ import annotations

import enum
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Final

from spoolbox._quick import quick_init

from .address import Address, AddressError
from .flags import Priority
from .states import MessageState, RecipientState

__all__ = [
    "MAX_RECIPIENTS",
    "MessageError",
    "MessageInfo",
    "MessageSummary",
    "NewMessage",
    "Notify",
    "RecipientRecord",
    "header_text",
    "new_message_id",
    "subject_of",
]

#: A submission with more recipients than this is refused (Postfix's default is 1000
#: per SMTP transaction; a message in the store may carry many more).
MAX_RECIPIENTS = 100_000
#: A byte that ``bytes.strip`` keeps: content without one is blank.
_NOT_BLANK = re.compile(rb"[^ \t\n\r\x0b\x0c]")
#: RFC 3461's ORCPT as kept (its xtext decoded): an address type (an atom), ";", the
#: address as the first system had it; no control character, at most 500 characters.
_ORIGINAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+;[^\x00-\x1f\x7f]+")
MAX_ORIGINAL = 500


class MessageError(ValueError):
    """A submission is malformed; the text says which part and why."""


class Notify(enum.IntFlag):
    """Which reports the sender asked for (RFC 3461 NOTIFY). ``NEVER`` is 0."""

    NEVER = 0
    SUCCESS = 1
    FAILURE = 2
    DELAY = 4

    @classmethod
    def from_text(cls, text: str) -> Notify:
        """``never``, or a comma list of ``success``, ``failure``, ``delay`` (as
        sendmail's ``-N`` and SMTP's ``NOTIFY=`` write it, any case); ValueError
        saying what was expected."""
        words = [w.strip().lower() for w in text.split(",") if w.strip()]
        expected = "never, or a comma list of success, failure, delay"
        if words == ["never"]:
            return cls.NEVER
        if not words or any(w not in ("success", "failure", "delay") for w in words):
            raise ValueError(f"{text!r}: expected {expected}")
        result = cls.NEVER
        for w in words:
            result |= cls[w.upper()]
        return result


def new_message_id() -> str:
    """A unique, time-ordered id: 13 hex digits of microseconds, then 10 random ones."""
    return f"{time.time_ns() // 1000:013x}{os.urandom(5).hex()}"


#: What a message id may have besides letters and digits, for str.translate to drop.
_ID_PUNCTUATION: Final = str.maketrans("", "", "-_.")


def _check_id(value: str) -> None:
    rest = value.translate(_ID_PUNCTUATION)  # a letter or digit each: isalnum, at C speed
    if not (1 <= len(value) <= 64) or (rest and not rest.isalnum()):
        raise MessageError(f"message id {value!r} is invalid: use 1 to 64 letters, digits or '-_.'")


@quick_init
@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to submit. Construction validates it; nothing invalid reaches a store."""

    sender: Address | None
    recipients: tuple[Address, ...]
    content: bytes
    priority: Priority = Priority.NORMAL
    send_at: float | None = None  # PR_DEFERRED_DELIVERY_TIME, epoch seconds
    notify: Notify = Notify.FAILURE
    lifetime: float | None = None  # seconds in the queue before giving up; None = policy
    is_report: bool = False  # a delivery report: never reported on itself
    envelope_id: str | None = None  # RFC 3461 ENVID, echoed in reports
    # RFC 3461 RET: True FULL (the whole message in a report), False HDRS (its header
    # only), None: the report kind's default
    return_content: bool | None = None
    id: str = field(default_factory=new_message_id)
    # RFC 3461 ORCPT: a recipient's address as the system the message came from first
    # had it ("rfc822;bob@example.org"), passed on to a next hop that offers DSN and
    # named in reports (Original-Recipient).  Given as a mapping or (recipient, text)
    # pairs; kept as pairs in recipient order.
    original_recipients: tuple[tuple[Address, str], ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        _check_id(self.id)
        if self.sender is not None and not isinstance(self.sender, Address):
            raise MessageError(f"sender must be an Address or None, not {self.sender!r}")
        rcpts = tuple(self.recipients)
        if not rcpts:
            raise MessageError("a message needs at least one recipient")
        for i, r in enumerate(rcpts):
            if not isinstance(r, Address):
                raise MessageError(f"recipient #{i} is {r!r}, not an Address")
        if len(rcpts) > MAX_RECIPIENTS:
            raise MessageError(
                f"{len(rcpts)} recipients; a message may have at most {MAX_RECIPIENTS}"
            )
        # Duplicates are dropped, keeping the first (MAPI's ExpandRecips does the same).
        unique = tuple(dict.fromkeys(rcpts))
        object.__setattr__(self, "recipients", unique)
        if not isinstance(self.content, bytes | bytearray | memoryview):
            raise MessageError(f"content must be bytes, not {type(self.content).__name__}")
        content = bytes(self.content)
        object.__setattr__(self, "content", content)
        if _NOT_BLANK.search(content) is None:  # (content.strip() would copy it)
            raise MessageError("content is empty: a message needs at least a header")
        if b"\x00" in content:
            nul = content.index(b"\x00")
            raise MessageError(f"content has a NUL byte at offset {nul}")
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "notify", Notify(self.notify))
        if self.lifetime is not None and self.lifetime <= 0:
            raise MessageError(f"lifetime must be positive, not {self.lifetime}")
        if self.envelope_id is not None and (
            len(self.envelope_id) > 100
            or any(ord(c) < 33 or ord(c) > 126 for c in self.envelope_id)
        ):
            raise MessageError(f"envelope id {self.envelope_id!r} must be 1-100 printable ASCII")
        if self.return_content is not None and not isinstance(self.return_content, bool):
            raise MessageError(
                "return_content must be True (RET=FULL), False (RET=HDRS) or None, "
                f"not {self.return_content!r}"
            )
        if self.original_recipients:
            object.__setattr__(
                self, "original_recipients", _originals(self.original_recipients, unique)
            )

    @property
    def size(self) -> int:
        return len(self.content)

    def original_of(self, recipient: Address) -> str | None:
        """``recipient``'s ORCPT (RFC 3461), or None when none was given."""
        for address, original in self.original_recipients:
            if address == recipient:
                return original
        return None

    def originals(self) -> list[str | None]:
        """Each recipient's ORCPT in recipient order (None where none was given)."""
        given = dict(self.original_recipients)
        return [given.get(r) for r in self.recipients]

    @classmethod
    def from_bytes(
        cls,
        content: bytes,
        *,
        sender: Address | str | None = None,
        recipients: Iterable[Address | str] | None = None,
        default_type: str = "SMTP",
        **kwargs: object,
    ) -> NewMessage:
        """Build from RFC 5322 bytes.

        Without ``recipients`` the To, Cc and Bcc headers are used (as ``sendmail -t``
        does); without ``sender`` the From header.  Bare addresses get
        ``default_type``.  Bcc stays in the content as given: strip it before
        calling if it must not be transmitted.
        """
        # The header section alone: the parser decodes and copies all it is given.
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(
            content[: _header_end(content)]
        )
        try:
            if recipients is None:
                found = getaddresses(
                    [str(v) for h in ("to", "cc", "bcc") for v in headers.get_all(h, [])]
                )
                rcpts = [Address.parse(a, default_type=default_type) for _, a in found if a]
            else:
                rcpts = [
                    r if isinstance(r, Address) else Address.parse(r, default_type=default_type)
                    for r in recipients
                ]
            snd: Address | None
            if sender is None:
                froms = getaddresses([str(v) for v in headers.get_all("from", [])])
                snd = (
                    Address.parse(froms[0][1], default_type=default_type)
                    if froms and froms[0][1]
                    else None
                )
            elif isinstance(sender, str):
                snd = Address.parse(sender, default_type=default_type) if sender else None
            else:
                snd = sender
        except AddressError as exc:
            raise MessageError(f"bad address in message: {exc}") from exc
        return cls(sender=snd, recipients=tuple(rcpts), content=content, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_email(
        cls,
        message: EmailMessage,
        *,
        sender: Address | str | None = None,
        recipients: Iterable[Address | str] | None = None,
        **kwargs: object,
    ) -> NewMessage:
        """Build from an :class:`email.message.EmailMessage` (serialised with SMTP policy)."""
        data = message.as_bytes(policy=policy.SMTP)
        return cls.from_bytes(data, sender=sender, recipients=recipients, **kwargs)  # type: ignore[arg-type]


def check_original(value: object) -> str:
    """``value`` if it is an ORCPT as kept (``type;address``, its xtext decoded), else
    MessageError saying what is wrong."""
    if not isinstance(value, str):
        raise MessageError(f"an original recipient must be text, not {value!r}")
    if len(value) > MAX_ORIGINAL:
        raise MessageError(
            f"original recipient {value[:40]!r}... is {len(value)} characters "
            f"(at most {MAX_ORIGINAL})"
        )
    if _ORIGINAL_RE.fullmatch(value) is None:
        raise MessageError(
            f"original recipient {value!r} must be an address type, ';' and the address "
            "(e.g. 'rfc822;bob@example.org'), without control characters"
        )
    return value


def with_originals(
    targets: Iterable[Address], given: Address, original: str | None
) -> list[tuple[Address, str | None]]:
    """``targets`` (what the recipient ``given`` stands for at this host), each with
    its original recipient (RFC 3461 ORCPT): ``original`` when the client gave one,
    else the address as given where a target is another address (``root@localhost``
    for ``MAILDIR:root``), as Postfix keeps the recipient before alias expansion."""
    out: list[tuple[Address, str | None]] = []
    for target in targets:
        kept = original
        if kept is None and target != given and given.type == "SMTP":
            kept = f"rfc822;{given.value}"
        out.append((target, kept))
    return out


def _originals(
    given: Mapping[Address, str] | Iterable[tuple[Address, str]],
    recipients: tuple[Address, ...],
) -> tuple[tuple[Address, str], ...]:
    """``NewMessage.original_recipients`` checked and in recipient order; the first of
    two for one recipient wins (as the first of two equal recipients does)."""
    try:
        pairs = list(given.items() if isinstance(given, Mapping) else given)
        found: dict[Address, str] = {}
        for address, original in pairs:
            if not isinstance(address, Address) or address not in recipients:
                raise MessageError(
                    f"original recipient {original!r} is given for {address!r}, "
                    "which is not a recipient of the message"
                )
            found.setdefault(address, check_original(original))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(
            "original_recipients must map recipients to texts like 'rfc822;bob@example.org'"
        ) from exc
    return tuple((r, found[r]) for r in recipients if r in found)


@quick_init
@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A queued message's envelope, as a store keeps it."""

    id: str
    sender: Address | None
    priority: Priority
    submitted_at: float
    send_at: float | None
    expires_at: float
    notify: Notify
    is_report: bool
    envelope_id: str | None
    # RFC 3461 RET (NewMessage.return_content); keyword-only, so that the fields after
    # it keep their places and a MessageInfo built before it still builds.
    return_content: bool | None = field(default=None, kw_only=True)
    size: int
    subject: str
    held: bool = False

    def describe(self) -> str:
        return f"message {self.id} ({self.size} bytes, {self.subject!r})"


@quick_init
@dataclass(frozen=True, slots=True)
class RecipientRecord:
    """One recipient of a queued message and where it stands."""

    message_id: str
    index: int
    address: Address
    state: RecipientState
    route: str | None = None  # the transport responsible for it now (PR_RESPONSIBILITY)
    refused_by: tuple[str, ...] = ()  # transports that answered not-me
    attempts: int = 0
    retry_at: float = 0.0  # not before this time (backoff); 0 = at once
    status: str | None = None  # last enhanced status code (RFC 3463), e.g. "4.4.1"
    diagnostic: str | None = None  # last diagnostic text from the transport
    updated_at: float = 0.0
    first_failed_at: float | None = None  # first temporary failure (for delay reports)
    delay_warned: bool = False  # a delay report went out for it (at most one)
    original: str | None = None  # RFC 3461 ORCPT as given ("rfc822;bob@example.org")


@quick_init
@dataclass(frozen=True, slots=True)
class MessageSummary:
    """One line of a queue listing."""

    info: MessageInfo
    state: MessageState
    recipients: Sequence[RecipientRecord]


def subject_of(content: bytes) -> str:
    """The decoded Subject header, or '' (used for listings; never raises).

    A cheap scan of the header block, not a parse of the message: it runs for every
    submission.
    """
    return header_text(content, b"subject")


def header_text(content: bytes, name: bytes) -> str:
    """The first ``name`` header of the header block (``name`` in lower case, without
    the colon), unfolded, its RFC 2047 words decoded (raw 8-bit read as UTF-8 with
    replacement characters), its white space runs made one space, at most 200
    characters; '' when there is none.  Never raises.

    A scan of the header block's lines, not a parse of the message: it runs for every
    submission and every inbound message (``email``'s parser with its default policy
    took 140 µs a message for the From: header, half the inbound path's time).
    """
    try:
        prefix = name + b":"
        size = len(prefix)
        value: bytes | None = None
        for line in _header_lines(content):
            if value is not None:
                if line[:1] in (b" ", b"\t"):
                    value += b" " + line.strip()
                    continue
                break
            if line[:size].lower() == prefix:
                value = line[size:].strip()
        if not value:
            return ""
        if b"=?" not in value:  # no encoded words (RFC 2047): nothing to decode
            return " ".join(value.decode("utf-8", "replace").split())[:200]
        text = str(make_header(decode_header(value.decode("utf-8", "replace"))))
        return " ".join(text.split())[:200]
    except Exception:
        return ""


def _header_lines(content: bytes) -> Iterator[bytes]:
    """The lines of the header block, without their line ends, one slice at a time
    (a message without a body has no blank line: its lines are not copied at once)."""
    pos, size = 0, len(content)
    while pos < size:
        end = content.find(b"\n", pos)
        if end < 0:
            end = size
        line = content[pos:end].rstrip(b"\r")
        if not line:
            return
        yield line
        pos = end + 1


def _header_end(content: bytes) -> int:
    """Where the header block ends: after its blank line (CRLF or LF), else the end."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := content.find(sep)) >= 0]
    return min(ends, default=len(content))
