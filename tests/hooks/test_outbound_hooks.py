"""Spooler hooks and preprocessors on the way out: order, durability, verdicts, and
hooks or preprocessors that fail, answer garbage or hog the loop."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import pytest
from hookkit import (
    CONTENT,
    FAST,
    KEEP,
    AddHeaderHook,
    Record,
    ScriptedHook,
    header_adder,
    recording_transport,
    spooler,
)

from spoolbox import Address, HookConfig, MemoryStore, MessageState, NewMessage, RecipientState
from spoolbox.contract import Change, Delete, HookMessage, Reroute
from spoolbox.model import Notify, ResourceType, StatusCode
from spoolbox.store.retention import Retention


def new(*rcpts: str, content: bytes = CONTENT, **kw: Any) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=content,
        **kw,
    )


async def test_hooks_then_preprocessors_in_order_once_per_message() -> None:
    rec = Record()
    pre = [(header_adder("P1", rec), None, None), (header_adder("P2", rec), ["smtp"], None)]
    hooks = (
        HookConfig("a", AddHeaderHook, {"name": "A", "record": rec}),
        HookConfig("b", AddHeaderHook, {"name": "B", "record": rec}),
    )
    async with spooler(recording_transport(rec, preprocessors=pre), hooks=hooks) as sp:
        info = await sp.submit(new("SMTP:bob@example.org", "SMTP:carol@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        stored = await sp.store.read_content(info.id)
    assert rec.events == ["hook:A", "hook:B", "pre:P1", "pre:P2", "submit"]
    [(_mid, sent)] = rec.sent
    # Each hook saw the one before it; the preprocessors came after all hooks.
    assert sent == b"P2: 1\r\nP1: 1\r\nX-B: 1\r\nX-A: 1\r\n" + CONTENT
    assert rec.sizes == [len(sent)]  # message.size is what the transport sends
    assert stored == CONTENT  # the message itself is never rewritten


async def test_preprocessor_matches_address_types_and_remove_runs_after_sending() -> None:
    rec = Record()
    removed: list[tuple[str, bytes]] = []

    async def remove(message: HookMessage) -> None:
        rec.events.append("remove")
        removed.append((message.ref, message.content))

    pre = [
        (header_adder("FAXONLY", rec), ["FAX"], None),
        (header_adder("ANY", rec), None, remove),
    ]
    store = MemoryStore()
    async with spooler(recording_transport(rec, preprocessors=pre), store=store) as sp:
        smtp = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(smtp.id, timeout=5) is MessageState.SENT
        fax = await sp.submit(new("FAX:+15551234"))
        assert await sp.wait_for(fax.id, timeout=5) is MessageState.SENT
    assert rec.events == [
        "pre:ANY", "submit", "remove",
        "pre:FAXONLY", "pre:ANY", "submit", "remove",
    ]  # fmt: skip
    assert removed[0] == (smtp.id, b"ANY: 1\r\n" + CONTENT)
    # Not stored: nothing in the store says it was preprocessed.
    assert await store.read_content(smtp.id) == CONTENT
    assert await store.profile_get(f"spoolbox.hooks:{smtp.id}") == {}


async def test_changed_content_is_stored_before_sending_and_dropped_after() -> None:
    rec = Record()
    store = MemoryStore()
    hooks = (HookConfig("a", AddHeaderHook, {"name": "A", "record": rec}),)
    transport = recording_transport(rec, store=store)
    async with spooler(transport, hooks=hooks, store=store) as sp:
        info = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    # While the transport had it, the verdict with the changed content was stored ...
    [section] = rec.sections
    assert section["out"]["changed_by"] == ["a"]
    assert section["out"]["content"]
    # ... and once the message was done with, it was dropped.
    assert await store.profile_get(f"spoolbox.hooks:{info.id}") == {}


async def test_a_verdict_is_dropped_with_a_message_deleted_by_its_settle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``keep_sent = 0``: the settle deletes the message; its stored verdict goes too,
    without a warning that the message is not there to look at."""
    rec = Record()
    store = MemoryStore()
    hooks = (HookConfig("a", AddHeaderHook, {"name": "A", "record": rec}),)
    transport = recording_transport(rec, store=store)
    retention = Retention(keep_sent=0)
    with caplog.at_level(logging.WARNING):
        async with spooler(transport, hooks=hooks, store=store, retention=retention) as sp:
            info = await sp.submit(new("SMTP:bob@example.org"))
            assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    [section] = rec.sections
    assert section["out"]["changed_by"] == ["a"]
    assert await store.profile_get(f"spoolbox.hooks:{info.id}") == {}
    assert not await store.list_messages(now=time.time())
    assert "hook verdict" not in caplog.text


