"""A flush another node asks for, and this node's destination back-off.

Two spoolers on one shared store, as two nodes.  Node b deferred a message and put
its destination in back-off (for ``retry_base``: minutes).  Node a flushes: it makes
the message ready in the store.  Node b's lane claims it before node b has heard of
the flush (its node reads requests once an hour here): the back-off it learned before
the flush must not hold the message back until its retry time, long after the flush.
The lane asks the node first (``NodePresence.flush_asked``), which finds the request
(recorded before node a made anything ready), lifts the back-off and starts node b's
part of the flush; the message is sent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from helpers import FAST, message, transport, until

from spoolbox import Address, AlwaysIdle, MessageState, Spooler, SpoolerConfig
from spoolbox._core.cluster_view import start_cluster_flush
from spoolbox._core.node import NodePresence, NodeSettings, start_node
from spoolbox.store import MemoryStore
from spoolbox.testing import Act, Script

POLICY = replace(FAST, retry_base=600.0)  # a deferral waits ten minutes
BOB = Address.parse("SMTP:bob@down.example")


def _node(name: str, script: Script, store: MemoryStore) -> Spooler:
    cfg = SpoolerConfig(transports=(transport("smtp", script),), policy=POLICY, node=name)
    return Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=False)


class _CountingStore(MemoryStore):
    """The memory store, noting the order of flush requests and of readying."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def request_flush(self, **kw: Any) -> Any:
        self.calls.append("request_flush")
        return await super().request_flush(**kw)

    async def retry_transport(self, transport: str, *, now: float) -> int:
        self.calls.append("retry_transport")
        return await super().retry_transport(transport, now=now)


async def test_a_flush_asked_by_another_node_lifts_this_nodes_back_off() -> None:
    store = _CountingStore()
    # Node a's only lane hangs on a message of its own: node b's lane takes the rest.
    a_script = Script(("SMTP",), submit=[Act.HANG])
    b_script = Script(("SMTP",), submit=[Act.FAIL_TEMP, Act.SUCCEED])
    async with _node("node-a", a_script, store) as a:
        blocker = await a.submit(message("SMTP:x@elsewhere.example"))
        await until(lambda: _claimed(store, blocker.id), what="node a to hang on its message")
        async with _node("node-b", b_script, store) as b:
            first = await b.submit(message("SMTP:bob@down.example"))
            assert await b.wait_for(first.id, [MessageState.DEFERRED], timeout=5) is (
                MessageState.DEFERRED
            )
            assert b.destination_wait("smtp", BOB) is not None
            # Node b hears of flush requests only when it asks (once an hour otherwise).
            b_node = start_node(b, store, NodeSettings(interval=3600.0))
            a_node = start_node(a, store, NodeSettings(interval=0.05))
            assert isinstance(b_node, NodePresence) and isinstance(a_node, NodePresence)
            await until(lambda: _serves(store, "node-b"), what="node b's record")
            store.calls.clear()

            flush = await start_cluster_flush(a, upload=True, download=False, deadline=3.0)

            assert await b.wait_for(first.id, timeout=5) is MessageState.SENT
            # The request was in the store before node a made anything ready.
            assert store.calls[:2] == ["request_flush", "retry_transport"], store.calls
            assert b.destination_wait("smtp", BOB) is None  # lifted by the request
            # Sent in an attempt of its own: FAIL_TEMP, then SUCCEED.
            assert b_script.names().count("submit_message") == 2
            flush.cancel()  # node a's part waits for its hung lane


async def _claimed(store: MemoryStore, message_id: str) -> bool:
    recs = await store.recipients(message_id)
    return any(r.state.name == "ACTIVE" for r in recs)


async def _serves(store: MemoryStore, node: str) -> bool:
    return any(
        n.name == node and any(r.get("name") == "smtp" for r in n.rows) for n in await store.nodes()
    )
