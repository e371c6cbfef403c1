"""Webhook signatures: how the transport signs a request, and how a receiver checks it.

Standard library only, so a receiver can use :func:`verify_signature` with nothing
but spoolbox installed (no httpx).  The scheme is Stripe's, with the idempotency key
also signed (as the Standard Webhooks specification signs its ``webhook-id``), so
that a replayed request cannot pass as a new delivery by changing the key:

* the request carries ``Idempotency-Key: <key>`` and
  ``Spoolbox-Signature: t=<unix seconds>,v1=<hex>``;
* ``<hex>`` is HMAC-SHA256, keyed with the shared secret (its UTF-8 bytes), of
  ``"<t>.<key>."`` (ASCII) followed by the request body, byte for byte;
* a receiver recomputes it over the body it received, compares in constant time, and
  refuses a timestamp more than ``tolerance`` seconds from its clock (a replay).

A header may carry several ``v1=`` values (one per secret while a secret is being
changed); one match is enough.
"""

from __future__ import annotations

import hmac
import re
import time

__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "SignatureError",
    "sign",
    "signature_header",
    "verify_signature",
]

SIGNATURE_HEADER = "Spoolbox-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: How far a signature's timestamp may be from the receiver's clock by default (s).
DEFAULT_TOLERANCE = 300.0
_HEX_RE = re.compile(r"[0-9a-f]{64}\Z")


class SignatureError(ValueError):
    """The request's signature does not check out; the text says why."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, idempotency_key: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<idempotency_key>."`` and ``body``."""
    mac = hmac.new(_key(secret), f"{timestamp}.{idempotency_key}.".encode("ascii"), "sha256")
    mac.update(body)
    return mac.hexdigest()


def signature_header(secret: str | bytes, timestamp: int, idempotency_key: str, body: bytes) -> str:
    """The ``Spoolbox-Signature`` header's value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={timestamp},v1={sign(secret, timestamp, idempotency_key, body)}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    signature: str | None,
    idempotency_key: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a request; returns its timestamp, or raises :class:`SignatureError`.

    ``body`` is the request body as received (before any JSON parsing);
    ``signature`` and ``idempotency_key`` are the values of the ``Spoolbox-Signature``
    and ``Idempotency-Key`` headers (None when absent).  ``now`` defaults to
    ``time.time()``.  Only after this returns should the receiver act on the body,
    and then once per idempotency key.
    """
    if not signature:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    if not idempotency_key:
        raise SignatureError(f"no {IDEMPOTENCY_HEADER} header")
    if not idempotency_key.isascii():
        raise SignatureError(f"the {IDEMPOTENCY_HEADER} header is not ASCII")
    stamps: list[str] = []
    macs: list[str] = []
    for item in signature.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            stamps.append(value)
        elif name == "v1":
            macs.append(value.lower())
    if len(stamps) != 1 or not stamps[0].isdigit() or not stamps[0].isascii():
        raise SignatureError(f"{SIGNATURE_HEADER} needs exactly one t=<unix seconds>")
    timestamp = int(stamps[0])
    if not macs:
        raise SignatureError(f"{SIGNATURE_HEADER} has no v1= signature")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise SignatureError(
            f"the signature's timestamp {timestamp} is {clock - timestamp:+.0f} s from now, "
            f"outside the tolerance of {tolerance:g} s (a replay, or a wrong clock)"
        )
    expected = sign(secret, timestamp, idempotency_key, body)
    if not any(_HEX_RE.match(m) and hmac.compare_digest(m, expected) for m in macs):
        raise SignatureError("no v1 signature matches (wrong secret, or the body was changed)")
    return timestamp
