"""The limits a transport sets, shared among a daemon's delivering processes.

With ``[daemon] workers = N`` the daemon's own spooler and its N delivery workers
each run the profile's outbound transports, each with its own connections and
per-destination counts.  A limit the profile sets for a transport is meant for the
daemon as a whole (a smart host that takes 3 connections takes 3 from this machine,
however many processes deliver), so each process gets its share of it:

* ``max_connections`` and ``destination_concurrency`` are divided among the
  processes that deliver for the transport: as many of them as the smaller limit
  allows (``max_connections = 2`` with 3 processes: the daemon and ``w1`` deliver
  for it, ``w2`` leaves it to them), the daemon first, each a whole share (5 over 3:
  2, 2, 1; the remainder to the first).  The shares add up to the limit.
* A transport with a ``destination_rate_delay`` (seconds between two messages to one
  destination) is delivered for by the daemon alone, so that the pause holds between
  any two messages, as with one process.

* A transport whose provider holds something only one process may hold (``one_process``:
  the sms transport's modem, on a serial port) is delivered for by the daemon alone.

The limits shared are the transport's as its provider reads them, its defaults
included: a provider may say them (``process_limits(config)``, a static method:
a mapping of the keys above to what a process would hold to, e.g. the smtp
transport's ``max_connections``, 10 unless the profile says otherwise; the bundled
providers do, :func:`spoolbox.daemon.preflight.provider_limits` asks).  For a
provider that does not, the values set in the profile are shared, as numbers the
transport will take (anything else is left for the provider to refuse).
``max_rate`` is kept in the store and shared as it is.  Pure functions (the limits
of each transport come in through ``limits_of``): :func:`process_transports` is what
the daemon and each worker apply to their configuration, :func:`shares_told` what
``spoolbox check`` and the daemon's start say of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import TransportConfig

__all__ = [
    "DIVIDED",
    "ONE_PROCESS",
    "LimitsOf",
    "TransportShare",
    "idle_workers",
    "process_transports",
    "profile_limits",
    "share",
    "shares_told",
    "transport_share",
]

#: Whole numbers divided among the processes that deliver for the transport.
DIVIDED = ("max_connections", "destination_concurrency")
#: Limits that hold between any two messages, or a provider that runs in one process
#: only: one process delivers (the daemon).
ONE_PROCESS = ("destination_rate_delay", "one_process")

#: A transport's limits as a process would hold to them (the profile's options, or
#: what its provider says of them, defaults included).
LimitsOf = Callable[[TransportConfig], Mapping[str, object]]


def profile_limits(transport: TransportConfig) -> Mapping[str, object]:
    """The limits the profile sets for ``transport`` (its options as written)."""
    return transport.options


def share(limit: int, index: int, processes: int) -> int:
    """Process ``index``'s (0 .. processes - 1; 0 is the daemon) whole share of
    ``limit``: 5 over 3 is 2, 2, 1; 2 over 3 is 1, 1, 0."""
    if processes < 1 or not 0 <= index < processes:
        raise ValueError(f"process {index} of {processes}")
    base, extra = divmod(limit, processes)
    return base + (1 if index < extra else 0)


def _count(value: object) -> int | None:
    """A limit the transport would take as a whole number of 1 or more, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _one(key: str, value: object) -> float | None:
    """A limit that leaves the transport to one process: its value, or None."""
    if key == "one_process":
        return 1.0 if value is True else None
    return _seconds(value)


@dataclass(frozen=True, slots=True)
class TransportShare:
    """How one transport's limits are shared among ``processes`` delivering
    processes: ``serving`` of them deliver for it (the first ones: the daemon, then
    ``w1`` ...), each with ``options(index)``."""

    transport: str
    processes: int
    serving: int
    #: the limits shared, with their values
    limits: Mapping[str, float]
    #: those of them the profile does not set (the provider's defaults)
    defaults: frozenset[str] = frozenset()

    def serves(self, index: int) -> bool:
        return index < self.serving

    def options(self, index: int) -> dict[str, int]:
        """The divided limits process ``index`` keeps in place of the profile's (none
        for one that does not serve)."""
        if not self.serves(index):
            return {}
        return {
            key: share(int(value), index, self.serving)
            for key, value in self.limits.items()
            if key in DIVIDED
        }


