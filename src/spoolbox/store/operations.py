"""The store's operations by name, each with the kind of transaction it needs.

The same for every backend: a backend reads :data:`OPERATIONS` to run an operation
in a snapshot, a durable commit, or a progress commit (the SQLite store sets its
``synchronous`` level from it; a PostgreSQL store would set ``synchronous_commit``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["OPERATIONS", "Kind"]


class Kind(enum.Enum):
    #: One read transaction: a consistent snapshot, nothing written.
    READ = "read"
    #: A write that takes on or changes a message (a submission, an inbound message,
    #: a hold, a cancel ...): committed durably before the caller resumes.
    WRITE = "write"
    #: The spooler's progress (claims, lease renewals and releases, settles): its
    #: loss in a power cut only makes work be done again, so a backend may commit it
    #: without waiting for the disk, but never out of order with later commits.
    PROGRESS = "progress"


_READ = (
    "unrouted",
    "count_claimable",
    "next_ready_at",
    "expired",
    "get_message",
    "recipients",
    "read_content",
    "iter_content",
    "state_of",
    "list_messages",
    "counts",
    "list_inbox",
    "read_inbox",
    "profile_get",
    "orphan_sections",
)
_WRITE = (
    "submit",
    "submit_many",
    "assign_routes",
    "reroute_missing",
    "retry_transport",
    "unpark",
    "hold",
    "release",
    "cancel",
    "retry_now",
    "deliver_inbound",
    "deliver_inbound_many",
    "profile_update",
    "delete_inbox",
    "purge",
    "purge_inbox",
    "purge_sections",
)
_PROGRESS = (
    "claim",
    "renew",
    "settle",
    "release_expired",
    "release_owner",
    "release_lost_claims",
)

#: Every operation of :class:`~spoolbox.store.base.Store` but ``open`` and ``close``.
OPERATIONS: Mapping[str, Kind] = MappingProxyType(
    {
        **dict.fromkeys(_READ, Kind.READ),
        **dict.fromkeys(_WRITE, Kind.WRITE),
        **dict.fromkeys(_PROGRESS, Kind.PROGRESS),
    }
)
