"""One POST and its response, over httpx: the transport's only I/O.

An :class:`Exchange` holds one ``httpx.AsyncClient`` per logon: its connection pool
(``max_connections``, kept alive between messages), HTTP/1.1 and/or HTTP/2 (``http``:
``"auto"`` offers both by ALPN over TLS and speaks HTTP/1.1 in the clear, ``"2"``
speaks HTTP/2 only, in the clear with prior knowledge: h2c), the timeouts per phase
(``connect``, ``write``, ``read``, ``pool``) and, over all of them, ``total_timeout``
for the whole exchange redirects included.  Proxies come only from the ``proxy``
option (``trust_env`` is off: the daemon's environment does not redirect mail).

:meth:`Exchange.post` returns a :class:`Response` (status, headers, the first
``max_response_size`` bytes of the body, read raw: a compressed body is not
inflated) or a :class:`~.outcome.Failure` naming what went wrong; it raises nothing
but cancellation.  A body past the limit is not read further: the connection is
closed instead of drained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from .outcome import Failure, Kind, redirect_target
from .settings import WebhookSettings

__all__ = ["Exchange", "Response", "classify"]

USER_AGENT = "spoolbox-webhook/1"
#: Seconds an idle connection is kept for the next message (httpx's default is 5).
_KEEPALIVE = 30.0


@dataclass(frozen=True, slots=True)
class Response:
    """A final response: ``headers`` by lower-case name, ``first_bytes`` of its body."""

    code: int
    reason: str
    headers: Mapping[str, str]
    first_bytes: bytes
    http_version: str
    url: str
    refused_redirect: str | None = None  # why a 307/308 was not followed


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


_TIMEOUTS: Mapping[type[httpx.TimeoutException], tuple[Kind, str]] = {
    httpx.ConnectTimeout: (Kind.CONNECT_TIMEOUT, "connect_timeout"),
    httpx.WriteTimeout: (Kind.WRITE_TIMEOUT, "write_timeout"),
    httpx.ReadTimeout: (Kind.READ_TIMEOUT, "read_timeout"),
    httpx.PoolTimeout: (Kind.POOL_TIMEOUT, "pool_timeout"),
}
#: What httpcore and h11 say when the peer closed or reset the connection (a
#: RemoteProtocolError): a lost connection, not a peer that speaks bad HTTP.
_DROPPED_WORDS = ("closed", "disconnected", "ConnectionTerminated", "reset")


def classify(exc: httpx.HTTPError, settings: WebhookSettings) -> Failure:
    """An httpx error as a :class:`Failure` (the timeouts with their seconds)."""
    detail = str(exc) or type(exc).__name__
    for cls, (kind, option) in _TIMEOUTS.items():
        if isinstance(exc, cls):
            return Failure(kind, detail, float(getattr(settings, option)))
    verify = _cause(exc, ssl.SSLCertVerificationError)
    if isinstance(verify, ssl.SSLCertVerificationError):
        return Failure(Kind.TLS_VERIFY, verify.verify_message or str(verify))
    tls = _cause(exc, ssl.SSLError)
    if tls is not None:
        return Failure(Kind.TLS, str(tls))
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        return Failure(Kind.CONNECT, detail)
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return Failure(Kind.DROPPED, detail)
    if isinstance(exc, httpx.RemoteProtocolError) and any(w in detail for w in _DROPPED_WORDS):
        return Failure(Kind.DROPPED, detail)
    return Failure(Kind.PROTOCOL, detail)


class Exchange:
    """The HTTP client of one logon of the webhook transport."""

    def __init__(self, settings: WebhookSettings, context: ssl.SSLContext) -> None:
        self.settings = settings
        s = settings
        self.client = httpx.AsyncClient(
            verify=context,
            http1=s.http != "2",
            http2=s.http != "1.1",
            limits=httpx.Limits(
                max_connections=s.max_connections,
                max_keepalive_connections=s.max_connections,
                keepalive_expiry=_KEEPALIVE,
            ),
            timeout=httpx.Timeout(
                connect=s.connect_timeout,
                read=s.read_timeout,
                write=s.write_timeout,
                pool=s.pool_timeout,
            ),
            follow_redirects=False,
            proxy=s.proxy,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        redirect_problem: Callable[[str], str | None],
    ) -> Response | Failure:
        """POST ``body`` to ``url``; 307 and 308 are followed (with ``follow_redirects``)
        to a URL ``redirect_problem`` finds nothing wrong with, ``max_redirects`` times."""
        s = self.settings
        try:
            async with asyncio.timeout(s.total_timeout):
                for _ in range(s.max_redirects + 1):
                    got = await self._once(url, body, headers)
                    if not s.follow_redirects or isinstance(got, Failure):
                        return got
                    target = redirect_target(got.code, got.headers.get("location"), url)
                    if target is None:
                        return got
                    problem = redirect_problem(target)
                    if problem is not None:
                        return dataclasses.replace(got, refused_redirect=problem)
                    url = target
        except TimeoutError:
            return Failure(Kind.TOTAL_TIMEOUT, "", s.total_timeout)
        return Failure(Kind.TOO_MANY_REDIRECTS, f"more than {s.max_redirects}")

    async def _once(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response | Failure:
        limit = self.settings.max_response_size
        request = self.client.build_request("POST", url, content=body, headers=dict(headers))
        try:
            response = await self.client.send(request, stream=True)
            try:
                first = bytearray()
                async for chunk in response.aiter_raw():
                    first += chunk[: limit - len(first)]
                    if len(first) >= limit:
                        break  # bounded: the rest is never read (the connection is closed)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            return classify(exc, self.settings)
        return Response(
            code=response.status_code,
            reason=response.reason_phrase,
            headers={k.lower(): v for k, v in response.headers.items()},
            first_bytes=bytes(first),
            http_version=response.http_version,
            url=url,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
