"""When to start a child process of the daemon again after it died (pure): the
delivery workers (:mod:`.workers`) and the listener processes
(:mod:`.listener_processes`) share one back-off.

A child that dies soon after its start waits :data:`RESTART_FIRST` seconds, then
twice as long at each further quick death, up to :data:`RESTART_MAX`; one that ran
:data:`STABLE_AFTER` seconds or more counts as a first death again.  With a
``limit``, more quick deaths in a row than that give up on the child.
"""

from __future__ import annotations

__all__ = ["RESTART_FIRST", "RESTART_MAX", "STABLE_AFTER", "restart_delay"]

#: restart delays of a child that keeps dying: first, then doubled up to the last
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
#: a child that ran this long before it died counts as a first death again
STABLE_AFTER = 60.0


def restart_delay(
    failures: int, ran_for: float, *, limit: int | None = None
) -> tuple[int, float | None]:
    """After a child that ran ``ran_for`` s died, with ``failures`` quick deaths in a
    row before: the new count, and the delay before starting it again (None: more
    than ``limit`` quick deaths in a row, give up; never without a limit)."""
    failures = 1 if ran_for >= STABLE_AFTER else failures + 1
    if limit is not None and failures > limit:
        return failures, None
    return failures, min(RESTART_FIRST * 2 ** (failures - 1), RESTART_MAX)
