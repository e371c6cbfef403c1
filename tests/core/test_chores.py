"""How the spooler's background chores (routing, housekeeping) log a store that fails
them (spoolbox._core.chores): one WARNING line when a streak starts, with the store's
error and no traceback; DEBUG while it lasts; one INFO line when a round works again.
Any other exception is a bug: ERROR with its traceback, every time."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
from helpers import FAST, message, transport, until

from spoolbox import AlwaysIdle, MessageState, Spooler, SpoolerConfig
from spoolbox._core.chores import ChoreTrouble
from spoolbox.model import RecipientState, StatusCode
from spoolbox.store import LeaseLost, MemoryStore, StoreError, UnknownMessage
from spoolbox.testing import Script

DOWN = "PostgreSQL store postgresql://db/spool: terminating connection due to administrator command"
log = logging.getLogger("spoolbox.test.chores")


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]


def test_a_store_streak_is_one_warning_then_debug_then_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    trouble = ChoreTrouble("routing", log)
    trouble.ok()  # nothing to end
    for _ in range(3):
        trouble.failed(StoreError(DOWN), "retrying within 5 s")
    assert trouble.failing
    trouble.ok()
    trouble.ok()
    assert not trouble.failing
    assert _lines(caplog) == [
        (logging.WARNING, f"routing: the store failed: {DOWN}; retrying within 5 s", False),
        (
            logging.DEBUG,
            f"routing: the store failed: {DOWN}; retrying within 5 s (2 failures in a row)",
            False,
        ),
        (
            logging.DEBUG,
            f"routing: the store failed: {DOWN}; retrying within 5 s (3 failures in a row)",
            False,
        ),
        (logging.INFO, "routing: working again after 3 failures", False),
    ]


def test_any_other_exception_is_an_error_with_its_traceback_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    trouble = ChoreTrouble("housekeeping", log)
    for _ in range(2):
        trouble.failed(KeyError("bug"), "retrying in 1 s")
    assert not trouble.failing  # a bug is no store streak
    assert _lines(caplog) == [(logging.ERROR, "housekeeping failed; retrying in 1 s", True)] * 2


class _DownStore(MemoryStore):
    """A memory store whose routing and housekeeping reads fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.failed: dict[str, int] = {"unrouted": 0, "release_expired": 0}

    async def unrouted(self, **kw: Any) -> Any:
        if self.down:
            self.failed["unrouted"] += 1
            raise StoreError(DOWN)
        return await super().unrouted(**kw)

    async def release_expired(self, **kw: Any) -> Any:
        if self.down:
            self.failed["release_expired"] += 1
            raise StoreError(DOWN)
        return await super().release_expired(**kw)


async def test_a_spooler_whose_store_is_down_logs_each_chore_once_and_its_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolbox.spooler")
    store = _DownStore()
    cfg = SpoolerConfig(transports=(), policy=FAST, node="test-node")
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        await until(lambda: min(store.failed.values()) >= 3, what="several failed rounds of each")
        assert min(store.failed.values()) >= 3, store.failed
        store.down = False
        await until(
            lambda: sum("working again" in m for _, m, _ in _lines(caplog)) == 2,
            what="both chores working again",
        )
    lines = [
        (level, text, tb)
        for level, text, tb in _lines(caplog)
        if "store failed" in text or "again" in text
    ]
    warnings = [(text, tb) for level, text, tb in lines if level == logging.WARNING]
    assert warnings == [
        (f"routing: the store failed: {DOWN}; retrying within {FAST.router_interval:g} s", False),
        (
            f"housekeeping: the store failed: {DOWN}; retrying in {FAST.housekeeping_interval:g} s",
            False,
        ),
    ] or warnings == [
        (
            f"housekeeping: the store failed: {DOWN}; retrying in {FAST.housekeeping_interval:g} s",
            False,
        ),
        (f"routing: the store failed: {DOWN}; retrying within {FAST.router_interval:g} s", False),
    ]
    infos = sorted(text.split(" after ")[0] for level, text, _ in lines if level == logging.INFO)
    assert infos == ["housekeeping: working again", "routing: working again"]
    assert not any(level >= logging.ERROR for level, _, _ in _lines(caplog))
    assert not any(tb for _, _, tb in _lines(caplog))


