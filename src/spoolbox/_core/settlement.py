"""Settlement: recipient updates written to the store, with the reports they call
for, in one transaction.

A transport's results (or the router's and the housekeeper's verdicts) become
recipient states; a final state, or a deferral old enough for a delay warning,
becomes a delivery status notification (RFC 3464) when the sender asked for one:
sent like any message, or put straight into the inbox for a local sender.  A report
that fails itself is never reported on (that could loop); it goes into the inbox as
a *double bounce* (as Postfix sends it to the postmaster), so it is never lost.
A message finished in a queue kept for no time (``[store] keep_sent = 0``) is
deleted by the settle that finishes it, after its reports (``Store.settle``'s
``drop_finished``).
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import replace
from typing import Any, Final

from ..model import (
    TRANSITIONS,
    Address,
    IllegalTransition,
    MessageInfo,
    NewMessage,
    Notify,
    RecipientRecord,
    RecipientResult,
    RecipientState,
)
from ..reports import (
    RETURN_SIZE_LIMIT,
    ReportItem,
    ReportKind,
    double_bounce,
    needed_bytes,
    report_message,
    wants_report,
)
from ..store import (
    ClaimedJob,
    InboundMessage,
    LeaseLost,
    RecipientUpdate,
    StoreError,
    UnknownMessage,
)
from .chores import ChoreTrouble
from .config import SpoolerConfig
from .delivery_log import (
    DELIVERY_LOGGER,
    DOUBLE_BOUNCE,
    DeliveryLine,
    ReportLine,
    log_line,
    show_address,
)
from .destinations import DestinationBackoff
from .recovery import AckedSettle
from .runtime import SPOOLER_ROW, Runtime

__all__ = ["SETTLE_RETRY_CAP", "Settlement"]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_FAILED: Final = RecipientState.FAILED
_DELIVERED: Final = RecipientState.DELIVERED
#: The final states the spooler row counts.
_COUNTED: Final = frozenset(
    (RecipientState.DELIVERED, RecipientState.FAILED, RecipientState.CANCELLED)
)

log = logging.getLogger("spoolbox.spooler")

#: The longest wait between two tries of a settle the store failed (the first is
#: 0.1 s, each next twice as long).
SETTLE_RETRY_CAP = 2.0
#: NOTIFY=DELAY, tested on every settle, as an int.
_DELAY = int(Notify.DELAY)
#: One INFO line per recipient outcome and per report made (docs/operations.md, "Logs").
delivery_log = logging.getLogger(DELIVERY_LOGGER)


class Settlement:
    """Writes recipient updates and their reports, and counts what was settled."""

    def __init__(
        self,
        runtime: Runtime,
        config: SpoolerConfig,
        *,
        counters: MutableMapping[str, int],
        destinations: DestinationBackoff,
        messages_changed: Callable[[], None],
        routing_changed: Callable[[], None],
    ) -> None:
        self._runtime = runtime
        self._config = config
        self._counters = counters  # the spooler's counters (shown on its status row)
        self._destinations = destinations
        self._messages_changed = messages_changed
        self._routing_changed = routing_changed  # a report waits for routing
        # Finished queues kept for no time: the settle that finishes a message of one
        # deletes it (``[store] keep_sent = 0``, ``keep_failed = 0``).
        self._drop = config.retention.at_once()
        self._store_trouble = ChoreTrouble("settling", log, runtime.store_failed)

    async def settle(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        *,
        results: Sequence[RecipientResult] = (),
    ) -> bool:
        """A claimed job's updates (``results``: the transport's, for the reports);
        False if the store refused them because the lease was taken over.

        The outcomes are logged (``spoolbox.delivery``) and counted only once the store
        committed them: a line never says "sent" of what a crash could still undo, and
        a refused settle is neither logged nor counted (the claim that holds the
        recipients now settles and counts them)."""
        runtime = self._runtime
        now = runtime.clock.now()
        self._destinations.learn(job, updates, results)
        updates = self._mark_delays(job.message, job.recipients, updates)
        reports, inbox, made = await self._reports(job.message, job.recipients, updates, results)
        try:
            await self._store_settle(job, updates, now, reports, inbox)
        except LeaseLost as exc:
            if not await self._restore(job, updates, now, reports, inbox):
                # Another spooler has it now, or a later claim of this one (its lease
                # ran out while it stalled): that claim settles it, not this one.
                log.error("settling %s: %s (its lease was taken over)", job.message.id, exc)
                return False
        remote = {r.index: r.remote_mta for r in results}
        _log_settled(job.message, job.recipients, job.transport, updates, remote, made, now)
        self._after_settle(updates, len(reports) + len(inbox))
        return True

    async def _restore(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        now: float,
        reports: Sequence[Any],
        inbox: Sequence[Any],
    ) -> bool:
        """A settle refused because its recipients are not leased to the job's claim:
        if the store lost the claim itself (a PostgreSQL crash undoes its last
        asynchronous commits, and the job was delivered meanwhile), its recipients
        are QUEUED under an older claim and nobody claimed them since; the settle is
        written as if the claim held them (``restoring``), rather than leaving them
        to be delivered again.  False if that is refused too (another claim had
        them since, or they were released: the ordinary lease taken over)."""
        try:
            await self._write(job, updates, now, reports, inbox, restoring=True)
        except StoreError:  # LeaseLost, UnknownMessage, or the store failing again
            return False
        log.warning(
            "settling %s: the store had lost its claim (its failure undid it); "
            "the outcome is written all the same",
            job.message.id,
        )
        return True

    async def _write(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        now: float,
        reports: Sequence[Any],
        inbox: Sequence[Any],
        *,
        restoring: bool = False,
    ) -> None:
        """One ``Store.settle`` of a claimed job's updates by this node."""
        runtime = self._runtime
        await runtime.store.settle(
            job.message.id,
            updates,
            owner=runtime.owner,
            now=now,
            claim=job.claim,
            reports=reports,
            inbox_reports=inbox,
            drop_finished=self._drop,
            restoring=restoring,
        )

    async def _store_settle(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        now: float,
        reports: Sequence[Any],
        inbox: Sequence[Any],
    ) -> None:
        """The store's settle, tried again while the store fails it (a PostgreSQL
        restart, a cut connection) for up to a third of the lease: the outcome is
        known, and writing it late beats delivering the message again after the
        lease.  The lease is still renewed meanwhile; a settle that comes after
        another node claimed the recipients is fenced off (LeaseLost).  Past that,
        the StoreError goes to the lane, which gives the job up."""
        runtime = self._runtime
        policy = runtime.policy
        give_up = runtime.clock.now() + policy.lease / 3
        wait = 0.1
        while True:
            try:
                await self._write(job, updates, now, reports, inbox)
            except (LeaseLost, UnknownMessage):
                raise  # an answer, not an outage: trying again changes nothing
            except StoreError as exc:
                if runtime.clock.now() + wait > give_up:
                    raise
                self._store_trouble.failed(exc, "trying again")
                await runtime.clock.sleep(wait)
                wait = min(wait * 2, SETTLE_RETRY_CAP)
                continue
            self._store_trouble.ok()
            if not reports and not inbox:  # (a report is made again with its delivery)
                runtime.outages.acked(
                    AckedSettle(
                        at=runtime.clock.now(),
                        transport=job.transport,
                        message_id=job.message.id,
                        updates=tuple(updates),
                        owner=runtime.owner,
                        now=now,
                        claim=job.claim,
                        drop_finished=self._drop,
                    )
                )
            return

    async def settle_unowned(self, message_id: str, updates: Sequence[RecipientUpdate]) -> None:
        """Updates of recipients no transport holds (no route, expired), those of them
        that still apply: the router and housekeeping (this node's, another node's) may
        find the same recipient, and a lane may claim it meanwhile.  A recipient that
        moved on between the read and the settle (IllegalTransition, LeaseLost: the
        settle wrote nothing) is read again, and left alone if it is no longer
        unowned."""
        store = self._runtime.store
        for attempt in range(_UNOWNED_TRIES):
            info = await store.get_message(message_id)
            recipients = await store.recipients(message_id)
            still = _still_unowned(recipients, updates)
            if not still:
                return
            still = self._mark_delays(info, recipients, still)
            reports, inbox, made = await self._reports(info, recipients, still, ())
            now = self._runtime.clock.now()
            try:
                await store.settle(
                    message_id,
                    still,
                    owner=None,
                    now=now,
                    reports=reports,
                    inbox_reports=inbox,
                    drop_finished=self._drop,
                )
            except (IllegalTransition, LeaseLost) as exc:
                if attempt + 1 == _UNOWNED_TRIES:
                    raise
                log.debug("%s: settled or claimed meanwhile (%s); looking again", message_id, exc)
                continue
            _log_settled(info, recipients, None, still, {}, made, now)
            self._after_settle(still, len(reports) + len(inbox))
            return

    async def log_user_cancel(self, message_id: str, before: Sequence[RecipientRecord]) -> None:
        """The lines of the recipients a user's cancel took out of the queue (the store
        committed it; those a transport held are logged when it settles them)."""
        if not delivery_log.isEnabledFor(logging.INFO):
            return
        store = self._runtime.store
        info = await store.get_message(message_id)
        after = await store.recipients(message_id)
        now_cancelled = {r.index for r in after if r.state is RecipientState.CANCELLED}
        updates = [
            RecipientUpdate(r.index, RecipientState.CANCELLED, diagnostic="cancelled by user")
            for r in before
            if r.index in now_cancelled
            and r.state not in (RecipientState.CANCELLED, RecipientState.ACTIVE)
        ]
        _log_settled(info, before, None, updates, {}, (), self._runtime.clock.now())

    def _after_settle(self, updates: Sequence[RecipientUpdate], reports: int) -> None:
        counters = self._counters
        for update in updates:
            if update.state in _COUNTED:
                counters[str(update.state)] += 1
        counters["reports"] += reports
        status = self._runtime.status
        if SPOOLER_ROW in status:
            status.update(SPOOLER_ROW, counters=dict(counters))
        self._messages_changed()
        if reports:
            self._routing_changed()

    async def _reports(
        self,
        info: MessageInfo,
        recipients: Sequence[Any],
        updates: Sequence[RecipientUpdate],
        results: Sequence[RecipientResult],
    ) -> tuple[list[NewMessage], list[InboundMessage], list[ReportLine]]:
        """The reports ``updates`` call for: to send, to put in the inbox, and the
        lines that will say so once they are committed."""
        by_index = {r.index: r for r in recipients}
        remote = {r.index: r.remote_mta for r in results}
        # Delivered to a next hop that reports the delivery itself (it got NOTIFY), or
        # to one that reports nothing (relayed: the success report says so).
        passed_on = {r.index for r in results if r.next_hop_reports}
        relayed = {r.index for r in results if r.relayed}
        kinds: dict[ReportKind, list[ReportItem]] = defaultdict(list)
        now = self._runtime.clock.now()
        for update in updates:
            recipient = by_index.get(update.index)
            if recipient is None:
                continue
            until: float | None = None
            code = update.status
            if update.state is _FAILED:
                kind = ReportKind.FAILURE
                status = code if code and code[0] in "45" else "5.0.0"
            elif update.state is _DELIVERED:
                if update.index in passed_on:
                    continue
                kind = ReportKind.SUCCESS
                status = code if code and code[0] == "2" else "2.0.0"
            elif update.delay_warned and not recipient.delay_warned:
                kind = ReportKind.DELAY
                status = code if code and code[0] == "4" else "4.0.0"
                until = info.expires_at
            else:
                continue
            if not wants_report(info, kind) and not (kind is ReportKind.FAILURE and info.is_report):
                continue  # nobody asked for it (a delivery, mostly): no item made
            kinds[kind].append(
                ReportItem(
                    address=recipient.address,
                    status=status,
                    diagnostic=update.diagnostic or "",
                    remote_mta=remote.get(update.index),
                    last_attempt=now,
                    will_retry_until=until,
                    relayed=kind is ReportKind.SUCCESS and update.index in relayed,
                    original=recipient.original,
                )
            )
        # A report that failed: a double bounce for the inbox, never sent (no loop).
        failed_report = kinds.get(ReportKind.FAILURE) if info.is_report else None
        # Only what the sender asked for (and never about a report): checked before the
        # original content is read, which most deliveries never need.
        kinds = {k: v for k, v in kinds.items() if wants_report(info, k)}
        if not kinds and not failed_report:
            return [], [], []
        original: bytes | None = None
        out: list[NewMessage] = []
        inbox: list[InboundMessage] = []
        made: list[ReportLine] = []
        to = show_address(info.sender) if info.sender is not None else ""
        if failed_report:
            original = await self._original(info)
            inbox.append(self._double_bounce(info, original, failed_report, now))
            postmaster = f"postmaster@{self._config.reporting_mta}"
            made.append(ReportLine(info.id, DOUBLE_BOUNCE, postmaster, None))
        for kind, items in kinds.items():
            if original is None:
                original = await self._original(info)
            msg = report_message(
                info=info,
                original=original,
                original_size=info.size,
                items=items,
                kind=kind,
                reporting_mta=self._config.reporting_mta,
                now=now,
                include_content=info.return_content,  # RET (None: the kind's default)
            )
            if msg is None:
                continue
            if info.sender is not None and self._is_local(info.sender):
                inbox.append(
                    InboundMessage(
                        transport=SPOOLER_ROW,
                        content=msg.content,
                        sender=None,
                        recipients=(str(info.sender),),
                        received_at=now,
                    )
                )
                made.append(ReportLine(info.id, str(kind), to, None))
            else:
                here = self._at_this_host(info.sender)
                if here:  # root@HOST: its local name's addresses (MAILDIR:root)
                    msg = replace(msg, recipients=here)
                out.append(msg)
                made.append(ReportLine(info.id, str(kind), to, msg.id))
        return out, inbox, made

    def _double_bounce(
        self, info: MessageInfo, original: bytes, items: list[ReportItem], now: float
    ) -> InboundMessage:
        """The inbox entry of a report that could not be delivered (logged at WARNING
        once the store committed it)."""
        content = double_bounce(
            info=info,
            original=original,
            items=items,
            reporting_mta=self._config.reporting_mta,
            now=now,
            original_size=info.size,
        )
        return InboundMessage(
            transport=SPOOLER_ROW,
            content=content,
            sender=None,
            recipients=(f"postmaster@{self._config.reporting_mta}",),
            received_at=now,
        )

    async def _original(self, info: MessageInfo) -> bytes:
        """The original for a report: whole, or only the beginning that holds what a
        report returns of a message too large to return (not 50 MB for its headers)."""
        store = self._runtime.store
        need = needed_bytes(info.size, RETURN_SIZE_LIMIT)
        if need is None:
            return await store.read_content(info.id)
        buffer = io.BytesIO()
        async for chunk in store.iter_content(info.id):
            buffer.write(chunk)
            if buffer.tell() >= need:
                break
        return buffer.getvalue()

    def _mark_delays(
        self, info: MessageInfo, recipients: Sequence[Any], updates: Sequence[RecipientUpdate]
    ) -> list[RecipientUpdate]:
        """Flag the deferrals that call for the (single) delay report of a recipient."""
        after = self._runtime.policy.delay_warning_after
        out = list(updates)
        if after is None or not int(info.notify) & _DELAY or info.is_report:
            return out
        by_index = {r.index: r for r in recipients}
        now = self._runtime.clock.now()
        for i, update in enumerate(out):
            recipient = by_index.get(update.index)
            if (
                recipient is None
                or recipient.delay_warned
                or update.state is not RecipientState.QUEUED
            ):
                continue
            if not (update.status or "").startswith("4"):
                continue
            first = recipient.first_failed_at if recipient.first_failed_at is not None else now
            if now - first >= after:
                out[i] = replace(update, delay_warned=True)
        return out

    def _at_this_host(self, address: Address | None) -> tuple[Address, ...] | None:
        """What a sender at this host's own name stands for (the profile's
        ``[local_names]``), None for any other."""
        rule = self._config.local_recipients
        return rule(address) if rule is not None and address is not None else None

    def _is_local(self, address: Address) -> bool:
        return any(
            a.type == address.type and a.value.lower() == address.value.lower()
            for a in self._config.identities
        )


