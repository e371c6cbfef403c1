"""What a flush reports it achieved (issue #15), through Spooler.flush with the scripted
provider: recipients delivered, deferred and failed in the upload phase, counted from
the results the session reported (the last one of each recipient), the messages still
queued afterwards, and the flush deadline that stops waiting without losing mail.
Also the report's wire form (keys only ever added).  Expected counts are written out."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from helpers import FAST, SLOW_TIMERS, message, spooler, transport, until

from spoolbox import FlushReport, MessageState, Policy
from spoolbox._core.flush import (
    TransportFlushResult,
    count_outcomes,
    outcome_of_update,
    outcome_totals,
)
from spoolbox.api.wire import flush_report_to_dict
from spoolbox.model import RecipientState, StatusCode, TransportNotifyFlags
from spoolbox.store import RecipientUpdate
from spoolbox.testing import Act, FakeClock, Script

S = RecipientState


def test_outcome_of_each_update() -> None:
    assert [outcome_of_update(RecipientUpdate(0, state)) for state in S] == [
        "deferred",  # queued (again)
        None,  # active: no outcome
        "deferred",  # parked
        "deferred",  # held
        "delivered",
        "failed",
        None,  # cancelled by the user
    ]
    assert [s.value for s in S] == [
        "queued",
        "active",
        "parked",
        "held",
        "delivered",
        "failed",
        "cancelled",
    ]
    # Handed to another transport (route changed): counted by the one that takes it.
    assert outcome_of_update(RecipientUpdate(0, S.QUEUED, keep_route=False)) is None


def test_the_last_outcome_of_a_recipient_counts() -> None:
    tally: dict[tuple[str, int], str] = {}
    count_outcomes(tally, "m1", [RecipientUpdate(0, S.QUEUED), RecipientUpdate(1, S.FAILED)])
    count_outcomes(tally, "m2", [RecipientUpdate(0, S.QUEUED)])
    assert outcome_totals(tally) == {"delivered": 0, "deferred": 2, "failed": 1}
    count_outcomes(tally, "m1", [RecipientUpdate(0, S.DELIVERED)])  # resent, delivered
    count_outcomes(tally, "m2", [RecipientUpdate(0, S.QUEUED, keep_route=False)])  # rerouted
    assert tally == {("m1", 0): "delivered", ("m1", 1): "failed"}
    assert outcome_totals(tally) == {"delivered": 1, "deferred": 0, "failed": 1}
    assert outcome_totals({}) == {"delivered": 0, "deferred": 0, "failed": 0}


async def test_a_flush_counts_delivered_deferred_failed_and_still_queued() -> None:
    # One act per message, in order: delivered, deferred (4.4.1, queued for a retry),
    # failed (5.1.1), deferred by the transport (parked: not claimable, not queued).
    # No sender: no bounce to send in the same flush.
    script = Script(("SMTP",), submit=[Act.SUCCEED, Act.FAIL_TEMP, Act.FAIL_PERM, Act.DEFER])
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            for i in range(4):
                await sp.submit(message(f"SMTP:u{i}@x{i}.org", sender=None))
            report = await sp.flush(upload=True, download=False)
    result = report.for_transport("smtp")
    assert result.uploaded == 4
    assert (result.delivered, result.deferred, result.failed, result.queued) == (1, 2, 1, 1)
    assert not (result.timed_out or report.timed_out or result.cancelled)
    assert [report.total(k) for k in ("delivered", "deferred", "failed", "queued")] == [1, 2, 1, 1]


async def test_a_recipient_resent_in_the_same_flush_counts_once() -> None:
    script = Script(("SMTP",), submit=[Act.RESEND_NOW, Act.SUCCEED])
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org", "SMTP:carol@example.net"))
            report = await sp.flush(upload=True, download=False)
    result = report.for_transport("smtp")
    assert (result.delivered, result.deferred, result.failed, result.queued) == (2, 0, 0, 0)
    assert script.names().count("submit_message") == 2  # resent once, then delivered


async def test_a_download_only_flush_counts_no_upload_outcomes() -> None:
    script = Script(("SMTP",), inbound=[b"Subject: x\r\n\r\ny\r\n"], flush_sets_bits=False)
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            report = await sp.flush(upload=False, download=True)
    result = report.for_transport("smtp")
    # Nothing was sent, and "still queued" is an upload's count: not asked, not counted.
    assert (result.delivered, result.deferred, result.failed, result.queued) == (0, 0, 0, 0)


async def test_the_deadline_ends_the_transport_under_way_and_skips_the_rest() -> None:
    """The policy's flush_deadline: the first transport's message hangs, the deadline
    ends its part (END_OUTBOUND_FLUSH, bit cleared), the second is not flushed at all;
    the hanging message is still queued (in the session's hands), nothing is lost."""
    hangs = Script(("SMTP",), submit=[Act.HANG])
    second = Script(("FAX",))
    policy = replace(FAST, flush_deadline=0.3)
    async with spooler(transport("a", hangs), transport("b", second), policy=policy) as sp:
        await sp.wait_ready(timeout=5)
        mid = (await sp.submit(message("SMTP:bob@example.org"))).id
        await until(lambda: "submit_message" in hangs.names(), what="the message to hang")
        second.calls.clear()
        report = await sp.flush(upload=True, download=False)
        a, b = report.results
        assert (a.transport, a.timed_out, a.cancelled, a.queued) == ("a", True, False, 1)
        assert (b.transport, b.timed_out, b.cancelled) == ("b", True, False)
        assert report.timed_out and not report.cancelled
        assert "flush_queues" not in second.names()
        notes = [d for c, d in hangs.calls if c == "transport_notify"]
        assert notes[-2:] == [
            TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
            TransportNotifyFlags.END_OUTBOUND_FLUSH,
        ]
        assert not sp.status["a"].status_code & StatusCode.OUTBOUND_FLUSH
        assert await sp.store.state_of(mid, now=sp.clock.now()) is MessageState.ACTIVE


async def test_a_deadline_given_to_the_flush_overrides_the_policy() -> None:
    hangs = Script(("SMTP",), submit=[Act.HANG])
    policy = replace(FAST, flush_deadline=None)  # no deadline by default
    async with spooler(transport("a", hangs), policy=policy) as sp:
        await sp.wait_ready(timeout=5)
        await sp.submit(message("SMTP:bob@example.org"))
        await until(lambda: "submit_message" in hangs.names(), what="the message to hang")
        handle = sp.start_flush(deadline=0.2)
        assert handle.deadline == 0.2
        assert sp.start_flush(transport="a").deadline is None
        report = await asyncio.wait_for(handle.wait(), 30)
        assert report.timed_out and report.results[0].timed_out
        with pytest.raises(ValueError, match="positive"):
            sp.start_flush(deadline=0)


def test_the_policy_refuses_a_deadline_that_is_not_positive() -> None:
    assert Policy().flush_deadline == 120.0
    with pytest.raises(ValueError, match="flush_deadline"):
        Policy(flush_deadline=0)
    with pytest.raises(ValueError, match="flush_deadline"):
        Policy(flush_deadline=-1.0)
    assert Policy(flush_deadline=None).flush_deadline is None


def test_the_wire_form_keeps_the_old_keys_and_adds_the_counts() -> None:
    report = FlushReport(
        results=[
            TransportFlushResult("a", uploaded=2, delivered=1, deferred=1, queued=1, seconds=0.5),
            TransportFlushResult(
                "b", failed=2, queued=3, timed_out=True, error="boom", held="max_rate 3/h ..."
            ),
        ],
        timed_out=True,
    )
    wire = flush_report_to_dict(report)
    assert wire == {
        "cancelled": False,
        "timed_out": True,
        "totals": {"delivered": 1, "deferred": 1, "failed": 2, "queued": 4},
        "results": [
            {
                "transport": "a",
                "uploaded": 2,
                "downloaded": 0,
                "bytes": 0,
                "cancelled": False,
                "error": None,
                "seconds": 0.5,
                "timed_out": False,
                "held": None,
                "delivered": 1,
                "deferred": 1,
                "failed": 0,
                "queued": 1,
            },
            {
                "transport": "b",
                "uploaded": 0,
                "downloaded": 0,
                "bytes": 0,
                "cancelled": False,
                "error": "boom",
                "seconds": 0.0,
                "timed_out": True,
                "held": "max_rate 3/h ...",
                "delivered": 0,
                "deferred": 0,
                "failed": 2,
                "queued": 3,
            },
        ],
    }


def test_a_rerouted_recipient_never_counted_before_is_no_error() -> None:
    tally: dict[tuple[str, int], str] = {}
    count_outcomes(tally, "m3", [RecipientUpdate(0, S.QUEUED, keep_route=False)])
    assert tally == {}


async def test_a_finished_flush_stops_its_deadline_timer() -> None:
    """On a fake clock: a flush that ended leaves no timer behind that could mark its
    report timed out when the deadline's time comes (the clock is moved past it)."""
    clock = FakeClock()
    policy = replace(SLOW_TIMERS, flush_deadline=30.0)
    async with spooler(transport("smtp", Script(("SMTP",))), policy=policy, clock=clock) as sp:
        await sp.wait_ready(timeout=5)
        handle = sp.start_flush(upload=True, download=False)
        report = await asyncio.wait_for(handle.wait(), 30)
        assert not report.timed_out
        await clock.advance(31.0)
        assert not report.timed_out and not report.results[0].timed_out


async def test_a_flush_done_before_its_deadline_reports_normally_and_ends_its_timer() -> None:
    """A deadline that never comes: the flush ends as any other, its report whole, and
    the deadline's timer is ended with it (no task is left behind)."""
    script = Script(("SMTP",))
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org", sender=None))
            handle = sp.start_flush(download=False, deadline=60.0)
            report = await handle
            assert handle.done()
            names = {t.get_name() for t in asyncio.all_tasks()}
    assert not (report.cancelled or report.timed_out)
    result = report.for_transport("smtp")
    assert (result.delivered, result.queued, result.error) == (1, 0, None)
    assert "flush-deadline" not in names
