"""The wording of the log lines that say what happened to mail, as pure functions.

One line per recipient outcome, in the manner of Postfix's ``status=`` lines
(logger ``spoolbox.delivery``)::

    3Fz9...: to=<bob@example.org>, transport=relay, relay=mx.example.org, delay=1.2,
    dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4F2)

one per message put in the inbox (``spoolbox.inbound``) and one per delivery report
made (``spoolbox.delivery``).  Each line is a frozen value with its structured fields
(:meth:`DeliveryLine.fields`: what the JSON log format writes as keys) and its text.
Which settled update deserves a line, and with which status, is decided here too:
an attempt that ended (sent, deferred, bounced, expired) or a cancellation; a
recipient merely put back in the queue (no attempt made) gets none.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from spoolbox._quick import quick_init

from ..model import Address, RecipientRecord, RecipientState
from ..store import ClaimedJob, RecipientUpdate
from .destinations import Hold

__all__ = [
    "DELIVERY_LOGGER",
    "INBOUND_LOGGER",
    "MAX_RESPONSE",
    "DeliveryLine",
    "InboundLine",
    "ReportLine",
    "clean_response",
    "format_delay",
    "log_line",
    "log_suspended",
    "one_line",
    "outcome_of",
    "show_address",
]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_DELIVERED: Final = RecipientState.DELIVERED

DELIVERY_LOGGER = "spoolbox.delivery"
INBOUND_LOGGER = "spoolbox.inbound"
#: The server's response is cut to this many characters in a line.
MAX_RESPONSE = 200

#: The diagnostic type RFC 3464 puts before the text ("smtp; ", "x-spoolbox; ").
_DIAGNOSTIC_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*;\s*")
#: Runs of white space, made one space in a line.
_SPACES = re.compile(r"[ \t\r\n]+")
#: What a log line may not hold: control characters (C0, DEL, C1) and line breaks.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: The default DSN code of a status, when the update carries none.
_DEFAULT_DSN = {
    "sent": "2.0.0",
    "deferred": "4.0.0",
    "bounced": "5.0.0",
    "expired": "5.4.7",
}


def outcome_of(update: RecipientUpdate) -> str | None:
    """The ``status=`` word for a settled update, or None when it deserves no line.

    DELIVERED is ``sent``; FAILED is ``expired`` for 5.4.7 (the lifetime ran out) and
    ``bounced`` otherwise; CANCELLED is ``cancelled``; QUEUED after an attempt is
    ``deferred``.  A recipient queued again without an attempt (given back at
    logoff, offered to the next transport) and a parked one say nothing here; one
    held back by its destination's back-off gets its line from :func:`log_suspended`.
    """
    state = update.state
    if state is _DELIVERED:
        return "sent"
    if state is RecipientState.FAILED:
        return "expired" if update.status == "5.4.7" else "bounced"
    if state is RecipientState.CANCELLED:
        return "cancelled"
    if state is RecipientState.QUEUED and update.count_attempt:
        return "deferred"
    return None


def format_delay(seconds: float) -> str:
    """Seconds as Postfix writes a delay: ``0.07``, ``1.2``, ``27``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.2f}"
    if seconds < 10:
        return f"{seconds:.1f}"
    return f"{seconds:.0f}"


def clean_response(text: str | None, limit: int = MAX_RESPONSE) -> str:
    """A diagnostic as one safe line: its type (``smtp;``) dropped, runs of white space
    made one space, control characters written as ``\\xNN``, cut to ``limit``
    characters with ``...``."""
    if not text:
        return ""
    return one_line(_DIAGNOSTIC_TYPE.sub("", text.strip()), limit)


def one_line(text: str, limit: int = MAX_RESPONSE) -> str:
    """``text`` as one safe line: runs of white space made one space, control
    characters written as ``\\xNN``, cut to ``limit`` characters with ``...``."""
    if not (text.isprintable() and "  " not in text):
        # (Printable text has no tab, line break or unsafe character, so without a run
        # of spaces there is nothing to replace: the common case, one line a message.)
        text = _UNSAFE.sub(_escape, _SPACES.sub(" ", text))
    if len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def show_address(address: Address | str) -> str:
    """An address as ``to=<...>`` shows it: an SMTP address bare, another with its type."""
    if isinstance(address, Address):
        address = address.value if address.type == "SMTP" else str(address)
    return one_line(address, 300)


@functools.lru_cache(maxsize=256)
def _relay(remote_mta: str | None) -> str:
    """``dns; mx.example.org`` (RFC 3464's Remote-MTA) as ``mx.example.org`` (the same
    few peers again and again: cached)."""
    if not remote_mta:
        return "none"
    return clean_response(remote_mta, 100) or "none"


