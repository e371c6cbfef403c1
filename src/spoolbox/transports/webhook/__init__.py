"""The webhook transport (address types ``WEBHOOK`` and ``HTTP``): a message POSTed to an
HTTP endpoint, signed, once per recipient.

Recipients:

* ``WEBHOOK:orders``: the endpoint named ``orders`` in the ``endpoints`` option (the
  usual way: the operator decides where requests go);
* ``HTTP:https://hooks.example.org/orders/42``: a URL in the address, taken only
  under one of the ``url_prefixes`` (same scheme, host and port, and a path at or
  below the prefix's).  Without ``url_prefixes`` the transport does not serve ``HTTP``.

Each recipient gets its own request, reported as soon as its response is in (so a
crash never posts a recipient whose result was recorded again), with:

* the body: the message as JSON (``format = "json"``, the default; the schema
  ``spoolbox.webhook/1`` is in :mod:`.payload` and docs/providers.md) or the message's
  bytes as they are (``format = "rfc822"``, ``Content-Type: message/rfc822``);
* ``Idempotency-Key: <message id>.<recipient index>``: the same at every attempt of
  that recipient, after a crash too, so a receiver drops what it already has;
* ``Spoolbox-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 with the ``secret``
  over ``"<t>.<idempotency key>."`` and the body (:mod:`.signature`, whose
  :func:`verify_signature` a receiver can call);
* ``Spoolbox-Message-Id``, ``Spoolbox-Recipient`` and ``Spoolbox-Attempt`` (1, 2...).

Configuration (the transport's ``options`` in the profile):

``endpoints``
    A table of name to ``http(s)://`` URL.  ``endpoints`` or ``url_prefixes`` is
    required (else the logon fails with :class:`~spoolbox.contract.Unconfigured`).
``url_prefixes``
    URLs under which ``HTTP:`` recipients are accepted (default: none).
``format``
    ``"json"`` (default) or ``"rfc822"``.
``secret`` (``secret_env``, ``secret_file``)
    The HMAC key.  Required unless ``sign = false`` (which logs a warning at logon).
``http``
    ``"auto"`` (default: HTTP/2 or HTTP/1.1 by ALPN over TLS, HTTP/1.1 in the clear),
    ``"1.1"``, or ``"2"`` (HTTP/2 only; in the clear with prior knowledge, h2c).
``verify``, ``ca_file``
    TLS certificate checks, on by default (``verify = false`` is logged as a
    warning); ``ca_file``: a PEM bundle to trust instead of the system's.
``proxy``
    An ``http(s)://`` proxy.  The environment's proxy variables are not used.
``follow_redirects``, ``max_redirects``
    Default false and 5.  When true, 307 and 308 are followed (same method and
    body) to a URL that is valid, not a step down from https to http, and for an
    ``HTTP:`` recipient under ``url_prefixes``.  Any other 3xx fails the recipient
    (5.1.6) with a text that says where it points and why it was not followed.
``max_connections``
    Default 4: the connection pool's size and the session's ``concurrency``.
``connect_timeout``, ``write_timeout``, ``read_timeout``, ``pool_timeout``
    Seconds per phase (10, 30, 30, 10): making a connection, sending a piece of the
    request, waiting for a piece of the response, waiting for a free connection.
``total_timeout``
    Seconds for the whole exchange, redirects included (default 120): a server that
    drips its response a byte at a time does not hold a message for ever.
``max_retry_after``
    The longest ``Retry-After`` honoured, in seconds (default 3600).
``max_response_size``
    Bytes of a response body read (default 65536; the rest is not read and the
    connection is closed).  A refusal's first 200 characters go into the diagnostic.
``max_message_size``
    Optional: larger messages fail with 5.3.4 before any request.

Results: see the table in :mod:`.outcome` (2xx delivered; 408, 425, 429, 5xx
deferred with ``Retry-After``; other 4xx and 3xx failed; network errors and
timeouts deferred).  Diagnostics name the endpoint's origin (``https://host``), never
its path or query, which often carry a token.  ``transport_notify(CANCEL_MESSAGE)``
cancels the request in flight; the message then ends cancelled.

The package: ``settings`` (the options, where a recipient's request goes),
``payload`` (the JSON body, the idempotency key), ``signature`` (signing and
verifying; standard library only), ``outcome`` (responses and failures as results,
pure), ``exchange`` (httpx: the pool, one POST with a bounded read), ``session``
(a message's requests and results), ``provider`` (logon; imports no httpx).
"""

from typing import Any

from .provider import MISSING_EXTRA, WebhookProvider
from .settings import WebhookSettings
from .signature import SignatureError, signature_header, verify_signature

__all__ = [
    "MISSING_EXTRA",
    "SignatureError",
    "WebhookProvider",
    "WebhookSession",
    "WebhookSettings",
    "signature_header",
    "verify_signature",
]


def __getattr__(name: str) -> Any:
    # WebhookSession on first use: its module imports httpx (the ``webhook`` extra),
    # which the provider, and so the entry point, does without.
    if name == "WebhookSession":
        from .session import WebhookSession

        return WebhookSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
