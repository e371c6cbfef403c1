"""``spoolbox._quick.quick_init``: a frozen dataclass with slots given an ``__init__``
that writes each field through its slot's descriptor.  For every class of spoolbox
that has one, the quick ``__init__`` takes the same parameters (names, kinds,
defaults) as the dataclass's own, makes the same value, calls ``__post_init__`` as it
does, and leaves the value as frozen; classes it cannot serve exactly are refused."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import spoolbox
from spoolbox._quick import DRAFT_FIELDS, ORIGINAL_INIT, quick_init
from spoolbox.model import (
    Address,
    MessageInfo,
    NewMessage,
    RecipientRecord,
    RecipientResult,
    RecipientState,
)
from spoolbox.model.results import ResultError
from spoolbox.smtp.replies import Reply

_SOURCES = Path(spoolbox.__file__).parent
#: How many classes of spoolbox are decorated, counted in the sources; every module
#: that has one is imported here, so that each class registers its own.
_DECORATED = 0
for _path in sorted(_SOURCES.rglob("*.py")):
    _found = _path.read_text().count("\n@quick_init\n")
    if _found:
        _DECORATED += _found
        _parts = _path.relative_to(_SOURCES).with_suffix("").parts
        _name = ".".join(["spoolbox", *(_parts[:-1] if _parts[-1] == "__init__" else _parts)])
        importlib.import_module(_name)


def _parameters(init: Any) -> list[tuple[str, Any, str]]:
    """Each parameter's name, kind and default (by its repr: a field's default factory
    is shown as ``<factory>`` by both, through sentinels of their own)."""
    return [(p.name, p.kind, repr(p.default)) for p in inspect.signature(init).parameters.values()]


def test_every_decorated_class_of_spoolbox_is_compared_below() -> None:
    spoolboxs = {c for c in ORIGINAL_INIT if c.__module__.startswith("spoolbox.")}
    assert len(spoolboxs) == _DECORATED
    names = {cls.__qualname__ for cls in spoolboxs}
    assert {"RecipientRecord", "MessageInfo", "RecipientResult", "StatusChange", "Reply"} <= names


@pytest.mark.parametrize("cls", sorted(ORIGINAL_INIT, key=lambda c: c.__qualname__))
def test_the_quick_init_takes_what_the_dataclasses_takes(cls: type) -> None:
    assert _parameters(cls.__init__) == _parameters(ORIGINAL_INIT[cls])
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"


def test_a_value_made_quickly_is_the_value_the_dataclass_makes() -> None:
    args: dict[str, Any] = {
        "message_id": "m1",
        "index": 2,
        "address": Address.parse("X:bob"),
        "state": RecipientState.QUEUED,
        "attempts": 3,
        "original": "rfc822;bob@example.org",
    }
    quick = RecipientRecord(**args)
    slow = object.__new__(RecipientRecord)
    ORIGINAL_INIT[RecipientRecord](slow, **args)
    assert quick == slow and hash(quick) == hash(slow)
    assert [getattr(quick, f.name) for f in dataclasses.fields(quick)] == [
        getattr(slow, f.name) for f in dataclasses.fields(slow)
    ]
    assert quick.route is None and quick.refused_by == ()  # the defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.attempts = 4
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'state'"):
        RecipientRecord("m1", 2, Address.parse("X:bob"))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        Reply(250, texts="x")


@quick_init
@dataclass(frozen=True, slots=True)
class _Wide:
    a: int
    b: str
    c: tuple[int, ...] = ()
    d: float = 0.5
    e: list[int] = field(default_factory=list)
    f: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("a < 0")


class _WideChild(_Wide):
    __slots__ = ("extra",)


def test_a_value_of_many_fields_is_written_on_a_draft_and_is_its_class_after() -> None:
    assert len(dataclasses.fields(_Wide)) >= DRAFT_FIELDS
    assert "_draft" in _Wide.__init__.__globals__  # the draft path, not the descriptors
    made = _Wide(1, "x", (2,), e=[3], f=True)
    slow = object.__new__(_Wide)
    ORIGINAL_INIT[_Wide](slow, 1, "x", (2,), e=[3], f=True)
    assert type(made) is _Wide and made == slow
    assert (made.c, made.d, made.e, made.f) == ((2,), 0.5, [3], True)
    assert _Wide(2, "y").e == [] and _Wide(2, "y").e is not _Wide(2, "y").e
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.a = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="a < 0"):  # __post_init__, on the value made
        _Wide(-1, "z")
    # A subclass's object keeps its class (written through the descriptors).
    child = _WideChild(4, "w")
    assert type(child) is _WideChild and (child.a, child.b, child.e) == (4, "w", [])
    assert RecipientRecord("m", 0, Address.parse("X:bob"), RecipientState.QUEUED).index == 0
    assert "_draft" in RecipientRecord.__init__.__globals__  # fourteen fields


def test_keyword_only_fields_stay_keyword_only() -> None:
    info = dict(
        id="m",
        sender=None,
        priority=1,
        submitted_at=0.0,
        send_at=None,
        expires_at=1.0,
        notify=0,
        is_report=False,
        envelope_id=None,
        size=5,
        subject="s",
    )
    made = MessageInfo(**info, return_content=True)
    assert (made.return_content, made.held) == (True, False)
    assert MessageInfo(*info.values(), True) == replace(made, return_content=None, held=True)
    with pytest.raises(TypeError, match="positional arguments but 14 were given"):
        MessageInfo(*info.values(), False, True)


def test_a_default_factory_is_called_when_its_parameter_is_not_given() -> None:
    @quick_init
    @dataclass(frozen=True, slots=True)
    class Listed:
        a: int
        b: list[int] = field(default_factory=list)

    first, second = Listed(1), Listed(2)
    assert first.b == [] and first.b is not second.b
    given = [5]
    assert Listed(3, given).b is given
    bob = (Address.parse("X:bob"),)
    assert NewMessage(None, bob, b"x").id != NewMessage(None, bob, b"x").id  # new_message_id
    assert NewMessage(None, bob, b"x", id="mine").id == "mine"


def test_post_init_runs_as_the_dataclasses_does() -> None:
    from spoolbox.model import Outcome

    with pytest.raises(ResultError, match="not an RFC 3463 code"):
        RecipientResult(0, Outcome.DELIVERED, status="250")
    assert RecipientResult(0, Outcome.DELIVERED, status="2.0.0").status == "2.0.0"


def test_classes_it_cannot_serve_exactly_are_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class Hidden:
        a: int = field(default=0, init=False)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

        def __post_init__(self, b: int) -> None:
            pass

    for cls, why in (
        (NoSlots, "not a frozen dataclass with slots"),
        (NotFrozen, "not a frozen dataclass with slots"),
        (Hidden, "is not in __init__"),
        (WithInitVar, "InitVar"),
    ):
        with pytest.raises(TypeError, match=why):
            quick_init(cls)
