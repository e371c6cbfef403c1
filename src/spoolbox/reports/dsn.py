"""Delivery status notifications (RFC 3464): the spooler's StatusRecips, as pure functions.

Nothing here does I/O; the spooler collects the outcomes of a message, calls
:func:`report_message` once per report kind (MAPI: "collect all outcomes for a
message and call once"), and submits what comes back.

API
---

``ReportKind``
    ``FAILURE`` ("failed"), ``DELAY`` ("delayed"), ``SUCCESS`` ("delivered"); the
    value is the RFC 3464 ``Action``.  ``ReportKind.for_outcome(outcome)`` maps a
    transport's :class:`~spoolbox.model.Outcome`.
``ReportItem(address, status, diagnostic="", remote_mta=None, last_attempt=None,``
``will_retry_until=None, relayed=False, original=None)``
    One recipient line; ``relayed`` (success reports): handed to a next hop that
    does not report deliveries, RFC 3464's ``Action: relayed``; ``original`` the
    recipient's RFC 3461 ORCPT as kept (``rfc822;bob@example.org``), written as
    ``Original-Recipient`` before ``Final-Recipient``.  ``status`` must be
    an RFC 3463 code (``5.1.1``);
    ``ReportItem.from_result(result, address, ...)`` builds one from a transport's
    :class:`~spoolbox.model.RecipientResult`.
``wants_report(info, kind) -> bool``
    Never for a null sender, never for a report, else as ``info.notify`` asks.
``build_report(*, info, original, items, kind, reporting_mta, now,``
``postmaster="MAILER-DAEMON", include_content=None, size_limit=RETURN_SIZE_LIMIT,``
``original_size=None) -> bytes``
    The report as RFC 5322 bytes (CRLF line ends).  ``original`` may be only the
    beginning of the message when ``original_size`` gives its size: as much as
    ``needed_bytes(original_size, size_limit)`` says (all of it up to the limit).
``report_message(...same arguments...) -> NewMessage | None``
    The report ready to submit (null sender, to ``info.sender``, ``is_report=True``,
    ``notify=Notify.NEVER``), or None when :func:`wants_report` says no.
``double_bounce(*, info, original, items, reporting_mta, now, original_size=None)``
``-> bytes``
    A *double bounce*: the failure report about a report (``info.is_report``) that
    could not be delivered, for the local postmaster (the spooler puts it in the
    inbox; it is never sent, so it cannot loop).  A failure report as above, with
    the failed report returned whole, ``To: postmaster@<reporting_mta>``, the
    subject ``Double Bounce: Undelivered Mail Returned to Sender`` and the header
    ``X-Spoolbox-Double-Bounce: yes``.

The report
----------

A ``multipart/report; report-type=delivery-status`` with three parts:

1. ``text/plain`` (UTF-8): one paragraph saying what happened, then one entry per
   recipient saying *delivered*, *failed permanently* or *delayed, still being
   retried until <date>*, with its status code and diagnostic.
2. ``message/delivery-status``: ``Reporting-MTA: dns; <reporting_mta>``,
   ``X-Spoolbox-Queue-ID``, ``Original-Envelope-Id`` (when the message had one) and
   ``Arrival-Date``; then per recipient ``Original-Recipient`` (when the recipient
   came with an RFC 3461 ORCPT), ``Final-Recipient``, ``Action``, ``Status``,
   ``Diagnostic-Code``, ``Remote-MTA``, ``Last-Attempt-Date`` and, for delays,
   ``Will-Retry-Until`` (the optional ones only when known).
3. The original.  ``include_content`` is RFC 3461's RET: True returns the whole
   message (``message/rfc822``), False only its header section
   (``text/rfc822-headers``), None the kind's default, which is the whole message
   for failures (MAPI embeds the original in an NDR so it can be resent) and headers
   for the rest.  An original over ``size_limit`` (10 MiB), or one that cannot be
   valid message/rfc822 content, is cut to its headers; an empty one is left out.
   See :mod:`spoolbox.reports._original`.

Headers: ``From: Mail Delivery System <postmaster@reporting_mta>`` (``postmaster``
may also be a whole address), ``To:`` the original sender when it is a valid
ASCII Internet address (else ``undisclosed-recipients:;``, as the envelope is what
routes it), a fixed ``Subject``, ``Date``, a ``Message-ID`` derived from the queue
id, kind, time and recipients (so the function stays deterministic),
``Auto-Submitted: auto-replied`` (RFC 3834) and ``In-Reply-To``/``References`` when
the original had a well-formed Message-ID.

Addresses in ``Final-Recipient``
--------------------------------

``SMTP`` addresses use type ``rfc822`` (``rfc822; bob@example.org``), or ``utf-8``
with RFC 6533's ``\\x{HEX}`` escapes when they are not ASCII.  ``X400`` uses the
registered ``x400``.  Every other type becomes a private ``x-`` type, lowercased,
any character an atom can't hold turned into ``-``: ``MAILDIR:/var/mail/bob`` is
``x-maildir; /var/mail/bob``; non-ASCII characters in such values are written as
``\\x{HEX}``.

Hostile input
-------------

Everything from outside (diagnostics, remote MTA names, the subject, addresses) is
cut to one line with control characters removed before it reaches a header or the
text; the delivery-status fields are also kept to ASCII (``\\x{HEX}`` escapes), so
no input can add a header, break the MIME structure or make serialisation fail.  A
diagnostic without a known ``type;`` prefix (``smtp``, ``x400`` or an ``x-`` type)
gets ``x-spoolbox; `` in front.  Bad arguments from the caller (an invalid status
code, a status class that contradicts the report kind, no items, a malformed
``reporting_mta``) raise :class:`ValueError`; bad original content never raises.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import secrets
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import headerregistry, policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message, MIMEPart
from email.utils import format_datetime

from ..model import Address, MessageInfo, NewMessage, Notify, RecipientResult
from ._original import ReturnedOriginal, needed_bytes, returned_original
from ._policy import ReportKind, wants_report

__all__ = [
    "RETURN_SIZE_LIMIT",
    "ReportItem",
    "ReportKind",
    "build_report",
    "double_bounce",
    "needed_bytes",
    "report_message",
    "wants_report",
]

#: An original larger than this (bytes) is returned as its header section only.
RETURN_SIZE_LIMIT = 10 * 1024 * 1024
#: The stand-in for a returned message's bytes while the report is serialised.
_ORIGINAL_HERE = f"spoolbox-returned-message-{secrets.token_hex(16)}".encode("ascii")

_POLICY = policy.SMTP  # serialisation: CRLF, folding at 78
_TEXT_POLICY = policy.SMTP.clone(cte_type="7bit")  # human text: 7bit or quoted-printable
_STATUS_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")  # ASCII digits only (\d is Unicode)
_TYPED_RE = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,63})[ \t]*;[ \t]*(.*)", re.DOTALL)
_HOST_RE = re.compile(r"[A-Za-z0-9._:\[\]-]{1,253}")
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_NOT_ATOM_RE = re.compile(r"[^a-z0-9-]")
_KNOWN_DIAGNOSTIC_TYPES = frozenset({"smtp", "x400"})
_MAX_TEXT = 1000  # characters of a diagnostic or other one-line field
_FOLD_AT = 78
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"+", "=", "\\"}
_DROP = frozenset({"Cf"})
_BLANK = frozenset({"Cc", "Zl", "Zp"})

_SUBJECTS = {
    ReportKind.FAILURE: "Undelivered Mail Returned to Sender",
    ReportKind.DELAY: "Delayed Mail (still being retried)",
    ReportKind.SUCCESS: "Successful Mail Delivery Report",
}
_DOUBLE_BOUNCE_SUBJECT = "Double Bounce: " + _SUBJECTS[ReportKind.FAILURE]
_DOUBLE_BOUNCE_LEAD = (
    "A delivery status report could not be delivered to the sender of the message it "
    "is about (its recipients are listed below). It is kept here for the postmaster, "
    "the report returned whole; no further report is made about it."
)
_STATUS_CLASSES = {
    ReportKind.FAILURE: "45",  # 4.x.x: a temporary failure that expired (e.g. 4.4.7)
    ReportKind.DELAY: "4",
    ReportKind.SUCCESS: "2",
}


@dataclass(frozen=True, slots=True)
class ReportItem:
    """One recipient of a report.

    ``address`` is the recipient; ``status`` an RFC 3463 code; ``diagnostic`` the
    transport's text (``"smtp; 550 5.1.1 no such user"``), any characters allowed;
    ``remote_mta`` e.g. ``"dns; mx.example.org"`` (``dns;`` is added when no type
    is given); the times are epoch seconds.  ``will_retry_until`` is only used in
    delay reports.
    """

    address: Address
    status: str
    diagnostic: str = ""
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None
    #: A success that was a hand-off to a next hop which sends no delivery reports of
    #: its own (an SMTP server without DSN): ``Action: relayed``, not ``delivered``.
    relayed: bool = False
    #: RFC 3461's ORCPT given with the recipient (``rfc822;bob@example.org``): the
    #: report's ``Original-Recipient`` (RFC 3464 2.3.1).
    original: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.address, Address):
            raise ValueError(f"report item address must be an Address, not {self.address!r}")
        if self.original is not None and not isinstance(self.original, str):
            raise ValueError(f"report item original must be text, not {self.original!r}")
        if not isinstance(self.status, str) or not _STATUS_RE.fullmatch(self.status):
            raise ValueError(
                f"report item status {self.status!r} is not an RFC 3463 code like 5.1.1"
            )
        for name in ("last_attempt", "will_retry_until"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"report item {name} must be a finite time, not {value!r}")

    @classmethod
    def from_result(
        cls,
        result: RecipientResult,
        address: Address,
        *,
        last_attempt: float | None = None,
        will_retry_until: float | None = None,
        original: str | None = None,
    ) -> ReportItem:
        """The item for a transport's result about ``address``."""
        return cls(
            address=address,
            status=result.status,
            diagnostic=result.diagnostic,
            remote_mta=result.remote_mta,
            last_attempt=last_attempt,
            will_retry_until=will_retry_until,
            relayed=result.relayed,
            original=original,
        )


