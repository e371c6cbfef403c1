"""The returned copy of the original message in a report: what to attach, and how.

The original is whatever a client or a remote MTA handed us, so nothing here trusts
it and nothing here raises on it.  It is never parsed and re-serialised (that would
change it, and the :mod:`email` package can fail on hostile input); instead the raw
bytes are inspected:

* line ends are normalised to CRLF;
* the full original is attached as ``message/rfc822`` verbatim (``7bit`` or, when
  it has 8-bit bytes, ``8bit``, as Postfix does) only if that is valid MIME: no NUL
  and no line over 998 octets (RFC 5322 §2.1.1; ``message/rfc822`` allows no
  encoding that could fix either);
* otherwise, or when only headers are wanted, or when the original is larger than
  the size limit, its header section (everything before the first empty line, cut
  at :data:`MAX_HEADER_SECTION` bytes) is attached as ``text/rfc822-headers``:
  ``7bit`` when it is clean ASCII with short lines, else quoted-printable, which
  carries any bytes at all safely;
* an empty original attaches nothing.

The original's Message-ID is extracted for In-Reply-To/References, but only when
it is a well-formed ``<id>``.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from typing import Literal

__all__ = [
    "MAX_HEADER_SECTION",
    "ReturnedOriginal",
    "message_id_of",
    "needed_bytes",
    "returned_original",
]

#: The header section of an original is cut to this many bytes in a report.
MAX_HEADER_SECTION = 256 * 1024
_MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF
_EOL_RE = re.compile(rb"\r\n|\r|\n")
_LONG_LINE_RE = re.compile(rb"^[^\r\n]{%d}" % (_MAX_LINE + 1), re.MULTILINE)
_MSGID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")


@dataclass(frozen=True, slots=True)
class ReturnedOriginal:
    """What of the original goes into a report, ready to attach.

    ``form`` is ``"message"`` (``data`` is the whole original, attach as
    message/rfc822 with ``cte``), ``"headers"`` (``data`` is the header section,
    already encoded with ``cte``; attach as text/rfc822-headers) or ``"none"``.
    ``note`` is a sentence for the human-readable part, saying what is attached.
    """

    form: Literal["message", "headers", "none"]
    data: bytes
    cte: str
    charset: str | None
    note: str
    message_id: str | None


def _normalise(data: bytes) -> bytes:
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\n") == data.count(b"\r"):
        return data  # CRLF already: no copy of a large original
    return _EOL_RE.sub(b"\r\n", data)


def _header_section(data: bytes) -> bytes:
    """Everything before the first empty line of CRLF-normalised ``data``, CRLF-ended."""
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _has_long_line(data: bytes) -> bool:
    """A line of CRLF-normalised ``data`` is over 998 octets (found without splitting
    ``data`` into a list of lines)."""
    return _LONG_LINE_RE.search(data) is not None


def _why_not_embeddable(data: bytes) -> str | None:
    if b"\x00" in data:
        return "it contains NUL bytes"
    if _has_long_line(data):
        return f"it has lines longer than {_MAX_LINE} octets"
    return None


def _quoted_printable(data: bytes) -> bytes:
    """Quoted-printable of CRLF-normalised ``data``, line by line, LF-separated."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(binascii.b2a_qp(line) + b"\n" for line in lines)


def message_id_of(headers: bytes) -> str | None:
    """The first Message-ID of a header section if it is a well-formed ``<id>``, else None."""
    try:
        parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(headers)
        value = parsed.get("message-id")
        if value is None:
            return None
        text = "".join(str(value).split())
    except Exception:  # hostile headers: no threading, but never a failed report
        return None
    return text if _MSGID_RE.fullmatch(text) else None


def _headers_only(data: bytes, note: str, message_id: str | None) -> ReturnedOriginal:
    section = _header_section(data)
    if not section.strip():
        note = "Your message has no header section, so nothing of it is attached."
        return ReturnedOriginal("none", b"", "7bit", None, note, message_id)
    if len(section) > MAX_HEADER_SECTION:
        cut = section[:MAX_HEADER_SECTION]
        last = cut.rfind(b"\r\n")
        section = cut[: last + 2] if last > 0 else cut + b"\r\n"
        note += f" The header section was cut to {len(section)} bytes."
    if section.isascii() and b"\x00" not in section and not _has_long_line(section):
        return ReturnedOriginal("headers", section, "7bit", None, note, message_id)
    charset: str | None = None
    if not section.isascii():
        try:
            section.decode("utf-8")
            charset = "utf-8"  # RFC 6532 headers, most likely
        except UnicodeDecodeError:
            charset = None  # unknown 8-bit bytes: no honest label exists
    return ReturnedOriginal(
        "headers", _quoted_printable(section), "quoted-printable", charset, note, message_id
    )


def needed_bytes(size: int, size_limit: int) -> int | None:
    """How much of an original of ``size`` bytes a report can use: all of it (None),
    or, when it is too large to return, the beginning that holds what is returned of
    it (its header section, cut at :data:`MAX_HEADER_SECTION`)."""
    return None if size <= size_limit else 2 * MAX_HEADER_SECTION


def returned_original(
    original: bytes, *, full: bool, size_limit: int, size: int | None = None
) -> ReturnedOriginal:
    """Decide what of ``original`` a report returns; never raises on its content.

    ``full`` asks for the whole message (RFC 3461 RET=FULL); it is still cut to its
    headers when larger than ``size_limit`` bytes or when it cannot be valid
    message/rfc822 content.  ``size`` is the original's size when ``original`` is
    only its beginning (see :func:`needed_bytes`).
    """
    raw = bytes(original)
    if not raw or raw.isspace():
        return ReturnedOriginal("none", b"", "7bit", None, "The original message was empty.", None)
    total = len(raw) if size is None else size
    too_large = total > size_limit
    # Only the header section is needed unless the whole message is returned, and
    # it is cut at MAX_HEADER_SECTION: don't copy megabytes to find it.
    data = _normalise(raw if full and not too_large else raw[: 2 * MAX_HEADER_SECTION])
    message_id = message_id_of(_header_section(data)[:MAX_HEADER_SECTION])
    if not full:
        return _headers_only(data, "The header section of your message is attached.", message_id)
    if too_large:
        return _headers_only(
            data,
            f"Your message was too large ({total} bytes) to return in full; "
            "only its header section is attached.",
            message_id,
        )
    reason = _why_not_embeddable(data)
    if reason is not None:
        return _headers_only(
            data,
            f"Your message cannot be returned as a message because {reason}; "
            "its header section is attached as text.",
            message_id,
        )
    cte = "7bit" if data.isascii() else "8bit"
    return ReturnedOriginal(
        "message", data, cte, None, "Your message is attached as it was sent.", message_id
    )
