"""Recipients no transport holds are settled by whoever finds them first: this node's
router (no route) or housekeeping (expired), or another node's.  A settle that finds
its recipient already finished or claimed reads it again and leaves it alone; it is
no failure of the chore (once logged as "housekeeping failed" with a traceback, and
the rest of that round skipped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import FAST, message

from spoolbox import AlwaysIdle, MessageState, Spooler, SpoolerConfig
from spoolbox.model import MessageInfo, RecipientState
from spoolbox.store import MemoryStore, RecipientUpdate


class _OtherNodeFirst(MemoryStore):
    """Before each of the first ``races`` unowned settles, another node's makes the
    same settle (its own reports and all) and commits it."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.raced: list[str] = []

    async def settle(
        self, message_id: str, updates: Sequence[RecipientUpdate], **kw: Any
    ) -> MessageInfo:
        if kw.get("owner") is None and self.races > 0:
            self.races -= 1
            self.raced.append(message_id)
            await super().settle(message_id, updates, **kw)
        return await super().settle(message_id, updates, **kw)


@pytest.mark.parametrize("why", ["expired", "unroutable"])
async def test_an_unowned_recipient_settled_first_by_another_node_is_left_alone(
    caplog: pytest.LogCaptureFixture, why: str
) -> None:
    caplog.set_level(logging.DEBUG, "spoolbox")
    store = _OtherNodeFirst(races=1)
    await store.open()
    # No transport serves these: the router finds them unroutable; with a lifetime
    # of 1 ms housekeeping finds them expired too, whoever looks first.
    lifetime = 0.001 if why == "expired" else 86400.0
    async with _with_store(store) as sp:
        info = await sp.submit(message("SMTP:bob@example.org", lifetime=lifetime))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        await asyncio.sleep(0.2)  # more rounds of housekeeping and routing
        (rec,) = await store.recipients(info.id)
    assert rec.state is RecipientState.FAILED
    assert store.raced == [info.id]
    failures = [r for r in caplog.records if "failed" in r.getMessage() and r.exc_info]
    assert failures == [], [r.getMessage() for r in failures]
    assert any("settled or claimed meanwhile" in r.getMessage() for r in caplog.records)


def _with_store(store: MemoryStore) -> Spooler:
    cfg = SpoolerConfig(transports=(), policy=FAST, node="test-node")
    return Spooler.open(cfg, store=store, idle=AlwaysIdle())
