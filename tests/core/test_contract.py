"""The transport contract: call order, routing, every submit/end outcome, deferral,
cancel, inbound commit and rollback."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from helpers import FAST, SLOW_TIMERS, message, spooler, transport, until

from spoolbox import AlwaysIdle, MessageState, RecipientState, Spooler, SpoolerConfig, SQLiteStore
from spoolbox.model import (
    LogonFlags,
    StatusCode,
    SubmitFlags,
    TransportNotifyFlags,
)
from spoolbox.store import RecipientUpdate
from spoolbox.testing import Act, FakeClock, Script


async def test_call_order_from_logon_to_shutdown() -> None:
    script = Script()
    async with spooler(transport("t", script)) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    names = script.names()
    # The grammar of the contract, in order.
    assert names[:5] == [
        "logon",
        "capabilities",
        "address_types",
        "register_options",
        "transport_notify",
    ]
    assert (
        script.calls[0][1] & LogonFlags.NO_INBOUND and script.calls[0][1] & LogonFlags.NO_OUTBOUND
    )
    assert (
        script.calls[4][1]
        == TransportNotifyFlags.BEGIN_INBOUND | TransportNotifyFlags.BEGIN_OUTBOUND
    )
    i = names.index("submit_message")
    assert names[i + 1] == "end_message"
    assert names[-3:] == ["transport_notify", "logoff", "shutdown"]
    assert (
        script.calls[-3][1] == TransportNotifyFlags.END_INBOUND | TransportNotifyFlags.END_OUTBOUND
    )


async def test_routing_splits_a_message_across_transports_in_order() -> None:
    smtp, fax, anyt = Script(("SMTP",)), Script(("FAX",)), Script(("*",))
    async with spooler(
        transport("relay", anyt), transport("smtp", smtp), transport("fax", fax)
    ) as sp:
        info = await sp.submit(
            message("SMTP:bob@example.org", "FAX:+15551234", "X400:c=us;a=x", "smtp:carol@x.org")
        )
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        recs = await sp.store.recipients(info.id)
    # The wildcard transport comes last although it is first in the order.
    assert [r.route for r in recs] == ["smtp", "fax", "relay", "smtp"]
    assert all(r.state is RecipientState.DELIVERED for r in recs)
    assert sorted(i for _, i in smtp.sent) == [0, 3]
    assert [i for _, i in fax.sent] == [1]
    assert [i for _, i in anyt.sent] == [2]


async def test_not_me_offers_the_recipient_to_the_next_transport() -> None:
    first, second = Script(("SMTP",), submit=[Act.NOT_ME]), Script(("SMTP",))
    async with spooler(transport("a", first), transport("b", second)) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        (rec,) = await sp.store.recipients(info.id)
    assert rec.route == "b" and rec.refused_by == ("a",)
    assert "end_message" not in first.names()  # NOT_ME: no end_message
    assert second.sent == [(info.id, 0)]


async def test_unreported_recipients_after_sent_go_to_the_next_transport() -> None:
    first, second = Script(("SMTP",), submit=[Act.FIRST_ONLY]), Script(("SMTP",))
    async with spooler(transport("a", first), transport("b", second)) as sp:
        info = await sp.submit(message("SMTP:one@x.org", "SMTP:two@x.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        recs = await sp.store.recipients(info.id)
    assert [(r.route, r.state) for r in recs] == [
        ("a", RecipientState.DELIVERED),
        ("b", RecipientState.DELIVERED),
    ]


async def test_no_transport_for_a_type_fails_with_a_report() -> None:
    async with spooler(transport("smtp", Script(("SMTP",)))) as sp:
        info = await sp.submit(message("FAX:+1555"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        (rec,) = await sp.store.recipients(info.id)
        assert rec.status == "5.4.4" and "FAX" in (rec.diagnostic or "")
        reports = [m for m in await sp.store.list_messages(now=sp.clock.now()) if m.info.is_report]
    assert len(reports) == 1
    assert [str(r.address) for r in reports[0].recipients] == ["SMTP:alice@example.org"]


async def test_permanent_failure_fails_at_once_with_report_to_sender() -> None:
    async with spooler(transport("smtp", Script(submit=[Act.FAIL_PERM, Act.SUCCEED]))) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        (rec,) = await sp.store.recipients(info.id)
        reports = [m for m in await sp.store.list_messages(now=sp.clock.now()) if m.info.is_report]
        assert len(reports) == 1
        content = await sp.store.read_content(reports[0].info.id)
    assert rec.status == "5.1.1" and rec.attempts == 1
    assert reports[0].info.sender is None  # null envelope sender: no report loops
    assert b"5.1.1" in content and b"scripted: no such user" in content


async def test_no_report_for_a_null_sender() -> None:
    async with spooler(transport("smtp", Script(submit=[Act.FAIL_PERM]))) as sp:
        info = await sp.submit(message("SMTP:bob@example.org", sender=None))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        assert [m for m in await sp.store.list_messages(now=0) if m.info.is_report] == []


async def test_temporary_failure_retries_with_backoff_on_the_clock() -> None:
    clock = FakeClock()
    script = Script(submit=[Act.FAIL_TEMP, Act.FAIL_TEMP, Act.SUCCEED])
    async with spooler(transport("smtp", script), clock=clock) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        (rec,) = await sp.store.recipients(info.id)
        assert rec.retry_at == pytest.approx(clock.now() + FAST.retry_base)
        await clock.advance(FAST.retry_base - 1)
        assert script.names().count("submit_message") == 1  # not before its time
        await clock.advance(2)
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        for _ in range(100):
            if script.names().count("submit_message") == 2:
                break
            await asyncio.sleep(0.01)
        (rec,) = await sp.store.recipients(info.id)
        # Second retry waits twice as long (exponential backoff).
        assert rec.retry_at == pytest.approx(clock.now() + 2 * FAST.retry_base, abs=1.5)
        await clock.advance(2 * FAST.retry_base + 1)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert script.names().count("submit_message") == 3


@pytest.mark.parametrize(
    ("act", "expect_delay"),
    [
        (Act.WAIT, 30.0),
        (Act.NETWORK_ERROR, 30.0),
        (Act.BUSY, FAST.busy_delay),
        (Act.RESEND_LATER, FAST.resend_later_delay),
    ],
)
async def test_delaying_outcomes_keep_the_message_and_retry_later(
    act: Act, expect_delay: float
) -> None:
    clock = FakeClock()
    script = Script(submit=[act, Act.SUCCEED])
    async with spooler(transport("smtp", script), clock=clock) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        (rec,) = await sp.store.recipients(info.id)
        assert rec.state is RecipientState.QUEUED
        assert rec.retry_at == pytest.approx(clock.now() + expect_delay)
        await clock.advance(expect_delay + 0.1)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    ends = script.names().count("end_message")
    # BUSY / WAIT / NETWORK_ERROR get no end_message; RESEND_LATER came from one.
    assert ends == (2 if act is Act.RESEND_LATER else 1)


async def test_resend_now_offers_the_message_again_at_once() -> None:
    script = Script(submit=[Act.RESEND_NOW, Act.SUCCEED])
    async with spooler(transport("smtp", script)) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert script.names().count("submit_message") == 2


async def test_deferral_until_sentdeferred_then_begin_deferred() -> None:
    from spoolbox.model import SpoolerNotifyFlags

    clock = FakeClock()
    script = Script(submit=[Act.DEFER, Act.SUCCEED])
    async with spooler(transport("smtp", script), clock=clock, policy=SLOW_TIMERS) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        (rec,) = await sp.store.recipients(info.id)
        assert rec.state is RecipientState.PARKED
        # Time passes beyond every retry delay, and a later message goes through the
        # same transport: a claim made after that would have taken the parked
        # recipient too, had it been claimable.
        await clock.advance(FAST.retry_base * 3)
        witness = await sp.submit(message("SMTP:carol@example.org"))
        assert await sp.wait_for(witness.id, timeout=5) is MessageState.SENT
        assert [i for i, _ in script.sent] == [witness.id]
        assert script.names().count("submit_message") == 2  # parked: not offered again
        sp.host("smtp").support.spooler_notify(SpoolerNotifyFlags.SENTDEFERRED, info.id)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    submits = [d for c, d in script.calls if c == "submit_message"]
    assert [flags for _, flags in submits] == [
        SubmitFlags.NONE,
        SubmitFlags.NONE,
        SubmitFlags.BEGIN_DEFERRED,
    ]


async def test_submit_cancelled_returns_a_deferred_message_to_parked() -> None:
    from spoolbox._core.policy import PARKED_NOTE
    from spoolbox.model import SpoolerNotifyFlags

    script = Script(submit=[Act.DEFER, Act.CANCEL, Act.SUCCEED])
    async with spooler(transport("smtp", script)) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        support = sp.host("smtp").support
        support.spooler_notify(SpoolerNotifyFlags.SENTDEFERRED, None)
        await until(
            lambda: script.names().count("submit_message") == 2,
            what="the deferred message is offered again after SENTDEFERRED",
        )

        async def parked_again() -> bool:
            (rec,) = await sp.store.recipients(info.id)
            return rec.state is RecipientState.PARKED and rec.diagnostic == PARKED_NOTE

        # It was in the transport's hands (ACTIVE) for the second submit: parked again
        # means the cancelled submit put it back, not that nothing happened.
        await until(parked_again, what="a cancelled BEGIN_DEFERRED submit parks it again")
        # Parked, it comes back with the next SENTDEFERRED, still as a deferred message.
        support.spooler_notify(SpoolerNotifyFlags.SENTDEFERRED, None)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    submits = [d for c, d in script.calls if c == "submit_message"]
    assert [flags for _, flags in submits] == [
        SubmitFlags.NONE,
        SubmitFlags.BEGIN_DEFERRED,
        SubmitFlags.BEGIN_DEFERRED,
    ]


async def test_cancel_reaches_the_sending_transport_and_cancels_the_rest() -> None:
    script = Script(submit=[Act.HANG])
    async with spooler(transport("smtp", script)) as sp:
        info = await sp.submit(message("SMTP:bob@example.org", "SMTP:carol@example.org"))
        await sp.wait_for(info.id, [MessageState.ACTIVE], timeout=5)
        for _ in range(200):
            if "submit_message" in script.names():
                break
            await asyncio.sleep(0.01)
        await sp.cancel(info.id)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.CANCELLED
        recs = await sp.store.recipients(info.id)
    assert script.cancelled == [info.id]
    notify = [
        d
        for c, d in script.calls
        if c == "transport_notify" and d & TransportNotifyFlags.CANCEL_MESSAGE
    ]
    assert notify == [TransportNotifyFlags.CANCEL_MESSAGE]
    assert {r.state for r in recs} == {RecipientState.CANCELLED}
    assert "end_message" not in script.names()


async def test_cancel_of_a_queued_message_needs_no_transport() -> None:
    async with spooler(transport("smtp", Script()), idle=None) as sp:
        with sp.foreground_busy():  # hold background work back
            info = await sp.submit(message("SMTP:bob@example.org"))
            assert await sp.cancel(info.id) is MessageState.CANCELLED


async def test_inbound_commits_message_and_state_together() -> None:
    from spoolbox.model import LogonCaps

    script = Script(
        capabilities=LogonCaps.SP_POLL,
        inbound=[b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"],
    )
    async with spooler(transport("pop", script)) as sp:
        first, second = await sp.wait_inbox(2, timeout=5)
        inbox = await sp.store.list_inbox()
        bodies = [await sp.store.read_inbox(e.id) for e in inbox]
        state = await sp.store.profile_get("transport:pop")
    assert [first.subject, second.subject] == ["one", "two"]
    assert bodies == [b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"]
    assert state == {"last": 2}


async def test_failed_start_message_leaves_nothing_behind() -> None:
    from spoolbox.model import LogonCaps

    script = Script(
        capabilities=LogonCaps.SP_POLL,
        inbound=[b"Subject: one\r\n\r\n1\r\n"],
        fail_inbound_once=True,
    )
    async with spooler(transport("pop", script)) as sp:
        host = sp.host("pop")
        assert await sp.wait_ready(timeout=5) == {"pop": True}
        # First call writes, sets state, then raises: nothing may be committed.
        assert await host.receive_one() is False
        assert await sp.store.list_inbox() == []
        assert await sp.store.profile_get("transport:pop") == {}
        assert host.counters["errors"] == 1
        (entry,) = await sp.wait_inbox(1, timeout=5)
        assert entry.subject == "one"
        assert await sp.store.profile_get("transport:pop") == {"last": 1}
        assert len(await sp.store.list_inbox()) == 1


async def test_newmail_notification_leads_to_start_message() -> None:
    from spoolbox.model import SpoolerNotifyFlags

    script = Script(inbound=[b"Subject: pushed\r\n\r\nx\r\n"])  # no SP_POLL
    async with spooler(transport("push", script)) as sp:
        await asyncio.sleep(0.05)
        assert "poll" not in script.names() and "start_message" not in script.names()
        sp.host("push").support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
        (entry,) = await sp.wait_inbox(1, timeout=5)
    assert entry.subject == "pushed"


async def test_status_rows_one_per_transport_plus_the_spooler() -> None:
    async with spooler(transport("a", Script()), transport("b", Script(("FAX",)))) as sp:
        assert await sp.wait_ready(timeout=5) == {"a": True, "b": True}
        rows = {r.name: r for r in sp.status}
    assert set(rows) == {"spooler", "a", "b"}
    for name in "ab":
        code = rows[name].status_code
        assert code & StatusCode.AVAILABLE and code & StatusCode.OUTBOUND_ENABLED
        assert rows[name].display_string == "scripted"  # the provider's own string
    assert rows["spooler"].status_code & StatusCode.AVAILABLE


async def test_recipients_waiting_for_an_unknown_transport_do_not_block_routing() -> None:
    # "fax" never logs on and declares no types: FAX recipients must wait (store and
    # forward) -- and the 1,200 of them must not hide a later SMTP message.
    down = Script(("FAX",), raise_in={"logon"})
    async with spooler(transport("smtp", Script(("SMTP",))), transport("fax", down)) as sp:
        with sp.foreground_busy():
            for i in range(12):
                await sp.submit(message(*[f"FAX:+1555{i:02d}{j:03d}" for j in range(100)]))
        later = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(later.id, timeout=10) is MessageState.SENT
        waiting = await sp.store.unrouted(limit=2000)
    assert len(waiting) == 1200


async def test_cancel_reaches_a_message_waiting_in_a_claimed_batch() -> None:
    script = Script(submit=[Act.HANG, Act.SUCCEED])
    async with spooler(transport("smtp", script)) as sp:
        with sp.foreground_busy():
            first = await sp.submit(message("SMTP:a@x.org"))
            second = await sp.submit(message("SMTP:b@y.org"))
            await sp.route_now()
        # The lane claims both in one batch and hangs on the first.
        while "submit_message" not in script.names():
            await asyncio.sleep(0.005)
        assert await sp.store.state_of(second.id, now=sp.clock.now()) is MessageState.ACTIVE
        await sp.cancel(second.id)
        await sp.cancel(first.id)
        assert await sp.wait_for(first.id, timeout=5) is MessageState.CANCELLED
        assert await sp.wait_for(second.id, timeout=5) is MessageState.CANCELLED
    submitted = [d[0] for c, d in script.calls if c == "submit_message"]
    assert submitted == [first.id]  # the second never reached the transport


async def test_a_transport_neither_outbound_nor_inbound_stops_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No lane at all (a transport switched off both ways in the profile): its stop
    waits for nothing, instead of crashing on an empty set of lanes."""
    off = transport("off", Script(("SMTP",)), outbound=False, inbound=False)
    async with spooler(transport("smtp", Script(("SMTP",))), off) as sp:
        await until(lambda: all(h.session is not None for h in sp.hosts), what="logons")
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert "lane crashed" not in caplog.text


