"""Reading the profile's TOML tables: every key taken or refused, every value checked.

:class:`Table` wraps one TOML table; each read takes a key and checks its value with
the contract's :class:`~spoolbox.contract.options.Check` (the same type and range
checks a provider's options get), and a bad value raises :class:`ProfileError`
naming the file, the key (``[daemon] nice``) and what was expected.  ``done()``
refuses the keys nobody took.  :func:`parse_duration` reads the durations.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..contract.options import Check, WrongValue, type_words

__all__ = ["ProfileError", "Table", "parse_duration", "toml_type"]


class ProfileError(Exception):
    """The profile is missing or invalid; the text names the file and the key."""

    def __init__(self, path: Path | str, message: str, key: str | None = None) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)
        self.path = str(path)
        self.key = key


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"250ms"``, ``"30s"``, ``"5m"``, ``"4h"``,
    ``"5d"``; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, not a boolean")
    seconds: float | None = None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            seconds = math.inf
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d)?\s*", value)
        if m:
            unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
            seconds = float(m.group(1)) * unit
    if seconds is not None and math.isfinite(seconds):
        return seconds
    if seconds is not None:
        raise ValueError(f"expected a finite duration, not {value!r}")
    raise ValueError(
        f'expected a duration (seconds, or a string like "30s", "4h", "5d"), not {value!r}'
    )


def toml_type(value: object) -> str:
    """A TOML value's type in words: ``"an integer"``, ``"an array"``, ``"a table"``."""
    return type_words(value, array="an array", table="a table")


#: The checks of the profile's own keys, worded as the profile reference words them.
STRING = Check.of(str, empty=True)
FLAG = Check.of(bool)
INTEGER = Check.of(int, what="an integer")
STRINGS = Check.of(list[str], empty=True, what="an array of strings")


class Table:
    """One TOML table being read: every key must be taken, or it is unknown."""

    def __init__(self, path: Path, where: str, data: object) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise ProfileError(path, f"expected a table, got {toml_type(data)}", where or None)
        self.data: dict[str, Any] = data
        self.taken: set[str] = set()

    def key(self, name: str) -> str:
        if not self.where:
            return name
        return f"{self.where} {name}" if self.where.endswith("]") else f"{self.where}.{name}"

    def error(self, name: str, message: str) -> ProfileError:
        return ProfileError(self.path, message, self.key(name))

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.taken.add(name)
        return self.data.get(name)

    def check(self, name: str, check: Check, value: object) -> Any:
        """``value`` (the key ``name``'s) checked: a wrong one is an error naming the key."""
        try:
            return check(value)
        except WrongValue as exc:
            # a bad item of an array: the profile shows the whole array
            expected = check.expected if exc.where else exc.expected
            got = repr(value) if exc.type_ok else f"{toml_type(value)} {value!r}"
            raise self.error(name, f"expected {expected}, got {got}") from None

    def read(self, name: str, check: Check, default: Any = None) -> Any:
        """The key ``name`` checked, or ``default`` when it is not there."""
        value = self.raw(name)
        return default if value is None else self.check(name, check, value)

    def text(self, name: str, default: str | None = None) -> str | None:
        value: str | None = self.read(name, STRING, default)
        return value

    def pathname(self, name: str, default: str) -> str:
        """A string that names a file: a NUL in it could never be opened."""
        v = self.text(name, default) or default
        if "\x00" in v:
            raise self.error(name, f"expected a path, got a string with a NUL character {v!r}")
        return v

    def flag(self, name: str, default: bool) -> bool:
        value: bool = self.read(name, FLAG, default)
        return value

    def integer(self, name: str, default: int, range_check: Check | None = None) -> int:
        """An integer; ``range_check`` (a :class:`Check` with bounds) words a value out
        of range its own way."""
        value: int = self.read(name, INTEGER, default)
        if range_check is not None:
            value = self.check(name, range_check, value)
        return value

    def str_list(self, name: str) -> list[str] | None:
        value: list[str] | None = self.read(name, STRINGS)
        return value

    def table(self, name: str) -> Table:
        v = self.raw(name)
        where = f"[{name}]" if not self.where else self.key(name)
        return Table(self.path, where, {} if v is None else v)

    def done(self, allowed_hint: str = "") -> None:
        unknown = sorted(set(self.data) - self.taken)
        if unknown:
            known = ", ".join(sorted(self.taken))
            raise self.error(
                unknown[0],
                "unknown key" + (f"; expected one of: {known}" if known else "") + allowed_hint,
            )
