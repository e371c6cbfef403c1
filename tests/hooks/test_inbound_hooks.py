"""Spooler hooks on the way in: filed, deleted or kept, and a failing hook never
loses a received message."""

from __future__ import annotations

from typing import Any

from hookkit import FAST, spooler

from spoolbox import HookConfig, MemoryStore, TransportConfig
from spoolbox.contract import KEEP, HookMessage
from spoolbox.model import LogonCaps
from spoolbox.testing import Script, ScriptedProvider

LIST_MAIL = b"From: a@lists.example\r\nList-Id: <announce.python.org>\r\nSubject: news\r\n\r\nx\r\n"
SPAM = b"From: b@spam.example\r\nX-Spam-Flag: YES\r\nSubject: win\r\n\r\nx\r\n"
PLAIN = b"From: c@example.org\r\nSubject: hello\r\n\r\nx\r\n"
RULES = [
    {"header": "List-Id", "contains": "PYTHON.org", "folder": "lists"},
    {"header": "X-Spam-Flag", "equals": "yes", "delete": "spam"},
]


def receiver(*items: bytes) -> tuple[Script, TransportConfig]:
    script = Script(capabilities=LogonCaps.SP_POLL, inbound=list(items))
    return script, TransportConfig(
        "in", ScriptedProvider, options={"script": script}, outbound=False
    )


async def test_filing_hook_files_deletes_and_keeps_and_consumes_every_source_item() -> None:
    script, transport = receiver(LIST_MAIL, PLAIN, SPAM)  # the last one is deleted
    store = MemoryStore()
    hooks = (HookConfig("filing", "filing", {"rules": RULES}),)  # the entry point
    async with spooler(transport, hooks=hooks, store=store, policy=FAST) as sp:
        entries = await sp.wait_inbox(2, timeout=5)
        await sp.flush(upload=False)  # the third (deleted) one is consumed as well
        row = sp.status["hook:filing"]
        section = await store.profile_get("transport:in")
    subjects = {e.subject: e.meta.get("folder") for e in await store.list_inbox()}
    assert subjects == {"news": "lists", "hello": None}
    assert len(entries) == 2
    assert script.inbound == []  # the spam was taken from the source too
    assert section["last"] == 3  # and the provider's state of the deleted one committed
    assert row.counters["filed"] == 1 and row.counters["deleted"] == 1


class Flaky:
    def __init__(self, options: dict[str, Any]) -> None:
        self.answer = options["answer"]

    async def inbound(self, message: HookMessage) -> Any:
        return self.answer(message)


def boom(message: HookMessage) -> Any:
    raise RuntimeError("filter database locked")


async def test_a_failing_or_garbage_inbound_hook_keeps_the_message_unfiled() -> None:
    _script, transport = receiver(PLAIN)
    hooks = (
        HookConfig("boom", Flaky, {"answer": boom}),
        HookConfig("junk", Flaky, {"answer": lambda m: 42}),
        HookConfig("fine", Flaky, {"answer": lambda m: KEEP}),
    )
    async with spooler(transport, hooks=hooks) as sp:
        [entry] = await sp.wait_inbox(1, timeout=5)
        rows = sp.status["hook:boom"], sp.status["hook:junk"]
    assert "folder" not in entry.meta
    assert entry.meta["hook_errors"] == [
        "hook 'boom' failed: RuntimeError: filter database locked",
        "hook 'junk' failed: inbound() returned 42; expected KEEP, FileTo or Delete",
    ]
    assert "filter database locked" in (rows[0].detail or "")
    assert "returned 42" in (rows[1].detail or "")
