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

With ``[daemon] standby_when_crowded = true`` a node does more than warn: when the
nodes up on its machine outnumber the CPUs, the first of them by name (as many as
there are CPUs) deliver and a node after them *stands by* (:func:`standby_reason`):
it starts no new claims and no mailbox polls (a flush still goes through), keeps its
listeners and API, and looks again every :data:`STANDBY_RECHECK` seconds; when
fewer are up (a node stopped, or crashed: a node on this machine whose process is
gone counts as gone at once, before its lease runs out) it delivers again.
A node stands by only when the nodes that deliver serve each of its transports in
the same direction (their published status rows say so): mail that only it could
send is never left waiting.  Every node computes the same order from the same
records, and the first name is always among those that deliver.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Final

from ..store import NodeRecord, NodeState
from ..store.cluster import node_state

__all__ = [
    "INTERVAL",
    "STANDBY_INTERVAL",
    "STANDBY_RECHECK",
    "Served",
    "crowded",
    "pid_alive",
    "running_here",
    "served_by",
    "standby_reason",
    "watch_crowding",
]

log = logging.getLogger("spoolbox.daemon")

#: seconds between two looks at the store's nodes
INTERVAL: Final = 60.0
#: ... with ``standby_when_crowded``: while delivering, a node looks this often
#: whether it should stand by ...
STANDBY_INTERVAL: Final = 10.0
#: ... and while standing by, this often whether it should deliver again: a node of
#: this machine that crashed is taken over within about this long (its process is
#: looked for, its lease is not waited for)
STANDBY_RECHECK: Final = 1.0


#: A transport and a direction ("in" or "out") a node serves.
Served = tuple[str, str]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (signal 0: nothing is sent).  A
    process of another user counts (EPERM); so does a pid another process took since,
    which only leaves the node to its lease, as before."""
    if pid <= 0:
        return True  # not a process id we can look for: trust the lease
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it runs, as another user
    return True


def running_here(
    records: Iterable[NodeRecord], *, host: str, me: str, alive: Callable[[int], bool]
) -> list[NodeRecord]:
    """``records`` without the nodes of ``host`` (other than ``me``) whose process is
    gone: a node killed on this machine counts as gone at once, not when its lease
    runs out (15 s after its last heartbeat).  (A node in a container of its own
    that publishes this machine's host name looks gone from here: this node then
    delivers rather than stands by, the safe side.)"""
    return [r for r in records if r.host != host or r.name == me or alive(r.pid)]


def served_by(rows: Iterable[Mapping[str, object]]) -> set[Served]:
    """What a node serves, from its status rows (as published): each transport row
    with its outbound or inbound side enabled."""
    out: set[Served] = set()
    for row in rows:
        if row.get("resource_type") != "transport":
            continue
        bits = row.get("status_bits")
        name = row.get("name")
        if not isinstance(bits, list) or not isinstance(name, str):
            continue
        if "OUTBOUND_ENABLED" in bits:
            out.add((name, "out"))
        if "INBOUND_ENABLED" in bits:
            out.add((name, "in"))
    return out


def _up_here(records: Iterable[NodeRecord], host: str, now: float) -> dict[str, NodeRecord]:
    return {r.name: r for r in records if r.host == host and node_state(r, now=now) is NodeState.UP}


def standby_reason(
    records: Iterable[NodeRecord],
    *,
    me: str,
    mine: Collection[Served],
    host: str,
    cpus: int | None,
    now: float,
) -> str | None:
    """Why node ``me`` (serving ``mine``) should stand by, or None when it should
    deliver: it is not among the first ``cpus`` names of the nodes up on ``host``
    (itself counted), and those first ones serve all of ``mine``."""
    up = _up_here(records, host, now)
    names = sorted({*up, me})
    if cpus is None or len(names) <= cpus:
        return None
    delivering = names[:cpus]
    if me in delivering:
        return None
    served: set[Served] = set()
    for name in delivering:
        found = up.get(name)
        if found is not None:
            served |= served_by(found.rows)
    if not set(mine) <= served:
        return None
    return (
        f"standing by: {len(names)} spoolbox nodes are up on this machine ({host}: "
        f"{', '.join(names)}) and it has {cpus} CPU{'s' * (cpus != 1)}; "
        f"{', '.join(delivering)} deliver{'s' * (len(delivering) == 1)} this node's "
        "transports; it starts no new delivery or mailbox poll (a flush still runs) "
        "until fewer are up ([daemon] standby_when_crowded)"
    )


def crowded(
    records: Iterable[NodeRecord], *, host: str, cpus: int | None, now: float
) -> tuple[int, str] | None:
    """``(count, warning)`` when more nodes are up on ``host`` than ``cpus``, else
    None (also when the CPUs are unknown)."""
    here = sorted(_up_here(records, host, now))
    if cpus is None or len(here) <= cpus:
        return None
    return len(here), (
        f"{len(here)} spoolbox nodes are up on this machine ({host}: {', '.join(here)}) "
        f"and it has {cpus} CPU{'s' * (cpus != 1)}: with more delivering processes than "
        "CPUs each message costs more CPU, and the drain is no faster, or slower "
        "(four nodes drained slower than two on two CPUs; docs/operations.md, "
        "'Running several nodes'); with [daemon] standby_when_crowded = true the "
        "nodes after the first ones stand by"
    )


async def watch_crowding(
    nodes: Callable[[], Awaitable[list[NodeRecord]]],
    *,
    host: str,
    cpus: int | None,
    clock: Callable[[], float],
    interval: float | None = None,
    me: str = "",
    mine: Callable[[], Collection[Served]] | None = None,
    stand_by: Callable[[str | None], None] | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> None:
    """Look now and every ``interval`` s (:data:`INTERVAL`, or with ``stand_by``
    :data:`STANDBY_INTERVAL`, :data:`STANDBY_RECHECK` while standing by).  The nodes
    of this host whose process is gone (``alive``) are not counted.

    Without ``stand_by``: a WARNING when the count first passes the CPUs, and again
    each time it grows.  With it (``me`` serving ``mine()``): ``stand_by(reason)``
    when this node should stand by (a WARNING says why), ``stand_by(None)`` when it
    should deliver again (INFO); a node that delivers while others stand by says
    nothing.  A store that cannot answer is looked at again next time (DEBUG), and
    the node keeps doing what it did."""
    warned = 0
    standing: str | None = None
    while True:
        try:
            records = running_here(await nodes(), host=host, me=me, alive=alive)
        except Exception as exc:  # the store's trouble is reported elsewhere
            log.debug("cannot list the nodes: %s", exc)
        else:
            now = clock()
            if stand_by is None:
                found = crowded(records, host=host, cpus=cpus, now=now)
                if found is not None and found[0] > warned:
                    warned = found[0]
                    log.warning("%s", found[1])
            else:
                served = mine() if mine is not None else ()
                reason = standby_reason(records, me=me, mine=served, host=host, cpus=cpus, now=now)
                if (reason is None) != (standing is None):
                    if reason is not None:
                        log.warning("%s", reason)
                    else:
                        names = ", ".join(sorted({*_up_here(records, host, now), me}))
                        log.info(
                            "delivering again: the nodes up on this machine (%s: %s) are "
                            "no more than its CPUs, or those before this one do not serve "
                            "all its transports",
                            host,
                            names,
                        )
                    standing = reason
                    stand_by(reason)
        if interval is not None:
            await asyncio.sleep(interval)
        elif stand_by is None:
            await asyncio.sleep(INTERVAL)
        else:
            await asyncio.sleep(STANDBY_INTERVAL if standing is None else STANDBY_RECHECK)
