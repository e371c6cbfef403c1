"""The Maildir transport's options, and where a ``MAILDIR:`` recipient may deliver.

The options are read by :func:`spoolbox.contract.read_options` into
:class:`MaildirOptions`; ``root`` and ``pickup`` are then made absolute, normalised
paths (``~`` expanded; a :class:`os.PathLike` is accepted too) in :class:`_Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spoolbox.contract import OptionError, option, read_options

_PATHS = ("root", "pickup")


@dataclass(frozen=True, slots=True)
class MaildirOptions:
    """The options as the profile gives them (see the package docstring)."""

    root: str | None = option(None, what="an absolute path")
    pickup: str | None = option(None, what="an absolute path")
    create: bool = True


class _BadDestination(ValueError):
    """A MAILDIR: value that names no acceptable maildir (status 5.1.3)."""


def _absolute(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        raise OptionError(key, f"must be an absolute path, not {path!r}", kind="maildir")
    return os.path.normpath(path)


@dataclass(frozen=True, slots=True)
class _Settings:
    root: str | None
    pickup: str | None
    create: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> _Settings:
        """``config`` read as :class:`MaildirOptions`; raises
        :class:`~spoolbox.contract.OptionError` naming the key that is wrong."""
        paths = {
            k: os.fspath(v) for k, v in config.items() if k in _PATHS and isinstance(v, os.PathLike)
        }
        o = read_options(MaildirOptions, {**config, **paths}, kind="maildir")
        return cls(_absolute("root", o.root), _absolute("pickup", o.pickup), o.create)

    def resolve(self, value: str) -> str:
        """The maildir a ``MAILDIR:`` value names, or :class:`_BadDestination`."""
        if self.root is None:
            if not os.path.isabs(value):
                raise _BadDestination(
                    f"{value!r} is not an absolute path (relative ones need the 'root' option)"
                )
            return os.path.normpath(value)
        path = os.path.normpath(os.path.join(self.root, value))
        prefix = self.root.rstrip(os.sep) + os.sep
        if path != self.root and not path.startswith(prefix):
            raise _BadDestination(f"{value!r} lies outside the maildir root {self.root}")
        return path
