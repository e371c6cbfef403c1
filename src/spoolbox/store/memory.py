"""The in-memory store: a real fake of :class:`~spoolbox.store.base.Store`.

It keeps every rule of the protocol (transition table, leases, idempotent submit,
atomic settle with reports, atomic inbound commit with provider state) and passes
the same conformance suite as the SQLite store; it just forgets everything when the
process ends.  Claims use one heap per (transport, priority) keyed by ready time,
with lazy invalidation, so picking the next job does not scan the queue.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import replace

from ..model import (
    TERMINAL,
    MessageInfo,
    MessageState,
    MessageSummary,
    NewMessage,
    Priority,
    RecipientRecord,
    RecipientState,
    check_transition,
    destination,
)
from . import retention, rules
from .base import (
    ClaimedJob,
    InboundMessage,
    InboxEntry,
    JSONValue,
    RecipientCheck,
    RecipientUpdate,
    StoreError,
    UnknownMessage,
    new_inbox_entry,
    submission_plan,
)
from .memory_cluster import MemoryCluster

__all__ = ["MemoryStore"]

_R = RecipientState
_Key = tuple[str, int]


class MemoryStore(MemoryCluster):
    """All queues in dictionaries. Safe for one event loop (not thread-safe)."""

    def __init__(self) -> None:
        self._messages: dict[str, MessageInfo] = {}
        self._submitted: dict[str, NewMessage] = {}
        self._content: dict[str, bytes] = {}
        self._rcpts: dict[str, list[RecipientRecord]] = {}
        #: (owner, lease end, claim token) of each ACTIVE recipient.
        self._leases: dict[_Key, tuple[str, float, int]] = {}
        #: The last claim token given out: every claim takes the next one.
        self._last_claim = 0
        #: Each recipient's last claim token, kept when its claim ends (restoring).
        self._claimed: dict[_Key, int] = {}
        self._version: dict[_Key, int] = {}
        self._heaps: dict[tuple[str, int], list[tuple[float, int, str, int, int]]] = {}
        self._seq = itertools.count()
        self._counts: Counter[RecipientState] = Counter()
        self._unrouted: set[_Key] = set()  # QUEUED with no route: the router's work
        self._inbox: dict[str, tuple[InboxEntry, bytes]] = {}
        self._profiles: dict[str, dict[str, JSONValue]] = {}
        self._open = False

    def __repr__(self) -> str:
        return f"<MemoryStore messages={len(self._messages)} inbox={len(self._inbox)}>"

    def statistics(self) -> dict[str, object]:
        return {
            "messages": len(self._messages),
            "inbox": len(self._inbox),
            "recipients": dict(self._counts),
            "leases": len(self._leases),
        }

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    # -- internals -----------------------------------------------------------------
    def _msg(self, message_id: str) -> MessageInfo:
        try:
            return self._messages[message_id]
        except KeyError:
            raise UnknownMessage(f"no message with id {message_id!r}") from None

    def _ready_at(self, info: MessageInfo, r: RecipientRecord) -> float:
        return max(float(info.send_at or 0.0), r.retry_at)

    def _index(self, r: RecipientRecord) -> None:
        """(Re)insert a QUEUED, routed recipient into its claim heap."""
        key = (r.message_id, r.index)
        ver = self._version.get(key, 0) + 1
        self._version[key] = ver
        if r.state is _R.QUEUED and r.route is not None:
            info = self._messages[r.message_id]
            heap = self._heaps.setdefault((r.route, int(info.priority)), [])
            heapq.heappush(
                heap, (self._ready_at(info, r), next(self._seq), r.message_id, r.index, ver)
            )

    def _set(self, r: RecipientRecord) -> None:
        self._track_unrouted(r)
        rows = self._rcpts[r.message_id]
        old = rows[r.index]
        if old.state is not r.state:
            self._counts[old.state] -= 1
            self._counts[r.state] += 1
        rows[r.index] = r
        self._index(r)

    def _track_unrouted(self, r: RecipientRecord) -> None:
        key = (r.message_id, r.index)
        if r.state is _R.QUEUED and r.route is None:
            self._unrouted.add(key)
        else:
            self._unrouted.discard(key)

    def _valid(self, entry: tuple[float, int, str, int, int], route: str) -> bool:
        _, _, mid, idx, ver = entry
        if self._version.get((mid, idx)) != ver:
            return False
        r = self._rcpts[mid][idx]
        return r.state is _R.QUEUED and r.route == route

    # -- submission ----------------------------------------------------------------
    async def submit(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
    ) -> MessageInfo:
        existing = self._messages.get(message.id)
        if existing is not None:
            if self._submitted[message.id] != message:
                raise StoreError(
                    f"message id {message.id!r} is already used by a different message"
                )
            return existing
        info = rules.accepted(message, now=now, lifetime=lifetime)
        self._messages[message.id] = info
        self._submitted[message.id] = message
        self._content[message.id] = message.content
        if routes is not None and len(routes) != len(message.recipients):
            raise StoreError(
                f"{len(routes)} routes for {len(message.recipients)} recipients of {message.id}"
            )
        self._rcpts[message.id] = [
            RecipientRecord(message.id, i, a, _R.QUEUED, updated_at=now, original=o)
            for i, (a, o) in enumerate(zip(message.recipients, message.originals(), strict=True))
        ]
        self._counts[_R.QUEUED] += len(message.recipients)
        for i in range(len(message.recipients)):
            route = routes[i] if routes is not None else None
            r = self._rcpts[message.id][i]
            if route is not None:
                self._rcpts[message.id][i] = r = replace(r, route=route)
            self._track_unrouted(r)
            self._index(r)
        return info

    async def submit_many(
        self,
        messages: Sequence[NewMessage],
        *,
        now: float,
        lifetime: float,
        routes: Sequence[Sequence[str | None] | None] | None = None,
    ) -> list[MessageInfo]:
        messages = list(messages)
        plan = submission_plan(messages, routes)
        # Everything is checked before anything is stored: all or nothing.
        seen: dict[str, NewMessage] = {}
        for message in messages:
            prior = seen.get(message.id) or self._submitted.get(message.id)
            if prior is not None and prior != message:
                raise StoreError(
                    f"message id {message.id!r} is already used by a different message"
                )
            seen[message.id] = message
        return [
            await self.submit(message, now=now, lifetime=lifetime, routes=r) for message, r in plan
        ]

    # -- routing -------------------------------------------------------------------
    async def unrouted(
        self, *, limit: int, after: tuple[str, int] | None = None
    ) -> list[RecipientRecord]:
        if limit <= 0:
            return []
        keys = sorted(k for k in self._unrouted if after is None or k > after)[:limit]
        return [self._rcpts[mid][idx] for mid, idx in keys]

    async def assign_routes(self, assignments: Sequence[tuple[str, int, str]]) -> None:
        for mid, idx, transport in assignments:
            r = self._rcpts[mid][idx]
            if r.state is not _R.QUEUED:
                continue
            self._set(replace(r, route=transport))

    async def reroute_missing(
        self, known: Sequence[str], *, limited: Mapping[str, RecipientCheck] | None = None
    ) -> int:
        names = set(known)
        checks = limited or {}
        n = 0
        for rows in self._rcpts.values():
            for r in rows:
                if (
                    r.state in (_R.QUEUED, _R.PARKED)
                    and r.route is not None
                    and (r.route not in names or (r.route in checks and not checks[r.route](r)))
                ):
                    back = _R.HELD if self._messages[r.message_id].held else _R.QUEUED
                    self._set(replace(r, state=back, route=None))
                    n += 1
        return n

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
        skip = frozenset(skip_destinations)

        def skipped(mid: str, idx: int) -> bool:
            return bool(skip) and destination(self._rcpts[mid][idx].address.value) in skip

        picked: list[str] = []
        if ignore_retry:
            candidates = sorted(
                (
                    (-int(self._messages[r.message_id].priority), r.message_id)
                    for rows in self._rcpts.values()
                    for r in rows
                    if r.state is _R.QUEUED
                    and r.route == transport
                    and (self._messages[r.message_id].send_at or 0.0) <= now
                    and not skipped(r.message_id, r.index)
                ),
            )
            for _, mid in candidates:
                if mid not in picked:
                    picked.append(mid)
                if len(picked) >= limit:
                    break
        else:
            for prio in (Priority.HIGH, Priority.NORMAL, Priority.LOW):
                heap = self._heaps.get((transport, int(prio)))
                passed: list[tuple[float, int, str, int, int]] = []  # skipped: kept queued
                while heap and len(picked) < limit:
                    entry = heap[0]
                    if not self._valid(entry, transport):
                        heapq.heappop(heap)
                        continue
                    if entry[0] > now:
                        break
                    heapq.heappop(heap)
                    if skipped(entry[2], entry[3]):
                        passed.append(entry)
                    elif entry[2] not in picked:
                        picked.append(entry[2])
                if heap is not None:
                    for entry in passed:
                        heapq.heappush(heap, entry)
                if len(picked) >= limit:
                    break
        jobs: list[ClaimedJob] = []
        until = now + lease
        for mid in picked:
            token = self._last_claim + 1
            info = self._messages[mid]
            claimed: list[RecipientRecord] = []
            for r in self._rcpts[mid]:
                if (
                    r.state is _R.QUEUED
                    and r.route == transport
                    and (ignore_retry or self._ready_at(info, r) <= now)
                    and (info.send_at or 0.0) <= now
                    and not skipped(mid, r.index)
                ):
                    check_transition(r.state, _R.ACTIVE, what="claim")
                    nr = replace(r, state=_R.ACTIVE, updated_at=now)
                    self._set(nr)
                    self._leases[(mid, r.index)] = (owner, until, token)
                    self._claimed[(mid, r.index)] = token
                    claimed.append(nr)
            if claimed:
                self._last_claim = token
                jobs.append(ClaimedJob(info, tuple(claimed), transport, owner, until, claim=token))
        return jobs

    async def renew(self, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
        until = now + lease
        for r in job.recipients:
            holder, token = self._holder(r.message_id, r.index)
            state = self._rcpts[r.message_id][r.index].state
            rules.lease_kept(
                r.message_id, r.index, state, holder, token, owner=job.owner, claim=job.claim
            )
        for r in job.recipients:
            key = (r.message_id, r.index)
            if key in self._leases:
                self._leases[key] = (job.owner, until, job.claim)
        return replace(job, lease_until=until)

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
        info = self._msg(message_id)
        rows = self._rcpts[message_id]
        # Validate everything first: a settle applies whole or not at all.
        for u in updates:
            if not 0 <= u.index < len(rows):
                raise StoreError(f"{message_id} has no recipient #{u.index}")
            # A settle with an owner is a lease holder's; once its lease expired or
            # moved, the recipient is no longer its to settle, whatever state it is in.
            holder, token = self._holder(message_id, u.index)
            if token is None:  # no claim holds it: its last one's token (restoring)
                token = self._claimed.get((message_id, u.index))
            rules.check_settle(
                message_id,
                u.index,
                rows[u.index].state,
                holder,
                token,
                owner=owner,
                claim=claim,
                target=u.state,
                restoring=restoring,
            )
        self._check_reports(reports, inbox_reports)
        for u in updates:
            nr = rules.settled(rows[u.index], u, now=now, held=info.held)
            self._leases.pop((message_id, u.index), None)
            self._set(nr)
        for rep in reports:
            await self.submit(rep, now=now, lifetime=info.expires_at - info.submitted_at)
        for inbound in inbox_reports:
            await self.deliver_inbound(inbound)
        if retention.dropped((r.state for r in rows), drop_finished):
            self._forget(message_id)  # kept for no time: gone with this settle
        return info

    def _check_reports(
        self, reports: Sequence[NewMessage], inbox_reports: Sequence[InboundMessage]
    ) -> None:
        """Refuse, before anything changes, the reports that submit would refuse."""
        seen: dict[str, NewMessage] = {}
        for rep in reports:
            prior = seen.setdefault(rep.id, self._submitted.get(rep.id, rep))
            if prior != rep:
                raise StoreError(f"message id {rep.id!r} is already used by a different message")
        for inbound in inbox_reports:
            if not inbound.content:
                raise StoreError("an inbound message needs content")

    async def release_expired(self, *, now: float) -> int:
        n = 0
        for key, (_, until, _) in list(self._leases.items()):
            if until < now:
                n += self._unlease(key, now)
        return n

    async def release_owner(self, owner: str) -> int:
        n = 0
        for key, (who, _, _) in list(self._leases.items()):
            if who == owner:
                n += self._unlease(key, None)
        return n

    async def release_lost_claims(
        self,
        owner: str,
        transport: str,
        *,
        leased_until: float,
        keep: Collection[tuple[str, int]],
    ) -> int:
        kept = frozenset(keep)
        n = 0
        for key, (who, until, token) in list(self._leases.items()):
            r = self._rcpts[key[0]][key[1]]
            mine = who == owner and r.route == transport and until <= leased_until
            if mine and (key[0], token) not in kept:
                n += self._unlease(key, None)
        return n

    def _holder(self, message_id: str, index: int) -> tuple[str | None, int | None]:
        """The owner and claim token of a recipient's lease (None, None: none)."""
        held = self._leases.get((message_id, index))
        return (None, None) if held is None else (held[0], held[2])

    def _unlease(self, key: _Key, now: float | None) -> int:
        del self._leases[key]
        r = self._rcpts[key[0]][key[1]]
        if r.state is not _R.ACTIVE:
            return 0
        held = self._messages[key[0]].held
        self._set(replace(r, state=_R.HELD if held else _R.QUEUED, updated_at=now or r.updated_at))
        return 1

    async def retry_transport(self, transport: str, *, now: float) -> int:
        n = 0
        for rows in self._rcpts.values():
            for r in rows:
                if r.state is _R.QUEUED and r.route == transport and r.retry_at > now:
                    self._set(replace(r, retry_at=0.0))
                    n += 1
        return n

    async def count_claimable(self, transport: str, *, now: float, ignore_retry: bool) -> int:
        mids = set()
        for mid, rows in self._rcpts.items():
            info = self._messages[mid]
            for r in rows:
                if (
                    r.state is _R.QUEUED
                    and r.route == transport
                    and (info.send_at or 0.0) <= now
                    and (ignore_retry or r.retry_at <= now)
                ):
                    mids.add(mid)
                    break
        return len(mids)

    async def next_ready_at(self, transport: str) -> float | None:
        best: float | None = None
        for prio in (Priority.HIGH, Priority.NORMAL, Priority.LOW):
            heap = self._heaps.get((transport, int(prio)))
            while heap and not self._valid(heap[0], transport):
                heapq.heappop(heap)
            if heap and (best is None or heap[0][0] < best):
                best = heap[0][0]
        return best

    async def expired(self, *, now: float, limit: int) -> list[RecipientRecord]:
        out: list[RecipientRecord] = []
        for mid, info in self._messages.items():
            if info.expires_at > now:
                continue
            for r in self._rcpts[mid]:
                if r.state in (_R.QUEUED, _R.PARKED, _R.HELD):
                    out.append(r)
                    if len(out) >= limit:
                        return out
        return out

    async def unpark(self, transport: str, message_id: str | None, *, now: float) -> int:
        mids = [message_id] if message_id is not None else list(self._rcpts)
        n = 0
        for mid in mids:
            back = _R.HELD if self._msg(mid).held else _R.QUEUED
            for r in self._rcpts[mid]:
                if r.state is _R.PARKED and r.route == transport:
                    self._set(replace(r, state=back, retry_at=0.0, updated_at=now))
                    n += 1
        return n

    # -- user operations -------------------------------------------------------
    async def hold(self, message_id: str) -> MessageInfo:
        info = replace(self._msg(message_id), held=True)
        self._messages[message_id] = info
        for r in self._rcpts[message_id]:
            if r.state in (_R.QUEUED, _R.PARKED):
                self._set(replace(r, state=_R.HELD))
        return info

    async def release(self, message_id: str, *, now: float) -> MessageInfo:
        info = replace(self._msg(message_id), held=False)
        self._messages[message_id] = info
        for r in self._rcpts[message_id]:
            if r.state is _R.HELD:
                self._set(replace(r, state=_R.QUEUED, retry_at=0.0, updated_at=now))
        return info

    async def cancel(self, message_id: str) -> list[RecipientRecord]:
        self._msg(message_id)
        active: list[RecipientRecord] = []
        for r in self._rcpts[message_id]:
            if r.state is _R.ACTIVE:
                active.append(r)
            elif r.state not in TERMINAL:
                self._set(
                    replace(r, state=_R.CANCELLED, status=None, diagnostic="cancelled by user")
                )
        return active

    async def retry_now(self, message_id: str, *, now: float) -> int:
        self._msg(message_id)
        n = 0
        for r in self._rcpts[message_id]:
            if r.state is _R.QUEUED and r.retry_at > now:
                self._set(replace(r, retry_at=0.0))
                n += 1
        return n

    # -- reading ---------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageInfo:
        return self._msg(message_id)

    async def recipients(self, message_id: str) -> list[RecipientRecord]:
        self._msg(message_id)
        return list(self._rcpts[message_id])

    async def read_content(self, message_id: str) -> bytes:
        self._msg(message_id)
        return self._content[message_id]

    async def iter_content(
        self, message_id: str, *, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        data = await self.read_content(message_id)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    def _state(self, mid: str, now: float) -> MessageState:
        info = self._messages[mid]
        return rules.queue_of(((r.state, self._ready_at(info, r)) for r in self._rcpts[mid]), now)

    async def state_of(self, message_id: str, *, now: float) -> MessageState:
        self._msg(message_id)
        return self._state(message_id, now)

    async def list_messages(
        self,
        *,
        state: MessageState | None = None,
        limit: int = 100,
        after: str | None = None,
        now: float,
    ) -> list[MessageSummary]:
        out: list[MessageSummary] = []
        for mid in sorted(self._messages):
            if after is not None and mid <= after:
                continue
            st = self._state(mid, now)
            if state is not None and st is not state:
                continue
            out.append(MessageSummary(self._messages[mid], st, tuple(self._rcpts[mid])))
            if len(out) >= limit:
                break
        return out

    async def counts(self) -> dict[RecipientState, int]:
        return {s: self._counts.get(s, 0) for s in RecipientState}

    # -- inbox and provider state ----------------------------------------------
    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, JSONValue]] | None = None,
    ) -> InboxEntry:
        [entry] = self._deliver([(message, profile_updates)])
        return entry

    async def deliver_inbound_many(
        self,
        items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, JSONValue]] | None]],
    ) -> list[InboxEntry]:
        return self._deliver(items)

    def _deliver(
        self,
        items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, JSONValue]] | None]],
    ) -> list[InboxEntry]:
        """Both inbound commits: all of ``items`` or, on an error, none of them."""
        staged = copy.deepcopy(self._profiles)
        out: list[tuple[InboxEntry, bytes]] = []
        for message, profile_updates in items:
            entry, content = new_inbox_entry(message)
            for section, values in (profile_updates or {}).items():
                _merge(staged.setdefault(section, {}), values)
            out.append((entry, content))
        self._profiles = staged
        for entry, content in out:
            self._inbox[entry.id] = (entry, content)
        return [entry for entry, _content in out]

    async def list_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxEntry]:
        ids = sorted(i for i in self._inbox if after is None or i > after)[:limit]
        return [self._inbox[i][0] for i in ids]

    async def read_inbox(self, entry_id: str) -> bytes:
        try:
            return self._inbox[entry_id][1]
        except KeyError:
            raise UnknownMessage(f"no inbox message with id {entry_id!r}") from None

    async def delete_inbox(self, entry_id: str) -> None:
        if self._inbox.pop(entry_id, None) is None:
            raise UnknownMessage(f"no inbox message with id {entry_id!r}")

    # -- retention -----------------------------------------------------------------
    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        retention.check_limit(limit)
        retention.check_cutoffs(finished_before)
        gone: list[str] = []
        for mid in list(self._messages):
            if len(gone) >= limit:
                break
            state = self._state(mid, 0.0)  # a finished message's state needs no clock
            if retention.purgeable(state, self._rcpts[mid], finished_before):
                self._forget(mid)
                gone.append(mid)
        return gone

    def _forget(self, mid: str) -> None:
        for r in self._rcpts.pop(mid):
            self._counts[r.state] -= 1
            self._version.pop((r.message_id, r.index), None)
            self._claimed.pop((r.message_id, r.index), None)
        del self._messages[mid], self._submitted[mid], self._content[mid]

    async def purge_inbox(self, *, received_before: float, limit: int) -> list[str]:
        retention.check_limit(limit)
        gone = [i for i, (e, _) in self._inbox.items() if e.received_at < received_before]
        for entry_id in gone[:limit]:
            del self._inbox[entry_id]
        return gone[:limit]

    async def orphan_sections(self, prefix: str, *, limit: int) -> list[str]:
        retention.check_section_prefix(prefix)
        retention.check_limit(limit)
        ids = (s.removeprefix(prefix) for s in self._profiles if s.startswith(prefix))
        return [mid for mid in ids if mid not in self._messages][:limit]

    async def purge_sections(self, prefix: str, ids: Collection[str]) -> list[str]:
        retention.check_section_prefix(prefix)
        return [
            m
            for m in dict.fromkeys(ids)
            if m not in self._messages and self._profiles.pop(prefix + m, None) is not None
        ]

    async def profile_get(self, section: str) -> dict[str, JSONValue]:
        return copy.deepcopy(self._profiles.get(section, {}))

    async def profile_update(self, section: str, values: Mapping[str, JSONValue]) -> None:
        _merge(self._profiles.setdefault(section, {}), values)


def _merge(target: dict[str, JSONValue], values: Mapping[str, JSONValue]) -> None:
    for k, v in values.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = copy.deepcopy(v)
