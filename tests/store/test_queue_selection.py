"""The queue and inbox selections the CLI and the local API share
(spoolbox.api.selection), on a MemoryStore: short ids, prefixes, filters, purges."""

from __future__ import annotations

import pytest

from spoolbox.api import selection
from spoolbox.model import Address, MessageState, NewMessage, RecipientState
from spoolbox.store import MemoryStore, RecipientUpdate, StoreError, UnknownMessage
from spoolbox.store.retention import Retention

T0 = 1_000_000.0


def _msg(mid: str, *rcpts: str) -> NewMessage:
    return NewMessage(
        sender=None,
        recipients=tuple(Address.parse(r) for r in rcpts or ("X:bob",)),
        content=b"Subject: s\r\n\r\nx",
        id=mid,
    )


def test_short_ids_are_the_shortest_unique_prefixes_of_at_least_8() -> None:
    ids = ["abcdefgh0001", "abcdefgh0002", "abcdefgx9", "zz"]
    assert selection.short_ids(ids) == {
        "abcdefgh0001": "abcdefgh0001",
        "abcdefgh0002": "abcdefgh0002",
        "abcdefgx9": "abcdefgx",
        "zz": "zz",
    }
    assert selection.short_ids(["0123456789abcdef"]) == {"0123456789abcdef": "01234567"}


async def test_resolve_takes_unique_prefixes_exact_ids_and_refuses_the_rest() -> None:
    store = MemoryStore()
    for mid in ("aa1", "aa2", "ab", "abc"):
        await store.submit(_msg(mid), now=T0, lifetime=3600)
    assert await selection.resolve(store, "aa1", now=T0) == "aa1"
    assert await selection.resolve(store, "ab", now=T0) == "ab"  # exact wins over "abc"
    assert await selection.resolve(store, "abc", now=T0) == "abc"
    with pytest.raises(selection.AmbiguousId, match="ambiguous id prefix aa matches 2 messages"):
        await selection.resolve(store, "aa", now=T0)
    with pytest.raises(selection.AmbiguousId, match="ambiguous id prefix a matches 4 messages"):
        await selection.resolve(store, "a", now=T0)
    for bad in ("b", "aa3", "a\x00", "../x"):
        with pytest.raises(UnknownMessage):
            await selection.resolve(store, bad, now=T0)
    with pytest.raises(selection.AmbiguousId, match="empty id"):
        await selection.resolve(store, "", now=T0)


async def test_listing_is_newest_first_filtered_and_counts_the_rest() -> None:
    store = MemoryStore()
    for i in range(5):
        await store.submit(_msg(f"m{i}", f"X:user{i}"), now=T0, lifetime=3600, routes=["x"])
    await store.cancel("m4")
    got = await selection.listing(store, filt=selection.Filter(), limit=2, now=T0)
    assert [m["id"] for m in got["messages"]] == ["m3", "m2"]
    assert (got["total"], got["more"]) == (4, 2)
    every = selection.Filter(states=None)
    got = await selection.listing(store, filt=every, limit=None, now=T0)
    assert [m["id"] for m in got["messages"]] == ["m4", "m3", "m2", "m1", "m0"]
    some = selection.Filter(states=None, recipient="USER1", transport="x")
    got = await selection.listing(store, filt=some, limit=None, now=T0)
    assert [m["id"] for m in got["messages"]] == ["m1"]
    none = selection.Filter(transport="y")
    assert (await selection.listing(store, filt=none, limit=None, now=T0))["total"] == 0


async def test_purge_uses_the_retention_unless_told_and_refuses_unfinished_queues() -> None:
    store = MemoryStore()
    await store.submit(_msg("sent"), now=T0, lifetime=3600, routes=["x"])
    [job] = await store.claim("x", owner="o", now=T0, lease=30)
    await store.settle(
        "sent", [RecipientUpdate(0, RecipientState.DELIVERED)], owner="o", now=T0, claim=job.claim
    )
    await store.submit(_msg("waiting"), now=T0, lifetime=3600, routes=["x"])
    kept = Retention(keep_sent=None)  # forever
    args = {"retention": kept, "dry_run": False, "now": T0 + 10**9}
    assert (await selection.purge(store, states=[], older_than=None, **args))["removed"] == 0
    dry = await selection.purge(store, states=[], older_than=0.0, **{**args, "dry_run": True})
    assert (dry["removed"], dry["ids"]) == (1, ["sent"])
    assert (await store.get_message("sent")).id == "sent"  # a dry run deletes nothing
    with pytest.raises(StoreError, match="not queued"):
        await selection.purge(store, states=[MessageState.QUEUED], older_than=0.0, **args)
    done = await selection.purge(store, states=[MessageState.SENT], older_than=5.0, **args)
    assert done["ids"] == ["sent"]
    assert [s.info.id for s in await store.list_messages(now=T0)] == ["waiting"]
    assert job.message.id == "sent"
