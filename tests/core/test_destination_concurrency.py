"""A session's ``destination_concurrency``: no more than that many of its messages to
one destination (the domain) at once, and a long queue for one domain does not keep
the mail for other domains waiting behind it: the lane claims past it.

The transport here holds every message to ``slow.example`` until the test lets them
go, and delivers the others at once; it records how many messages of each domain it
had at the same time."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from helpers import FAST, message, until

from spoolbox import AlwaysIdle, MessageState, Spooler, SpoolerConfig, TransportConfig
from spoolbox.contract import BaseTransportSession, OutboundMessage, Support
from spoolbox.daemon import api_ops
from spoolbox.daemon.api_ops import DaemonView
from spoolbox.model import LogonFlags, RecipientResult, SubmitFlags, destination
from spoolbox.store import MemoryStore, SQLiteStore, Store

SLOW = "slow.example"


class Gate:
    """What the sessions share with the test: the gate of slow.example, and counts."""

    def __init__(
        self,
        concurrency: int,
        destination_concurrency: int | None,
        destination_rate_delay: float | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.destination_concurrency = destination_concurrency
        self.destination_rate_delay = destination_rate_delay
        self.open = asyncio.Event()
        # Each domain's messages: when the transport had each (monotonic start, end).
        self.spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        self.now: collections.Counter[str] = collections.Counter()
        self.most: collections.Counter[str] = collections.Counter()
        self.delivered: list[str] = []


class GatedSession(BaseTransportSession):
    ADDRESS_TYPES = ("SMTP",)

    def __init__(self, support: Support, gate: Gate) -> None:
        super().__init__(support)
        self.gate = gate
        self.concurrency = gate.concurrency
        self.destination_concurrency = gate.destination_concurrency
        self.destination_rate_delay = gate.destination_rate_delay

    def address_types(self) -> Collection[str]:
        return self.ADDRESS_TYPES

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        gate = self.gate
        domains = {destination(r.address.value) for r in message.recipients}
        began = time.monotonic()
        for d in domains:
            gate.now[d] += 1
            gate.most[d] = max(gate.most[d], gate.now[d])
        try:
            if SLOW in domains:
                await gate.open.wait()
            await self.support.status_recips(
                message, [RecipientResult.delivered(r, "250 ok") for r in message.recipients]
            )
            gate.delivered.extend(str(r.address) for r in message.recipients)
        finally:
            for d in domains:
                gate.now[d] -= 1
                gate.spans[d].append((began, time.monotonic()))


class GatedProvider:
    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> GatedSession:
        return GatedSession(support, config["gate"])

    async def shutdown(self) -> None:
        pass


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")


def _spooler(gate: Gate, store: Store) -> Spooler:
    config = SpoolerConfig(
        transports=(TransportConfig("mx", GatedProvider, options={"gate": gate}),),
        policy=FAST,
        node="dc",
    )
    return Spooler.open(config, store=store, idle=AlwaysIdle())


async def test_mail_for_other_domains_passes_a_full_domain(store: Store) -> None:
    gate = Gate(concurrency=4, destination_concurrency=2)
    handed: list[str] = []  # the messages claimed in their submit's transaction
    if isinstance(store, SQLiteStore):
        submit_claiming = store.submit_claiming

        async def recording(*args: Any, **kw: Any) -> Any:
            info, job = await submit_claiming(*args, **kw)
            if job is not None:
                handed.append(info.id)
            return info, job

        store.submit_claiming = recording  # type: ignore[method-assign]
    async with _spooler(gate, store) as sp:
        await sp.wait_ready(timeout=5)
        before = sp.status["mx"].detail
        slow = [await sp.submit(message(f"SMTP:u{i}@{SLOW}")) for i in range(12)]
        await until(lambda: gate.now[SLOW] == 2, what="two messages to slow.example under way")
        # The transport's row says so (spoolbox status).
        assert sp.status["mx"].detail == (
            f"{SLOW} has 2 messages under way (destination_concurrency): the mail to "
            "other domains goes first"
        )
        lane = sp.host("mx").outbound
        await until(lambda: lane.waiting == 1, what="the lane waits for work")
        # Behind twelve queued for slow.example, in the order they came:
        other = await sp.submit(message("SMTP:bob@fast.example"))
        mixed = await sp.submit(message("SMTP:carol@Fast.Example", f"SMTP:dave@{SLOW}"))
        await sp.wait_for(other.id, timeout=5)
        if isinstance(store, SQLiteStore):
            # Claimed at its submit, past the claimed jobs of slow.example that wait:
            # not left for the next claim that passes over them (a second later).
            assert other.id in handed
        # The message with a recipient at each: the fast one goes now, on its own job.
        await until(
            lambda: "SMTP:carol@Fast.Example" in gate.delivered, what="carol's part delivered"
        )
        assert gate.now[SLOW] == 2
        assert gate.most[SLOW] == 2, "never more than destination_concurrency at once"
        assert f"SMTP:dave@{SLOW}" not in gate.delivered
        gate.open.set()
        for info in [*slow, mixed]:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        await until(lambda: sp.status["mx"].detail == before, what="the row's detail back")
    assert gate.most[SLOW] == 2
    assert sorted(gate.delivered) == sorted(
        [f"SMTP:u{i}@{SLOW}" for i in range(12)]
        + ["SMTP:bob@fast.example", "SMTP:carol@Fast.Example", f"SMTP:dave@{SLOW}"]
    )


class _View:
    """The daemon as the local API's operations see it: its spooler."""

    def __init__(self, spooler: Spooler) -> None:
        self.spooler = spooler

    async def current(self) -> Spooler:
        return self.spooler


