"""The local API's wire schema, imported by both sides (the daemon and the client).

The protocol is JSON lines over the daemon's Unix socket (docs/operations.md, "Local
API").  This module holds what both ends must agree on, and nothing that does I/O:

* the protocol version and the versions a daemon speaks, the limits (a request line,
  a message's raw content, a ``submit_many`` batch) and the error codes;
* the shape of a request line, of an answer, a refusal and an event;
* the JSON forms of messages, recipients, inbox entries and flush reports
  (``*_to_dict``), which are also the ``spoolbox`` command's ``--json`` output;
* a ``submit``'s message both ways (:func:`message_args`, :func:`message_from_args`)
  and the readers that check an argument's JSON type and name it when it is wrong.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..model import Address, MessageSummary, NewMessage, Notify, Priority, RecipientRecord
from ..routing import RoutingTable, describe_unroutable, unroutable

if TYPE_CHECKING:  # annotations only: the client imports this module, keep it light
    from .._core.flush import FlushReport
    from ..store.base import InboxEntry

__all__ = [
    "BAD_REQUEST",
    "CONFLICT",
    "CONTENT_LIMIT",
    "ERROR_CODES",
    "FLUSH_COUNTS",
    "INTERNAL",
    "MAX_REQUEST_LINE",
    "MAX_SUBMIT_MANY",
    "NOT_FOUND",
    "NOT_RUNNING",
    "PROFILE",
    "PROTOCOL_VERSION",
    "STORE",
    "STORE_FULL",
    "STREAMING_OPS",
    "SUPPORTED_VERSIONS",
    "TOO_LARGE",
    "UNROUTABLE",
    "UNSUPPORTED_VERSION",
    "ApiError",
    "answer",
    "check_version",
    "decode_request",
    "event",
    "flush_report_to_dict",
    "inbox_to_dict",
    "limit_of",
    "message_args",
    "message_from_args",
    "message_to_dict",
    "optional",
    "recipient_to_dict",
    "refusal",
    "request_line",
    "required",
    "summary_of",
    "unroutable_error",
]

PROTOCOL_VERSION = 1
#: The protocol versions the daemon answers (a request's ``"v"``; none means 1).
SUPPORTED_VERSIONS = (1,)
#: The longest request line the daemon reads, newline included.  A longer line is
#: answered ``too_large`` and the connection closed.  A ``submit``'s message follows
#: its line as raw bytes; :meth:`Client.submit_many` puts a batch too large for one
#: line into the store directly.
MAX_REQUEST_LINE = 64 * 1024 * 1024
#: The largest message one ``submit`` may carry as raw content after its line.
CONTENT_LIMIT = 256 * 1024 * 1024
#: ``submit_many``: messages in one request at most (one store transaction).
MAX_SUBMIT_MANY = 10_000
#: The requests that take the connection to their end, answering with events.
STREAMING_OPS = frozenset({"flush", "watch"})

# -- error codes (an answer's ``error.code``) -------------------------------------------
BAD_REQUEST = "bad_request"  # not JSON, no op, an argument missing or of the wrong type
NOT_FOUND = "not_found"  # no such message, inbox entry or transport
CONFLICT = "conflict"  # the message is not in a state the action applies to
NOT_RUNNING = "not_running"  # the daemon is shutting down
STORE = "store"  # the store refused
STORE_FULL = "store_full"  # the store's disk is full: nothing written, try again later
PROFILE = "profile"  # reload: the profile is invalid or failed to start
TOO_LARGE = "too_large"  # a request line over MAX_REQUEST_LINE
UNSUPPORTED_VERSION = "unsupported_version"  # a "v" the daemon does not speak
INTERNAL = "internal"  # a fault of the daemon's
UNROUTABLE = "unroutable"  # a recipient no transport serves (nothing queued)
ERROR_CODES = (
    BAD_REQUEST,
    NOT_FOUND,
    CONFLICT,
    NOT_RUNNING,
    STORE,
    STORE_FULL,
    PROFILE,
    TOO_LARGE,
    UNSUPPORTED_VERSION,
    INTERNAL,
    UNROUTABLE,
)


class ApiError(Exception):
    """A request refused: ``code`` is one of :data:`ERROR_CODES`, the text says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- lines --------------------------------------------------------------------------------
