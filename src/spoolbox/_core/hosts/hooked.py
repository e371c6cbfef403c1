"""Where hooks and preprocessors meet a session's lanes.

Outbound (:func:`stage_outbound`, before ``submit_message``; :func:`finish_outbound`
after the job is settled):

1. The spooler hooks (:class:`~spoolbox._core.hooks.HookChain`) run once per message
   and transport.  A verdict other than *keep* is **stored before it takes effect**,
   in the store's key/value sections (``spoolbox.hooks:<message id>``, key: the
   transport), the changed content with it.  A job that finds a stored verdict applies
   it without running the hooks again: after a crash, or a retry, the same bytes go
   out.  *Delete* fails the job's recipients with the hook's reason (a report follows,
   if the sender asked for one).  *Reroute* submits a new message (id derived from the
   original's and the transport's, so a crash cannot make two) to the new recipients,
   marked as having passed the hooks, and cancels the job's recipients, naming it.  A
   hook that fails defers the job's recipients (retried with the usual back-off).
2. The transport's matching preprocessors run, in registration order, on the content
   the hooks left.  Their result is **not stored**: after a crash they run again from
   the content before them, so what goes out is preprocessed once.  One that raises
   defers the job and counts as a failed call of the transport.

Inbound (:func:`hook_inbound`): each received message passes the inbound chain before
its batch is committed; *delete* drops it (its source is still consumed), *file to*
sets the inbox entry's folder (``meta["folder"]``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from spoolbox._quick import quick_init

from ...contract.errors import ContractViolation
from ...contract.hooks import HookFlags, HookMessage
from ...model import (
    TERMINAL,
    Address,
    NewMessage,
    RecipientResult,
    RecipientState,
)
from ...model.message import with_originals
from ...store import ClaimedJob, RecipientUpdate, UnknownMessage
from ..hooks import HookFailed, InboundOutcome, OutboundOutcome
from ..objects import InboundWriterImpl
from ..policy import plan_result
from ..preprocess import Preprocessors, Registration
from .base import HostBase, log

__all__ = [
    "HOOKS_SECTION",
    "Staged",
    "derived_id",
    "finish_outbound",
    "hook_inbound",
    "stage_outbound",
]

#: The store section of a message's stored hook verdicts: ``spoolbox.hooks:<id>``.
HOOKS_SECTION = "spoolbox.hooks:"
#: The key of a verdict for every transport (a message a hook rerouted: it passed).
_ALL = "*"


@quick_init
@dataclass(frozen=True, slots=True)
class Staged:
    """What :func:`stage_outbound` made of a job."""

    content: bytes | None = None  # what the transport is given; None: the stored content
    #: The job was settled here instead of sent (deleted, rerouted, deferred).
    updates: tuple[RecipientUpdate, ...] | None = None
    results: tuple[RecipientResult, ...] = ()
    message: HookMessage | None = None
    removers: tuple[Registration, ...] = ()  # RemovePreprocessInfo, after sending
    recorded: bool = False  # a stored verdict applied: drop it once the job is done


def derived_id(message_id: str, transport: str) -> str:
    """The id of the message a hook's Reroute makes of ``message_id`` on
    ``transport``: the same every time, so a crash cannot submit it twice."""
    digest = hashlib.sha256(f"{message_id}\0{transport}".encode()).hexdigest()[:12]
    return f"{message_id[:48]}.r{digest}"


async def stage_outbound(host: HostBase, job: ClaimedJob, preprocessors: Preprocessors) -> Staged:
    """Run the hooks and the preprocessors over a claimed job (see the module)."""
    runtime = host.runtime
    chain = runtime.hooks
    regs = preprocessors.matching(r.address.type for r in job.recipients)
    hooking = chain is not None and chain.outbound
    if not hooking and not regs:
        return Staged()
    store = runtime.store
    mid = job.message.id
    original = job.content if job.content is not None else await store.read_content(mid)
    sender = job.message.sender
    message = HookMessage(
        ref=mid,
        direction=HookFlags.OUTBOUND,
        transport=host.name,
        sender=None if sender is None else str(sender),
        recipients=tuple(str(r.address) for r in job.recipients),
        content=original,
        info=job.message,
    )
    recorded = False
    if chain is not None and hooking:
        section = HOOKS_SECTION + mid
        stored = await store.profile_get(section)
        entry = stored.get(host.name, stored.get(_ALL))
        if isinstance(entry, dict):
            outcome = OutboundOutcome.from_record(entry)
            recorded = True
        else:
            try:
                outcome = await chain.run_outbound(message)
            except HookFailed as exc:
                return _deferred(host, job, str(exc))
            if not outcome.keep:
                # Durable before it takes effect: a crash from here on applies it again
                # rather than running the hooks again.
                await store.profile_update(section, {host.name: outcome.to_record()})
                recorded = True
        if outcome.content is not None:
            message = replace(message, content=outcome.content)
        if outcome.delete is not None:
            text = f"deleted by hook {outcome.by!r}: {outcome.delete.reason}"
            return _settled(host, job, RecipientResult.failed, text, outcome.delete.status)
        if outcome.reroute is not None:
            new_id = await _reroute(host, job, message.content, outcome)
            targets = ", ".join(str(a) for a in outcome.reroute)
            text = f"rerouted by hook {outcome.by!r} to {targets} as message {new_id}"
            updates = tuple(
                RecipientUpdate(r.index, RecipientState.CANCELLED, diagnostic=text)
                for r in job.recipients
            )
            return Staged(updates=updates, recorded=True)
    for reg in regs:
        try:
            new = await _preprocess(host, reg, message)
        except Exception as exc:
            host.call_failed("preprocess", exc)
            return _deferred(host, job, f"preprocessor {reg.name} failed: {exc}")
        if new is not None:
            message = replace(message, content=new)
    return Staged(
        content=None if message.content is original else message.content,
        message=message,
        removers=tuple(r for r in regs if r.remove is not None),
        recorded=recorded,
    )


async def _preprocess(host: HostBase, reg: Registration, message: HookMessage) -> bytes | None:
    """One PreprocessMessage, measured as the transport's own code."""
    limit = host.runtime.policy.call_timeout
    try:
        async with asyncio.timeout(limit):
            new = await host.runtime.meter.run(host, _awaited(reg.preprocess(message)))
    except TimeoutError:
        raise TimeoutError(f"it ran longer than {limit:g} s (policy.call_timeout)") from None
    if new is None:
        return None
    if not isinstance(new, bytes | bytearray) or not bytes(new).strip():
        raise ContractViolation(
            f"preprocessor {reg.name} returned {type(new).__name__}; it must return the "
            "new content (non-empty bytes) or None"
        )
    return bytes(new)


