"""The webhook transport's options, read once at logon (:class:`WebhookSettings`), and
where a recipient's requests go (:meth:`WebhookSettings.target`).

Pure: no network, no httpx.  Two kinds of recipient:

* ``WEBHOOK:name``, a named endpoint: the URL is the ``endpoints`` option's entry for
  ``name``, written by the operator;
* ``HTTP:https://host/path``, a URL in the address itself, accepted only under one of
  the ``url_prefixes`` (scheme, host and port equal, the path inside the prefix's):
  without that rule whoever may submit a message could make the spooler POST to any
  address it can reach.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from spoolbox.contract import OptionError, Unconfigured, option, read_options

__all__ = [
    "HTTP_TYPE",
    "WEBHOOK_TYPE",
    "BadTarget",
    "Target",
    "WebhookSettings",
    "origin",
    "under_prefix",
    "url_problem",
]

#: The address types: a named endpoint, and a URL in the address.
WEBHOOK_TYPE = "WEBHOOK"
HTTP_TYPE = "HTTP"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_BAD_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f\"<>\\^`{|}]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SECONDS = "a positive number of seconds"


def _seconds(default: float) -> Any:
    return option(default, positive=True, what=_SECONDS)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The options of one webhook transport, as written in the profile (see
    :mod:`spoolbox.transports.webhook`), checked."""

    endpoints: dict[str, str] = option(
        factory=dict, what="a mapping of endpoint name to its http(s) URL"
    )
    url_prefixes: tuple[str, ...] = ()
    format: Literal["json", "rfc822"] = "json"
    sign: bool = True
    secret: str | None = option(None, secret=True)
    http: Literal["auto", "1.1", "2"] = "auto"
    verify: bool = True
    ca_file: str | None = None
    proxy: str | None = None
    follow_redirects: bool = False
    max_redirects: int = option(5, low=1, high=20)
    max_connections: int = option(4, low=1, high=1000)
    connect_timeout: float = _seconds(10.0)
    read_timeout: float = _seconds(30.0)
    write_timeout: float = _seconds(30.0)
    pool_timeout: float = _seconds(10.0)
    total_timeout: float = _seconds(120.0)
    max_retry_after: float = option(3600.0, low=0, high=7 * 86400, what="0 to 604800 seconds")
    max_response_size: int = option(65536, low=1, high=1 << 30)
    max_message_size: int | None = option(None, low=1, high=1 << 62)

    def __post_init__(self) -> None:
        for name, url in self.endpoints.items():
            if not _NAME_RE.match(name):
                raise OptionError(
                    f"endpoints.{name}",
                    "is not a usable endpoint name: letters, digits and '._-', "
                    "starting with a letter or digit, at most 64",
                )
            problem = url_problem(url)
            if problem is not None:
                raise OptionError(f"endpoints.{name}", f"must be an http(s) URL: {problem}")
        for i, prefix in enumerate(self.url_prefixes):
            problem = url_problem(prefix)
            if problem is not None:
                raise OptionError(f"url_prefixes[{i}]", f"must be an http(s) URL: {problem}")
            if urllib.parse.urlsplit(prefix).query:
                raise OptionError(f"url_prefixes[{i}]", f"must not have a query: {prefix!r}")
        if self.proxy is not None and url_problem(self.proxy) is not None:
            raise OptionError("proxy", f"must be an http(s) URL: {url_problem(self.proxy)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WebhookSettings:
        """``config`` read and checked; raises OptionError (a ValueError) naming the key
        that is wrong, or Unconfigured for what is missing."""
        o = read_options(cls, config, kind="webhook")
        if not o.endpoints and not o.url_prefixes:
            raise Unconfigured(
                ["endpoints"],
                "name at least one endpoint (endpoints = { orders = "
                '"https://example.org/hooks/orders" }), or allow HTTP: addresses with '
                "url_prefixes",
            )
        if o.sign and o.secret is None:
            raise Unconfigured(
                ["secret"],
                "the HMAC key the requests are signed with: set secret_env or secret_file "
                "(or sign = false to send unsigned requests)",
            )
        return o

    @property
    def signing_secret(self) -> str | None:
        """The HMAC key requests are signed with; None with ``sign = false``."""
        return self.secret if self.sign else None

    @property
    def address_types(self) -> tuple[str, ...]:
        """``WEBHOOK``, and ``HTTP`` when ``url_prefixes`` allows URLs in addresses."""
        return (WEBHOOK_TYPE, HTTP_TYPE) if self.url_prefixes else (WEBHOOK_TYPE,)

    def target(self, address_type: str, value: str) -> Target:
        """Where a recipient's request goes, or :class:`BadTarget` saying why nowhere."""
        if address_type == WEBHOOK_TYPE:
            url = self.endpoints.get(value)
            if url is None:
                known = ", ".join(sorted(self.endpoints)) or "none"
                raise BadTarget(
                    "5.1.1", f"x-spoolbox; no webhook endpoint named {value!r} (known: {known})"
                )
            return Target(url, origin(url), value)
        if address_type == HTTP_TYPE:
            problem = url_problem(value)
            if problem is not None:
                raise BadTarget("5.1.3", f"x-spoolbox; {problem}")
            if not any(under_prefix(value, p) for p in self.url_prefixes):
                raise BadTarget(
                    "5.7.1",
                    f"x-spoolbox; {value} is not under any of this transport's url_prefixes",
                )
            return Target(value, origin(value), value)
        raise BadTarget("5.1.3", f"x-spoolbox; address type {address_type} is not served here")

    def redirect_problem(self, target: Target, to_url: str) -> str | None:
        """Why a redirect of ``target``'s request to ``to_url`` must not be followed, or
        None: a URL we would refuse as an endpoint, a step down from https to http, or
        (for an ``HTTP:`` recipient) a URL outside the ``url_prefixes``."""
        problem = url_problem(to_url)
        if problem is not None:
            return problem
        if _key(target.url)[0] == "https" and _key(to_url)[0] != "https":
            return f"{origin(to_url)} would send the request without TLS"
        if target.name == target.url and not any(
            under_prefix(to_url, p) for p in self.url_prefixes
        ):
            return f"{origin(to_url)} is not under any of this transport's url_prefixes"
        return None

    def describe(self) -> str:
        n = len(self.endpoints)
        what = f"{n} endpoint{'s' if n != 1 else ''}"
        if self.url_prefixes:
            what += f" and URLs under {len(self.url_prefixes)} prefixes"
        signed = "signed" if self.signing_secret is not None else "UNSIGNED"
        return f"posting {self.format} to {what} ({signed}, HTTP {self.http})"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook's URL, or None: an absolute ``http``/``https``
    URL in ASCII with a host, without user name, password or fragment, and without a
    ``.`` or ``..`` path segment (which would step out of a prefix once resolved)."""
    if not url.isascii() or _BAD_URL_CHARS.search(url):
        return f"{url!r} has characters a URL cannot have (spaces, quotes, non-ASCII...)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        return f"{url!r} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r} has a user name or password in it (use the signature instead)"
    if parts.fragment or url.endswith("#"):
        return f"{url!r} has a fragment (#...)"
    if port == 0:
        return f"{url!r} has port 0"
    segments = urllib.parse.unquote(parts.path).split("/")
    if any(s in (".", "..") for s in segments):
        return f"{url!r} has a '.' or '..' path segment"
    return None


def _key(url: str) -> tuple[str, str, int, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return (
        scheme,
        (parts.hostname or "").lower(),
        parts.port or _DEFAULT_PORTS[scheme],
        parts.path or "/",
    )


def under_prefix(url: str, prefix: str) -> bool:
    """Whether ``url`` (a checked URL) is under ``prefix``: the same scheme, host and
    port, and a path equal to the prefix's or below it (``/hooks`` and ``/hooks/`` both
    take ``/hooks/a`` but not ``/hooksmith``)."""
    scheme, host, port, path = _key(url)
    p_scheme, p_host, p_port, p_path = _key(prefix)
    if (scheme, host, port) != (p_scheme, p_host, p_port):
        return False
    base = p_path.rstrip("/")
    return path in (p_path, base) or path.startswith(base + "/")


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what diagnostics name.  The path and query
    are left out: many webhook URLs carry a token in them (and reports go to senders)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme.lower()}://{host}{port}"


class BadTarget(ValueError):
    """A recipient this transport cannot post to; ``status`` is its RFC 3463 code."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class Target:
    """Where one recipient's request goes."""

    url: str
    origin: str
    name: str  # the endpoint's name, or the URL of an HTTP: recipient
