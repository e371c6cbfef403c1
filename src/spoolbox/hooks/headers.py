"""The ``headers`` hook: add and remove header fields of outbound mail.

Options (``[hooks.options]``)::

    remove = ["Bcc", "X-Originating-IP"]     # every field of these names
    [hooks.options.remove_matching]          # name = regular expression: only the
    Received = 'by [a-z0-9.-]+\\.internal\\b' #   fields whose value it finds
    [hooks.options.add]                      # name = value, appended to the header
    X-Spooled-By = "spoolbox"

Only the header section is touched, on bytes: the other fields and the body go out
byte for byte.  A message it does not change is kept (KEEP), so nothing is stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..contract import KEEP, Change, HookMessage, Keep, OptionError, option, read_options
from .header_block import Field, split

__all__ = ["HeadersHook", "HeadersOptions", "rewrite"]

_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: a field name


@dataclass(frozen=True, slots=True)
class HeadersOptions:
    remove: tuple[str, ...] = option((), help="header field names to remove")
    remove_matching: dict[str, str] = option(factory=dict)
    add: dict[str, str] = option(factory=dict)

    def __post_init__(self) -> None:
        for key, names in (
            ("remove", self.remove),
            ("remove_matching", self.remove_matching),
            ("add", self.add),
        ):
            for name in names:
                if not _NAME.match(name):
                    raise OptionError(key, f"names {name!r}, which is not a header field name")
        for name, value in self.add.items():
            if "\n" in value or "\r" in value:
                raise OptionError("add", f"gives {name} a value with a line break")
        for name, pattern in self.remove_matching.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise OptionError("remove_matching", f"{name}: bad pattern: {exc}") from None


class HeadersHook:
    """Adds and removes header fields (an outbound hook)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        opts = read_options(HeadersOptions, options, kind="headers hook")
        self._remove = frozenset(n.lower() for n in opts.remove)
        self._matching = {n.lower(): re.compile(p) for n, p in opts.remove_matching.items()}
        self._add = tuple(opts.add.items())

    async def outbound(self, message: HookMessage) -> Change | Keep:
        new = rewrite(message.content, self._remove, self._matching, self._add)
        return KEEP if new == message.content else Change(new)


def rewrite(
    content: bytes,
    remove: frozenset[str],
    matching: Mapping[str, re.Pattern[str]],
    add: tuple[tuple[str, str], ...],
) -> bytes:
    """``content`` without the fields named in ``remove`` (lower-case names), without
    those whose value the pattern for their name finds, with ``add`` appended."""

    def drop(f: Field) -> bool:
        name = f.name.lower()
        pattern = matching.get(name)
        return name in remove or (pattern is not None and pattern.search(f.value) is not None)

    return split(content).without(drop).adding(add).to_bytes()
