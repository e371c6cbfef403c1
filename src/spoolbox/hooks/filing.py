"""The ``filing`` hook: files inbound mail into folders of the inbox by simple
header rules, or drops it.

The inbox has no folder table: a filed entry carries its folder in its ``meta``
(``{"folder": "lists"}``), which the store keeps with the entry and the local API
and ``spoolbox inbox --json`` show.  Options::

    [[hooks.options.rules]]
    header = "List-Id"          # the field to look at (every field of that name)
    contains = "python.org"     # case-insensitive substring; or:
    # matches = '(?i)^\\[ann\\]' # a regular expression (re.search); or:
    # equals = "YES"            # the whole value, case-insensitive
    folder = "lists"            # where it goes; or:
    # delete = "spam"           # the reason: it never reaches the inbox

The first rule that matches decides; no rule matching keeps the message in the
inbox itself.  Values are compared unfolded, with RFC 2047 words decoded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..contract import KEEP, Delete, FileTo, HookMessage, Keep
from .header_block import split

__all__ = ["FilingHook", "Rule", "parse_rules"]


@dataclass(frozen=True, slots=True)
class Rule:
    header: str
    test: str  # "contains", "matches" or "equals"
    pattern: str
    folder: str | None = None
    delete: str | None = None

    def hits(self, values: Sequence[str]) -> bool:
        for value in values:
            if self.test == "contains" and self.pattern.lower() in value.lower():
                return True
            if self.test == "equals" and self.pattern.lower() == value.strip().lower():
                return True
            if self.test == "matches" and re.search(self.pattern, value):
                return True
        return False


_TESTS = ("contains", "matches", "equals")


def parse_rules(raw: object) -> tuple[Rule, ...]:
    """The ``rules`` option, checked: ValueError says which rule and what is wrong."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("filing hook option 'rules' must be a non-empty array of tables")
    rules = []
    for i, item in enumerate(raw, 1):
        where = f"filing hook rule #{i}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a table, not {item!r}")
        unknown = set(item) - {"header", "folder", "delete", *_TESTS}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        header = item.get("header")
        if not isinstance(header, str) or not header.strip():
            raise ValueError(f"{where} needs header = the field name to look at")
        tests = [t for t in _TESTS if t in item]
        if len(tests) != 1 or not isinstance(item[tests[0]], str):
            raise ValueError(f"{where} needs exactly one of contains, matches, equals (a string)")
        pattern = item[tests[0]]
        if tests[0] == "matches":
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{where}: bad pattern {pattern!r}: {exc}") from None
        folder, delete = item.get("folder"), item.get("delete")
        if (folder is None) == (delete is None):
            raise ValueError(f"{where} needs exactly one of folder, delete")
        for key, value in (("folder", folder), ("delete", delete)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{where}: {key} must be a non-empty string")
        rules.append(Rule(header, tests[0], pattern, folder, delete))
    return tuple(rules)


class FilingHook:
    """Files received mail by header rules (an inbound hook)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"rules"}
        if unknown:
            raise ValueError(f"filing hook: unknown option {sorted(unknown)[0]!r}; known: rules")
        self.rules = parse_rules(options.get("rules"))

    async def inbound(self, message: HookMessage) -> FileTo | Delete | Keep:
        block = split(message.content)
        for rule in self.rules:
            if rule.hits(block.get_all(rule.header)):
                if rule.delete is not None:
                    return Delete(rule.delete)
                assert rule.folder is not None
                return FileTo(rule.folder)
        return KEEP
