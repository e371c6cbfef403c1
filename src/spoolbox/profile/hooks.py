"""The profile's ``[[hooks]]``: the spooler hooks, in the order they run.

::

    [[hooks]]
    name = "sign"                # its status row is hook:sign
    hook = "dkim"                # an entry point of spoolbox.hooks, or "module:Class"
    [hooks.options]              # handed to the hook class, checked by it
    key_file = "dkim.key"        # *_file options (in nested tables too): relative to
                                 #   the profile's directory

The profile checks the keys of each table; the ``options`` are the hook's to check
(a hook that refuses them fails at start, on its status row, and mail waits for it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._core.config import HookConfig
from .tables import ProfileError, Table

__all__ = ["read_hooks"]


def read_hooks(top: Table, base: Path) -> tuple[HookConfig, ...]:
    """``[[hooks]]`` of the profile's top table, in order."""
    raw = top.raw("hooks")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise top.error("hooks", "expected an array of tables ([[hooks]])")
    hooks: list[HookConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        ht = Table(top.path, f"[[hooks]] #{i + 1}", item)
        name = ht.text("name")
        if not name:
            raise ht.error("name", "expected a hook name (letters, digits, '-_.')")
        ht.where = f"[hooks.{name}]"
        if name in names:
            raise ht.error("name", f"the hook name {name!r} is used twice")
        names.add(name)
        hook = ht.text("hook")
        if not hook:
            raise ht.error(
                "hook",
                'expected a hook: an entry-point name of spoolbox.hooks ("dkim", '
                '"headers", "filing") or "module:Class"',
            )
        ot = ht.table("options")
        options = _files_resolved({key: ot.raw(key) for key in list(ot.data)}, base)
        ht.done()
        try:
            hooks.append(HookConfig(name, hook, options))
        except ValueError as exc:
            raise ProfileError(top.path, str(exc), ht.key("name")) from None
    return tuple(hooks)


def _files_resolved(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """``table`` with every ``*_file`` string, in nested tables too, made absolute
    against the profile's directory (``~`` expanded)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            value = _files_resolved(value, base)
        elif key.endswith("_file") and isinstance(value, str) and value:
            value = os.path.normpath(base / Path(value).expanduser())
        out[key] = value
    return out
