"""Stateful property test: each store backend (memory, SQLite, PostgreSQL) against a
small pure model of the queue.

Hypothesis drives random sequences of submit, claim, settle (delivered, failed,
deferred, parked), hold, release, cancel, retry-now, unpark, release-owner and lease
expiry, and after every step checks that the store and the model agree: every
recipient in exactly one state, the same states and retry times, the same counters,
nothing lost.  Claims are checked rather than predicted: the jobs must be the
highest-priority, earliest-ready messages, each with all its ready recipients.

State machines are synchronous; each one drives its store on a private event loop.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spoolbox.model import (
    TERMINAL,
    Address,
    NewMessage,
    Priority,
    RecipientState,
    message_state,
)
from spoolbox.store.base import LeaseLost, RecipientUpdate, Store
from spoolbox.store.memory import MemoryStore
from spoolbox.store.sqlite import SQLiteStore

_T = TypeVar("_T")
_R = RecipientState
LEASE = 20.0
OWNERS = ("o1", "o2")
OUTCOMES = ("delivered", "failed", "retry", "park", "requeue")
PICK = st.integers(min_value=0, max_value=10_000)


@dataclass
class _Rcpt:
    state: RecipientState = _R.QUEUED
    retry_at: float = 0.0
    owner: str | None = None
    lease_until: float = 0.0
    claim: int = 0  # the token of the claim holding it


@dataclass
class _Msg:
    message: NewMessage
    send_at: float
    held: bool = False
    rcpts: list[_Rcpt] = field(default_factory=list)

    def ready_at(self, r: _Rcpt) -> float:
        return max(self.send_at, r.retry_at)

    def back(self) -> RecipientState:
        """Where a recipient goes when it returns to the queue."""
        return _R.HELD if self.held else _R.QUEUED


class _StoreMachine(RuleBasedStateMachine):
    make_store: ClassVar[Callable[[Path], Store]]

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self._loop = asyncio.new_event_loop()
        self.store = type(self).make_store(Path(self._tmp.name))
        self._run(self.store.open())
        self.now = 1000.0
        self.msgs: dict[str, _Msg] = {}
        self.seq = 0
        # leases that lapsed: (id, owner, claim token, index)
        self.lost: list[tuple[str, str, int, int]] = []

    def _run(self, awaitable: Awaitable[_T]) -> _T:
        return self._loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        try:
            self._run(self.store.close())
        finally:
            self._loop.close()
            self._tmp.cleanup()

    # -- model helpers ---------------------------------------------------------------
    def _pick(self, pick: int) -> str:
        ids = sorted(self.msgs)
        return ids[pick % len(ids)]

    def _ready(self) -> dict[str, tuple[int, float]]:
        """Claimable messages: id -> (priority, earliest ready time of a ready recipient)."""
        out: dict[str, tuple[int, float]] = {}
        for mid, m in self.msgs.items():
            times = [
                m.ready_at(r) for r in m.rcpts if r.state is _R.QUEUED and m.ready_at(r) <= self.now
            ]
            if times:
                out[mid] = (int(m.message.priority), min(times))
        return out

    def _leases(self) -> list[tuple[str, str, int, list[int]]]:
        """Who holds what: (message id, owner, claim token, indexes)."""
        groups: dict[tuple[str, str, int], list[int]] = {}
        for mid, m in sorted(self.msgs.items()):
            for i, r in enumerate(m.rcpts):
                if r.state is _R.ACTIVE and r.owner is not None:
                    groups.setdefault((mid, r.owner, r.claim), []).append(i)
        return [(mid, owner, claim, idxs) for (mid, owner, claim), idxs in sorted(groups.items())]

    def _unlease(self, m: _Msg, r: _Rcpt) -> None:
        assert r.owner is not None
        self.lost.append((m.message.id, r.owner, r.claim, m.rcpts.index(r)))
        r.state, r.owner = m.back(), None

    # -- rules -----------------------------------------------------------------------
    @rule(
        n=st.integers(min_value=1, max_value=3),
        priority=st.sampled_from(list(Priority)),
        delay=st.sampled_from([None, 0.0, 30.0]),
    )
    def submit(self, n: int, priority: Priority, delay: float | None) -> None:
        mid = f"m{self.seq:03d}"
        self.seq += 1
        send_at = None if delay is None else self.now + delay
        message = NewMessage(
            sender=None,
            recipients=tuple(Address("X", f"r{i}@example.org") for i in range(n)),
            content=b"Subject: " + mid.encode() + b"\r\n\r\nbody\r\n",
            priority=priority,
            send_at=send_at,
            id=mid,
        )
        info = self._run(self.store.submit(message, now=self.now, lifetime=1e9))
        assert info.id == mid
        self._run(self.store.assign_routes([(mid, i, "x") for i in range(n)]))
        self.msgs[mid] = _Msg(message, send_at or 0.0, rcpts=[_Rcpt() for _ in range(n)])

    @rule(count=st.integers(min_value=1, max_value=3), again=st.booleans(), pick=PICK)
    def submit_many(self, count: int, again: bool, pick: int) -> None:
        """New messages routed in one transaction, with an old one again (idempotent)."""
        new: list[NewMessage] = []
        for _ in range(count):
            mid = f"m{self.seq:03d}"
            self.seq += 1
            new.append(
                NewMessage(
                    sender=None,
                    recipients=(Address("X", "r0@example.org"),),
                    content=b"Subject: " + mid.encode() + b"\r\n\r\nbody\r\n",
                    id=mid,
                )
            )
        old = self.msgs[self._pick(pick)] if again and self.msgs else None
        lot = new + ([old.message] if old is not None else [])
        infos = self._run(
            self.store.submit_many(
                lot, now=self.now, lifetime=1e9, routes=[["x"] * len(m.recipients) for m in lot]
            )
        )
        assert [i.id for i in infos] == [m.id for m in lot]
        if old is not None:
            assert infos[-1].held == old.held
        for m in new:
            self.msgs[m.id] = _Msg(m, 0.0, rcpts=[_Rcpt()])

    @precondition(lambda self: self.msgs)
    @rule(pick=PICK)
    def resubmit(self, pick: int) -> None:
        m = self.msgs[self._pick(pick)]
        info = self._run(self.store.submit(m.message, now=self.now + 1, lifetime=5.0))
        assert info.id == m.message.id
        assert info.held == m.held

    @rule(dt=st.sampled_from([1.0, 10.0, 40.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(min_value=1, max_value=3))
    def claim(self, owner: str, limit: int) -> None:
        ready = self._ready()
        jobs = self._run(self.store.claim("x", owner=owner, now=self.now, lease=LEASE, limit=limit))
        ids = [j.message.id for j in jobs]
        assert len(ids) == len(set(ids)) == min(limit, len(ready)), (ids, ready)

        def key(mid: str) -> tuple[int, float]:
            return (-ready[mid][0], ready[mid][1])

        assert all(mid in ready for mid in ids), (ids, ready)
        assert [key(mid) for mid in ids] == sorted(key(mid) for mid in ids)
        left = [key(mid) for mid in ready if mid not in ids]
        if ids and left:
            assert key(ids[-1]) <= min(left), (ids, ready)
        for job in jobs:
            m = self.msgs[job.message.id]
            expected = [
                i
                for i, r in enumerate(m.rcpts)
                if r.state is _R.QUEUED and m.ready_at(r) <= self.now
            ]
            assert [r.index for r in job.recipients] == expected
            assert (job.owner, job.lease_until) == (owner, self.now + LEASE)
            for i in expected:
                m.rcpts[i].state = _R.ACTIVE
                m.rcpts[i].owner = owner
                m.rcpts[i].lease_until = self.now + LEASE
                m.rcpts[i].claim = job.claim

    @precondition(lambda self: self._leases())
    @rule(pick=PICK, count=PICK, outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1))
    def settle(self, pick: int, count: int, outcomes: list[str]) -> None:
        groups = self._leases()
        mid, owner, claim, idxs = groups[pick % len(groups)]
        idxs = idxs[: 1 + count % len(idxs)]
        m = self.msgs[mid]
        updates: list[RecipientUpdate] = []
        for k, i in enumerate(idxs):
            outcome = outcomes[k % len(outcomes)]
            r = m.rcpts[i]
            r.owner = None
            if outcome == "delivered":
                updates.append(RecipientUpdate(i, _R.DELIVERED, "2.0.0"))
                r.state, r.retry_at = _R.DELIVERED, 0.0
            elif outcome == "failed":
                updates.append(RecipientUpdate(i, _R.FAILED, "5.0.0"))
                r.state, r.retry_at = _R.FAILED, 0.0
            elif outcome == "park":
                updates.append(RecipientUpdate(i, _R.PARKED))
                r.state, r.retry_at = _R.PARKED, 0.0
            else:
                retry = self.now + (15.0 if outcome == "retry" else 0.0)
                updates.append(RecipientUpdate(i, _R.QUEUED, "4.0.0", retry_at=retry))
                r.state, r.retry_at = m.back(), retry
        self._run(self.store.settle(mid, updates, owner=owner, now=self.now, claim=claim))

    @precondition(lambda self: self._leases())
    @rule(pick=PICK)
    def settle_without_the_lease(self, pick: int) -> None:
        groups = self._leases()
        mid, _, claim, idxs = groups[pick % len(groups)]
        try:
            self._run(
                self.store.settle(
                    mid,
                    [RecipientUpdate(idxs[0], _R.DELIVERED)],
                    owner="intruder",
                    now=self.now,
                    claim=claim,
                )
            )
        except LeaseLost:
            pass
        else:
            raise AssertionError("a settle without the lease was accepted")

    @precondition(lambda self: self.lost)
    @rule(pick=PICK, outcome=st.sampled_from([_R.DELIVERED, _R.FAILED, _R.QUEUED]))
    def settle_after_the_lease_lapsed(self, pick: int, outcome: RecipientState) -> None:
        # Even when the same owner claimed it again: that is a later claim's to settle.
        mid, owner, claim, index = self.lost[pick % len(self.lost)]
        try:
            self._run(
                self.store.settle(
                    mid, [RecipientUpdate(index, outcome)], owner=owner, now=self.now, claim=claim
                )
            )
        except LeaseLost:
            pass
        else:
            raise AssertionError(f"{owner} settled {mid}#{index} after its lease lapsed")

    @precondition(lambda self: self.msgs)
    @rule(pick=PICK)
    def hold(self, pick: int) -> None:
        mid = self._pick(pick)
        m = self.msgs[mid]
        assert self._run(self.store.hold(mid)).held
        m.held = True
        for r in m.rcpts:
            if r.state in (_R.QUEUED, _R.PARKED):
                r.state = _R.HELD

    @precondition(lambda self: self.msgs)
    @rule(pick=PICK)
    def release(self, pick: int) -> None:
        mid = self._pick(pick)
        m = self.msgs[mid]
        assert not self._run(self.store.release(mid, now=self.now)).held
        m.held = False
        for r in m.rcpts:
            if r.state is _R.HELD:
                r.state, r.retry_at = _R.QUEUED, 0.0

    @precondition(lambda self: self.msgs)
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        mid = self._pick(pick)
        m = self.msgs[mid]
        active = self._run(self.store.cancel(mid))
        assert [r.index for r in active] == [
            i for i, r in enumerate(m.rcpts) if r.state is _R.ACTIVE
        ]
        for r in m.rcpts:
            if r.state is not _R.ACTIVE and r.state not in TERMINAL:
                r.state = _R.CANCELLED

    @precondition(lambda self: self.msgs)
    @rule(pick=PICK)
    def retry_now(self, pick: int) -> None:
        mid = self._pick(pick)
        waiting = [
            r for r in self.msgs[mid].rcpts if r.state is _R.QUEUED and r.retry_at > self.now
        ]
        assert self._run(self.store.retry_now(mid, now=self.now)) == len(waiting)
        for r in waiting:
            r.retry_at = 0.0

    @rule()
    def unpark_all(self) -> None:
        parked = [(m, r) for m in self.msgs.values() for r in m.rcpts if r.state is _R.PARKED]
        assert self._run(self.store.unpark("x", None, now=self.now)) == len(parked)
        for m, r in parked:
            r.state, r.retry_at = m.back(), 0.0

    @rule(owner=st.sampled_from(OWNERS))
    def release_owner(self, owner: str) -> None:
        leased = [
            (m, r)
            for m in self.msgs.values()
            for r in m.rcpts
            if r.state is _R.ACTIVE and r.owner == owner
        ]
        assert self._run(self.store.release_owner(owner)) == len(leased)
        for m, r in leased:
            self._unlease(m, r)

    @rule()
    def expire_leases(self) -> None:
        self.now += LEASE + 1
        lapsed = [
            (m, r)
            for m in self.msgs.values()
            for r in m.rcpts
            if r.state is _R.ACTIVE and r.lease_until < self.now
        ]
        assert self._run(self.store.release_expired(now=self.now)) == len(lapsed)
        for m, r in lapsed:
            self._unlease(m, r)

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def store_agrees_with_the_model(self) -> None:
        listing = self._run(self.store.list_messages(limit=10_000, now=self.now))
        # Nothing lost, nothing invented.
        assert [s.info.id for s in listing] == sorted(self.msgs)
        for summary in listing:
            m = self.msgs[summary.info.id]
            assert summary.info.held == m.held
            assert [r.state for r in summary.recipients] == [r.state for r in m.rcpts]
            assert [r.retry_at for r in summary.recipients] == [r.retry_at for r in m.rcpts]
            queued = [m.ready_at(r) for r in m.rcpts if r.state is _R.QUEUED]
            waiting = bool(queued) and all(t > self.now for t in queued)
            expected = message_state((r.state for r in m.rcpts), waiting_on_retry=waiting)
            assert summary.state is expected
        # Every recipient is counted once, in its one state.
        model = Counter(r.state for m in self.msgs.values() for r in m.rcpts)
        counts = self._run(self.store.counts())
        assert counts == {s: model.get(s, 0) for s in RecipientState}
        assert sum(counts.values()) == sum(len(m.rcpts) for m in self.msgs.values())

    @invariant()
    def scheduling_agrees_with_the_model(self) -> None:
        claimable = self._run(self.store.count_claimable("x", now=self.now, ignore_retry=False))
        assert claimable == len(self._ready())
        times = [m.ready_at(r) for m in self.msgs.values() for r in m.rcpts if r.state is _R.QUEUED]
        assert self._run(self.store.next_ready_at("x")) == (min(times) if times else None)


_SETTINGS = settings(max_examples=50, stateful_step_count=30, deadline=None)


class _MemoryMachine(_StoreMachine):
    make_store = staticmethod(lambda _dir: MemoryStore())


class _SQLiteMachine(_StoreMachine):
    # NORMAL: no fsync per step (durability is tested in test_sqlite.py).
    make_store = staticmethod(lambda d: SQLiteStore(d / "spool.db", synchronous="NORMAL"))


TestMemoryStoreAgainstModel = _MemoryMachine.TestCase
TestMemoryStoreAgainstModel.settings = _SETTINGS
TestSQLiteStoreAgainstModel = _SQLiteMachine.TestCase
TestSQLiteStoreAgainstModel.settings = _SETTINGS

#: The PostgreSQL database of the running test (set by the ``_pg_database`` fixture).
_PG: list[str] = []


@pytest.fixture
def _pg_database(pg_dsn: str) -> Iterator[None]:
    _PG.append(pg_dsn)
    yield
    _PG.clear()


class _PostgresMachine(_StoreMachine):
    make_store = staticmethod(lambda _dir: _postgres_store(_PG[-1]))


def _postgres_store(dsn: str) -> Store:
    """A store on the test's database, emptied (faster than a database per example)."""
    import psycopg

    from spoolbox.store.postgres import PostgresStore

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE recipient_counts, recipients, messages, inbox, blob_chunks, blobs, profile"
        )
    return PostgresStore(dsn, pool_size=2)


TestPostgresStoreAgainstModel = pytest.mark.usefixtures("_pg_database")(_PostgresMachine.TestCase)
# Fewer examples: every step is several round trips to the server (the memory and
# SQLite machines share the model, and the conformance suite runs on all three).
TestPostgresStoreAgainstModel.settings = settings(
    max_examples=15, stateful_step_count=30, deadline=None
)
