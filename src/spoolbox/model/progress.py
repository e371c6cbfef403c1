"""Progress of a transfer, as a status row shows it (PR_REMOTE_PROGRESS and _TEXT)."""

from __future__ import annotations

from dataclasses import dataclass

from spoolbox._quick import quick_init

__all__ = ["Progress"]


@quick_init
@dataclass(frozen=True, slots=True)
class Progress:
    """``done`` of ``total`` items (``total`` None = unknown), bytes, and a line of text.

    The original's percentage is :attr:`percent`; "no transfer" is no Progress at all
    (the row's progress is ``None``), not a sentinel number.
    """

    done: int = 0
    total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.done < 0 or (self.total is not None and self.total < 0):
            raise ValueError("progress counts must be >= 0")

    @property
    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, (100 * self.done) // self.total)