def _log_settled(
    info: MessageInfo,
    recipients: Sequence[Any],
    transport: str | None,
    updates: Sequence[RecipientUpdate],
    remote: Mapping[int, str | None],
    reports: Sequence[ReportLine],
    now: float,
) -> None:
    """INFO: one line per recipient outcome and per report made (committed already);
    WARNING: a double bounce; DEBUG: the updates that are no outcome (queued again
    without an attempt)."""
    for report in reports:
        if report.kind == DOUBLE_BOUNCE:
            log_line(delivery_log, logging.WARNING, report)
    if not delivery_log.isEnabledFor(logging.INFO):
        return
    by_index = {r.index: r for r in recipients}
    for update in updates:
        recipient = by_index.get(update.index)
        line = DeliveryLine.of(
            message_id=info.id,
            address=recipient.address if recipient is not None else f"#{update.index}",
            # settled by no transport (expired, cancelled in the queue): the route it had
            transport=transport or (recipient.route if recipient is not None else None),
            update=update,
            submitted_at=info.submitted_at,
            now=now,
            remote_mta=remote.get(update.index),
        )
        if line is not None:
            log_line(delivery_log, logging.INFO, line)
        elif delivery_log.isEnabledFor(logging.DEBUG):
            delivery_log.debug(
                "%s: recipient #%d %s again (no attempt made)", info.id, update.index, update.state
            )
    for report in reports:
        if report.kind != DOUBLE_BOUNCE:
            log_line(delivery_log, logging.INFO, report)


#: Reads and settles of unowned recipients before a race is given up as a failure.
_UNOWNED_TRIES = 3


def _still_unowned(
    recipients: Sequence[RecipientRecord], updates: Sequence[RecipientUpdate]
) -> list[RecipientUpdate]:
    """The updates whose recipient no transport holds and may still take them (not
    claimed, not finished: another chore or node may have got there first)."""
    by_index = {r.index: r for r in recipients}
    return [
        u
        for u in updates
        if (r := by_index.get(u.index)) is not None
        and r.state is not RecipientState.ACTIVE
        and u.state in TRANSITIONS[r.state]
    ]