# --- text hygiene -----------------------------------------------------------------


def _one_line(text: str | None) -> str:
    """``text`` as one line: control and line-separator characters become spaces,
    invisible format characters go, lone surrogates become U+FFFD, runs of white
    space collapse, and it is cut to :data:`_MAX_TEXT` characters."""
    if not text:
        return ""
    out: list[str] = []
    for ch in str(text)[: 4 * _MAX_TEXT]:
        category = unicodedata.category(ch)
        if category in _BLANK:
            out.append(" ")
        elif category == "Cs":
            out.append("\ufffd")
        elif category not in _DROP:
            out.append(ch)
    line = " ".join("".join(out).split())
    if len(line) > _MAX_TEXT:
        line = line[: _MAX_TEXT - 3].rstrip() + "..."
    return line


def _hex(ch: str) -> str:
    return f"\\x{{{ord(ch):02X}}}"


def _ascii(text: str) -> str:
    """``text`` (already one line) with non-ASCII characters as RFC 6533 ``\\x{HEX}``."""
    return "".join(ch if ch.isascii() else _hex(ch) for ch in text)


def _utf8_addr_xtext(text: str) -> str:
    """RFC 6533 utf-8-addr-xtext: every character but QCHAR escaped."""
    return "".join(ch if ch in _QCHAR else _hex(ch) for ch in text)


