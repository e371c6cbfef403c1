"""More spoolbox nodes on one machine than it has CPUs: a warning.

Nodes on a PostgreSQL store may run anywhere; a user who starts several on one
machine (``spoolbox@.service`` instances, or daemons with ``[daemon] workers``, each
worker a node) gains nothing once they outnumber the CPUs: each message then costs
more CPU, and on a 2-CPU machine four nodes drained slower than two in every run
(docs/benchmarks.md, "Issue 16" sections).  The daemon looks at the nodes the store
lists as up on its own host (the name each node publishes) when it has started and
every :data:`INTERVAL` seconds after, and warns once when they are more than the
CPUs it may use; it says so again only when their number grows further.
(:func:`.workers.workers_advice` says the same of SQLite workers before they start.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from ..store import NodeRecord, NodeState
from ..store.cluster import node_state

__all__ = ["INTERVAL", "crowded", "watch_crowding"]

log = logging.getLogger("spoolbox.daemon")

#: seconds between two looks at the store's nodes
INTERVAL: Final = 60.0


def crowded(
    records: Iterable[NodeRecord], *, host: str, cpus: int | None, now: float
) -> tuple[int, str] | None:
    """``(count, warning)`` when more nodes are up on ``host`` than ``cpus``, else
    None (also when the CPUs are unknown)."""
    here = sorted(
        r.name for r in records if r.host == host and node_state(r, now=now) is NodeState.UP
    )
    if cpus is None or len(here) <= cpus:
        return None
    return len(here), (
        f"{len(here)} spoolbox nodes are up on this machine ({host}: {', '.join(here)}) "
        f"and it has {cpus} CPU{'s' * (cpus != 1)}: with more delivering processes than "
        "CPUs each message costs more CPU, and the drain is no faster, or slower "
        "(four nodes drained slower than two on two CPUs; docs/operations.md, "
        "'Running several nodes')"
    )


async def watch_crowding(
    nodes: Callable[[], Awaitable[list[NodeRecord]]],
    *,
    host: str,
    cpus: int | None,
    clock: Callable[[], float],
    interval: float = INTERVAL,
) -> None:
    """Look now and every ``interval`` s; a WARNING when the count first passes the
    CPUs, and again each time it grows.  A store that cannot answer is looked at
    again next time (DEBUG)."""
    warned = 0
    while True:
        try:
            records = await nodes()
        except Exception as exc:  # the store's trouble is reported elsewhere
            log.debug("cannot list the nodes: %s", exc)
        else:
            found = crowded(records, host=host, cpus=cpus, now=clock())
            if found is not None and found[0] > warned:
                warned = found[0]
                log.warning("%s", found[1])
        await asyncio.sleep(interval)
