"""Frozen values made quickly: :func:`quick_init`, and :func:`quick_replace`.

A frozen dataclass's ``__init__`` writes each field with ``object.__setattr__`` (the
class's own ``__setattr__`` refuses): a call that finds the attribute's descriptor
in the class and its bases each time.  On the machine of docs/benchmarks.md that is
1.9 µs for a :class:`~spoolbox.model.RecipientRecord` of fourteen fields, against
0.2 µs for the same class not frozen, and the daemon makes a few dozen frozen values
a delivered message.  :func:`quick_init` gives a frozen dataclass with slots an
``__init__`` that writes each field through its slot's own descriptor (0.9 µs for the
fourteen): the same parameters, defaults and keyword-only fields, ``__post_init__``
called after them, the same values made, the class as frozen as before.  A class it
cannot do so for exactly (one with an ``InitVar`` or a field left out of
``__init__``) is refused with TypeError when the module that defines it is imported.

Writing through a slot's descriptor is still a call of several hundred instructions
(its ``__set__`` is a method wrapper, called with an argument tuple), where an
attribute write on a plain class with slots is a few dozen.  So for a class of
:data:`DRAFT_FIELDS` fields or more, the quick ``__init__`` makes the new object, for
the while, one of a *draft* class (:func:`_draft_of`: a plain class with the same
slots in the same order), writes the fields as plain attributes, and makes it one of
its class again; Python allows ``__class__`` assignment between classes of the same
layout, and nobody sees the object in between.  A RecipientRecord of fourteen fields
took 11,877 instructions to make through the descriptors and takes 6,389 so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

__all__ = ["ORIGINAL_INIT", "quick_init", "quick_replace"]

T = TypeVar("T")

#: The dataclass's own ``__init__`` of every class given a quick one (the tests
#: compare the two).
ORIGINAL_INIT: Final[dict[type, Callable[..., None]]] = {}


class _Factory:
    """The default of a parameter whose field has a ``default_factory`` (the factory
    is called when the parameter is not given), shown as dataclasses show theirs."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY: Final = _Factory()

#: From how many fields :func:`quick_init` writes them on a draft (:func:`_draft_of`):
#: making the object a draft and a value again costs about as much as writing four
#: fields through their descriptors (counted in docs/benchmarks.md, "Session 41").
DRAFT_FIELDS: Final = 5


