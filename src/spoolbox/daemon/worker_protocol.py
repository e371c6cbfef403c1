"""What the daemon and a listener worker process say to each other, and both import.

The daemon's side is :mod:`spoolbox.daemon.listener_processes`, the worker's
:mod:`spoolbox.daemon.listener_worker`; neither imports the other.  The settings go to
the worker as the first line of its stdin (:class:`WorkerSpec`, secrets included:
never on a command line), then the routing table whenever it changes
(``{"routes": ...}``).  The worker answers on its stdout: ``{"ready": true, "pid"}``
or ``{"error"}``, then ``{"n", "to", "unrouted"}`` for what it committed in one loop
turn and ``{"stats"}`` when its counters changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..routing import RouteEntry, RoutingTable

__all__ = ["STATS_INTERVAL", "WorkerSpec", "table_from_json", "table_to_json"]

#: the listener's statistics go to the daemon at most this often (seconds)
STATS_INTERVAL = 1.0


def table_to_json(table: RoutingTable) -> list[list[Any]]:
    return [
        [
            entry.name,
            None if entry.address_types is None else sorted(entry.address_types),
            None if entry.domains is None else sorted(entry.domains),
        ]
        for entry in table.entries
    ]


def table_from_json(data: Iterable[Any]) -> RoutingTable:
    return RoutingTable.build(
        RouteEntry(
            str(name),
            None if types is None else frozenset(str(kind) for kind in types),
            None if not rest or rest[0] is None else frozenset(str(d) for d in rest[0]),
        )
        for name, types, *rest in data
    )


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs, sent as its first line of stdin."""

    name: str  # the listener's name in the profile
    options: Mapping[str, Any]  # ListenerConfig's fields
    store: str  # the SQLite file (unused with a dsn)
    synchronous: str
    lifetime: float  # policy.lifetime, for submissions without their own
    event_loop: str  # [daemon] event_loop
    log_level: str
    fd: int  # the inherited listening socket
    routes: list[list[Any]]  # table_to_json of the daemon's routing table
    secrets: list[str] = field(default_factory=list)  # redacted from the worker's log
    log_format: str = "auto"  # [log] format: the worker decides "auto" itself
    dsn: str | None = None  # [store] backend = "postgres": the database (a secret)
    local_names: dict[str, Any] | None = None  # the profile's [local_names], to_dict()

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "options": dict(self.options),  # a Secret is a str: JSON writes its value
                "store": self.store,
                "synchronous": self.synchronous,
                "lifetime": self.lifetime,
                "event_loop": self.event_loop,
                "log_level": self.log_level,
                "fd": self.fd,
                "routes": self.routes,
                "secrets": self.secrets,
                "log_format": self.log_format,
                "dsn": self.dsn,
                "local_names": self.local_names,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))
