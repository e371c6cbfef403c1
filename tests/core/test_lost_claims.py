"""Claims the store committed but whose answer was lost (a PostgreSQL connection cut
after its COMMIT): the lane returns them to the queue once the store answers again
(``OutboundLane.claim_lost``, ``Store.release_lost_claims``), instead of leaving
them leased to this node until their lease ends (two minutes by default).

Every test runs with a lease of 120 s: a lost claim left to its lease would make
the test time out waiting for the delivery."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST, message, transport, until

from spoolbox import AlwaysIdle, MessageState, RecipientState, Spooler, SpoolerConfig, SQLiteStore
from spoolbox.store import MemoryStore, StoreError
from spoolbox.testing import Script

CUT = "PostgreSQL store postgresql://db/spool: server closed the connection unexpectedly"
LONG_LEASE = replace(FAST, lease=120.0)


class _LosesAClaimsAnswer(MemoryStore):
    """A memory store that, while ``lose`` is set, commits the next claim that takes
    something and then fails it, as when the connection is cut after the commit."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = True
        self.lost: list[str] = []  # the message ids of the claims whose answer was lost

    async def claim(self, transport: str, **kw: Any) -> Any:
        jobs = await super().claim(transport, **kw)
        if jobs and self.lose:
            self.lose = False
            self.lost.extend(j.message.id for j in jobs)
            raise StoreError(CUT)
        return jobs


def _released_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "went back to the queue" in r.getMessage()]


async def test_a_claim_whose_answer_was_lost_goes_back_to_the_queue_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolbox")
    store = _LosesAClaimsAnswer()
    script = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=LONG_LEASE)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        assert await sp.wait_for(mid, timeout=5) is MessageState.SENT
    assert store.lost == [mid]
    assert script.sent == [(mid, 0)]
    assert _released_lines(caplog) == [
        "transport 'relay': 1 recipient(s) leased to this node and held by none of its "
        "jobs after the store failed (a claim whose answer was lost, or a settle undone) "
        "went back to the queue"
    ]


async def test_the_jobs_the_lane_holds_are_kept() -> None:
    # Message a is claimed and stalls in the transport; message b's claim is lost.
    # The release returns b only: were a's claim released too, its settle would be
    # refused (LeaseLost) and a claimed and sent again.
    store = _LosesAClaimsAnswer()
    store.lose = False
    stall = asyncio.Event()
    script = Script(("SMTP",), concurrency=2, stall=stall)
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=LONG_LEASE)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        a = (await sp.submit(message("SMTP:a@example.org"))).id
        lane = sp.host("relay").outbound
        await until(lambda: lane.sending == 1, what="a in the transport")
        store.lose = True
        b = (await sp.submit(message("SMTP:b@example.org"))).id
        await until(lambda: store.lost == [b], what="b's claim lost")
        await until(lambda: lane.sending == 2, what="b claimed again, in the transport")
        [ra] = await sp.store.recipients(a)
        assert ra.state is RecipientState.ACTIVE  # still a's first claim
        stall.set()
        assert await sp.wait_for(a, timeout=5) is MessageState.SENT
        assert await sp.wait_for(b, timeout=5) is MessageState.SENT
    assert sorted(script.sent) == sorted([(a, 0), (b, 0)])


class _LosesAHandOffsAnswer(SQLiteStore):
    """An SQLite store whose first hand-off (a submit that claims for a waiting lane)
    commits and then fails, as when the answer to its COMMIT is lost."""

    lose = True

    async def submit_claiming(self, message: Any, **kw: Any) -> Any:
        got = await super().submit_claiming(message, **kw)
        if self.lose and got[1] is not None:
            self.lose = False
            raise StoreError(CUT)
        return got


async def test_a_hand_off_whose_answer_was_lost_goes_back_to_the_queue(tmp_path: Path) -> None:
    script = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=LONG_LEASE, node="n1")
    store = _LosesAHandOffsAnswer(tmp_path / "s.db")
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        await sp.wait_ready(timeout=5)
        lane = sp.host("relay").outbound
        await until(lambda: lane.waiting == 1, what="the lane waits for work")
        new = message("SMTP:bob@example.org")
        with pytest.raises(StoreError, match="closed the connection"):
            await sp.submit(new)  # the submitter hears of a failure: the message is in
        assert not store.lose
        assert await sp.wait_for(new.id, timeout=5) is MessageState.SENT
    assert script.sent == [(new.id, 0)]


