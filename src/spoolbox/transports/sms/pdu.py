"""SMS transfer PDUs (3GPP TS 23.040) as pure functions: text split into parts,
SMS-SUBMIT encoded, SMS-DELIVER and SMS-STATUS-REPORT decoded (and the reverse of
each, which the modem simulator and the round-trip tests use).  No I/O.

PDUs are hex strings as AT+CMGS, AT+CMGL, AT+CMGR and +CDS carry them (TS 27.005
3.1), starting with the SMSC address (``00``: the SIM's default centre).

Texts go in the GSM 7-bit default alphabet when every character has a code there
(:mod:`.gsm7`), else in UCS-2 (UTF-16 code units, so that a character outside the
BMP takes two and is never cut between parts).  A text longer than one SMS (160
septets, 70 UCS-2 units) is sent as a concatenated message: each part carries a
user data header (information element 0x00: 8-bit reference, part count, part
number) and holds 153 septets or 67 units; an escape pair or a surrogate pair is
never split between parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from .gsm7 import decode_septets, encode_septets, is_gsm7, pack_septets, unpack_septets

__all__ = [
    "Concat",
    "Deliver",
    "PDUError",
    "StatusReport",
    "Submit",
    "decode_deliver",
    "decode_status_report",
    "decode_submit",
    "encode_deliver",
    "encode_status_report",
    "encode_submit",
    "fit_text",
    "split_text",
    "submit_pdus",
    "validity_code",
]

Coding = Literal["gsm7", "ucs2", "8bit"]

_SINGLE = {"gsm7": 160, "ucs2": 70}
_MULTI = {"gsm7": 153, "ucs2": 67}
_DCS = {"gsm7": 0x00, "8bit": 0x04, "ucs2": 0x08}


class PDUError(ValueError):
    """A PDU that cannot be decoded: says what and where."""


@dataclass(frozen=True, slots=True)
class Concat:
    """The concatenation header of one part: ``ref`` groups the parts, ``seq`` is
    1-based."""

    ref: int
    total: int
    seq: int


@dataclass(frozen=True, slots=True)
class Submit:
    """An SMS-SUBMIT: the hex PDU for AT+CMGS and its TPDU length (octets after the
    SMSC address), and what it carries."""

    pdu: str
    length: int
    number: str
    text: str
    coding: Coding
    concat: Concat | None
    status_report: bool
    mr: int = 0


@dataclass(frozen=True, slots=True)
class Deliver:
    """An SMS-DELIVER (a received message, or one part of it)."""

    sender: str
    timestamp: datetime
    text: str
    coding: Coding
    concat: Concat | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An SMS-STATUS-REPORT: the fate of the submitted message ``mr`` to ``recipient``.
    ``status`` is TP-ST (TS 23.040 9.2.3.15)."""

    mr: int
    recipient: str
    status: int
    discharged: datetime

    @property
    def outcome(self) -> Literal["delivered", "pending", "failed"]:
        """0x00-0x1F: the transaction completed (delivered); 0x20-0x3F: the centre is
        still trying; 0x40 and over: it gave up (permanent error, or a temporary one
        it no longer retries)."""
        if self.status < 0x20:
            return "delivered"
        if self.status < 0x40:
            return "pending"
        return "failed"


# -- text ---------------------------------------------------------------------------------
def _coding(text: str) -> Coding:
    return "gsm7" if is_gsm7(text) else "ucs2"


def _units(text: str, coding: Coding) -> list[list[int]]:
    """Each character as its indivisible units: septets or UTF-16 code units."""
    if coding == "gsm7":
        return [encode_septets(ch) for ch in text]
    out = []
    for ch in text:
        raw = ch.encode("utf-16-be")
        out.append([int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)])
    return out


def split_text(text: str) -> tuple[Coding, list[str]]:
    """The coding and the parts ``text`` is sent in (one part if it fits one SMS)."""
    coding = _coding(text)
    units = _units(text, coding)
    if sum(len(u) for u in units) <= _SINGLE[coding]:
        return coding, [text]
    parts: list[str] = []
    start = used = 0
    for i, unit in enumerate(units):
        if used + len(unit) > _MULTI[coding]:
            parts.append(text[start:i])
            start, used = i, 0
        used += len(unit)
    parts.append(text[start:])
    return coding, parts


