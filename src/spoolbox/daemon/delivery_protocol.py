"""What the daemon and a delivery worker process say to each other, and both import.

The daemon's side is :mod:`spoolbox.daemon.workers`, the worker's
:mod:`spoolbox.daemon.delivery_worker`; neither imports the other.  The daemon's
lines on the worker's stdin, one JSON object each:

* first the settings, :class:`DeliverySpec` (the interactive logon dialog's answers
  included: never on a command line);
* ``{"wake": [transport, ...], "route": bool}``: work was committed for those
  transports (``route``: some recipients wait for the router), so an idle worker
  claims it at once instead of at its next look at the queue;
* ``{"reload": true}``: read the profile again (the daemon's SIGHUP).

The end of its stdin stops the worker (it drains, as on SIGTERM).  The worker's
lines on its stdout: ``{"ready": true, "pid", "node"}`` or ``{"error"}`` once, then
``{"reloaded": bool, "error"}`` after a reload and ``{"stats"}`` (its spooler's
counters, its transports', and its store's, :func:`store_counters`) when they
changed, at most every :data:`STATS_INTERVAL` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["STATS_INTERVAL", "DeliverySpec", "store_counters", "worker_node"]

#: a worker's counters go to the daemon at most this often (seconds)
STATS_INTERVAL = 1.0


def store_counters(stats: Mapping[str, object]) -> dict[str, int]:
    """A worker's store's counters for its status row (``store.statistics()``):
    its commits and, on SQLite, its waits for the write lock and the time it held
    it (``store_lock_waits``, ``store_lock_wait_ms``, ``store_write_ms``)."""
    out: dict[str, int] = {}
    for key, name, scale in (
        ("commits", "store_commits", 1),
        ("lock_waits", "store_lock_waits", 1),
        ("lock_wait_seconds", "store_lock_wait_ms", 1000),
        ("write_seconds", "store_write_ms", 1000),
    ):
        value = stats.get(key)
        if isinstance(value, int | float):
            out[name] = round(value * scale)
    return out


def worker_node(node: str, index: int) -> str:
    """The node name (the store's lease owner) of delivery worker ``index`` of the
    daemon whose node is ``node``: ``HOST-w1``.  The same at every start of it, so a
    worker that died gets its leases back when it starts again."""
    return f"{node}-w{index}"


@dataclass(frozen=True, slots=True)
class DeliverySpec:
    """What a delivery worker needs, sent as the first line of its stdin."""

    index: int  # 1..N: "w1" in its log lines
    node: str  # its node name in leases (worker_node)
    profile: str  # the profile's path: the worker reads it itself
    log_level: str
    log_format: str = "auto"  # [log] format: the worker decides "auto" itself
    #: the daemon's delivering processes (its own spooler and its workers): the
    #: limits a transport sets are shared among them (:mod:`.shares`)
    processes: int = 1
    #: the logon dialog's answers, [transport, option, value] (secrets: stdin only)
    extra_secrets: list[list[str]] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"w{self.index}"

    def secrets_map(self) -> Mapping[tuple[str, str], str]:
        return {(t, o): v for t, o, v in self.extra_secrets}

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "node": self.node,
                "profile": self.profile,
                "log_level": self.log_level,
                "log_format": self.log_format,
                "processes": self.processes,
                "extra_secrets": self.extra_secrets,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DeliverySpec:
        return cls(**json.loads(text))
