"""``[[transports]] max_rate``: at most N messages in any window of a period.

The window itself (pure, fed times: the process's own and the store's grant), then a
spooler on a fake clock with a scripted provider, with the window the store keeps
(shared by every node, kept across restarts) and with the process's own (a store
that keeps none): what the lanes claim, what the hand-off takes, what waits (still
QUEUED, not claimed), two spoolers on one store sharing a window, and a reload's or
a restart's new spooler that keeps the sends made before it."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import SLOW_TIMERS, message, transport, until

from spoolbox import (
    AlwaysIdle,
    RateLimit,
    RecipientState,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
)
from spoolbox._core.rate import MAX_COUNT, RateWindows, SendWindow
from spoolbox.model import StatusCode
from spoolbox.store import ClaimedJob
from spoolbox.store.cluster import ClusterStore, rate_grant
from spoolbox.store.memory import MemoryStore
from spoolbox.testing import Act, FakeClock, Script


def _keeping_no_windows(cls: type[_S]) -> type[_S]:
    """``cls`` as a store that keeps no send windows (as a store of another project
    that does not implement ClusterStore): each process keeps its own."""

    class OwnWindows(cls):  # type: ignore[valid-type,misc]
        take_sends = None  # a protocol's method set to None: not implemented
        sends_in_window = None

    return OwnWindows


def _store(windows: str) -> MemoryStore:
    store = (MemoryStore if windows == "store" else _keeping_no_windows(MemoryStore))()
    assert isinstance(store, ClusterStore) == (windows == "store")
    return store


_S = TypeVar("_S", MemoryStore, SQLiteStore)

WINDOWS = pytest.mark.parametrize("windows", ["store", "process"])


# -- the value ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "count", "period", "shown"),
    [
        ("14/s", 14, 1.0, "14/s"),
        ("2000/d", 2000, 86400.0, "2000/d"),
        ("100/min", 100, 60.0, "100/m"),
        ("1/250ms", 1, 0.25, "1/250ms"),
        ("30/5m", 30, 300.0, "30/5m"),
        (" 5 / second ", 5, 1.0, "5/s"),
        ("10/2h", 10, 7200.0, "10/2h"),
        ("3/1.5s", 3, 1.5, "3/1500ms"),
        ("7/Day", 7, 86400.0, "7/d"),
    ],
)
def test_a_rate_is_read_and_shown(text: str, count: int, period: float, shown: str) -> None:
    rate = RateLimit.parse(text)
    assert (rate.count, rate.period) == (count, period)
    assert str(rate) == shown
    assert RateLimit.parse(str(rate)) == rate


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("14/s", "1 s"),
        ("2/5s", "5 s"),
        ("30/5m", "5 min"),
        ("2000/d", "1 d"),
        ("1/250ms", "250 ms"),
    ],
)
def test_a_rates_period_in_words(text: str, said: str) -> None:
    assert RateLimit.parse(text).period_text == said


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("14", 'expected "N/period"'),
        ("14/", 'expected "N/period"'),
        ("14/fortnight", 'expected "N/period"'),
        ("-1/s", 'expected "N/period"'),
        ("1.5/s", 'expected "N/period"'),
        (14, 'expected "N/period"'),
        ("0/s", "the count must be 1 to 1,000,000, not 0"),
        (f"{MAX_COUNT + 1}/d", "the count must be 1 to 1,000,000"),
        ("5/0s", "the period must be more than 0 s"),
        ("5/400d", "at most a year"),
    ],
)
def test_a_bad_rate_says_what_was_expected(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        RateLimit.parse(value)


# -- the window ----------------------------------------------------------------------------
def test_the_window_holds_n_in_any_period() -> None:
    w = SendWindow(RateLimit(3, 10.0))
    assert (w.room(0.0), w.next_at(0.0)) == (3, 0.0)
    w.take(0.0, 2)
    w.take(4.0)
    assert (w.room(4.0), w.next_at(4.0), w.used(4.0)) == (0, 10.0, 3)
    assert w.room(9.999) == 0
    # The two of t=0 are a window old at t=10: room for two; the one of t=4 at t=14.
    assert (w.room(10.0), w.next_at(10.0)) == (2, 10.0)
    w.take(10.0, 2)
    assert (w.room(10.5), w.next_at(10.5)) == (0, 14.0)


def test_no_period_ever_holds_more_than_n() -> None:
    """Whatever the order of asks, the sends taken as the window allows never put more
    than N into any window of the period (a token bucket would let 2N through)."""
    rng = random.Random(7)
    limit = RateLimit(5, 1.0)
    w = SendWindow(limit)
    now, sent = 0.0, []
    for _ in range(2000):
        now += rng.choice((0.0, 0.001, 0.05, 0.3, 1.0))
        n = min(w.room(now), rng.randint(0, 3))
        w.take(now, n)
        sent += [now] * n
        if w.room(now) == 0:
            assert w.next_at(now) > now
    assert len(sent) > 500
    for i, t in enumerate(sent):
        assert sum(1 for u in sent[i:] if u < t + limit.period) <= limit.count


def test_the_stores_grant_never_puts_more_than_n_in_a_period() -> None:
    """``rate_grant`` (what every store's ``take_sends`` works out), asked in any
    order: no window ever holds more than N, and ``next_at`` is the first moment a
    send may start again."""
    rng = random.Random(11)
    count, period = 4, 1.0
    rows: list[tuple[float, int]] = []
    now, sent = 0.0, []
    for _ in range(2000):
        now += rng.choice((0.0, 0.001, 0.05, 0.3, 1.0))
        grant = rate_grant(rows, count=count, period=period, now=now, want=rng.randint(0, 3))
        if grant.granted:
            rows = [(at, n) for at, n in rows if at > now - period] + [(now, grant.granted)]
            sent += [now] * grant.granted
        if grant.used >= count:
            later = grant.next_at
            assert later > now
            assert rate_grant(rows, count=count, period=period, now=later, want=1).granted == 1
            just_before = rate_grant(rows, count=count, period=period, now=later - 1e-6, want=1)
            assert just_before.granted == 0
        else:
            assert grant.next_at == now
    assert len(sent) > 500
    for i, t in enumerate(sent):
        assert sum(1 for u in sent[i:] if u < t + period) <= count


def test_a_new_limit_keeps_the_sends_already_made() -> None:
    windows = RateWindows()
    w = windows.window("relay", RateLimit(10, 60.0))
    assert w is not None
    w.take(0.0, 6)
    assert windows.window("relay", RateLimit(10, 60.0)) is w
    smaller = windows.window("relay", RateLimit(4, 60.0))
    assert smaller is not None and smaller is not w
    # Six sent in the last minute against a limit of four: none now, room at t=60.
    assert (smaller.room(1.0), smaller.next_at(1.0)) == (0, 60.0)
    assert windows.window("relay", None) is None
    fresh = windows.window("relay", RateLimit(4, 60.0))
    assert fresh is not None and fresh.room(1.0) == 4


# -- a spooler -----------------------------------------------------------------------------
def _spooler(
    script: Script, clock: FakeClock, rate: str, windows: str = "store", **kw: object
) -> Spooler:
    kw.setdefault("store", _store(windows))
    policy = replace(SLOW_TIMERS, claim_batch=8)
    cfg = SpoolerConfig(
        transports=(transport("smtp", script, max_rate=RateLimit.parse(rate)),),
        policy=policy,
        node="n1",
    )
    return Spooler.open(cfg, clock=clock, idle=AlwaysIdle(), **kw)  # type: ignore[arg-type]


async def _states(sp: Spooler, ids: list[str]) -> list[RecipientState]:
    return [(await sp.store.recipients(i))[0].state for i in ids]


@WINDOWS
async def test_the_lanes_send_no_more_than_the_rate_and_the_rest_stays_queued(
    windows: str,
) -> None:
    clock = FakeClock()
    script = Script(address_types=("SMTP",))
    async with _spooler(script, clock, "3/10s", windows) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():  # all seven queued before any lane claims
            ids = [(await sp.submit(message(f"SMTP:r{i}@example.org"))).id for i in range(7)]
        await until(lambda: len(script.sent) == 3, what="the first three sent")
        await clock.advance(1.0)
        assert len(script.sent) == 3
        states = await _states(sp, ids)
        # Not claimed while they wait: QUEUED, as if nothing had looked at them.
        assert states.count(RecipientState.DELIVERED) == 3
        assert states.count(RecipientState.QUEUED) == 4
        await clock.advance(8.9)  # t = 9.9: the window still full
        assert len(script.sent) == 3
        await clock.advance(0.2)  # t = 10.1
        await until(lambda: len(script.sent) == 6, what="three more a window later")
        await clock.advance(5.0)
        assert len(script.sent) == 6
        await clock.advance(5.0)
        await until(lambda: len(script.sent) == 7, what="the last one")
        assert sorted(m for m, _ in script.sent) == sorted(ids)
        assert sp.rates.window("smtp", RateLimit(3, 10.0)) is not None


class _SlowToSayWhatIsReady(MemoryStore):
    """A store whose ``next_ready_at`` waits for the test's ``answer`` once ``armed``
    (a store thread busy elsewhere): the clock goes on while the lane waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def next_ready_at(self, transport: str) -> float | None:
        if self.armed:
            self.asked.set()
            await self.answer.wait()
        return await super().next_ready_at(transport)


async def test_a_lane_waits_for_room_until_a_time_not_for_a_delay_from_a_stale_one() -> None:
    """The lane works out when the window has room, then asks the store whether mail is
    ready; the window's time may pass while the store answers.  It then sends at once
    (it waited until a time), not a whole window later (a delay counted from when the
    store answered: CI saw this test's elder miss its five seconds under load)."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",))
    store = _SlowToSayWhatIsReady()
    async with _spooler(script, clock, "3/10s", store=store) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(4):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
            store.armed = True
        await until(lambda: len(script.sent) == 3, what="the first three sent")
        await asyncio.wait_for(store.asked.wait(), 5)  # the lane asks, the window full
        await clock.advance(10.1)  # the window has room while the store still answers
        store.armed = False
        store.answer.set()
        await until(lambda: len(script.sent) == 4, what="the fourth at once")


@WINDOWS
async def test_the_status_row_says_while_the_lane_waits_for_room(windows: str) -> None:
    """``spoolbox status`` and the web page show the row's detail: while the window is
    full it says so, once there is room again what it said before (nothing, or an
    older finding: a slow slice's) comes back; a row in FAILURE keeps its text."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",))
    waiting = "max_rate 2/10s reached: the rest stays queued until there is room"
    async with _spooler(script, clock, "2/10s", windows) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(3):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
        await until(lambda: len(script.sent) == 2, what="the first two sent")
        await until(lambda: sp.status["smtp"].detail == waiting, what="the row saying it")
        await clock.advance(10.1)
        await until(lambda: len(script.sent) == 3, what="the third a window later")
        await until(lambda: sp.status["smtp"].detail is None, what="the row saying no more")
        # An older finding gives way to the wait, and comes back after it.
        older = "slow: a slice ran 5.47 ms, over the 5.0 ms budget (1 so far)"
        sp.status.update("smtp", detail=older)
        with sp.foreground_busy():
            for i in range(3, 6):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
        await until(lambda: len(script.sent) == 4, what="one more: the window's room")
        await until(lambda: sp.status["smtp"].detail == waiting, what="the wait said")
        await clock.advance(10.1)
        await until(lambda: len(script.sent) == 6, what="the last two a window later")
        await until(lambda: sp.status["smtp"].detail == older, what="the older finding back")
        # A row in FAILURE keeps its text: neither replaced nor taken back.
        failing = "connection refused (paused 30 s)"
        row = sp.status["smtp"]
        sp.status.update("smtp", status_code=row.status_code | StatusCode.FAILURE, detail=failing)
        lane = sp.host("smtp").outbound
        lane._show_wait(waiting)
        assert sp.status["smtp"].detail == failing
        lane._show_wait(None, waiting)
        assert sp.status["smtp"].detail == failing
        # A wait is taken back by its own end only: one shown since it stays (max_rate's
        # and destination_concurrency's share the row).
        sp.status.update("smtp", status_code=row.status_code & ~StatusCode.FAILURE, detail=None)
        lane._show_wait("first wait")
        lane._show_wait("second wait")
        lane._show_wait(None, "first wait")
        assert sp.status["smtp"].detail == "second wait"
        lane._show_wait(None, "second wait")
        assert sp.status["smtp"].detail is None


@WINDOWS
async def test_a_flush_says_what_the_window_holds_back_and_waits_only_within_its_deadline(
    windows: str,
) -> None:
    """The window holds the third message back for ten seconds: a flush with five left
    to run ends at once, saying so (not "deadline reached" five seconds later); one
    with a minute waits for the room and sends it."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",))
    async with _spooler(script, clock, "2/10s", windows) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(3):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
        await until(lambda: len(script.sent) == 2, what="the first two sent")
        lane = sp.host("smtp").outbound
        await until(lambda: lane.rate_hold is not None, what="the lane waiting for room")
        report = await sp.flush(upload=True, download=False, deadline=5.0)
        [result] = report.results
        assert (result.queued, result.timed_out, report.timed_out) == (1, False, False)
        assert result.held == "max_rate 2/10s reached; room again in 10 s"  # (a fake clock)
        assert len(script.sent) == 2
        # A deadline past the room: the flush waits for it, and the third goes.
        handle = sp.start_flush(upload=True, download=False, deadline=60.0)
        await until(lambda: sp.status["smtp"].progress is not None, what="the flush under way")
        await clock.advance(10.1)
        report = await handle
        [result] = report.results
        assert (result.delivered, result.queued, result.held) == (1, 0, None), result
        assert len(script.sent) == 3


@WINDOWS
async def test_a_full_window_with_nothing_waiting_says_nothing(
    windows: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The window's N sent and nothing else queued: nothing is held back, so neither
    the log nor the row says so; a message that comes while the window is full waits,
    and then both say it, and it goes once there is room."""
    caplog.set_level(logging.INFO, logger="spoolbox.transport")
    clock = FakeClock()
    script = Script(address_types=("SMTP",))
    async with _spooler(script, clock, "2/10s", windows) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(2):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
        await until(lambda: len(script.sent) == 2, what="the window's two sent")
        await clock.advance(1.0)
        await clock.advance(1.0)
        assert sp.status["smtp"].detail is None
        assert "max_rate" not in caplog.text
        late = (await sp.submit(message("SMTP:late@example.org"))).id
        await until(lambda: "max_rate 2/10s reached" in caplog.text, what="the wait logged")
        assert sp.status["smtp"].detail == (
            "max_rate 2/10s reached: the rest stays queued until there is room"
        )
        assert await _states(sp, [late]) == [RecipientState.QUEUED]
        await clock.advance(8.1)  # t = 10.1: the first two a window old
        await until(lambda: len(script.sent) == 3, what="the late one a window later")
        await until(lambda: sp.status["smtp"].detail is None, what="the row saying no more")


@WINDOWS
async def test_a_message_counts_when_it_starts_not_when_it_is_claimed(windows: str) -> None:
    """One worker, the first message slow (it hangs until t=9.5): the second starts
    at 9.5.  Counted at a claim made ahead of the worker (a batch of two at t=0), the
    next window (from t=10) would let two more start at once, three in [9.5, 19.5).
    The process's window counts a message when it starts; the store's is written by
    claims that take no more than the lane has free workers for."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",), submit=[Act.HANG, Act.SUCCEED])
    async with _spooler(script, clock, "2/10s", windows) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            ids = [(await sp.submit(message(f"SMTP:r{i}@example.org"))).id for i in range(4)]
        await until(lambda: "submit_message" in script.names(), what="the first one hangs")
        await clock.advance(9.5)
        await sp.cancel(ids[0])  # the slow first one ends; the second starts now
        await until(lambda: len(script.sent) == 1, what="the second sent at 9.5")
        await clock.advance(0.6)  # t = 10.1: the first's start is a window old
        await until(lambda: len(script.sent) >= 2, what="a third at 10")
        assert len(script.sent) == 2  # not a fourth beside them
        await clock.advance(5.0)
        assert len(script.sent) == 2  # nor before 19.5
        await clock.advance(5.0)  # t = 20.1
        await until(lambda: len(script.sent) == 3, what="the fourth after 19.5")
        assert [m for m, _ in script.sent] == ids[1:]


@pytest.mark.parametrize("windows", ["store", "process"])
async def test_two_free_workers_and_room_for_one(tmp_path: Path, windows: str) -> None:
    """Two messages submitted together to a lane that waits for work (two workers):
    with room for one in the window, one is sent (the process's window: handed off in
    its submit's transaction; the store's: claimed, the other claimed with it going
    back to the queue) and the other stays queued, unclaimed, until the window has
    room again."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",), concurrency=2)
    cls = SQLiteStore if windows == "store" else _keeping_no_windows(SQLiteStore)
    store = cls(tmp_path / "s.db")
    async with _spooler(script, clock, "1/10s", store=store, close_store=True) as sp:
        await sp.wait_ready(timeout=5)
        lane = sp.host("smtp").outbound
        await until(lambda: lane.waiting >= 1, what="the lane waits for work")
        a, b = await asyncio.gather(
            sp.submit(message("SMTP:a@example.org")), sp.submit(message("SMTP:b@example.org"))
        )
        if windows == "process":
            # One claimed in its submit's transaction (ACTIVE, or already sent), one not.
            states = await _states(sp, [a.id, b.id])
            assert RecipientState.QUEUED in states
            assert {RecipientState.ACTIVE, RecipientState.DELIVERED} & set(states)
        await until(lambda: len(script.sent) == 1, what="one sent")
        [(first, _)] = script.sent
        other = b.id if first == a.id else a.id
        await clock.advance(9.0)
        assert await _states(sp, [other]) == [RecipientState.QUEUED]
        assert len(script.sent) == 1
        await clock.advance(1.1)
        await until(lambda: len(script.sent) == 2, what="the other a window later")
        assert script.sent[1][0] == other