async def test_queue_show_says_which_destination_a_claimed_message_waits_for(
    store: Store,
) -> None:
    gate = Gate(concurrency=4, destination_concurrency=2)
    async with _spooler(gate, store) as sp:
        # In one transaction: one claim (of up to eight) takes them all.
        slow = await sp.submit_many(message(f"SMTP:u{i}@{SLOW}") for i in range(6))
        await until(lambda: gate.now[SLOW] == 2, what="two messages to slow.example under way")
        view = cast(DaemonView, _View(sp))
        said: dict[str, list[str | None]] = collections.defaultdict(list)
        for info in slow:
            shown = await api_ops.queue_show(view, {"id": info.id})
            [recipient] = shown["recipients"]
            said[recipient["state"]].append(recipient.get("waiting"))
        # Two in the transport's hands, the four others claimed with them and waiting
        # for one of them to end.
        why = (
            f"{SLOW} has 2 messages under way, its destination_concurrency; claimed, "
            "it goes when one of them is done"
        )
        assert sorted(said["active"], key=str) == [None, None, why, why, why, why], said
        assert set(said) == {"active"}, said
        # One more: claimed at its submit, in the SQLite store (a hand-off), and waiting
        # as those; else queued, as the claims pass over its destination.
        later = await sp.submit(message(f"SMTP:late@{SLOW}"))
        [recipient] = (await api_ops.queue_show(view, {"id": later.id}))["recipients"]
        if isinstance(store, SQLiteStore):
            assert (recipient["state"], recipient["waiting"]) == ("active", why)
        else:
            queued = (
                f"{SLOW} has 2 messages under way, its destination_concurrency; queued behind them"
            )
            assert (recipient["state"], recipient["waiting"]) == ("queued", queued)
            # A retry cannot make it go sooner, and says why, as queue show does.
            retried = await api_ops.queue_retry(view, {"id": later.id})
            assert (retried["retried"], retried["waiting"]) == (0, queued)
        gate.open.set()
        for info in [*slow, later]:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        shown = await api_ops.queue_show(view, {"id": slow[-1].id})
        assert "waiting" not in shown["recipients"][0]


async def test_without_a_limit_one_domain_takes_every_lane(store: Store) -> None:
    """The default (None): as before, a queue for one domain fills the lanes and the
    mail behind it waits."""
    gate = Gate(concurrency=4, destination_concurrency=None)
    async with _spooler(gate, store) as sp:
        slow = [await sp.submit(message(f"SMTP:u{i}@{SLOW}")) for i in range(6)]
        await until(lambda: gate.now[SLOW] == 4, what="four messages to slow.example under way")
        other = await sp.submit(message("SMTP:bob@fast.example"))
        with pytest.raises(TimeoutError):
            await sp.wait_for(other.id, timeout=0.3)
        gate.open.set()
        for info in [*slow, other]:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
    assert gate.most[SLOW] == 4


