"""What the webhook transport POSTs: the message as JSON (schema ``spoolbox.webhook/1``)
or as raw ``message/rfc822``, and the idempotency key of a recipient.  Pure.

The JSON body is one object, UTF-8, keys in this order::

    {
      "schema": "spoolbox.webhook/1",
      "idempotency_key": "3f2a...e1.0",     # also the Idempotency-Key header
      "message_id": "3f2a...e1",            # the spooler's id of the message
      "recipient": "WEBHOOK:orders",        # this request's recipient
      "sender": "SMTP:alice@example.org",   # or null
      "submitted_at": 1764753600.25,        # Unix seconds
      "attempt": 1,                         # 1, then 2... for each retry
      "subject": "Order 42",                # decoded (RFC 2047), "" when none
      "headers": [["From", "Alice <alice@example.org>"], ...],  # in order, decoded
      "text": "Hello...",                   # the text/plain body, or null
      "html": null,                         # the text/html body, or null
      "attachments": [
        {"filename": "a.pdf", "content_type": "application/pdf", "size": 1234,
         "content_base64": "JVBERi0..."}
      ]
    }

``text`` and ``html`` are the parts the standard library's ``get_body`` picks (the
preferred alternative of each kind), with LF line breaks; every other leaf part is an
attachment (``filename`` null when it has none; ``size`` in bytes after decoding).  Text that
cannot be decoded in its declared charset is decoded as UTF-8 with replacement
characters; nothing is dropped silently.  A receiver must ignore keys it does not
know: later versions of schema 1 may add keys, never change or remove one (a change
would be ``spoolbox.webhook/2``).

The message part (``subject`` to ``attachments``, the costly part with the base64) is
built once per message (:func:`content_json`, in a worker thread) and joined to each
recipient's head (:func:`json_body`) without being encoded again.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

__all__ = ["JSON_TYPE", "RFC822_TYPE", "SCHEMA", "content_json", "idempotency_key", "json_body"]

SCHEMA = "spoolbox.webhook/1"
JSON_TYPE = "application/json"
RFC822_TYPE = "message/rfc822"


def idempotency_key(message_id: str, index: int) -> str:
    """The key of one recipient of one message: the same at every attempt, after a
    crash too (both parts are in the store), different for every other recipient."""
    return f"{message_id}.{index}"


def _clean(text: str) -> str:
    """``text`` as valid Unicode: bytes the parser kept as surrogates become U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError, AssertionError):  # an unknown or lying charset
        content = None
    if not isinstance(content, str):
        raw = part.get_payload(decode=True)
        content = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return _clean(content).replace("\r\n", "\n")


def _attachment(part: Message) -> dict[str, Any]:
    raw = part.get_payload(decode=True)
    data = raw if isinstance(raw, bytes) else b""
    name = part.get_filename()
    return {
        "filename": _clean(name) if name else None,
        "content_type": part.get_content_type(),
        "size": len(data),
        "content_base64": base64.b64encode(data).decode("ascii"),
    }


def content_json(content: bytes) -> bytes:
    """The message's part of the JSON body (``subject`` ... ``attachments``), as a JSON
    object in UTF-8.  CPU-bound on a large message: run it in a worker thread."""
    msg = BytesParser(policy=policy.default).parsebytes(content)
    assert isinstance(msg, EmailMessage)
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    bodies = [p for p in (text, html) if p is not None]
    attachments = [
        _attachment(part)
        for part in msg.walk()
        if not part.is_multipart() and not any(part is b for b in bodies)
    ]
    subject = msg.get("subject")
    part = {
        "subject": _clean(str(subject)) if subject is not None else "",
        "headers": [[_clean(name), _clean(str(value))] for name, value in msg.items()],
        "text": _text_of(text) if text is not None else None,
        "html": _text_of(html) if html is not None else None,
        "attachments": attachments,
    }
    return json.dumps(part, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_body(head: Mapping[str, Any], content: bytes) -> bytes:
    """One recipient's JSON body: ``{"schema": ...}`` then ``head`` (the recipient's
    keys) then the message's part (:func:`content_json`), joined as bytes."""
    first = json.dumps(
        {"schema": SCHEMA, **head}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    return first[:-1] + b"," + content[1:]
