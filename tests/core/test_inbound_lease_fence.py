"""An inbound batch commits only while its node holds the mailbox's lease, checked in
the commit's own transaction: a lease lost between the node's check and its commit
commits nothing (issue 16).

The store takes the lease away at the last moment, just before the commit's
transaction (as another node would once this one's lease ran out while it stalled
between the two); the batch is rolled back, the provider keeps its items.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from test_inbound_batch import FAST, BatchProvider, Source, content

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig, TransportConfig
from spoolbox._core.node import NodeSettings, start_node
from spoolbox.store import InboxEntry
from spoolbox.store.memory import MemoryStore


class _LeaseMovesBeforeCommit(MemoryStore):
    """node-b takes the mailbox's lease just before each leased inbound commit."""

    def __init__(self) -> None:
        super().__init__()
        self.tried = asyncio.Event()

    async def deliver_inbound_leased(
        self, items: Any, *, lease: str, owner: str, now: float
    ) -> list[InboxEntry]:
        # Far enough ahead that the holder's lease has run out: node-b may take it.
        await self.acquire_lease(lease, owner="node-b", now=now + 7200, lease=7200)
        self.tried.set()
        return await super().deliver_inbound_leased(items, lease=lease, owner=owner, now=now)


async def test_a_batch_whose_lease_moved_before_its_commit_commits_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "spoolbox.spooler")
    source = Source([content(i) for i in range(3)])
    store = _LeaseMovesBeforeCommit()
    cfg = SpoolerConfig(
        transports=(TransportConfig("batch", BatchProvider, options={"source": source}),),
        policy=FAST,
        node="node-a",
    )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        assert start_node(sp, store, NodeSettings(lease=3600.0, interval=1.0)) is not None
        assert await sp.wait_ready(timeout=5) == {"batch": True}
        report = await sp.flush(upload=False)
        assert store.tried.is_set()  # the batch got as far as its commit
        assert report.for_transport("batch").downloaded == 0
    assert await store.list_inbox() == []
    assert await store.profile_get("transport:batch") == {}
    assert source.events == [f"rollback {i}" for i in range(3)]
    assert source.waiting == [0, 1, 2] and source.inflight == []
    refused = [r.getMessage() for r in caplog.records if "inbound" in r.getMessage()]
    assert any("inbound:batch is held by node-b" in m for m in refused), refused
