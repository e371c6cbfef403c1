"""One typed reader for a provider's options: a frozen dataclass says what they are.

A provider describes its options as a dataclass whose field types say what each
value must be, and reads the ``config`` mapping its ``logon`` gets with
:func:`read_options`::

    @dataclass(frozen=True, slots=True)
    class SMTPOptions:
        host: str                                     # no default: required
        port: int | None = option(None, low=1, high=65535)
        tls: Literal["none", "starttls", "implicit"] = "starttls"
        verify: bool = True
        password: str | None = option(None, secret=True)   # never shown in errors/repr
        timeouts: dict[str, float] | None = option(None, positive=True)

        def __post_init__(self) -> None:              # rules between fields
            if self.password is not None and self.port == 25:
                raise OptionError("port", "must not be 25 when a password is given")

    opts = read_options(SMTPOptions, config, kind="smtp")

The types understood: ``str`` (non-empty unless ``option(empty=True)``), ``int``
(a bool is not one), ``float`` (an int is accepted and made a float; not a bool,
nor NaN, nor an int too large for a float), ``bool`` (strictly ``True`` or
``False``), ``Literal[...]`` (one of the choices), ``tuple[str, ...]`` /
``list[str]``, ``Mapping`` / ``dict`` of ``str`` to one of the scalars above, and
any of these ``| None``.  ``low``, ``high`` (inclusive) and ``positive`` bound a
number, or every number in a mapping.

What goes wrong, and what is raised:

* a key the dataclass has no field for: :class:`OptionError` naming it, the
  nearest known one (``did you mean 'port'?``, by :mod:`difflib`) and the known ones;
* a required field (no default) missing, ``None`` or ``""``:
  :class:`~spoolbox.contract.Unconfigured` listing every such key, so the profile's
  logon dialog can ask for them;
* a value of the wrong type or out of range: :class:`OptionError` (a
  :class:`ValueError`) whose text names the provider kind, the key and what was
  expected: ``smtp option 'port' must be a whole number from 1 to 65535, not 0``.
  The value of a ``secret=True`` option is never shown, only its type;
* an :class:`OptionError` raised by ``__post_init__`` gets the kind filled in.

:class:`Check` is the one set of type and range checks behind the reader; the
profile loader uses it for its own tables, with its own wording around it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .errors import Unconfigured

__all__ = ["Check", "OptionError", "WrongValue", "option", "read_options", "type_words"]

_T = TypeVar("_T")

#: The metadata key under which :func:`option` keeps a field's :class:`Check` settings.
_META = "spoolbox.option"


class OptionError(ValueError):
    """A provider option is wrong: ``key`` names it, ``text`` says what was wrong.

    ``str()`` is ``"<kind> option '<key>' <text>"``; raise it without ``kind`` from a
    options dataclass's ``__post_init__``: :func:`read_options` fills it in.
    """

    def __init__(self, key: str, text: str, *, kind: str = "") -> None:
        self.key = key
        self.text = text
        self.kind = kind
        super().__init__(f"{kind + ' ' if kind else ''}option {key!r} {text}")


class WrongValue(ValueError):
    """A value failed a :class:`Check`: ``expected`` is what it should have been.

    ``where`` locates the bad part inside the value (``".rcpt"`` for a mapping's
    item, ``"[2]"`` for a list's); ``type_ok`` is true when only the range was wrong.
    """

    def __init__(self, expected: str, value: object, *, where: str = "", type_ok: bool = False):
        super().__init__(f"expected {expected}, not {value!r}")
        self.expected = expected
        self.value = value
        self.where = where
        self.type_ok = type_ok


_SCALARS: tuple[type, ...] = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class Check:
    """What one value must be: its type, range and choices, and how to say so.

    ``kind`` is the shape: ``str``, ``int``, ``float``, ``bool``, ``choice``,
    ``strs`` (a list of strings: returned as ``sequence``), or ``map`` (a mapping of
    ``str`` to ``item``).  ``what`` replaces the generated description of what is
    expected (``"a whole number from 1 to 65535"``) in error messages.
    """

    kind: str
    optional: bool = False
    low: float | None = None
    high: float | None = None
    positive: bool = False
    empty: bool = False
    choices: tuple[Any, ...] = ()
    sequence: type = tuple
    item: Check | None = None
    keys: tuple[str, ...] | None = None
    what: str | None = None

    @classmethod
    def of(cls, hint: Any, **settings: Any) -> Check:
        """The check for a type annotation (see the module docstring for the types)."""
        optional = False
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            rest = tuple(a for a in args if a is not type(None))
            if len(rest) != 1 or len(rest) == len(args):
                raise TypeError(f"unsupported option type {hint!r}: only X | None unions")
            optional, hint = True, rest[0]
            args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        if hint in _SCALARS:
            return cls(hint.__name__, optional, **settings)
        if origin is Literal:
            return cls("choice", optional, choices=args, **settings)
        if (origin, args) in ((tuple, (str, ...)), (list, (str,))):
            return cls("strs", optional, sequence=origin, **settings)
        if origin in (dict, Mapping) and args[:1] == (str,) and args[1] in _SCALARS:
            keys = settings.pop("keys", None)
            what = settings.pop("what", None)
            item = cls(args[1].__name__, **settings)
            return cls("map", optional, item=item, keys=keys, what=what)
        raise TypeError(f"unsupported option type {hint!r}")

    @property
    def expected(self) -> str:
        """What a good value is, in words: ``"a whole number from 1 to 65535"``."""
        if self.what is not None:
            return self.what
        if self.kind == "str":
            return "a string" if self.empty else "a non-empty string"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "strs":
            return "a list of strings" if self.empty else "a list of non-empty strings"
        if self.kind == "map":
            assert self.item is not None
            return f"a mapping whose values are each {self.item.expected}"
        noun = "a whole number" if self.kind == "int" else "a number"
        if self.positive:
            noun = noun.replace("a ", "a positive ", 1)
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low} to {self.high}"
        if self.low is not None:
            return f"{noun} of at least {self.low}"
        if self.high is not None:
            return f"{noun} of at most {self.high}"
        return noun

    def __call__(self, value: object) -> Any:
        """``value`` checked (a float for ``float``, ``sequence`` for a list of
        strings, a new dict for a mapping); raises :class:`WrongValue`."""
        if value is None and self.optional:
            return None
        kind = self.kind
        if kind == "str":
            if not isinstance(value, str) or not (value or self.empty):
                raise WrongValue(self.expected, value)
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise WrongValue(self.expected, value)
            return value
        if kind == "choice":
            if not any(type(value) is type(c) and value == c for c in self.choices):
                raise WrongValue(self.expected, value)
            return value
        if kind in ("int", "float"):
            return self._number(value)
        if kind == "strs":
            if not isinstance(value, list | tuple):
                raise WrongValue(self.expected, value)
            for i, x in enumerate(value):
                if not isinstance(x, str) or not (x or self.empty):
                    each = "a string" if self.empty else "a non-empty string"
                    raise WrongValue(each, x, where=f"[{i}]")
            return self.sequence(value)
        return self._mapping(value)

    def _number(self, value: object) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WrongValue(self.expected, value)
        if self.kind == "int":
            if not isinstance(value, int):
                raise WrongValue(self.expected, value)
            number: int | float = value
        else:
            try:
                number = float(value)
            except OverflowError:  # an int too large for a float
                raise WrongValue(self.expected, value) from None
            if math.isnan(number):
                raise WrongValue(self.expected, value)
        if (
            (self.positive and not number > 0)
            or (self.low is not None and number < self.low)
            or (self.high is not None and number > self.high)
        ):
            raise WrongValue(self.expected, value, type_ok=True)
        return number

    def _mapping(self, value: object) -> dict[str, Any]:
        assert self.item is not None
        if not isinstance(value, Mapping):
            raise WrongValue(self.expected, value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or (self.keys is not None and key not in self.keys):
                known = "names" if self.keys is None else f"the keys {', '.join(self.keys)}"
                raise WrongValue(f"{self.expected}, with only {known}", value)
            try:
                out[key] = self.item(item)
            except WrongValue as exc:
                raise WrongValue(exc.expected, item, where=f".{key}", type_ok=exc.type_ok) from None
        return out


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


def option(
    default: Any = _REQUIRED,
    *,
    factory: Callable[[], Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    empty: bool = False,
    secret: bool = False,
    keys: Sequence[str] | None = None,
    what: str | None = None,
    help: str = "",
) -> Any:
    """A field of an options dataclass with checks beyond its type.

    ``default`` (or ``factory``, for a mutable one): omitted, the option is required.
    ``low``/``high``: inclusive bounds of a number (of each item of a mapping);
    ``positive``: more than 0.  ``empty``: an empty string is allowed (and then
    counts as given).  ``secret``: its value never appears in an error nor in the
    dataclass's ``repr``.  ``keys``: the only keys a mapping may have.  ``what``:
    how errors say what is expected, instead of the generated words.  ``help``: one
    line about the option, shown when a required one is missing.
    """
    settings = {
        "low": low,
        "high": high,
        "positive": positive,
        "empty": empty,
        "keys": None if keys is None else tuple(keys),
        "what": what,
    }
    meta = {_META: (settings, secret, help)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, repr=not secret, metadata=meta)
    if default is _REQUIRED:
        return dataclasses.field(repr=not secret, metadata=meta)
    return dataclasses.field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    check: Check
    required: bool
    secret: bool
    help: str


@functools.cache
def _fields(cls: type) -> tuple[_Field, ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        settings, secret, help_ = f.metadata.get(_META, ({}, False, ""))
        settings = {k: v for k, v in settings.items() if v is not None and v is not False}
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(_Field(f.name, Check.of(hints[f.name], **settings), required, secret, help_))
    return tuple(out)


def read_options(cls: type[_T], config: Mapping[str, Any], *, kind: str) -> _T:
    """``config`` checked against the options dataclass ``cls``, as an instance of it.

    ``kind`` names the provider in errors (``"smtp"``).  Raises :class:`OptionError`
    for an unknown key or a bad value, :class:`~spoolbox.contract.Unconfigured` when
    required options are missing (all of them listed).
    """
    fields = _fields(typing.cast(type, cls))
    names = [f.name for f in fields]
    unknown = sorted((k for k in config if k not in names), key=str)
    if unknown:
        others = f" (so is {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise OptionError(
            str(unknown[0]),
            f"is unknown{others}; {guess}the options are: {', '.join(sorted(names))}",
            kind=kind,
        )
    missing = [f for f in fields if f.required and config.get(f.name) in (None, "")]
    if missing:
        helps = [f"{f.name}: {f.help}" for f in missing if f.help]
        them = "it" if len(missing) == 1 else "them"
        raise Unconfigured(
            [f.name for f in missing], "; ".join(helps) or f"the {kind} transport needs {them}"
        )
    values: dict[str, Any] = {}
    for f in fields:
        if f.name not in config:
            continue
        value = config[f.name]
        try:
            values[f.name] = f.check(value)
        except WrongValue as exc:
            shown = repr(exc.value)
            if f.secret:
                shown = "an empty string" if exc.value == "" else type_words(exc.value)
            raise OptionError(
                f.name + exc.where, f"must be {exc.expected}, not {shown}", kind=kind
            ) from None
    try:
        return cls(**values)
    except OptionError as exc:
        if exc.kind:
            raise
        raise OptionError(exc.key, exc.text, kind=kind) from None


def type_words(value: object, *, array: str = "a list", table: str = "a mapping") -> str:
    """A value's type in words (``"an integer"``), for where the value itself may not
    be shown; ``array`` and ``table`` name a list and a mapping."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return array
    if isinstance(value, Mapping):
        return table
    return type(value).__name__