class _SettleDownStore(MemoryStore):
    """A memory store whose first ``failures`` settles fail, as when the connection is
    cut."""

    def __init__(self, failures: int = 1) -> None:
        super().__init__()
        self.left = failures
        self.failed = asyncio.Event()

    async def settle(self, message_id: str, updates: Any, **kw: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            if not self.left:
                self.failed.set()
            raise StoreError(DOWN)
        return await super().settle(message_id, updates, **kw)


async def test_a_settle_the_store_fails_for_a_moment_is_tried_again_not_delivered_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolbox")
    store = _SettleDownStore(failures=2)
    script = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=FAST)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await sp.wait_for(mid, timeout=5)
        assert await sp.store.state_of(mid, now=sp.clock.now()) is MessageState.SENT
    assert len(script.sent) == 1  # the outcome was kept and written late: no second try
    lines = [(lv, m, tb) for lv, m, tb in _lines(caplog) if DOWN in m or "again after" in m]
    assert lines == [
        (logging.WARNING, f"settling: the store failed: {DOWN}; trying again", False),
        (
            logging.DEBUG,
            f"settling: the store failed: {DOWN}; trying again (2 failures in a row)",
            False,
        ),
        (logging.INFO, "settling: working again after 2 failures", False),
    ]


async def test_a_settle_the_store_fails_too_long_gives_the_job_up_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolbox")
    store = _SettleDownStore(failures=1000)
    policy = replace(FAST, lease=0.3)  # tried again for a third of it: 0.1 s
    cfg = SpoolerConfig(transports=(transport("relay", Script(("SMTP",))),), policy=policy)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        await sp.submit(message("SMTP:bob@example.org"))
        await until(
            lambda: any(m.startswith("relay: the store failed") for _, m, _ in _lines(caplog)),
            what="the lane to give the job up",
        )
    given_up = [(lv, m, tb) for lv, m, tb in _lines(caplog) if m.startswith("relay: ")]
    assert given_up[0] == (
        logging.WARNING,
        f"relay: the store failed: {DOWN}; the message goes back to the queue",
        False,
    )
    assert not any(level >= logging.ERROR for level, _, _ in _lines(caplog))
    assert not any(tb for _, _, tb in _lines(caplog))


async def test_a_store_outage_does_not_pause_the_transport_and_the_mail_goes_out() -> None:
    # More failed settles than the failure threshold: were they the transport's
    # failures, it would be paused with FAILURE on its row (for up to five minutes
    # with the default policy) after the store is back.
    store = _SettleDownStore(failures=FAST.failure_threshold + 2)
    script = Script(("SMTP",))
    policy = replace(FAST, lease=0.3)  # the unsettled claims come back soon
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=policy)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        failure_seen: list[str] = []
        sp.status.add_observer(
            lambda change: (
                failure_seen.append(change.new.detail or "")
                if change.name == "relay"
                and change.new is not None
                and change.new.status_code & StatusCode.FAILURE
                else None
            )
        )
        await sp.wait_ready(timeout=5)
        ids = [(await sp.submit(message(f"SMTP:u{i}@example.org"))).id for i in range(3)]
        await asyncio.wait_for(store.failed.wait(), 5)
        for mid in ids:
            await sp.wait_for(mid, timeout=5)
        states = [await sp.store.state_of(i, now=sp.clock.now()) for i in ids]
        assert states == [MessageState.SENT] * 3
        host = sp.host("relay")
        assert host.consecutive_failures == 0
    assert failure_seen == []


