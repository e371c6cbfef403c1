"""Example tables for recipient states: the legal transitions written out by hand
from the state diagram (not read from TRANSITIONS), and the queue message_state
gives for each mix of recipient states."""

from __future__ import annotations

import itertools

import pytest

from spoolbox.model import (
    TERMINAL,
    IllegalTransition,
    MessageState,
    RecipientState,
    check_transition,
    message_state,
)

R = RecipientState
M = MessageState

#: The diagram in spoolbox.model.states, edge by edge.
LEGAL = {
    (R.QUEUED, R.ACTIVE),  # claim
    (R.QUEUED, R.HELD),  # hold
    (R.QUEUED, R.FAILED),  # expire / no route
    (R.QUEUED, R.CANCELLED),  # cancel
    (R.QUEUED, R.QUEUED),  # reroute, retry now
    (R.ACTIVE, R.DELIVERED),
    (R.ACTIVE, R.FAILED),
    (R.ACTIVE, R.CANCELLED),
    (R.ACTIVE, R.PARKED),  # END_DONT_RESEND
    (R.ACTIVE, R.QUEUED),  # retry / not-me / lease lost
    (R.ACTIVE, R.HELD),
    (R.PARKED, R.QUEUED),  # SENTDEFERRED
    (R.PARKED, R.HELD),
    (R.PARKED, R.FAILED),
    (R.PARKED, R.CANCELLED),
    (R.HELD, R.QUEUED),  # release
    (R.HELD, R.CANCELLED),
    (R.HELD, R.FAILED),
}


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL))
def test_legal_transitions_pass(old: RecipientState, new: RecipientState) -> None:
    check_transition(old, new)
    check_transition(old, new, what="store.settle")


ILLEGAL = sorted(set(itertools.product(R, R)) - LEGAL)


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_illegal_transitions_fail_naming_both_states(
    old: RecipientState, new: RecipientState
) -> None:
    with pytest.raises(IllegalTransition, match="cannot go") as err:
        check_transition(old, new)
    assert str(err.value) == f"recipient cannot go from {old.value} to {new.value}"


def test_an_illegal_transition_says_where_it_was_tried() -> None:
    with pytest.raises(IllegalTransition, match="cannot go") as err:
        check_transition(R.DELIVERED, R.QUEUED, what="message m1, recipient 0")
    assert str(err.value) == (
        "recipient cannot go from delivered to queued (message m1, recipient 0)"
    )
    assert isinstance(err.value, RuntimeError)


def test_nothing_leaves_a_terminal_state() -> None:
    assert {R.DELIVERED, R.FAILED, R.CANCELLED} == TERMINAL
    assert not [pair for pair in LEGAL if pair[0] in TERMINAL]


@pytest.mark.parametrize(
    ("states", "waiting_on_retry", "expected"),
    [
        # Some recipient in a transport's hands: active, whatever the others do.
        ([R.ACTIVE], False, M.ACTIVE),
        ([R.ACTIVE], True, M.ACTIVE),
        ([R.QUEUED, R.ACTIVE, R.DELIVERED, R.HELD, R.PARKED], False, M.ACTIVE),
        # Some recipient waits for its transport: queued, or deferred until a retry time.
        ([R.QUEUED], False, M.QUEUED),
        ([R.QUEUED], True, M.DEFERRED),
        ([R.QUEUED, R.PARKED, R.HELD, R.FAILED], False, M.QUEUED),
        ([R.QUEUED, R.PARKED], True, M.DEFERRED),
        # Only parked recipients left to go: deferred (retry times do not matter).
        ([R.PARKED], False, M.DEFERRED),
        ([R.PARKED], True, M.DEFERRED),
        ([R.PARKED, R.HELD, R.DELIVERED], False, M.DEFERRED),
        # Every unfinished recipient held: on hold.
        ([R.HELD], False, M.HOLD),
        ([R.HELD], True, M.HOLD),
        ([R.HELD, R.DELIVERED, R.FAILED, R.CANCELLED], False, M.HOLD),
        # Done: sent if any was delivered, failed if none was but one failed...
        ([R.DELIVERED], False, M.SENT),
        ([R.DELIVERED, R.FAILED, R.CANCELLED], False, M.SENT),
        ([R.CANCELLED, R.DELIVERED], True, M.SENT),
        ([R.FAILED], False, M.FAILED),
        ([R.FAILED, R.CANCELLED], False, M.FAILED),
        ([R.CANCELLED, R.FAILED], True, M.FAILED),
        # ...and cancelled only when every recipient was cancelled.
        ([R.CANCELLED], False, M.CANCELLED),
        ([R.CANCELLED, R.CANCELLED], True, M.CANCELLED),
    ],
)
def test_message_state_examples(
    states: list[RecipientState], waiting_on_retry: bool, expected: MessageState
) -> None:
    assert message_state(states, waiting_on_retry=waiting_on_retry) is expected
    assert message_state(iter(states), waiting_on_retry=waiting_on_retry) is expected


def test_queued_recipients_are_not_waiting_on_a_retry_unless_told() -> None:
    assert message_state([R.QUEUED]) is M.QUEUED


def test_a_message_without_recipients_has_no_state() -> None:
    with pytest.raises(ValueError, match="at least one recipient") as err:
        message_state([])
    assert str(err.value) == "a message has at least one recipient"