def _fold(name: str, value: str) -> str:
    """``value`` folded at its spaces so that ``name: value`` lines fit 78 columns.

    A folded line break is inserted before an existing space, so unfolding gives
    back ``value`` exactly.  The result is used as a raw header value, which the
    generator writes as is (it would otherwise re-parse long values as RFC 2047
    text)."""
    words = value.split(" ")
    out = [words[0]]
    width = len(name) + 2 + len(words[0])
    for word in words[1:]:
        if word and width + 1 + len(word) > _FOLD_AT:
            out.append("\r\n " + word)
            width = 1 + len(word)
        else:
            out.append(" " + word)
            width += 1 + len(word)
    return "".join(out)


def _date(when: float) -> str:
    try:
        return format_datetime(datetime.fromtimestamp(when, UTC))
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"time {when!r} cannot be written as a date: {exc}") from exc


# --- field values -----------------------------------------------------------------


def _address_type(address: Address) -> str:
    if address.type == "SMTP":
        return "rfc822"
    if address.type == "X400":
        return "x400"
    atom = _NOT_ATOM_RE.sub("-", address.type.lower())
    return atom if atom.startswith("x-") else "x-" + atom


def _final_recipient(address: Address) -> str:
    value = _one_line(address.value)
    if address.type == "SMTP" and not value.isascii():
        return f"utf-8; {_utf8_addr_xtext(value)}"
    return f"{_address_type(address)}; {_ascii(value)}"


