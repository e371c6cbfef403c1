"""One logon of the webhook transport: a POST per recipient, its result reported at once,
the status row and counters, and ``CANCEL_MESSAGE`` as the cancellation of the request
in flight."""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any

from spoolbox.contract import (
    BaseTransportSession,
    LogoffFlags,
    MessageCancelled,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
)

from .._status import ReachabilityRow, results_text
from .exchange import Exchange, Response
from .outcome import Failure, Kind, Verdict, failure_verdict, response_verdict
from .payload import JSON_TYPE, RFC822_TYPE, content_json, idempotency_key, json_body
from .settings import BadTarget, Target, WebhookSettings
from .signature import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, signature_header

__all__ = ["WebhookSession"]

#: Failures that say the endpoint cannot be reached at all: the row shows FAILURE.
_UNREACHABLE = (Kind.CONNECT, Kind.CONNECT_TIMEOUT, Kind.TLS, Kind.TLS_VERIFY)


def _result(rcpt: OutboundRecipient, verdict: Verdict, mta: str | None) -> RecipientResult:
    if verdict.outcome == "delivered":
        return RecipientResult.delivered(rcpt, verdict.text, status=verdict.status, remote_mta=mta)
    if verdict.outcome == "failed":
        return RecipientResult.failed(rcpt, verdict.text, status=verdict.status, remote_mta=mta)
    return RecipientResult.deferred(
        rcpt,
        verdict.text,
        status=verdict.status,
        retry_after=verdict.retry_after,
        remote_mta=mta,
    )