@quick_init
@dataclass(frozen=True, slots=True)
class DeliveryLine:
    """One recipient's outcome: the fields of its log line."""

    id: str
    to: str
    transport: str
    relay: str
    delay: str
    dsn: str
    status: str
    response: str

    @classmethod
    def of(
        cls,
        *,
        message_id: str,
        address: Address | str,
        transport: str | None,
        update: RecipientUpdate,
        submitted_at: float,
        now: float,
        remote_mta: str | None = None,
    ) -> DeliveryLine | None:
        """The line for ``update`` of a recipient, or None if it deserves none."""
        status = outcome_of(update)
        if status is None:
            return None
        dsn = update.status or _DEFAULT_DSN.get(status, "none")
        response = clean_response(update.diagnostic)
        return cls(
            id=message_id,
            to=show_address(address),
            transport=transport or "none",
            relay=_relay(remote_mta),
            delay=format_delay(now - submitted_at),
            dsn=dsn,
            status=status,
            response=response,
        )

    def fields(self) -> Mapping[str, str]:
        """The structured fields (the JSON log format's keys)."""
        return {
            "id": self.id,
            "to": self.to,
            "transport": self.transport,
            "relay": self.relay,
            "delay": self.delay,
            "dsn": self.dsn,
            "status": self.status,
            "response": self.response,
        }

    def text(self) -> str:
        why = f" ({self.response})" if self.response else ""
        return (
            f"{self.id}: to=<{self.to}>, transport={self.transport}, relay={self.relay}, "
            f"delay={self.delay}, dsn={self.dsn}, status={self.status}{why}"
        )


@dataclass(frozen=True, slots=True)
class InboundLine:
    """One message put in the inbox."""

    id: str
    sender: str
    transport: str
    size: int

    @classmethod
    def of(cls, *, entry_id: str, sender: str | None, transport: str, size: int) -> InboundLine:
        return cls(
            id=entry_id,
            sender=one_line(sender or "", 300),
            transport=transport,
            size=size,
        )

    def fields(self) -> Mapping[str, str | int]:
        return {"id": self.id, "from": self.sender, "transport": self.transport, "size": self.size}

    def text(self) -> str:
        return (
            f"{self.id}: from=<{self.sender}>, transport={self.transport}, size={self.size}, "
            "status=received"
        )


#: A report's kind (RFC 3464 Action) as Postfix names its notifications.
_REPORT_NAMES = {
    "failed": "non-delivery notification",
    "delayed": "delay notification",
    "delivered": "delivery status notification",
}
#: The kind of a report that could not be delivered itself, kept in the inbox.
DOUBLE_BOUNCE = "double-bounce"


@dataclass(frozen=True, slots=True)
class ReportLine:
    """One delivery status notification made about message ``original``:
    ``report_id`` is None for one put straight into the inbox (the inbox gives it its
    id when the transaction commits)."""

    original: str
    kind: str  # RFC 3464 Action: failed, delayed, delivered
    to: str
    report_id: str | None

    def fields(self) -> Mapping[str, str | None]:
        return {
            "id": self.original,
            "report": self.kind,
            "to": self.to,
            "report_id": self.report_id,
        }

    def text(self) -> str:
        if self.kind == DOUBLE_BOUNCE:
            return (
                f"{self.original}: report could not be delivered: kept in the inbox as a "
                f"double bounce, to=<{self.to}>"
            )
        name = _REPORT_NAMES.get(self.kind, f"{self.kind} notification")
        where = self.report_id if self.report_id else "put in the inbox"
        return f"{self.original}: sender {name}: {where}, to=<{self.to}>"


class _Line(Protocol):
    def text(self) -> str: ...

    def fields(self) -> Mapping[str, object]: ...


#: The LogRecord attribute holding a line's structured fields (the JSON log format's
#: keys; ``spoolbox.daemon.log_format.FIELDS_ATTR``).
_FIELDS_ATTR = "spoolbox_fields"


def log_line(logger: logging.Logger, level: int, line: _Line) -> None:
    """Log ``line`` (its text, its fields as the record's ``spoolbox_fields``) at ``level``.

    The record is made with :meth:`logging.Logger.makeRecord` and passed to
    :meth:`~logging.Logger.handle`, as :meth:`~logging.Logger.info` does, without its
    search of the caller's frame and file name (no format of ours shows them): a line
    a message, where that search was a tenth of the line's cost."""
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name,
            level,
            __file__,
            0,
            line.text(),
            (),
            None,
            "log_line",
            {_FIELDS_ATTR: line.fields()},
        )
        logger.handle(record)


def log_suspended(
    job: ClaimedJob, held: Sequence[tuple[RecipientRecord, Hold]], transport: str, now: float
) -> None:
    """INFO, one line per recipient held back without an attempt because its
    destination is in back-off, as Postfix logs mail for a destination it marked
    dead: ``status=deferred (delivery temporarily suspended: <why the last attempt
    there failed>)``, with that attempt's status code.  Once per recipient and hold:
    it is queued again until the hold ends."""
    logger = logging.getLogger(DELIVERY_LOGGER)
    if not logger.isEnabledFor(logging.INFO):
        return
    info = job.message
    for recipient, hold in held:
        why = clean_response(hold.diagnostic)
        line = DeliveryLine(
            id=info.id,
            to=show_address(recipient.address),
            transport=transport,
            relay="none",
            delay=format_delay(now - info.submitted_at),
            dsn=hold.status or "4.0.0",
            status="deferred",
            response=one_line(
                "delivery temporarily suspended" + (f": {why}" if why else ""), MAX_RESPONSE
            ),
        )
        log_line(logger, logging.INFO, line)
