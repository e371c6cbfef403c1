"""The inbound lane of a transport session (``poll``, ``start_message``, and the
batch committed to the inbox in one transaction) and its idle lane (``idle``).

The inbound lane wakes on NEWMAIL or at the poll time, waits at the background
gate, then takes messages in batches until a call delivers nothing.  A flush's
download phase uses the same :meth:`InboundLane.receive_batch`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ...contract.errors import ContractViolation, MessageCancelled
from ...model import FlushFlags, LogonCaps, StatusCode, new_message_id
from ...store import InboundMessage, InboxEntry, StoreError
from ..clock import wait_event
from ..delivery_log import INBOUND_LOGGER, InboundLine, log_line
from ..objects import InboundWriterImpl
from ..slices import checkpoint
from .base import CURRENT_MESSAGE, HostBase, log
from .hooked import hook_inbound
from .isolated import IsolatedSession
from .mailbox_lease import MailboxLease, mailbox_lease

__all__ = ["INBOUND_COMMIT_BYTES", "InboundLane", "run_idle_lane"]

#: A batch of inbound messages is committed once it holds this many bytes (they are
#: in memory until their commit), whatever ``policy.inbound_commit_batch`` says.
INBOUND_COMMIT_BYTES = 8 * 1024 * 1024
#: One INFO line per message put in the inbox (docs/operations.md, "Logs").
inbound_log = logging.getLogger(INBOUND_LOGGER)


class InboundLane:
    """The inbound work of one session: polls, messages taken, batches committed."""

    def __init__(self, host: HostBase) -> None:
        self._host = host
        self.lock = asyncio.Lock()  # one batch at a time (lane or flush)
        self._lease: MailboxLease | None = None  # when the spooler runs as a node

    def _mailbox_lease(self) -> MailboxLease | None:
        """The lease of this mailbox among nodes (:mod:`.mailbox_lease`), or None."""
        if self._lease is None:
            host = self._host
            self._lease = mailbox_lease(host.port, host.runtime.store, host.name)
        return self._lease

    async def run(self) -> None:
        host = self._host
        runtime = host.runtime
        policy = runtime.policy
        poll = bool(host.caps & LogonCaps.SP_POLL)
        next_poll = runtime.clock.now()
        while not (host.stopping or host.critical_error):
            timeout = max(0.0, next_poll - runtime.clock.now()) if poll else None
            notified = await wait_event(runtime.clock, host.newmail, timeout)
            host.newmail.clear()
            if host.stopping or host.critical_error:
                return
            await host.background_gate()
            if host.stopping or host.critical_error:
                return
            if host.flushing & FlushFlags.DOWNLOAD:
                # A download flush is taking everything already: look again after it
                # (at the next poll time), without spinning.
                next_poll = runtime.clock.now() + policy.poll_interval
                if not poll:
                    host.newmail.set()  # the notification is not lost: retried then
                    await wait_event(runtime.clock, host.stop_event, policy.progress_interval)
                continue
            if poll and not notified:
                next_poll = runtime.clock.now() + policy.poll_interval
                count = await self.poll()
            else:
                # NEWMAIL says "something is waiting", not how much: take messages
                # until a start_message delivers nothing (bounded per wake-up).
                count = policy.inbound_batch
            left = max(0, count)
            while left > 0:
                got, more = await self.receive_batch(left)
                left -= got
                if not got or not more:
                    break
                await checkpoint()
                await host.background_gate()
                if host.stopping or host.critical_error:
                    return

    async def poll(self) -> int:
        host = self._host
        session = host.require_session()
        try:
            count = await host.call("poll", session.poll())
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ContractViolation(f"poll() returned {count!r}, not an int >= 0")
            host.call_ok()
            return count
        except Exception as exc:
            host.call_failed("poll", exc)
            return 0

    def may_continue(self, *, flush: bool) -> bool:
        """Whether a batch being collected may take one more message: not when the
        session stops, when another session holds the critical section, and for the
        background lane not when a download flush wants the session or the
        foreground is busy (the batch is committed and the lane waits at its gate)."""
        host = self._host
        runtime = host.runtime
        if host.stopping or host.critical_error or host.session is None:
            return False
        if runtime.critsec.active and runtime.critsec.holder is not host:
            return False
        if flush:
            return host.has_bit(StatusCode.INBOUND_FLUSH)
        return not (host.flushing & FlushFlags.DOWNLOAD) and runtime.idle.is_idle()

    async def receive_batch(
        self, limit: int | None = None, *, flush: bool = False
    ) -> tuple[int, bool]:
        """StartMessage up to ``limit`` times (at most ``policy.inbound_commit_batch``
        for an ``SP_INBOUND_BATCH`` session, else once), then commit what was
        delivered in one store transaction.

        Collecting stops early when a call delivers nothing, at
        :data:`INBOUND_COMMIT_BYTES` held in memory, or when :meth:`may_continue`
        says so.  Returns ``(committed, more)``: the messages now in the inbox, and
        False when a call delivered nothing (or failed), i.e. there is no point
        calling again now."""
        host = self._host
        runtime = host.runtime
        host.require_session()
        cap = runtime.policy.inbound_commit_batch if host.caps & LogonCaps.SP_INBOUND_BATCH else 1
        wanted = cap if limit is None else max(1, min(limit, cap))
        async with self.lock:
            lease = self._mailbox_lease()
            if lease is not None:
                if not await lease.hold():
                    return 0, False  # another node fetches this mailbox
                if lease.new_term():
                    if not await self._reload_profile():
                        return 0, False  # the store cannot say what was fetched
                    lease.settled()
            batch: list[tuple[InboundWriterImpl, float]] = []
            held = 0
            more = True
            # INBOUND_ACTIVE while the batch is collected (one status update per batch).
            host.set_bits(on=StatusCode.INBOUND_ACTIVE)
            try:
                while True:
                    writer = await self._start_inbound()
                    if writer is None:
                        more = False
                        break
                    batch.append((writer, runtime.clock.now()))
                    held += writer.size
                    if len(batch) >= wanted or held >= INBOUND_COMMIT_BYTES:
                        break
                    if not self.may_continue(flush=flush):
                        break
                    await checkpoint()  # the loop's other work runs between provider calls
                    if not self.may_continue(flush=flush):
                        break
            finally:
                host.set_bits(off=StatusCode.INBOUND_ACTIVE)
            if not batch:
                return 0, more
            committed = await self._commit_inbound(batch, lease)
            return committed, more and committed > 0

    async def _reload_profile(self) -> bool:
        """The session's profile section read again from the store (this node's hold on
        the mailbox begins anew: another node may have fetched and committed its
        state meanwhile), the isolated child's copy too.  False if the store cannot
        be read: nothing is fetched then."""
        host = self._host
        profile = host.profile
        if profile is None:
            return True
        try:
            values = await host.runtime.store.profile_get(profile.section)
        except StoreError as exc:
            log.warning(
                "transport %r: cannot read its state again before fetching: %s", host.name, exc
            )
            return False
        if values == profile.snapshot():
            return True
        log.info(
            "transport %r: its state changed in the store since it last fetched "
            "(another node fetched): read again",
            host.name,
        )
        profile.replace(values)
        if isinstance(host.session, IsolatedSession):
            await host.session.profile_reloaded(values)
        return True

    async def _start_inbound(self) -> InboundWriterImpl | None:
        """One start_message; the writer if it delivered a message (not committed yet)."""
        host = self._host
        session = host.require_session()
        writer = InboundWriterImpl(new_message_id(), host.implicit_yield)
        host.active[writer.ref] = writer
        token = CURRENT_MESSAGE.set(writer)
        ok = False
        try:
            result: object = await host.call(
                "start_message",
                session.start_message(writer),
            )
            if result is not None:
                raise ContractViolation(
                    f"start_message() returned {result!r}; it must return None "
                    "(write the message through the writer)"
                )
            if writer.cancelled:
                raise MessageCancelled(writer.ref)
            host.call_ok()
            ok = True
        except MessageCancelled:
            pass
        except Exception as exc:
            host.call_failed("start_message", exc)
        finally:
            CURRENT_MESSAGE.reset(token)
            writer.valid = False
            host.active.pop(writer.ref, None)
        if ok and writer.size > 0:
            return writer
        # Nothing of it is delivered: the provider may offer its source item again.
        await self._run_callbacks(writer.rollback_callbacks, "after_rollback callback")
        return None

    async def _run_callbacks(
        self, callbacks: Sequence[Callable[[], Awaitable[None] | None]], what: str
    ) -> None:
        host = self._host
        for callback in callbacks:
            try:
                res = callback()
                if asyncio.iscoroutine(res):
                    await host.runtime.meter.run(host, res)
            except Exception as exc:
                host.call_failed(what, exc)

    async def _commit_inbound(
        self, batch: Sequence[tuple[InboundWriterImpl, float]], lease: MailboxLease | None = None
    ) -> int:
        """Commit the delivered messages in one transaction (all or nothing), then
        counters, progress and the after_commit callbacks in message order; on a
        failure, the after_rollback callbacks in message order.  With a mailbox
        ``lease``, nothing is committed unless this node still holds it."""
        host = self._host
        if lease is not None and not await lease.hold():
            log.warning(
                "transport %r: the mailbox lease went to another node; %d fetched "
                "message(s) left to it",
                host.name,
                len(batch),
            )
            for writer, _received_at in batch:
                await self._run_callbacks(writer.rollback_callbacks, "after_rollback callback")
            return 0
        store = host.runtime.store
        section = host.profile.section if host.profile else f"transport:{host.name}"
        # The provider's state of the whole batch, merged in message order (the last
        # value of a key wins, None deletes): written once, with the last message, in
        # the same transaction as all of them.
        state: dict[str, Any] = {}
        for writer, _received_at in batch:
            state.update(writer.state)
        # The inbound hooks: a deleted message is not committed (its source is still
        # consumed: its after_commit callbacks run with the others').
        outcomes = await hook_inbound(host, batch)
        kept = [(w, t, o) for (w, t), o in zip(batch, outcomes, strict=True) if o.delete is None]
        dropped = len(batch) - len(kept)
        last = len(kept) - 1
        items = [
            (
                InboundMessage(
                    transport=host.name,
                    content=writer.content(),
                    sender=writer.sender,
                    recipients=writer.recipients,
                    received_at=received_at,
                    remote_id=writer.remote_id,
                    meta=outcome.meta(),
                ),
                {section: state} if state and i == last else None,
            )
            for i, (writer, received_at, outcome) in enumerate(kept)
        ]
        try:
            if not items:
                entries = []
                if state:
                    await store.profile_update(section, state)
            elif lease is not None:
                entries = await lease.commit(items)
            elif len(items) == 1:
                message, updates = items[0]
                entries = [await store.deliver_inbound(message, profile_updates=updates)]
            else:
                entries = await store.deliver_inbound_many(items)
        except Exception as exc:
            # Not committed: the provider keeps its source items (no after_commit) and
            # hears so through after_rollback, so it offers them again.
            log.error(
                "transport %r: committing %d inbound message(s) failed: %s",
                host.name,
                len(items),
                exc,
            )
            host.set_bits(detail=f"inbox commit failed: {exc}")
            host.counters["errors"] += 1
            for writer, _received_at in batch:
                await self._run_callbacks(writer.rollback_callbacks, "after_rollback callback")
            return 0
        if host.profile is not None and state:
            host.profile.merge_committed(state)
        host.bump("received", len(entries))
        _log_received(entries)
        if host.flushing & FlushFlags.DOWNLOAD:
            host.flush_done += len(entries)
            host.flush_bytes += sum(entry.size for entry in entries)
        host.port.received(entries)
        # Still under the inbound lock, so no start_message can hand out the
        # source items again before the callbacks have removed them.
        for writer, _received_at in batch:
            await self._run_callbacks(writer.commit_callbacks, "after_commit callback")
        return len(entries) + dropped


async def run_idle_lane(host: HostBase) -> None:
    """``idle()`` at most every ``policy.idle_interval`` seconds, when the session
    may do background work (an ``SP_IDLE`` session)."""
    runtime = host.runtime
    session = host.require_session()
    while not (host.stopping or host.critical_error):
        await wait_event(runtime.clock, host.stop_event, runtime.policy.idle_interval)
        if host.stopping or host.critical_error:
            return
        await host.background_gate()
        if runtime.critsec.active or host.stopping or host.critical_error:
            continue
        try:
            await host.call("idle", session.idle())
            host.call_ok()
        except Exception as exc:
            host.call_failed("idle", exc)


def _log_received(entries: Sequence[InboxEntry]) -> None:
    """INFO (``spoolbox.inbound``): one line per message committed to the inbox."""
    if not inbound_log.isEnabledFor(logging.INFO):
        return
    for entry in entries:
        line = InboundLine.of(
            entry_id=entry.id, sender=entry.sender, transport=entry.transport, size=entry.size
        )
        log_line(inbound_log, logging.INFO, line)
