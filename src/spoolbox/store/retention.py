"""How long finished messages and inbox entries are kept: the ``[store] keep_*`` settings
and the pure rules of what may be purged, the same for every backend.

A message is *finished* when every recipient is delivered, failed or cancelled.  Its
reports (delivery status notifications) are generated in the same transaction that
finishes the recipient they report (``Store.settle``), so a finished message has
caused every report it will cause.  Its *finished time* is the latest ``updated_at``
of its recipients: the moment the last one finished.  An inbox entry ages from its
arrival (``received_at``, the spooler's clock when it was committed), whether a
client has read it or not: the store does not know who read it.

A finished queue kept for no time (``keep_sent = 0``, ``keep_failed = 0``) is not left
to the purge: :meth:`Retention.at_once` names those queues, the spooler passes them to
``Store.settle`` (``drop_finished``), and the settle that finishes such a message
deletes it in its own transaction (:func:`dropped`), as Postfix deletes a queue file
once the last recipient is done.  Nothing reads a finished message after that settle
but a person (``spoolbox queue show``, the web page): its reports were made before,
in that same transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..model import TERMINAL, MessageState, RecipientRecord, RecipientState, message_state
from .base import StoreError, UnknownMessage

__all__ = [
    "FINISHED_STATES",
    "FOREVER",
    "Retention",
    "check_cutoffs",
    "check_limit",
    "check_section_prefix",
    "dropped",
    "finished_at",
    "purgeable",
]

#: The queues of finished messages: the only ones a purge may touch.
FINISHED_STATES: frozenset[MessageState] = frozenset(
    {MessageState.SENT, MessageState.FAILED, MessageState.CANCELLED}
)

#: A ``keep_*`` value that means "never purge".
FOREVER = "forever"

_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds a finished message (or an inbox entry) is kept; ``None`` keeps it for
    ever, ``0`` purges it at the first housekeeping round after it finished.

    Sent messages are kept 7 days, failed and cancelled ones 30 days (someone may
    want to know why), inbox entries 30 days from their arrival.
    """

    keep_sent: float | None = 7 * _DAY
    keep_failed: float | None = 30 * _DAY
    keep_inbox: float | None = 30 * _DAY

    def __post_init__(self) -> None:
        for name in ("keep_sent", "keep_failed", "keep_inbox"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be a duration >= 0 or None (forever), not {value}")

    def keep(self, state: MessageState) -> float | None:
        """How long a finished message in ``state`` is kept (cancelled = failed)."""
        if state not in FINISHED_STATES:
            raise ValueError(f"{state} is not a finished queue: it is never purged")
        return self.keep_sent if state is MessageState.SENT else self.keep_failed

    def cutoffs(
        self, now: float, states: Iterable[MessageState] = FINISHED_STATES
    ) -> Mapping[MessageState, float]:
        """``Store.purge``'s ``finished_before`` at ``now``: per finished state kept
        for a while, the finished time before which its messages go."""
        out: dict[MessageState, float] = {}
        for state in states:
            keep = self.keep(state)
            if keep is not None:
                out[state] = now - keep
        return MappingProxyType(out)

    def at_once(self) -> frozenset[MessageState]:
        """The finished queues kept for no time: their messages are deleted by the
        settle that finishes them (``Store.settle``'s ``drop_finished``)."""
        return frozenset(s for s in FINISHED_STATES if self.keep(s) == 0)

    def not_kept(self) -> str | None:
        """What to tell someone looking for a message that is not in the store, when
        finished queues are kept for no time (None when none is): it may have
        finished and been deleted at once."""
        names = {MessageState.SENT: "sent", MessageState.FAILED: "failed"}
        gone = [names[s] for s in (MessageState.SENT, MessageState.FAILED) if s in self.at_once()]
        if not gone:
            return None
        keys = " and ".join(f"keep_{n} = 0" for n in gone)
        return (
            f"it may have been {' or '.join(gone)} and not kept: [store] {keys} deletes "
            "a message as soon as it is finished (the delivery log has its outcome)"
        )

    def missing(self, exc: UnknownMessage) -> UnknownMessage:
        """``exc`` (a message not in the store) with :meth:`not_kept`'s note when
        finished queues are kept for no time; ``exc`` itself otherwise."""
        note = self.not_kept()
        return exc if note is None else UnknownMessage(f"{exc}: {note}")

    def vanished(self) -> MessageState | None:
        """The queue a message that is no longer in the store finished in, when the
        messages of only one finished queue are deleted at once (``keep_sent = 0``
        alone: SENT); None when that cannot be told."""
        at_once = self.at_once()
        return next(iter(at_once)) if len(at_once) == 1 else None

    def inbox_cutoff(self, now: float) -> float | None:
        """``Store.purge_inbox``'s ``received_before`` at ``now``; None: keep all."""
        return None if self.keep_inbox is None else now - self.keep_inbox


def finished_at(recipients: Iterable[RecipientRecord]) -> float | None:
    """The finished time of a message with these recipients, or None while any of
    them is unfinished."""
    latest: float | None = None
    for r in recipients:
        if r.state not in TERMINAL:
            return None
        latest = r.updated_at if latest is None else max(latest, r.updated_at)
    return latest


def dropped(states: Iterable[RecipientState], drop_finished: Collection[MessageState]) -> bool:
    """Whether a settle that leaves a message's recipients in ``states`` deletes it:
    every one finished, and the queue they make in ``drop_finished``."""
    seen = list(states)
    if not drop_finished or not seen or any(s not in TERMINAL for s in seen):
        return False
    return message_state(seen) in drop_finished


def purgeable(
    state: MessageState,
    recipients: Iterable[RecipientRecord],
    finished_before: Mapping[MessageState, float],
) -> bool:
    """Whether a message in ``state`` with ``recipients`` goes in a purge with these
    cutoffs: finished, its state named, finished strictly before its cutoff."""
    cutoff = finished_before.get(state)
    if cutoff is None or state not in FINISHED_STATES:
        return False
    done = finished_at(recipients)
    return done is not None and done < cutoff


def check_cutoffs(finished_before: Mapping[MessageState, float]) -> None:
    """Refuse (StoreError) cutoffs that name an unfinished queue (for backends)."""
    unfinished = sorted(str(s) for s in finished_before if s not in FINISHED_STATES)
    if unfinished:
        raise StoreError(
            f"cannot purge unfinished queues ({', '.join(unfinished)}); "
            f"only {', '.join(sorted(str(s) for s in FINISHED_STATES))}"
        )


def check_limit(limit: int) -> None:
    """Refuse (StoreError) a purge's ``limit`` below 1 (for backends)."""
    if limit < 1:
        raise StoreError(f"a purge's limit must be at least 1, not {limit}")


def check_section_prefix(prefix: str) -> None:
    """Refuse (StoreError) a prefix of ``orphan_sections`` / ``purge_sections`` that
    does not end with ":" (with "" every section of the store that is not a message
    id would be taken for a message's)."""
    if not prefix.endswith(":"):
        raise StoreError(
            f"per-message sections need a prefix ending with ':' (such as "
            f"'spoolbox.hooks:'), not {prefix!r}"
        )