def _original_recipient(original: str) -> str:
    """RFC 3464's ``Original-Recipient`` value for an ORCPT as kept: the type
    lowercased (a character an atom can't hold as ``-``; ``unknown`` if there is
    none), ``; ``, the address on one line with non-ASCII characters as
    ``\\x{HEX}``."""
    kind, sep, value = original.partition(";")
    if not sep:
        kind, value = "", original
    kind = _NOT_ATOM_RE.sub("-", kind.strip().lower()) or "unknown"
    return f"{kind}; {_ascii(_one_line(value))}"


def _display(address: Address) -> str:
    """How the human-readable part names a recipient."""
    return _one_line(address.value if address.type == "SMTP" else str(address))


def _diagnostic_code(text: str) -> str | None:
    line = _one_line(text)
    if not line:
        return None
    match = _TYPED_RE.fullmatch(line)
    if match is not None:
        kind = match.group(1).lower()
        if kind in _KNOWN_DIAGNOSTIC_TYPES or kind.startswith("x-"):
            return _ascii(f"{kind}; {match.group(2)}".rstrip())
    return _ascii(f"x-spoolbox; {line}")


def _remote_mta(text: str | None) -> str | None:
    line = _one_line(text)
    if not line:
        return None
    match = _TYPED_RE.fullmatch(line)
    if match is not None:
        return _ascii(f"{match.group(1).lower()}; {match.group(2)}".rstrip())
    return _ascii(f"dns; {line}")


def _block(fields: Sequence[tuple[str, str | None]]) -> Message:
    """A header block of a message/delivery-status body (fields with a value only)."""
    block = Message(policy=policy.compat32)
    for name, value in fields:
        if value is not None:
            block[name] = _fold(name, value)
    return block


class _BytesGenerator(BytesGenerator):
    """The stock generator, except that a verbatim message/rfc822 payload keeps its
    8-bit bytes: the payload is a str decoded with surrogateescape, which the stock
    ``_encode`` turns back into bytes as strict ASCII (every other path of
    :class:`BytesGenerator` already uses surrogateescape)."""

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


def _serialise(message: EmailMessage) -> bytes:
    out = io.BytesIO()
    _BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(message)
    return out.getvalue()


# --- the parts --------------------------------------------------------------------


