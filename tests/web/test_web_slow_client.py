# ruff: noqa: F811 - the fixtures imported from webnodes_support are parameters here
"""A client of the event stream that stops reading, on a real socket: a real ``spoolbox
run`` daemon (SQLite, an SMTP relay to an aiosmtpd sink) with its page on a TCP port,
and a raw socket client (a small receive buffer) that opens ``/events`` with the
cookie of the token's first visit, reads the first event, then reads nothing while
mail flows and the rows change hundreds of times.  The daemon holds at most one
pending state a row for it (:mod:`spoolbox.web.events`): its resident memory stays
within a generous bound, other clients are served meanwhile, nobody is dropped, and
when the stuck client reads at last its stream is still live and brings the rows as
they are then (the relay's final count), not every change it missed."""

from __future__ import annotations

import socket
import time
from typing import Any

from webnodes_support import (
    DEADLINE,
    Cluster,
    Sink,
    cluster,  # noqa: F401 - a fixture
    free_port,
    page_client,
    read_rss,
    sink,  # noqa: F401 - a fixture
    web_section,
)

from spoolbox import Address, NewMessage
from spoolbox.client import Client
from spoolbox.web.security import COOKIE

#: The client's receive buffer (the kernel doubles it, and keeps a minimum).
RCVBUF = 4096
#: Messages a submission carries (mail flows while the client is stuck: the rows
#: change with each delivery).
BATCH = 10
#: Batches submitted while the client reads nothing: the rows change with each
#: delivery, far more often than the 10 events a second the stream may send, and
#: more than its buffers (the client's, the kernel's fixed send buffer:
#: web.server.SEND_BUFFER, uvicorn's) hold.
BATCHES = 40
#: How much the daemon's resident memory may grow meanwhile, in KiB: generous (the
#: SQLite cache and the allocator grow with the mail too); a queue that kept every
#: change for the stuck client would grow without bound instead.
RSS_SLACK = 64 * 1024


def _messages(n: int) -> list[NewMessage]:
    return [
        NewMessage(
            sender=Address.parse("SMTP:postmaster@example.org"),
            recipients=(Address.parse("SMTP:dora@example.org"),),
            content=b"From: postmaster@example.org\r\nSubject: churn\r\n\r\nbody\r\n",
        )
        for _ in range(n)
    ]


def _open_stuck_stream(port: int, cookie: str) -> tuple[socket.socket, bytes]:
    """``GET /events`` on a raw socket with a small receive buffer, and what it read:
    up to the first event (the daemon subscribed this client)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # before connect
    sock.settimeout(DEADLINE)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Cookie: {COOKIE}={cookie}\r\nConnection: close\r\n\r\n".encode()
    )
    head = b""
    while b"event: status" not in head:
        chunk = sock.recv(RCVBUF)
        assert chunk, f"the stream ended before its first event: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock, head


def _event_kinds(stream: bytes) -> list[str]:
    kinds = []
    for block in stream.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("event: "):
                kinds.append(line[7:])
    return kinds


def test_a_client_that_stops_reading_holds_one_state_a_row_and_gets_the_latest(
    cluster: Cluster, sink: Sink
) -> None:
    port = free_port()
    node = cluster.add("solo", sink.port, transports=web_section(port))
    assert node.process is not None
    mail = Client(node.profile)
    with page_client(node) as page:

        def figures() -> dict[str, Any]:
            status: dict[str, Any] = page.get("/api/statistics").json()["status"]
            return status

        # Mail flows once before, so that the memory compared is a daemon's at work.
        mail.submit_many(_messages(5 * BATCH))
        _until("the first mail delivered", lambda: len(sink.received) >= 5 * BATCH)
        before = figures()
        rss_before = read_rss(node.process.pid)

        sock, first = _open_stuck_stream(port, page.cookies[COOKIE])
        # It reads nothing more while the rows change many times over.
        for _ in range(BATCHES):
            mail.submit_many(_messages(BATCH))
        total = (5 + BATCHES) * BATCH
        _until("every message delivered", lambda: len(sink.received) >= total)
        after = figures()
        assert after["changes_published"] - before["changes_published"] > BATCHES * BATCH
        assert after["subscribers_dropped"] == before["subscribers_dropped"]
        rss_after = read_rss(node.process.pid)
        assert rss_after < rss_before + RSS_SLACK, (rss_before, rss_after)
        # Another page is served while this one is stuck.
        again, _ = _open_stuck_stream(port, page.cookies[COOKIE])
        again.close()

        # It reads at last: the stream is still live, and brings the relay's row as
        # it is now (every delivery counted), whatever it missed in between.
        final = f'"delivered":{total}'.encode()
        seen = first
        sock.settimeout(DEADLINE)
        while final not in seen:
            chunk = sock.recv(1 << 16)
            assert chunk, f"the stream ended: {_event_kinds(seen)[-5:]}"
            seen += chunk
        sock.close()
        assert b"event: reload" not in seen


def _until(what: str, predicate: Any) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
