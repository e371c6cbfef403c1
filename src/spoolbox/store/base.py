"""The Store protocol: what the spooler needs from durable storage.

One protocol, one conformance suite (:func:`spoolbox.testing.check_store`), several
backends: :mod:`.memory` (a real fake, for tests and demos), :mod:`.sqlite` (the
embedded default).  The spooler never sees a schema; it sees these operations.

Rules every backend keeps:

* ``submit`` returns only when the message and all its recipients are durably
  committed; before that the message is invisible to ``claim``.  It is idempotent on
  the message id: the same submission twice stores one message.
* A recipient moves only along :data:`spoolbox.model.TRANSITIONS`.
* ``claim`` never scans the queue: its cost does not grow with the queue length.
  Claimed recipients are ACTIVE under a lease (owner + expiry + claim token);
  ``release_expired`` and ``release_owner`` return lapsed or orphaned claims to QUEUED;
  ``release_lost_claims`` returns those an owner made but never heard of (the store
  committed the claim and the answer was lost).
* Every claim of a recipient has a token (``ClaimedJob.claim``) that no earlier claim
  of it had: a fencing token.  A settle or renewal of an ACTIVE recipient must bring
  the token of the claim holding it, whatever its owner name says (a node that
  stalled past its lease and claimed the recipient again is fenced off its own
  stale claim).
* ``settle`` writes the outcome of each recipient as it becomes known, together with
  any reports generated for it, in one transaction; only the lease owner, with the
  claim's token, may settle an ACTIVE recipient.
* ``settle`` with ``drop_finished`` deletes the message it finishes, if its queue is
  named, in its own transaction: whole (message, recipients, content) or not at all.
* ``purge`` deletes finished messages only (every recipient delivered, failed or
  cancelled: :mod:`.retention`), in bounded transactions; an unfinished message is
  never deleted, whatever the caller asks.
* ``deliver_inbound`` commits an inbound message and the provider's state updates
  (its profile section) in one transaction: a crash keeps both or neither;
  ``deliver_inbound_many`` does the same for several messages, all or nothing.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from spoolbox._quick import quick_init

from ..model import (
    MessageInfo,
    MessageState,
    MessageSummary,
    NewMessage,
    RecipientRecord,
    RecipientState,
    header_text,
    new_message_id,
    subject_of,
)

__all__ = [
    "ClaimedJob",
    "InboundMessage",
    "InboxEntry",
    "LeaseLost",
    "RecipientCheck",
    "RecipientUpdate",
    "Store",
    "StoreError",
    "StoreFull",
    "UnknownMessage",
]

JSONValue = Any  # JSON-serialisable: None, bool, int, float, str, list, dict
#: Whether a transport (still) takes a recipient queued for it, by its address and
#: the transports that declined it (``refused_by``): :meth:`Store.reroute_missing`.
RecipientCheck = Callable[[RecipientRecord], bool]


class StoreError(RuntimeError):
    """The store cannot do what was asked; the text says what and why."""


class StoreFull(StoreError):
    """The disk under the store (or the database server's) is full: nothing of this
    request was written, what the store held before is intact.  Temporary: the same
    request succeeds once there is room (``df -h`` shows where)."""

    temporary = True
    #: The operating system's error behind it, for the command line's wording and hint.
    os_errno = errno.ENOSPC


def new_inbox_entry(
    message: InboundMessage, meta: Mapping[str, JSONValue] | None = None
) -> tuple[InboxEntry, bytes]:
    """The inbox entry (a new id) of an inbound message, and its content as bytes;
    StoreError for a message without content (for backends; writes nothing)."""
    if not message.content:
        raise StoreError("an inbound message needs content")
    content = bytes(message.content)
    entry = InboxEntry(
        id=new_message_id(),
        transport=message.transport,
        sender=message.sender if message.sender is not None else from_of(content),
        recipients=tuple(message.recipients),
        received_at=message.received_at,
        size=len(content),
        subject=subject_of(content),
        remote_id=message.remote_id,
        meta=dict(message.meta if meta is None else meta),
    )
    return entry, content


def from_of(content: bytes) -> str | None:
    """The decoded From: header (RFC 2047 words decoded, raw 8-bit read as UTF-8 with
    replacement characters), or None; never raises.  An inbound message's sender when
    its transport names none (IMAP and POP3 see no envelope)."""
    return header_text(content, b"from") or None


def submission_plan(
    messages: Sequence[NewMessage],
    routes: Sequence[Sequence[str | None] | None] | None,
) -> list[tuple[NewMessage, Sequence[str | None] | None]]:
    """``submit_many``'s arguments checked and paired: each message with its routes.

    Raises StoreError when ``routes`` has not one entry per message, or an entry not
    one route per recipient (for backends; the check writes nothing)."""
    if routes is None:
        return [(m, None) for m in messages]
    if len(routes) != len(messages):
        raise StoreError(f"{len(routes)} route lists for {len(messages)} messages")
    for m, r in zip(messages, routes, strict=True):
        if r is not None and len(r) != len(m.recipients):
            raise StoreError(f"{len(r)} routes for {len(m.recipients)} recipients of {m.id}")
    return list(zip(messages, routes, strict=True))


class UnknownMessage(StoreError, KeyError):
    """No message with that id in this store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown message"


class LeaseLost(StoreError):
    """A settle came from a spooler whose lease on the recipient expired or moved."""


@quick_init
@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """Recipients of one message claimed for one transport, under a lease."""

    message: MessageInfo
    recipients: tuple[RecipientRecord, ...]  # all ACTIVE, route == transport
    transport: str
    owner: str
    lease_until: float
    #: The content, read in the claim's transaction when the message is small (a store
    #: may leave it None: the transport then reads it with ``read_content``).
    content: bytes | None = field(default=None, repr=False, compare=False)
    #: The claim's fencing token: no earlier claim of any of these recipients had it
    #: (each backend says how it makes one).  ``settle`` and ``renew`` give it back.
    claim: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """A new state for one recipient, with what the transport said.

    ``route`` replaces the responsible transport (``None`` = needs routing again);
    ``refused_by`` is *added* to the recipient's not-me list; ``count_attempt``
    increments the attempt counter.
    """

    index: int
    state: RecipientState
    status: str | None = None
    diagnostic: str | None = None
    retry_at: float | None = None  # for QUEUED: not before this time
    route: str | None = None
    keep_route: bool = True  # False: set route to ``route`` (possibly None)
    refused_by: tuple[str, ...] = ()
    count_attempt: bool = False
    delay_warned: bool | None = None  # None keeps the recipient's flag


@quick_init
@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received by a transport, ready to commit to the inbox."""

    transport: str
    content: bytes
    sender: str | None = None  # as the transport saw it (envelope or From)
    recipients: tuple[str, ...] = ()
    received_at: float = 0.0
    remote_id: str | None = None  # e.g. "uidvalidity:uid" or a POP3 UIDL
    #: The inbox entry's ``meta`` (e.g. ``{"folder": "lists"}``, set by a filing hook).
    meta: Mapping[str, JSONValue] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class InboxEntry:
    id: str
    transport: str
    sender: str | None
    recipients: tuple[str, ...]
    received_at: float
    size: int
    subject: str
    remote_id: str | None = None
    meta: Mapping[str, JSONValue] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """Durable queues: outbox (queued, active, deferred, hold), sent, failed, inbox."""

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # -- submission ----------------------------------------------------------------
    async def submit(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
    ) -> MessageInfo:
        """Commit durably; idempotent on ``message.id``.  ``routes`` (one per
        recipient, None = unrouted) routes recipients in the same transaction."""
        ...

    async def submit_many(
        self,
        messages: Sequence[NewMessage],
        *,
        now: float,
        lifetime: float,
        routes: Sequence[Sequence[str | None] | None] | None = None,
    ) -> list[MessageInfo]:
        """Commit all of ``messages`` in one durable transaction, or none of them: one
        that cannot be stored (its id is used by a different message, in the store or
        earlier in ``messages``) fails the call with StoreError naming it.  Idempotent
        per message, as :meth:`submit`; the infos come back in order.  ``routes``:
        one entry per message, as :meth:`submit`'s."""
        ...

    # -- routing -------------------------------------------------------------------
    async def unrouted(
        self, *, limit: int, after: tuple[str, int] | None = None
    ) -> list[RecipientRecord]:
        """QUEUED recipients whose ``route`` is None (new, or declined by a transport),
        in (message id, index) order, after the ``after`` key when given (a cursor, so
        recipients that must wait never hide the ones behind them)."""
        ...

    async def assign_routes(self, assignments: Sequence[tuple[str, int, str]]) -> None:
        """Set ``route`` of QUEUED recipients: ``(message_id, index, transport)``."""
        ...

    async def reroute_missing(
        self, known: Sequence[str], *, limited: Mapping[str, RecipientCheck] | None = None
    ) -> int:
        """Unroute QUEUED/PARKED recipients whose route is not in ``known`` (a
        transport removed from the profile), and those routed to a transport in
        ``limited`` whose check refuses their address (a transport whose profile now
        names other address types, or limits it to other domains: the check is given
        the recipient, its address and ``refused_by``); returns how many."""
        ...

    # -- claims --------------------------------------------------------------------
    async def claim(
        self,
        transport: str,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        ignore_retry: bool = False,
        skip_destinations: Collection[str] = (),
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` messages' recipients routed to ``transport`` and ready
        at ``now`` (retry time and send-at time passed; ``ignore_retry`` skips the retry
        time but never send-at, for flushes).  Highest priority first, then oldest
        ready.  One job per message, holding all its ready recipients for the transport.

        ``skip_destinations``: recipients whose address's destination
        (:func:`spoolbox.model.destination`: the domain after the last "@" in ASCII
        lower case, or the whole value) is one of these stay queued, and a message
        with no other ready recipient is passed over (a lane whose
        ``destination_concurrency`` these destinations have used up); the mail after
        them in the queue is claimed instead."""
        ...

    async def renew(self, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
        """Extend the lease; raises :class:`LeaseLost` if it is no longer ours (another
        owner, or a later claim: ``job.claim`` is not the recipient's claim token)."""
        ...

    async def settle(
        self,
        message_id: str,
        updates: Sequence[RecipientUpdate],
        *,
        owner: str | None,
        now: float,
        claim: int | None = None,
        reports: Sequence[NewMessage] = (),
        inbox_reports: Sequence[InboundMessage] = (),
        drop_finished: Collection[MessageState] = (),
        restoring: bool = False,
    ) -> MessageInfo:
        """Apply updates (checked against the transition table) and enqueue
        ``reports`` / deliver ``inbox_reports`` in the same transaction.  ACTIVE
        recipients may only be settled by their lease owner (``owner``) with the
        token of the claim that holds them (``claim``, the job's ``claim``): else
        LeaseLost, and nothing is written; ``owner=None`` is for non-ACTIVE
        recipients (user actions, expiry).

        ``drop_finished``: finished queues kept for no time
        (:meth:`.retention.Retention.at_once`).  When this settle leaves every
        recipient of the message delivered, failed or cancelled and its queue is
        one of them (:func:`.retention.dropped`), the message, its recipients and
        its content are deleted in the same transaction, after its reports are
        enqueued: the message is UnknownMessage from then on.  Returns the
        message's envelope as it was before the settle.

        ``restoring``: a settle of ``owner``'s claim ``claim`` that the store
        acknowledged, written again after the store failed, which may have undone
        the claim too (a PostgreSQL crash loses its last asynchronous commits): a
        recipient QUEUED whose last claim token is older than ``claim`` (a store
        keeps a recipient's last token after its claim ends), or that has none, is
        settled as if ACTIVE under the claim; anything else as without it."""
        ...

    async def release_expired(self, *, now: float) -> int:
        """Return ACTIVE recipients whose lease expired to QUEUED."""
        ...

    async def release_owner(self, owner: str) -> int:
        """Return every ACTIVE recipient leased by ``owner`` to QUEUED."""
        ...

    async def release_lost_claims(
        self,
        owner: str,
        transport: str,
        *,
        leased_until: float,
        keep: Collection[tuple[str, int]],
    ) -> int:
        """Return to QUEUED (HELD if the message is held) every ACTIVE recipient routed
        to ``transport`` that ``owner`` leased until ``leased_until`` or earlier, but
        those of the claims in ``keep`` (message id and claim token); returns how many.

        For claims an owner made without knowing it: the store committed the claim,
        then failed to answer (a connection cut after the commit).  The owner passes
        the claims it holds (``keep``: a token alone may be that of another message's
        claim, as a backend's tokens need only differ between claims of one recipient)
        and a bound its lost claims' leases cannot be
        past (the time the call failed plus the lease), so that a claim it makes
        meanwhile (a later lease) is not touched."""
        ...

    async def retry_transport(self, transport: str, *, now: float) -> int:
        """Make every QUEUED recipient routed to ``transport`` ready at ``now`` (clear
        its retry time; send-at times stay): what a flush does first."""
        ...

    async def count_claimable(self, transport: str, *, now: float, ignore_retry: bool) -> int:
        """How many messages ``claim`` could return for ``transport`` (flush totals)."""
        ...

    async def next_ready_at(self, transport: str) -> float | None:
        """Earliest time a QUEUED recipient routed to ``transport`` becomes ready."""
        ...

    async def expired(self, *, now: float, limit: int) -> list[RecipientRecord]:
        """Non-terminal, non-ACTIVE recipients of messages past their expiry time."""
        ...

    # -- deferral (END_DONT_RESEND / NOTIFY_SENTDEFERRED) -----------------------
    async def unpark(self, transport: str, message_id: str | None, *, now: float) -> int:
        """PARKED recipients of ``transport`` (one message, or all) back to QUEUED."""
        ...

    # -- user operations -------------------------------------------------------
    async def hold(self, message_id: str) -> MessageInfo: ...

    async def release(self, message_id: str, *, now: float) -> MessageInfo: ...

    async def cancel(self, message_id: str) -> list[RecipientRecord]:
        """Cancel every non-terminal, non-ACTIVE recipient; returns the ACTIVE ones
        (the spooler cancels those through the transport holding them)."""
        ...

    async def retry_now(self, message_id: str, *, now: float) -> int:
        """Make QUEUED recipients ready at ``now`` (clear their retry time)."""
        ...

    # -- reading ---------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageInfo: ...

    async def recipients(self, message_id: str) -> list[RecipientRecord]: ...

    async def read_content(self, message_id: str) -> bytes: ...

    def iter_content(self, message_id: str, *, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """Stream the content; large messages are never loaded whole."""
        ...

    async def state_of(self, message_id: str, *, now: float) -> MessageState: ...

    async def list_messages(
        self,
        *,
        state: MessageState | None = None,
        limit: int = 100,
        after: str | None = None,
        now: float,
    ) -> list[MessageSummary]:
        """Messages by id order (after ``after``), optionally of one queue."""
        ...

    async def counts(self) -> dict[RecipientState, int]:
        """Recipients per state, from maintained counters (no scan)."""
        ...

    # -- inbox and provider state ----------------------------------------------
    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, JSONValue]] | None = None,
    ) -> InboxEntry:
        """Commit to the inbox with the provider state updates, atomically."""
        ...

    async def deliver_inbound_many(
        self,
        items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, JSONValue]] | None]],
    ) -> list[InboxEntry]:
        """Commit several ``(message, profile_updates)`` in one transaction: all or
        nothing.  The updates are merged in order (the last value of a key wins); the
        entries come back in the order of ``items``."""
        ...

    async def list_inbox(
        self, *, limit: int = 100, after: str | None = None
    ) -> list[InboxEntry]: ...

    async def read_inbox(self, entry_id: str) -> bytes: ...

    async def delete_inbox(self, entry_id: str) -> None:
        """Delete one inbox entry and its content, durably; UnknownMessage if there
        is none with that id."""
        ...

    # -- retention ---------------------------------------------------------------
    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        """Delete, in one durable transaction, up to ``limit`` finished messages with
        their recipients and content; returns their ids (fewer than ``limit``: none
        are left).

        ``finished_before`` maps a finished queue (SENT, FAILED, CANCELLED) to a time:
        a message in that queue goes when its finished time
        (:func:`.retention.finished_at`, the latest ``updated_at`` of its recipients)
        is strictly before it.  Queues not in the mapping are kept.  A message with
        any recipient not delivered, failed or cancelled is never deleted; naming an
        unfinished queue is a StoreError (:func:`.retention.check_cutoffs`), and so
        is ``limit < 1``.  Which of several purgeable messages go first is the
        backend's choice.  The transaction's cost is bounded by ``limit`` (plus the
        scan for candidates), so a caller purges a large store in many short ones."""
        ...

    async def purge_inbox(self, *, received_before: float, limit: int) -> list[str]:
        """Delete, in one durable transaction, up to ``limit`` inbox entries received
        strictly before ``received_before``, with their content; returns their ids.
        StoreError for ``limit < 1``."""
        ...

    async def orphan_sections(self, prefix: str, *, limit: int) -> list[str]:
        """Up to ``limit`` message ids ``X`` such that a profile section ``prefix`` +
        ``X`` exists and the store has no message ``X`` (purged, dropped at its last
        settle, never stored).

        For a caller's per-message sections (the spooler's stored hook verdicts,
        ``spoolbox.hooks:<id>``) that a crash left behind their message; a section
        written just before its message is submitted is one too, for a moment: the
        caller deletes with :meth:`purge_sections` what it found orphaned a while
        before.  ``prefix`` must end with ``":"`` and ``limit`` be at least 1, or
        StoreError."""
        ...

    async def purge_sections(self, prefix: str, ids: Collection[str]) -> list[str]:
        """Delete, in one durable transaction, the sections ``prefix`` + ``X`` for each
        ``X`` of ``ids`` that is not a message of the store now; returns the ``X``
        whose section it deleted, in the order of ``ids``.  A section whose message
        exists is kept, whatever ``ids`` says, and so is every section not named with
        ``prefix``; StoreError for a prefix that does not end with ``":"``."""
        ...

    async def profile_get(self, section: str) -> dict[str, JSONValue]: ...

    async def profile_update(self, section: str, values: Mapping[str, JSONValue]) -> None:
        """Merge ``values`` into the section (a value of None deletes the key)."""
        ...
