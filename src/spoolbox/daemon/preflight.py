"""Before the daemon starts, and for ``spoolbox check``: every transport's options
read as its provider's logon reads them, without logging on.

A provider may offer ``check_options(config)`` (a static method; the bundled ones
do): it raises :class:`~spoolbox.contract.OptionError` or :class:`ValueError` for
options that can never work (a typo such as ``prot = 25``: the daemon refuses to
start, naming the transport, the key and the known keys), or
:class:`~spoolbox.contract.Unconfigured` for settings that are missing (the
transport stays off-line until they are given, as for an unset password).  A
provider without it is checked by its first logon only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import load_provider_class
from ..contract import Unconfigured
from ..profile import Profile, ProfileError

__all__ = [
    "TransportCheck",
    "check_transports",
    "per_process_limits",
    "refuse_invalid_options",
]

#: The options whose limits each delivering process keeps for itself (the lane's
#: connections, its per-destination counts and rests): ``max_rate`` is the one kept
#: in the store, for every process.
PER_PROCESS = ("max_connections", "destination_concurrency", "destination_rate_delay")


@dataclass(frozen=True, slots=True)
class TransportCheck:
    """What the options of one transport say: ``problem`` is None when they are fine;
    ``invalid`` when they can never work (else the problem is missing settings)."""

    transport: str
    problem: str | None = None
    invalid: bool = False


def check_transports(profile: Profile) -> list[TransportCheck]:
    """One :class:`TransportCheck` per transport of ``profile``, in transport order."""
    missing: dict[str, list[str]] = {}
    for m in profile.missing:
        missing.setdefault(m.transport, []).append(f"{m.option} is not set ({m.source})")
    out = []
    for transport in profile.spooler.transports:
        name = transport.name
        if name in missing:
            out.append(TransportCheck(name, "not configured: " + "; ".join(missing[name])))
            continue
        try:
            cls = load_provider_class(transport.provider)
        except LookupError as exc:
            out.append(TransportCheck(name, str(exc), invalid=True))
            continue
        check = getattr(cls, "check_options", None)
        try:
            if check is not None:
                check(transport.options)
        except Unconfigured as exc:
            out.append(TransportCheck(name, f"not configured: {exc}"))
        except ValueError as exc:  # OptionError is one
            out.append(TransportCheck(name, str(exc), invalid=True))
        else:
            out.append(TransportCheck(name))
    return out


def refuse_invalid_options(profile: Profile) -> None:
    """ProfileError naming the first transport whose options can never work."""
    for found in check_transports(profile):
        if found.invalid and found.problem is not None:
            raise ProfileError(profile.path, found.problem, f"[transports.{found.transport}]")


def per_process_limits(profile: Profile, workers: int) -> list[str]:
    """With ``workers`` delivery worker processes: for each transport whose options set
    a limit each process keeps for itself (:data:`PER_PROCESS`), a warning that it
    holds in each of the ``workers + 1`` delivering processes, not for the daemon as a
    whole (a relay that takes 3 connections gets up to 3 from each).  Set explicitly
    only: the defaults are meant per process."""
    if workers <= 0:
        return []
    processes = workers + 1
    out = []
    for transport in profile.spooler.transports:
        if not transport.outbound:
            continue
        named = [f"{k} = {transport.options[k]}" for k in PER_PROCESS if k in transport.options]
        if named:
            these = " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
            out.append(
                f"transport {transport.name!r}: {these} "
                f"{'holds' if len(named) == 1 else 'hold'} in each of the {processes} "
                f"delivering processes ([daemon] workers = {workers}), up to {processes} "
                "times as much for the daemon as a whole; divide by "
                f"{processes} for the same limit (max_rate is shared by every process)"
            )
    return out
