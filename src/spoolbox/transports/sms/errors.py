"""What a modem's error means for a recipient (pure): ``+CMS ERROR: <n>`` codes
classified temporary or permanent, with an RFC 3463 status and the code's name.

Codes and names are those of 3GPP TS 24.011 annex E-2 (0-127), TS 23.040 9.2.3.22
(128-255) and TS 27.005 3.2.5 (300-511), as gammu lists them
(``libgammu/phone/at/atgen.c``, ``CMSErrorCodes``); which are temporary follows
gammu's ``ATGEN_HandleCMSError`` (network out of order, temporary failure,
congestion, resources unavailable, protocol error, no network service, network
timeout: ``ERR_NETWORK_ERROR``) plus the busy codes (SC busy, SIM busy, SIM
toolkit busy, ME failure, memory full, unknown error).  Everything else is
permanent: the number or the message is refused, and trying again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CmsVerdict", "classify_cms"]

_NAMES = {
    1: "unassigned (unallocated) number",
    8: "operator determined barring",
    10: "call barred",
    21: "short message transfer rejected",
    27: "destination out of service",
    28: "unidentified subscriber",
    29: "facility rejected",
    30: "unknown subscriber",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable",
    50: "requested facility not subscribed",
    69: "requested facility not implemented",
    96: "invalid mandatory information",
    111: "protocol error",
    0xC0: "SC busy",
    0xC1: "no SC subscription",
    0xC2: "SC system failure",
    0xC3: "invalid SME address",
    0xC4: "destination SME barred",
    0xD4: "SIM application toolkit busy",
    300: "ME failure",
    302: "operation not allowed",
    304: "invalid PDU mode parameter",
    314: "SIM busy",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    500: "unknown error",
}
_TEMPORARY = frozenset({38, 41, 42, 47, 111, 0xC0, 0xC2, 0xD4, 300, 314, 322, 331, 332, 500})
_STATUS = {1: "5.1.1", 28: "5.1.1", 30: "5.1.1", 0xC3: "5.1.3", 8: "5.7.1", 10: "5.7.1"}
_STATUS |= {0xC4: "5.7.1", 331: "4.4.1", 332: "4.4.1", 38: "4.4.1"}


@dataclass(frozen=True, slots=True)
class CmsVerdict:
    """What to do with a recipient after ``+CMS ERROR: code``."""

    code: int
    temporary: bool
    status: str  # RFC 3463
    text: str  # "+CMS ERROR: 1 (unassigned (unallocated) number)"


def classify_cms(code: int) -> CmsVerdict:
    """The verdict for ``+CMS ERROR: code``."""
    temporary = code in _TEMPORARY
    status = _STATUS.get(code, "4.3.0" if temporary else "5.3.0")
    name = _NAMES.get(code, "unknown code")
    return CmsVerdict(code, temporary, status, f"+CMS ERROR: {code} ({name})")