async def _awaited(value: Any) -> Any:
    return await value


async def finish_outbound(host: HostBase, job: ClaimedJob, staged: Staged) -> None:
    """After the job is settled: RemovePreprocessInfo, and the stored hook verdict
    dropped once nothing of the message waits for this transport any more."""
    message = staged.message
    for reg in staged.removers:
        assert reg.remove is not None and message is not None
        try:
            res = reg.remove(message)
            if asyncio.iscoroutine(res):
                await host.runtime.meter.run(host, res)
        except Exception as exc:
            host.call_failed("remove_preprocess_info", exc)
    if not staged.recorded:
        return
    store = host.runtime.store
    mid = job.message.id
    try:
        try:
            left = [r for r in await store.recipients(mid) if r.state not in TERMINAL]
        except UnknownMessage:  # deleted by its settle (kept for no time)
            gone = await store.profile_get(HOOKS_SECTION + mid)
            await store.profile_update(HOOKS_SECTION + mid, dict.fromkeys(gone))
            return
        drop: dict[str, None] = {}
        if not any(r.route in (host.name, None) for r in left):
            drop[host.name] = None
        if not left:
            drop[_ALL] = None
        if drop:
            await store.profile_update(HOOKS_SECTION + mid, drop)
    except Exception as exc:  # only tidying: the verdict stays, harmless
        log.warning("transport %r: dropping the hook verdict of %s failed: %s", host.name, mid, exc)


