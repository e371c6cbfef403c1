"""Mail to SMS text and SMS to mail (pure).

**What of a mail becomes the SMS** (the ``text`` option):

* ``"subject+body"`` (the default): the Subject, a line break, then the first
  ``text/plain`` part; just one of them if the other is empty;
* ``"subject"``: the Subject only; ``"body"``: the first ``text/plain`` part only.

Line ends become LF, trailing white space of each line and blank lines at the start
and end are dropped.  A mail with neither gives the text ``(no text)``.  The text is
then cut to what ``max_parts`` SMS parts can carry (:func:`~.pdu.fit_text`), with
``...`` at the end to show it was cut.

**A received SMS becomes** a ``text/plain; charset=utf-8`` mail: ``From`` the
number (``"+15551234567" <15551234567@sms.invalid>``: ``.invalid`` is never a
real domain), ``Subject: SMS from +15551234567``, ``Date`` the centre's time stamp,
``X-SMS-Sender`` the number as it came.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.utils import format_datetime
from typing import Literal

from .pdu import fit_text

__all__ = ["TextRule", "mail_to_text", "sms_to_mail"]

TextRule = Literal["subject+body", "subject", "body"]


def _plain_part(mail: Message) -> str:
    for part in mail.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            if part.get_content_disposition() == "attachment":
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                return ""
            charset = part.get_content_charset() or "us-ascii"
            try:
                return payload.decode(charset, errors="replace")
            except LookupError:
                return payload.decode("utf-8", errors="replace")
    return ""


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in re.split(r"\r\n|\r|\n", text)]
    return "\n".join(lines).strip("\n")


def mail_to_text(mail: Message, rule: TextRule, max_parts: int) -> tuple[str, bool]:
    """The SMS text of ``mail`` by ``rule``, cut to ``max_parts`` parts; and whether it
    was cut."""
    raw = mail.get("Subject")
    subject = str(make_header(decode_header(str(raw)))) if raw is not None else ""
    subject = _tidy(" ".join(subject.split()))
    body = _tidy(_plain_part(mail)) if rule != "subject" else ""
    if rule == "body":
        subject = ""
    text = "\n".join(part for part in (subject, body) if part) or "(no text)"
    return fit_text(text, max_parts)


def sms_to_mail(sender: str, when: datetime, text: str, message_id: str) -> bytes:
    """The RFC 5322 message an SMS from ``sender`` becomes in the inbox."""
    mail = EmailMessage()
    digits = "".join(ch for ch in sender if ch.isalnum()) or "unknown"
    mail["From"] = f'"{sender}" <{digits}@sms.invalid>'
    mail["Subject"] = f"SMS from {sender}"
    mail["Date"] = format_datetime(when)
    mail["Message-ID"] = message_id
    mail["X-SMS-Sender"] = sender
    mail.set_content(text, charset="utf-8")
    return mail.as_bytes(policy=SMTP)  # CRLF line ends
