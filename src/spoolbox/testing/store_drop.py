"""Store conformance checks of ``settle(drop_finished=...)``: a message whose queue is
kept for no time (``[store] keep_sent = 0``, ``keep_failed = 0``) is deleted by the
settle that finishes it, whole, in the same transaction, after its reports.

Part of :data:`spoolbox.testing.store_conformance.STORE_CHECKS` (that module imports
this one, so every backend's conformance run includes these checks; the helpers are
:mod:`.store_kit`'s).
"""

from __future__ import annotations

from collections.abc import Collection

from ..model import MessageInfo, MessageState, RecipientState
from ..store.base import (
    ClaimedJob,
    RecipientUpdate,
    Store,
    StoreError,
    UnknownMessage,
)
from .store_kit import (
    _T0,
    _check,
    _claim_one,
    _content,
    _equal,
    _expect,
    _fail_with_reports,
    _gone,
    _new,
    _raises,
    _snapshot,
    _states,
    _submit,
)

_R = RecipientState
_SENT = frozenset({MessageState.SENT})
_FAILED = frozenset({MessageState.FAILED, MessageState.CANCELLED})
_ALL = _SENT | _FAILED


async def _settle_all(
    store: Store,
    job: ClaimedJob,
    state: RecipientState,
    *,
    now: float,
    drop_finished: Collection[MessageState],
) -> MessageInfo:
    return await store.settle(
        job.message.id,
        [RecipientUpdate(r.index, state) for r in job.recipients],
        owner=job.owner,
        claim=job.claim,
        now=now,
        drop_finished=drop_finished,
    )


async def _kept(store: Store, mid: str, what: str) -> list[RecipientState]:
    """The states of ``mid``'s recipients; AssertionError if it was deleted."""
    try:
        return await _states(store, mid)
    except UnknownMessage:
        raise AssertionError(f"{what}: {mid} was deleted, but it is not finished") from None


async def _expect_gone(store: Store, mid: str, what: str) -> None:
    _expect(await _gone(store, mid), f"{what}: get_message still finds {mid}")
    await _raises(UnknownMessage, store.recipients(mid), f"{what}: recipients({mid!r})")
    await _raises(UnknownMessage, store.read_content(mid), f"{what}: read_content({mid!r})")
    listed = [s.info.id for s in await store.list_messages(now=_T0 + 100)]
    _expect(mid not in listed, f"{what}: list_messages still lists {mid}")


@_check
async def _settle_drops_a_message_kept_for_no_time(store: Store) -> None:
    await _submit(store, "Y:a", id="other")  # a bystander (on y): never touched
    await _submit(store, "X:a", id="m1", subject="dropped")
    job = await _claim_one(store, now=_T0 + 1)
    info = await store.settle(
        "m1",
        [RecipientUpdate(0, _R.DELIVERED, "2.0.0")],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 2,
        drop_finished=_SENT,
    )
    _equal((info.id, info.subject), ("m1", "dropped"), "settle's result when it drops the message")
    await _expect_gone(store, "m1", "a delivered message with drop_finished={SENT}")
    counts = await store.counts()
    _equal(
        (counts[_R.DELIVERED], counts[_R.ACTIVE], counts[_R.QUEUED]),
        (0, 0, 1),
        "counts after the settle dropped the message (only the bystander is left)",
    )
    _equal(await _states(store, "other"), [_R.QUEUED], "the bystander's recipients")
    _equal(await store.read_content("other"), _content("test"), "the bystander's content")
    again = await store.submit(_new("X:a", id="m1"), now=_T0 + 3, lifetime=60.0)
    _equal(again.submitted_at, _T0 + 3, "a dropped id submitted again is a new message")


@_check
async def _settle_drops_only_when_the_last_recipient_finishes(store: Store) -> None:
    await _submit(store, "X:a", "X:b", "Y:c", id="m1")
    job = await _claim_one(store, now=_T0)
    await store.settle(
        "m1",
        [RecipientUpdate(0, _R.DELIVERED), RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 10)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
        drop_finished=_ALL,
    )
    what = "a message with recipients left after a settle with drop_finished"
    _equal(await _kept(store, "m1", what), [_R.DELIVERED, _R.QUEUED, _R.QUEUED], what)
    job = await _claim_one(store, now=_T0 + 20)
    await _settle_all(store, job, _R.FAILED, now=_T0 + 21, drop_finished=_ALL)
    what = "a message with one recipient left on y"
    _equal(await _kept(store, "m1", what), [_R.DELIVERED, _R.FAILED, _R.QUEUED], what)
    job = await _claim_one(store, "y", now=_T0 + 22)
    await _settle_all(store, job, _R.DELIVERED, now=_T0 + 23, drop_finished=_SENT)
    await _expect_gone(store, "m1", "the settle of the last recipient")
    _equal(sum((await store.counts()).values()), 0, "counts after the message was dropped")


@_check
async def _settle_drops_only_the_named_queues(store: Store) -> None:
    cases = [
        ("sent", _R.DELIVERED, _FAILED, False),
        ("failed", _R.FAILED, _SENT, False),
        ("failed2", _R.FAILED, _FAILED, True),
        ("cancelled", _R.CANCELLED, _FAILED, True),
        ("kept", _R.DELIVERED, frozenset(), False),
        ("queued", _R.QUEUED, _ALL, False),
    ]
    for i, (mid, state, drop, gone) in enumerate(cases):
        await _submit(store, "X:a", id=mid, now=_T0 + i)
        job = await _claim_one(store, now=_T0 + i)
        _equal(job.message.id, mid, "the claimed message")
        await _settle_all(store, job, state, now=_T0 + i, drop_finished=drop)
        names = sorted(str(s) for s in drop)
        _equal(await _gone(store, mid), gone, f"{mid} gone after a {state} settle dropping {names}")


@_check
async def _settle_drops_after_enqueuing_its_reports(store: Store) -> None:
    report, inbound = await _fail_with_reports(store, drop_finished=_FAILED)
    await _expect_gone(store, "m1", "a failed message with its report, drop_finished={FAILED}")
    _equal(await _states(store, "r1"), [_R.QUEUED], "the report the dropping settle enqueued")
    _equal(await store.read_content("r1"), report.content, "the report's content")
    inbox = await store.list_inbox()
    _equal([e.subject for e in inbox], ["Delivery report"], "the inbox report")
    _equal(await store.read_inbox(inbox[0].id), inbound.content, "the inbox report's content")


@_check
async def _a_refused_settle_drops_nothing(store: Store) -> None:
    await _submit(store, "X:a", id="m1")
    job = await _claim_one(store, now=_T0)
    await _submit(store, "X:e", id="taken")
    before = await _snapshot(store, "m1", "taken")
    clash = _new("SMTP:alice@example.org", id="taken", subject="a different message")
    await _raises(
        StoreError,
        store.settle(
            "m1",
            [RecipientUpdate(0, _R.DELIVERED)],
            owner=job.owner,
            claim=job.claim,
            now=_T0 + 1,
            reports=[clash],
            drop_finished=_ALL,
        ),
        "a dropping settle with a report whose id is used",
    )
    _equal(await _snapshot(store, "m1", "taken"), before, "the store after the refused settle")
    _equal(await store.read_content("m1"), _content("test"), "m1's content after it")
    await _settle_all(store, job, _R.DELIVERED, now=_T0 + 2, drop_finished=_ALL)
    await _raises(
        UnknownMessage,
        _settle_all(store, job, _R.DELIVERED, now=_T0 + 3, drop_finished=_ALL),
        "a settle of a message its last settle dropped",
    )
