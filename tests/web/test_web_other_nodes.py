# ruff: noqa: F811 - the fixtures imported from webtest_support are parameters here
"""The other nodes' rows on the page, in-process: the test's spooler made a node of its
(memory) store, another node's records written to that store by the test.  The event
stream carries them with their node, then what changed (a detail, ``Gone`` once the
lease ended, ``removed`` once the record is forgotten); the store is read once per
period however many pages watch, and never for a spooler that is no node."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from webtest_support import Web, script, web  # noqa: F401 - fixtures

from spoolbox._core.cluster_view import GONE
from spoolbox._core.node import NodeSettings, start_node
from spoolbox.store import NodeRecord, StoreError
from spoolbox.web.events import status_events
from spoolbox.web.nodes import OtherNodes

SETTINGS = NodeSettings(lease=3.0, interval=0.05)


def _record(detail: str, *, heard: float = 0.0, lease: float = 60.0) -> NodeRecord:
    """node-b's record, its heartbeat ``heard`` seconds ago, good for ``lease`` after."""
    now = time.time() - heard
    rows = (
        {"name": "spooler", "status": "Available", "detail": None, "counters": {}},
        {"name": "relay", "status": "Idle", "detail": detail, "counters": {"delivered": 3}},
    )
    return NodeRecord("node-b", "host-b", 4242, now - 10, now, now + lease, rows)


async def _status_events(stream: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    async for chunk in stream:
        if chunk.startswith(b"event: status\n"):
            yield json.loads(chunk.split(b"data: ", 1)[1])


async def test_the_stream_carries_the_other_nodes_rows_and_their_changes(web: Web) -> None:
    start_node(web.spooler, web.spooler.store, SETTINGS)
    await web.spooler.store.publish_node(_record("first"))
    events = _status_events(status_events(web.context))
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    async def until(what: str, predicate: Any) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                data = await anext(events)
                for row in data["rows"]:
                    rows[(row["node"], row["name"])] = row
                for gone in data["removed"]:
                    del rows[(gone["node"], gone["name"])]
        assert predicate(), what

    def detail(text: str) -> bool:
        return rows.get(("node-b", "relay"), {}).get("detail") == text

    await until("both nodes' rows", lambda: detail("first"))
    assert {("web-test", "spooler"), ("web-test", "relay"), ("node-b", "spooler")} <= rows.keys()
    assert rows[("node-b", "relay")]["counters"] == {"delivered": 3}

    await web.spooler.store.publish_node(_record("second"))
    await until("node-b's change", lambda: detail("second"))

    await web.spooler.store.publish_node(_record("third", heard=10, lease=3))  # lease over
    await until("node-b gone", lambda: rows[("node-b", "relay")]["status"] == GONE)
    assert rows[("node-b", "relay")]["detail"].startswith("node node-b gone: no heartbeat")
    assert rows[("web-test", "relay")]["status"] != GONE

    assert await web.spooler.store.forget_nodes(before=time.time()) == 1
    await until("node-b forgotten", lambda: ("node-b", "relay") not in rows)
    assert ("node-b", "spooler") not in rows
    assert ("web-test", "relay") in rows
    await events.aclose()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_store_is_read_once_per_period_for_every_page(web: Web) -> None:
    clock = _Clock()
    others = OtherNodes(clock)
    assert OtherNodes.period(web.spooler) is None  # no node yet: nothing is read
    assert await others.rows(web.spooler) == []
    assert others.reads == 0

    start_node(web.spooler, web.spooler.store, SETTINGS)
    assert OtherNodes.period(web.spooler) == SETTINGS.interval / 2
    await web.spooler.store.publish_node(_record("first"))
    pages = await asyncio.gather(*(others.rows(web.spooler) for _ in range(5)))
    assert others.reads == 1
    assert all(rows == pages[0] for rows in pages)
    assert {row["node"] for row in pages[0]} == {"node-b"}  # this node's own are not read

    await web.spooler.store.publish_node(_record("second"))
    clock.now += SETTINGS.interval / 4  # within the period: what was read
    assert (await others.rows(web.spooler)) == pages[0]
    assert others.reads == 1
    clock.now += SETTINGS.interval / 4  # the period passed: read again
    again = await others.rows(web.spooler)
    assert others.reads == 2
    assert {row["detail"] for row in again if row["name"] == "relay"} == {"second"}


async def test_rows_read_last_stay_while_the_store_cannot_be_read(
    web: Web, monkeypatch: Any
) -> None:
    clock = _Clock()
    others = OtherNodes(clock)
    start_node(web.spooler, web.spooler.store, SETTINGS)
    await web.spooler.store.publish_node(_record("first"))
    shown = await others.rows(web.spooler)
    assert {row["node"] for row in shown} == {"node-b"}

    async def unreadable() -> list[NodeRecord]:
        raise StoreError("PostgreSQL store postgresql://db/spool: connection refused")

    monkeypatch.setattr(web.spooler.store, "nodes", unreadable)
    clock.now += SETTINGS.interval  # a read is due, and fails
    assert await others.rows(web.spooler) == shown  # node-b is not removed
    assert others.reads == 2
    monkeypatch.undo()
    await web.spooler.store.publish_node(_record("second"))
    clock.now += SETTINGS.interval
    assert {r["detail"] for r in await others.rows(web.spooler) if r["name"] == "relay"} == {
        "second"
    }
