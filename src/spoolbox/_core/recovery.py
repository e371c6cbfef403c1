"""After the store failed: what this node may have lost in it, and how its outbound
lanes put it right once the store answers again.

A store that fails may have lost work it had told this node was done, or done work
without telling it:

* a claim the server committed whose answer the cut connection lost (a lane's
  claim, or a hand-off whose submit failed): its recipients are leased to this node
  and no job of it holds them;
* the settle of a delivered job that the server's crash undid: PostgreSQL's
  progress commits (claims, renewals, settles) do not wait for the disk, and a
  crash (``pg_ctl restart -m immediate``, a failover to a replica behind) loses
  the last few hundred milliseconds of them.  The recipients are ACTIVE again,
  under the claim of a job this node finished.

Left alone, both wait for their lease to end (two minutes by default), and the
second is then delivered again.  :class:`StoreOutages` is what the spooler keeps
for it: a count of the store's failures (every chore, lane and the node's presence
that sees one notes it, ``Runtime.store_failed``), when they came, the latest lease
a claim made before the last of them can have, and the settles of claimed jobs the
store acknowledged lately (:data:`ACKED_KEPT`, without reports: those are made again by the delivery
made again).  Before its next claim, an outbound lane that has not seen the latest
count writes again the settles of its transport acknowledged from a second (and a
routing interval) before the first failure it has not seen up to the last
(:meth:`StoreOutages.unsure`; a settle the store kept is refused, ``LeaseLost`` or
``UnknownMessage``, and nothing is written), then returns to the queue what the
node leased until the bound and holds no job of (``Store.release_lost_claims``).
See ``OutboundLane._recover``.

A crash may undo a claim as well: its recipients are QUEUED again, under an older
claim token.  The settles written again, and a job's settle refused after the crash
(``Settlement._restore``), go as ``restoring`` (``Store.settle``): settled as if the
claim held them, unless another claim had them since.
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from spoolbox._quick import quick_init

from ..model import MessageState
from ..store import RecipientUpdate

__all__ = ["ACKED_KEPT", "UNSURE_BEFORE", "AckedSettle", "StoreOutages"]

#: Settles of claimed jobs kept after the store acknowledged them (the latest).
ACKED_KEPT: Final = 4096
#: A settle acknowledged this long before the store's crash may be undone: PostgreSQL
#: loses at most three ``wal_writer_delay`` (200 ms by default) of asynchronous
#: commits.  The node notes the failure later, at its next call (the router's comes
#: each ``router_interval``): the lanes add that (:meth:`StoreOutages.unsure`).
UNSURE_BEFORE: Final = 1.0
#: Failures remembered with their time (a long outage notes one a second or more).
_FAILURES_KEPT: Final = 1024


@quick_init
@dataclass(frozen=True, slots=True)
class AckedSettle:
    """A claimed job's settle the store acknowledged at ``at``: its ``Store.settle``
    arguments, to write it again."""

    at: float
    transport: str
    message_id: str
    updates: tuple[RecipientUpdate, ...]
    owner: str
    now: float
    claim: int
    drop_finished: Collection[MessageState]


class StoreOutages:
    """The store's failures as this spooler saw them, and its settles acknowledged
    lately (module doc)."""

    __slots__ = ("_acked", "_failures", "count", "leased_until")

    def __init__(self) -> None:
        self.count = 0
        self.leased_until = float("-inf")
        self._failures: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=_FAILURES_KEPT
        )
        self._acked: collections.deque[AckedSettle] = collections.deque(maxlen=ACKED_KEPT)

    def noted(self, now: float, lease: float) -> None:
        """A store call failed at ``now``; claims are leased for ``lease``."""
        self.count += 1
        self.leased_until = max(self.leased_until, now + lease)
        self._failures.append((self.count, now))

    def acked(self, settle: AckedSettle) -> None:
        """The store acknowledged a claimed job's settle."""
        self._acked.append(settle)

    def first_failure_after(self, seen: int) -> float | None:
        """When the first failure after the ``seen``-th came (the oldest remembered
        if it is older than them all); None if there was none."""
        first: float | None = None
        for count, at in reversed(self._failures):
            if count <= seen:
                break
            first = at
        return first

    def unsure(
        self, transport: str, seen: int, *, noticed_within: float = 0.0
    ) -> Sequence[AckedSettle]:
        """The settles of ``transport`` that a failure after the ``seen``-th may have
        undone: those acknowledged from :data:`UNSURE_BEFORE` before the first of
        them (and ``noticed_within`` more: how late the node may have noticed the
        store's crash) up to the last (one acknowledged after the last failure was
        made by a store that has not failed since)."""
        first = self.first_failure_after(seen)
        if first is None:
            return ()
        since = first - UNSURE_BEFORE - noticed_within
        until = self._failures[-1][1]
        return [s for s in self._acked if s.transport == transport and since <= s.at <= until]