def transport_share(
    transport: TransportConfig, processes: int, limits_of: LimitsOf = profile_limits
) -> TransportShare | None:
    """The share of ``transport``'s limits (``limits_of`` says them), or None when it
    has none (or only one process delivers)."""
    if processes <= 1 or not transport.outbound:
        return None
    options = limits_of(transport)
    limits: dict[str, float] = {}
    serving = processes
    for key in DIVIDED:
        count = _count(options.get(key))
        if count is not None:
            limits[key] = count
            serving = min(serving, count)
    for key in ONE_PROCESS:
        value = _one(key, options.get(key))
        if value is not None:
            limits[key] = value
            serving = 1
    if not limits:
        return None
    written = transport.options
    defaults = frozenset(key for key in limits if key not in written)
    return TransportShare(transport.name, processes, serving, limits, defaults)


def process_transports(
    transports: tuple[TransportConfig, ...],
    index: int,
    processes: int,
    limits_of: LimitsOf = profile_limits,
) -> tuple[TransportConfig, ...]:
    """``transports`` as process ``index`` of ``processes`` runs them: each outbound
    one with this process's share of its limits; one the process has no share of is
    left out (never by the daemon, index 0, which serves every transport)."""
    out = []
    for transport in transports:
        found = transport_share(transport, processes, limits_of)
        if found is None:
            out.append(transport)
        elif found.serves(index):
            options = {**transport.options, **found.options(index)}
            out.append(dataclasses.replace(transport, options=options))
    return tuple(out)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def shares_told(
    transports: tuple[TransportConfig, ...], workers: int, limits_of: LimitsOf = profile_limits
) -> list[str]:
    """One line per transport whose limits are shared among the ``workers + 1``
    delivering processes, saying each process's share."""
    processes = workers + 1
    names = ["the daemon", *(f"w{i}" for i in range(1, processes))]
    lines = []
    for transport in transports:
        found = transport_share(transport, processes, limits_of)
        if found is None:
            continue
        parts = []
        for key, value in found.limits.items():
            default = " (its default)" if key in found.defaults else ""
            if key in DIVIDED and default and found.serving == 1:
                continue  # a default the one process delivering keeps whole: nothing to say
            if key in DIVIDED:
                each = [str(found.options(i)[key]) for i in range(found.serving)]
                parts.append(f"{key} = {_number(value)}{default} as {' + '.join(each)}")
            elif key == "one_process":
                parts.append("its provider runs in one process only")
            else:
                parts.append(f"{key} = {_number(value)} s{default}, between any two messages")
        said = "; ".join(parts)
        who = ", ".join(names[: found.serving])
        line = (
            f"transport {transport.name!r}: its limits are for the daemon as a whole, "
            f"shared by the processes that deliver for it ({who}): {said}"
        )
        if found.serving < processes:
            left = ", ".join(names[found.serving :])
            verb = "does" if processes - found.serving == 1 else "do"
            line += f"; {left} {verb} not deliver for it"
        lines.append(line)
    return lines


def idle_workers(
    transports: tuple[TransportConfig, ...], workers: int, limits_of: LimitsOf = profile_limits
) -> str | None:
    """A warning when some of the ``workers`` deliver for no transport at all (every
    outbound transport's limits leave them out), else None."""
    processes = workers + 1
    # Each transport's share once (its limits are read once), then who it leaves out.
    shares = [transport_share(t, processes, limits_of) for t in transports if t.outbound]
    idle = [
        f"w{i}"
        for i in range(1, processes)
        if shares and not any(found is None or found.serves(i) for found in shares)
    ]
    if not idle:
        return None
    return (
        f"{', '.join(idle)} {'delivers' if len(idle) == 1 else 'deliver'} for no transport: "
        "the limits the transports set leave no part to "
        f"{'it' if len(idle) == 1 else 'them'} ([daemon] workers = {workers} is more than "
        "they use)"
    )
