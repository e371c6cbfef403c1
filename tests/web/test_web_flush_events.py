# ruff: noqa: F811 - the fixtures imported from webtest_support are parameters here
"""Send/Receive from the page (the report ``spoolbox flush`` gets, Cancel), the live
status over Server-Sent Events through a real server, a client that reads nothing
holding one pending state a row, and /metrics fed by the spooler's own counters and hooks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from webtest_support import Web, message, open_web, script, web  # noqa: F401 - fixtures

from spoolbox import StatusRow
from spoolbox.api.wire import FLUSH_COUNTS
from spoolbox.model import ResourceType, StatusCode
from spoolbox.profile.schema import WebSettings
from spoolbox.testing import Act, Script
from spoolbox.web.events import status_events
from spoolbox.web.server import WebServer


async def _report(web: Web, flush_id: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            state = (await web.client.get(f"/api/flush/{flush_id}")).json()
            if not state["running"]:
                report: dict[str, Any] = state["report"]
                return report
            await asyncio.sleep(0.02)


async def test_send_receive_gives_the_report_spoolbox_flush_gets(web: Web) -> None:
    await web.spooler.submit(message())
    started = await web.client.post(
        "/api/flush", json={"mode": "upload", "transport": "relay"}, headers=web.csrf
    )
    assert started.status_code == 202, started.text
    assert started.json()["transports"] == ["relay"]
    report = await _report(web, started.json()["id"])
    assert set(report["totals"]) == set(FLUSH_COUNTS)
    assert [r["transport"] for r in report["results"]] == ["relay"]
    assert report["cancelled"] is False
    refused = await web.client.post("/api/flush", json={"mode": "sideways"}, headers=web.csrf)
    assert refused.status_code == 400
    unknown = await web.client.post("/api/flush", json={"transport": "nope"}, headers=web.csrf)
    assert unknown.status_code == 404
    assert (await web.client.get("/api/flush/f999")).status_code == 404


@pytest.fixture
def hanging(tmp_path: Path) -> Script:
    return Script(address_types=("SMTP",), submit=[Act.HANG])


async def test_cancel_ends_a_flush_that_hangs(tmp_path: Path, hanging: Script) -> None:
    async for w in open_web(tmp_path, hanging):
        await w.spooler.submit(message())
        started = (await w.client.post("/api/flush", json={}, headers=w.csrf)).json()
        assert (await w.client.get(f"/api/flush/{started['id']}")).json()["running"] is True
        cancel = await w.client.post(f"/api/flush/{started['id']}/cancel", headers=w.csrf)
        assert cancel.status_code == 200
        report = await _report(w, started["id"])
        assert report["cancelled"] is True


async def test_a_client_that_reads_nothing_costs_one_pending_state_a_row(web: Web) -> None:
    stream = status_events(web.context, coalesce=0.0)
    assert await anext(stream) == b"retry: 2000\n\n"
    first = _decode(await anext(stream))
    assert "relay" in {row["name"] for row in first["rows"]}
    removed = [row for row in web.spooler.status if row.name != "relay"]
    assert removed, "the fixture's spooler has another row to remove"
    # The client reads nothing while one row changes 5,000 times and another goes.
    for n in range(5000):
        web.spooler.status.update("relay", detail=f"change {n}")
    web.spooler.status.remove(removed[0].name)
    assert web.spooler.status.statistics()["subscribers_dropped"] == 0
    # When it reads again it gets one event: each row as it is now, once.
    data = _decode(await anext(stream))
    assert [row["detail"] for row in data["rows"]] == ["change 4999"]
    assert data["removed"] == [{"node": web.spooler.owner, "name": removed[0].name}]
    await stream.aclose()


def _decode(chunk: bytes) -> dict[str, Any]:
    kind, data = chunk.decode().split("\n")[:2]
    assert kind == "event: status", chunk
    decoded: dict[str, Any] = json.loads(data.removeprefix("data: "))
    return decoded


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind is not None:
            yield kind, json.loads(line[6:])


async def test_the_status_table_is_live_over_server_sent_events(web: Web, tmp_path: Path) -> None:
    server = WebServer(web.daemon, WebSettings(enabled=True, port=0), tmp_path / "data")
    await server.start()
    try:
        auth = {"authorization": f"Bearer {web.token}"}
        async with (
            httpx.AsyncClient(base_url=server.url, headers=auth) as client,
            client.stream("GET", "/events") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response)
            async with asyncio.timeout(10):
                kind, data = await anext(events)
                assert kind == "status"
                assert "relay" in {row["name"] for row in data["rows"]}
                web.spooler.status.update("relay", detail="<b>seen live</b>")
                async for _kind, data in events:
                    details = {row["name"]: row["detail"] for row in data["rows"]}
                    if details.get("relay") == "<b>seen live</b>":
                        break
            # The server stops: the stream ends with "bye" rather than holding it up.
            stopping = asyncio.ensure_future(server.stop())
            async with asyncio.timeout(10):
                async for kind, _ in events:
                    if kind == "bye":
                        break
                else:
                    pytest.fail("the stream ended without bye")
            await stopping
    finally:
        await server.stop()


async def test_metrics_come_from_the_spoolers_counters_and_hooks(web: Web) -> None:
    delivery = logging.getLogger("spoolbox.delivery")
    level = delivery.level
    delivery.setLevel(logging.INFO)
    web.metrics.start()
    try:
        info = await web.spooler.submit(message())
        await web.spooler.wait_for(info.id, timeout=10)  # delivered
        started = await web.client.post("/api/flush", json={"mode": "upload"}, headers=web.csrf)
        await _report(web, started.json()["id"])
        web.context.lag.record(0.003)
        text = (await web.client.get("/metrics")).text
    finally:
        delivery.setLevel(level)
    lines = set(text.splitlines())
    assert 'spoolbox_deliveries_total{outcome="delivered",transport="relay"} 1.0' in lines
    assert 'spoolbox_delivery_latency_seconds_count{outcome="sent",transport="relay"} 1.0' in lines
    assert 'spoolbox_flushes_total{direction="upload",transport="relay"} 1.0' in lines
    assert 'spoolbox_queue_recipients{state="delivered"} 1.0' in lines
    assert 'spoolbox_queue_messages{transport="relay"} 0.0' in lines
    assert "spoolbox_queue_oldest_age_seconds 0.0" in lines
    assert "spoolbox_event_loop_lag_seconds_count 1.0" in lines
    assert 'spoolbox_transport_up{transport="relay"} 1.0' in lines
    assert any(
        line.startswith('spoolbox_slice_duration_seconds_count{transport="relay"}')
        for line in lines
    )
    assert "spoolbox_watchdog_stalls_total 0.0" in lines
    # The memory store has no disk: no room to report.
    assert not any(line.startswith("spoolbox_store_disk_free_bytes") for line in lines)


async def test_a_listeners_row_is_counted_as_a_listener_not_a_transport(web: Web) -> None:
    web.spooler.status.put(
        StatusRow(
            name="listener:submission",
            resource_type=ResourceType.SUBSYSTEM,
            provider_display="SMTP submission listener",
            status_code=StatusCode.AVAILABLE | StatusCode.INBOUND_ENABLED,
            counters={
                "accepted": 3,
                "rejected": 2,
                "connections": 4,
                "active": 1,
                "rejected_relay": 2,
            },
        )
    )
    web.metrics.start()
    lines = set((await web.client.get("/metrics")).text.splitlines())
    assert 'spoolbox_listener_messages_total{listener="submission",outcome="accepted"} 3.0' in lines
    assert 'spoolbox_listener_messages_total{listener="submission",outcome="rejected"} 2.0' in lines
    assert 'spoolbox_listener_refusals_total{listener="submission",reason="relay"} 2.0' in lines
    assert 'spoolbox_listener_connections_total{listener="submission"} 4.0' in lines
    assert not any('transport="listener:submission"' in line for line in lines)
