"""RFC 3461's xtext: how DSN parameters (``ENVID=``, ``ORCPT=``) carry any text in an
SMTP command.  A character from ``!`` to ``~`` other than ``+`` and ``=`` stands for
itself; any other byte is ``+`` and two upper-case hex digits (``+2B`` is ``+``)."""

from __future__ import annotations

import re

__all__ = ["decode", "encode"]

_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_SPECIAL = frozenset(" +=")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


def decode(text: str) -> str | None:
    """The text ``text`` encodes (a ``+XX`` above 7F read as Latin-1, as one byte), or
    None if it is not xtext."""
    if _XTEXT.fullmatch(text) is None:
        return None
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)


def encode(text: str) -> str:
    """``text`` as xtext (characters above FF as their UTF-8 bytes)."""
    if text.isascii() and text.isprintable() and not _SPECIAL.intersection(text):
        return text  # "!" to "~" (printable ASCII but the space), no "+" or "=": as it is
    out: list[str] = []
    for ch in text:
        if "!" <= ch <= "~" and ch not in "+=":
            out.append(ch)
        else:
            out.extend(
                f"+{b:02X}" for b in (ch.encode("utf-8") if ord(ch) > 0xFF else bytes([ord(ch)]))
            )
    return "".join(out)
