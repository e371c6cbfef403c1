"""Every store backend passes every conformance check, and the suite catches broken stores."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from spoolbox.model import MessageInfo, MessageState, NewMessage, RecipientState
from spoolbox.store.base import ClaimedJob, InboundMessage, RecipientUpdate, Store
from spoolbox.store.memory import MemoryStore
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.testing import store_conformance, store_drop, store_sections
from spoolbox.testing.store_conformance import STORE_CHECKS, check_store, run_store_check

BACKENDS = ("memory", "sqlite", "postgres")


def _factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    counter = itertools.count()
    if backend == "memory":
        return MemoryStore
    if backend == "postgres":
        from spoolbox.store.postgres import PostgresStore

        make_database = request.getfixturevalue("pg_database")
        return lambda: PostgresStore(make_database(), pool_size=2)
    # NORMAL keeps the suite fast; durability has its own tests in test_sqlite.py.
    return lambda: SQLiteStore(tmp_path / f"store-{next(counter)}.db", synchronous="NORMAL")


@pytest.mark.parametrize("check", list(STORE_CHECKS))
@pytest.mark.parametrize("backend", BACKENDS)
async def test_store_check(
    backend: str, check: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    await run_store_check(check, _factory(backend, request, tmp_path))


def test_the_suite_covers_every_store_method() -> None:
    methods = {
        name for name in dir(Store) if not name.startswith("_") and callable(getattr(Store, name))
    } - {"open", "close"}
    source = "".join(inspect.getsource(m) for m in (store_conformance, store_drop, store_sections))
    missing = sorted(m for m in methods if f".{m}(" not in source)
    assert missing == []
    assert len(STORE_CHECKS) >= 30


async def test_check_store_passes_for_the_memory_store() -> None:
    await check_store(MemoryStore)


async def test_check_store_accepts_an_async_factory(tmp_path: Path) -> None:
    opened: list[MemoryStore] = []

    async def factory() -> MemoryStore:
        store = MemoryStore()
        opened.append(store)
        return store

    await check_store(factory)
    assert len(opened) == len(STORE_CHECKS)  # a fresh store per check


# -- the suite has teeth: broken stores fail the checks that cover what they break ------


class _IgnoresPriority(MemoryStore):
    async def claim(
        self,
        transport: str,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        ignore_retry: bool = False,
    ) -> list[ClaimedJob]:
        # Takes everything, then hands back the lowest priority first.
        jobs = await super().claim(
            transport, owner=owner, now=now, lease=lease, limit=1000, ignore_retry=ignore_retry
        )
        jobs.sort(key=lambda j: int(j.message.priority))
        for extra in jobs[limit:]:
            await self.settle(
                extra.message.id,
                [RecipientUpdate(r.index, RecipientState.QUEUED) for r in extra.recipients],
                owner=owner,
                now=now,
                claim=extra.claim,
            )
        return jobs[:limit]


class _SubmitsTwice(MemoryStore):
    async def submit(self, message: NewMessage, *, now: float, lifetime: float) -> MessageInfo:
        if message.id in self._messages:
            fresh = NewMessage(
                sender=message.sender,
                recipients=message.recipients,
                content=message.content,
                id=message.id + "-again",
            )
            return await super().submit(fresh, now=now, lifetime=lifetime)
        return await super().submit(message, now=now, lifetime=lifetime)


class _SettlesHalfway(MemoryStore):
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
        **kw: Any,
    ) -> MessageInfo:
        # Applies the updates one by one: an illegal one leaves the earlier ones done.
        for u in updates:
            await super().settle(message_id, [u], owner=owner, now=now, claim=claim, **kw)
        return await super().settle(
            message_id,
            [],
            owner=owner,
            now=now,
            claim=claim,
            reports=reports,
            inbox_reports=inbox_reports,
        )


class _FencesByOwnerOnly(MemoryStore):
    """Settles with the recipients' current claim token, whatever token it is given
    (fencing by the owner's name alone, as before issue 16's claim tokens)."""

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
        **kw: Any,
    ) -> MessageInfo:
        held = [self._leases.get((message_id, u.index)) for u in updates]
        current = next((h[2] for h in held if h is not None and h[0] == owner), claim)
        return await super().settle(
            message_id,
            updates,
            owner=owner,
            now=now,
            claim=current,
            reports=reports,
            inbox_reports=inbox_reports,
            **kw,
        )


class _RenewsByOwnerOnly(MemoryStore):
    """Renews a lease with the recipients' current claim token, whatever the job's."""

    async def renew(self, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
        held = [self._leases.get((r.message_id, r.index)) for r in job.recipients]
        current = next((h[2] for h in held if h is not None and h[0] == job.owner), job.claim)
        return await super().renew(replace(job, claim=current), now=now, lease=lease)


class _ForgetfulCounts(MemoryStore):
    async def counts(self) -> dict[RecipientState, int]:
        counts = await super().counts()
        counts[RecipientState.HELD] = 0
        return counts


class _PurgesUnfinished(MemoryStore):
    """Purges by age alone: a message's finished time is taken from any recipient."""

    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        gone = []
        for summary in await self.list_messages(limit=limit, now=0.0):
            if any(r.updated_at < min(finished_before.values()) for r in summary.recipients):
                self._forget(summary.info.id)
                gone.append(summary.info.id)
        return gone