async def test_a_stored_verdict_is_applied_without_running_the_hooks_again() -> None:
    """What a crash after the hook and before the send leaves: the same bytes go out."""
    rec = Record()
    store = MemoryStore()
    await store.open()
    msg = new("SMTP:bob@example.org")
    # The verdict of an earlier run (its changed content), as the store kept it.
    from spoolbox._core.hooks import OutboundOutcome

    earlier = OutboundOutcome(content=b"X-Earlier: 1\r\n" + CONTENT, changed_by=("a",))
    await store.profile_update(f"spoolbox.hooks:{msg.id}", {"out": earlier.to_record()})
    hooks = (HookConfig("a", AddHeaderHook, {"name": "A", "record": rec}),)
    async with spooler(recording_transport(rec), hooks=hooks, store=store) as sp:
        await sp.submit(msg)
        assert await sp.wait_for(msg.id, timeout=5) is MessageState.SENT
    assert "hook:A" not in rec.events
    assert rec.sent == [(msg.id, b"X-Earlier: 1\r\n" + CONTENT)]


async def test_delete_fails_the_recipients_with_the_reason_and_reports() -> None:
    rec = Record()
    hooks = (HookConfig("stop", ScriptedHook, {"answer": lambda m: Delete("no mail on Sundays")}),)
    async with spooler(recording_transport(rec), hooks=hooks) as sp:
        info = await sp.submit(new("SMTP:bob@example.org", notify=Notify.FAILURE))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        [r] = await sp.store.recipients(info.id)
        reports = [s for s in await sp.store.list_messages(now=sp.clock.now()) if s.info.is_report]
        row = sp.status["hook:stop"]
    assert rec.sent == []
    assert r.state is RecipientState.FAILED
    assert r.status == "5.7.1"
    assert r.diagnostic == "deleted by hook 'stop': no mail on Sundays"
    assert len(reports) == 1  # the sender hears of it
    assert row.counters["deleted"] == 1


async def test_reroute_cancels_the_recipients_and_sends_a_new_message_once() -> None:
    rec = Record()
    calls: list[HookMessage] = []

    def answer(m: HookMessage) -> Any:
        return Reroute(("archive@example.org",)) if "SMTP:bob@example.org" in m.recipients else KEEP

    hooks = (HookConfig("re", ScriptedHook, {"answer": answer, "calls": calls}),)
    async with spooler(recording_transport(rec), hooks=hooks) as sp:
        info = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.CANCELLED
        [r] = await sp.store.recipients(info.id)
        [other] = [
            s for s in await sp.store.list_messages(now=sp.clock.now()) if s.info.id != info.id
        ]
        assert await sp.wait_for(other.info.id, timeout=5) is MessageState.SENT
        [r2] = await sp.store.recipients(other.info.id)
    assert r.diagnostic == (
        f"rerouted by hook 're' to SMTP:archive@example.org as message {other.info.id}"
    )
    assert str(r2.address) == "SMTP:archive@example.org"
    assert rec.sent == [(other.info.id, CONTENT)]
    # The new message passed the hooks already: they saw the original only.
    assert [c.ref for c in calls] == [info.id]


