"""Reading a certificate's validity dates from its DER bytes, checked against the
cryptography package's own reading (trustme's dependency) on real certificates:
dates before 2050 (UTCTime) and after (GeneralizedTime), ECDSA and RSA keys."""

from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography import x509

from spoolbox.ingress.certdates import EXPIRES_SOON, certificate_dates, expiry_problem

UTC = datetime.UTC


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (datetime.datetime(2026, 12, 1, 8, 30, 5, tzinfo=UTC), None),
        (None, datetime.datetime(2027, 3, 1, 23, 59, 59, tzinfo=UTC)),
        (None, datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),  # UTCTime's last
        (None, datetime.datetime(2050, 1, 1, 0, 0, 0, tzinfo=UTC)),  # GeneralizedTime
        (datetime.datetime(1999, 5, 4, 3, 2, 1, tzinfo=UTC), None),  # UTCTime of the 1900s
    ],
)
@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_the_dates_are_those_the_certificate_holds(
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    key_type: trustme.KeyType,
) -> None:
    leaf = trustme.CA(key_type=key_type).issue_cert(
        "mail.example.org", not_before=not_before, not_after=not_after, key_type=key_type
    )
    pem = leaf.private_key_and_cert_chain_pem.bytes()  # key first, as tls_cert may hold
    expected = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    assert certificate_dates(pem) == (
        expected.not_valid_before_utc.timestamp(),
        expected.not_valid_after_utc.timestamp(),
    )


@pytest.mark.parametrize(
    ("pem", "error"),
    [
        (b"", "no certificate in the file"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "bad length"),
        (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "cannot read"),
        (b"-----BEGIN CERTIFICATE-----\nAgEB\n-----END CERTIFICATE-----\n", "not a certificate"),
    ],
)
def test_what_is_not_a_certificate_says_so(pem: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        certificate_dates(pem)


def test_expired_and_soon_expiring_certificates_are_problems() -> None:
    now = 1_800_000_000.0
    assert expiry_problem(now + EXPIRES_SOON + 60, now) is None
    soon = expiry_problem(now + 5 * 86400, now)
    assert soon is not None and "in 5 days" in soon and "renewal" in soon
    gone = expiry_problem(now - 1, now)
    assert gone is not None and gone.startswith("the certificate expired on 2027-01-15")
