"""An inbound mailbox is fetched by one node at a time: two real ``spoolbox run`` nodes
on one store (SQLite file, PostgreSQL database) with the same IMAP transport on a real
Dovecot, each killed with SIGKILL mid-download and started again while the other
takes over: every message reaches the inbox exactly once, and none is left on the
server."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from pathlib import Path

import dovecot_server as dc
from mailbox_kit import message
from nodes import DSN_ENV, Cluster, SharedStore, Sink, wait_for

from spoolbox.store import SQLiteStore

N = 1500
_ID = re.compile(rb"^Message-ID: (<[^>]+>)\r?$", re.MULTILINE)


async def _inbox(store: SharedStore) -> list[bytes]:
    if store.backend == "postgres":
        from spoolbox.store.postgres import PostgresStore

        opened: object = PostgresStore(store.env[DSN_ENV], pool_size=1)
    else:
        opened = SQLiteStore(Path(store.toml.split('"')[1]))
    async with opened as s:  # type: ignore[attr-defined]
        entries = await s.list_inbox(limit=10 * N)
        return [await s.read_inbox(e.id) for e in entries]


def _imap(dovecot: dc.Dovecot, user: str) -> str:
    return f"""
[[transports]]
name = "mbox"
provider = "imap"
outbound = false
[transports.options]
host = "{dovecot.host}"
port = {dovecot.imap_port}
tls = "none"
username = "{user}"
password = "{dc.PASSWORD}"
after_fetch = "delete"
"""


def test_a_mailbox_is_fetched_by_one_node_and_taken_over(
    cluster: Cluster, sink: Sink, dovecot: dc.Dovecot
) -> None:
    user = dovecot.add_user()
    policy = "housekeeping_interval = 1\npoll_interval = 0.2\nrelogon_delay = 0.2\n"
    a = cluster.add("node-a", sink.port, policy=policy, transports=_imap(dovecot, user))
    b = cluster.add("node-b", sink.port, policy=policy, transports=_imap(dovecot, user))
    # Mail arrives while both nodes run; meanwhile either is killed and started again.
    delivery = threading.Thread(
        target=lambda: [dovecot.deliver(user, message(i, tag="nodes")) for i in range(N)]
    )
    delivery.start()
    rng = random.Random()
    kills = 0
    while delivery.is_alive() or (kills < 2 and dovecot.files(user)):
        time.sleep(rng.uniform(0.2, 1.0))
        victim = rng.choice([a, b])
        victim.kill()  # mid-download, perhaps mid-batch
        kills += 1
        victim.start()
    delivery.join()
    wait_for("the mailbox to be empty", lambda: dovecot.files(user) == [], deadline=300)
    contents = asyncio.run(_inbox(cluster.store))
    ids = [m[1].decode() for c in contents if (m := _ID.search(c))]
    assert kills >= 1
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} messages fetched twice"
    assert sorted(ids) == sorted(f"<nodes-{i}@spoolbox.test>" for i in range(N))
    assert "another node fetches this mailbox" in a.log() + b.log()
