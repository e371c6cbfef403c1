"""What the store conformance checks share: the registry of checks (:data:`STORE_CHECKS`,
filled by the ``_check`` decorator), the times they use, and their helpers (messages,
submits, claims, expectations).  :mod:`.store_conformance` and :mod:`.store_drop`
register their checks with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..model import (
    Address,
    MessageInfo,
    NewMessage,
    RecipientRecord,
    RecipientState,
)
from ..store.base import (
    ClaimedJob,
    InboundMessage,
    RecipientUpdate,
    Store,
    UnknownMessage,
)

#: A check: receives an opened, empty store; raises AssertionError when a rule is broken.
StoreCheck = Callable[[Store], Awaitable[None]]
#: Makes a fresh, unopened store (an ``async def`` or a plain callable).
StoreFactory = Callable[[], Store | Awaitable[Store]]

#: Every check, by name, in a stable order.
STORE_CHECKS: dict[str, StoreCheck] = {}

_F = TypeVar("_F", bound=StoreCheck)
_R = RecipientState

_T0 = 1000.0  # the "now" the checks start from
_LIFETIME = 3600.0  # the queue lifetime policy the checks submit with
_LEASE = 30.0


def _check(fn: _F) -> _F:
    STORE_CHECKS[fn.__name__.lstrip("_")] = fn
    return fn


# -- helpers --------------------------------------------------------------------------


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


async def _raises(
    exc_type: type[BaseException] | tuple[type[BaseException], ...],
    awaitable: Awaitable[Any],
    what: str,
) -> BaseException:
    try:
        await awaitable
    except exc_type as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"{what}: expected {exc_type}, got {exc!r}") from exc
    raise AssertionError(f"{what}: expected {exc_type}, but nothing was raised")


def _content(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return b"From: alice@example.org\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body


def _new(
    *recipients: str,
    id: str | None = None,
    subject: str = "test",
    content: bytes | None = None,
    **kwargs: Any,
) -> NewMessage:
    kwargs.setdefault("sender", Address.parse("SMTP:alice@example.org"))
    if id is not None:
        kwargs["id"] = id
    return NewMessage(
        recipients=tuple(Address.parse(r) for r in recipients),
        content=content if content is not None else _content(subject),
        **kwargs,
    )


async def _submit(
    store: Store,
    *recipients: str,
    now: float = _T0,
    route: bool = True,
    **kwargs: Any,
) -> MessageInfo:
    """Submit, then route every recipient to the transport named by its address type."""
    message = _new(*recipients, **kwargs)
    info = await store.submit(message, now=now, lifetime=_LIFETIME)
    if route:
        await store.assign_routes(
            [(info.id, i, a.type.lower()) for i, a in enumerate(message.recipients)]
        )
    return info


async def _states(store: Store, message_id: str) -> list[RecipientState]:
    return [r.state for r in await store.recipients(message_id)]


async def _claim_one(
    store: Store, transport: str = "x", *, owner: str = "o1", now: float = _T0, **kwargs: Any
) -> ClaimedJob:
    jobs = await store.claim(transport, owner=owner, now=now, lease=_LEASE, limit=1, **kwargs)
    _equal(len(jobs), 1, f"claim({transport!r}) at {now}: number of jobs")
    return jobs[0]


async def _settle_all(
    store: Store, job: ClaimedJob, state: RecipientState, *, now: float, **kwargs: Any
) -> MessageInfo:
    return await store.settle(
        job.message.id,
        [RecipientUpdate(r.index, state, **kwargs) for r in job.recipients],
        owner=job.owner,
        claim=job.claim,
        now=now,
    )


def _ids(jobs: Iterable[ClaimedJob]) -> list[str]:
    return [j.message.id for j in jobs]


@dataclass(frozen=True)
class _Snapshot:
    recipients: dict[str, list[RecipientRecord]]
    counts: dict[RecipientState, int]
    inbox: int


async def _snapshot(store: Store, *message_ids: str) -> _Snapshot:
    return _Snapshot(
        {m: await store.recipients(m) for m in message_ids},
        await store.counts(),
        len(await store.list_inbox(limit=1000)),
    )


async def _fail_with_reports(store: Store, **extra: Any) -> tuple[NewMessage, InboundMessage]:
    """m1 failed at _T0 + 5 by a settle that enqueues report r1 and an inbox report
    (``extra``: more of settle's arguments); returns the two reports."""
    await _submit(store, "X:a", id="m1", now=_T0)
    job = await _claim_one(store, now=_T0)
    report = _new(
        "SMTP:alice@example.org", id="r1", sender=None, is_report=True, subject="Undelivered"
    )
    inbound = InboundMessage("spooler", _content("Delivery report"), received_at=_T0 + 5)
    await store.settle(
        "m1",
        [RecipientUpdate(0, _R.FAILED, "5.1.1", "550 unknown")],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 5,
        reports=[report],
        inbox_reports=[inbound],
        **extra,
    )
    return report, inbound


async def _gone(store: Store, mid: str) -> bool:
    try:
        await store.get_message(mid)
    except UnknownMessage:
        return True
    return False
