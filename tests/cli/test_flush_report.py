"""The words and the exit code of ``spoolbox flush`` (src/spoolbox/cli/flush_report.py),
from report dicts as the local API sends them; the command itself is tested through the
real daemon in test_cli_flush.py."""

from __future__ import annotations

from typing import Any

import pytest

from spoolbox.cli.flush_report import (
    EXIT_DEFERRED,
    EXIT_FAILED,
    Severity,
    exit_code,
    outcome_phrase,
    result_line,
    severity,
    total_line,
)


def result(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "transport": "relay",
        "uploaded": 0,
        "downloaded": 0,
        "bytes": 0,
        "cancelled": False,
        "error": None,
        "seconds": 1.25,
        "timed_out": False,
        "delivered": 0,
        "deferred": 0,
        "failed": 0,
        "queued": 0,
    }
    return {**base, **kw}


def report(*results: dict[str, Any], **kw: Any) -> dict[str, Any]:
    keys = ("delivered", "deferred", "failed", "queued")
    totals = {k: sum(r[k] for r in results) for k in keys}
    return {"cancelled": False, "timed_out": False, "totals": totals, "results": list(results)}


def test_exit_codes_are_sysexits_and_do_not_collide() -> None:
    assert (EXIT_DEFERRED, EXIT_FAILED) == (75, 69)


@pytest.mark.parametrize(
    ("results", "extra", "code"),
    [
        ([], {}, 0),  # nothing to flush
        ([result(delivered=3)], {}, 0),
        ([result(downloaded=2)], {}, 0),
        ([result(delivered=1, deferred=1, queued=1)], {}, 75),
        ([result(queued=1)], {}, 75),  # not tried (transport offline): still queued
        ([result(deferred=1)], {}, 75),  # deferred and parked: not in "queued"
        ([result(timed_out=True)], {"timed_out": True}, 75),
        ([result(timed_out=True)], {}, 75),
        ([result()], {"timed_out": True}, 75),
        ([result(failed=1)], {}, 69),
        ([result(deferred=2), result(transport="b", failed=1)], {}, 69),  # failed wins
        ([result(error="IMAP login refused")], {}, 1),
        ([result(error="offline", queued=2)], {}, 75),
        ([result(delivered=1)], {"cancelled": True}, 130),
    ],
)
def test_exit_code(results: list[dict[str, Any]], extra: dict[str, Any], code: int) -> None:
    assert exit_code({**report(*results), **extra}) == code


def test_exit_code_when_interrupted_or_without_a_report() -> None:
    assert exit_code(report(result(delivered=1)), interrupted=True) == 130
    assert exit_code(None) == 130


def test_severity() -> None:
    assert severity(result(delivered=2)) is Severity.OK
    assert severity(result()) is Severity.OK
    for kw in (
        {"deferred": 1},
        {"queued": 1},
        {"timed_out": True},
        {"cancelled": True},
        {"error": "x"},
    ):
        assert severity(result(**kw)) is Severity.WARNING, kw
    assert severity(result(failed=1, deferred=1)) is Severity.FAILED


def test_phrases_and_lines() -> None:
    assert outcome_phrase(result()) == "nothing to do"
    assert outcome_phrase(result(deferred=1)) == "0 delivered, 1 deferred"
    assert (
        outcome_phrase(result(delivered=2, deferred=1, failed=3, queued=4), received=5)
        == "2 delivered, 1 deferred, 3 failed, 4 messages still queued, 5 received"
    )
    assert outcome_phrase(result(), received=2) == "2 received"
    # One message to three recipients, all deferred: the counts' units differ, named.
    assert outcome_phrase(result(deferred=3, queued=1)) == (
        "0 delivered, 3 deferred, 1 message still queued"
    )
    assert result_line(result(delivered=1)) == "relay: 1 delivered (1.2 s)"
    assert (
        result_line(result(queued=1, timed_out=True, cancelled=True, error="offline"))
        == "relay: 0 delivered, 1 message still queued "
        "(1.2 s; flush deadline reached; error: offline)"
    )
    assert result_line(result(cancelled=True)) == "relay: nothing to do (1.2 s; cancelled)"
    assert result_line(result(queued=2, held="max_rate 3/h reached; room again in 3,588 s")) == (
        "relay: 0 delivered, 2 messages still queued "
        "(1.2 s; max_rate 3/h reached; room again in 3,588 s)"
    )
    # An error before anything was done is not "nothing to do".
    assert result_line(result(error="imap: connection reset")) == (
        "relay: nothing done (1.2 s; error: imap: connection reset)"
    )
    assert result_line(result(downloaded=3, error="x")) == "relay: 3 received (1.2 s; error: x)"
    both = report(result(delivered=1, downloaded=2), result(transport="b", deferred=1, queued=1))
    assert total_line(both) == "flush: 1 delivered, 1 deferred, 1 message still queued, 2 received"
    assert total_line({**report(), "timed_out": True}) == (
        "flush: nothing to do (the flush deadline passed; what is left stays queued)"
    )
    stopped = report(result(transport="mbox", error="reset"), result(transport="pop", error="x"))
    assert total_line(stopped) == (
        "flush: nothing done; 2 transports stopped by an error (mbox, pop)"
    )
    partly = report(result(delivered=2), result(transport="mbox", downloaded=1, error="reset"))
    assert total_line(partly) == (
        "flush: 2 delivered, 1 received; 1 transport stopped by an error (mbox)"
    )
