"""RFC 3461's xtext, ``spoolbox.smtp.xtext``: every character from ``!`` to ``~`` but
``+`` and ``=`` stands for itself, any other byte is ``+XX``; text that needs no
``+XX`` comes back as it is (the common case: an ORCPT or ENVID of plain ASCII)."""

from __future__ import annotations

import pytest

from spoolbox.smtp.xtext import decode, encode


def _reference(text: str) -> str:
    """RFC 3461 section 4, byte by byte (characters above FF as their UTF-8 bytes)."""
    out = []
    for ch in text:
        raw = ch.encode("utf-8") if ord(ch) > 0xFF else bytes([ord(ch)])
        for b in raw:
            out.append(chr(b) if 0x21 <= b <= 0x7E and b not in b"+=" else f"+{b:02X}")
    return "".join(out)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rfc822;bob@example.org",
        "01JXYZ-envelope.id_42",
        "a b",
        "a+b=c",
        "tab\there",
        "caf\u00e9",
        "\u65e5\u672c",
        "line\r\nbreak",
        "~!",
        "\x7f",
        "".join(chr(c) for c in range(0x100)),
    ],
)
def test_encode_is_the_rfc_and_decodes_back(text: str) -> None:
    encoded = encode(text)
    assert encoded == _reference(text)
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)
    if all(ord(c) <= 0xFF for c in text):
        assert decode(encoded) == text


def test_plain_text_is_returned_as_it_is() -> None:
    text = "rfc822;" + "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "+=")
    assert encode(text) is text


def test_decode_refuses_what_is_not_xtext() -> None:
    assert decode("a b") is None
    assert decode("+4") is None
    assert decode("+2b") is None  # hex digits are upper case
    assert decode("a+2Bb") == "a+b"