@WINDOWS
async def test_a_spooler_that_replaces_another_keeps_its_sends(windows: str) -> None:
    """A daemon's reload starts a new spooler: the sends of the old one still count
    (the daemon hands the process's windows over).  With the store's window, a new
    spooler given nothing (a restarted daemon) counts them as well."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",))
    async with _spooler(script, clock, "2/60s", windows) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(2):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
        await until(lambda: len(script.sent) == 2, what="two sent")
        rates, store = sp.rates, sp.store
    cfg = SpoolerConfig(
        transports=(transport("smtp", script, max_rate=RateLimit(2, 60.0)),),
        policy=SLOW_TIMERS,
        node="n1",
    )
    handed = RateWindows() if windows == "store" else rates
    async with Spooler.open(cfg, clock=clock, idle=AlwaysIdle(), store=store, rates=handed) as sp2:
        await sp2.wait_ready(timeout=5)
        info = await sp2.submit(message("SMTP:later@example.org"))
        await clock.advance(30.0)
        assert len(script.sent) == 2
        assert await _states(sp2, [info.id]) == [RecipientState.QUEUED]
        await clock.advance(31.0)
        await until(lambda: len(script.sent) == 3, what="sent once the old sends aged out")


async def test_two_spoolers_on_one_store_share_the_window() -> None:
    """Two nodes on one store, each with the transport's ``max_rate = "3/10s"``:
    three messages in any ten seconds between them, not three each."""
    clock = FakeClock()
    store = MemoryStore()
    scripts = [Script(address_types=("SMTP",), concurrency=2) for _ in range(2)]

    def sent() -> int:
        return sum(len(script.sent) for script in scripts)

    def config(node: str, script: Script) -> SpoolerConfig:
        return SpoolerConfig(
            transports=(transport("smtp", script, max_rate=RateLimit(3, 10.0)),),
            policy=replace(SLOW_TIMERS, claim_batch=8),
            node=node,
        )

    async with (
        Spooler.open(config("n1", scripts[0]), clock=clock, idle=AlwaysIdle(), store=store) as a,
        Spooler.open(config("n2", scripts[1]), clock=clock, idle=AlwaysIdle(), store=store) as b,
    ):
        await a.wait_ready(timeout=5)
        await b.wait_ready(timeout=5)
        with a.foreground_busy(), b.foreground_busy():
            ids = [(await a.submit(message(f"SMTP:r{i}@example.org"))).id for i in range(8)]
        await until(lambda: sent() == 3, what="the first three sent")
        for _ in range(9):
            await clock.advance(1.0)  # t = 9: both nodes look again and again
            assert sent() == 3
        states = [(await store.recipients(i))[0].state for i in ids]
        assert states.count(RecipientState.QUEUED) == 5  # not claimed while they wait
        assert await store.sends_in_window("transport:smtp", period=10.0, now=clock.now()) == 3
        await clock.advance(1.1)  # t = 10.1
        await until(lambda: sent() == 6, what="three more a window later")
        await clock.advance(5.0)
        assert sent() == 6
        await clock.advance(5.0)
        await until(lambda: sent() == 8, what="the last two")
        done = sorted(m for script in scripts for m, _ in script.sent)
        assert done == sorted(ids)  # each sent once


async def test_a_lane_claims_no_more_than_the_window_holds() -> None:
    """Ten connections and ``max_rate = "1/10s"``: each claim takes one message, not
    ten to put nine back (the window's count bounds a claim)."""
    clock = FakeClock()
    script = Script(address_types=("SMTP",), concurrency=10)
    store = MemoryStore()
    claims: list[int] = []
    real_claim = store.claim

    async def claim(transport: str, **kw: Any) -> list[ClaimedJob]:
        jobs = await real_claim(transport, **kw)
        claims.append(len(jobs))
        return jobs

    store.claim = claim  # type: ignore[method-assign]
    async with _spooler(script, clock, "1/10s", store=store) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(3):
                await sp.submit(message(f"SMTP:r{i}@example.org"))
        await until(lambda: len(script.sent) == 1, what="the first sent")
        await clock.advance(10.1)
        await until(lambda: len(script.sent) == 2, what="the second a window later")
    assert max(claims) == 1, claims