class _ClaimDownStore(MemoryStore):
    """A memory store whose first ``failures`` claims fail."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.left = failures

    async def claim(self, transport: str, **kw: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            raise StoreError(DOWN)
        return await super().claim(transport, **kw)


async def test_claims_the_store_fails_are_one_warning_and_one_info_then_the_mail_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolbox")
    store = _ClaimDownStore(failures=4)
    cfg = SpoolerConfig(transports=(transport("relay", Script(("SMTP",))),), policy=FAST)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await sp.wait_for(mid, timeout=5)
        assert await sp.store.state_of(mid, now=sp.clock.now()) is MessageState.SENT
    lines = [
        (lv, m) for lv, m, _ in _lines(caplog) if m.startswith("relay: ") and lv > logging.DEBUG
    ]
    backoff = f"{FAST.failure_backoff:g}"
    assert lines == [
        (logging.WARNING, f"relay: the store failed: {DOWN}; claiming again in {backoff} s"),
        (logging.INFO, "relay: working again after 4 failures"),
    ]
    assert not any(tb for _, _, tb in _lines(caplog))


class _RenewDownStore(MemoryStore):
    """A memory store whose lease renewals fail while ``renew_down``; counts the
    claims that took something and the renewals refused as taken over."""

    def __init__(self) -> None:
        super().__init__()
        self.renew_down = True
        self.claims = 0
        self.lost = 0

    async def claim(self, transport: str, **kw: Any) -> Any:
        jobs = await super().claim(transport, **kw)
        self.claims += bool(jobs)
        return jobs

    async def renew(self, job: Any, **kw: Any) -> Any:
        if self.renew_down:
            raise StoreError(DOWN)
        try:
            return await super().renew(job, **kw)
        except LeaseLost:
            self.lost += 1
            raise


async def test_a_lease_lost_under_way_does_not_cancel_the_message_claimed_again() -> None:
    # The store is away longer than the lease while a delivery hangs: the lease runs
    # out, the message goes back to the queue and this spooler claims it again (the
    # new job waits behind the old one in the lane).  The old job's lost lease stops
    # the old delivery, not the new claim: the message is delivered, not cancelled.
    store = _RenewDownStore()
    stall = asyncio.Event()
    script = Script(("SMTP",), concurrency=2, stall=stall)
    policy = replace(FAST, lease=0.3)
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=policy)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await until(lambda: store.claims >= 2, what="the claim again after the lease")
        store.renew_down = False
        await until(lambda: store.lost >= 1, what="the old lease refused as lost")
        stall.set()
        await sp.wait_for(mid, timeout=5)
        assert await sp.store.state_of(mid, now=sp.clock.now()) is MessageState.SENT


class _GoneStore(MemoryStore):
    """A memory store that answers every settle: no such message (deleted meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.settles = 0

    async def settle(self, message_id: str, updates: Any, **kw: Any) -> Any:
        self.settles += 1
        raise UnknownMessage(f"{message_id}: no such message")


async def test_a_settle_answered_no_such_message_is_not_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="spoolbox")
    store = _GoneStore()
    cfg = SpoolerConfig(transports=(transport("relay", Script(("SMTP",))),), policy=FAST)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        await sp.submit(message("SMTP:bob@example.org"))
        await until(
            lambda: any(m.startswith("relay: the store failed") for _, m, _ in _lines(caplog)),
            what="the lane to give the job up",
        )
        await asyncio.sleep(0.3)  # a retry would come within 0.1 s
        assert store.settles == 1
    assert not any("trying again" in m for _, m, _ in _lines(caplog))


class _DownForAWhileStore(MemoryStore):
    """A memory store whose settles fail until ``up`` is set; records the settles of
    a job given back (every recipient QUEUED, no attempt counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = asyncio.Event()
        self.given_back = 0

    async def settle(self, message_id: str, updates: Any, **kw: Any) -> Any:
        if not self.up.is_set():
            raise StoreError(DOWN)
        if all(u.state is RecipientState.QUEUED and not u.count_attempt for u in updates):
            self.given_back += 1
        return await super().settle(message_id, updates, **kw)


async def test_a_job_given_up_goes_back_to_the_queue_once_the_store_is_back() -> None:
    # The settle is tried for a third of the lease (1 s of 3 s) and given up; the store
    # comes back a moment later: the job goes back to the queue then, not when its
    # lease runs out, and the message is delivered.
    store = _DownForAWhileStore()
    script = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=replace(FAST, lease=3.0))
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await asyncio.sleep(1.3)  # the settle's window (1 s) is over: given up
        store.up.set()
        await until(lambda: store.given_back == 1, what="the job given back")
        await sp.wait_for(mid, timeout=5)
        assert await sp.store.state_of(mid, now=sp.clock.now()) is MessageState.SENT
