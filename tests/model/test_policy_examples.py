"""Example tables for the outbound policy: every branch of plan_after_submit,
plan_result and backoff, and Policy's validation, each against values written out
by hand (not computed by the code under test).

The retry jitter is drawn from an RNG the test controls: a seeded ``random.Random``
(whose draw the test reads from a twin generator) and a generator pinned to one
draw, so both sides of the jitter and its bounds are checked exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from spoolbox import Policy
from spoolbox._core.policy import (
    PARKED_NOTE,
    SubmitOutcome,
    backoff,
    plan_after_submit,
    plan_result,
)
from spoolbox.model import EndFlags, RecipientResult, RecipientState
from spoolbox.store import RecipientUpdate

R = RecipientState
Out = SubmitOutcome
NOW = 1_000.0
DAY = 86_400.0

#: Distinct values, so a test tells which one a plan used.
POLICY = Policy(
    retry_base=60.0,
    retry_factor=2.0,
    retry_cap=3_600.0,
    retry_jitter=0.2,
    busy_delay=2.0,
    resend_later_delay=30.0,
)


class Draw(random.Random):
    """A generator whose every draw is ``value`` (``uniform(a, b)`` is then
    ``a + (b - a) * value``); subclassing Random and overriding random() is how the
    standard library means a generator to be replaced."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


class NoDraw(random.Random):
    def random(self) -> float:
        raise AssertionError("no jitter was asked for, yet the generator was used")


# -- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "draw", "expected"),
    [
        (1, 0.5, 60.0),  # the first retry: retry_base, jitter at its middle
        (1, 0.0, 48.0),  # the low side of the jitter: -20 %
        (1, 1.0, 72.0),  # the high side: +20 %
        (0, 0.5, 60.0),  # attempts below 1 count as the first retry
        (-3, 0.5, 60.0),
        (2, 0.5, 120.0),  # doubled per attempt
        (3, 0.25, 240.0 * 0.9),
        (6, 0.5, 1_920.0),
        (7, 0.5, 3_600.0),  # 3840 capped at retry_cap
        (7, 0.0, 3_600.0 * 0.8),  # the jitter applies after the cap...
        (7, 1.0, 3_600.0 * 1.2),  # ...both ways, so retries after an outage spread out
        (10_000, 1.0, 3_600.0 * 1.2),  # no overflow far past the cap
    ],
)
def test_backoff_examples(attempts: int, draw: float, expected: float) -> None:
    rng = Draw(draw)
    assert backoff(POLICY, attempts, rng) == pytest.approx(expected, rel=1e-12)
    assert rng.draws == 1


@pytest.mark.parametrize(("seed", "side"), [(1, "low"), (2, "high")])
def test_backoff_jitter_with_a_seeded_generator(seed: int, side: str) -> None:
    u = random.Random(seed).random()  # the twin's draw: what backoff's generator will draw
    assert (u < 0.5) == (side == "low")
    d = backoff(POLICY, 2, random.Random(seed))
    assert d == pytest.approx(120.0 * (0.8 + 0.4 * u), rel=1e-12)
    assert (d < 120.0) == (side == "low")


def test_backoff_without_jitter_draws_nothing_and_is_exact() -> None:
    p = replace(POLICY, retry_jitter=0.0)
    assert [backoff(p, n, NoDraw()) for n in (1, 2, 3, 4, 7, 50)] == [
        60.0,
        120.0,
        240.0,
        480.0,
        3_600.0,
        3_600.0,
    ]


def test_backoff_exponent_stops_at_64() -> None:
    # With a cap out of reach, the 65th retry and every later one wait 2**64 bases.
    p = Policy(retry_base=1.0, retry_factor=2.0, retry_cap=1e30, retry_jitter=0.0)
    assert backoff(p, 65) == 2.0**64
    assert backoff(p, 66) == 2.0**64
    assert backoff(p, 1_000_000) == 2.0**64
    assert backoff(p, 64) == 2.0**63


