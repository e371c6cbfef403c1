"""A transport session's trouble: failing to log on, to connect or to make its calls, as
an explicit state with its transitions and the wording of its log lines (pure).

A session is ``ok`` or ``failing``; a failure while ok *starts* a streak (one WARNING
line), a failure while failing *continues* it (counted, logged at DEBUG only), a
success while failing *ends* it (one INFO line: "back online after 3 failures").
So a smart host that refuses the password for an hour gives two lines, not one per
retry.

The streak remembers its *source*, which also says what ends it:

============  ===========================================  ===========================
source        starts with                                  ends with
============  ===========================================  ===========================
``logon``     a failed logon                               a logon that succeeds
``call``      a provider call that raises                  a provider call that returns
``provider``  the provider setting FAILURE on its row      the provider clearing it
              (the SMTP transport: connect or AUTH failed)  (a connection made again)
============  ===========================================  ===========================

A success of another source does not end a streak: the SMTP transport's
``submit_message`` returns normally after deferring every recipient of a smart host
it cannot reach, which says nothing about the smart host.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["Change", "Source", "Trouble", "failing_line", "recovered_line"]


class Source(enum.StrEnum):
    LOGON = "logon"
    CALL = "call"
    PROVIDER = "provider"


class Change(enum.Enum):
    NONE = "none"  # a success while ok
    STARTED = "started"  # ok -> failing: say so (WARNING)
    CONTINUES = "continues"  # failing -> failing: count it (DEBUG)
    RECOVERED = "recovered"  # failing -> ok: say so (INFO)


# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_NONE: Final = Change.NONE


@dataclass(frozen=True, slots=True)
class Trouble:
    """``failing`` since ``failures`` failures of ``source``; ``reason`` is the last."""

    failing: bool = False
    failures: int = 0
    source: Source | None = None
    reason: str = ""

    def failed(self, source: Source, reason: str) -> tuple[Trouble, Change]:
        """A failure of ``source``: the new state and what changed."""
        if self.failing:
            return Trouble(True, self.failures + 1, self.source, reason), Change.CONTINUES
        return Trouble(True, 1, source, reason), Change.STARTED

    def succeeded(self, source: Source) -> tuple[Trouble, Change]:
        """A success of ``source``: it ends a streak of the same source only."""
        if not self.failing:
            return self, _NONE
        if source is not self.source:
            return self, _NONE
        return Trouble(), Change.RECOVERED

    def by(self, source: Source) -> bool:
        """Failing, and because of ``source``."""
        return self.failing and self.source is source


def failing_line(name: str, reason: str, retry: str = "") -> str:
    """The WARNING that starts a streak: ``relay: logon failed: ...; retrying in 30 s``."""
    return f"{name}: {reason}" + (f"; {retry}" if retry else "")


def recovered_line(name: str, failures: int, state: str = "back online") -> str:
    """The INFO that ends one: ``relay: back online after 3 failures``."""
    return f"{name}: {state} after {failures} failure{'' if failures == 1 else 's'}"