async def _reroute(
    host: HostBase, job: ClaimedJob, content: bytes, outcome: OutboundOutcome
) -> str:
    """Submit the rerouted message (once), marked as having passed the hooks."""
    runtime = host.runtime
    store = runtime.store
    info = job.message
    new_id = derived_id(info.id, host.name)
    try:
        await store.get_message(new_id)
        return new_id  # submitted before a crash
    except UnknownMessage:
        pass
    assert outcome.reroute is not None
    await store.profile_update(HOOKS_SECTION + new_id, {_ALL: {"from": info.id, "by": outcome.by}})
    now = runtime.clock.now()
    new = NewMessage(
        sender=info.sender,
        recipients=outcome.reroute,
        content=content,
        priority=info.priority,
        notify=info.notify,
        lifetime=max(1.0, info.expires_at - now),
        envelope_id=info.envelope_id,
        return_content=info.return_content,
        original_recipients=_rerouted_originals(job, outcome.reroute),
        id=new_id,
    )
    await store.submit(new, now=now, lifetime=runtime.policy.lifetime)
    host.port.routing_changed()
    log.info("message %s rerouted by hook %r as %s", info.id, outcome.by, new_id)
    return new_id


def _rerouted_originals(
    job: ClaimedJob, targets: Sequence[Address]
) -> tuple[tuple[Address, str], ...]:
    """The original recipient (RFC 3461 ORCPT) of each of a reroute's ``targets``, so
    that a report on the new message names the recipient the sender gave: a target
    that is one of the job's recipients keeps that recipient's; when the job had one
    recipient, every other target stands for it (its ORCPT, or its address when it
    came without one), as Postfix keeps the recipient before a redirect; a target of
    a job with several recipients stands for none of them in particular, and gets
    none."""
    kept = {r.address: r.original for r in job.recipients}
    only = job.recipients[0] if len(job.recipients) == 1 else None
    found: list[tuple[Address, str]] = []
    for target in dict.fromkeys(targets):
        if target in kept:
            original = kept[target]
        elif only is not None:
            [(_, original)] = with_originals((target,), only.address, only.original)
        else:
            original = None
        if original is not None:
            found.append((target, original))
    return tuple(found)


def _settled(
    host: HostBase, job: ClaimedJob, make: Any, text: str, status: str | None = None
) -> Staged:
    """Every recipient of the job gets the same result, planned as a transport's."""
    runtime = host.runtime
    now = runtime.clock.now()
    results = tuple(
        make(r.index, text) if status is None else make(r.index, text, status=status)
        for r in job.recipients
    )
    attempts = {r.index: r.attempts for r in job.recipients}
    updates = tuple(
        plan_result(
            res,
            attempts=attempts[res.index],
            policy=runtime.policy,
            now=now,
            expires_at=job.message.expires_at,
            rng=runtime.rng,
        )
        for res in results
    )
    return Staged(updates=updates, results=results, recorded=True)


def _deferred(host: HostBase, job: ClaimedJob, text: str) -> Staged:
    """A hook or preprocessor failed: the job waits and is tried again (4.3.0)."""
    staged = _settled(host, job, RecipientResult.deferred, text, "4.3.0")
    return replace(staged, recorded=False)


async def hook_inbound(
    host: HostBase, batch: Sequence[tuple[InboundWriterImpl, float]]
) -> list[InboundOutcome]:
    """The inbound chain over each received message of a batch, in order."""
    chain = host.runtime.hooks
    if chain is None or not chain.inbound:
        return [InboundOutcome() for _ in batch]
    outcomes = []
    for writer, _received_at in batch:
        message = HookMessage(
            ref=writer.ref,
            direction=HookFlags.INBOUND,
            transport=host.name,
            sender=writer.sender,
            recipients=writer.recipients,
            content=writer.content(),
        )
        outcome = await chain.run_inbound(message)
        if outcome.delete is not None:
            log.info(
                "inbound message %s from %r deleted by hook %r: %s",
                writer.ref,
                writer.sender,
                outcome.by,
                outcome.delete.reason,
            )
        outcomes.append(outcome)
    return outcomes