async def test_mail_queued_before_a_transport_was_limited_to_domains_is_routed_again(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Recipients queued for ``corp`` before a reload limited it to corp.example: at
    the start its other recipients go back to routing (to the smart host), as Postfix
    resolves deferred mail again; corp.example's stay with it."""
    caplog.set_level(logging.INFO, logger="spoolbox.spooler")
    store = SQLiteStore(tmp_path / "spool.sqlite3")
    await store.open()
    queued = message("SMTP:ann@example.org", "SMTP:bob@corp.example")
    await store.submit(queued, now=time.time(), lifetime=3600, routes=["corp", "corp"])
    await store.close()
    relay, corp = Script(("SMTP",)), Script(("SMTP",))
    limited = transport("corp", corp, domains=frozenset({"corp.example"}))
    cfg = SpoolerConfig(
        transports=(transport("relay", relay), limited), policy=FAST, node="test-node"
    )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        assert await sp.wait_for(queued.id, timeout=5) is MessageState.SENT
        recipients = await sp.store.recipients(queued.id)
    assert [(r.address.value, r.route) for r in recipients] == [
        ("ann@example.org", "relay"),
        ("bob@corp.example", "corp"),
    ]
    assert "1 queued recipient routed again: their transport is no longer" in caplog.text


async def test_mail_queued_before_a_transport_for_its_domain_was_added_goes_to_it(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload added ``corp`` for corp.example and ``eu`` for eu.corp.example: what
    was queued for the smart host at corp.example goes to ``corp``, and what ``corp``
    held for eu.corp.example to ``eu`` (the closest entry, as at submit); the rest
    stays.  A transport without domains decided before the one a recipient is queued
    for (one that declined it, say) does not take it over."""
    caplog.set_level(logging.INFO, logger="spoolbox.spooler")
    store = SQLiteStore(tmp_path / "spool.sqlite3")
    await store.open()
    queued = message(
        "SMTP:ann@example.org",
        "SMTP:bob@corp.example",
        "SMTP:carl@eu.corp.example",
        "SMTP:dora@example.net",
    )
    routes = ["relay", "relay", "corp", "backup"]
    await store.submit(queued, now=time.time(), lifetime=3600, routes=routes)
    await store.close()
    scripts = {name: Script(("SMTP",)) for name in ("relay", "backup", "corp", "eu")}
    cfg = SpoolerConfig(
        transports=(
            transport("relay", scripts["relay"], address_types=("SMTP",)),
            transport("backup", scripts["backup"], address_types=("SMTP",)),
            transport(
                "corp",
                scripts["corp"],
                address_types=("SMTP",),
                domains=frozenset({"corp.example", ".corp.example"}),
            ),
            transport(
                "eu",
                scripts["eu"],
                address_types=("SMTP",),
                domains=frozenset({"eu.corp.example"}),
            ),
        ),
        policy=FAST,
        node="test-node",
    )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        assert await sp.wait_for(queued.id, timeout=5) is MessageState.SENT
        recipients = await sp.store.recipients(queued.id)
    assert [(r.address.value, r.route) for r in recipients] == [
        ("ann@example.org", "relay"),
        ("bob@corp.example", "corp"),
        ("carl@eu.corp.example", "eu"),
        ("dora@example.net", "backup"),
    ]
    assert "2 queued recipients routed again" in caplog.text


async def test_a_recipient_a_domain_transport_declined_stays_where_it_went(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``corp`` (corp.example) declined bob (not me) and the router gave him to the
    smart host: a start leaves him there, without a "routed again" pass that would
    hand him back to ``corp`` to be declined again at every start."""
    caplog.set_level(logging.INFO, logger="spoolbox.spooler")
    store = SQLiteStore(tmp_path / "spool.sqlite3")
    await store.open()
    queued = message("SMTP:bob@corp.example")
    now = time.time()
    await store.submit(queued, now=now, lifetime=3600, routes=["corp"])
    (job,) = await store.claim("corp", owner="n", now=now, lease=60)
    await store.settle(
        queued.id,
        [RecipientUpdate(0, RecipientState.QUEUED, keep_route=False, refused_by=("corp",))],
        owner="n",
        now=now,
        claim=job.claim,
    )
    await store.assign_routes([(queued.id, 0, "relay")])
    await store.close()
    relay, corp = Script(("SMTP",)), Script(("SMTP",))
    cfg = SpoolerConfig(
        transports=(
            transport("relay", relay, address_types=("SMTP",)),
            transport("corp", corp, address_types=("SMTP",), domains=frozenset({"corp.example"})),
        ),
        policy=FAST,
        node="test-node",
    )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        assert await sp.wait_for(queued.id, timeout=5) is MessageState.SENT
        (bob,) = await sp.store.recipients(queued.id)
    assert (bob.route, bob.refused_by) == ("relay", ("corp",))
    assert "routed again" not in caplog.text


async def test_mail_queued_for_a_transport_that_now_serves_other_types_is_routed_again(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload moved SMTP from ``old`` to ``new`` (``address_types`` changed): the SMTP
    recipients still queued for ``old`` go to ``new``; its FAX recipient stays."""
    caplog.set_level(logging.INFO, logger="spoolbox.spooler")
    store = SQLiteStore(tmp_path / "spool.sqlite3")
    await store.open()
    queued = message("SMTP:ann@example.org", "FAX:+15551234")
    await store.submit(queued, now=time.time(), lifetime=3600, routes=["old", "old"])
    await store.close()
    old, new = Script(("FAX",)), Script(("SMTP",))
    cfg = SpoolerConfig(
        transports=(
            transport("old", old, address_types=("FAX",)),
            transport("new", new, address_types=("SMTP",)),
        ),
        policy=FAST,
        node="test-node",
    )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        assert await sp.wait_for(queued.id, timeout=5) is MessageState.SENT
        recipients = await sp.store.recipients(queued.id)
    assert [(str(r.address), r.route) for r in recipients] == [
        ("SMTP:ann@example.org", "new"),
        ("FAX:+15551234", "old"),
    ]
    assert "1 queued recipient routed again: their transport is no longer" in caplog.text
    assert (new.sent, old.sent) == ([(queued.id, 0)], [(queued.id, 1)])


async def test_a_transport_that_declares_no_types_keeps_what_is_queued_for_it(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No ``address_types`` in its profile (its session says them at logon): what is
    queued for it is not routed again by type at the start."""
    caplog.set_level(logging.INFO, logger="spoolbox.spooler")
    store = SQLiteStore(tmp_path / "spool.sqlite3")
    await store.open()
    queued = message("SMTP:ann@example.org")
    await store.submit(queued, now=time.time(), lifetime=3600, routes=["quiet"])
    await store.close()
    quiet = Script(("SMTP",))
    cfg = SpoolerConfig(transports=(transport("quiet", quiet),), policy=FAST, node="test-node")
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        assert await sp.wait_for(queued.id, timeout=5) is MessageState.SENT
    assert "routed again" not in caplog.text
    assert quiet.sent == [(queued.id, 0)]
