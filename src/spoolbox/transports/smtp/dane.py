"""DANE for direct delivery (RFC 7672, with ``dane = true``): an MX host whose TLSA
records DNSSEC vouches for gets the mail only over TLS whose certificate matches one
of them.

When it applies (section 2.2): the domain's MX records and the MX host's addresses
came with the "authenticated data" (AD) bit of a validating resolver (the
``nameservers``: a resolver on this host, such as unbound, that checks DNSSEC; the AD
bit of a resolver elsewhere is only as good as the path to it), and the TLSA records
at ``_<port>._tcp.<MX host>`` came authenticated too.  Then:

* records that can be used (below): STARTTLS is required, and the server's own
  certificate must match one of them (a server without STARTTLS, or whose
  certificate matches none, is passed over, its failure said, the mail waits);
  the certificate's names, issuer and dates are not looked at (DANE-EE, section 3.1.1);
* records, none usable: STARTTLS is required, the certificate is not checked
  (section 2.2: TLS that is not authenticated, never plain text);
* no records (an authenticated denial, or an answer without AD): delivery as
  without DANE;
* the TLSA lookup failed (no answer, SERVFAIL): the host is not used (section
  2.2.1: an attacker who blocks the lookup must not get plain text); the next MX
  host is tried, and with none left the mail waits.

Usable records: certificate usage 3 (DANE-EE, the server's own certificate or
public key), selector 0 (the whole certificate) or 1 (its SubjectPublicKeyInfo),
matching type 0 (exact), 1 (SHA-256) or 2 (SHA-512).  Usage 2 (DANE-TA, a trust
anchor of the server's chain) is not checked: the standard library shows a client
only the server's own certificate (Python 3.13 adds the chain); with only such
records a host gets TLS that is not authenticated.  Usages 0 and 1 are not for SMTP
(section 3.1.3).

The TLSA records are looked up at the MX host's name as its MX record gives it (an MX
record must not name an alias, RFC 2181 section 10.3; for one that does, RFC 7672
section 2.2.2 would try the alias's target first, which is not done here).  Where a
domain has both, DANE wins over MTA-STS for the hosts it covers (RFC 8461 section 2).
:func:`usable`, :func:`spki_of` and :func:`matches` are pure; the lookups are
:class:`~.mx.MXResolver`'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["TLSA", "matches", "spki_of", "usable"]

#: Certificate usage 3, DANE-EE: the server's own certificate.
DANE_EE = 3
_DIGESTS = {0: None, 1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True, slots=True)
class TLSA:
    """One TLSA record: usage, selector, matching type, and the association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}"


def usable(records: Iterable[TLSA]) -> tuple[TLSA, ...]:
    """The records this client can check (module doc): DANE-EE, selector 0 or 1,
    matching type 0, 1 or 2, with data of the digest's length."""
    out = []
    for r in records:
        if r.usage != DANE_EE or r.selector not in (0, 1) or r.mtype not in _DIGESTS:
            continue
        digest = _DIGESTS[r.mtype]
        if digest is not None and len(r.data) != digest().digest_size:
            continue
        if not r.data:
            continue
        out.append(r)
    return tuple(out)


def matches(records: Sequence[TLSA], certificate: bytes) -> TLSA | None:
    """The first of ``records`` that the server's certificate (DER) matches, or None.
    A certificate whose SubjectPublicKeyInfo cannot be found matches no selector-1
    record."""
    spki: bytes | None = None
    for r in records:
        if r.selector == 0:
            what = certificate
        else:
            if spki is None:
                try:
                    spki = spki_of(certificate)
                except ValueError:
                    spki = b""
            if not spki:
                continue
            what = spki
        digest = _DIGESTS.get(r.mtype)
        value = what if digest is None else digest(what).digest()
        if value == r.data:
            return r
    return None


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at ``at``: its tag, where its content starts, where it ends."""
    if at + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[at], der[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    end = at + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, at, end


def spki_of(certificate: bytes) -> bytes:
    """The SubjectPublicKeyInfo (DER, tag and length included) of an X.509
    certificate in DER: the seventh element of its TBSCertificate (the sixth when the
    version is left out).  ValueError when it is not such a certificate."""
    tag, start, _ = _tlv(certificate, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a certificate (no SEQUENCE)")
    tag, at, tbs_end = _tlv(certificate, start)  # TBSCertificate
    if tag != 0x30:
        raise ValueError("not a certificate (no TBSCertificate)")
    index = 0
    first = True
    while at < tbs_end:
        tag, _, end = _tlv(certificate, at)
        if first and tag == 0xA0:  # [0] version: not counted
            first = False
            at = end
            continue
        first = False
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        if index == 5:
            if tag != 0x30:
                raise ValueError("not a certificate (no SubjectPublicKeyInfo)")
            return certificate[at:end]
        index += 1
        at = end
    raise ValueError("not a certificate (too few fields)")
