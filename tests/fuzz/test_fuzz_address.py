"""Fuzz target: :meth:`spoolbox.model.Address.parse`.

Either it returns an Address whose type is a valid type (a letter, then up to 31
letters, digits or ``_.+-``, upper-case), whose value has no control character and
no surrounding space, and whose ``str`` parses back to the same Address; or it raises
:class:`~spoolbox.model.AddressError` (a ``ValueError``) with a message.  Nothing else.
"""

from __future__ import annotations

import re

from fuzz_settings import budget
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.model import Address, AddressError

_TYPE = re.compile(r"[A-Z][A-Z0-9_.+-]{0,31}", re.ASCII)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_VALID_TYPE = st.from_regex(r"[A-Za-z][A-Za-z0-9_.+-]{0,31}", fullmatch=True)
_TYPES = st.one_of(
    st.sampled_from(["SMTP", "smtp", "MAILDIR", "X400", "FAX", "x-y", "A" * 32, "A" * 33, "1X"]),
    st.builds(  # a valid type with something before or after it
        "{}{}{}".format,
        st.sampled_from(["", "", " ", "\n", "\x00"]),
        _VALID_TYPE,
        st.sampled_from(["", "\n", "\r", " ", "\t", "\x00", "\u0130", "\u212a"]),
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=34),
    st.text(max_size=6),
)
_VALUES = st.one_of(
    st.sampled_from(["bob@example.org", "/var/mail/bob", "a:b", " x", "x ", "", "x" * 999]),
    st.text(max_size=40),
    st.text(st.sampled_from("ab:@ \t\r\n\x00\x85\u2028\u00e9\u0130"), max_size=12),
)
_TEXT = st.one_of(
    st.builds(
        lambda t, sep, v: t + sep + v, _TYPES, st.sampled_from([":", ":", "", "::"]), _VALUES
    ),
    st.text(max_size=60),
)


@budget(500)
@given(text=_TEXT, default_type=st.one_of(st.none(), _TYPES))
@example(text="SMTP\n:bob@example.org", default_type=None).via("a type ending in a newline")
@example(text="bob@example.org", default_type="SMTP\n").via("a default type ending in a newline")
def test_parse_gives_a_valid_address_that_round_trips_or_address_error(
    text: str, default_type: str | None
) -> None:
    address: Address | None = None
    try:
        address = Address.parse(text, default_type=default_type)
    except AddressError as exc:
        error = str(exc)
    else:
        error = ""
    if error or address is None:
        assert error, "an AddressError without a message"
        return
    assert _TYPE.fullmatch(address.type), address
    assert address.value
    assert _CONTROL.search(address.value) is None
    assert address.value == address.value.strip()
    assert len(address.value) <= 998
    assert Address.parse(str(address)) == address
    head, sep, tail = text.partition(":")
    if address.value == tail and sep:
        assert address.type == head.upper()
    else:
        assert default_type is not None
        assert (address.type, address.value) == (default_type.upper(), text)
