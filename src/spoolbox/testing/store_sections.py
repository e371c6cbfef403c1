"""Store conformance checks of ``purge_sections``: a caller's per-message profile
sections (``<prefix><message id>``, such as the spooler's stored hook verdicts) are
deleted once their message is gone, and nothing else is.

Part of :data:`spoolbox.testing.store_conformance.STORE_CHECKS` (that module imports
this one; the helpers are :mod:`.store_kit`'s).
"""

from __future__ import annotations

from ..model import MessageState, RecipientState
from ..store.base import RecipientUpdate, Store, StoreError
from .store_kit import _T0, _check, _claim_one, _equal, _raises, _submit

_P = "test.verdicts:"


async def _sections(store: Store, *names: str) -> dict[str, dict[str, object]]:
    return {name: await store.profile_get(name) for name in names}


@_check
async def _orphan_sections_lists_those_of_messages_gone(store: Store) -> None:
    # m1 purged, m2 dropped by its last settle, m3 never stored, "kept" still queued.
    await _submit(store, "X:a", id="m1")
    job = await _claim_one(store, now=_T0)
    await store.settle(
        "m1",
        [RecipientUpdate(0, RecipientState.DELIVERED)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    await _submit(store, "X:a", id="m2")
    job = await _claim_one(store, now=_T0 + 2)
    await store.settle(
        "m2",
        [RecipientUpdate(0, RecipientState.FAILED)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 3,
        drop_finished={MessageState.FAILED},
    )
    await _submit(store, "X:a", id="kept")
    for mid in ("m1", "m2", "m3", "kept"):
        await store.profile_update(_P + mid, {"x": {"verdict": mid}, "y": 1})
    await store.profile_update("other.section:m1", {"x": 1})  # another prefix: kept
    await store.profile_update("test.verdicts", {"x": 1})  # the prefix without ":"
    _equal(
        sorted(await store.orphan_sections(_P, limit=10)),
        ["m2", "m3"],
        "orphan_sections() before the purge (m1 is still stored)",
    )
    _equal(
        await store.purge(finished_before={MessageState.SENT: _T0 + 10}, limit=10),
        ["m1"],
        "purge of the delivered m1",
    )
    orphans = sorted(await store.orphan_sections(_P, limit=10))
    _equal(orphans, ["m1", "m2", "m3"], "orphan_sections() after the purge")
    _equal(
        await _sections(store, _P + "m1", _P + "kept"),
        {
            _P + "m1": {"x": {"verdict": "m1"}, "y": 1},
            _P + "kept": {"x": {"verdict": "kept"}, "y": 1},
        },
        "sections after orphan_sections() (it deletes nothing)",
    )
    _equal(
        await store.purge_sections(_P, ["kept", *orphans, "m9"]),
        ["m1", "m2", "m3"],
        "purge_sections() of a stored message, three gone and one without a section",
    )
    after = await _sections(store, *(_P + m for m in ("m1", "m2", "m3", "kept")))
    _equal(
        after,
        {
            _P + "m1": {},
            _P + "m2": {},
            _P + "m3": {},
            _P + "kept": {"x": {"verdict": "kept"}, "y": 1},
        },
        "the sections after purge_sections() (only the one of a stored message kept)",
    )
    _equal(
        await _sections(store, "other.section:m1", "test.verdicts"),
        {"other.section:m1": {"x": 1}, "test.verdicts": {"x": 1}},
        "sections not named with the prefix after purge_sections()",
    )
    _equal(await store.orphan_sections(_P, limit=10), [], "orphan_sections() at the end")


@_check
async def _purge_sections_keeps_a_section_whose_message_came_since(store: Store) -> None:
    # A section written just before its message is submitted looks orphaned meanwhile.
    await store.profile_update(_P + "late", {"x": 1})
    _equal(await store.orphan_sections(_P, limit=10), ["late"], "orphan_sections() before")
    await _submit(store, "X:a", id="late")
    _equal(
        await store.purge_sections(_P, ["late"]),
        [],
        "purge_sections() of a section whose message was stored since",
    )
    _equal(await store.profile_get(_P + "late"), {"x": 1}, "the section of the message")


@_check
async def _orphan_sections_takes_at_most_limit(store: Store) -> None:
    for i in range(5):
        await store.profile_update(f"{_P}gone{i}", {"a": i, "b": i})
    sizes = []
    while found := await store.orphan_sections(_P, limit=2):
        sizes.append(len(found))
        _equal(await store.purge_sections(_P, found), found, "purge_sections() of orphans")
        if len(sizes) > 5:
            raise AssertionError("orphan_sections(limit=2) keeps returning ids")
    _equal(sizes, [2, 2, 1], "message ids per orphan_sections(limit=2) until none are left")
    await _raises(StoreError, store.orphan_sections(_P, limit=0), "orphan_sections(limit=0)")
    await store.profile_update("keep", {"a": 1})
    await _raises(StoreError, store.orphan_sections("", limit=10), "orphan_sections('')")
    await _raises(StoreError, store.purge_sections("", ["keep"]), "purge_sections('', ...)")
    await _raises(StoreError, store.purge_sections("test", ["x"]), "purge_sections('test', ...)")
    _equal(await store.profile_get("keep"), {"a": 1}, "a section after refused calls")
