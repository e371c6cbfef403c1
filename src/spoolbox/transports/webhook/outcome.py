"""What an HTTP response, or a failed exchange, means for a recipient.  Pure.

:func:`response_verdict` maps a final response (status, ``Retry-After``,
``Location``, the first bytes of its body); :func:`failure_verdict` maps a
:class:`Failure` kind (the exchange's errors, named without httpx).  The table, as
docs/providers.md shows it:

==========================  =========  =======  ==========================================
response                    outcome    status   notes
==========================  =========  =======  ==========================================
2xx                         delivered  2.0.0
408 Request Timeout         deferred   4.4.2    ``Retry-After`` honoured, capped
425 Too Early               deferred   4.3.0    ``Retry-After`` honoured, capped
429 Too Many Requests       deferred   4.4.5    ``Retry-After`` honoured, capped
5xx                         deferred   4.3.0    507: 4.3.1; ``Retry-After`` honoured, capped
400, 415, 422               failed     5.6.0    the body's first bytes in the diagnostic
401, 403                    failed     5.7.1    "
404, 410                    failed     5.1.1    "
413                         failed     5.3.4    "
other 4xx                   failed     5.0.0    "
3xx not followed            failed     5.1.6    says where to, and why it was not followed
1xx, 600 and above          deferred   4.5.0    not HTTP as we know it
==========================  =========  =======  ==========================================

Redirects are followed only with ``follow_redirects = true``, and then only 307 and
308, which keep the method and the body (:func:`redirect_target`); 301, 302 and 303
would turn the POST into a GET, so they stay permanent failures that say so.
"""

from __future__ import annotations

import email.utils
import enum
import http
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Failure",
    "Kind",
    "Verdict",
    "body_excerpt",
    "failure_verdict",
    "parse_retry_after",
    "redirect_target",
    "response_verdict",
]

#: How much of a refusal's body goes into the diagnostic (characters, after cleaning).
EXCERPT = 200
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]+")
_DELTA_RE = re.compile(r"[0-9]+\Z")

_DEFERRED = {408: "4.4.2", 425: "4.3.0", 429: "4.4.5", 507: "4.3.1"}
_FAILED = {
    400: "5.6.0",
    401: "5.7.1",
    403: "5.7.1",
    404: "5.1.1",
    410: "5.1.1",
    413: "5.3.4",
    415: "5.6.0",
    422: "5.6.0",
}
_KEEP_METHOD = (307, 308)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A recipient's result: ``outcome`` is delivered, deferred or failed."""

    outcome: str
    status: str
    text: str
    retry_after: float | None = None


class Kind(enum.Enum):
    """Why an exchange ended without a response to judge."""

    CONNECT = "connect"  # refused, unreachable, name not found
    CONNECT_TIMEOUT = "connect_timeout"
    WRITE_TIMEOUT = "write_timeout"
    READ_TIMEOUT = "read_timeout"
    POOL_TIMEOUT = "pool_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    DROPPED = "dropped"  # the connection closed or broke mid-exchange
    PROTOCOL = "protocol"  # the peer broke HTTP
    TLS_VERIFY = "tls_verify"
    TLS = "tls"
    TOO_MANY_REDIRECTS = "too_many_redirects"


@dataclass(frozen=True, slots=True)
class Failure:
    """An exchange that failed: its kind, the seconds of the timeout that struck (if
    one did), and the library's words."""

    kind: Kind
    detail: str = ""
    seconds: float | None = None


_FAILURES: Mapping[Kind, tuple[str, str]] = {
    Kind.CONNECT: ("4.4.1", "cannot connect to {where}: {detail}"),
    Kind.CONNECT_TIMEOUT: ("4.4.1", "timed out after {seconds} s connecting to {where}"),
    Kind.WRITE_TIMEOUT: ("4.4.2", "timed out after {seconds} s sending the request to {where}"),
    Kind.READ_TIMEOUT: ("4.4.2", "timed out after {seconds} s waiting for {where} to respond"),
    Kind.POOL_TIMEOUT: ("4.3.0", "no free connection to {where} within {seconds} s"),
    Kind.TOTAL_TIMEOUT: ("4.4.2", "the exchange with {where} took over {seconds} s; gave up"),
    Kind.DROPPED: ("4.4.2", "connection to {where} lost before a complete response: {detail}"),
    Kind.PROTOCOL: ("4.5.0", "{where} broke the HTTP protocol: {detail}"),
    Kind.TLS_VERIFY: ("4.7.5", "TLS certificate of {where} not verified: {detail}"),
    Kind.TLS: ("4.7.0", "TLS failure with {where}: {detail}"),
    Kind.TOO_MANY_REDIRECTS: ("5.4.6", "too many redirects from {where}: {detail}"),
}


