"""Recipient and message states, and the one table of legal transitions.

The unit of work is the *recipient*: the original tracks PR_RESPONSIBILITY per
recipient, and so do we.  A message's queue (outbox, sent, failed, ...) is derived
from the states of its recipients by :func:`message_state`, never stored apart.

::

    QUEUED ──claim──► ACTIVE ──delivered──► DELIVERED      (terminal)
      ▲  │             │  ├──failed───────► FAILED         (terminal)
      │  │             │  ├──cancelled────► CANCELLED      (terminal)
      │  │             │  ├──don't resend─► PARKED ──sent-deferred──► QUEUED
      │  │             │  └──retry / not-me / lease lost──► QUEUED
      │  ├──hold──► HELD ──release──► QUEUED
      │  ├──expire / no route──► FAILED
      │  └──cancel──► CANCELLED

Every store backend checks its updates against :data:`TRANSITIONS` with
:func:`check_transition`, so an illegal move is a bug that fails loudly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "MessageState",
    "RecipientState",
    "check_transition",
    "message_state",
]


class RecipientState(enum.StrEnum):
    QUEUED = "queued"  # waiting for its transport (possibly until a retry time)
    ACTIVE = "active"  # claimed by a spooler under a lease, in a transport's hands
    PARKED = "parked"  # deferred by the transport (END_DONT_RESEND) until SENTDEFERRED
    HELD = "held"  # put on hold by the user
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[RecipientState] = frozenset(
    {RecipientState.DELIVERED, RecipientState.FAILED, RecipientState.CANCELLED}
)

_R = RecipientState
#: state -> states it may move to.  Nothing leaves a terminal state.
TRANSITIONS: dict[RecipientState, frozenset[RecipientState]] = {
    _R.QUEUED: frozenset({_R.ACTIVE, _R.HELD, _R.FAILED, _R.CANCELLED, _R.QUEUED}),
    _R.ACTIVE: frozenset({_R.DELIVERED, _R.FAILED, _R.CANCELLED, _R.PARKED, _R.QUEUED, _R.HELD}),
    _R.PARKED: frozenset({_R.QUEUED, _R.HELD, _R.FAILED, _R.CANCELLED}),
    _R.HELD: frozenset({_R.QUEUED, _R.CANCELLED, _R.FAILED}),
    _R.DELIVERED: frozenset(),
    _R.FAILED: frozenset(),
    _R.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A store or the spooler tried to move a recipient along an edge not in the table."""


def check_transition(old: RecipientState, new: RecipientState, *, what: str = "") -> None:
    if new not in TRANSITIONS[old]:
        where = f" ({what})" if what else ""
        raise IllegalTransition(f"recipient cannot go from {old} to {new}{where}")


class MessageState(enum.StrEnum):
    """The queue a message is in, derived from its recipients."""

    QUEUED = "queued"  # outbox: some recipient waits and none is active
    ACTIVE = "active"  # outbox: some recipient is in a transport's hands
    DEFERRED = "deferred"  # outbox: waiting only on parked recipients or retry times
    HOLD = "hold"  # outbox: every unfinished recipient is held
    SENT = "sent"  # done, at least one recipient delivered
    FAILED = "failed"  # done, none delivered, at least one failed
    CANCELLED = "cancelled"  # done, every recipient cancelled


def message_state(
    states: Iterable[RecipientState], *, waiting_on_retry: bool = False
) -> MessageState:
    """The queue of a message whose recipients are in ``states``.

    ``waiting_on_retry`` says the queued recipients all wait for a retry time in
    the future (the message is *deferred* in Postfix's sense rather than queued).
    """
    seen = set(states)
    if not seen:
        raise ValueError("a message has at least one recipient")
    if _R.ACTIVE in seen:
        return MessageState.ACTIVE
    if _R.QUEUED in seen:
        return MessageState.DEFERRED if waiting_on_retry else MessageState.QUEUED
    if _R.PARKED in seen:
        return MessageState.DEFERRED
    if _R.HELD in seen:
        return MessageState.HOLD
    if _R.DELIVERED in seen:
        return MessageState.SENT
    if _R.FAILED in seen:
        return MessageState.FAILED
    return MessageState.CANCELLED
