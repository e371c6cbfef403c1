"""A node that takes over a mailbox reads the state the other node committed.

Two nodes on one store log on to the same inbound transport, which keeps what it
fetched on the server (as IMAP or POP3 with ``after_fetch = "keep"``) and records
what is in the inbox in its profile section.  Both read that section at their logon,
when it was empty; one of them holds the mailbox's lease and fetches everything.
When it stops and its lease runs out, the other takes over: it must read the section
again from the store, or it fetches every message a second time.  Both in the
spooler's process and in an isolated child (whose copy of the section is its own).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_inbound_batch import FAST

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig, TransportConfig
from spoolbox._core.node import NodeSettings
from spoolbox.store.memory import MemoryStore

LEASE = 0.5


def _node(name: str, store: MemoryStore, pickup: Path, isolate: bool) -> Spooler:
    transport = TransportConfig(
        "box", "isolated_providers:KeepPickup", options={"pickup": str(pickup)}, isolate=isolate
    )
    cfg = SpoolerConfig(transports=(transport,), policy=FAST, node=name)
    spooler = Spooler.open(cfg, store=store, idle=AlwaysIdle())
    spooler.as_node(NodeSettings(lease=LEASE, interval=0.1))
    return spooler


async def _inbox(store: MemoryStore) -> list[bytes]:
    return sorted([await store.read_inbox(e.id) for e in await store.list_inbox(limit=100)])


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
async def test_the_node_that_takes_over_fetches_only_what_is_new(
    tmp_path: Path, isolate: bool
) -> None:
    pickup = tmp_path / "pickup"
    pickup.mkdir()
    for i in range(3):
        (pickup / f"m{i}").write_bytes(b"Subject: %d\r\n\r\nbody\r\n" % i)
    store = MemoryStore()
    a = _node("node-a", store, pickup, isolate)
    b = _node("node-b", store, pickup, isolate)
    async with b:
        async with a:
            for sp in (a, b):
                assert await sp.wait_ready(timeout=10) == {"box": True}
            # Both logged on with an empty section; whichever holds the lease fetches.
            await a.flush(upload=False)
            await b.flush(upload=False)
            assert len(await _inbox(store)) == 3
            section = await store.profile_get("transport:box")
            assert sorted(k for k in section if k.startswith("seen:")) == [
                "seen:m0",
                "seen:m1",
                "seen:m2",
            ]
        (pickup / "m3").write_bytes(b"Subject: 3\r\n\r\nbody\r\n")
        await asyncio.sleep(LEASE * 1.5)  # node-a's lease, if it held it, ran out
        await b.flush(upload=False)
        await asyncio.sleep(0.2)
        await b.flush(upload=False)  # nothing more: what it holds is up to date
    got = await _inbox(store)
    assert got == sorted((pickup / f"m{i}").read_bytes() for i in range(4)), [
        g.split(b"\r\n")[0] for g in got
    ]
