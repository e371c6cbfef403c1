"""The fuzz targets' Hypothesis budgets: a short reproducible one for CI, a long one.

``SPOOLBOX_FUZZ`` picks the profile: unset (or ``ci``) gives :data:`CI`, ``long`` gives
:data:`LONG`.  Every target is decorated with :func:`budget`, which takes the example
count the target gets in CI (the long run gives every target ``SPOOLBOX_FUZZ_EXAMPLES``,
default 20 000).  docs/fuzzing.md says why CI derandomizes and the long run does not.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

__all__ = ["CI", "LONG", "PROFILE", "budget"]

CI = "fuzz-ci"
LONG = "fuzz-long"

# CI: the same inputs on every run (derandomize), nothing read or written between
# runs (no database): a red CI run is red again on the developer's machine.
settings.register_profile(
    CI,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# The long run: random exploration; a failure is kept in .hypothesis/fuzz and replayed
# first by the next long run until it is fixed (then it becomes an @example).
settings.register_profile(
    LONG,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(".hypothesis/fuzz"),
    deadline=None,
    print_blob=True,
    max_examples=int(os.environ.get("SPOOLBOX_FUZZ_EXAMPLES", "20000")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_CHOICE = os.environ.get("SPOOLBOX_FUZZ", "ci").strip().lower()
if _CHOICE not in ("ci", "long"):
    raise RuntimeError(f"SPOOLBOX_FUZZ must be 'ci' or 'long', not {_CHOICE!r}")
PROFILE = LONG if _CHOICE == "long" else CI


def budget(ci_examples: int) -> settings:
    """The settings of one target: ``ci_examples`` examples in CI, the long count else."""
    base = settings.get_profile(PROFILE)
    if PROFILE == LONG:
        return settings(base)
    return settings(base, max_examples=ci_examples)