def quick_init(cls: type[T]) -> type[T]:
    """``cls`` (a frozen dataclass with slots) with an ``__init__`` that writes each
    field through its slot's descriptor; see the module's docstring."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_init: {cls.__qualname__} is not a frozen dataclass with slots")
    declared: dict[str, dataclasses.Field[Any]] = cls.__dataclass_fields__  # type: ignore[attr-defined]
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if len(fields) != len(declared):
        raise TypeError(f"quick_init: {cls.__qualname__} has an InitVar or a ClassVar field")
    namespace: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    values: list[tuple[str, str]] = []
    namespace["_FACTORY"] = _FACTORY
    for f in fields:
        if not f.init:
            raise TypeError(f"quick_init: {cls.__qualname__}.{f.name} is not in __init__")
        parameter = f.name
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            parameter += f"=_default_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:  # as the dataclass's own does
            namespace[f"_factory_{f.name}"] = f.default_factory
            parameter += "=_FACTORY"
            value = f"_factory_{f.name}() if {f.name} is _FACTORY else {f.name}"
        (keyword if f.kw_only else positional).append(parameter)
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        body.append(f"    _set_{f.name}(self, {value})\n")
        values.append((f.name, value))
    draft = _draft_of(cls) if len(fields) >= DRAFT_FIELDS else None
    if draft is not None:
        # Written on the object made a draft for the while (plain attribute writes),
        # then made a ``cls`` again; a subclass's object through the descriptors.
        namespace.update(_cls=cls, _draft=draft, _become=object.__setattr__)
        by_descriptor = ["    " + line for line in body]
        body = [
            "    if type(self) is _cls:\n",
            "        _become(self, '__class__', _draft)\n",
            *(f"        self.{name} = {value}\n" for name, value in values),
            "        self.__class__ = _cls\n",
            "    else:\n",
            *by_descriptor,
        ]
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()\n")  # as the dataclass's own does
    signature = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({signature}):\n" + ("".join(body) or "    pass\n")
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    ORIGINAL_INIT[cls] = cls.__init__
    setattr(cls, "__init__", init)  # noqa: B010 (a method of the class replaced)
    return cls


def quick_replace(cls: type[T]) -> Callable[[T, Mapping[str, Any]], T]:
    """A function ``replaced(old, changes)``: ``dataclasses.replace(old, **changes)``
    for ``cls`` (a frozen dataclass with slots, every field in ``__init__``, no
    ``__post_init__``), a column not in ``cls`` refused with TypeError as
    ``replace`` refuses it.  The new value is made without ``__init__``: each slot
    is written once, with the change or the old value, on an object of a plain class
    with the same slots that then becomes a ``cls`` (:func:`_draft_of`)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_replace: {cls.__qualname__} is not a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_replace: {cls.__qualname__} has a __post_init__")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    declared: dict[str, dataclasses.Field[Any]] = cls.__dataclass_fields__  # type: ignore[attr-defined]
    if len(fields) != len(declared) or not all(f.init for f in fields):
        raise TypeError(f"quick_replace: {cls.__qualname__} has a field outside __init__")
    names = frozenset(f.name for f in fields)
    draft = _draft_of(cls)
    namespace: dict[str, Any] = {"_cls": cls, "_draft": draft, "_names": names}
    body = [
        "def replaced(old, changes):\n",
        "    if not changes.keys() <= _names:\n",
        "        _refuse(changes)\n",
    ]
    if draft is not None:  # every slot copied, then the changed ones written over
        body.append("    new = object.__new__(_draft)\n")
        body += [f"    new.{f.name} = old.{f.name}\n" for f in fields]
        body.append("    for name, value in changes.items():\n")
        body.append("        setattr(new, name, value)\n")
        body.append("    new.__class__ = _cls\n")
    else:  # each slot written once, through its descriptor
        body.append("    new = object.__new__(_cls)\n")
        body.append("    get = changes.get\n")
        for f in fields:
            namespace[f"_set_{f.name}"] = getattr(cls, f.name).__set__  # (or a base's)
            body.append(f"    _set_{f.name}(new, get({f.name!r}, old.{f.name}))\n")
    body.append("    return new\n")

    def refuse(changes: Mapping[str, Any]) -> None:
        unknown = sorted(changes.keys() - names)[0]
        name = cls.__qualname__
        raise TypeError(f"{name}.__init__() got an unexpected keyword argument {unknown!r}")

    namespace["_refuse"] = refuse
    exec("".join(body), namespace)
    replaced: Callable[[T, Mapping[str, Any]], T] = namespace["replaced"]
    replaced.__qualname__ = f"quick_replace.<{cls.__qualname__}>"
    return replaced


def _draft_of(cls: type) -> type | None:
    """A plain class with ``cls``'s slots, in the same order, and nothing else: an
    object of it takes each field by an ordinary attribute write (a few dozen
    instructions, where a slot descriptor's ``__set__`` is a call of several
    hundred), then becomes a ``cls`` by ``__class__`` assignment, which Python
    allows between classes of the same layout.  None when ``cls`` derives from a
    class other than ``object`` or the assignment is refused: its values are then
    written through the descriptors."""
    if cls.__bases__ != (object,):
        return None
    draft = type(
        f"{cls.__name__}Draft",
        (object,),
        {"__slots__": cls.__dict__["__slots__"], "__module__": cls.__module__},
    )
    probe: Any = object.__new__(draft)
    try:
        probe.__class__ = cls
    except TypeError:
        return None
    return draft
