"""spoolbox._core.recovery.StoreOutages: the store's failures and the settles it
acknowledged lately, as the outbound lanes read them after a failure."""

from __future__ import annotations

from spoolbox._core.recovery import ACKED_KEPT, UNSURE_BEFORE, AckedSettle, StoreOutages
from spoolbox.model import RecipientState
from spoolbox.store import RecipientUpdate


def _acked(at: float, transport: str = "relay", mid: str = "m") -> AckedSettle:
    return AckedSettle(
        at=at,
        transport=transport,
        message_id=mid,
        updates=(RecipientUpdate(0, RecipientState.DELIVERED),),
        owner="n1",
        now=at,
        claim=1,
        drop_finished=(),
    )


def test_no_failure_no_unsure_settle() -> None:
    outages = StoreOutages()
    outages.acked(_acked(10.0))
    assert outages.count == 0
    assert outages.first_failure_after(0) is None
    assert outages.unsure("relay", 0) == ()


def test_failures_count_and_bound_the_leases() -> None:
    outages = StoreOutages()
    outages.noted(100.0, 120.0)
    outages.noted(103.0, 120.0)
    assert (outages.count, outages.leased_until) == (2, 223.0)
    assert outages.first_failure_after(0) == 100.0
    assert outages.first_failure_after(1) == 103.0
    assert outages.first_failure_after(2) is None


def test_unsure_settles_are_those_from_a_second_before_the_first_failure_to_the_last() -> None:
    outages = StoreOutages()
    for at, mid in ((98.5, "old"), (99.5, "just-before"), (101.0, "between")):
        outages.acked(_acked(at, mid=mid))
    outages.acked(_acked(99.8, transport="other", mid="other"))
    outages.noted(100.0, 120.0)
    outages.noted(102.0, 120.0)
    outages.acked(_acked(103.0, mid="after"))  # a store that has not failed since
    assert 100.0 - UNSURE_BEFORE == 99.0
    assert [s.message_id for s in outages.unsure("relay", 0)] == ["just-before", "between"]
    assert [s.message_id for s in outages.unsure("other", 0)] == ["other"]
    # A lane that saw the first failure looks from a second before the second one.
    assert [s.message_id for s in outages.unsure("relay", 1)] == ["between"]
    assert outages.unsure("relay", 2) == ()
    # A node that noticed the crash up to a second late looks a second further back.
    assert [s.message_id for s in outages.unsure("relay", 0, noticed_within=1.0)] == [
        "old",
        "just-before",
        "between",
    ]


def test_only_the_latest_acknowledged_settles_are_kept() -> None:
    outages = StoreOutages()
    for i in range(ACKED_KEPT + 10):
        outages.acked(_acked(1000.0 + i * 1e-6, mid=f"m{i}"))
    outages.noted(1000.5, 120.0)
    unsure = outages.unsure("relay", 0)
    assert len(unsure) == ACKED_KEPT
    assert unsure[0].message_id == "m10"
