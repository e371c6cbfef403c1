"""Which messages a queue or inbox command means, read from a store: the filtered,
newest-first listing with short ids, ids given as git takes them (a unique prefix),
bulk selections (``ALL``, ``--state``, ``--transport``) and purges.

The same functions serve the daemon's local API (:mod:`spoolbox.daemon.api_ops`) and
the client's offline path (:mod:`spoolbox.api.client`), so both answer alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import TERMINAL, MessageState, MessageSummary
from ..store.base import Store, StoreError, UnknownMessage
from ..store.retention import FINISHED_STATES, Retention, purgeable
from .wire import BAD_REQUEST, ApiError, limit_of, message_to_dict, optional, summary_of

__all__ = [
    "ALL",
    "UNFINISHED",
    "AmbiguousId",
    "Filter",
    "filter_of",
    "listing",
    "purge",
    "resolve",
    "resolve_inbox",
    "select",
    "short_ids",
    "states_of",
    "unfinished",
]

#: The word that selects every message (as Postfix's ``postsuper -d ALL``).
ALL = "ALL"
#: What the default ``queue list`` shows: mail still to be delivered.
UNFINISHED: frozenset[MessageState] = frozenset(
    {MessageState.QUEUED, MessageState.ACTIVE, MessageState.DEFERRED, MessageState.HOLD}
)
#: Short ids are at least this long (then as long as needed to be unique).
SHORT_ID = 8
_PAGE = 500


class AmbiguousId(StoreError):
    """An id prefix that matches several messages."""


@dataclass(frozen=True, slots=True)
class Filter:
    """Messages in one of ``states`` (None: any) with a recipient routed to
    ``transport`` and one whose address contains ``recipient`` (case-insensitive)."""

    states: frozenset[MessageState] | None = UNFINISHED
    transport: str | None = None
    recipient: str | None = None

    def __call__(self, summary: MessageSummary) -> bool:
        if self.states is not None and summary.state not in self.states:
            return False
        if self.transport is not None and not any(
            r.route == self.transport for r in summary.recipients
        ):
            return False
        if self.recipient is not None:
            needle = self.recipient.lower()
            return any(needle in str(r.address).lower() for r in summary.recipients)
        return True


def states_of(args: dict[str, Any], default: frozenset[MessageState] | None) -> Any:
    """The ``states`` argument (a list of queue names; ``state``, one name, is the
    older form) as a frozenset, or ``default`` when neither is given."""
    names = optional(args, "states", list)
    one = optional(args, "state", str)
    if names is None and one is None:
        return default
    out = set()
    for name in [*(names or []), *([one] if one else [])]:
        try:
            out.add(MessageState(name))
        except ValueError:
            known = ", ".join(s.value for s in MessageState)
            raise ApiError(BAD_REQUEST, f"unknown queue {name!r}; known: {known}") from None
    return frozenset(out)


def filter_of(args: dict[str, Any]) -> Filter:
    """A listing's filter from its arguments: ``states`` (default: unfinished mail;
    ``all``: true for every queue), ``transport``, ``recipient``."""
    every = optional(args, "all", bool)
    return Filter(
        states=states_of(args, None if every else UNFINISHED),
        transport=optional(args, "transport", str),
        recipient=optional(args, "recipient", str),
    )


async def _scan(
    store: Store, now: float, after: str | None = None
) -> AsyncIterator[MessageSummary]:
    """Every message in id order (oldest first), page by page."""
    while page := await store.list_messages(limit=_PAGE, after=after, now=now):
        for summary in page:
            yield summary
        after = page[-1].info.id


def short_ids(ids: Iterable[str]) -> dict[str, str]:
    """Each id's shortest unique prefix among ``ids`` (at least :data:`SHORT_ID` long)."""
    ordered = sorted(set(ids))
    out: dict[str, str] = {}
    for i, mid in enumerate(ordered):
        need = SHORT_ID
        for other in (
            ordered[i - 1] if i else None,
            ordered[i + 1] if i + 1 < len(ordered) else None,
        ):
            if other is not None:
                common = 0
                for a, b in zip(mid, other, strict=False):
                    if a != b:
                        break
                    common += 1
                need = max(need, common + 1)
        out[mid] = mid[:need]
    return out


