"""The hand-off: a message submitted while a lane of its transport waits for work is
claimed for that lane in the transaction that commits it.

As Postfix's queue manager takes a queue file the moment cleanup(8) closes it, the
waiting worker gets the new message at once, without a claim transaction of its own
(one store transaction a message fewer when the spooler keeps up).  Only a store
that can do it (``submit_claiming``: the SQLite and PostgreSQL stores) and only a
lane that is free: one of its workers waits for work, nothing claimed waits for a
worker, the session is logged on and its background gate is open
(:meth:`~.hosts.base.HostBase.gate_open`: a busy foreground, a critical section or a
cool-down keep the message queued as before), and only a message of at most
:data:`HAND_OFF_LIMIT` bytes: a large one is delivered from the store in pieces
anyway, where one transaction more costs nothing that shows, and handing it off
would start its delivery while its submitter still holds it (a delivery report
returning a 10 MiB message grew the peak memory from 2.5 to 3.5 times the message).
Otherwise the submit is the ordinary one and the lane claims as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeGuard, runtime_checkable

from ..model import MessageInfo, NewMessage
from ..store import ClaimedJob
from .hosts.host import TransportHost
from .runtime import Runtime

__all__ = ["HAND_OFF_LIMIT", "SubmitClaiming", "submit"]

#: The largest message handed off (the size whose content a claim brings along).
HAND_OFF_LIMIT = 256 * 1024


@runtime_checkable
class SubmitClaiming(Protocol):
    """A store that can claim a message in the transaction that commits it."""

    async def submit_claiming(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
        transport: str,
        owner: str,
        lease: float,
    ) -> tuple[MessageInfo, ClaimedJob | None]: ...


#: Whether a store class can claim a message as it commits it, found once a class: an
#: ``isinstance`` against a runtime protocol looks up each of its members every time
#: (microseconds, twice a submission).
_CLAIMS: dict[type, bool] = {}


def _claims(store: object) -> TypeGuard[SubmitClaiming]:
    kind = type(store)
    found = _CLAIMS.get(kind)
    if found is None:
        found = _CLAIMS[kind] = isinstance(store, SubmitClaiming)
    return found


async def submit(
    runtime: Runtime,
    host_of: Callable[[str], TransportHost],
    message: NewMessage,
    routes: Sequence[str | None],
) -> MessageInfo:
    """Commit ``message`` (recipients routed by ``routes``), handing it to a free lane
    of its first route's transport if there is one."""
    store = runtime.store
    now = runtime.clock.now()
    lifetime = runtime.policy.lifetime
    first = next((r for r in routes if r is not None), None)
    host: TransportHost | None = None
    if _claims(store) and first is not None and message.size <= HAND_OFF_LIMIT:
        try:
            host = host_of(first)
        except KeyError:
            host = None
        if host is not None and not (host.entry.outbound and host.outbound.reserve_hand_off()):
            host = None
    if host is None or not _claims(store):
        return await store.submit(message, now=now, lifetime=lifetime, routes=routes)
    lane = host.outbound
    try:
        info, job = await store.submit_claiming(
            message,
            now=now,
            lifetime=lifetime,
            routes=routes,
            transport=host.name,
            owner=runtime.owner,
            lease=runtime.policy.lease,
        )
    except BaseException:
        lane.cancel_hand_off(failed=True)  # its claim may be in all the same
        raise
    if job is None:
        lane.cancel_hand_off()
    elif not lane.hand_off(job):
        # The session ended while the message was committed: back to the queue now,
        # not when the lease runs out.
        await lane.put_back(job)
    return info
