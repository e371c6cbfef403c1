"""The SMS transport's bookkeeping, as pure functions over plain values (what the
profile section stores): the SIM listing grouped into whole received messages, and
the sent messages waiting for their delivery reports.

**Inbound.** ``AT+CMGL=4`` lists the SIM; :func:`parse_listing` reads it and
:func:`whole_messages` groups the parts of concatenated messages (same sender,
reference and part count) and keeps those that are complete, each with a ``key``
(a hash of its SIM indices and PDUs) that names it across restarts.  The session
records the key with the inbox message (``set_state``, one transaction) and deletes
the parts from the SIM only after the commit: a key found on the SIM again is a
message already in the inbox, deleted without delivering it twice.

**Delivery reports.** :func:`expect` records, per recipient (``"<message id>/<index>"``),
the number and the message references (TP-MR) of its parts; :func:`apply_report`
marks a part with the TP-ST of its report; :func:`verdict` says whether a recipient
is delivered (every part delivered), failed (a part failed), timed out, or still
pending.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .pdu import Deliver, PDUError, StatusReport, decode_deliver

__all__ = [
    "Listed",
    "Whole",
    "apply_report",
    "expect",
    "parse_listing",
    "verdict",
    "whole_messages",
]


@dataclass(frozen=True, slots=True)
class Listed:
    """One ``+CMGL: <index>,<stat>,[<alpha>],<length>`` entry and its PDU."""

    index: int
    pdu: str


@dataclass(frozen=True, slots=True)
class Whole:
    """A complete received message: its SIM indices (parts in order) and text."""

    key: str
    indices: tuple[int, ...]
    sender: str
    when: datetime
    text: str


def parse_listing(lines: Sequence[str]) -> list[Listed]:
    """The entries of an ``AT+CMGL`` answer (header line, then PDU line)."""
    out: list[Listed] = []
    header: int | None = None
    for line in lines:
        if line.startswith("+CMGL:"):
            header = int(line[6:].split(",")[0])
        elif header is not None:
            out.append(Listed(header, line.strip()))
            header = None
    return out


def whole_messages(listed: Sequence[Listed]) -> tuple[list[Whole], list[Listed]]:
    """Complete messages in SIM order, and the entries that are not SMS-DELIVER PDUs
    (left alone).  Parts of an incomplete concatenated message wait for the rest."""
    groups: dict[tuple[str, int, int], list[tuple[Listed, Deliver]]] = {}
    order: list[tuple[str, int, int]] = []
    bad: list[Listed] = []
    for entry in listed:
        try:
            sms = decode_deliver(entry.pdu)
        except PDUError:
            bad.append(entry)
            continue
        concat = sms.concat
        group = (sms.sender, concat.ref, concat.total) if concat else (sms.sender, -entry.index, 1)
        if group not in groups:
            groups[group] = []
            order.append(group)
        groups[group].append((entry, sms))
    out = []
    for group in order:
        parts = groups[group]
        by_seq = {sms.concat.seq if sms.concat else 1: (e, sms) for e, sms in parts}
        if sorted(by_seq) != list(range(1, group[2] + 1)):
            continue  # not all parts are here yet
        ordered = [by_seq[seq] for seq in sorted(by_seq)]
        digest = hashlib.sha256()
        for entry, _sms in ordered:
            digest.update(f"{entry.index}:{entry.pdu};".encode())
        first = ordered[0][1]
        out.append(
            Whole(
                digest.hexdigest()[:24],
                tuple(e.index for e, _ in ordered),
                first.sender,
                first.timestamp,
                "".join(sms.text for _, sms in ordered),
            )
        )
    return out, bad


# -- delivery reports ------------------------------------------------------------------------
Awaiting = dict[str, dict[str, Any]]


def expect(
    awaiting: Mapping[str, Any], key: str, number: str, mrs: Sequence[int], now: float
) -> Awaiting:
    """``awaiting`` with recipient ``key`` waiting for reports on ``mrs``."""
    out: Awaiting = dict(awaiting)
    out[key] = {"number": number, "mrs": list(mrs), "sent": now, "st": {}}
    return out


def apply_report(awaiting: Mapping[str, Any], report: StatusReport) -> tuple[Awaiting, str | None]:
    """``awaiting`` with ``report`` applied, and the recipient key it was for (None if
    no recipient waits for it: an old or a foreign report).  A "still trying" status
    (0x20-0x3F) changes nothing."""
    out: Awaiting = {key: dict(entry) for key, entry in awaiting.items()}
    for key, entry in sorted(out.items(), key=lambda item: -float(item[1]["sent"])):
        statuses = dict(entry["st"])
        if entry["number"] != report.recipient or report.mr not in entry["mrs"]:
            continue
        if str(report.mr) in statuses:
            continue
        if report.outcome != "pending":
            statuses[str(report.mr)] = report.status
            entry["st"] = statuses
        return out, key
    return out, None


def verdict(
    entry: Mapping[str, Any], now: float, timeout: float
) -> tuple[Literal["delivered", "failed", "timeout", "pending"], str]:
    """What became of one recipient, and a diagnostic saying so."""
    statuses: dict[str, int] = entry["st"]
    failed = [f"{mr}: TP-ST {st:#04x}" for mr, st in statuses.items() if st >= 0x40]
    if failed:
        return "failed", "SMS status report: not delivered (" + ", ".join(failed) + ")"
    if len(statuses) == len(entry["mrs"]):
        refs = ", ".join(str(mr) for mr in entry["mrs"])
        return "delivered", f"SMS status report: delivered (message reference {refs})"
    if now - float(entry["sent"]) >= timeout:
        return "timeout", f"accepted by the SMS centre; no status report within {timeout:g} s"
    return "pending", ""