def test_backoff_factor_one_is_a_constant_delay() -> None:
    p = Policy(retry_base=7.0, retry_factor=1.0, retry_cap=100.0, retry_jitter=0.0)
    assert {backoff(p, n) for n in range(1, 30)} == {7.0}


def test_backoff_uses_the_module_generator_when_given_none() -> None:
    random.seed(5)
    u = random.random()
    random.seed(5)
    assert backoff(POLICY, 1) == pytest.approx(60.0 * (0.8 + 0.4 * u), rel=1e-12)


# -- plan_after_submit --------------------------------------------------------------------

PENDING = [(0, 0), (3, 2)]  # (index, attempts): a first try and a third


def plan(outcome: SubmitOutcome, **kw: object) -> list[RecipientUpdate]:
    args: dict[str, object] = {
        "pending": PENDING,
        "transport": "smtp",
        "policy": POLICY,
        "now": NOW,
        "expires_at": NOW + DAY,
    }
    args.update(kw)
    return plan_after_submit(outcome, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome", [Out.END_SENT, Out.NOT_ME])
def test_unhandled_recipients_go_to_the_next_transport(outcome: SubmitOutcome) -> None:
    assert plan(outcome) == [
        RecipientUpdate(
            i, R.QUEUED, route=None, keep_route=False, refused_by=("smtp",), retry_at=0.0
        )
        for i in (0, 3)
    ]


@pytest.mark.parametrize("outcome", [Out.END_RESEND_NOW, Out.LOST])
def test_resend_now_and_lost_queue_again_at_once(outcome: SubmitOutcome) -> None:
    assert plan(outcome) == [RecipientUpdate(i, R.QUEUED, retry_at=1_000.0) for i in (0, 3)]


@pytest.mark.parametrize(
    ("outcome", "retry_at"),
    [
        (Out.END_RESEND_LATER, 1_030.0),  # resend_later_delay
        (Out.BUSY, 1_002.0),  # busy_delay
        (Out.CANCEL, 1_030.0),  # a cancelled submit of a message not deferred: later
    ],
)
def test_later_outcomes_wait_their_own_delay(outcome: SubmitOutcome, retry_at: float) -> None:
    assert plan(outcome) == [RecipientUpdate(i, R.QUEUED, retry_at=retry_at) for i in (0, 3)]


def test_dont_resend_parks_with_the_note_that_brings_begin_deferred_back() -> None:
    parked = [RecipientUpdate(i, R.PARKED, diagnostic=PARKED_NOTE) for i in (0, 3)]
    assert plan(Out.END_DONT_RESEND) == parked
    # A cancelled submit of a message that was deferred (BEGIN_DEFERRED) parks it again.
    assert plan(Out.CANCEL, begin_deferred=True) == parked
    assert PARKED_NOTE.endswith("(SENTDEFERRED)")


def test_user_cancelled_recipients_are_cancelled_without_a_status() -> None:
    assert plan(Out.USER_CANCELLED) == [
        RecipientUpdate(i, R.CANCELLED, diagnostic="cancelled by user", status=None) for i in (0, 3)
    ]


@pytest.mark.parametrize(
    ("outcome", "status", "text"),
    [(Out.WAIT, "4.4.1", "transport asked to wait"), (Out.ERROR, "4.3.0", "transport error")],
)
def test_wait_and_error_with_the_transports_delay(
    outcome: SubmitOutcome, status: str, text: str
) -> None:
    assert plan(outcome, delay=5.0, rng=NoDraw()) == [
        RecipientUpdate(
            i, R.QUEUED, status=status, diagnostic=text, retry_at=1_005.0, count_attempt=True
        )
        for i in (0, 3)
    ]
    # A delay of zero is a delay (retry now), not "no delay given".
    assert [u.retry_at for u in plan(outcome, delay=0.0, rng=NoDraw())] == [1_000.0, 1_000.0]
    # The transport's reason replaces the default text.
    assert {u.diagnostic for u in plan(outcome, delay=5.0, reason="421 try later")} == {
        "421 try later"
    }


@pytest.mark.parametrize(("outcome", "status"), [(Out.WAIT, "4.4.1"), (Out.ERROR, "4.3.0")])
def test_wait_and_error_without_a_delay_back_off_by_attempt(
    outcome: SubmitOutcome, status: str
) -> None:
    ups = plan(outcome, rng=Draw(0.75))  # jitter factor 1.1
    # index 0 had 0 attempts: this is its first retry (60 s); index 3 had 2: its third.
    assert [(u.index, u.state, u.status) for u in ups] == [
        (0, R.QUEUED, status),
        (3, R.QUEUED, status),
    ]
    assert [u.retry_at for u in ups] == pytest.approx([1_000.0 + 66.0, 1_000.0 + 264.0])
    assert all(u.count_attempt for u in ups)


@pytest.mark.parametrize(("outcome", "status"), [(Out.WAIT, "4.4.1"), (Out.ERROR, "4.3.0")])
def test_a_retry_at_or_past_the_expiry_fails_with_5_4_7(
    outcome: SubmitOutcome, status: str
) -> None:
    text = "transport asked to wait" if outcome is Out.WAIT else "transport error"
    failed = RecipientUpdate(
        0,
        R.FAILED,
        status="5.4.7",
        diagnostic=f"delivery time expired; last error: {status} {text}",
        count_attempt=True,
    )
    one = [(0, 0)]
    assert plan(outcome, pending=one, delay=50.0, expires_at=1_050.0) == [failed]  # at it
    assert plan(outcome, pending=one, delay=60.0, expires_at=1_050.0) == [failed]  # past it
    (still,) = plan(outcome, pending=one, delay=50.0, expires_at=1_050.001)  # just before
    assert still.state is R.QUEUED and still.retry_at == 1_050.0


def test_nothing_pending_plans_nothing() -> None:
    assert all(plan(o, pending=[]) == [] for o in Out)


@pytest.mark.parametrize(
    ("flags", "outcome"),
    [
        (EndFlags.SENT, Out.END_SENT),
        (EndFlags.RESEND_NOW, Out.END_RESEND_NOW),
        (EndFlags.RESEND_LATER, Out.END_RESEND_LATER),
        (EndFlags.DONT_RESEND, Out.END_DONT_RESEND),
        # Several flags: the most deferring one wins.
        (EndFlags.RESEND_NOW | EndFlags.RESEND_LATER, Out.END_RESEND_LATER),
        (EndFlags.RESEND_LATER | EndFlags.DONT_RESEND, Out.END_DONT_RESEND),
        (EndFlags.RESEND_NOW | EndFlags.DONT_RESEND, Out.END_DONT_RESEND),
    ],
)
def test_end_flags_map_to_outcomes(flags: EndFlags, outcome: SubmitOutcome) -> None:
    assert SubmitOutcome.from_end_flags(flags) is outcome


# -- plan_result --------------------------------------------------------------------------


def result_plan(r: RecipientResult, **kw: object) -> RecipientUpdate:
    args: dict[str, object] = {
        "attempts": 2,
        "policy": POLICY,
        "now": NOW,
        "expires_at": NOW + DAY,
        "rng": NoDraw(),
    }
    args.update(kw)
    return plan_result(r, **args)  # type: ignore[arg-type]


def test_a_delivered_result_is_final_with_its_status() -> None:
    r = RecipientResult.delivered(4, "250 ok", status="2.1.5")
    assert result_plan(r) == RecipientUpdate(
        4, R.DELIVERED, status="2.1.5", diagnostic="250 ok", count_attempt=True
    )


def test_a_failed_result_is_final_with_its_status() -> None:
    r = RecipientResult.failed(2, "550 no such user", status="5.1.1")
    assert result_plan(r) == RecipientUpdate(
        2, R.FAILED, status="5.1.1", diagnostic="550 no such user", count_attempt=True
    )


def test_a_deferred_result_with_a_hint_waits_that_long() -> None:
    r = RecipientResult.deferred(1, "452 mailbox full", status="4.2.2", retry_after=90.0)
    assert result_plan(r) == RecipientUpdate(
        1,
        R.QUEUED,
        status="4.2.2",
        diagnostic="452 mailbox full",
        retry_at=1_090.0,
        count_attempt=True,
    )
    zero = RecipientResult.deferred(1, "later", status="4.0.0", retry_after=0.0)
    assert result_plan(zero).retry_at == 1_000.0  # zero is a hint too


@pytest.mark.parametrize(("attempts", "retry_at"), [(0, 1_000.0 + 54.0), (2, 1_000.0 + 216.0)])
def test_a_deferred_result_without_a_hint_backs_off_by_attempt(
    attempts: int, retry_at: float
) -> None:
    r = RecipientResult.deferred(1, "451 later", status="4.3.0")
    u = result_plan(r, attempts=attempts, rng=Draw(0.25))  # jitter factor 0.9
    assert (u.state, u.status, u.diagnostic, u.count_attempt) == (
        R.QUEUED,
        "4.3.0",
        "451 later",
        True,
    )
    assert u.retry_at == pytest.approx(retry_at)


def test_a_deferred_result_at_the_expiry_fails_with_5_4_7() -> None:
    r = RecipientResult.deferred(6, "451 later", status="4.3.0", retry_after=50.0)
    assert result_plan(r, expires_at=1_050.0) == RecipientUpdate(
        6,
        R.FAILED,
        status="5.4.7",
        diagnostic="delivery time expired; last error: 4.3.0 451 later",
        count_attempt=True,
    )
    assert result_plan(r, expires_at=1_050.5).state is R.QUEUED


# -- Policy's validation ------------------------------------------------------------------


def refused(message: str, **values: float) -> None:
    """Policy(**values) fails with exactly ``message``."""
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        Policy(**values)  # type: ignore[arg-type]
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["slice_budget", "lease", "lifetime", "retry_base", "retry_cap"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_durations_must_be_positive(name: str, value: float) -> None:
    refused(f"policy.{name} must be positive, not {value}", **{name: value})
    assert getattr(Policy(**{name: 0.001}), name) == 0.001  # type: ignore[arg-type]


def test_retry_factor_is_at_least_one() -> None:
    assert Policy(retry_factor=1.0).retry_factor == 1.0
    refused("policy.retry_factor must be >= 1", retry_factor=0.999)


@pytest.mark.parametrize("good", [0.0, 0.5, 0.999])
def test_retry_jitter_in_range(good: float) -> None:
    assert Policy(retry_jitter=good).retry_jitter == good


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.01])
def test_retry_jitter_out_of_range(bad: float) -> None:
    refused("policy.retry_jitter must be in [0, 1)", retry_jitter=bad)


def test_counts_are_at_least_one() -> None:
    assert Policy(failure_threshold=1, inbound_commit_batch=1).inbound_commit_batch == 1
    refused("policy.failure_threshold must be >= 1", failure_threshold=0)
    refused("policy.inbound_commit_batch must be >= 1, not 0", inbound_commit_batch=0)


@pytest.mark.parametrize(
    ("critsec_max", "critsec_grace"),
    [(0.0, 1.0), (-1.0, 1.0), (5.0, -0.5), (0.0, -0.5)],
)
def test_critical_section_limits_are_checked(critsec_max: float, critsec_grace: float) -> None:
    refused(
        "policy.critsec_max must be positive and critsec_grace >= 0, not "
        f"{critsec_max} and {critsec_grace}",
        critsec_max=critsec_max,
        critsec_grace=critsec_grace,
    )


def test_a_critical_section_may_have_no_grace() -> None:
    policy = Policy(critsec_max=0.001, critsec_grace=0.0)
    assert (policy.critsec_max, policy.critsec_grace) == (0.001, 0.0)
