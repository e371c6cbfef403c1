"""The store's pure rules, the same for every backend: what a submission becomes,
what a settle update makes of a recipient, which queue a message is in.

No I/O here: each backend reads its rows, applies these, and writes the result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Final

from ..model import (
    TERMINAL,
    MessageInfo,
    MessageState,
    NewMessage,
    RecipientRecord,
    RecipientState,
    check_transition,
    message_state,
    subject_of,
)
from .base import LeaseLost, RecipientUpdate

__all__ = ["accepted", "check_settle", "fingerprint", "lease_kept", "queue_of", "settled"]

_R = RecipientState
# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_QUEUED: Final = _R.QUEUED
_HELD: Final = _R.HELD
_ACTIVE: Final = _R.ACTIVE


def accepted(message: NewMessage, *, now: float, lifetime: float) -> MessageInfo:
    """The envelope a new submission is stored with, at ``now``; ``lifetime`` applies
    when the message brings none of its own."""
    return MessageInfo(
        id=message.id,
        sender=message.sender,
        priority=message.priority,
        submitted_at=now,
        send_at=None if message.send_at is None else float(message.send_at),
        # The lifetime starts when the message may first be sent (its send-at time).
        expires_at=max(now, message.send_at or now)
        + (message.lifetime if message.lifetime is not None else lifetime),
        notify=message.notify,
        is_report=message.is_report,
        envelope_id=message.envelope_id,
        return_content=message.return_content,
        size=message.size,
        subject=subject_of(message.content),
    )


def settled(r: RecipientRecord, u: RecipientUpdate, *, now: float, held: bool) -> RecipientRecord:
    """The recipient after a settle update at ``now`` (``held``: its message is held,
    so a recipient sent back to the queue waits in HELD)."""
    first_failed = r.first_failed_at
    if u.status is not None and u.status.startswith("4") and first_failed is None:
        first_failed = now
    retry_at = u.retry_at
    if retry_at is None:
        retry_at = r.retry_at if u.state is _QUEUED else 0.0
    state = _HELD if u.state is _QUEUED and held else u.state
    # Made whole rather than with dataclasses.replace (twice the cost, a settle of every
    # recipient); a test pins that every column not written here is carried over.
    return RecipientRecord(
        message_id=r.message_id,
        index=r.index,
        address=r.address,
        state=state,
        route=r.route if u.keep_route else u.route,
        refused_by=r.refused_by + tuple(t for t in u.refused_by if t not in r.refused_by),
        attempts=r.attempts + (1 if u.count_attempt else 0),
        retry_at=retry_at,
        status=u.status if u.status is not None else r.status,
        diagnostic=u.diagnostic if u.diagnostic is not None else r.diagnostic,
        updated_at=now,
        first_failed_at=first_failed,
        delay_warned=r.delay_warned if u.delay_warned is None else u.delay_warned,
        original=r.original,
    )


def queue_of(readiness: Iterable[tuple[RecipientState, float]], now: float) -> MessageState:
    """A message's queue from its recipients' ``(state, ready time)``: it waits on a
    retry when every QUEUED recipient's ready time is still ahead of ``now``."""
    states: list[RecipientState] = []
    queued_ready: list[float] = []
    for state, ready_at in readiness:
        states.append(state)
        if state is _R.QUEUED:
            queued_ready.append(ready_at)
    waiting = bool(queued_ready) and all(t > now for t in queued_ready)
    return message_state(states, waiting_on_retry=waiting)


def fingerprint(message: NewMessage) -> bytes:
    """A digest of the whole submission: equal digests mean equal NewMessages (a
    backend that keeps the digest, not the submission, tells a resubmission with it)."""
    fields: list[object] = [
        message.id,
        None if message.sender is None else str(message.sender),
        [str(a) for a in message.recipients],
        int(message.priority),
        None if message.send_at is None else float(message.send_at),
        int(message.notify),
        None if message.lifetime is None else float(message.lifetime),
        bool(message.is_report),
        message.envelope_id,
    ]
    # Fields added later go in only when set: a stored message's digest does not change
    # (a resubmission of a message stored before the field existed is still recognised).
    if message.return_content is not None:
        fields.append(bool(message.return_content))
    if message.original_recipients:
        fields.append({"orcpt": [[str(a), o] for a, o in message.original_recipients]})
    envelope = json.dumps(fields)
    digest = hashlib.sha256(envelope.encode())
    digest.update(b"\n")
    digest.update(message.content)
    return digest.digest()


def check_settle(
    message_id: str,
    index: int,
    state: RecipientState,
    holder: str | None,
    held_claim: int | None,
    *,
    owner: str | None,
    claim: int | None,
    target: RecipientState,
    restoring: bool = False,
) -> None:
    """May ``owner`` with the claim token ``claim`` settle recipient ``index`` (in
    ``state``, leased by ``holder`` under the claim ``held_claim``) to ``target``?
    LeaseLost if not its to settle (an ACTIVE recipient is its claim's: the holder's
    name and the claim's token must both match, so a later claim by the same owner
    fences an earlier one off; and a settle with an owner settles only what it holds),
    IllegalTransition if the move is not in the table; writes nothing (for backends).

    ``restoring``: the settle is written again after the store failed, and the
    failure may have undone the claim with it: a QUEUED recipient whose last claim
    token (``held_claim``, kept when a claim ends) is older than ``claim``, or that
    has none, was claimed by nobody since, and is settled as if ACTIVE under it."""
    if (
        restoring
        and owner is not None
        and claim is not None
        and state is _R.QUEUED
        and (held_claim is None or held_claim < claim)
    ):
        check_transition(_R.ACTIVE, target, what=f"{message_id}#{index}")
        return
    if state is _ACTIVE or owner is not None:
        held_by = holder if state is _ACTIVE else None
        if owner is None or held_by != owner:
            raise LeaseLost(f"{message_id}#{index} is leased by {held_by or 'nobody'}, not {owner}")
        if claim != held_claim:
            raise LeaseLost(_stale(message_id, index, owner, claim, held_claim))
    check_transition(state, target, what=f"{message_id}#{index}")


def lease_kept(
    message_id: str,
    index: int,
    state: RecipientState,
    holder: str | None,
    held_claim: int | None,
    *,
    owner: str,
    claim: int,
) -> bool:
    """For a lease renewal: True if ``owner``'s claim ``claim`` still holds recipient
    ``index``, False if it is already terminal (nothing to renew); LeaseLost if
    another owner or a later claim has it, or none."""
    if state is _ACTIVE and holder == owner:
        if claim != held_claim:
            raise LeaseLost(_stale(message_id, index, owner, claim, held_claim))
        return True
    if state in TERMINAL:
        return False
    raise LeaseLost(f"lease on {message_id}#{index} is no longer held by {owner}")


def _stale(message_id: str, index: int, owner: str, claim: int | None, held: int | None) -> str:
    return (
        f"{message_id}#{index} is held by {owner}'s claim {held}, not by claim {claim}: "
        "a later claim took it over (this one's lease had expired)"
    )