def _check_arguments(
    items: Sequence[ReportItem], kind: ReportKind, reporting_mta: str, postmaster: str
) -> str:
    """Validate the caller's arguments; returns the From address."""
    if not items:
        raise ValueError("a report needs at least one recipient item")
    allowed = _STATUS_CLASSES[kind]
    for item in items:
        if not isinstance(item, ReportItem):
            raise ValueError(f"report items must be ReportItem, not {item!r}")
        if item.status[0] not in allowed:
            raise ValueError(
                f"status {item.status} for {item.address} does not fit a {kind.name} report "
                f"(class {' or '.join(allowed)} expected)"
            )
    if not _HOST_RE.fullmatch(reporting_mta):
        raise ValueError(f"reporting_mta {reporting_mta!r} is not a host name")
    if "@" in postmaster:
        local, _, domain = postmaster.rpartition("@")
    else:
        local, domain = postmaster, reporting_mta
    if not _LOCAL_RE.fullmatch(local) or not _HOST_RE.fullmatch(domain):
        raise ValueError(f"postmaster {postmaster!r} is not a local part or an address")
    return f"{local}@{domain}"


def _explanation(
    info: MessageInfo,
    items: Sequence[ReportItem],
    kind: ReportKind,
    reporting_mta: str,
    returned: ReturnedOriginal,
    double: bool = False,
) -> str:
    """The human-readable first part, wrapped to 76 columns where words allow."""
    if double:
        lead = _DOUBLE_BOUNCE_LEAD
    elif kind is ReportKind.FAILURE:
        lead = (
            "Your message could not be delivered to the recipients listed below. "
            "The failure is permanent: no further delivery attempts will be made."
        )
    elif kind is ReportKind.DELAY:
        lead = (
            "Your message has not yet been delivered to the recipients listed below. "
            "Delivery is still being attempted; you do not need to send it again. "
            "You will be told if it finally fails."
        )
    elif any(item.relayed for item in items):
        lead = (
            "Your message was delivered to the recipients listed below, or handed on "
            "to a mail server that sends no delivery reports (relayed): this is the "
            "last report you will get about those."
        )
    else:
        lead = "Your message was delivered to the recipients listed below."
    paragraphs = [
        f"This is the mail delivery system at {reporting_mta}.",
        _wrap(f"{lead} {returned.note}"),
    ]
    about = [f"Queue ID: {_one_line(info.id)}", f"Submitted: {_date(info.submitted_at)}"]
    subject = _one_line(info.subject)
    if subject:
        about.insert(0, f"Subject: {subject}")
    if returned.message_id:
        about.insert(0, f"Message-ID: {returned.message_id}")
    paragraphs.append("\n".join(_wrap(line, "  ", "      ") for line in about))
    for item in items:
        if kind is ReportKind.FAILURE:
            what = "failed permanently"
        elif kind is ReportKind.DELAY:
            what = "delayed, still being retried"
            if item.will_retry_until is not None:
                what += f" until {_date(item.will_retry_until)}"
        elif item.relayed:
            what = "relayed"
        else:
            what = "delivered"
        lines = [_wrap(f"<{_display(item.address)}>: {what} (status {item.status})", "", "    ")]
        diagnostic = _one_line(item.diagnostic)
        if diagnostic:
            lines.append(_wrap(diagnostic, "    ", "    "))
        remote = _one_line(item.remote_mta)
        if remote:
            lines.append(_wrap(f"remote server: {remote}", "    ", "    "))
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs) + "\n"


