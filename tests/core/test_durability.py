"""What survives a restart of the spooler on SQLite: send-at, hold, priority, parked."""

from __future__ import annotations

from pathlib import Path

from helpers import FAST, message, transport

from spoolbox import (
    AlwaysIdle,
    MessageState,
    Priority,
    RecipientState,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
)
from spoolbox.model import TransportNotifyFlags
from spoolbox.testing import Act, FakeClock, Script


def _open(db: Path, script: Script, clock: FakeClock) -> Spooler:
    cfg = SpoolerConfig(transports=(transport("smtp", script),), policy=FAST, node="n1")
    return Spooler.open(
        cfg, store=SQLiteStore(db), clock=clock, idle=AlwaysIdle(), close_store=True
    )


async def test_send_at_survives_a_restart_and_fires_once(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock()
    script = Script()
    async with _open(db, script, clock) as sp:
        info = await sp.submit(message("SMTP:bob@example.org", send_at=clock.now() + 3600))
        await sp.wait_ready(timeout=5)
        await clock.advance(1800)
        assert await sp.store.state_of(info.id, now=clock.now()) is MessageState.DEFERRED
    assert "submit_message" not in script.names()
    script2 = Script()
    async with _open(db, script2, clock) as sp:
        await sp.wait_ready(timeout=5)
        await clock.advance(1799)
        assert "submit_message" not in script2.names()
        await clock.advance(2)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        await clock.advance(7200)
    assert script2.sent == [(info.id, 0)]  # once


async def test_hold_survives_a_restart_until_released(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock()
    script = Script()
    async with _open(db, script, clock) as sp:
        with sp.foreground_busy():
            info = await sp.submit(message("SMTP:bob@example.org"))
            await sp.hold(info.id)
        assert await sp.store.state_of(info.id, now=clock.now()) is MessageState.HOLD
    async with _open(db, script, clock) as sp:
        await sp.wait_ready(timeout=5)
        await clock.advance(600)
        assert await sp.store.state_of(info.id, now=clock.now()) is MessageState.HOLD
        await sp.release(info.id)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert script.sent == [(info.id, 0)]


async def test_high_priority_goes_first(tmp_path: Path) -> None:
    clock = FakeClock()
    script = Script()
    async with _open(tmp_path / "spool.db", script, clock) as sp:
        with sp.foreground_busy():
            low = await sp.submit(message("SMTP:a@x.org", priority=Priority.LOW))
            normal = await sp.submit(message("SMTP:b@y.org"))
            high = await sp.submit(message("SMTP:c@z.org", priority=Priority.HIGH))
            await sp.route_now()
        for m in (low, normal, high):
            await sp.wait_for(m.id, timeout=5)
    order = [d[0] for c, d in script.calls if c == "submit_message"]
    assert order == [high.id, normal.id, low.id]


async def test_parked_message_survives_restart_and_cancel_withdraws_it(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock()
    script = Script(submit=[Act.DEFER])
    async with _open(db, script, clock) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
    script2 = Script()
    async with _open(db, script2, clock) as sp:
        await sp.wait_ready(timeout=5)
        (rec,) = await sp.store.recipients(info.id)
        assert rec.state is RecipientState.PARKED
        assert await sp.cancel(info.id) is MessageState.CANCELLED
    notes = [d for c, d in script2.calls if c == "transport_notify"]
    assert TransportNotifyFlags.ABORT_DEFERRED | TransportNotifyFlags.CANCEL_MESSAGE in notes
