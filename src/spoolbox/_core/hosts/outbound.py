"""The outbound lane of a transport session: claim queued mail, hand each message to
the provider (``submit_message``, ``end_message``), and settle what it did.

Several workers share one lane (``concurrency``); one at a time waits for work and
claims a batch, the others take from it.  A session with a
``destination_concurrency`` has no more than that many messages to one destination
started at once: a worker takes the first claimed job whose destinations have room,
and the claims pass over the destinations at their limit (the mail behind them in
the queue goes first), as Postfix's queue manager serves the other destinations
while one has all the connections it may have (the decisions:
:mod:`.destination_room`).  Every claimed job's lease is renewed
until it is settled; a job whose lease another spooler took over is cancelled and
its results are not written.  How an exception of ``submit_message`` or
``end_message`` becomes an outcome is the table in :mod:`spoolbox._core.policy`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Final, cast

from ...contract.errors import ContractViolation, InvalidObject
from ...contract.objects import OutboundMessage
from ...model import (
    EndFlags,
    FlushFlags,
    IllegalTransition,
    Outcome,
    RecipientResult,
    RecipientState,
    StatusCode,
    SubmitFlags,
    TransportNotifyFlags,
)
from ...store import ClaimedJob, LeaseLost, RecipientUpdate, StoreError, UnknownMessage
from ...store.cluster import ClusterStore
from ..chores import ChoreTrouble
from ..clock import wait_event
from ..delivery_log import log_suspended
from ..flush import count_outcomes
from ..objects import OutboundMessageImpl
from ..policy import (
    END_MESSAGE_LADDER,
    PARKED_NOTE,
    SUBMIT_MESSAGE_LADDER,
    SubmitOutcome,
    outcome_of,
    plan_after_submit,
    plan_result,
)
from ..preprocess import Preprocessors
from ..rate import RateLimit, SendWindow, seconds_text, window_name
from ..slices import checkpoint
from .base import CURRENT_MESSAGE, HostBase, log
from .destination_room import DestinationRoom
from .hooked import finish_outbound, stage_outbound

__all__ = ["OutboundLane"]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_NO_FLAGS: Final = SubmitFlags.NONE
_BEGIN_DEFERRED: Final = SubmitFlags.BEGIN_DEFERRED
_OUTBOUND_ACTIVE: Final = StatusCode.OUTBOUND_ACTIVE
_END_SENT: Final = SubmitOutcome.END_SENT
_NOT_ME: Final = SubmitOutcome.NOT_ME
_END_RESEND_NOW: Final = SubmitOutcome.END_RESEND_NOW
_SENT: Final = EndFlags.SENT  # what end_message returns nearly always
#: A result's counter in the transport's row (the others count as deferred).
_COUNTED_AS: Final = {Outcome.DELIVERED: "delivered", Outcome.FAILED: "failed"}

#: The shortest pause between two log lines saying that ``max_rate`` holds mail back.
_RATE_LOG_INTERVAL = 60.0

#: A job in a lane: its message's id and its claim token (two jobs of one message,
#: claimed at different times, have different tokens).
_Key = tuple[str, int]


#: The least time between two recoveries of a lane after store failures (_recover).
_RELEASE_INTERVAL = 1.0


def _key(job: ClaimedJob) -> _Key:
    return (job.message.id, job.claim)


class OutboundLane:
    """The outbound work of one session: claims, submissions, leases, results."""

    def __init__(self, host: HostBase) -> None:
        self._host = host
        self._claim_lock = asyncio.Lock()  # one worker waits for work at a time
        self._ready: collections.deque[ClaimedJob] = collections.deque()  # claimed, not started
        # Each destination's room (``destination_concurrency``,
        # ``destination_rate_delay``): the jobs started, the rests, the claims passing over.
        self.room = DestinationRoom(host, host.runtime.clock)
        self._held: dict[_Key, ClaimedJob] = {}  # claimed, not settled (leases renewed)
        self.cancelled_refs: set[str] = set()  # cancelled while claimed, not started
        self.lease_lost: set[_Key] = set()  # another spooler holds them now: hands off
        # A message's job under way in this lane, and how many more of its jobs wait
        # for it (its other recipients, ready meanwhile): one delivery at a time.
        self._busy: dict[str, asyncio.Event] = {}
        self._queued: collections.Counter[str] = collections.Counter()
        self.sending = 0  # messages inside submit_message / end_message right now
        self.preprocessors = Preprocessors()  # the session's (its support object's)
        self._waiting = 0  # workers waiting for work (claimed nothing: the queue is empty)
        self._reserved = 0  # hand-offs promised to this lane, their submits under way
        # A store that fails the settle of a job: logged once per streak.
        self._store_trouble = ChoreTrouble(host.name, log, host.runtime.store_failed)
        # The spooler's count of store failures when this lane last put right what
        # they may have lost (_recover).
        self._outages_seen = host.runtime.outages.count
        self._next_release = float("-inf")  # one release a second at most
        self._rate_logged = float("-inf")  # when max_rate's wait was last logged
        # What the status row's detail says of a wait (max_rate, or destinations at
        # their destination_concurrency), and the detail it replaced, shown again after.
        self._wait_shown: str | None = None
        self._wait_hid: str | None = None
        # What the row's detail was told of the destinations at their concurrency.
        self._at_limit_said: str | None = None
        # max_rate's window is the store's, shared by every node on it and kept across
        # restarts, when the store keeps send windows (the memory, SQLite and
        # PostgreSQL stores do); otherwise this process's own (runtime.rates).
        self._shared_rates = isinstance(host.runtime.store, ClusterStore)
        self._rate_until = float("-inf")  # the shared window is full until then
        #: While the lane waits for room in its ``max_rate`` window with mail ready:
        #: when the room comes (the clock's time) and the limit (a flush reads it).
        self.rate_hold: tuple[float, RateLimit] | None = None

    @property
    def inflight(self) -> int:
        """Jobs claimed and not settled yet, those waiting for a worker included."""
        return len(self._held)

    async def run_worker(self) -> None:
        host = self._host
        while not (host.stopping or host.critical_error):
            # Only one worker at a time waits for work and claims: an idle session with
            # ten workers makes one claim per wake-up, not ten.  A claim takes a batch;
            # what the claiming worker does not start itself waits in ``_ready`` for the
            # next free worker, so one store round trip feeds several.
            async with self._claim_lock:
                job = self.room.take(self._ready)
                while job is None:
                    jobs = await self._wait_for_jobs(host.runtime.policy.claim_batch)
                    if not jobs and (host.stopping or host.critical_error):
                        return
                    # Held (in flight) from the claim until settled, so a flush does
                    # not see "nothing left" while jobs still wait for a worker.
                    for claimed in jobs:
                        self._held[_key(claimed)] = claimed
                    self._ready.extend(jobs)
                    job = self.room.take(self._ready)
                window = self.send_window()
                if window is not None:  # max_rate counts a message when it starts
                    window.take(host.runtime.clock.now())
                started = self._start(job)
            try:
                await self._process(job)
            finally:
                self._held.pop(_key(job), None)
                self._finish(started)
            # Between messages the foreground always gets its turn, however short each
            # message was (one slice per message at most).
            await checkpoint()

    def destination_wait(self, message_id: str, index: int) -> str | None:
        """Why recipient ``index`` of ``message_id``, claimed by this lane, is not
        being sent: its job waits for a destination at its ``destination_concurrency``
        or in its ``destination_rate_delay`` (None: it does not, or it is not claimed
        here)."""
        return self.room.job_wait(self._ready, message_id, index)

    def destination_hold(self) -> str | None:
        """Why claimed mail of this lane waits for its destination (None: none does);
        a flush that ends with mail still queued says it."""
        return self.room.hold(self._ready)

    def destination_full(self, value: str) -> str | None:
        """Why a queued recipient of address value ``value`` is not claimed now: this
        lane has as many messages to its destination under way as its
        ``destination_concurrency`` lets it, or the destination is in its
        ``destination_rate_delay`` (None: it has room, or no limit)."""
        return self.room.queued_wait(value)

    def _start(self, job: ClaimedJob) -> frozenset[str]:
        """A worker starts ``job``: its destinations count one more (returned, for
        :meth:`_finish`)."""
        destinations, reached = self.room.start(job)
        if reached:
            self._show_at_limit()
        return destinations

    def _finish(self, destinations: frozenset[str]) -> None:
        """A started job is done: its destinations count one less, and a destination
        that was at its limit wakes the worker waiting for work (a job of it may wait,
        claimed, or its queue may be claimed again)."""
        freed, shrank = self.room.finish(destinations)
        if freed:
            self._host.wake.set()
        if shrank:
            self._show_at_limit()

    def _show_at_limit(self) -> None:
        """The status row's detail names the destinations with as many messages under
        way as ``destination_concurrency`` allows, or, when none has, no longer says
        it."""
        text = self.room.at_limit_text()
        if text is None:
            if self._at_limit_said is not None:
                self._show_wait(None, self._at_limit_said)
            self._at_limit_said = None
            return
        self._at_limit_said = text
        self._show_wait(text)

    @property
    def waiting(self) -> int:
        """Workers waiting for work (their last claim found nothing)."""
        return self._waiting

    def reserve_hand_off(self) -> bool:
        """Whether a new message may be claimed for this lane in its submit's
        transaction (a worker waits for work and no other hand-off fills the lane);
        if so it is reserved until :meth:`hand_off` or :meth:`cancel_hand_off`.
        Jobs claimed before it and waiting for a full destination
        (``destination_concurrency``) do not stop it: it may go before them, as the
        mail after them that a claim passes over them for."""
        host = self._host
        if (
            self._waiting == 0
            or self.room.can_start(self._ready)
            or len(self._ready) >= self._ready_limit()
            # (Started jobs: those held less those waiting for a worker.)
            or len(self._held) - len(self._ready) + self._reserved >= host.concurrency
            or host.session is None
            or not host.gate_open()
        ):
            return False
        if self._shared_limit() is not None:
            return False  # its send is recorded in the store by the claim that takes it
        if self._rate_room() < 1:  # a hand-off is a send: within max_rate, or none
            return False
        self._reserved += 1
        return True

    def cancel_hand_off(self, *, failed: bool = False) -> None:
        """A reserved hand-off that did not come; ``failed``: its submit failed, and
        may have committed its claim all the same (:meth:`claim_lost`)."""
        self._reserved -= 1
        if failed:
            self.claim_lost()

    def claim_lost(self) -> None:
        """A claim for this lane failed where the store may have committed it (a
        PostgreSQL connection cut after the ``COMMIT`` reached the server, before its
        answer came back): noted as a failure of the store, so that the lane returns
        it to the queue before its next claim (:meth:`_recover`)."""
        self._host.runtime.store_failed()
        self._host.wake.set()

    async def _recover(self) -> None:
        """After the store failed, put right what the failure may have lost of this
        lane's work (:mod:`..recovery`): the settles of its transport acknowledged
        just before the failure are written again (one the store kept is refused,
        and nothing is written), then every recipient of the transport that the node
        leased no later than a claim made before the last failure can be, and that
        the lane holds no job of, goes back to the queue (``release_lost_claims``).

        Called before a claim that follows a failure the lane has not seen, with the
        claim lock held (no claim of this lane under way) and no hand-off reserved
        (none committing meanwhile): every claim of the lane that the store answered
        is in ``_held``, and a claim made after the failure has a later lease."""
        host = self._host
        runtime = host.runtime
        outages = runtime.outages
        count = outages.count
        if count == self._outages_seen or self._reserved:
            return
        now = runtime.clock.now()
        if now < self._next_release:
            # A store that keeps failing one job's settle, and nothing else, must not
            # make a loop of deliveries of it: once a second at most.
            return
        self._next_release = now + _RELEASE_INTERVAL
        store = runtime.store
        rewritten = 0
        # The node notices a crash at its next call to the store: the router's
        # comes each router_interval at the latest.
        late = runtime.policy.router_interval
        for s in outages.unsure(host.name, self._outages_seen, noticed_within=late):
            try:
                await store.settle(
                    s.message_id,
                    s.updates,
                    owner=s.owner,
                    now=s.now,
                    claim=s.claim,
                    drop_finished=s.drop_finished,
                    restoring=True,  # the failure may have undone the claim too
                )
            except (LeaseLost, UnknownMessage, IllegalTransition):
                continue  # kept by the store (and maybe gone on since): nothing to do
            rewritten += 1
        released = await store.release_lost_claims(
            runtime.owner, host.name, leased_until=outages.leased_until, keep=list(self._held)
        )
        self._outages_seen = count
        if rewritten:
            log.warning(
                "transport %r: %d settle(s) the store had acknowledged were undone by its "
                "failure, and are written again",
                host.name,
                rewritten,
            )
        if released:
            log.info(
                "transport %r: %d recipient(s) leased to this node and held by none of its "
                "jobs after the store failed (a claim whose answer was lost, or a settle "
                "undone) went back to the queue",
                host.name,
                released,
            )
        if rewritten or released:
            host.port.messages_changed()

    def hand_off(self, job: ClaimedJob) -> bool:
        """A job claimed for this lane at submit (reserved before): a waiting worker
        takes it.  False if the session ended meanwhile (the caller gives it back)."""
        self._reserved -= 1
        host = self._host
        if host.stopping or host.critical_error or host.session is None:
            return False
        self._held[_key(job)] = job
        self._ready.append(job)
        host.wake.set()
        host.port.messages_changed()
        return True

    async def give_back(self) -> None:
        """The session is ending: jobs claimed but not started go back to the queue
        now, instead of when their leases run out; the others (of workers cancelled
        after the grace period) are no longer renewed here, and the spooler releases
        their leases."""
        while self._ready:
            job = self._ready.popleft()
            self._held.pop(_key(job), None)
            with contextlib.suppress(Exception):
                await self.put_back(job)
                self._host.port.messages_changed()
        self._held.clear()

    async def put_back(self, job: ClaimedJob) -> None:
        """A claimed job back to the queue now, no attempt made (its recipients QUEUED
        under its claim's fence), rather than when its lease runs out."""
        runtime = self._host.runtime
        await runtime.store.settle(
            job.message.id,
            [RecipientUpdate(r.index, RecipientState.QUEUED) for r in job.recipients],
            owner=runtime.owner,
            now=runtime.clock.now(),
            claim=job.claim,
        )

    async def _give_back_later(self, job: ClaimedJob) -> None:
        """A job given up because the store failed: back to the queue as soon as the
        store takes it (as a session's end gives its jobs back), not when its lease
        runs out; tried every 0.5 s, then twice as long up to 5 s, until the lease
        ends.  A claim taken over meanwhile (LeaseLost) is left to its holder."""
        runtime = self._host.runtime
        mid = job.message.id
        until = runtime.clock.now() + runtime.policy.lease
        wait = 0.5
        while runtime.clock.now() + wait < until:
            await runtime.clock.sleep(wait)
            try:
                await self.put_back(job)
            except (LeaseLost, UnknownMessage):
                return
            except StoreError:
                wait = min(wait * 2, 5.0)
                continue
            except Exception:  # a task of the spooler's: it must not end the spooler
                log.exception("transport %r: giving back %s failed", self._host.name, mid)
                return
            self._host.port.messages_changed()
            self._host.wake.set()
            return

    def send_window(self) -> SendWindow | None:
        """The transport's ``max_rate`` window in this process (None: no limit, or the
        store's window, shared; and no look-up: it is asked for every message)."""
        host = self._host
        limit = host.entry.max_rate
        if limit is None or self._shared_rates:
            return None
        return host.runtime.rates.window(host.name, limit)

    def _shared_limit(self) -> RateLimit | None:
        """The transport's ``max_rate`` when the store keeps its window."""
        return self._host.entry.max_rate if self._shared_rates else None

    def _rate_room(self) -> int | float:
        """How many more messages ``max_rate`` lets this lane claim now.  In this
        process's window: its room less the hand-offs promised (each counts when its
        worker starts it, as every job does; a claim waits for the jobs claimed before
        it to have started, so none is counted twice).  In the store's: none until the
        time its last grant said, then as many as the lane has free workers (the claim
        records them, and they start at once), and the window's count at most."""
        limit = self._shared_limit()
        if limit is not None:
            if self._host.runtime.clock.now() < self._rate_until:
                return 0
            # No more than the window holds either: "1/s" with ten connections claims
            # one, not ten to put nine back.
            return max(1, min(limit.count, self._host.concurrency - len(self._held)))
        window = self.send_window()
        if window is None:
            return float("inf")
        return max(0, window.room(self._host.runtime.clock.now()) - self._reserved)

    async def _within_shared_rate(
        self, jobs: list[ClaimedJob], limit: RateLimit
    ) -> list[ClaimedJob]:
        """Record the sends of ``jobs`` in the store's window; those it has no room for
        go back to the queue (another node filled the window since this lane's last
        look), and the lane claims nothing more until the window says."""
        host = self._host
        runtime = host.runtime
        store = cast(ClusterStore, runtime.store)  # (_shared_rates says it is one)
        grant = await store.take_sends(
            window_name(host.name),
            count=limit.count,
            period=limit.period,
            now=runtime.clock.now(),
            want=len(jobs),
        )
        self._rate_until = grant.next_at if grant.used >= limit.count else float("-inf")
        kept, excess = jobs[: grant.granted], jobs[grant.granted :]
        for job in excess:
            await self.put_back(job)
        if excess:
            host.port.messages_changed()
        return kept

    async def _wait_for_room(self) -> None:
        """``max_rate`` has no room now: wait until the oldest send in the window is a
        window old (or the session stops); what is queued stays queued meanwhile, and
        the log and the status row say so.  With nothing ready to send, there is nothing
        held back to speak of: wait the same, or until mail comes (then this again).  (A
        window with room that promised hand-offs fill: until one of them comes.)"""
        host = self._host
        clock = host.runtime.clock
        now = clock.now()
        limit = self._shared_limit()
        window = self.send_window()
        if limit is not None:
            wait = self._rate_until - now
        elif window is None:
            return
        elif window.room(now) > 0:
            await wait_event(clock, host.wake, 0.05)  # hand_off sets it
            return
        else:
            limit = window.limit
            wait = window.next_at(now) - now
        # The room comes at a time, not after a delay: the look at the queue below
        # awaits the store, and the clock goes on meanwhile.
        until = now + wait
        if not await self._mail_ready(now):
            await wait_event(clock, host.wake, until - clock.now())  # submit and routing set it
            return
        if now - self._rate_logged >= _RATE_LOG_INTERVAL:
            self._rate_logged = now
            log.info(
                "transport %r: max_rate %s reached; the next message in %s (the rest stays queued)",
                host.name,
                limit,
                seconds_text(wait),
            )
        said = f"max_rate {limit} reached: the rest stays queued until there is room"
        self._show_wait(said)
        self.rate_hold = (until, limit)
        try:
            await wait_event(clock, host.stop_event, until - clock.now())
        finally:
            self.rate_hold = None
        self._show_wait(None, said)

    async def _mail_ready(self, now: float) -> bool:
        """Whether mail for this transport is ready to send at ``now`` (what a full
        ``max_rate`` window holds back); True when the store cannot say."""
        try:
            next_at = await self._host.runtime.store.next_ready_at(self._host.name)
        except Exception:
            return True
        return next_at is not None and next_at <= now

    def _show_wait(self, text: str | None, said: str | None = None) -> None:
        """The status row's detail says what the lane waits for (``text``: ``max_rate``,
        or destinations at their ``destination_concurrency``), or no longer (None: the
        wait that ``said`` that is over; nothing is taken back if another was shown
        since).  The detail holds the last finding, however old (a slow slice, an
        error since recovered from): the wait, which is now, replaces it and it comes
        back after.  Not over a row in FAILURE, whose text says more; taken back only
        if the detail still says it."""
        host = self._host
        if not host.shown:
            return
        row = host.runtime.status.get(host.name)
        detail = None if row is None else row.detail
        if text is None:
            if said is not None and said != self._wait_shown:
                return  # another wait is shown now: it takes itself back
            if self._wait_shown is not None and detail == self._wait_shown:
                host.set_bits(detail=self._wait_hid)
            self._wait_shown = self._wait_hid = None
            return
        if row is not None and row.status_code & StatusCode.FAILURE:
            return
        if detail != self._wait_shown:
            self._wait_hid = detail
        if detail != text:
            host.set_bits(detail=text)
        self._wait_shown = text

    async def _wait_for_jobs(self, limit: int) -> list[ClaimedJob]:
        """Claim work, waiting for it (woken by routing, a retry time, a flush); an
        empty list means the session is stopping.  With ``max_rate``, no more than the
        window has room for (a claim comes only once the jobs claimed before it have
        started, and each counts when it starts)."""
        host = self._host
        runtime = host.runtime
        while not (host.stopping or host.critical_error):
            if self.room.can_start(self._ready):
                return []  # handed off at submit (see hand_off), or a destination has room
            await host.background_gate(FlushFlags.UPLOAD)
            if host.stopping or host.critical_error:
                break
            host.wake.clear()
            room = self._rate_room()
            if room < 1:
                await self._wait_for_room()
                continue
            if len(self._ready) >= self._ready_limit():
                # Enough claimed jobs wait for their destinations already: no more
                # until one of them starts (a job's end wakes this, as does the end of
                # a destination_rate_delay).
                timeout = self.room.rest_bound(runtime.policy.router_interval * 5)
                await wait_event(runtime.clock, host.wake, timeout)
                continue
            full = self.room.full(self._ready)
            pause = self.room.pass_over_pause(full)
            if pause is not None:
                # The last claim passing over these found nothing: new mail (each
                # submit wakes this) is looked for after a pause as long as twenty
                # such claims, a second at most, not at every submit (a claim reads
                # past the full destinations' queue, which can be long); a job's end
                # changes ``full`` and claims at once.  Waiting for work meanwhile: a
                # new message may be handed off to this lane.
                self._waiting += 1
                try:
                    await wait_event(runtime.clock, host.wake, self.room.rest_bound(pause))
                finally:
                    self._waiting -= 1
                continue
            try:
                if runtime.outages.count != self._outages_seen:
                    await self._recover()
                # Passed only when some destination is full: a store of an older
                # protocol (no ``skip_destinations``) serves a lane without the limit.
                more = {"skip_destinations": full} if full else {}
                claimed_at = runtime.clock.now()
                jobs = await runtime.store.claim(
                    host.name,
                    owner=runtime.owner,
                    now=runtime.clock.now(),
                    lease=runtime.policy.lease,
                    limit=int(min(limit, room)),
                    # A flush makes deferred mail ready once (retry_transport) instead
                    # of ignoring retry times, so a failure during it is not retried hot.
                    ignore_retry=False,
                    **more,
                )
                shared = self._shared_limit()
                if jobs and shared is not None:
                    jobs = await self._within_shared_rate(jobs, shared)
                    if not jobs:
                        continue  # the window is full: wait for its room
            except Exception as exc:
                self.claim_lost()
                backoff = runtime.policy.failure_backoff
                if isinstance(exc, StoreError):  # the store is away: a line a streak
                    self._store_trouble.failed(exc, f"claiming again in {backoff:g} s")
                else:
                    log.error("transport %r: claim failed: %s", host.name, exc)
                await wait_event(runtime.clock, host.stop_event, backoff)
                continue
            self._store_trouble.ok()
            self.room.claimed(full, bool(jobs), claimed_at)
            if jobs:
                host.port.messages_changed()
                return jobs
            try:
                next_at = await runtime.store.next_ready_at(host.name)
            except Exception:
                next_at = None
            timeout = runtime.policy.router_interval * 5
            if next_at is not None and not (full and next_at <= runtime.clock.now()):
                # (Mail ready now that the claim passed over waits for a job's end,
                # which wakes this, not for its ready time: that would be a busy loop.)
                timeout = min(timeout, max(0.0, next_at - runtime.clock.now()))
            timeout = self.room.rest_bound(timeout)
            self._waiting += 1
            try:
                await wait_event(runtime.clock, host.wake, timeout)
            finally:
                self._waiting -= 1
        return []

    def _ready_limit(self) -> int:
        """How many claimed jobs may wait for a worker before the lane claims no more:
        with a ``destination_concurrency``, jobs of full destinations wait among them
        (a claim's batch may bring more of one destination than it has room for)."""
        host = self._host
        return 4 * host.concurrency + host.runtime.policy.claim_batch

    async def _process(self, job: ClaimedJob) -> None:
        """One job.  A job of a message whose earlier job is still under way in this
        lane (a recipient whose retry time came meanwhile) waits for it: the transport
        knows a message by its reference, the message's id, and gets one delivery of
        it at a time."""
        mid = job.message.id
        self._queued[mid] += 1
        try:
            while (busy := self._busy.get(mid)) is not None:
                await busy.wait()
        finally:
            self._queued[mid] -= 1
            if not self._queued[mid]:
                del self._queued[mid]
        done = self._busy[mid] = asyncio.Event()
        try:
            await self._deliver(job)
        except StoreError as exc:
            if isinstance(exc, LeaseLost):
                raise
            # The store could not take this job's outcome (it is unavailable: a
            # PostgreSQL restart, a cut connection).  The job is given up as at a
            # crash: it goes back to the queue as soon as the store takes it (or its
            # lease ends), and is tried again; one that was delivered meanwhile is
            # delivered twice.  Not the transport's failure: no pause, no back-off of
            # its destination, no attempt counted.
            self._store_trouble.failed(exc, "the message goes back to the queue")
            with contextlib.suppress(RuntimeError):  # the spooler is closing: the lease
                self._host.port.spawn(
                    self._give_back_later(job), name=f"{self._host.name}-back-{mid}"
                )
            self._host.job_done.set()
        else:
            self._store_trouble.ok()
        finally:
            del self._busy[mid]
            done.set()

    async def _deliver(self, job: ClaimedJob) -> None:
        host = self._host
        runtime = host.runtime
        port = host.port
        session = host.require_session()
        mid = job.message.id
        key = _key(job)
        if key in self.lease_lost:
            # Its lease ran out while it waited here, and another spooler has it now.
            self.lease_lost.discard(key)
            host.job_done.set()
            return
        if mid in self.cancelled_refs:
            # Cancelled by the user while it waited in this lane's batch.
            self.cancelled_refs.discard(mid)
            await port.settle(
                job,
                [
                    RecipientUpdate(
                        r.index, RecipientState.CANCELLED, diagnostic="cancelled by user"
                    )
                    for r in job.recipients
                ],
            )
            host.job_done.set()
            return
        # Recipients whose destination is in back-off wait for it without an attempt.
        waiting = [
            (r, hold)
            for r in job.recipients
            if (hold := port.destination_wait(host.name, r.address)) is not None
        ]
        if waiting and await port.flush_asked(host.name):
            waiting = []  # a flush another node asked for made it ready: try it now
        if waiting:
            if not await port.settle(
                replace(job, recipients=tuple(r for r, _ in waiting)),
                [
                    RecipientUpdate(r.index, RecipientState.QUEUED, retry_at=hold.until)
                    for r, hold in waiting
                ],
            ):
                host.job_done.set()  # another claim holds it now: not ours to go on with
                return
            # Postfix's "delivery temporarily suspended": the log says why each waits.
            log_suspended(job, waiting, host.name, runtime.clock.now())
            self._count_for_flush(
                mid, [RecipientUpdate(r.index, RecipientState.QUEUED) for r, _ in waiting]
            )
            held = {r.index for r, _ in waiting}
            job = replace(job, recipients=tuple(r for r in job.recipients if r.index not in held))
            if not job.recipients:
                host.job_done.set()
                return
        # The spooler hooks, then the transport's preprocessors (see .hooked).
        staged = await stage_outbound(host, job, self.preprocessors)
        if staged.updates is not None:
            written = await port.settle(job, staged.updates, results=staged.results)
            if written:
                self._count_for_flush(mid, staged.updates)
            await finish_outbound(host, job, staged)
            if written and host.uploading:
                host.flush_done += 1
            host.job_done.set()
            return
        deferred = any(r.diagnostic == PARKED_NOTE for r in job.recipients)
        flags = _BEGIN_DEFERRED if deferred else _NO_FLAGS
        msg = OutboundMessageImpl(
            job, runtime.store, host.implicit_yield, flags, content=staged.content
        )
        host.active[mid] = msg
        self.sending += 1
        host.counters["submitted"] += 1
        if not host.has_bit(_OUTBOUND_ACTIVE):
            host.set_bits(on=_OUTBOUND_ACTIVE)
        # (With the bit on already, as while other messages are under way, the row is
        # not made again for the counter alone: the message's results publish it.)
        token = CURRENT_MESSAGE.set(msg)
        outcome = _END_SENT
        delay: float | None = None
        reason = ""
        try:
            try:
                await host.call("submit_message", session.submit_message(msg, flags))
            except StoreError:
                raise  # a report of results whose settle failed: the job is given up
            except Exception as exc:
                rung = outcome_of(exc, SUBMIT_MESSAGE_LADDER)
                outcome, delay, reason = rung.outcome, rung.delay_of(exc), rung.reason_of(exc)
                if rung.counts_as_failure:
                    host.call_failed("submit_message", exc)
            else:
                host.lifecycle.submitted(mid)
                if host.critical_error:
                    outcome, reason = SubmitOutcome.ERROR, "transport reported a critical error"
                else:
                    try:
                        host.lifecycle.check_end(mid)
                        end = await host.call("end_message", session.end_message(msg))
                        if not isinstance(end, int):
                            raise ContractViolation(f"end_message() returned {end!r}, not EndFlags")
                        if end is _SENT:  # what nearly every transport answers
                            outcome = _END_SENT
                        else:
                            outcome = SubmitOutcome.from_end_flags(EndFlags(end))
                        host.call_ok()
                    except Exception as exc:
                        rung = outcome_of(exc, END_MESSAGE_LADDER)
                        outcome, reason = rung.outcome, rung.reason_of(exc)
                        if rung.counts_as_failure:
                            host.call_failed("end_message", exc)
            if msg.cancelled:
                outcome = SubmitOutcome.USER_CANCELLED
        finally:
            CURRENT_MESSAGE.reset(token)
            msg.valid = False
            host.active.pop(mid, None)
            self.sending -= 1
            if self.sending == 0:
                host.set_bits(off=_OUTBOUND_ACTIVE)
        updates = plan_after_submit(
            outcome,
            pending=msg.pending(),
            transport=host.name,
            policy=runtime.policy,
            now=runtime.clock.now(),
            expires_at=job.message.expires_at,
            delay=delay,
            reason=reason,
            begin_deferred=deferred,
            rng=runtime.rng,
        )
        if key in self.lease_lost:
            # Cancelled because its lease was taken over: its results are not ours
            # to write (the store would refuse them); the other spooler finishes it.
            self.lease_lost.discard(key)
            msg.refused = True
            updates = []
        if updates:
            if await port.settle(job, updates):
                self._count_for_flush(mid, updates)
                if outcome is _END_SENT or outcome is _NOT_ME:
                    port.routing_changed()
                if outcome is _END_RESEND_NOW:
                    host.wake.set()
            else:
                msg.refused = True
        await finish_outbound(host, job, staged)
        # A message whose lease was taken over is the new claim's to count.
        if not msg.refused and host.uploading:
            host.flush_done += 1
            host.flush_bytes += job.message.size
        host.job_done.set()

    async def renew(self) -> None:
        """Renew the leases of every job this session holds (claimed, not settled)."""
        host = self._host
        runtime = host.runtime
        period = runtime.policy.lease / 3
        while True:
            await runtime.clock.sleep(period)
            for key, job in list(self._held.items()):
                mid = job.message.id
                try:
                    renewed = await runtime.store.renew(
                        job, now=runtime.clock.now(), lease=runtime.policy.lease
                    )
                except LeaseLost as exc:
                    # Another spooler has the message now (this one stalled past the
                    # lease): stop working on it, say so once, stop renewing it.
                    if self._held.pop(key, None) is None:
                        continue  # finished meanwhile: nothing left to stop
                    self.lease_lost.add(key)
                    log.error(
                        "transport %r lost its lease on %s (%s): another spooler took it "
                        "over; the transport is told to cancel it",
                        host.name,
                        mid,
                        exc,
                    )
                    active = host.active.get(mid)
                    if isinstance(active, OutboundMessageImpl) and _key(active.job) == key:
                        # Under way: the transport stops it.  Only it: the message may
                        # have been claimed again (here too) since the lease ran out.
                        self.cancel(mid, its_other_jobs=False)
                    continue  # not started yet: skipped when its turn comes
                except StoreError as exc:  # the store is away: a line a streak
                    self._store_trouble.failed(exc, f"renewing leases again in {period:g} s")
                    continue
                except Exception as exc:
                    log.warning("transport %r: lease renewal failed: %s", host.name, exc)
                    continue
                if key in self._held:
                    self._held[key] = renewed

    async def status_recips(
        self, message: OutboundMessage, results: Sequence[RecipientResult]
    ) -> None:
        host = self._host
        if not isinstance(message, OutboundMessageImpl) or message.job.transport != host.name:
            raise ContractViolation(
                f"status_recips() got {message!r}, which is not a message of {host.name!r}"
            )
        if not message.valid:
            raise InvalidObject(f"status_recips() on {message.ref} after its call ended")
        mine = {r.index: r for r in message.recipients}
        seen: set[int] = set()
        for res in results:
            if not isinstance(res, RecipientResult):
                raise ContractViolation(f"status_recips() takes RecipientResult, not {res!r}")
            if res.index not in mine:
                raise ContractViolation(
                    f"recipient #{res.index} of {message.ref} is not one of {host.name!r}'s "
                    f"(its recipients: {sorted(mine)})"
                )
            if res.index in message.reported or res.index in seen:
                raise ContractViolation(
                    f"recipient #{res.index} of {message.ref} was already reported"
                )
            seen.add(res.index)
        runtime = host.runtime
        now = runtime.clock.now()
        updates = [
            plan_result(
                r,
                attempts=mine[r.index].attempts,
                policy=runtime.policy,
                now=now,
                expires_at=message.info.expires_at,
                rng=runtime.rng,
            )
            for r in results
        ]
        written = await host.port.settle(message.job, updates, results=results)
        message.reported |= seen
        if not written:
            # The store refused them (the lease was taken over): the claim that holds
            # the recipients now counts them when it settles them.
            message.refused = True
            return
        self._count_for_flush(message.job.message.id, updates)
        for r in results:
            key = _COUNTED_AS.get(r.outcome, "deferred")
            host.counters[key] += 1
        if host.shown:
            runtime.status.update(host.name, counters=dict(host.counters))

    def _count_for_flush(self, message_id: str, updates: Sequence[RecipientUpdate]) -> None:
        """Settled recipients count in the report of a flush's upload phase under way."""
        if self._host.uploading:
            count_outcomes(self._host.flush_outcomes, message_id, updates)

    def cancel(self, ref: str, *, its_other_jobs: bool = True) -> bool:
        """NOTIFY_CANCEL_MESSAGE for a message this session is working on; a message
        claimed but not started yet is remembered and cancelled when its turn comes.

        ``its_other_jobs=False`` stops only the delivery under way (its lease was
        taken over): a job of the same message claimed again meanwhile, waiting
        behind it in this lane, is a claim of its own and must go on."""
        host = self._host
        msg = host.active.get(ref)
        if msg is None or host.session is None:
            if its_other_jobs:
                self.cancelled_refs.add(ref)
            return False
        if its_other_jobs and (self._queued[ref] or any(j.message.id == ref for j in self._ready)):
            self.cancelled_refs.add(ref)  # its next job here, when its turn comes
        msg.cancelled = True
        session = host.session

        async def notify() -> None:
            try:
                await host.call(
                    "transport_notify",
                    session.transport_notify(TransportNotifyFlags.CANCEL_MESSAGE, ref),
                )
            except Exception as exc:
                host.call_failed("transport_notify", exc)

        host.port.spawn(notify(), name=f"{host.name}-cancel-{ref}")
        return True
