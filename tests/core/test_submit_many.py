"""Spooler.submit_many: a lot of messages in one durable commit, all or nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import FAST, message, transport

from spoolbox import (
    AlwaysIdle,
    MessageState,
    Priority,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
)
from spoolbox.store import StoreError
from spoolbox.testing import Script


def _open(db: Path, *scripts: tuple[str, Script]) -> Spooler:
    # No housekeeping during the test: its lease sweeps are commits of their own.
    policy = replace(FAST, housekeeping_interval=3600.0)
    cfg = SpoolerConfig(
        transports=tuple(transport(name, s) for name, s in scripts), policy=policy, node="n1"
    )
    return Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True)


async def test_a_lot_is_one_commit_and_every_message_is_delivered(tmp_path: Path) -> None:
    smtp, fax = Script(address_types=("SMTP",)), Script(address_types=("FAX",))
    async with _open(tmp_path / "s.db", ("smtp", smtp), ("fax", fax)) as sp:
        await sp.wait_ready(timeout=5)
        lot = [message(f"SMTP:r{i}@example.org", f"FAX:+{i}") for i in range(50)]
        before = sp.store.statistics()  # type: ignore[attr-defined]
        infos = await sp.submit_many(lot)
        # One transaction for the lot and its routes (both types were routed at once).
        # Counted among the durable commits: the lanes' claims and settles (progress
        # commits) may already have run by the time this line reads the counter (a
        # fresh-clone run saw 5 commits for 3 + 1).
        after = sp.store.statistics()  # type: ignore[attr-defined]
        assert after["durable_commits"] == before["durable_commits"] + 1, (before, after)
        assert [i.id for i in infos] == [m.id for m in lot]
        assert sp.counters["submitted"] == 50
        for info in infos:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
    assert sorted(smtp.sent) == sorted((m.id, 0) for m in lot)
    assert sorted(fax.sent) == sorted((m.id, 1) for m in lot)


async def test_a_refused_lot_leaves_nothing_behind(tmp_path: Path) -> None:
    script = Script()
    async with _open(tmp_path / "s.db", ("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        first = await sp.submit(message("SMTP:a@example.org", id="taken"))
        assert await sp.wait_for(first.id, timeout=5) is MessageState.SENT
        fresh = message("SMTP:b@example.org")
        clash = message("SMTP:a@example.org", id="taken", priority=Priority.HIGH)
        with pytest.raises(StoreError, match="'taken' is already used by a different message"):
            await sp.submit_many([fresh, clash])
        with pytest.raises(StoreError):
            await sp.store.get_message(fresh.id)
        assert sp.counters["submitted"] == 1
    assert script.sent == [("taken", 0)]


async def test_the_same_lot_twice_is_delivered_once(tmp_path: Path) -> None:
    script = Script()
    async with _open(tmp_path / "s.db", ("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        lot = [message(f"SMTP:r{i}@example.org") for i in range(5)]
        infos = await sp.submit_many(lot)
        assert await sp.submit_many(lot) == infos  # say, a retry after a lost answer
        assert await sp.submit_many([]) == []
        for info in infos:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
    assert sorted(script.sent) == sorted((m.id, 0) for m in lot)