def _wrap(text: str, first: str = "", rest: str = "") -> str:
    return textwrap.fill(
        text,
        width=76,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _text_part(text: str) -> MIMEPart:
    part = MIMEPart(policy=_TEXT_POLICY)
    part.set_content(text, subtype="plain", charset="utf-8")
    part["Content-Description"] = "Notification"
    return part


def _status_part(
    info: MessageInfo,
    items: Sequence[ReportItem],
    kind: ReportKind,
    reporting_mta: str,
) -> MIMEPart:
    blocks: list[Message | str] = [
        _block(
            [
                ("Reporting-MTA", f"dns; {reporting_mta}"),
                ("X-Spoolbox-Queue-ID", _ascii(_one_line(info.id)) or None),
                ("Original-Envelope-Id", _ascii(_one_line(info.envelope_id)) or None),
                ("Arrival-Date", _date(info.submitted_at)),
            ]
        )
    ]
    for item in items:
        retry_until = None
        if kind is ReportKind.DELAY and item.will_retry_until is not None:
            retry_until = _date(item.will_retry_until)
        blocks.append(
            _block(
                [
                    (
                        "Original-Recipient",
                        None if item.original is None else _original_recipient(item.original),
                    ),
                    ("Final-Recipient", _final_recipient(item.address)),
                    ("Action", "relayed" if item.relayed else kind.value),
                    ("Status", item.status),
                    ("Remote-MTA", _remote_mta(item.remote_mta)),
                    ("Diagnostic-Code", _diagnostic_code(item.diagnostic)),
                    (
                        "Last-Attempt-Date",
                        None if item.last_attempt is None else _date(item.last_attempt),
                    ),
                    ("Will-Retry-Until", retry_until),
                ]
            )
        )
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _original_part(returned: ReturnedOriginal) -> MIMEPart | None:
    if returned.form == "none":
        return None
    part = MIMEPart(policy=_POLICY)
    if returned.form == "message":
        part["Content-Type"] = "message/rfc822"
        part["Content-Description"] = "Returned message"
    else:
        part["Content-Type"] = "text/rfc822-headers"
        if returned.charset is not None:
            part.set_param("charset", returned.charset)
        part["Content-Description"] = "Returned message headers"
    part["Content-Transfer-Encoding"] = returned.cte
    if returned.form == "message":
        # A stand-in: the original goes in after serialisation (see build_report).
        part.set_payload(_ORIGINAL_HERE.decode("ascii"))
    else:
        # A str payload is written out byte for byte (surrogateescape keeps 8-bit bytes).
        part.set_payload(returned.data.decode("ascii", "surrogateescape"))
    return part


def _recipient_of(sender: Address | None) -> headerregistry.Address | None:
    """The To address: the sender's, when it is a plain ASCII Internet address."""
    if sender is None or sender.type != "SMTP" or not sender.value.isascii():
        return None
    try:
        address = headerregistry.Address(addr_spec=sender.value)
    except Exception:  # not an addr-spec (a comma, stray brackets, ...)
        return None
    if not address.username or not address.domain:
        return None
    return address


def _message_id(
    info: MessageInfo, items: Sequence[ReportItem], kind: ReportKind, now: float, reporting_mta: str
) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(str(item.address).encode("utf-8", "surrogatepass") + b"\0")
    queue_id = re.sub(r"[^A-Za-z0-9_-]", "", info.id)[:64] or "message"
    stamp = max(0, int(now * 1000))
    return f"<{queue_id}.{kind.name.lower()}.{stamp:x}.{digest.hexdigest()[:8]}@{reporting_mta}>"


def build_report(
    *,
    info: MessageInfo,
    original: bytes,
    items: Sequence[ReportItem],
    kind: ReportKind,
    reporting_mta: str,
    now: float,
    postmaster: str = "MAILER-DAEMON",
    include_content: bool | None = None,
    size_limit: int = RETURN_SIZE_LIMIT,
    original_size: int | None = None,
    _double: bool = False,
) -> bytes:
    """The RFC 3464 report about ``items`` of the message ``info``, as RFC 5322 bytes.

    Does not consult :func:`wants_report`; :func:`report_message` does.  Raises
    :class:`ValueError` for bad arguments, never for bad ``original`` content.
    (``_double``: :func:`double_bounce`'s form.)
    """
    kind = ReportKind(kind)
    items = tuple(items)
    from_address = _check_arguments(items, kind, reporting_mta, postmaster)
    full = kind is ReportKind.FAILURE if include_content is None else include_content
    returned = returned_original(original, full=full, size_limit=size_limit, size=original_size)

    message = EmailMessage(policy=_POLICY)
    message["From"] = headerregistry.Address(
        display_name="Mail Delivery System", addr_spec=from_address
    )
    to = _recipient_of(info.sender)
    if _double:
        message["To"] = f"postmaster@{reporting_mta}"
        message["Subject"] = _DOUBLE_BOUNCE_SUBJECT
        message["X-Spoolbox-Double-Bounce"] = "yes"
    else:
        message["To"] = to if to is not None else "undisclosed-recipients:;"
        message["Subject"] = _SUBJECTS[kind]
    message["Date"] = datetime.fromtimestamp(now, UTC)
    message["Message-ID"] = _message_id(info, items, kind, now, reporting_mta)
    if returned.message_id is not None:
        message["In-Reply-To"] = returned.message_id
        message["References"] = returned.message_id
    message["Auto-Submitted"] = "auto-replied"
    message["MIME-Version"] = "1.0"
    message["Content-Type"] = "multipart/report; report-type=delivery-status"
    parts: list[Message | str] = [
        _text_part(_explanation(info, items, kind, reporting_mta, returned, _double)),
        _status_part(info, items, kind, reporting_mta),
    ]
    attached = _original_part(returned)
    if attached is not None:
        parts.append(attached)
    message.set_payload(parts)

    data = _serialise(message)
    # The email package checks its random boundary against the parts with a regex
    # that misses CRLF lines; make sure no verbatim original can contain it.
    for _ in range(8):
        boundary = message.get_boundary()
        if boundary is None or boundary.encode("ascii") not in returned.data:
            break
        message.del_param("boundary")
        data = _serialise(message)
    if returned.form == "message":
        # The returned message, byte for byte, where its stand-in was written (the
        # last part): copied once, not decoded to text, split into lines and
        # encoded again by the email package, which held it several times over.
        head, _, tail = data.rpartition(_ORIGINAL_HERE)
        data = b"".join((head, returned.data, tail))
    return data


def report_message(
    *,
    info: MessageInfo,
    original: bytes,
    items: Sequence[ReportItem],
    kind: ReportKind,
    reporting_mta: str,
    now: float,
    postmaster: str = "MAILER-DAEMON",
    include_content: bool | None = None,
    size_limit: int = RETURN_SIZE_LIMIT,
    original_size: int | None = None,
) -> NewMessage | None:
    """The report to submit for ``items`` of ``info``, or None when none is wanted.

    The report has a null envelope sender, goes to the original sender, is marked
    ``is_report`` and asks for no reports itself, so it can never cause another.
    """
    if info.sender is None or not wants_report(info, kind):
        return None
    content = build_report(
        info=info,
        original=original,
        items=items,
        kind=kind,
        reporting_mta=reporting_mta,
        now=now,
        postmaster=postmaster,
        include_content=include_content,
        size_limit=size_limit,
        original_size=original_size,
    )
    return NewMessage(
        sender=None,
        recipients=(info.sender,),
        content=content,
        is_report=True,
        notify=Notify.NEVER,
    )


def double_bounce(
    *,
    info: MessageInfo,
    original: bytes,
    items: Sequence[ReportItem],
    reporting_mta: str,
    now: float,
    original_size: int | None = None,
) -> bytes:
    """The double bounce about the report ``info`` whose ``items`` failed: a failure
    report for the local postmaster, the failed report returned whole (see the
    module docstring).  Raises :class:`ValueError` if ``info`` is not a report: an
    ordinary message's failure is :func:`report_message`'s."""
    if not info.is_report:
        raise ValueError(
            f"message {info.id} is not a report: it gets a report, not a double bounce"
        )
    return build_report(
        info=info,
        original=original,
        items=items,
        kind=ReportKind.FAILURE,
        reporting_mta=reporting_mta,
        now=now,
        include_content=True,
        original_size=original_size,
        _double=True,
    )
