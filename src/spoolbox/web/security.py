"""What every request to the web page passes: the access token, CSRF, safe headers.

* **The token.**  The first visit carries it in the address (``/?token=...``, as
  ``spoolbox web`` prints it): the answer sets a cookie (HttpOnly, SameSite=Strict)
  holding a value derived from it and redirects to the same address without the
  token, so it is not left in the history or in a ``Referer``.  Every request after
  that needs the cookie, or ``Authorization: Bearer <token>`` (Prometheus, scripts).
  None: 401; a wrong one: 403.
* **CSRF.**  An action is a POST.  One authenticated by the cookie must carry the
  page's CSRF token in the ``X-CSRF-Token`` header (a form on another site cannot
  set it, and the cookie is SameSite=Strict besides), and an ``Origin`` header,
  when the browser sends one, must be this server's.  Else 403.
* **Headers.**  A strict Content-Security-Policy (scripts and styles from this
  server only, no inline script, nothing framed), ``nosniff``, no referrer, no
  caching.

A pure ASGI middleware, so that a streaming answer (Server-Sent Events) goes
through it unbuffered.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .token import csrf_token, same_token

__all__ = ["COOKIE", "CSP", "CSRF_HEADER", "SecurityMiddleware", "cookie_value"]

COOKIE = "spoolbox_web"
CSRF_HEADER = "x-csrf-token"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_Scope = dict[str, Any]
_App = Callable[..., Any]


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself travels once."""
    return hmac.new(token.encode(), b"spoolbox-web-cookie", hashlib.sha256).hexdigest()


class SecurityMiddleware:
    """Checks the token and CSRF of every HTTP request to ``app``; adds the headers."""

    def __init__(self, app: _App, token: str) -> None:
        self._app = app
        self._token = token
        self._cookie = cookie_value(token)
        self._csrf = csrf_token(token)

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for key, value in query if key == "token"]
        if given:
            await self._first_visit(scope, send, given[0], query)
            return
        how = self._authenticated(headers)
        if how is None:
            await _plain(
                send,
                401,
                "The web page needs its token: open the address that `spoolbox web` prints.",
            )
            return
        if how == "wrong":
            await _plain(send, 403, "Wrong token: open the address that `spoolbox web` prints.")
            return
        if scope["method"] not in _SAFE_METHODS and how == "cookie":
            why = self._csrf_refusal(headers)
            if why is not None:
                await _plain(send, 403, why)
                return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self._app(scope, receive, send_with_headers)

    def _authenticated(self, headers: dict[str, str]) -> str | None:
        """``"cookie"``, ``"bearer"``, ``"wrong"`` (one given, not ours) or None."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer" and same_token(credentials.strip(), self._token):
                return "bearer"
            return "wrong"
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(headers["cookie"])
            except Exception:
                return "wrong"
            morsel = jar.get(COOKIE)
            if morsel is not None:
                return "cookie" if same_token(morsel.value, self._cookie) else "wrong"
        return None

    def _csrf_refusal(self, headers: dict[str, str]) -> str | None:
        if not same_token(headers.get(CSRF_HEADER), self._csrf):
            return "Refused: this action needs the page's CSRF token (reload the page)."
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            host = headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                return f"Refused: a request from another origin ({origin})."
        return None

    async def _first_visit(
        self, scope: _Scope, send: Any, token: str, query: list[tuple[str, str]]
    ) -> None:
        if not same_token(token, self._token):
            await _plain(send, 403, "Wrong token: open the address that `spoolbox web` prints.")
            return
        rest = urlencode([(key, value) for key, value in query if key != "token"])
        location = scope.get("path", "/") + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self._cookie}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"content-length", b"0"),
                    *_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def _plain(send: Any, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
