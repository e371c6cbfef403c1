"""Group commit of inbound messages: several start_message calls, one store transaction.

A small provider of our own hands out numbered items and keeps track of what it
handed out until ``after_commit`` or ``after_rollback`` (as a provider announcing
``SP_INBOUND_BATCH`` must).  The store is a :class:`MemoryStore` that records every
inbox transaction and can be told to fail one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from spoolbox import AlwaysIdle, Policy, Spooler, SpoolerConfig, TransportConfig
from spoolbox._core.hosts import inbound as host_module
from spoolbox.contract import BaseTransportSession, InboundWriter, Support
from spoolbox.model import LogonCaps, LogonFlags
from spoolbox.store import InboundMessage, InboxEntry, StoreError
from spoolbox.store.memory import MemoryStore

FAST = Policy(
    router_interval=0.02,
    housekeeping_interval=0.05,
    failure_backoff=0.05,
    failure_backoff_cap=0.2,
    relogon_delay=0.05,
    poll_interval=3600.0,
    shutdown_grace=2.0,
    inbound_commit_batch=4,
)


def content(i: int, size: int = 0) -> bytes:
    return f"Subject: item {i}\r\n\r\nbody {i}\r\n".encode() + b"x" * size


@dataclass
class Source:
    """The remote side: items 0..n-1, and what happened to each."""

    items: list[bytes]
    waiting: list[int] = field(default_factory=list)
    inflight: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    fail_after_write: set[int] = field(default_factory=set)  # raise once, after writing

    def __post_init__(self) -> None:
        self.waiting = list(range(len(self.items)))


class BatchSession(BaseTransportSession):
    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.SP_INBOUND_BATCH

    def __init__(self, support: Support, source: Source) -> None:
        super().__init__(support)
        self.source = source

    async def start_message(self, message: InboundWriter) -> None:
        src = self.source
        if not src.waiting:
            return
        i = src.waiting.pop(0)
        src.inflight.append(i)

        def rolled_back() -> None:
            src.events.append(f"rollback {i}")
            src.inflight.remove(i)
            src.waiting = sorted([*src.waiting, i])

        def committed() -> None:
            src.events.append(f"commit {i}")
            src.inflight.remove(i)

        message.after_rollback(rolled_back)
        await message.write(src.items[i])
        message.set_state("last", i)
        if i in src.fail_after_write:
            src.fail_after_write.discard(i)
            raise RuntimeError(f"failure after writing item {i}")
        message.after_commit(committed)


class BatchProvider:
    display_name: ClassVar[str] = "batch test provider"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> BatchSession:
        return BatchSession(support, config["source"])

    async def shutdown(self) -> None:
        return None


class PlainSession(BatchSession):
    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.NONE


class PlainProvider(BatchProvider):
    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> BatchSession:
        return PlainSession(support, config["source"])


class RecordingStore(MemoryStore):
    """Records the size of every inbox transaction; ``fail`` makes the next ones fail."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[int] = []
        self.fail = 0

    def _maybe_fail(self) -> None:
        if self.fail:
            self.fail -= 1
            raise StoreError("injected commit failure")

    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> InboxEntry:
        self._maybe_fail()
        self.transactions.append(1)
        return await super().deliver_inbound(message, profile_updates=profile_updates)

    async def deliver_inbound_many(
        self, items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, Any]] | None]]
    ) -> list[InboxEntry]:
        self._maybe_fail()
        self.transactions.append(len(items))
        return await super().deliver_inbound_many(items)


def open_spooler(
    source: Source, store: RecordingStore, policy: Policy = FAST, provider: type = BatchProvider
) -> Spooler:
    cfg = SpoolerConfig(
        transports=(TransportConfig("batch", provider, options={"source": source}),),
        policy=policy,
        node="test-node",
    )
    return Spooler.open(cfg, store=store, idle=AlwaysIdle())


