"""The status table: one row per transport session plus one for the spooler.

Rows are frozen values; every change replaces a row and publishes a
:class:`StatusChange` to subscribers.  A subscriber is an async iterator over a
bounded queue: one that falls behind by more than its queue size is dropped (its
iterator ends with :class:`SubscriberDropped`) and logged, so a slow or stuck
observer can never stall delivery.  Callback observers that raise are dropped the
same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from spoolbox._quick import quick_init, quick_replace

from ..model import Progress, ResourceMethods, ResourceType, StatusCode

__all__ = [
    "StatusChange",
    "StatusRow",
    "StatusTable",
    "Subscriber",
    "SubscriberDropped",
    "default_status_string",
]

log = logging.getLogger("spoolbox.status")


def default_status_string(code: StatusCode) -> str:
    """The precedence MRXP and Zarafa use (reference §6.3)."""
    s = StatusCode
    if code & s.FAILURE:
        return "Failed"
    if code & s.INBOUND_ACTIVE:
        return "Receiving"
    if code & s.OUTBOUND_ACTIVE:
        return "Sending"
    if code & s.INBOUND_FLUSH:
        return "Downloading"
    if code & s.OUTBOUND_FLUSH:
        return "Uploading"
    if code & s.AVAILABLE and code & (s.INBOUND_ENABLED | s.OUTBOUND_ENABLED):
        return "On-line"
    if code & s.AVAILABLE:
        return "Available"
    return "Off-line"


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One row (PR_DISPLAY_NAME, PR_STATUS_CODE, PR_STATUS_STRING, PR_REMOTE_PROGRESS...).

    ``counters`` holds the running counts (sent, failed, deferred, received, slow
    slices, ...); ``detail`` the last error or watchdog finding, in plain words.
    """

    name: str
    resource_type: ResourceType
    provider_display: str
    status_code: StatusCode = StatusCode.NONE
    status_string: str | None = None
    progress: Progress | None = None
    identity: str | None = None
    resource_methods: ResourceMethods = (
        ResourceMethods.VALIDATE_STATE | ResourceMethods.FLUSH_QUEUES
    )
    counters: Mapping[str, int] = field(default_factory=dict)
    detail: str | None = None
    updated_at: float = 0.0
    version: int = 0

    @property
    def display_string(self) -> str:
        return self.status_string or default_status_string(self.status_code)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (stable keys; documented in docs/operations.md)."""
        p = self.progress
        return {
            "name": self.name,
            "resource_type": self.resource_type.name.lower(),
            "provider": self.provider_display,
            "status_code": int(self.status_code),
            "status_bits": [b.name for b in StatusCode if b and b in self.status_code],
            "status": self.display_string,
            "progress": None
            if p is None
            else {
                "done": p.done,
                "total": p.total,
                "bytes_done": p.bytes_done,
                "bytes_total": p.bytes_total,
                "percent": p.percent,
                "text": p.text,
            },
            "identity": self.identity,
            "counters": dict(self.counters),
            "detail": self.detail,
            "updated_at": self.updated_at,
        }


#: ``dataclasses.replace(old, **changes)`` at a fraction of its cost (rows change
#: several times a message while mail flows); an unknown column is a TypeError.
_replaced: Final = quick_replace(StatusRow)
_NO_COLUMN: Final = object()


@quick_init
@dataclass(frozen=True, slots=True)
class StatusChange:
    """A row was added (``old`` None), changed, or removed (``new`` None)."""

    name: str
    old: StatusRow | None
    new: StatusRow | None

    @property
    def bits_set(self) -> StatusCode:
        o = self.old.status_code if self.old else StatusCode.NONE
        n = self.new.status_code if self.new else StatusCode.NONE
        return n & ~o

    @property
    def bits_cleared(self) -> StatusCode:
        o = self.old.status_code if self.old else StatusCode.NONE
        n = self.new.status_code if self.new else StatusCode.NONE
        return o & ~n


class SubscriberDropped(Exception):
    """The subscriber fell too far behind and was dropped from the status table."""


_END = object()


class Subscriber:
    """An async iterator of :class:`StatusChange`; use it with ``async with``/``aclose``."""

    def __init__(self, table: StatusTable, maxsize: int, name: str) -> None:
        self._table = table
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.name = name
        self.dropped = False
        self.received = 0

    def __repr__(self) -> str:
        return f"<Subscriber {self.name} queued={self._queue.qsize()} dropped={self.dropped}>"

    def _offer(self, change: StatusChange) -> bool:
        try:
            self._queue.put_nowait(change)
            return True
        except asyncio.QueueFull:
            return False

    def _end(self, dropped: bool) -> None:
        self.dropped = dropped
        if dropped:
            # The changes queued for a reader that fell behind are of no use to it any
            # more: let them go, so that it sees the drop at once and holds nothing.
            while not self._queue.empty():
                self._queue.get_nowait()
        # Make room for the end marker.
        while True:
            try:
                self._queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[StatusChange]:
        return self

    async def __anext__(self) -> StatusChange:
        item = await self._queue.get()
        if item is _END:
            if self.dropped:
                raise SubscriberDropped(f"subscriber {self.name} fell behind and was dropped")
            raise StopAsyncIteration
        self.received += 1
        assert isinstance(item, StatusChange)
        return item

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._table._unsubscribe(self)
        if not self.dropped:
            self._end(False)


class StatusTable:
    """The live status table (IMAPISession::GetStatusTable plus its notifications)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._rows: dict[str, StatusRow] = {}
        self._subscribers: list[Subscriber] = []
        self._callbacks: list[Callable[[StatusChange], None]] = []
        self._clock = clock
        self.changes_published = 0
        self.subscribers_dropped = 0

    def __repr__(self) -> str:
        return f"<StatusTable rows={list(self._rows)} subscribers={len(self._subscribers)}>"

    def statistics(self) -> dict[str, int]:
        return {
            "rows": len(self._rows),
            "subscribers": len(self._subscribers),
            "changes_published": self.changes_published,
            "subscribers_dropped": self.subscribers_dropped,
        }

    # -- reading ------------------------------------------------------------------
    def __iter__(self) -> Iterator[StatusRow]:
        return iter(list(self._rows.values()))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def get(self, name: str) -> StatusRow | None:
        return self._rows.get(name)

    def __getitem__(self, name: str) -> StatusRow:
        return self._rows[name]

    def rows(self) -> list[StatusRow]:
        return list(self._rows.values())

    # -- writing ------------------------------------------------------------------
    def put(self, row: StatusRow) -> StatusRow:
        """Create or replace a row (ModifyStatusRow with flags 0)."""
        old = self._rows.get(row.name)
        new = replace(row, updated_at=self._clock(), version=(old.version + 1) if old else 1)
        self._rows[row.name] = new
        self._publish(StatusChange(row.name, old, new))
        return new

    def update(self, name: str, **changes: Any) -> StatusRow:
        """Merge columns into an existing row (STATUSROW_UPDATE)."""
        old = self._rows[name]
        for k, v in changes.items():
            if getattr(old, k, _NO_COLUMN) != v:  # an unknown column is refused below
                break
        else:
            return old  # nothing changes: no new row, no event
        changes["updated_at"] = self._clock()
        changes["version"] = old.version + 1
        new = _replaced(old, changes)
        self._rows[name] = new
        if self._subscribers or self._callbacks:
            self._publish(StatusChange(name, old, new))
        else:  # nobody to tell (a node reads changes_published): no change made
            self.changes_published += 1
        return new

    def bump(self, name: str, counter: str, by: int = 1) -> StatusRow:
        row = self._rows[name]
        counters = dict(row.counters)
        counters[counter] = counters.get(counter, 0) + by
        return self.update(name, counters=counters)

    def remove(self, name: str) -> None:
        old = self._rows.pop(name, None)
        if old is not None:
            self._publish(StatusChange(name, old, None))

    # -- observing ------------------------------------------------------------------
    def subscribe(self, *, maxsize: int = 1000, name: str = "subscriber") -> Subscriber:
        """An async iterator of changes from now on.  It first receives the current
        rows as 'added' changes, so a watcher needs no separate initial read."""
        sub = Subscriber(self, maxsize, name)
        for row in self._rows.values():
            sub._offer(StatusChange(row.name, None, row))
        self._subscribers.append(sub)
        return sub

    def add_observer(self, callback: Callable[[StatusChange], None]) -> Callable[[], None]:
        """A synchronous callback for every change; returns a function that removes it.
        A callback that raises is removed and logged."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def _unsubscribe(self, sub: Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def _publish(self, change: StatusChange) -> None:
        self.changes_published += 1
        if self._subscribers:
            self._offer(change)
        if self._callbacks:
            self._call_back(change)

    def _offer(self, change: StatusChange) -> None:
        for sub in list(self._subscribers):
            if not sub._offer(change):
                self._subscribers.remove(sub)
                self.subscribers_dropped += 1
                sub._end(True)
                log.warning(
                    "status subscriber %s fell %d changes behind and was dropped",
                    sub.name,
                    sub._queue.maxsize,
                )

    def _call_back(self, change: StatusChange) -> None:
        for cb in list(self._callbacks):
            try:
                cb(change)
            except Exception:
                self._callbacks.remove(cb)
                self.subscribers_dropped += 1
                log.exception("status observer %r raised and was removed", cb)
