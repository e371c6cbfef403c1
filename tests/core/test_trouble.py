"""A session's trouble (failed logons, calls, a FAILURE the provider sets): the state
table by example, and a running spooler's lines once per change of state."""

from __future__ import annotations

import logging

import pytest
from helpers import FAST, spooler, transport, until

from spoolbox._core.trouble import Change, Source, Trouble, recovered_line
from spoolbox.model import StatusCode, TransportNotifyFlags
from spoolbox.testing import Script


def test_a_streak_starts_continues_and_ends_with_a_success_of_its_source() -> None:
    t, change = Trouble().failed(Source.PROVIDER, "535 no")
    assert (t, change) == (Trouble(True, 1, Source.PROVIDER, "535 no"), Change.STARTED)
    t, change = t.failed(Source.CALL, "later")  # another source counts in the same streak
    assert (t.failures, t.source, t.reason, change) == (
        2,
        Source.PROVIDER,
        "later",
        Change.CONTINUES,
    )
    # A call that returns says nothing of the smart host: the provider's streak goes on.
    assert t.succeeded(Source.CALL) == (t, Change.NONE)
    assert t.by(Source.PROVIDER) and not t.by(Source.CALL)
    assert t.succeeded(Source.PROVIDER) == (Trouble(), Change.RECOVERED)
    assert Trouble().succeeded(Source.LOGON) == (Trouble(), Change.NONE)


def test_the_recovery_line_counts_the_failures() -> None:
    assert recovered_line("relay", 1) == "relay: back online after 1 failure"
    assert recovered_line("relay", 3) == "relay: back online after 3 failures"


async def test_failed_logons_are_logged_when_they_start_and_end_not_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "spoolbox.transport")
    script = Script(raise_in={"logon"})
    async with spooler(transport("gate", script), policy=FAST) as sp:
        await until(lambda: script.names().count("logon") >= 4, what="four failed logons")
        row = sp.status["gate"]
        assert row.status_code & StatusCode.FAILURE
        assert row.display_string == "logon failed: ScriptedError: scripted failure in logon"
        script.raise_in.clear()  # the cause is fixed
        await until(lambda: sp.host("gate").online, what="the logon that succeeds")
        row = sp.status["gate"]
    failed = script.names().count("logon") - 1
    assert failed >= 4
    assert not row.status_code & StatusCode.FAILURE
    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "spoolbox.transport" and r.levelno >= logging.INFO
    ]
    assert lines == [
        (
            logging.WARNING,
            "gate: logon failed: ScriptedError: scripted failure in logon; retrying in 0.05 s",
        ),
        (logging.INFO, f"gate: back online after {failed} failures"),
    ]
    quiet = [r for r in caplog.records if "failures in a row" in r.getMessage()]
    assert len(quiet) == failed - 1


async def test_a_notification_to_a_transport_that_is_not_logged_on_is_dropped() -> None:
    # A flush or a cancel that races a logoff (or a logon that keeps failing) has no
    # session left to tell: the spooler's own call must not fail for it.
    script = Script(raise_in={"logon"})
    async with spooler(transport("gate", script), policy=FAST) as sp:
        await until(lambda: script.names().count("logon") >= 1, what="a failed logon")
        host = sp.host("gate")
        assert host.session is None
        await host.notify(TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH)
        assert "transport_notify" not in script.names()
        assert sp.status["gate"].status_code & StatusCode.FAILURE