class WebhookSession(BaseTransportSession):
    """One logon of the webhook transport; see :mod:`spoolbox.transports.webhook`."""

    def __init__(
        self, support: Support, settings: WebhookSettings, context: ssl.SSLContext
    ) -> None:
        super().__init__(support)
        self.settings = settings
        self.concurrency = settings.max_connections
        self.exchange = Exchange(settings, context)
        self._inflight: dict[str, asyncio.Future[Response | Failure]] = {}
        self.counts = {"delivered": 0, "failed": 0, "deferred": 0, "requests": 0}
        self.http_versions: dict[str, int] = {}
        self.last_error = ""
        #: Why the last request could not reach its endpoint ("" once one did).
        self.unreachable = ""
        self._row = ReachabilityRow(support)

    def __repr__(self) -> str:
        return f"<WebhookSession {self.settings.describe()}>"

    def address_types(self) -> Collection[str]:
        return self.settings.address_types

    def status_object(self) -> Mapping[str, Any]:
        s = self.settings
        return {
            "endpoints": sorted(s.endpoints),
            "url_prefixes": len(s.url_prefixes),
            "format": s.format,
            "signed": s.signing_secret is not None,
            "http": s.http,
            "verify": s.verify,
            "max_connections": s.max_connections,
            "http_versions": dict(self.http_versions),
            **self.counts,
            "last_error": self.last_error,
        }

    def _update_status(self) -> None:
        if self.unreachable:
            self._row.show(f"cannot post: {self.unreachable}", unreachable=True)
            return
        text = f"{self.counts['delivered']} delivered"
        self._row.show(text + results_text(self.counts, self.last_error))

    # -- notifications ------------------------------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        if flags & TransportNotifyFlags.CANCEL_MESSAGE and ref is not None:
            inflight = self._inflight.get(ref)
            if inflight is not None:
                inflight.cancel()  # the POST in progress stops at its next await

    # -- outbound -------------------------------------------------------------------------------
    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        s = self.settings
        todo: list[tuple[OutboundRecipient, Target]] = []
        refused: list[RecipientResult] = []
        for rcpt in message.recipients:
            try:
                todo.append((rcpt, s.target(rcpt.type, rcpt.value)))
            except BadTarget as bad:
                refused.append(RecipientResult.failed(rcpt, bad.text, status=bad.status))
        if todo and s.max_message_size is not None and message.size > s.max_message_size:
            text = (
                f"x-spoolbox; message of {message.size} bytes is over this transport's "
                f"max_message_size of {s.max_message_size} bytes"
            )
            refused += [RecipientResult.failed(r, text, status="5.3.4") for r, _ in todo]
            todo = []
        if refused:
            await self._report(message, refused)
        if not todo:
            return
        content = await message.content()
        part = b""
        if s.format == "json":
            part = await self.support.run_blocking(content_json, content)
        for rcpt, target in todo:
            # A cancel that came before this request: MessageCancelled, raised here.
            await self.support.spooler_yield()
            body = content if s.format == "rfc822" else self._json(message, rcpt, part)
            result = await self._post(message, rcpt, target, body)
            if result is None:  # cancelled in flight
                raise MessageCancelled(message.ref)
            # Reported at once: a crash after this recipient does not post it again.
            await self._report(message, [result])

    def _json(self, message: OutboundMessage, rcpt: OutboundRecipient, part: bytes) -> bytes:
        sender = message.sender
        head = {
            "idempotency_key": idempotency_key(message.ref, rcpt.index),
            "message_id": message.ref,
            "recipient": str(rcpt.address),
            "sender": str(sender) if sender is not None else None,
            "submitted_at": message.info.submitted_at,
            "attempt": rcpt.attempts + 1,
        }
        return json_body(head, part)

    def _headers(
        self, message: OutboundMessage, rcpt: OutboundRecipient, body: bytes
    ) -> dict[str, str]:
        key = idempotency_key(message.ref, rcpt.index)
        headers = {
            "Content-Type": JSON_TYPE if self.settings.format == "json" else RFC822_TYPE,
            IDEMPOTENCY_HEADER: key,
            "Spoolbox-Message-Id": message.ref,
            "Spoolbox-Recipient": str(rcpt.address),
            "Spoolbox-Attempt": str(rcpt.attempts + 1),
        }
        secret = self.settings.signing_secret
        if secret is not None:
            stamp = int(self.support.now())
            headers[SIGNATURE_HEADER] = signature_header(secret, stamp, key, body)
        return headers

    async def _post(
        self, message: OutboundMessage, rcpt: OutboundRecipient, target: Target, body: bytes
    ) -> RecipientResult | None:
        """The recipient's result, or None when ``CANCEL_MESSAGE`` stopped the request."""
        s = self.settings
        headers = self._headers(message, rcpt, body)
        task = asyncio.ensure_future(
            self.exchange.post(target.url, body, headers, lambda to: s.redirect_problem(target, to))
        )
        self._inflight[message.ref] = task
        try:
            await asyncio.wait([task])
        except BaseException:
            task.cancel()  # our own call was cancelled (shutdown, call_timeout)
            raise
        finally:
            self._inflight.pop(message.ref, None)
        if task.cancelled():
            return None
        got = task.result()
        self.counts["requests"] += 1
        host = urllib.parse.urlsplit(target.url).hostname
        mta = f"dns; {host}" if host else None
        if isinstance(got, Failure):
            verdict = failure_verdict(got, target.origin)
            unreachable = got.kind in _UNREACHABLE
            self.unreachable = verdict.text.removeprefix("x-spoolbox; ") if unreachable else ""
            return _result(rcpt, verdict, mta)
        self.unreachable = ""
        self.http_versions[got.http_version] = self.http_versions.get(got.http_version, 0) + 1
        verdict = response_verdict(
            got.code,
            got.reason,
            got.headers,
            got.first_bytes,
            where=target.origin,
            now=self.support.now(),
            max_retry_after=s.max_retry_after,
            follow_redirects=s.follow_redirects,
            refused_redirect=got.refused_redirect,
        )
        return _result(rcpt, verdict, mta)

    async def _report(self, message: OutboundMessage, results: list[RecipientResult]) -> None:
        await self.support.status_recips(message, results)
        for res in results:
            self.counts[str(res.outcome)] += 1
            if not res.status.startswith("2"):
                self.last_error = res.diagnostic
        self._update_status()

    # -- logoff ---------------------------------------------------------------------------------
    async def logoff(self, flags: LogoffFlags) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self.exchange.aclose()
        self.support.modify_status_row(status_string="logged off")