def clean(text: str) -> str:
    """``text`` on one line: control characters (and line breaks) as single spaces."""
    return " ".join(_CONTROL_RE.sub(" ", text).split())


def failure_verdict(failure: Failure, where: str) -> Verdict:
    """A failed exchange as the recipient's result: class 4 (retried; the request may
    have arrived, so a retry carries the same idempotency key), except a redirect loop."""
    status, template = _FAILURES[failure.kind]
    seconds = f"{failure.seconds:g}" if failure.seconds is not None else "?"
    text = template.format(where=where, detail=clean(failure.detail), seconds=seconds)
    outcome = "failed" if status.startswith("5") else "deferred"
    return Verdict(outcome, status, f"x-spoolbox; {text}")


def body_excerpt(first_bytes: bytes, content_encoding: str | None = None) -> str:
    """The start of a response body for a diagnostic: decoded as UTF-8 (replacement
    characters for the rest), on one line, at most :data:`EXCERPT` characters."""
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        return f"({content_encoding.strip()}-encoded body not shown)"
    text = clean(first_bytes.decode("utf-8", "replace"))
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3: delay-seconds or an HTTP-date) as seconds from
    ``now`` (0 for a date in the past), or None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_RE.match(value):
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP-date is always GMT; one without a zone is not one
    return max(0.0, when.timestamp() - now)


def redirect_target(code: int, location: str | None, url: str) -> str | None:
    """Where a followed redirect goes: 307 and 308 with a ``Location``, resolved
    against ``url``; None for any other response (judged by :func:`response_verdict`)."""
    if code not in _KEEP_METHOD or not location:
        return None
    return urllib.parse.urljoin(url, location.strip())


def _phrase(code: int) -> str:
    """The standard reason phrase (HTTP/2 has none on the wire), or ""."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def _retry(headers: Mapping[str, str], now: float, cap: float) -> float | None:
    delay = parse_retry_after(headers.get("retry-after"), now)
    return None if delay is None else min(delay, cap)


def response_verdict(
    code: int,
    reason: str,
    headers: Mapping[str, str],
    first_bytes: bytes,
    *,
    where: str,
    now: float,
    max_retry_after: float,
    follow_redirects: bool,
    refused_redirect: str | None = None,
) -> Verdict:
    """A final response as the recipient's result (see the module's table).

    ``headers`` maps lower-case names to values (``retry-after``, ``location``,
    ``content-encoding`` are read); ``first_bytes`` is the start of the body as read
    (bounded by the transport's ``max_response_size``); ``refused_redirect`` says why a
    307/308 that could have been followed was not."""
    line = clean(f"{code} {reason or _phrase(code)}")
    if 200 <= code <= 299:
        return Verdict("delivered", "2.0.0", f"http; {line}")
    excerpt = body_excerpt(first_bytes, headers.get("content-encoding"))
    said = f"http; {line}" + (f": {excerpt}" if excerpt else "")
    if code in _DEFERRED or 500 <= code <= 599:
        retry = _retry(headers, now, max_retry_after)
        return Verdict("deferred", _DEFERRED.get(code, "4.3.0"), f"{said} ({where})", retry)
    if 300 <= code <= 399:
        to = clean(headers.get("location", "")) or "nowhere (no Location)"
        if refused_redirect is not None:
            why = f"not followed: {clean(refused_redirect)}"
        elif not follow_redirects:
            why = "redirects are not followed (follow_redirects = false)"
        elif code in _KEEP_METHOD:
            why = "the redirect has no usable Location"
        else:
            why = f"a {code} would turn the POST into a GET"
        return Verdict(
            "failed",
            "5.1.6",
            f"http; {line} from {where}, to {to}: {why}; point the endpoint at the new URL",
        )
    if 400 <= code <= 499:
        return Verdict("failed", _FAILED.get(code, "5.0.0"), f"{said} ({where})")
    return Verdict("deferred", "4.5.0", f"{said} ({where}: not a final HTTP status)")
