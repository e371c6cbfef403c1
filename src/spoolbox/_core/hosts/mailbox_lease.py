"""An inbound mailbox fetched by one node at a time: a named lease in the store.

When the spooler runs as a node (:func:`spoolbox._core.node.start_node`: the daemon)
and its store keeps named leases (:class:`~spoolbox.store.cluster.ClusterStore`:
the SQLite file processes share, or PostgreSQL), each inbound session takes the lease
``inbound:<transport>`` before it fetches a batch, and commits the batch only while
it holds it, checked in the batch's own transaction (:meth:`MailboxLease.commit`).
The lease lasts the node's lease (:attr:`~spoolbox._core.node.NodeSettings.lease`)
and is renewed when a third of it is used, so a node fetching steadily keeps it with
one store write every few seconds, and another node takes over once it expired (the
holder died or stalled).

A node whose hold begins anew (at its first batch, or after its lease lapsed) reads
the transport's profile section from the store again before it fetches
(:meth:`InboundLane.receive_batch`): the watermark or the UIDLs another node
committed meanwhile, not the copy it read at its logon.  Without that a node that
takes over a mailbox left with ``after_fetch = "keep"`` would fetch again what the
other node had already put in the inbox.

The check in the commit is the fence: a node that stalled past its lease (a SIGSTOP,
a long pause) finds another holder, and its batch is rolled back (the provider hears
``after_rollback`` and keeps the messages), so a message reaches the inbox once.  The
lease cannot move between the check and the commit (SQLite: one ``BEGIN
IMMEDIATE``; PostgreSQL: the lease row is locked until the commit).  The provider's
state (the IMAP watermark, the POP3 UIDLs) commits with the messages in one
transaction, and the next holder starts from it.  The same mechanism serves both
backends: one row per mailbox in the ``leases`` table.
"""

from __future__ import annotations

import logging

from ...store import InboxEntry, StoreError
from ...store.cluster import ClusterStore, InboundItems, LeaseHeld
from ..clock import Clock
from ..node import node_of

__all__ = ["MailboxLease", "mailbox_lease"]

log = logging.getLogger("spoolbox.spooler")


class MailboxLease:
    """The lease on one mailbox, as one node holds it."""

    def __init__(
        self, store: ClusterStore, name: str, *, owner: str, clock: Clock, lease: float
    ) -> None:
        self.name = name
        self._store = store
        self._owner = owner
        self._clock = clock
        self._lease = lease
        self.until = float("-inf")
        self.holder: str | None = None  # the other node holding it, when refused
        # Set when a hold began a new term (the last one had lapsed, or there was
        # none): another node may have fetched meanwhile.  See :meth:`new_term`.
        self._new_term = False

    def __repr__(self) -> str:
        return f"<MailboxLease {self.name} owner={self._owner} until={self.until}>"

    async def hold(self) -> bool:
        """True if this node holds the lease for at least two thirds of its length
        more (renewing it if less is left); False if another node holds it or the
        store cannot say."""
        now = self._clock.now()
        if self.until - now > self._lease * 2 / 3:
            return True
        lapsed = self.until <= now
        try:
            self.until = await self._store.acquire_lease(
                self.name, owner=self._owner, now=now, lease=self._lease
            )
        except LeaseHeld as exc:
            if self.holder is None or self.until > float("-inf"):
                log.info("%s: another node fetches this mailbox (%s)", self.name, exc)
            self.until = float("-inf")
            self.holder = str(exc)
            return False
        except StoreError as exc:
            log.warning("%s: cannot take the mailbox lease: %s", self.name, exc)
            self.until = float("-inf")
            return False
        self.holder = None
        self._new_term = self._new_term or lapsed
        return True

    def new_term(self) -> bool:
        """Whether this node's hold began anew since the last call that answered True
        and was then :meth:`settled`: the provider's state in the store may have moved
        on meanwhile (another node fetched), so the session must read it again before
        it fetches."""
        return self._new_term

    def settled(self) -> None:
        """The state was read again for this term."""
        self._new_term = False

    async def commit(self, items: InboundItems) -> list[InboxEntry]:
        """``deliver_inbound_many(items)`` if this node still holds the lease, checked
        in the commit's transaction; LeaseHeld (nothing committed) if not."""
        try:
            return await self._store.deliver_inbound_leased(
                items, lease=self.name, owner=self._owner, now=self._clock.now()
            )
        except LeaseHeld:
            self.until = float("-inf")  # taken again (or found held) at the next batch
            raise


def mailbox_lease(spooler: object, store: object, transport: str) -> MailboxLease | None:
    """The lease of ``transport``'s mailbox when ``spooler`` runs as a node on a store
    that keeps leases; None otherwise (one spooler alone fetches as before)."""
    node = node_of(spooler)
    if node is None or not isinstance(store, ClusterStore):
        return None
    return MailboxLease(
        store,
        f"inbound:{transport}",
        owner=node.name,
        clock=node.clock,
        lease=node.settings.lease,
    )
