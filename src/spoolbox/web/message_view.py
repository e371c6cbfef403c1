"""A message as the page shows it: text only, never live HTML (pure functions).

The headers people read (From, To, Cc, Subject, Date, Message-ID), the first
``text/plain`` part (or, when there is none, the first ``text/html`` part with its
tags removed: the page never renders a message's HTML) and the attachments, each
with its index for downloading.  The page puts all of it in ``textContent``, so
whatever a subject or body holds shows as text.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from html import unescape
from typing import Any

__all__ = ["Attachment", "attachment", "message_view"]

_SHOWN_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
#: A body shown is cut to this many characters (the whole is downloadable).
MAX_TEXT = 200_000
_TAG = re.compile(r"<[^>]*>")
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    data: bytes


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _header(message: Message, name: str) -> str | None:
    try:
        value = message.get(name)
    except Exception:  # a header the policy cannot parse: show it raw
        value = message.get_all(name, failobj=[None])[0]
    return None if value is None else str(value)


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except Exception:
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _attachments(message: EmailMessage) -> list[tuple[int, EmailMessage]]:
    found = []
    for index, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        if (
            disposition == "attachment"
            or (disposition != "inline" and part.get_filename() is not None)
            or (part is not message and part.get_content_maintype() not in ("text", "message"))
        ):
            found.append((index, part))
    return found


def message_view(raw: bytes) -> dict[str, Any]:
    """``headers`` (name, value pairs), ``text`` (plain text), ``text_from``
    (``text/plain``, ``text/html`` with tags removed, or None), ``attachments``."""
    message = _parse(raw)
    headers = [
        {"name": name, "value": value}
        for name in _SHOWN_HEADERS
        if (value := _header(message, name)) is not None
    ]
    attached = {index for index, _ in _attachments(message)}
    text, text_from = "", None
    for wanted in ("plain", "html"):
        for index, part in enumerate(message.walk()):
            if (
                index in attached
                or part.is_multipart()
                or part.get_content_type() != f"text/{wanted}"
            ):
                continue
            body = _text_of(part)
            text = body if wanted == "plain" else unescape(_TAG.sub("", _SCRIPT.sub("", body)))
            text_from = f"text/{wanted}"
            break
        if text_from is not None:
            break
    return {
        "headers": headers,
        "text": text[:MAX_TEXT],
        "truncated": len(text) > MAX_TEXT,
        "text_from": text_from,
        "attachments": [
            {
                "index": index,
                "filename": part.get_filename() or f"part-{index}",
                "content_type": part.get_content_type(),
                "size": len(part.get_payload(decode=True) or b""),
            }
            for index, part in _attachments(message)
        ],
    }


def attachment(raw: bytes, index: int) -> Attachment | None:
    """The attachment at ``index`` (as :func:`message_view` lists it), or None."""
    message = _parse(raw)
    for found, part in _attachments(message):
        if found == index:
            data = part.get_payload(decode=True)
            return Attachment(
                index=index,
                filename=part.get_filename() or f"part-{index}",
                content_type=part.get_content_type(),
                data=data if isinstance(data, bytes) else b"",
            )
    return None
