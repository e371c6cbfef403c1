# ruff: noqa: F811 - the fixtures imported from webtest_support are parameters here
"""The JSON endpoints: the local API's forms, the queue's actions, the inbox as text,
reports, the scheduler's figures and Send/Receive with its report."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage

import pytest
from webtest_support import Web, message, script, web  # noqa: F401 - fixtures

from spoolbox import Address
from spoolbox.api.wire import message_to_dict
from spoolbox.store.base import InboundMessage
from spoolbox.testing import Act, Script
from spoolbox.web.message_view import message_view

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def _until(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_status_rows_are_the_status_ops_rows(web: Web) -> None:
    rows = (await web.client.get("/api/status")).json()["rows"]
    assert {row["name"] for row in rows} >= {"spooler", "relay"}
    relay = next(row for row in rows if row["name"] == "relay")
    # The status op's rows carry the node they belong to (several nodes on one store).
    assert relay["node"] == web.spooler.config.node
    assert relay == {**web.spooler.status["relay"].to_dict(), "node": relay["node"]}


@pytest.fixture
def script() -> Script:
    return Script(address_types=("SMTP", "X400"), submit=[Act.FAIL_TEMP])


async def test_the_queue_filters_and_shows_recipients_in_the_apis_form(web: Web) -> None:
    a = await web.spooler.submit(message("a", "x", "SMTP:bob@example.org"))
    b = await web.spooler.submit(message("b", "x", "SMTP:carol@example.org"))
    await web.spooler.hold(b.id)
    listed = (await web.client.get("/api/queue", params={"recipient": "carol"})).json()
    assert [m["id"] for m in listed["messages"]] == [b.id]
    held = (await web.client.get("/api/queue", params={"state": "hold"})).json()
    assert [m["id"] for m in held["messages"]] == [b.id]
    routed = (await web.client.get("/api/queue", params={"transport": "relay"})).json()
    assert a.id in {m["id"] for m in routed["messages"]}
    assert (await web.client.get("/api/queue", params={"state": "nope"})).status_code == 400
    shown = (await web.client.get(f"/api/queue/{a.id}")).json()
    summary = (await web.spooler.store.list_messages(limit=10, now=web.spooler.clock.now()))[0]
    assert shown.keys() == message_to_dict(summary).keys()
    assert shown["recipients"][0]["address"] == "SMTP:bob@example.org"
    assert {"attempts", "retry_at", "diagnostic", "status"} <= shown["recipients"][0].keys()
    assert (await web.client.get("/api/queue/nosuchid")).status_code == 404


async def test_hold_release_retry_and_cancel(web: Web) -> None:
    info = await web.spooler.submit(message())
    post = web.client.post
    hold = await post(f"/api/queue/{info.id}/hold", headers=web.csrf)
    assert hold.json() == {"id": info.id, "state": "hold"}
    release = await post(f"/api/queue/{info.id}/release", headers=web.csrf)
    assert release.json()["state"] != "hold"
    retry = await post(f"/api/queue/{info.id}/retry", headers=web.csrf)
    assert retry.status_code == 200 and "retried" in retry.json()
    cancel = await post(f"/api/queue/{info.id}/cancel", headers=web.csrf)
    assert cancel.status_code == 200, cancel.text

    async def cancelled() -> bool:
        state = await web.spooler.store.state_of(info.id, now=web.spooler.clock.now())
        return str(state) == "cancelled"

    await _until(cancelled, "the message to be cancelled")
    assert (await post("/api/queue/nosuchid/hold", headers=web.csrf)).status_code == 404
    assert (await post(f"/api/queue/{info.id}/explode", headers=web.csrf)).status_code == 404


def _hostile_message() -> bytes:
    m = EmailMessage()
    m["From"] = "mallory@example.org"
    m["To"] = "bob@example.org"
    m["Subject"] = HOSTILE
    m.set_content(f"plain {HOSTILE}")
    m.add_alternative(f"<html><body><b>bold</b>{HOSTILE}</body></html>", subtype="html")
    m.add_attachment(b"%PDF-1.4 data", maintype="application", subtype="pdf", filename="a.pdf")
    m.add_attachment(b"<script>evil()</script>", maintype="text", subtype="html", filename="x.html")
    return m.as_bytes()


async def _inbox(web: Web, content: bytes) -> str:
    entries = await web.spooler.store.deliver_inbound(
        InboundMessage(
            transport="relay",
            content=content,
            sender="mallory@example.org",
            recipients=("bob@example.org",),
            received_at=web.spooler.clock.now(),
        )
    )
    return entries.id


async def test_an_inbox_message_is_text_and_its_attachments_download(web: Web) -> None:
    entry = await _inbox(web, _hostile_message())
    listed = (await web.client.get("/api/inbox")).json()["messages"]
    assert [e["id"] for e in listed] == [entry]
    shown = (await web.client.get(f"/api/inbox/{entry}")).json()["view"]
    subject = next(h["value"] for h in shown["headers"] if h["name"] == "Subject")
    assert subject == HOSTILE  # as text: the page puts it in textContent
    assert shown["text_from"] == "text/plain" and HOSTILE in shown["text"]
    names = [(a["filename"], a["content_type"]) for a in shown["attachments"]]
    assert names == [("a.pdf", "application/pdf"), ("x.html", "text/html")]
    html_part = shown["attachments"][1]["index"]
    download = await web.client.get(f"/api/inbox/{entry}/attachments/{html_part}")
    assert download.status_code == 200
    assert download.content == b"<script>evil()</script>"
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == 'attachment; filename="x.html"'
    missing = await web.client.get(f"/api/inbox/{entry}/attachments/99")
    assert missing.status_code == 404


def test_an_html_only_message_shows_as_text_without_its_tags() -> None:
    m = EmailMessage()
    m["Subject"] = "html only"
    m.set_content("<p>Hello <b>there</b></p><script>steal()</script><style>p{}</style>", "html")
    view = message_view(m.as_bytes())
    assert view["text_from"] == "text/html"
    assert view["text"].strip() == "Hello there"
    assert view["attachments"] == []


async def test_reports_are_those_in_the_inbox_and_those_queued(web: Web) -> None:
    report = await _inbox_report(web)
    data = (await web.client.get("/api/reports")).json()
    assert [e["id"] for e in data["inbox"]] == [report]
    assert data["sent"] == []


async def _inbox_report(web: Web) -> str:
    entries = await web.spooler.store.deliver_inbound(
        InboundMessage(
            transport="spooler",
            content=b"Subject: Undelivered Mail Returned to Sender\r\n\r\nx\r\n",
            sender=None,
            recipients=(str(Address.parse("SMTP:alice@example.org")),),
            received_at=web.spooler.clock.now(),
        )
    )
    return entries.id


async def test_the_scheduler_figures_come_with_the_loop_lag(web: Web) -> None:
    web.context.lag.record(0.012)
    data = (await web.client.get("/api/scheduler")).json()
    assert data["loop_lag"]["latest"] == pytest.approx(0.012)
    assert {"slices", "overruns", "stalls", "longest_stall"} <= data["scheduler"].keys()
    assert data["stalls"] == []


async def test_the_raw_inbox_read_is_the_local_apis(web: Web) -> None:
    entry = await _inbox(web, b"Subject: s\r\n\r\nbody\r\n")
    from spoolbox.daemon.api_ops import dispatch

    read = await dispatch(web.daemon, "inbox.read", {"id": entry})
    assert base64.b64decode(read["content"]) == b"Subject: s\r\n\r\nbody\r\n"