def request_line(request_id: int, op: str, args: dict[str, Any]) -> bytes:
    """A request as the client writes it, without its newline."""
    return json.dumps({"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}).encode()


def answer(request_id: Any, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def refusal(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def event(request_id: Any, kind: str, /, **fields: Any) -> dict[str, Any]:
    """One event of a streaming request (``flush``, ``watch``)."""
    return {"id": request_id, "event": kind, **fields}


def decode_request(line: bytes) -> Any:
    """A request line's JSON value; a line that is not JSON is a ``bad_request``."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # also: not UTF-8, deep nesting, huge ints
        raise ApiError(BAD_REQUEST, f"not JSON: {exc}") from None


def check_version(request: dict[str, Any]) -> None:
    """A request without ``v`` is version 1; another version is refused by name."""
    version = request.get("v", 1)
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or version not in SUPPORTED_VERSIONS
    ):
        known = ", ".join(str(supported) for supported in SUPPORTED_VERSIONS)
        raise ApiError(
            UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported; this daemon speaks version {known}",
        )


# -- JSON forms ---------------------------------------------------------------------------
def recipient_to_dict(recipient: RecipientRecord) -> dict[str, Any]:
    return {
        "index": recipient.index,
        "address": str(recipient.address),
        "state": str(recipient.state),
        "route": recipient.route,
        "attempts": recipient.attempts,
        "retry_at": recipient.retry_at or None,
        "status": recipient.status,
        "diagnostic": recipient.diagnostic,
        "original": recipient.original,
    }


def message_to_dict(summary: MessageSummary) -> dict[str, Any]:
    info = summary.info
    return {
        "id": info.id,
        "state": str(summary.state),
        "sender": str(info.sender) if info.sender is not None else None,
        "subject": info.subject,
        "size": info.size,
        "priority": info.priority.name.lower(),
        "submitted_at": info.submitted_at,
        "send_at": info.send_at,
        "expires_at": info.expires_at,
        "envelope_id": info.envelope_id,
        "return_content": info.return_content,
        "held": info.held,
        "is_report": info.is_report,
        "recipients": [recipient_to_dict(recipient) for recipient in summary.recipients],
    }


def inbox_to_dict(entry: InboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "transport": entry.transport,
        "sender": entry.sender,
        "recipients": list(entry.recipients),
        "received_at": entry.received_at,
        "size": entry.size,
        "subject": entry.subject,
        "remote_id": entry.remote_id,
        "folder": entry.meta.get("folder"),  # set by an inbound filing hook; None: the inbox
    }


#: The counts of a flush report, per transport and in ``totals``: recipients
#: delivered, deferred and failed in the upload phase, messages still queued after it.
FLUSH_COUNTS = ("delivered", "deferred", "failed", "queued")


def flush_report_to_dict(report: FlushReport) -> dict[str, Any]:
    """A flush report as the local API answers it (keys are only ever added)."""
    return {
        "cancelled": report.cancelled,
        "timed_out": report.timed_out,
        "totals": {key: report.total(key) for key in FLUSH_COUNTS},
        "results": [
            {
                "transport": result.transport,
                "uploaded": result.uploaded,
                "downloaded": result.downloaded,
                "bytes": result.bytes,
                "cancelled": result.cancelled,
                "error": result.error,
                "seconds": round(result.seconds, 3),
                "timed_out": result.timed_out,
                "held": result.held,
                **{key: getattr(result, key) for key in FLUSH_COUNTS},
            }
            for result in report.results
        ],
    }


async def summary_of(store: Any, message_id: str, now: float) -> MessageSummary:
    """What ``queue.show`` describes: a :class:`MessageSummary` of one message, read
    from ``store`` (raises UnknownMessage)."""
    info = await store.get_message(message_id)
    recipients = await store.recipients(message_id)
    state = await store.state_of(message_id, now=now)
    return MessageSummary(info=info, state=state, recipients=recipients)


# -- a submit's message ---------------------------------------------------------------------
def message_args(message: NewMessage, *, content: bool = True) -> dict[str, Any]:
    """A message as the local API's ``submit`` takes it (without ``content``: the
    request carries it after its line)."""
    args: dict[str, Any] = {
        "id": message.id,
        "sender": str(message.sender) if message.sender is not None else None,
        "recipients": [str(recipient) for recipient in message.recipients],
        "priority": message.priority.name.lower(),
        "notify": int(message.notify),
        "send_at": message.send_at,
    }
    if message.lifetime is not None:
        args["lifetime"] = message.lifetime
    if message.envelope_id is not None:
        args["envelope_id"] = message.envelope_id
    if message.return_content is not None:
        args["return_content"] = message.return_content
    if message.original_recipients:
        args["original_recipients"] = {str(a): o for a, o in message.original_recipients}
    if content:
        args["content"] = base64.b64encode(message.content).decode("ascii")
    return args


def message_from_args(args: dict[str, Any]) -> NewMessage:
    """A ``submit`` request's message (also each item of ``submit_many``): ``content``
    is the bytes that followed the request's line, or base64 in the line."""
    raw = args.get("content")
    try:
        content = (
            raw
            if isinstance(raw, bytes)  # JSON has no bytes: only the raw content makes them
            else base64.b64decode(required(args, "content", str), validate=True)
        )
    except ValueError as exc:  # binascii.Error, or a str that is not ASCII
        raise ApiError(BAD_REQUEST, f"content is not base64: {exc}") from None
    sender = optional(args, "sender", str)
    recipients = required(args, "recipients", list)
    for index, recipient in enumerate(recipients):
        if not isinstance(recipient, str):
            raise ApiError(BAD_REQUEST, f"argument 'recipients[{index}]' must be a string")
    priority = (optional(args, "priority", str) or "normal").upper()
    if priority not in Priority.__members__:
        raise ApiError(BAD_REQUEST, f"unknown priority {priority.lower()!r}")
    notify = optional(args, "notify", int)
    try:
        flags = Notify(Notify.FAILURE if notify is None else notify)
    except ValueError as exc:
        raise ApiError(BAD_REQUEST, f"argument 'notify': {exc}") from None
    send_at = optional(args, "send_at", float)
    kwargs: dict[str, Any] = {}
    message_id = optional(args, "id", str)
    if message_id:
        kwargs["id"] = message_id
    lifetime = optional(args, "lifetime", float)
    if lifetime is not None:
        if lifetime <= 0:
            raise ApiError(BAD_REQUEST, f"argument 'lifetime' must be positive, not {lifetime!r}")
        kwargs["lifetime"] = float(lifetime)
    envelope_id = optional(args, "envelope_id", str)
    if envelope_id is not None:
        kwargs["envelope_id"] = envelope_id
    return_content = optional(args, "return_content", bool)
    if return_content is not None:
        kwargs["return_content"] = return_content
    originals = optional(args, "original_recipients", dict)
    if originals:
        if not all(isinstance(v, str) for v in originals.values()):
            raise ApiError(
                BAD_REQUEST, "argument 'original_recipients' must map recipients to strings"
            )
        kwargs["original_recipients"] = tuple(
            (Address.parse(recipient), original) for recipient, original in originals.items()
        )
    return NewMessage(
        sender=Address.parse(sender) if sender else None,
        recipients=tuple(Address.parse(recipient) for recipient in recipients),
        content=content,
        priority=Priority[priority],
        notify=flags,
        send_at=None if send_at is None else float(send_at),
        **kwargs,
    )


# -- arguments --------------------------------------------------------------------------------
_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
    list: ((list,), "a list"),
    dict: ((dict,), "an object"),
}

#: What a value from ``json.loads`` is, in words.
_JSON_KINDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def optional(args: dict[str, Any], name: str, kind: type) -> Any:
    """Argument ``name`` if given (not null), checked to be of ``kind``; else None."""
    value = args.get(name)
    if value is None:
        return None
    types, what = _KINDS[kind]
    if not isinstance(value, types) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(BAD_REQUEST, f"argument {name!r} must be {what}, not {_json_kind(value)}")
    return value


def required(args: dict[str, Any], name: str, kind: type) -> Any:
    """A required argument: given, of ``kind``, and not an empty string."""
    value = optional(args, name, kind)
    if value is None or (kind is str and not value):
        raise ApiError(BAD_REQUEST, f"argument {name!r} is required ({_KINDS[kind][1]})")
    return value


def limit_of(args: dict[str, Any]) -> int:
    """A listing's ``limit`` argument: 100 if not given, at least 1."""
    limit = optional(args, "limit", int)
    if limit is None:
        return 100
    if limit < 1:
        raise ApiError(BAD_REQUEST, f"argument 'limit' must be at least 1, not {limit}")
    return int(limit)


def _json_kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), "null")


# -- refused at submit ----------------------------------------------------------------
def unroutable_error(table: RoutingTable, messages: Sequence[NewMessage]) -> str | None:
    """Why ``messages`` are refused because a recipient has no route in ``table``
    (:func:`spoolbox.routing.unroutable`), or None.  The daemon answers it as an
    ``unroutable`` error and ``Client.submit`` without a daemon raises it: the whole
    submission is refused, nothing is queued."""
    for index, message in enumerate(messages):
        refused = unroutable(table, (str(address) for address in message.recipients))
        if refused:
            text = describe_unroutable(refused)
            return text if len(messages) == 1 else f"messages[{index}]: {text}"
    return None
