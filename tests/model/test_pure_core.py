"""Property tests of the pure core: addresses, states, routing, backoff, outcome plans."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolbox import Address, AddressError, MessageError, NewMessage, Policy
from spoolbox._core.policy import SubmitOutcome, backoff, plan_after_submit, plan_result
from spoolbox.model import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    MessageState,
    RecipientResult,
    RecipientState,
    ResultError,
    check_transition,
    message_state,
)
from spoolbox.routing import NoRoute, Route, RouteEntry, RoutingTable, Wait

types = st.sampled_from(["SMTP", "FAX", "MAILDIR", "X400", "SMS"])
values = st.text(
    st.characters(
        min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc", "Zl", "Zp", "Zs")
    ),
    min_size=1,
    max_size=60,
)


@given(types, values)
def test_address_round_trips(t: str, v: str) -> None:
    a = Address(t, v)
    assert Address.parse(str(a), strict=False) == a
    if a.type == "SMTP" and ("<" in v or ">" in v):  # not a bare SMTP address
        with pytest.raises(AddressError):
            Address.parse(str(a))
    else:
        assert Address.parse(str(a)) == a


@pytest.mark.parametrize(
    "bad",
    [
        "bob@example.org",
        "SMTP:",
        "SMTP:bob\r\nBcc: evil@x",
        "SMTP:a\x00b",
        "1X:y",
        "SMTP: bob@x",
        "SMTP:a\u2028b",
        "SMTP:a\x85b",
    ],
)
def test_bad_addresses_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(AddressError) as err:
        Address.parse(bad)
    assert str(err.value)


def test_bad_messages_are_refused_before_any_store_sees_them() -> None:
    a = Address("SMTP", "bob@example.org")
    with pytest.raises(MessageError, match="at least one recipient"):
        NewMessage(None, (), b"Subject: x\r\n\r\n")
    with pytest.raises(MessageError, match="NUL byte at offset 9"):
        NewMessage(None, (a,), b"Subject: \x00\r\n\r\n")
    with pytest.raises(MessageError, match="empty"):
        NewMessage(None, (a,), b"  \r\n")
    with pytest.raises(MessageError, match="message id"):
        NewMessage(None, (a,), b"Subject: x\r\n\r\n", id="bad id!")
    dup = NewMessage(None, (a, a), b"Subject: x\r\n\r\n")
    assert dup.recipients == (a,)


@pytest.mark.parametrize("ret", [True, False, None])
def test_return_content_is_a_bool_or_none(ret: bool | None) -> None:
    a = Address("SMTP", "bob@example.org")
    assert NewMessage(None, (a,), b"Subject: x\r\n\r\n", return_content=ret).return_content is ret
    assert NewMessage(None, (a,), b"Subject: x\r\n\r\n").return_content is None


@pytest.mark.parametrize("bad", [1, 0, "FULL", "hdrs", b"full"])
def test_return_content_of_another_kind_is_refused_saying_what_it_got(bad: object) -> None:
    a = Address("SMTP", "bob@example.org")
    with pytest.raises(
        MessageError, match=rf"return_content must be .*, not {re.escape(repr(bad))}$"
    ):
        NewMessage(None, (a,), b"Subject: x\r\n\r\n", return_content=bad)  # type: ignore[arg-type]


def test_from_bytes_takes_recipients_from_headers() -> None:
    m = NewMessage.from_bytes(
        b"From: A <a@x.org>\r\nTo: b@y.org, C <c@z.org>\r\nCc: d@w.org\r\nSubject: s\r\n\r\nx"
    )
    assert [str(r) for r in m.recipients] == ["SMTP:b@y.org", "SMTP:c@z.org", "SMTP:d@w.org"]
    assert str(m.sender) == "SMTP:a@x.org"


states = st.sampled_from(list(RecipientState))


@given(states, states)
def test_nothing_leaves_a_terminal_state(old: RecipientState, new: RecipientState) -> None:
    # The legal edges themselves are listed by hand in test_states_examples.py.
    if old in TERMINAL:
        assert not TRANSITIONS[old]
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


@given(st.lists(states, min_size=1, max_size=8))
def test_message_state_is_done_only_when_every_recipient_is(rs: list[RecipientState]) -> None:
    ms = message_state(rs)
    done = ms in (MessageState.SENT, MessageState.FAILED, MessageState.CANCELLED)
    assert done == all(r in TERMINAL for r in rs)
    if RecipientState.ACTIVE in rs:
        assert ms is MessageState.ACTIVE


entries = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.one_of(st.none(), st.frozensets(types | st.just("*")))),
    min_size=1,
    max_size=6,
    unique_by=lambda e: e[0],
)


@given(entries, types, st.lists(st.sampled_from("abcdef"), max_size=3))
def test_routing_picks_the_first_willing_transport(
    es: list[tuple[str, frozenset[str] | None]], t: str, refused: list[str]
) -> None:
    table = RoutingTable.build(RouteEntry(n, ts) for n, ts in es)
    d = table.decide(t.lower(), refused)
    # The oracle works on the generated entries, not on the table the code built:
    # specific transports in the given order, then the wildcard ones.
    specific = [(n, ts) for n, ts in es if ts is not None and "*" not in ts]
    wild = [(n, ts) for n, ts in es if ts is not None and "*" in ts]
    assert table.names == tuple(n for n, ts in es if ts is None or "*" not in ts) + tuple(
        n for n, _ in wild
    )
    willing = [n for n, ts in specific + wild if n not in refused and (t in ts or "*" in ts)]
    unknown = [n for n, ts in es if ts is None and n not in refused]
    if willing:
        assert d == Route(willing[0])
    elif unknown:
        assert d == Wait(tuple(unknown))
    else:
        assert isinstance(d, NoRoute)
        assert t in d.reason


@given(st.integers(1, 200), st.floats(0, 0.5))
def test_backoff_grows_to_a_cap_within_jitter(n: int, j: float) -> None:
    p = Policy(retry_base=60, retry_factor=2, retry_cap=3600, retry_jitter=j)
    d = backoff(p, n)
    ideal = min(3600.0, 60.0 * 2 ** min(n - 1, 64))
    assert ideal * (1 - j) - 1e-6 <= d <= ideal * (1 + j) + 1e-6
    if j == 0 and n > 1:
        assert backoff(p, n) >= backoff(p, n - 1)


@given(st.sampled_from(list(SubmitOutcome)), st.lists(st.integers(0, 5), max_size=6))
def test_every_pending_recipient_gets_one_legal_update(
    outcome: SubmitOutcome, attempts: list[int]
) -> None:
    pending = list(enumerate(attempts))
    ups = plan_after_submit(
        outcome,
        pending=pending,
        transport="t",
        policy=Policy(),
        now=1000.0,
        expires_at=1000.0 + 86400,
        delay=5.0,
    )
    assert sorted(u.index for u in ups) == [i for i, _ in pending]
    for u in ups:
        check_transition(RecipientState.ACTIVE, u.state)


def test_a_retry_past_the_lifetime_fails_with_5_4_7() -> None:
    r = RecipientResult.deferred(0, "try later", status="4.4.1", retry_after=100)
    u = plan_result(r, attempts=3, policy=Policy(), now=1000.0, expires_at=1050.0)
    assert u.state is RecipientState.FAILED
    assert u.status == "5.4.7"
    assert "4.4.1" in (u.diagnostic or "")


def test_results_must_agree_with_their_status_class() -> None:
    with pytest.raises(ResultError, match="class 5"):
        RecipientResult.delivered(0, status="5.1.1")
    with pytest.raises(ResultError, match="RFC 3463"):
        RecipientResult.failed(0, "x", status="550")
    r = RecipientResult.failed(0, "line one\r\nBcc: evil@x", status="5.1.1")
    assert "\n" not in r.diagnostic
