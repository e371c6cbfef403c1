"""The webhook transport, through the real spooler, against a real HTTP server (Hypercorn,
in the test's loop, on a free loopback port: webhook_servers.py) that answers with each
class of status, slowly, never, with a connection dropped mid-response, with an endless
body, over HTTP/1.1, HTTP/2 over TLS and h2c, and checks every signature."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from webhook_servers import (
    HOST,
    SECRET,
    WAIT,
    Answer,
    Receiver,
    http_server,
    open_spooler,
    options,
    send,
    serving,
)

from spoolbox import Address, MessageState, NewMessage, RecipientState
from spoolbox.contract import StatusCode
from spoolbox.testing import check_provider
from spoolbox.transports.webhook import MISSING_EXTRA, verify_signature

CONTENT = (
    b"From: alice@example.org\r\nTo: orders@example.org\r\nSubject: order 42\r\n"
    b"Message-ID: <order42@test>\r\n\r\nOne blue widget.\r\n"
)


def message(*rcpts: str, content: bytes = CONTENT) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=content,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- delivered, and what the receiver gets ------------------------------------------------------
async def test_a_message_is_posted_as_signed_json() -> None:
    receiver = Receiver(secret=SECRET)
    async with http_server(receiver) as srv, open_spooler(options(srv)) as sp:
        state, recs = await send(sp, message("WEBHOOK:hook"))
        row = sp.status["webhook"]
    assert state is MessageState.SENT
    assert (recs[0].status, recs[0].diagnostic) == ("2.0.0", "http; 200 OK")
    [req] = receiver.requests
    mid = recs[0].message_id
    assert req.path == "/hook"
    assert req.verified == "ok"
    assert req.http_version == "1.1"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["idempotency-key"] == f"{mid}.0"
    assert req.headers["spoolbox-message-id"] == mid
    assert req.headers["spoolbox-recipient"] == "WEBHOOK:hook"
    assert req.headers["spoolbox-attempt"] == "1"
    assert req.headers["user-agent"] == "spoolbox-webhook/1"
    doc = json.loads(req.body)
    assert doc["schema"] == "spoolbox.webhook/1"
    assert doc["idempotency_key"] == f"{mid}.0"
    assert (doc["message_id"], doc["recipient"], doc["attempt"]) == (mid, "WEBHOOK:hook", 1)
    assert doc["sender"] == "SMTP:alice@example.org"
    assert doc["subject"] == "order 42"
    assert doc["text"] == "One blue widget.\n"
    assert row.status_string == "1 delivered"


async def test_rfc822_posts_the_message_bytes_as_they_are() -> None:
    receiver = Receiver(secret=SECRET)
    async with http_server(receiver) as srv, open_spooler(options(srv, format="rfc822")) as sp:
        state, _ = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.SENT
    [req] = receiver.requests
    assert req.body == CONTENT
    assert req.headers["content-type"] == "message/rfc822"
    assert req.verified == "ok"


async def test_each_recipient_gets_its_own_request_key_and_result() -> None:
    receiver = Receiver(secret=SECRET)
    receiver.answer("/other", Answer(404, body=b"no such hook"))
    async with http_server(receiver) as srv:
        opts = options(srv, endpoints={"hook": f"{srv.url}/hook", "other": f"{srv.url}/other"})
        async with open_spooler(opts) as sp:
            _, recs = await send(sp, message("WEBHOOK:hook", "WEBHOOK:other", "WEBHOOK:nope"))
    assert [r.state for r in recs] == [
        RecipientState.DELIVERED,
        RecipientState.FAILED,
        RecipientState.FAILED,
    ]
    assert recs[1].status == "5.1.1"
    assert recs[1].diagnostic.startswith("http; 404 Not Found: no such hook (http://127.0.0.1:")
    assert recs[2].diagnostic == (
        "x-spoolbox; no webhook endpoint named 'nope' (known: hook, other)"
    )
    mid = recs[0].message_id
    assert [(r.path, r.headers["idempotency-key"]) for r in receiver.requests] == [
        ("/hook", f"{mid}.0"),
        ("/other", f"{mid}.1"),
    ]


async def test_a_recipient_is_recorded_before_the_next_request_starts() -> None:
    # So a crash during the second request does not post the first again.
    receiver = Receiver()
    receiver.answer("/slow", Answer(hang=True))
    async with http_server(receiver) as srv:
        opts = options(srv, endpoints={"hook": f"{srv.url}/hook", "slow": f"{srv.url}/slow"})
        opts.update(read_timeout=60, total_timeout=60)
        async with open_spooler(opts) as sp:
            info = await sp.submit(message("WEBHOOK:hook", "WEBHOOK:slow"))
            async with asyncio.timeout(WAIT):
                assert (await receiver.arrived.get()).path == "/hook"
                assert (await receiver.arrived.get()).path == "/slow"
            first, second = await sp.store.recipients(info.id)
            assert first.state is RecipientState.DELIVERED
            assert second.state is RecipientState.ACTIVE
            await sp.cancel(info.id)


# -- temporary and permanent refusals ------------------------------------------------------------
async def test_a_temporary_refusal_is_retried_after_retry_after_with_the_same_key() -> None:
    receiver = Receiver(secret=SECRET)
    receiver.answer("/hook", Answer(503, (("Retry-After", "1"),), b"busy"), Answer(200))
    async with http_server(receiver) as srv, open_spooler(options(srv)) as sp:
        info = await sp.submit(message("WEBHOOK:hook"))
        assert await sp.wait_for(info.id, timeout=WAIT) is MessageState.SENT
        [rec] = await sp.store.recipients(info.id)
    first, second = receiver.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == f"{info.id}.0"
    assert (first.headers["spoolbox-attempt"], second.headers["spoolbox-attempt"]) == ("1", "2")
    assert json.loads(second.body)["attempt"] == 2
    assert first.verified == second.verified == "ok"
    assert rec.attempts == 2


@pytest.mark.parametrize(("code", "status"), [(408, "4.4.2"), (425, "4.3.0"), (429, "4.4.5")])
async def test_retry_after_is_capped_by_max_retry_after(code: int, status: str) -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(code, (("Retry-After", "86400"),), b"later"))
    async with serving(receiver, max_retry_after=30) as (_, sp):
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.DEFERRED
    assert rec.status == status
    assert rec.retry_at - rec.updated_at == pytest.approx(30, abs=1)


async def test_a_permanent_refusal_fails_with_the_first_bytes_of_the_body() -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(422, body=b'{"error": "bad order"}' + b" " * 100_000 + b"END"))
    async with http_server(receiver) as srv, open_spooler(options(srv)) as sp:
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.FAILED
    assert rec.status == "5.6.0"
    assert rec.diagnostic.startswith('http; 422 Unprocessable Entity: {"error": "bad order"}')
    assert "END" not in (rec.diagnostic or "")


async def test_a_receiver_that_refuses_the_signature_fails_the_recipient() -> None:
    receiver = Receiver(secret=SECRET)
    async with serving(receiver, secret="not-the-secret") as (_, sp):
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.FAILED
    assert rec.status == "5.7.1"
    assert "bad signature: no v1 signature matches" in (rec.diagnostic or "")
    assert receiver.keys_done == []


async def test_an_unsigned_transport_sends_no_signature(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()
    caplog.set_level(logging.WARNING)
    async with http_server(receiver) as srv:
        opts = options(srv, sign=False)
        del opts["secret"]
        async with open_spooler(opts) as sp:
            state, _ = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.SENT
    assert "spoolbox-signature" not in receiver.requests[0].headers
    assert "sign=false, its requests carry no signature" in caplog.text


# -- redirects -----------------------------------------------------------------------------------
async def test_a_redirect_is_not_followed_by_default() -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(308, (("Location", "/moved"),), b""))
    async with http_server(receiver) as srv, open_spooler(options(srv)) as sp:
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.FAILED
    assert rec.status == "5.1.6"
    assert "308 Permanent Redirect from http://127.0.0.1:" in (rec.diagnostic or "")
    assert "to /moved: redirects are not followed (follow_redirects = false)" in (
        rec.diagnostic or ""
    )
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_307_and_308_are_followed_when_allowed_with_the_same_body() -> None:
    receiver = Receiver(secret=SECRET)
    receiver.answer("/hook", Answer(307, (("Location", "/moved"),), b""))
    async with serving(receiver, follow_redirects=True) as (_, sp):
        state, _ = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.SENT
    first, second = receiver.requests
    assert (first.path, second.path) == ("/hook", "/moved")
    assert second.body == first.body
    assert second.verified == "ok"


async def test_a_redirect_that_would_change_post_to_get_fails() -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(302, (("Location", "/moved"),), b""))
    receiver.answer("/loop", Answer(307, (("Location", "/loop"),), b""))
    async with http_server(receiver) as srv:
        opts = options(srv, follow_redirects=True, max_redirects=3)
        opts["endpoints"]["loop"] = f"{srv.url}/loop"
        async with open_spooler(opts) as sp:
            _, [rec] = await send(sp, message("WEBHOOK:hook"))
            _, [loop] = await send(sp, message("WEBHOOK:loop"))
    assert rec.status == "5.1.6"
    assert "a 302 would turn the POST into a GET" in (rec.diagnostic or "")
    assert loop.status == "5.4.6"
    assert "too many redirects from http://127.0.0.1:" in (loop.diagnostic or "")
    assert [r.path for r in receiver.requests] == ["/hook", "/loop", "/loop", "/loop", "/loop"]


# -- slow, silent, broken and endless ----------------------------------------------------------
async def test_a_slow_receiver_times_out_and_defers() -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(delay=WAIT))
    async with serving(receiver, read_timeout=0.5) as (_, sp):
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.DEFERRED
    assert rec.status == "4.4.2"
    assert "timed out after 0.5 s waiting for http://127.0.0.1:" in (rec.diagnostic or "")


async def test_total_timeout_bounds_the_whole_exchange() -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(hang=True))
    async with serving(receiver, read_timeout=60, total_timeout=0.5) as (_, sp):
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.DEFERRED
    assert "took over 0.5 s; gave up" in (rec.diagnostic or "")


async def test_a_connection_dropped_mid_response_defers_and_the_retry_has_the_same_key() -> None:
    receiver = Receiver(secret=SECRET)
    receiver.answer("/hook", Answer(200, body=b"accepted" * 100, drop_after=20), Answer(200))
    async with serving(receiver, policy={"retry_base": 0.5, "retry_jitter": 0.0}) as (_, sp):
        info = await sp.submit(message("WEBHOOK:hook"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=WAIT)
        [rec] = await sp.store.recipients(info.id)
        assert rec.status == "4.4.2"
        assert "lost before a complete response" in (rec.diagnostic or "")
        assert await sp.wait_for(info.id, timeout=WAIT) is MessageState.SENT
    first, second = receiver.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    # the receiver had acted on the first: the second is the duplicate it drops
    assert receiver.keys_done == [first.headers["idempotency-key"]]


@pytest.mark.parametrize(("code", "state"), [(200, MessageState.SENT), (500, None)])
async def test_an_endless_body_is_read_only_up_to_max_response_size(
    code: int, state: MessageState | None
) -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(code, endless=True))
    async with serving(receiver, max_response_size=4096) as (_, sp):
        got, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert got is (state or MessageState.DEFERRED)
    if code == 500:
        assert rec.status == "4.3.0"
        assert (rec.diagnostic or "").startswith("http; 500 Internal Server Error: xxxxxxxx")
        assert len(rec.diagnostic or "") < 300


async def test_no_listener_defers_and_marks_the_row_failing() -> None:
    port = free_port()
    opts = {"endpoints": {"hook": f"http://{HOST}:{port}/hook"}, "secret": SECRET}
    async with open_spooler(opts) as sp:
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
        row = sp.status["webhook"]
    assert state is MessageState.DEFERRED
    assert rec.status == "4.4.1"
    assert f"cannot connect to http://{HOST}:{port}" in (rec.diagnostic or "")
    assert row.status_code & StatusCode.FAILURE
    assert (row.status_string or "").startswith("cannot post: cannot connect to http://")


async def test_the_row_recovers_once_a_request_gets_through() -> None:
    receiver = Receiver()
    async with http_server(receiver) as srv:
        port = free_port()
        opts = options(srv)
        opts["endpoints"]["down"] = f"http://{HOST}:{port}/"
        async with open_spooler(opts) as sp:
            await send(sp, message("WEBHOOK:down"))
            assert sp.status["webhook"].status_code & StatusCode.FAILURE
            await send(sp, message("WEBHOOK:hook"))
            row = sp.status["webhook"]
    assert not row.status_code & StatusCode.FAILURE
    assert (row.status_string or "").startswith("1 delivered, 1 deferred, 0 failed")


# -- HTTP/2, TLS ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("http", "version"), [("auto", "2"), ("2", "2"), ("1.1", "1.1")])
async def test_over_tls_http2_is_negotiated(tmp_path: Path, http: str, version: str) -> None:
    receiver = Receiver(secret=SECRET)
    async with http_server(receiver, tls=True, tmp=tmp_path) as srv:
        opts = options(srv, http=http, ca_file=srv.ca_file(tmp_path))
        async with open_spooler(opts) as sp:
            state, _ = await send(sp, message("WEBHOOK:hook"))
            info = sp.host("webhook").session.status_object()  # type: ignore[union-attr]
    assert state is MessageState.SENT
    assert receiver.requests[0].http_version == version
    assert receiver.requests[0].verified == "ok"
    assert info["http_versions"] == {f"HTTP/{version}": 1}


async def test_h2c_with_prior_knowledge_in_the_clear() -> None:
    receiver = Receiver(secret=SECRET)
    async with http_server(receiver) as srv, open_spooler(options(srv, http="2")) as sp:
        state, _ = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.SENT
    assert receiver.requests[0].http_version == "2"


async def test_tls_verification_is_on_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    async with http_server(receiver, tls=True, tmp=tmp_path) as srv:
        async with open_spooler(options(srv)) as sp:  # the test CA is not trusted
            state, [rec] = await send(sp, message("WEBHOOK:hook"))
            assert sp.status["webhook"].status_code & StatusCode.FAILURE
        caplog.set_level(logging.WARNING)
        async with open_spooler(options(srv, verify=False)) as sp:
            unverified, _ = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.DEFERRED
    assert rec.status == "4.7.5"
    assert f"TLS certificate of {srv.url} not verified" in (rec.diagnostic or "")
    assert unverified is MessageState.SENT
    assert len(receiver.requests) == 1
    assert "verify=false, the certificates of its endpoints are NOT checked" in caplog.text


# -- connections, cancel, addresses, limits -----------------------------------------------------
async def test_connections_are_kept_and_reused() -> None:
    receiver = Receiver()
    async with serving(receiver, max_connections=1) as (_, sp):
        for _ in range(3):
            assert (await send(sp, message("WEBHOOK:hook")))[0] is MessageState.SENT
    ports = {r.client_port for r in receiver.requests}
    assert len(receiver.requests) == 3
    assert len(ports) == 1


async def test_cancel_stops_the_request_in_flight() -> None:
    receiver = Receiver()
    receiver.answer("/hook", Answer(hang=True))
    async with serving(receiver, read_timeout=60, total_timeout=60) as (_, sp):
        info = await sp.submit(message("WEBHOOK:hook"))
        async with asyncio.timeout(WAIT):
            await receiver.arrived.get()
        await sp.cancel(info.id)
        state = await sp.wait_for(info.id, timeout=WAIT)
        [rec] = await sp.store.recipients(info.id)
    assert state is MessageState.CANCELLED
    assert rec.state is RecipientState.CANCELLED
    assert len(receiver.requests) == 1


async def test_http_addresses_only_under_url_prefixes() -> None:
    receiver = Receiver(secret=SECRET)
    async with http_server(receiver) as srv:
        opts = options(srv, url_prefixes=[f"{srv.url}/hooks/"])
        async with open_spooler(opts) as sp:
            ok, _ = await send(sp, message(f"HTTP:{srv.url}/hooks/42"))
            refused, [rec] = await send(sp, message(f"HTTP:{srv.url}/admin"))
    assert ok is MessageState.SENT
    assert refused is MessageState.FAILED
    assert rec.status == "5.7.1"
    assert [r.path for r in receiver.requests] == ["/hooks/42"]
    assert receiver.requests[0].headers["spoolbox-recipient"] == f"HTTP:{srv.url}/hooks/42"


async def test_a_message_over_max_message_size_fails_without_a_request() -> None:
    receiver = Receiver()
    async with serving(receiver, max_message_size=10) as (_, sp):
        state, [rec] = await send(sp, message("WEBHOOK:hook"))
    assert state is MessageState.FAILED
    assert rec.status == "5.3.4"
    assert receiver.requests == []


@pytest.mark.parametrize("isolate", [False, True])
async def test_the_provider_conforms(isolate: bool) -> None:
    receiver = Receiver(secret=SECRET)
    async with http_server(receiver) as srv:
        report = await check_provider(
            "webhook", address="WEBHOOK:hook", options=options(srv), isolate=isolate
        )
    assert report.ok, report.text()
    assert report.passed[-1] == "logoff"
    assert receiver.requests  # the conformance message was posted
    for req in receiver.requests:
        verify_signature(
            SECRET, req.body, req.headers["spoolbox-signature"], req.headers["idempotency-key"]
        )


def test_without_httpx_the_logon_names_the_extra(tmp_path: Path) -> None:
    code = f"""
import asyncio, sys
for name in ("httpx", "httpcore", "h2"):
    sys.modules[name] = None
from spoolbox import Spooler, SpoolerConfig, TransportConfig, AlwaysIdle, load_provider_class
assert load_provider_class("webhook").__name__ == "WebhookProvider"
async def main():
    cfg = SpoolerConfig(transports=(TransportConfig("hook", "webhook", options={{
        "endpoints": {{"a": "https://h.example/"}}, "secret": "s"}}),), node="x")
    async with Spooler.open(cfg, idle=AlwaysIdle()) as sp:
        async with asyncio.timeout({WAIT}):
            while "spoolbox[webhook]" not in str(getattr(sp.status.get("hook"), "detail", "")):
                await asyncio.sleep(0.05)
        print(sp.status["hook"].detail)
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert MISSING_EXTRA in done.stdout
