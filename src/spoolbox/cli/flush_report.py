"""What ``spoolbox flush`` makes of the daemon's flush report: the words of each
transport's line and of the total, how bad it went, and the exit code.

Pure functions of the report's JSON form (:func:`spoolbox.api.wire.flush_report_to_dict`);
:mod:`.flush_cmd` does the drawing and printing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "EXIT_DEFERRED",
    "EXIT_FAILED",
    "Severity",
    "exit_code",
    "outcome_phrase",
    "result_line",
    "severity",
    "total_line",
]

#: Something was not delivered yet and stays queued (deferred, not tried, timed out):
#: sysexits' EX_TEMPFAIL, what sendmail users expect.
EXIT_DEFERRED = 75
#: A recipient failed for good (bounced): sysexits' EX_UNAVAILABLE.
EXIT_FAILED = 69
_EXIT_OK, _EXIT_ERROR, _EXIT_INTERRUPTED = 0, 1, 130

_UPLOAD_COUNTS = ("delivered", "deferred", "failed", "queued")


class Severity(enum.IntEnum):
    """How a transport's part (or the whole flush) went, worst last."""

    OK = 0  # all delivered, or nothing to do
    WARNING = 1  # something not delivered yet (deferred, still queued, cut short, error)
    FAILED = 2  # a recipient failed for good


def _count(part: Mapping[str, Any], key: str) -> int:
    return int(part.get(key) or 0)


def outcome_phrase(part: Mapping[str, Any], *, received: int = 0) -> str:
    """``"2 delivered, 1 deferred, 1 message still queued"``: the counts of a result or
    of the totals (those that are not zero; ``delivered`` always once anything was
    sent or is waiting); recipients delivered, deferred and failed, messages queued."""
    words: list[str] = []
    if any(_count(part, key) for key in _UPLOAD_COUNTS):
        words.append(f"{_count(part, 'delivered')} delivered")
        words += [f"{_count(part, key)} {key}" for key in ("deferred", "failed") if part.get(key)]
        if queued := _count(part, "queued"):
            # Messages, where the counts before are recipients': named, as one
            # message of three recipients is 3 deferred and 1 still queued.
            words.append(f"{queued} message{'s' if queued > 1 else ''} still queued")
    if received:
        words.append(f"{received} received")
    return ", ".join(words) or "nothing to do"


def severity(result: Mapping[str, Any]) -> Severity:
    """How one transport's part went."""
    if _count(result, "failed"):
        return Severity.FAILED
    if (
        _count(result, "deferred")
        or _count(result, "queued")
        or result.get("timed_out")
        or result.get("cancelled")
        or result.get("error")
    ):
        return Severity.WARNING
    return Severity.OK


def result_line(result: Mapping[str, Any]) -> str:
    """One transport's line: ``relay: 0 delivered, 1 deferred, 1 message still queued
    (2.1 s)``, with why it was cut short, if it was."""
    words = outcome_phrase(result, received=_count(result, "downloaded"))
    if result.get("error") and words == "nothing to do":
        words = "nothing done"  # not "nothing to do": the transport could not say
    notes = [f"{float(result.get('seconds') or 0):.1f} s"]
    if result.get("held"):
        notes.append(str(result["held"]))  # why what is still queued waits
    if result.get("timed_out"):
        notes.append("flush deadline reached")
    elif result.get("cancelled"):
        notes.append("cancelled")
    if result.get("error"):
        notes.append(f"error: {result['error']}")
    return f"{result['transport']}: {words} ({'; '.join(notes)})"


def total_line(report: Mapping[str, Any]) -> str:
    """The summary: ``flush: 1 delivered, 2 deferred`` (and a deadline reached, the
    transports an error stopped)."""
    results = report.get("results", ())
    received = sum(_count(r, "downloaded") for r in results)
    phrase = outcome_phrase(report.get("totals") or {}, received=received)
    stopped = [str(r["transport"]) for r in results if r.get("error")]
    if stopped and phrase == "nothing to do":
        phrase = "nothing done"
    line = f"flush: {phrase}"
    if stopped:
        many = "s" if len(stopped) > 1 else ""
        line += f"; {len(stopped)} transport{many} stopped by an error ({', '.join(stopped)})"
    if report.get("timed_out"):
        line += " (the flush deadline passed; what is left stays queued)"
    return line


def exit_code(report: Mapping[str, Any] | None, *, interrupted: bool = False) -> int:
    """The command's exit code (docs/operations.md "Exit codes"): 130 cancelled, 69 a
    recipient failed, 75 something deferred or left queued (or the deadline passed), 1 a
    transport's flush failed otherwise, 0 all delivered or nothing to do."""
    if interrupted or report is None or report.get("cancelled"):
        return _EXIT_INTERRUPTED
    results = report.get("results", ())
    worst = max((severity(r) for r in results), default=Severity.OK)
    if worst is Severity.FAILED:
        return EXIT_FAILED
    left = any(_count(r, k) for r in results for k in ("deferred", "queued"))
    if left or report.get("timed_out") or any(r.get("timed_out") for r in results):
        return EXIT_DEFERRED
    if any(r.get("error") for r in results):
        return _EXIT_ERROR
    return _EXIT_OK
