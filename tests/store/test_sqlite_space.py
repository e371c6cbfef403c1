"""The SQLite store's file space: how much of it purged mail left free, and the log
line that says so (once a day) and names ``spoolbox store compact``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spoolbox import Address, MessageState, NewMessage
from spoolbox.store import SQLiteStore
from spoolbox.store.sqlite import store as sqlite_store

SIZE = 100_000


def _message(i: int) -> NewMessage:
    return NewMessage(
        sender=None,
        recipients=(Address.parse("SMTP:bob@example.org"),),
        content=b"Subject: %d\r\n\r\n" % i + b"x" * SIZE + b"\r\n",
    )


async def _queue_and_cancel(store: SQLiteStore, n: int) -> None:
    for i in range(n):
        info = await store.submit(_message(i), now=0.0, lifetime=3600)
        await store.cancel(info.id)


async def test_a_purge_that_frees_much_of_the_file_says_so_once_a_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "FREE_HINT_BYTES", 2_000_000)
    caplog.set_level(logging.INFO, "spoolbox.store")
    cutoffs = {MessageState.CANCELLED: 1e12}
    async with SQLiteStore(tmp_path / "s.db") as store:
        empty = await store.space()
        assert empty.free <= 4096 < empty.size  # a new file: a free page at most
        await _queue_and_cancel(store, 5)  # 0.5 MB: below the threshold
        assert len(await store.purge(finished_before=cutoffs, limit=100)) == 5
        assert not [r for r in caplog.records if "store compact" in r.getMessage()]
        await _queue_and_cancel(store, 40)
        assert len(await store.purge(finished_before=cutoffs, limit=100)) == 40
        space = await store.space()
        assert space.free >= 40 * SIZE and 2 * space.free >= space.size
        hints = [r.getMessage() for r in caplog.records if "store compact" in r.getMessage()]
        assert len(hints) == 1, hints
        assert f"{space.free / 1e6:.1f} MB of its {space.size / 1e6:.1f} MB are free" in hints[0]
        assert str(tmp_path / "s.db") in hints[0]
        await _queue_and_cancel(store, 40)
        await store.purge(finished_before=cutoffs, limit=100)
        hints = [r.getMessage() for r in caplog.records if "store compact" in r.getMessage()]
        assert len(hints) == 1  # not again the same day