async def test_a_full_domain_does_not_spin_the_claims(store: Store) -> None:
    """Everything ready is for the full domain: the lane waits for a message of it to
    end (or for new mail) instead of claiming again and again."""
    gate = Gate(concurrency=4, destination_concurrency=1)
    claims = 0
    claim = store.claim

    async def counting(*args: Any, **kw: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(*args, **kw)

    store.claim = counting  # type: ignore[method-assign]
    async with _spooler(gate, store) as sp:
        slow = [await sp.submit(message(f"SMTP:u{i}@{SLOW}")) for i in range(5)]
        await until(lambda: gate.now[SLOW] == 1, what="one message to slow.example under way")
        await asyncio.sleep(0.2)
        before = claims
        await asyncio.sleep(0.5)
        # The router's interval is 0.02 s here: a lane woken by its timeout claims
        # every 0.1 s at most; a busy loop would make hundreds.
        assert claims - before <= 10, f"{claims - before} claims in 0.5 s with nothing to take"
        assert gate.most[SLOW] == 1
        gate.open.set()
        for info in slow:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT


async def test_a_rate_delay_spaces_one_domain_and_leaves_the_others(store: Store) -> None:
    """``destination_rate_delay``: one message at a time to a domain (whatever
    ``destination_concurrency`` says), the next at least the delay after the end of
    the one before; the other domains' mail goes meanwhile (within the pause after a
    claim that passed over the resting domain and found nothing: a second at most),
    and ``queue show`` says why a message of the resting domain waits."""
    delay = 2.0
    gate = Gate(concurrency=4, destination_concurrency=4, destination_rate_delay=delay)
    gate.open.set()
    async with _spooler(gate, store) as sp:
        slow = await sp.submit_many(message(f"SMTP:u{i}@{SLOW}") for i in range(2))
        await until(lambda: len(gate.spans[SLOW]) == 1, what="the first to slow.example sent")
        view = cast(DaemonView, _View(sp))
        [recipient] = (await api_ops.queue_show(view, {"id": slow[1].id}))["recipients"]
        assert recipient["waiting"].startswith(
            f"{SLOW} gets one message every 2 s, its destination_rate_delay; claimed, it goes in "
        ), recipient
        # Two other domains (each has its own delay: one message to each goes now).
        fast = [await sp.submit(message(f"SMTP:f@{d}.example")) for d in ("one", "two")]
        for info in fast:
            assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        # The other domains' mail went while slow.example rested.
        assert len(gate.spans[SLOW]) == 1, gate.spans
        for info in slow:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        # Each domain rests after its message; once every rest is over, a wait for
        # work is bounded by its own timeout alone (the rests are forgotten).
        lane = sp.host("mx").outbound
        assert 0 < lane.room.rest_bound(60.0) <= delay
        await asyncio.sleep(delay + 0.1)
        assert lane.room.rest_bound(60.0) == 60.0
    assert gate.most[SLOW] == 1
    (first, second) = sorted(gate.spans[SLOW])
    assert delay - 0.05 <= second[0] - first[1] < delay + 1.0, (first, second)


async def test_a_flush_cut_short_by_a_rate_delay_says_so(store: Store) -> None:
    """A flush whose deadline passes while a ``destination_rate_delay`` holds the
    rest of a domain's mail says why that mail is still queued, not only that the
    deadline came."""
    gate = Gate(concurrency=4, destination_concurrency=4, destination_rate_delay=30.0)
    gate.open.set()
    async with _spooler(gate, store) as sp:
        await sp.submit_many(message(f"SMTP:u{i}@{SLOW}") for i in range(3))
        report = await sp.flush(download=False, transport="mx", deadline=1.0)
        [result] = report.results
        assert report.timed_out and result.timed_out
        assert len(gate.spans[SLOW]) == 1
        assert result.delivered == 1 and result.queued == 2
        assert result.held is not None
        assert result.held.startswith(
            f"{SLOW} gets one message every 30 s, its destination_rate_delay; the next one goes in "
        ), result.held


async def test_a_flush_cut_short_by_a_full_domain_says_so(store: Store) -> None:
    """The same with a ``destination_concurrency`` of one and a slow domain (a
    domain with room, whose mail went, is not named)."""
    gate = Gate(concurrency=4, destination_concurrency=1)
    async with _spooler(gate, store) as sp:
        await sp.submit_many(message(f"SMTP:u{i}@{SLOW}") for i in range(2))
        fast = await sp.submit(message("SMTP:f@fast.example"))
        report = await sp.flush(download=False, transport="mx", deadline=1.0)
        [result] = report.results
        assert result.timed_out and result.queued == 2, result
        assert result.held == (
            f"{SLOW} has 1 message under way, its destination_concurrency; "
            "the next one goes when one of them is done"
        ), result.held
        assert await sp.wait_for(fast.id, timeout=1) is MessageState.SENT
        gate.open.set()
        await until(lambda: len(gate.delivered) == 3, what="every message sent")
