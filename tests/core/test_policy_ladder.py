"""The exception ladders of _core/policy.py, by example table: what an exception of
``submit_message`` or ``end_message`` means (outcome, counted as a failure or not,
the diagnostic it leaves, the retry delay it carries), each row written out by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from helpers import FAST, message, spooler

from spoolbox import MessageState, RecipientState, TransportConfig
from spoolbox._core.policy import (
    END_MESSAGE_LADDER,
    SUBMIT_MESSAGE_LADDER,
    SubmitOutcome,
    outcome_of,
)
from spoolbox.contract.errors import (
    ContractViolation,
    InvalidObject,
    MessageCancelled,
    NetworkError,
    NotMe,
    SubmitCancelled,
    TransportBusy,
    TransportError,
    WaitRetry,
)
from spoolbox.contract.objects import OutboundMessage
from spoolbox.contract.support import Support
from spoolbox.model import EndFlags, LogonFlags, StatusCode
from spoolbox.testing import Act, FakeClock, Script
from spoolbox.testing.scripted import ScriptedProvider, ScriptedSession

Out = SubmitOutcome

#: exception, outcome, counted as the session's failure, diagnostic, retry delay
SUBMIT_EXAMPLES: list[tuple[Exception, SubmitOutcome, bool, str, float | None]] = [
    (TransportBusy("modem in use"), Out.BUSY, False, "", None),
    (NotMe("not my domain"), Out.NOT_ME, False, "", None),
    (WaitRetry(30, "greylisted"), Out.WAIT, False, "greylisted", 30.0),
    (WaitRetry(0), Out.WAIT, False, "transport asked to wait", 0.0),
    (NetworkError(12.5, "connection refused"), Out.WAIT, True, "connection refused", 12.5),
    (SubmitCancelled("no longer wanted"), Out.CANCEL, False, "", None),
    (MessageCancelled("m1"), Out.USER_CANCELLED, False, "", None),
    (
        ContractViolation("bad result"),
        Out.ERROR,
        True,
        "ContractViolation: bad result",
        None,
    ),
    (InvalidObject("dead message"), Out.ERROR, True, "InvalidObject: dead message", None),
    (TimeoutError("ran too long"), Out.ERROR, True, "TimeoutError: ran too long", None),
    (TransportError("plain"), Out.ERROR, True, "TransportError: plain", None),
    (ValueError("oops"), Out.ERROR, True, "ValueError: oops", None),
]

END_EXAMPLES: list[tuple[Exception, SubmitOutcome, bool, str, float | None]] = [
    (MessageCancelled("m1"), Out.USER_CANCELLED, False, "", None),
    # Once submit_message took the message, a busy or a wait is the provider's error.
    (TransportBusy("late"), Out.ERROR, True, "TransportBusy: late", None),
    (WaitRetry(30, "late wait"), Out.ERROR, True, "WaitRetry: late wait", None),
    (NotMe("late"), Out.ERROR, True, "NotMe: late", None),
    (TimeoutError("slow"), Out.ERROR, True, "TimeoutError: slow", None),
    (RuntimeError("boom"), Out.ERROR, True, "RuntimeError: boom", None),
]


#: ladder, exception, outcome, counted, diagnostic, delay
EXAMPLES = [("submit", *row) for row in SUBMIT_EXAMPLES] + [("end", *row) for row in END_EXAMPLES]
LADDERS = {"submit": SUBMIT_MESSAGE_LADDER, "end": END_MESSAGE_LADDER}


@pytest.mark.parametrize(
    ("ladder", "exc", "outcome", "counted", "reason", "delay"),
    EXAMPLES,
    ids=[f"{e[0]}-{type(e[1]).__name__}-{e[2].value}" for e in EXAMPLES],
)
def test_the_ladders_by_example(
    ladder: str,
    exc: Exception,
    outcome: SubmitOutcome,
    counted: bool,
    reason: str,
    delay: float | None,
) -> None:
    rung = outcome_of(exc, LADDERS[ladder])
    assert (rung.outcome, rung.counts_as_failure, rung.reason_of(exc), rung.delay_of(exc)) == (
        outcome,
        counted,
        reason,
        delay,
    )


@pytest.mark.parametrize("ladder", [SUBMIT_MESSAGE_LADDER, END_MESSAGE_LADDER])
def test_every_rung_is_reachable_and_the_last_takes_any_exception(ladder: tuple) -> None:
    """A subclass stands before its base: no rung is shadowed by an earlier one."""
    for i, rung in enumerate(ladder):
        shadowing = [r.exception for r in ladder[:i] if issubclass(rung.exception, r.exception)]
        assert shadowing == [], f"{rung.exception.__name__} is taken by {shadowing}"
    assert ladder[-1].exception is Exception


def test_an_exception_no_rung_takes_is_named() -> None:
    with pytest.raises(LookupError, match="no rung of the ladder takes KeyboardInterrupt"):
        outcome_of(KeyboardInterrupt(), SUBMIT_MESSAGE_LADDER)


class _BusyAtEnd(ScriptedSession):
    """Takes the message in submit_message, then says busy in end_message."""

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        await super().end_message(message)
        raise TransportBusy("busy too late")


class _BusyAtEndProvider(ScriptedProvider):
    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> ScriptedSession:
        support.modify_status_row(update=False, status_code=StatusCode.AVAILABLE)
        return _BusyAtEnd(support, config["script"])


async def test_the_host_reads_the_end_message_ladder_for_end_message() -> None:
    """A TransportBusy from end_message is the provider's error (4.3.0, counted,
    retried with backoff), not the busy of submit_message (busy_delay, uncounted)."""
    clock = FakeClock()
    script = Script(submit=[Act.RESEND_LATER])  # submit_message reports nothing
    entry = TransportConfig("smtp", _BusyAtEndProvider, options={"script": script})
    async with spooler(entry, clock=clock) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        (rec,) = await sp.store.recipients(info.id)
        assert (rec.state, rec.status, rec.diagnostic) == (
            RecipientState.QUEUED,
            "4.3.0",
            "TransportBusy: busy too late",
        )
        assert rec.retry_at == pytest.approx(clock.now() + FAST.retry_base)
        assert sp.host("smtp").counters["errors"] == 1
