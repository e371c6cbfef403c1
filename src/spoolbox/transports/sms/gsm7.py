"""The GSM 03.38 (3GPP TS 23.038) default alphabet: characters to septets and back,
and septets packed into octets (pure functions, no I/O).

The default alphabet has 128 characters; ten more (``^{}\\[~]|€`` and form feed)
are reached through the extension table, each as two septets: ESC (0x1B) and its
code.  A text with any other character cannot be sent in 7 bits and goes as UCS-2
(:mod:`.pdu` decides).  The tables are those of the standard, as gammu has them
(``libgammu/misc/coding/coding.c``: ``GSM_DefaultAlphabetUnicode``,
``GSM_DefaultAlphabetCharsExtension``).
"""

from __future__ import annotations

__all__ = [
    "ESC",
    "decode_septets",
    "encode_septets",
    "gsm7_length",
    "is_gsm7",
    "pack_septets",
    "unpack_septets",
]

ESC = 0x1B

#: the default alphabet, septet value = index (0x1B, the escape, is a placeholder)
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: the extension table: septet after ESC -> character
_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
assert len(_BASIC) == 128

_TO_BASIC = {ch: code for code, ch in enumerate(_BASIC) if code != ESC}
_TO_EXTENSION = {ch: code for code, ch in _EXTENSION.items()}


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` has a 7-bit code (basic or extension)."""
    return all(ch in _TO_BASIC or ch in _TO_EXTENSION for ch in text)


def gsm7_length(ch: str) -> int:
    """How many septets one character takes: 1 (basic) or 2 (extension)."""
    if ch in _TO_BASIC:
        return 1
    if ch in _TO_EXTENSION:
        return 2
    raise ValueError(f"{ch!r} (U+{ord(ch):04X}) has no GSM 7-bit code: send the text as UCS-2")


def encode_septets(text: str) -> list[int]:
    """``text`` as septet values (extension characters as ESC + code)."""
    out: list[int] = []
    for ch in text:
        if ch in _TO_BASIC:
            out.append(_TO_BASIC[ch])
        elif ch in _TO_EXTENSION:
            out += (ESC, _TO_EXTENSION[ch])
        else:
            gsm7_length(ch)  # raises, saying which character
    return out


def decode_septets(septets: list[int]) -> str:
    """Septet values as text.  An ESC followed by a code the extension table does not
    have shows that code's basic character (TS 23.038 6.2.1.1); a lone ESC at the end
    is dropped."""
    out: list[str] = []
    escaped = False
    for value in septets:
        if escaped:
            escaped = False
            out.append(_EXTENSION.get(value, _BASIC[value] if value != ESC else " "))
        elif value == ESC:
            escaped = True
        else:
            out.append(_BASIC[value & 0x7F])
    return "".join(out)


def pack_septets(septets: list[int], fill_bits: int = 0) -> bytes:
    """Pack septets into octets, least significant bit first (TS 23.038 6.1.2.1.1),
    after ``fill_bits`` zero bits (the padding that aligns the text after a user data
    header to a septet boundary)."""
    nbits = fill_bits
    out = bytearray()
    acc = 0
    for value in septets:
        acc |= (value & 0x7F) << nbits
        nbits += 7
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """``count`` septets from ``data`` packed by :func:`pack_septets`, skipping the first
    ``fill_bits`` bits."""
    value = int.from_bytes(data, "little")
    value >>= fill_bits
    available = (len(data) * 8 - fill_bits) // 7
    if count > available:
        raise ValueError(f"user data holds {available} septets, not the {count} its length says")
    return [(value >> (7 * i)) & 0x7F for i in range(count)]
