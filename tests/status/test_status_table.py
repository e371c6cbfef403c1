"""The status table's own rules: merging updates, versions, events, bad columns."""

from __future__ import annotations

import dataclasses

import pytest

from spoolbox.model import Progress, ResourceType, StatusCode
from spoolbox.status import StatusRow, StatusTable, SubscriberDropped


def _table(now: list[float]) -> StatusTable:
    return StatusTable(clock=lambda: now[0])


def _row() -> StatusRow:
    return StatusRow(
        name="smtp",
        resource_type=ResourceType.TRANSPORT_PROVIDER,
        provider_display="SMTP",
        status_code=StatusCode.AVAILABLE,
        status_string="idle",
        progress=Progress(done=1, total=4),
        identity="relay@example.org",
        counters={"sent": 1},
        detail="nothing yet",
    )


def test_update_merges_the_given_columns_and_keeps_every_other() -> None:
    now = [100.0]
    table = _table(now)
    first = table.put(_row())
    now[0] = 101.5
    new = table.update("smtp", status_string="sending", counters={"sent": 2})
    # Every column not named is carried over as dataclasses.replace would.
    assert new == dataclasses.replace(
        first, status_string="sending", counters={"sent": 2}, updated_at=101.5, version=2
    )
    assert table["smtp"] is new
    assert (first.version, first.updated_at) == (1, 100.0)


def test_an_update_that_changes_nothing_makes_no_row_and_no_event() -> None:
    now = [5.0]
    table = _table(now)
    seen: list[object] = []
    table.add_observer(seen.append)
    row = table.put(_row())
    now[0] = 6.0
    assert table.update("smtp", status_string="idle", counters={"sent": 1}) is row
    assert len(seen) == 1  # the put only
    changed = table.update("smtp", status_code=StatusCode.AVAILABLE | StatusCode.OUTBOUND_ACTIVE)
    assert len(seen) == 2 and changed.version == 2 and changed.updated_at == 6.0


def test_an_unknown_column_is_refused_by_name_and_the_row_is_kept() -> None:
    table = _table([1.0])
    row = table.put(_row())
    with pytest.raises(TypeError, match="'colour'"):
        table.update("smtp", status_string="x", colour="red")
    with pytest.raises(TypeError, match="'colour'"):
        table.update("smtp", colour="red", status_string="x")
    assert table["smtp"] is row


def test_an_update_of_a_missing_row_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        _table([1.0]).update("nowhere", status_string="x")


async def test_a_subscriber_that_falls_behind_holds_nothing_and_sees_the_drop_first() -> None:
    table = _table([0.0])
    table.put(_row())
    slow = table.subscribe(maxsize=3, name="slow")  # the row, as added, first
    kept = table.subscribe(maxsize=10, name="kept")
    for n in range(5):
        table.update("smtp", detail=f"change {n}")
    assert slow.dropped
    assert table.statistics()["subscribers"] == 1
    assert table.statistics()["subscribers_dropped"] == 1
    # At once: none of the changes it missed comes before the drop.
    with pytest.raises(SubscriberDropped):
        await anext(slow)
    # A subscriber that kept up and is closed still reads what was queued for it.
    kept.close()
    assert [change.new.detail async for change in kept if change.new] == [
        "nothing yet",
        *(f"change {n}" for n in range(5)),
    ]
