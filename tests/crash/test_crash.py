"""Nothing accepted is lost: a real spooler process, SIGKILLed again and again.

A worker process (``worker.py``) runs the spooler on a SQLite file with the Maildir
transport and submits several thousand messages while it delivers.  The parent kills
it with SIGKILL at random moments (during start-up, submit, delivery and commit),
looks at the database exactly as the crash left it (opened read-only, so the parent
repairs nothing), restarts it, and at the end lets it finish.  Then:

* every message the worker acknowledged (``accepted <id>`` on its stdout, written
  only after ``submit`` returned) is delivered into the Maildir, or failed with a
  report: ``lost`` is 0;
* an acknowledged message is in the store after every kill, whole (content
  byte-identical, its recipient row present), and the database passes
  ``PRAGMA integrity_check`` after every kill;
* a message is delivered twice only if it was in flight (its recipient ACTIVE in
  the store) at a kill, at most once more per such kill: ``duplicates`` is at most
  ``inflight_bound``, the sum over the kills of the recipients ACTIVE at the kill.

The quick version runs in the normal test run; the long one needs ``--runslow``.
A second test drives the kill into the narrow windows on cue (inside the submit,
claim and settle transactions, and between "written into new/" and "settled").
Run ``pytest -s`` to see the figures; they are also in the report's properties.
The harness (start, kill, snapshot, verdict) is ``harness.py``, shared with
``test_crash_smtp.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Harness, Verdict, report, snapshot, soak, verdict


def _soak(
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    *,
    name: str,
    count: int,
    kills: int,
    seed: int,
) -> Verdict:
    h = Harness(tmp_path, count)
    return soak(h, record_property, name=name, kills=kills, seed=seed)


def test_sigkill_soak_quick(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    _soak(tmp_path, record_property, name="crash quick", count=2000, kills=8, seed=20240601)


def test_sigkill_soak_with_lots(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The same with submit_many: lots of 25 messages, one transaction each."""
    h = Harness(tmp_path, 1500, worker_args=["--lot=25"])
    soak(h, record_property, name="crash lots", kills=6, seed=20261121)


def test_a_lot_killed_in_its_transaction_leaves_no_trace(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL inside a submit_many transaction, part of a lot written: every lot is
    in the store whole or not at all, and none of an unacknowledged lot is there."""
    h = Harness(tmp_path, 80, worker_args=["--lot=10"])
    run, mid = h.run_to_crash_point("submit-txn", 15)
    assert not h.problems, "\n".join(h.problems)
    stored = snapshot(h.db).states.keys()
    lots = [{f"crash-{i:06d}" for i in range(s, s + 10)} for s in range(0, 80, 10)]
    for lot in lots:
        assert lot <= stored or not lot & stored, sorted(lot & stored)
        assert lot <= run.acks or not lot & run.acks, sorted(lot & run.acks)
    assert mid not in stored and mid not in run.acks
    h.run_to_end()
    v = verdict(h)
    report("kill inside a lot", v, record_property)
    assert not v.problems, "\n".join(v.problems)
    assert v.figures["lost"] == 0 and v.figures["accepted"] == 80


@pytest.mark.slow
def test_sigkill_soak_long(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    _soak(tmp_path, record_property, name="crash long", count=5000, kills=40, seed=1971)


# -- kills in the narrow windows, on cue ----------------------------------------------


@pytest.mark.parametrize(
    ("point", "inflight", "duplicates"),
    [
        # Inside the submit transaction: the message is neither acknowledged nor visible.
        ("submit-txn", 0, 0),
        # Inside the claim transaction: the claim is undone, nothing is in flight.
        ("claim-txn", 0, 0),
        # In new/, not reported: in flight at the kill, so delivered again (the one
        # duplicate at-least-once allows).
        ("after-publish", 1, 1),
        # Inside the settle transaction: the DELIVERED row is undone; the same.
        ("settle-txn", 1, 1),
    ],
)
def test_kill_in_window(
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    point: str,
    inflight: int,
    duplicates: int,
) -> None:
    h = Harness(tmp_path, 40)
    run, mid = h.run_to_crash_point(point, 5)
    assert not h.problems, "\n".join(h.problems)
    # The message at the crash point is in flight (or not, before its claim); the lane
    # may also hold claims on the rest of its batch (policy.claim_batch), not started.
    assert run.active.count(mid) == inflight
    assert len(run.active) <= 8
    if point == "submit-txn":
        assert mid not in run.acks
        assert mid not in snapshot(h.db).states  # the open transaction left no trace
    h.run_to_end()
    v = verdict(h)
    report(f"kill at {point}", v, record_property)
    assert not v.problems, "\n".join(v.problems)
    assert v.figures["lost"] == 0
    assert v.figures["accepted"] == 40
    assert v.figures["inflight_bound"] == len(run.active)
    assert v.duplicated == ({mid: 1} if duplicates else {})
