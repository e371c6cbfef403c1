"""``spoolbox._quick.quick_replace``: ``dataclasses.replace`` for a frozen dataclass
with slots, written for the class: the same value as ``replace`` makes, every column
copied or changed once, an unknown column refused, the old value untouched, and the
new one as frozen; classes it cannot serve exactly are refused."""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field, replace
from typing import Any

import pytest

from spoolbox._quick import _draft_of, quick_replace
from spoolbox.model import Progress, ResourceType, StatusCode
from spoolbox.status.table import StatusRow, StatusTable


def _row(**changes: Any) -> StatusRow:
    row = StatusRow(
        name="smtp",
        resource_type=ResourceType.TRANSPORT_PROVIDER,
        provider_display="SMTP",
        status_code=StatusCode.AVAILABLE,
        status_string="idle",
        progress=Progress(done=1, total=3, text="one of three"),
        counters={"delivered": 4},
        detail="last error: none",
        updated_at=12.5,
        version=7,
    )
    return replace(row, **changes)


_REPLACE = quick_replace(StatusRow)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"status_string": "sending"},
        {"counters": {"delivered": 5}, "updated_at": 13.0, "version": 8},
        {"status_code": StatusCode.AVAILABLE | StatusCode.OUTBOUND_ACTIVE, "progress": None},
        {f.name: getattr(_row(name="other"), f.name) for f in dataclasses.fields(StatusRow)},
    ],
)
def test_the_value_is_the_one_replace_makes(changes: dict[str, Any]) -> None:
    old = _row()
    new = _REPLACE(old, changes)
    assert type(new) is StatusRow
    assert new == replace(old, **changes)
    for f in dataclasses.fields(StatusRow):  # each column, the change or the old one
        assert getattr(new, f.name) is changes.get(f.name, getattr(old, f.name))
    assert old == _row()  # the old row is not touched


def test_an_unknown_column_is_refused_as_replace_refuses_it() -> None:
    old = _row()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        _REPLACE(old, {"status_string": "x", "colour": "red"})
    with pytest.raises(TypeError, match="colour"):
        replace(old, colour="red")  # type: ignore[call-arg]


def test_the_new_value_is_as_frozen_as_the_old() -> None:
    new = _REPLACE(_row(), {"version": 9})
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.version = 10  # type: ignore[misc]
    assert not hasattr(new, "__dict__")  # slots, as the old one


def test_the_status_table_updates_through_it() -> None:
    table = StatusTable(clock=lambda: 99.0)
    table.put(_row())
    seen: list[Any] = []
    table.add_observer(seen.append)
    new = table.update("smtp", status_string="sending", counters={"delivered": 5})
    assert new == replace(
        _row(), status_string="sending", counters={"delivered": 5}, updated_at=99.0, version=2
    )
    assert table.get("smtp") is new
    assert [(c.old.version, c.new.version) for c in seen] == [(1, 2)]
    with pytest.raises(TypeError, match="colour"):
        table.update("smtp", colour="red")
    assert table.get("smtp") is new  # nothing changed by the refused update
    assert table.update("smtp", status_string="sending") is new  # no change, no event
    assert len(seen) == 1


def test_a_row_is_written_on_a_draft_of_the_same_slots_that_becomes_a_row() -> None:
    draft = _draft_of(StatusRow)
    assert draft is not None and draft.__slots__ == StatusRow.__slots__
    assert type(_REPLACE(_row(), {})) is StatusRow


@dataclass(frozen=True, slots=True)
class _Base:
    a: int


@dataclass(frozen=True, slots=True)
class _Derived(_Base):
    b: str = "b"
    c: tuple[int, ...] = ()


def test_a_class_with_a_base_of_its_own_is_written_through_its_descriptors() -> None:
    assert _draft_of(_Derived) is None  # no draft: another layout below its own slots
    replaced = quick_replace(_Derived)
    old = _Derived(1, "x", (2,))
    for changes in ({}, {"a": 5}, {"b": "y", "c": (3, 4)}):
        new = replaced(old, changes)
        assert type(new) is _Derived and new == replace(old, **changes)
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        replaced(old, {"d": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        replaced(old, {}).a = 2  # type: ignore[misc]


def test_classes_it_cannot_serve_exactly_are_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Hidden:
        a: int
        b: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int] = 0

    for cls in (NoSlots, NotFrozen, PostInit, Hidden, WithInitVar):
        with pytest.raises(TypeError, match="quick_replace"):
            quick_replace(cls)


def test_a_change_nobody_watches_is_counted_and_seen_by_a_later_watcher() -> None:
    table = StatusTable(clock=lambda: 5.0)
    table.put(_row())
    before = table.changes_published
    table.update("smtp", status_string="one")
    table.update("smtp", status_string="one")  # no change: not counted
    table.update("smtp", detail="two")
    assert table.changes_published == before + 2  # what a node compares at its tick
    sub = table.subscribe()
    first = sub._queue.get_nowait()  # the current rows, as 'added' changes
    assert first.old is None and first.new is table.get("smtp")
    assert (first.new.status_string, first.new.detail, first.new.version) == ("one", "two", 3)
