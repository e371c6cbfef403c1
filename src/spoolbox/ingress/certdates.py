"""The validity dates of a PEM certificate, read from its DER bytes (the standard
library's :mod:`ssl` decodes a certificate only after a verified handshake).

``spoolbox check`` says when a listener's certificate expires, and calls one that has
expired, or expires within :data:`EXPIRES_SOON`, a problem: a renewal that stopped
working shows there weeks before clients meet an expired certificate.
"""

from __future__ import annotations

import base64
import calendar
import re
import time

__all__ = ["EXPIRES_SOON", "certificate_dates", "expiry_problem"]

#: A certificate that expires within this many seconds is a problem (certbot and
#: acme.sh renew 30 days before the end: at 14 days left, renewal has failed).
EXPIRES_SOON = 14 * 86400

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_SEQUENCE, _UTC_TIME, _GENERALIZED_TIME, _VERSION = 0x30, 0x17, 0x18, 0xA0


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at ``at``: its tag, where its content starts and ends."""
    if at + 2 > len(der):
        raise ValueError("truncated")
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4 or at + n > len(der):
            raise ValueError("bad length")
        length = int.from_bytes(der[at : at + n], "big")
        at += n
    if at + length > len(der):
        raise ValueError("truncated")
    return tag, at, at + length


def _time(tag: int, text: bytes) -> float:
    value = text.decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ: 50-99 are 1950-1999 (RFC 5280 4.1.2.5.1)
        year = int(value[:2])
        value = f"{1900 + year if year >= 50 else 2000 + year}{value[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError("a validity date is not a time")
    return float(calendar.timegm(time.strptime(value, "%Y%m%d%H%M%SZ")))


def certificate_dates(pem: bytes) -> tuple[float, float]:
    """(not before, not after) of the first certificate in ``pem``, as Unix times;
    ValueError when there is none or it cannot be read."""
    found = _PEM.search(pem)
    if found is None:
        raise ValueError("no certificate in the file")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
        tag, start, _ = _element(der, 0)  # Certificate
        if tag != _SEQUENCE:
            raise ValueError("not a certificate")
        tag, at, _ = _element(der, start)  # TBSCertificate
        if tag != _SEQUENCE:
            raise ValueError("not a certificate")
        fields = 4 if der[at] == _VERSION else 3  # version?, serial, signature, issuer
        for _ in range(fields):
            _, _, at = _element(der, at)
        tag, at, _ = _element(der, at)  # Validity
        if tag != _SEQUENCE:
            raise ValueError("no validity")
        tag, start, end = _element(der, at)
        not_before = _time(tag, der[start:end])
        tag, start, end = _element(der, end)
        return not_before, _time(tag, der[start:end])
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the certificate's dates: {exc}") from None


def expiry_problem(not_after: float, now: float) -> str | None:
    """Why a certificate valid until ``not_after`` is a problem at ``now``, or None."""
    day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after))
    if not_after <= now:
        return f"the certificate expired on {day}"
    if not_after - now < EXPIRES_SOON:
        days = (not_after - now) / 86400
        return f"the certificate expires on {day}, in {days:.0f} days: has its renewal failed?"
    return None