def fit_text(text: str, max_parts: int, marker: str = "...") -> tuple[str, bool]:
    """``text`` cut so that it goes in at most ``max_parts`` parts, with ``marker`` at
    the end when it was cut; and whether it was."""
    if len(split_text(text)[1]) <= max_parts:
        return text, False
    low, high = 0, len(text)  # the longest prefix that fits with the marker: in [low, high)
    while high - low > 1:
        mid = (low + high) // 2
        if len(split_text(text[:mid].rstrip() + marker)[1]) <= max_parts:
            low = mid
        else:
            high = mid
    return text[:low].rstrip() + marker, True


# -- fields --------------------------------------------------------------------------------
def _swap(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex("".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2)))


def _unswap(data: bytes) -> str:
    text = "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in data)
    return text.rstrip("F")


def encode_address(number: str) -> bytes:
    """An address field: digit count, type (0x91 international with ``+``, else 0x81),
    digits in swapped semi-octets."""
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not digits or not digits.isdigit() or not digits.isascii() or len(digits) > 20:
        raise ValueError(
            f"SMS number {number!r} must be 1 to 20 digits, with an optional leading '+'"
        )
    return bytes([len(digits), 0x91 if international else 0x81]) + _swap(digits)


def _decode_address(data: bytes, pos: int, what: str) -> tuple[str, int]:
    count, toa = _octets(data, pos, 2, what)
    size = (count + 1) // 2
    raw = bytes(_octets(data, pos + 2, size, what))
    if toa & 0x70 == 0x50:  # alphanumeric: GSM 7-bit packed, count in semi-octets
        return decode_septets(unpack_septets(raw, count * 4 // 7)), pos + 2 + size
    digits = _unswap(raw)[:count]
    return ("+" if toa & 0x70 == 0x10 else "") + digits, pos + 2 + size


def _octets(data: bytes, pos: int, count: int, what: str) -> bytes:
    if pos + count > len(data):
        raise PDUError(f"PDU ends inside its {what} (octet {pos}, {len(data)} octets in all)")
    return data[pos : pos + count]


def _timestamp(raw: bytes) -> datetime:
    """TP-SCTS / TP-DT: year to second in swapped BCD, then the zone in quarter hours
    (bit 3 of the first octet's low nibble: west of Greenwich)."""
    values = [(b & 0x0F) * 10 + (b >> 4) for b in raw[:6]]
    zone = raw[6]
    quarters = (zone & 0x07) * 10 + (zone >> 4)
    offset = timedelta(minutes=15 * quarters * (-1 if zone & 0x08 else 1))
    try:
        year = values[0] + (1900 if values[0] >= 90 else 2000)
        month, day, hour, minute, second = values[1:]
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:
        raise PDUError(f"bad time stamp {raw.hex().upper()}: {exc}") from None


def _encode_timestamp(when: datetime) -> bytes:
    offset = when.utcoffset() or timedelta(0)
    quarters = int(abs(offset.total_seconds()) // 900)
    fields = [when.year % 100, when.month, when.day, when.hour, when.minute, when.second]
    out = bytes((v % 10) << 4 | (v // 10) for v in fields)
    tz = (quarters % 10) << 4 | (quarters // 10) | (0x08 if offset < timedelta(0) else 0)
    return out + bytes([tz])


def validity_code(seconds: float) -> int:
    """TP-VP, relative format (TS 23.040 9.2.3.12.1): the shortest period at least
    ``seconds`` long, at most 63 weeks."""
    minutes = math.ceil(seconds / 60)
    if minutes <= 12 * 60:
        return max(0, math.ceil(minutes / 5) - 1)
    if minutes <= 24 * 60:
        return 143 + math.ceil((minutes - 12 * 60) / 30)
    days = math.ceil(minutes / 1440)
    if days <= 30:
        return 166 + days
    return min(255, 192 + math.ceil(days / 7))


# -- user data -----------------------------------------------------------------------------
def _udh(concat: Concat | None) -> bytes:
    if concat is None:
        return b""
    return bytes([5, 0x00, 3, concat.ref & 0xFF, concat.total, concat.seq])


def _user_data(text: str, coding: Coding, concat: Concat | None) -> tuple[int, bytes]:
    """(TP-UDL, TP-UD) for ``text`` after the header for ``concat``."""
    udh = _udh(concat)
    if coding == "gsm7":
        header_bits = len(udh) * 8
        fill = (7 - header_bits % 7) % 7
        septets = encode_septets(text)
        return (header_bits + fill) // 7 + len(septets), udh + pack_septets(septets, fill)
    body = text.encode("utf-16-be") if coding == "ucs2" else text.encode("latin-1")
    return len(udh) + len(body), udh + body


def _parse_udh(udh: bytes) -> Concat | None:
    pos = 0
    while pos + 2 <= len(udh):
        iei, size = udh[pos], udh[pos + 1]
        value = udh[pos + 2 : pos + 2 + size]
        if iei == 0x00 and size == 3:
            return Concat(value[0], value[1], value[2])
        if iei == 0x08 and size == 4:
            return Concat(int.from_bytes(value[:2], "big"), value[2], value[3])
        pos += 2 + size
    return None


def _dcs_coding(dcs: int) -> Coding:
    group = dcs >> 4
    if group <= 0x07:  # general data coding (with or without compression / class)
        if dcs & 0x20:
            raise PDUError(f"compressed user data (DCS {dcs:#04x}) is not supported")
        return ("gsm7", "8bit", "ucs2", "8bit")[(dcs >> 2) & 0x03]
    if group == 0x0F:
        return "8bit" if dcs & 0x04 else "gsm7"
    if group == 0x0E:
        return "ucs2"
    return "gsm7"  # message waiting indication groups 0xC, 0xD


def _read_user_data(
    data: bytes, pos: int, udhi: bool, coding: Coding, udl: int
) -> tuple[str, Concat | None]:
    rest = data[pos:]
    concat = None
    header = 0
    if udhi:
        header = rest[0] + 1 if rest else 0
        concat = _parse_udh(bytes(_octets(rest, 1, header - 1, "user data header")))
    if coding == "gsm7":
        fill = (7 - header * 8 % 7) % 7
        count = udl - (header * 8 + fill) // 7
        try:
            septets = unpack_septets(rest[header:], max(count, 0), fill)
        except ValueError as exc:
            raise PDUError(str(exc)) from None
        return decode_septets(septets), concat
    body = rest[header:udl]
    if coding == "ucs2":
        return body.decode("utf-16-be", errors="replace"), concat
    return body.decode("latin-1"), concat


def _hex(pdu: str) -> bytes:
    try:
        return bytes.fromhex(pdu.strip())
    except ValueError:
        raise PDUError(f"PDU is not hexadecimal: {pdu[:40]!r}") from None


def _skip_smsc(data: bytes) -> int:
    return 1 + _octets(data, 0, 1, "SMSC address length")[0]


def _open_tpdu(pdu: str, mti: int, name: str) -> tuple[bytes, int, int]:
    """The octets of ``pdu``, the position after its first octet, and that octet;
    PDUError unless its TP-MTI is ``mti``."""
    data = _hex(pdu)
    pos = _skip_smsc(data)
    first = _octets(data, pos, 1, "first octet")[0]
    if first & 0x03 != mti:
        raise PDUError(f"not an {name}: first octet {first:#04x}")
    return data, pos + 1, first


# -- SMS-SUBMIT ----------------------------------------------------------------------------
def encode_submit(
    number: str,
    text: str,
    *,
    coding: Coding | None = None,
    concat: Concat | None = None,
    status_report: bool = False,
    validity: int = 167,
) -> Submit:
    """One SMS-SUBMIT, the SIM's SMSC, relative validity ``validity`` (TP-VP; 167 is
    one day), message reference 0 (the modem assigns it)."""
    coding = coding or _coding(text)
    first = 0x01 | 0x10 | (0x20 if status_report else 0) | (0x40 if concat else 0)
    udl, ud = _user_data(text, coding, concat)
    tpdu = (
        bytes([first, 0x00])
        + encode_address(number)
        + bytes([0x00, _DCS[coding], validity & 0xFF, udl])
        + ud
    )
    pdu = "00" + tpdu.hex().upper()
    return Submit(pdu, len(tpdu), number, text, coding, concat, status_report)


def submit_pdus(
    number: str, text: str, *, ref: int, status_report: bool = False, validity: int = 167
) -> list[Submit]:
    """Every part of ``text`` to ``number`` (one, or a concatenated message whose parts
    share the 8-bit reference ``ref``)."""
    coding, parts = split_text(text)
    if len(parts) > 255:
        raise ValueError(f"a text of {len(parts)} parts is over the 255 an SMS can have")
    return [
        encode_submit(
            number,
            part,
            coding=coding,
            concat=Concat(ref & 0xFF, len(parts), seq) if len(parts) > 1 else None,
            status_report=status_report,
            validity=validity,
        )
        for seq, part in enumerate(parts, 1)
    ]


def decode_submit(pdu: str) -> Submit:
    """An SMS-SUBMIT as the modem receives it (the simulator's side)."""
    data, pos, first = _open_tpdu(pdu, 0x01, "SMS-SUBMIT")
    mr = _octets(data, pos, 1, "message reference")[0]
    number, pos = _decode_address(data, pos + 1, "destination address")
    _pid, dcs = _octets(data, pos, 2, "PID/DCS")
    pos += 2
    vpf = (first >> 3) & 0x03
    pos += {0: 0, 2: 1}.get(vpf, 7)
    udl = _octets(data, pos, 1, "user data length")[0]
    coding = _dcs_coding(dcs)
    text, concat = _read_user_data(data, pos + 1, bool(first & 0x40), coding, udl)
    tpdu = len(data) - _skip_smsc(data)
    return Submit(pdu, tpdu, number, text, coding, concat, bool(first & 0x20), mr)


# -- SMS-DELIVER ---------------------------------------------------------------------------
def encode_deliver(
    sender: str,
    text: str,
    when: datetime,
    *,
    concat: Concat | None = None,
    coding: Coding | None = None,
) -> str:
    """An SMS-DELIVER as a modem lists it (the simulator's side)."""
    coding = coding or _coding(text)
    first = 0x04 | (0x40 if concat else 0)  # TP-MMS: no more messages waiting
    udl, ud = _user_data(text, coding, concat)
    tpdu = (
        bytes([first])
        + encode_address(sender)
        + bytes([0x00, _DCS[coding]])
        + _encode_timestamp(when)
        + bytes([udl])
        + ud
    )
    return "00" + tpdu.hex().upper()


def decode_deliver(pdu: str) -> Deliver:
    """A received SMS-DELIVER: sender, centre time stamp, text, concatenation."""
    data, pos, first = _open_tpdu(pdu, 0x00, "SMS-DELIVER")
    sender, pos = _decode_address(data, pos, "originating address")
    _pid, dcs = _octets(data, pos, 2, "PID/DCS")
    when = _timestamp(bytes(_octets(data, pos + 2, 7, "time stamp")))
    pos += 9
    udl = _octets(data, pos, 1, "user data length")[0]
    coding = _dcs_coding(dcs)
    text, concat = _read_user_data(data, pos + 1, bool(first & 0x40), coding, udl)
    return Deliver(sender, when, text, coding, concat)


# -- SMS-STATUS-REPORT ---------------------------------------------------------------------
def encode_status_report(mr: int, recipient: str, status: int, when: datetime) -> str:
    """An SMS-STATUS-REPORT as +CDS carries it (the simulator's side)."""
    stamp = _encode_timestamp(when)
    tpdu = bytes([0x06, mr & 0xFF]) + encode_address(recipient) + stamp + stamp + bytes([status])
    return "00" + tpdu.hex().upper()


def decode_status_report(pdu: str) -> StatusReport:
    """A status report: which message (TP-MR, recipient) and what became of it."""
    data, pos, _first = _open_tpdu(pdu, 0x02, "SMS-STATUS-REPORT")
    mr = _octets(data, pos, 1, "message reference")[0]
    recipient, pos = _decode_address(data, pos + 1, "recipient address")
    discharged = _timestamp(bytes(_octets(data, pos + 7, 7, "discharge time")))
    status = _octets(data, pos + 14, 1, "status")[0]
    return StatusReport(mr, recipient, status, discharged)