async def listing(store: Store, *, filt: Filter, limit: int | None, now: float) -> dict[str, Any]:
    """The ``queue.list`` result: matching messages newest first (at most ``limit``,
    None: all), each with its ``short_id``; ``total`` matching, ``more`` not shown."""
    ids: list[str] = []
    matched: list[MessageSummary] = []
    async for summary in _scan(store, now):
        ids.append(summary.info.id)
        if filt(summary):
            matched.append(summary)
    matched.reverse()  # ids are time-ordered: newest first
    shown = matched if limit is None else matched[:limit]
    short = short_ids(ids)
    return {
        "messages": [{**message_to_dict(s), "short_id": short[s.info.id]} for s in shown],
        "total": len(matched),
        "more": len(matched) - len(shown),
    }


def _prefix_after(prefix: str) -> str:
    """A key just before every id that starts with ``prefix`` (for an ``after`` cursor;
    ``prefix`` is not empty and its characters are id characters, all above NUL)."""
    return prefix[:-1] + chr(ord(prefix[-1]) - 1) + "\U0010ffff"


def _checked(prefix: str, what: str) -> str:
    """``prefix`` if it could begin an id; AmbiguousId when empty, UnknownMessage when
    it has a character no id has."""
    if not prefix:
        raise AmbiguousId(f"an empty id matches every {what}: give an id or a prefix of one")
    if not all(c.isalnum() or c in "-_." for c in prefix):
        raise UnknownMessage(f"no {what} with id {prefix!r}")
    return prefix


def _one(prefix: str, found: Sequence[str], what: str) -> str:
    if prefix in found:
        return prefix
    if not found:
        raise UnknownMessage(f"no {what} with id {prefix!r}")
    if len(found) > 1:
        raise AmbiguousId(
            f"ambiguous id prefix {prefix} matches {len(found)} {what}s; give more of it"
        )
    return found[0]


async def show(store: Store, prefix: str, *, now: float, retention: Retention) -> dict[str, Any]:
    """``queue.show``: the message ``prefix`` names, as a dict.  An id not in the store
    while finished messages are kept for no time is UnknownMessage saying that it
    may have finished and been deleted at once (:meth:`Retention.not_kept`)."""
    try:
        message_id = await resolve(store, prefix, now=now)
    except UnknownMessage as exc:
        raise retention.missing(exc) from None
    return message_to_dict(await summary_of(store, message_id, now))


async def resolve(store: Store, prefix: str, *, now: float) -> str:
    """The one message id that starts with ``prefix`` (an exact id wins);
    UnknownMessage or AmbiguousId otherwise."""
    found: list[str] = []
    prefix = _checked(prefix, "message")
    async for summary in _scan(store, now, _prefix_after(prefix)):
        if not summary.info.id.startswith(prefix):
            break
        found.append(summary.info.id)
    return _one(prefix, found, "message")


async def resolve_inbox(store: Store, prefix: str) -> str:
    """The one inbox entry id that starts with ``prefix``, as :func:`resolve`."""
    found: list[str] = []
    prefix = _checked(prefix, "inbox message")
    after = _prefix_after(prefix)
    while page := await store.list_inbox(limit=_PAGE, after=after):
        ids = [e.id for e in page if e.id.startswith(prefix)]
        found.extend(ids)
        if len(ids) < len(page):
            break
        after = page[-1].id
    return _one(prefix, found, "inbox message")


async def select(store: Store, *, ids: Sequence[str], filt: Filter | None, now: float) -> list[str]:
    """The ids a bulk action means: ``ids`` (prefixes, or ``ALL``: every message the
    filter keeps, every one without a filter), or with no ids, every message ``filt``
    keeps (oldest first)."""
    if ids and ALL not in ids:
        out = [await resolve(store, prefix, now=now) for prefix in ids]
        return list(dict.fromkeys(out))
    if ALL not in ids and filt is None:
        raise StoreError("name the messages: ids, ALL, --state or --transport")
    keep = filt or Filter(states=None)
    return [s.info.id async for s in _scan(store, now) if keep(s)]


