"""A finished queue kept for no time (``[store] keep_sent = 0``, ``keep_failed = 0``):
the settle that finishes a message deletes it, with its reports already enqueued; the
housekeeper's purge never sees it; ``wait_for`` answers SENT for a message sent and
not kept, and says why a message is missing when it cannot tell."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from helpers import FAST, message, transport

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig
from spoolbox.model import MessageState, Notify
from spoolbox.store import MemoryStore, UnknownMessage
from spoolbox.store.retention import FINISHED_STATES, Retention
from spoolbox.testing import Act, Script


class NoPurge(MemoryStore):
    """Records what the housekeeper's purge removed: nothing may be left for it."""

    def __init__(self) -> None:
        super().__init__()
        self.purged: list[str] = []

    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        gone = await super().purge(finished_before=finished_before, limit=limit)
        self.purged += gone
        return gone


def _spooler(script: Script, store: MemoryStore, retention: Retention) -> Spooler:
    cfg = SpoolerConfig(
        transports=(transport("smtp", script),), policy=FAST, node="test", retention=retention
    )
    return Spooler.open(cfg, store=store, idle=AlwaysIdle())


async def _all_gone(store: MemoryStore) -> bool:
    return sum((await store.counts()).values()) == 0


async def test_keep_sent_zero_deletes_a_delivered_message_in_its_settle() -> None:
    store = NoPurge()
    script = Script(("SMTP",), submit=[Act.SUCCEED])
    async with _spooler(script, store, Retention(keep_sent=0)) as sp:
        info = await sp.submit(message("SMTP:bob@example.net", "SMTP:carol@example.net"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT  # sent, not kept
        with pytest.raises(UnknownMessage):
            await store.get_message(info.id)
        assert await _all_gone(store)
        assert await store.list_messages(now=0.0) == []
        assert sp.counters["delivered"] == 2
        assert script.names().count("submit_message") == 1
        assert store.purged == []  # the housekeeper's purge at start found nothing
        finished = dict.fromkeys(FINISHED_STATES, float("inf"))
        assert await store.purge(finished_before=finished, limit=500) == []  # nor would one now


async def test_keep_sent_zero_keeps_a_failed_message() -> None:
    store = NoPurge()
    script = Script(("SMTP",), submit=[Act.FAIL_PERM])
    async with _spooler(script, store, Retention(keep_sent=0)) as sp:
        info = await sp.submit(message("SMTP:bob@example.net", notify=Notify.NEVER))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        assert await store.get_message(info.id) == info


async def test_keep_failed_zero_deletes_a_failed_message_after_its_report() -> None:
    store = NoPurge()
    # The original fails; its report (to alice, on the same transport) waits.
    script = Script(("SMTP",), submit=[Act.FAIL_PERM, Act.DEFER])
    async with _spooler(script, store, Retention(keep_failed=0)) as sp:
        info = await sp.submit(message("SMTP:bob@example.net"))
        with pytest.raises(UnknownMessage, match=r"failed and not kept.*keep_failed = 0"):
            await sp.wait_for(info.id, timeout=5)  # FAILED or CANCELLED: cannot tell
        [report] = await store.list_messages(now=0.0)
        assert report.info.is_report
        assert b"bob@example.net" in await store.read_content(report.info.id)
        with pytest.raises(UnknownMessage):
            await store.get_message(info.id)
