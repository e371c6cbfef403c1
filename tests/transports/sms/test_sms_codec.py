"""The SMS codec (spoolbox.transports.sms.gsm7 / .pdu), pure: known vectors from the
specifications and from gammu, and round trips as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.transports.sms import gsm7
from spoolbox.transports.sms.pdu import (
    Concat,
    PDUError,
    decode_deliver,
    decode_status_report,
    decode_submit,
    encode_deliver,
    encode_status_report,
    encode_submit,
    fit_text,
    split_text,
    submit_pdus,
    validity_code,
)

GSM_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCXYZÄÖÑÜ§¿axyzäöñüà^{}\\[~]|€\f"
)
numbers = st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True)


# -- known vectors -------------------------------------------------------------------------
def test_the_classic_submit_vector() -> None:
    # "hellohello" to +46708251358, relative validity 0xAA: the SMS-SUBMIT example every
    # PDU-mode tutorial (and gammu's test suite, in spirit) starts from; TS 23.040 9.2.2.2.
    submit = encode_submit("+46708251358", "hellohello", validity=0xAA)
    assert submit.pdu == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert submit.length == 23  # AT+CMGS=23: the TPDU without the SMSC octet


def test_the_classic_deliver_vector() -> None:
    # The matching SMS-DELIVER (SMSC +27381000015, national sender 27838890001).
    sms = decode_deliver("07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37")
    assert sms.sender == "27838890001"
    assert sms.text == "hellohello"
    assert sms.timestamp == datetime(1999, 3, 29, 15, 16, 59, tzinfo=timezone(timedelta(hours=2)))
    assert sms.concat is None


def test_gammus_status_report_vector() -> None:
    # gammu tests/atgen/smsd-incoming-cds.c: "+CDS:25" and this PDU.
    report = decode_status_report(
        "07914875215652F006360B914892347527F3817003018104808170030181448000"
    )
    assert report.mr == 0x36
    assert report.recipient == "+84294357723"
    assert report.status == 0 and report.outcome == "delivered"
    plus_two = timezone(timedelta(hours=2))
    assert report.discharged == datetime(2018, 7, 30, 10, 18, 44, tzinfo=plus_two)


def test_septet_packing_of_the_spec_example() -> None:
    # TS 23.038 6.1.2.1.1: "hellohello" packs to E8 32 9B FD 46 97 D9 EC 37.
    packed = gsm7.pack_septets(gsm7.encode_septets("hellohello"))
    assert packed.hex().upper() == "E8329BFD4697D9EC37"


def test_the_extension_table_costs_two_septets() -> None:
    assert gsm7.encode_septets("€") == [0x1B, 0x65]
    assert gsm7.encode_septets("[a]") == [0x1B, 0x3C, 0x61, 0x1B, 0x3E]
    assert gsm7.gsm7_length("{") == 2 and gsm7.gsm7_length("a") == 1
    with pytest.raises(ValueError, match="U\\+00E7"):  # ç is not in the default alphabet (Ç is)
        gsm7.encode_septets("ç")


@pytest.mark.parametrize(
    ("text", "coding", "parts"),
    [
        ("a" * 160, "gsm7", 1),
        ("a" * 161, "gsm7", 2),  # 153 + 8
        ("a" * 306, "gsm7", 2),
        ("a" * 307, "gsm7", 3),
        ("€" * 80, "gsm7", 1),  # 160 septets
        ("€" * 81, "gsm7", 2),
        ("ж" * 70, "ucs2", 1),
        ("ж" * 71, "ucs2", 2),  # 67 + 4
        ("😀" * 35, "ucs2", 1),  # 70 UTF-16 units
        ("😀" * 36, "ucs2", 2),
    ],
)
def test_part_limits(text: str, coding: str, parts: int) -> None:
    got_coding, got = split_text(text)
    assert (got_coding, len(got)) == (coding, parts)
    assert "".join(got) == text


def test_an_escape_pair_is_never_cut_between_parts() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the euro sign would straddle septet 153
    _, parts = split_text(text)
    assert parts[0] == "a" * 152 and parts[1] == "€" + "b" * 10


def test_fit_text_cuts_with_a_marker() -> None:
    text, cut = fit_text("word " * 100, 1)
    assert cut and text.endswith("...") and len(split_text(text)[1]) == 1
    assert len(text) > 150  # it keeps what fits, not a token prefix
    assert fit_text("short", 1) == ("short", False)


def test_validity_codes() -> None:
    # TS 23.040 9.2.3.12.1: 0-143 five minutes, 144-167 half hours, 168-196 days, weeks.
    assert validity_code(300) == 0
    assert validity_code(12 * 3600) == 143
    assert validity_code(86400) == 167
    assert validity_code(2 * 86400) == 168
    assert validity_code(10**9) == 255


def test_a_concatenated_submit_carries_its_header() -> None:
    parts = submit_pdus("+15551234567", "x" * 200, ref=0x42, status_report=True)
    assert [p.concat for p in parts] == [Concat(0x42, 2, 1), Concat(0x42, 2, 2)]
    decoded = decode_submit(parts[0].pdu)
    assert decoded.pdu[2:4] == "71"  # SMS-SUBMIT, VPF relative, SRR and UDHI set
    assert decoded.concat == Concat(0x42, 2, 1)
    assert decoded.text == "x" * 153


def test_bad_pdus_say_what_is_wrong() -> None:
    with pytest.raises(PDUError, match="not hexadecimal"):
        decode_deliver("zz")
    with pytest.raises(PDUError, match="ends inside"):
        decode_deliver("0004")
    with pytest.raises(PDUError, match="not an SMS-DELIVER"):
        decode_deliver(encode_submit("+1", "x").pdu)
    with pytest.raises(ValueError, match="digits"):
        encode_submit("+1555-1234", "x")


# -- properties ----------------------------------------------------------------------------
@given(st.lists(st.integers(0, 127), max_size=200), st.integers(0, 6))
def test_septets_pack_and_unpack(septets: list[int], fill: int) -> None:
    packed = gsm7.pack_septets(septets, fill)
    assert gsm7.unpack_septets(packed, len(septets), fill) == septets


@given(st.text(alphabet=GSM_CHARS, max_size=300))
def test_gsm7_text_round_trips(text: str) -> None:
    assert gsm7.decode_septets(gsm7.encode_septets(text)) == text


@given(numbers, st.text(max_size=600))
@example("+15551234567", "a" * 152 + "€")
@example("+1", "😀" * 40)
def test_submit_round_trips_through_its_parts(number: str, text: str) -> None:
    parts = submit_pdus(number, text, ref=7)
    decoded = [decode_submit(p.pdu) for p in parts]
    assert "".join(d.text for d in decoded) == text
    assert {d.number for d in decoded} == {number}
    assert all(d.length == p.length for d, p in zip(decoded, parts, strict=True))
    if len(parts) > 1:
        assert [d.concat.seq for d in decoded if d.concat] == list(range(1, len(parts) + 1))


@given(
    numbers,
    st.text(max_size=70),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2089, 12, 31), timezones=st.just(UTC)
    ),
)
def test_deliver_round_trips(number: str, text: str, when: datetime) -> None:
    when = when.replace(microsecond=0)
    sms = decode_deliver(encode_deliver(number, text, when))
    assert (sms.sender, sms.text, sms.timestamp) == (number, text, when)


@given(numbers, st.integers(0, 255), st.integers(0, 255))
def test_status_report_round_trips(number: str, mr: int, status: int) -> None:
    when = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    report = decode_status_report(encode_status_report(mr, number, status, when))
    assert (report.mr, report.recipient, report.status) == (mr, number, status)