async def purge(
    store: Store,
    *,
    states: Sequence[MessageState],
    older_than: float | None,
    retention: Retention,
    dry_run: bool,
    now: float,
    batch: int = 500,
) -> dict[str, Any]:
    """``queue.purge``: finished messages of ``states`` (default: all finished queues)
    finished more than ``older_than`` seconds ago (default: each queue's retention;
    a queue kept for ever is then left alone).  ``dry_run`` counts without deleting."""
    chosen = set(states) or set(FINISHED_STATES)
    unfinished = sorted(str(s) for s in chosen - FINISHED_STATES)
    if unfinished:
        raise StoreError(
            "only finished mail can be purged (sent, failed, cancelled), "
            f"not {', '.join(unfinished)}"
        )
    if older_than is None:
        cutoffs = dict(retention.cutoffs(now, chosen))
    else:
        cutoffs = dict.fromkeys(chosen, now - older_than)
    ids: list[str] = []
    if dry_run:
        ids = [
            s.info.id async for s in _scan(store, now) if purgeable(s.state, s.recipients, cutoffs)
        ]
    elif cutoffs:
        while gone := await store.purge(finished_before=cutoffs, limit=batch):
            ids.extend(gone)
            if len(gone) < batch:
                break
    return {"removed": len(ids), "ids": ids, "dry_run": dry_run}


# -- the local API's queue and inbox operations on a store (daemon and offline alike) --


async def queue_list(store: Store, args: dict[str, Any], *, now: float) -> dict[str, Any]:
    """``queue.list``: ``states``/``state``, ``transport``, ``recipient``, ``limit``
    (default 100), ``all`` (every queue, no limit)."""
    every = bool(optional(args, "all", bool))
    limit = None if every and optional(args, "limit", int) is None else limit_of(args)
    return await listing(store, filt=filter_of(args), limit=limit, now=now)


async def queue_select(store: Store, args: dict[str, Any], *, now: float) -> dict[str, Any]:
    """``queue.select``: the full ids of ``ids`` (prefixes, or ``"ALL"``) or of the
    messages in ``states`` / routed to ``transport``."""
    ids = [str(i) for i in optional(args, "ids", list) or []]
    states = states_of(args, None)
    transport = optional(args, "transport", str)
    filt = None
    if states is not None or transport is not None or ALL in ids:
        # Without --state, the queue as ``queue list`` shows it: the unfinished.
        filt = Filter(states=UNFINISHED if states is None else states, transport=transport)
    return {"ids": await select(store, ids=ids, filt=filt, now=now)}


async def unfinished(store: Store, message_id: str) -> int:
    """How many of a message's recipients are not finished (what a cancel cancels)."""
    return sum(r.state not in TERMINAL for r in await store.recipients(message_id))


async def queue_purge(
    store: Store, args: dict[str, Any], *, now: float, retention: Retention
) -> dict[str, Any]:
    """``queue.purge``: ``states`` (finished queues), ``older_than`` (seconds),
    ``dry_run``."""
    older = optional(args, "older_than", float)
    if older is not None and older < 0:
        raise ApiError(BAD_REQUEST, f"argument 'older_than' must be >= 0, not {older}")
    return await purge(
        store,
        states=sorted(states_of(args, frozenset()), key=str),
        older_than=None if older is None else float(older),
        retention=retention,
        dry_run=bool(optional(args, "dry_run", bool)),
        now=now,
    )


async def inbox_delete(store: Store, args: dict[str, Any]) -> dict[str, Any]:
    """``inbox.delete``: the entries ``ids`` (prefixes) name, all resolved first."""
    prefixes = [str(i) for i in optional(args, "ids", list) or []]
    if not prefixes:
        raise ApiError(BAD_REQUEST, "argument 'ids' is required (a list of inbox ids)")
    ids = list(dict.fromkeys([await resolve_inbox(store, p) for p in prefixes]))
    for entry_id in ids:
        await store.delete_inbox(entry_id)
    return {"deleted": ids}