class _PurgesUnbounded(MemoryStore):
    """Ignores the limit of a purge."""

    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        return await super().purge(finished_before=finished_before, limit=1000)


class _NeverDrops(MemoryStore):
    """Ignores settle's drop_finished: every finished message waits for the purge."""

    async def settle(
        self, message_id: str, updates: Sequence[RecipientUpdate], **kw: Any
    ) -> MessageInfo:
        kw.pop("drop_finished", None)
        return await super().settle(message_id, updates, **kw)


class _DropsEarly(MemoryStore):
    """Drops a message once the recipients of the settle are finished, whatever its
    other recipients are doing."""

    async def settle(
        self, message_id: str, updates: Sequence[RecipientUpdate], **kw: Any
    ) -> MessageInfo:
        drop = kw.pop("drop_finished", ())
        info = await super().settle(message_id, updates, **kw)
        if drop and updates and all(u.state in _FINISHED for u in updates):
            self._forget(message_id)
        return info


class _RestoresOverALaterClaim(MemoryStore):
    """Writes a settle again whatever claim the recipient had since (as if every
    QUEUED recipient were claimed by nobody since)."""

    async def settle(
        self, message_id: str, updates: Sequence[RecipientUpdate], **kw: Any
    ) -> MessageInfo:
        if kw.get("restoring"):
            for u in updates:
                self._claimed.pop((message_id, u.index), None)
        return await super().settle(message_id, updates, **kw)


class _ReleasesPastTheBound(MemoryStore):
    """Releases every claim of the owner and transport it does not keep, whatever its
    lease: a claim made after the lost one goes too."""

    async def release_lost_claims(
        self, owner: str, transport: str, *, leased_until: float, keep: Collection[tuple[str, int]]
    ) -> int:
        return await super().release_lost_claims(
            owner, transport, leased_until=float("inf"), keep=keep
        )


class _ReleasesKeptClaims(MemoryStore):
    """Ignores the claims the owner keeps."""

    async def release_lost_claims(
        self, owner: str, transport: str, *, leased_until: float, keep: Collection[tuple[str, int]]
    ) -> int:
        return await super().release_lost_claims(
            owner, transport, leased_until=leased_until, keep=()
        )


class _PurgesSectionsOfStoredMessages(MemoryStore):
    """Deletes the sections it is given, their message stored or not."""

    async def purge_sections(self, prefix: str, ids: Collection[str]) -> list[str]:
        return [m for m in ids if self._profiles.pop(prefix + m, None) is not None]


class _ListsSectionsUnbounded(MemoryStore):
    """Ignores the limit of orphan_sections."""

    async def orphan_sections(self, prefix: str, *, limit: int) -> list[str]:
        return await super().orphan_sections(prefix, limit=1000)


_FINISHED = (RecipientState.DELIVERED, RecipientState.FAILED, RecipientState.CANCELLED)


@pytest.mark.parametrize(
    ("broken", "failing_check"),
    [
        (_IgnoresPriority, "claim_priority_order"),
        (_SubmitsTwice, "submit_is_idempotent"),
        (_SettlesHalfway, "settle_is_all_or_nothing"),
        (_ForgetfulCounts, "counts_are_maintained"),
        (_FencesByOwnerOnly, "settle_checks_the_claim"),
        (_RenewsByOwnerOnly, "renew_checks_the_claim"),
        (_PurgesUnfinished, "purge_never_removes_an_unfinished_message"),
        (_PurgesUnbounded, "purge_takes_at_most_limit"),
        (_NeverDrops, "settle_drops_a_message_kept_for_no_time"),
        (_DropsEarly, "settle_drops_only_when_the_last_recipient_finishes"),
        (_ReleasesPastTheBound, "release_lost_claims"),
        (_ReleasesKeptClaims, "release_lost_claims"),
        (_RestoresOverALaterClaim, "settle_restoring_a_claim_undone"),
        (_PurgesSectionsOfStoredMessages, "orphan_sections_lists_those_of_messages_gone"),
        (
            _PurgesSectionsOfStoredMessages,
            "purge_sections_keeps_a_section_whose_message_came_since",
        ),
        (_ListsSectionsUnbounded, "orphan_sections_takes_at_most_limit"),
    ],
    ids=[
        "ignores-priority",
        "submits-twice",
        "settles-halfway",
        "forgetful-counts",
        "fences-by-owner-only",
        "renews-by-owner-only",
        "purges-unfinished",
        "purges-unbounded",
        "never-drops",
        "drops-early",
        "releases-past-the-bound",
        "releases-kept-claims",
        "restores-over-a-later-claim",
        "purges-sections-of-stored-messages",
        "purges-the-section-of-a-message-come-since",
        "lists-sections-unbounded",
    ],
)
async def test_check_store_names_the_failing_check(
    broken: Callable[[], Store], failing_check: str
) -> None:
    with pytest.raises(AssertionError) as info:
        await check_store(broken)
    assert failing_check in str(info.value)
    with pytest.raises(AssertionError):
        await run_store_check(failing_check, broken)
