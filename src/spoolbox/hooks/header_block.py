"""A message's header section as bytes: split into fields, rebuilt unchanged but for
the fields a hook removes or adds.

Pure functions; nothing here parses or re-encodes a header's value, so a message
whose headers are not touched comes back byte for byte (DKIM signatures made before
survive), and the body is never looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.header import decode_header, make_header

__all__ = ["Field", "HeaderBlock", "split"]


@dataclass(frozen=True, slots=True)
class Field:
    """One header field: its raw lines (folded continuation lines included)."""

    raw: bytes

    @property
    def name(self) -> str:
        return self.raw.split(b":", 1)[0].strip().decode("ascii", "replace")

    @property
    def value(self) -> str:
        """The unfolded value, RFC 2047 words decoded (for matching; never written)."""
        text = self.raw.split(b":", 1)[1] if b":" in self.raw else b""
        unfolded = b" ".join(text.split()).decode("utf-8", "replace")
        try:
            return str(make_header(decode_header(unfolded)))
        except Exception:
            return unfolded


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    fields: tuple[Field, ...]
    body: bytes  # from the blank line on (the blank line included), or b""
    newline: bytes  # the message's own line end: b"\r\n" or b"\n"

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [f.value for f in self.fields if f.name.lower() == wanted]

    def without(self, drop: Callable[[Field], bool]) -> HeaderBlock:
        return HeaderBlock(tuple(f for f in self.fields if not drop(f)), self.body, self.newline)

    def adding(self, items: Iterable[tuple[str, str]], *, top: bool = False) -> HeaderBlock:
        new = tuple(Field(f"{n}: {v}".encode() + self.newline) for n, v in items)
        fields = new + self.fields if top else self.fields + new
        return HeaderBlock(fields, self.body, self.newline)

    def to_bytes(self) -> bytes:
        return b"".join(f.raw for f in self.fields) + self.body


def split(content: bytes) -> HeaderBlock:
    """The header fields of ``content`` and the rest (a line that is neither a field
    nor a continuation ends the header section, as a blank line does)."""
    newline = b"\r\n" if b"\r\n" in content[: content.find(b"\n") + 1 or len(content)] else b"\n"
    fields: list[bytearray] = []
    pos = 0
    size = len(content)
    while pos < size:
        end = content.find(b"\n", pos)
        end = size if end < 0 else end + 1
        line = content[pos:end]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif line.strip() and b":" in line.split(b"\n")[0] and not line[:1].isspace():
            fields.append(bytearray(line))
        else:
            break
        pos = end
    return HeaderBlock(tuple(Field(bytes(f)) for f in fields), content[pos:], newline)