async def inbox_subjects(store: RecordingStore) -> list[str]:
    return [e.subject for e in await store.list_inbox(limit=1000)]


def test_policy_validates_inbound_commit_batch() -> None:
    with pytest.raises(ValueError, match="inbound_commit_batch"):
        Policy(inbound_commit_batch=0)
    assert Policy().inbound_commit_batch == 64


async def test_batches_commit_together_in_order() -> None:
    source = Source([content(i) for i in range(10)])
    store = RecordingStore()
    async with open_spooler(source, store) as sp:
        assert await sp.wait_ready(timeout=5) == {"batch": True}
        report = await sp.flush(upload=False)
        assert report.for_transport("batch").downloaded == 10
        assert store.transactions == [4, 4, 2]
        assert await inbox_subjects(store) == [f"item {i}" for i in range(10)]
        assert source.events == [f"commit {i}" for i in range(10)]
        assert source.inflight == []
        assert await store.profile_get("transport:batch") == {"last": 9}
        assert sp.host("batch").counters["received"] == 10


async def test_batch_of_one_and_providers_without_the_capability() -> None:
    one = dataclasses.replace(FAST, inbound_commit_batch=1)
    for policy, provider in ((one, BatchProvider), (FAST, PlainProvider)):
        source = Source([content(i) for i in range(5)])
        store = RecordingStore()
        async with open_spooler(source, store, policy, provider) as sp:
            assert await sp.wait_ready(timeout=5) == {"batch": True}
            await sp.flush(upload=False)
            assert store.transactions == [1] * 5  # deliver_inbound, one by one
            assert await inbox_subjects(store) == [f"item {i}" for i in range(5)]
            assert source.events == [f"commit {i}" for i in range(5)]


async def test_failed_commit_rolls_back_the_whole_batch_in_order() -> None:
    source = Source([content(i) for i in range(6)])
    store = RecordingStore()
    async with open_spooler(source, store) as sp:
        assert await sp.wait_ready(timeout=5) == {"batch": True}
        store.fail = 1
        report = await sp.flush(upload=False)
        assert report.for_transport("batch").downloaded == 0
        assert source.events == [f"rollback {i}" for i in range(4)]
        assert source.waiting == list(range(6)) and source.inflight == []
        assert await store.list_inbox() == []
        assert await store.profile_get("transport:batch") == {}
        assert sp.host("batch").counters["errors"] >= 1
        await sp.flush(upload=False)
        assert await inbox_subjects(store) == [f"item {i}" for i in range(6)]
        assert store.transactions == [4, 2]
        assert await store.profile_get("transport:batch") == {"last": 5}


async def test_start_message_raising_after_writing_is_rolled_back_alone() -> None:
    source = Source([content(i) for i in range(6)], fail_after_write={2})
    store = RecordingStore()
    async with open_spooler(source, store) as sp:
        assert await sp.wait_ready(timeout=5) == {"batch": True}
        await sp.flush(upload=False)
        # 0 and 1 were collected; 2 raised: they commit, 2 is offered again.
        assert source.events[:3] == ["rollback 2", "commit 0", "commit 1"]
        assert store.transactions[0] == 2
        await sp.flush(upload=False)
        assert await inbox_subjects(store) == [f"item {i}" for i in range(6)]
        assert source.inflight == [] and source.waiting == []


async def test_byte_cap_ends_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_module, "INBOUND_COMMIT_BYTES", 10_000)
    sizes = [3000, 3000, 20_000, 100, 100, 100]
    source = Source([content(i, size) for i, size in enumerate(sizes)])
    store = RecordingStore()
    async with open_spooler(source, store) as sp:
        assert await sp.wait_ready(timeout=5) == {"batch": True}
        await sp.flush(upload=False)
        # 3000 + 3000 + 20000 passes the cap at the third: a message larger than the
        # cap still comes through (it ends its batch).
        assert store.transactions == [3, 3]
        assert await inbox_subjects(store) == [f"item {i}" for i in range(6)]