class _UndoesASettle(MemoryStore):
    """A memory store that acknowledges the next settle of a delivered job without
    writing it (as a PostgreSQL crash undoes an asynchronous commit), and then fails
    the next claim (the crash, as the node sees it)."""

    def __init__(self) -> None:
        super().__init__()
        self.undo = True
        self.undone: list[str] = []
        self.failing_claims = 0

    async def settle(self, message_id: str, updates: Any, **kw: Any) -> Any:
        delivered = any(u.state is RecipientState.DELIVERED for u in updates)
        if self.undo and delivered and kw.get("owner") is not None:
            self.undo = False
            self.undone.append(message_id)
            self.failing_claims = 1
            return await self.get_message(message_id)  # what a settle answers
        return await super().settle(message_id, updates, **kw)

    async def claim(self, transport: str, **kw: Any) -> Any:
        if self.failing_claims:
            self.failing_claims -= 1
            raise StoreError(CUT)
        return await super().claim(transport, **kw)


async def test_a_settle_the_store_undid_is_written_again_not_delivered_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolbox")
    store = _UndoesASettle()
    script = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=LONG_LEASE)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await until(lambda: store.undone == [mid], what="the settle undone")
        [r] = await sp.store.recipients(mid)
        assert r.state is RecipientState.ACTIVE  # as after the crash
        assert await sp.wait_for(mid, timeout=5) is MessageState.SENT
    assert script.sent == [(mid, 0)]  # written again: not delivered a second time
    assert [r.getMessage() for r in caplog.records if "written again" in r.getMessage()] == [
        "transport 'relay': 1 settle(s) the store had acknowledged were undone by its "
        "failure, and are written again"
    ]
    assert _released_lines(caplog) == []


class _UndoesAClaimAndItsSettle(_UndoesASettle):
    """As :class:`_UndoesASettle`, but the crash undoes the job's claim too: the
    recipient is QUEUED again, under no claim (as before it was claimed)."""

    async def settle(self, message_id: str, updates: Any, **kw: Any) -> Any:
        undoing = self.undo and any(u.state is RecipientState.DELIVERED for u in updates)
        info = await super().settle(message_id, updates, **kw)
        if undoing and not self.undo:
            for u in updates:
                key = (message_id, u.index)
                self._leases.pop(key, None)
                self._claimed.pop(key, None)
                r = self._rcpts[message_id][u.index]
                self._set(replace(r, state=RecipientState.QUEUED))
        return info


async def test_a_settle_whose_claim_the_store_undid_too_is_written_again() -> None:
    store = _UndoesAClaimAndItsSettle()
    script = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=LONG_LEASE)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await until(lambda: store.undone == [mid], what="the claim and settle undone")
        assert await sp.wait_for(mid, timeout=5) is MessageState.SENT
    assert script.sent == [(mid, 0)]  # not claimed and delivered again


class _UndoesAClaim(MemoryStore):
    """A memory store that answers the first claim that takes something and then
    forgets it, as a PostgreSQL crash undoes a claim's asynchronous commit after the
    node had its answer: the recipients are QUEUED again, under no claim."""

    def __init__(self) -> None:
        super().__init__()
        self.undone: list[str] = []

    async def claim(self, transport: str, **kw: Any) -> Any:
        jobs = await super().claim(transport, **kw)
        if jobs and not self.undone:
            for job in jobs:
                self.undone.append(job.message.id)
                for r in job.recipients:
                    key = (r.message_id, r.index)
                    self._leases.pop(key, None)
                    self._claimed.pop(key, None)
                    rec = self._rcpts[r.message_id][r.index]
                    self._set(replace(rec, state=RecipientState.QUEUED))
        return jobs


async def test_a_job_whose_claim_the_store_lost_is_settled_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoolbox")
    store = _UndoesAClaim()
    stall = asyncio.Event()  # the delivery waits until the claim is undone
    script = Script(("SMTP",), stall=stall)
    cfg = SpoolerConfig(transports=(transport("relay", script),), policy=LONG_LEASE)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await until(lambda: store.undone == [mid], what="the claim undone")
        stall.set()
        assert await sp.wait_for(mid, timeout=5) is MessageState.SENT
    assert script.sent == [(mid, 0)]  # settled, not claimed and delivered again
    lines = [r.getMessage() for r in caplog.records]
    assert (
        f"settling {mid}: the store had lost its claim (its failure undid it); "
        "the outcome is written all the same" in lines
    )
    assert not any("its lease was taken over" in line for line in lines)