async def test_a_rerouted_recipient_keeps_the_original_recipient_for_reports() -> None:
    """Reroute's new recipients stand for the one the sender gave (RFC 3461 ORCPT):
    bob's ORCPT for the targets of his message, his address when he came without one;
    a target that was a recipient already keeps its own; a message of two recipients
    rerouted elsewhere names no original for the new one."""
    rec = Record()
    targets = {
        "one": ("SMTP:archive@example.org", "SMTP:audit@example.org"),
        "bare": ("SMTP:archive@example.org",),
        "two": ("SMTP:archive@example.org", "SMTP:carol@example.org"),
    }

    def answer(m: HookMessage) -> Any:
        subject = m.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        return Reroute(targets[subject])

    hooks = (HookConfig("re", ScriptedHook, {"answer": answer}),)
    bob, carol = Address.parse("SMTP:bob@example.org"), Address.parse("SMTP:carol@example.org")
    subjects = {
        "one": new(
            str(bob),
            content=b"Subject: one\r\n\r\nx\r\n",
            original_recipients={bob: "rfc822;bob@old.example"},
        ),
        "bare": new(str(bob), content=b"Subject: bare\r\n\r\nx\r\n"),
        "two": new(
            str(bob),
            str(carol),
            content=b"Subject: two\r\n\r\nx\r\n",
            original_recipients={carol: "rfc822;carol@old.example"},
        ),
    }
    got: dict[str, list[tuple[str, str | None]]] = {}
    async with spooler(recording_transport(rec), hooks=hooks) as sp:
        for subject, message in subjects.items():
            info = await sp.submit(message)
            assert await sp.wait_for(info.id, timeout=5) is MessageState.CANCELLED
            [other] = [
                s
                for s in await sp.store.list_messages(now=sp.clock.now())
                if s.info.id.startswith(info.id + ".")
            ]
            got[subject] = [
                (str(r.address), r.original) for r in await sp.store.recipients(other.info.id)
            ]
    assert got == {
        "one": [
            ("SMTP:archive@example.org", "rfc822;bob@old.example"),
            ("SMTP:audit@example.org", "rfc822;bob@old.example"),
        ],
        "bare": [("SMTP:archive@example.org", "rfc822;bob@example.org")],
        "two": [
            ("SMTP:archive@example.org", None),
            ("SMTP:carol@example.org", "rfc822;carol@old.example"),
        ],
    }


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (lambda m: (_ for _ in ()).throw(RuntimeError("dns down")), "RuntimeError: dns down"),
        (lambda m: "yes", "returned 'yes'; expected KEEP, Change, Reroute or Delete"),
        (lambda m: Reroute(("not an address",)), "Reroute named a bad address"),
    ],
    ids=["raises", "garbage", "bad-reroute"],
)
async def test_a_failing_hook_defers_the_message_and_its_row_says_why(
    answer: Any, says: str
) -> None:
    rec = Record()
    state = {"fail": True}

    def flaky(m: HookMessage) -> Any:
        return answer(m) if state["fail"] else KEEP

    hooks = (HookConfig("flaky", ScriptedHook, {"answer": flaky}),)
    async with spooler(recording_transport(rec), hooks=hooks) as sp:
        info = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        [r] = await sp.store.recipients(info.id)
        row = sp.status["hook:flaky"]
        assert r.state is RecipientState.QUEUED and r.retry_at > sp.clock.now()
        assert r.status == "4.3.0"
        assert says in (r.diagnostic or "")
        assert row.resource_type is ResourceType.HOOK_PROVIDER
        assert says in (row.detail or "") and row.counters["errors"] == 1
        assert rec.sent == []
        # Not lost: once the hook works again, a retry sends it.
        state["fail"] = False
        await sp.retry(info.id)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert [mid for mid, _ in rec.sent] == [info.id]


async def test_a_hook_that_cannot_be_loaded_holds_mail_back() -> None:
    rec = Record()
    hooks = (HookConfig("gone", "no_such_module:Hook"),)
    async with spooler(recording_transport(rec), hooks=hooks) as sp:
        info = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        row = sp.status["hook:gone"]
        [r] = await sp.store.recipients(info.id)
    assert StatusCode.FAILURE in row.status_code
    assert "cannot load hook 'no_such_module:Hook'" in (row.detail or "")
    assert "hook 'gone' failed" in (r.diagnostic or "")
    assert rec.sent == []


async def test_a_hogging_hook_is_measured_and_named_by_the_watchdog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Record()

    def hog(m: HookMessage) -> Any:
        time.sleep(0.3)  # blocks the loop: what the slice meter and watchdog are for
        return KEEP

    policy = replace(FAST, watchdog_stall=0.1)
    hooks = (HookConfig("hog", ScriptedHook, {"answer": hog}),)
    with caplog.at_level(logging.WARNING, logger="spoolbox.watchdog"):
        async with spooler(recording_transport(rec), hooks=hooks, policy=policy) as sp:
            info = await sp.submit(new("SMTP:bob@example.org"))
            assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
            row = sp.status["hook:hog"]
            stalls = sp.statistics()["stalls"]
    assert row.counters["slow_slices"] >= 1
    assert (row.detail or "").startswith("slow: a slice ran")
    assert [name for name, _ in stalls] == ["hook:hog"]
    assert any(
        r.getMessage().startswith("'hook:hog' has held the event loop") for r in caplog.records
    )


async def test_a_failing_preprocessor_defers_and_shows_on_the_transport_row() -> None:
    rec = Record()
    state = {"fail": True}

    async def picky(message: HookMessage) -> bytes | None:
        if state["fail"]:
            raise ValueError("key not ready")
        return None

    async with spooler(recording_transport(rec, preprocessors=[(picky, None, None)])) as sp:
        info = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        [r] = await sp.store.recipients(info.id)
        assert "key not ready" in (r.diagnostic or "")
        assert "key not ready" in (sp.status["out"].detail or "")
        state["fail"] = False
        await sp.retry(info.id)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert rec.sent == [(info.id, CONTENT)]  # None: unchanged


async def test_a_preprocessor_returning_garbage_is_a_contract_violation() -> None:
    rec = Record()

    async def garbage(message: HookMessage) -> Any:
        return "text, not bytes"

    async with spooler(recording_transport(rec, preprocessors=[(garbage, None, None)])) as sp:
        info = await sp.submit(new("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        [r] = await sp.store.recipients(info.id)
    assert "must return the new content (non-empty bytes) or None" in (r.diagnostic or "")
    assert rec.sent == []


def test_change_and_reroute_refuse_nonsense() -> None:
    with pytest.raises(TypeError):
        Change(b"  ")
    with pytest.raises(TypeError):
        Reroute(())
