"""What the web tests on real ``spoolbox run`` daemons share: the nodes of
``tests/cluster/nodes.py`` (one profile each, on a shared SQLite file) with the web
page switched on, the SMTP sink they relay to (fixtures ``cluster`` and ``sink``),
an HTTP client that went through the token's first visit, and a reader of the page's
event stream in a thread."""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))

from nodes import (
    DEADLINE,
    Cluster,
    Node,
    SharedStore,
    Sink,
    free_port,
    new_message,
    wait_for,
)

__all__ = [
    "DEADLINE",
    "Cluster",
    "EventReader",
    "SharedStore",
    "Sink",
    "api_rows",
    "cluster",
    "free_port",
    "new_message",
    "page_client",
    "read_rss",
    "rows_of",
    "sink",
    "wait_for",
    "web_section",
]


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink.running() as s:
        yield s


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Nodes on one SQLite file, stopped at the end."""
    c = Cluster(tmp_path, SharedStore.sqlite(tmp_path / "shared" / "spool.db"))
    try:
        yield c
    finally:
        c.stop_all()


def web_section(port: int) -> str:
    """The profile's ``[web]`` table (for ``Cluster.add(transports=...)``)."""
    return f"\n[web]\nenabled = true\nport = {port}\n"


@contextlib.contextmanager
def page_client(node: Node) -> Iterator[httpx.Client]:
    """A client of ``node``'s page holding the cookie its first visit set."""
    done = node.cli("web")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    with httpx.Client(base_url=url.split("/?", 1)[0], timeout=DEADLINE) as client:
        first = client.get(url)
        assert first.status_code == 303, first.text
        assert client.cookies, "the first visit set no cookie"
        yield client


def read_rss(pid: int) -> int:
    """The resident set of process ``pid``, in KiB (``VmRSS`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


class EventReader:
    """The page's ``/events`` read in a thread; :meth:`until` applies the ``status``
    events to :attr:`rows` (by (node, name)) until a condition holds."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client
        self._events: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.kinds: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> EventReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=DEADLINE)  # the stream ends when the node stops

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/events") as response:
                assert response.status_code == 200
                kind = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind is not None:
                        self._events.put((kind, json.loads(line[6:])))
        except httpx.HTTPError:
            pass  # the node went away
        finally:
            self._events.put(None)

    def rest(self) -> list[str]:
        """The kinds of the events still to come, until the stream ends."""
        end = time.monotonic() + DEADLINE
        while (item := self._events.get(timeout=max(end - time.monotonic(), 0.01))) is not None:
            self.kinds.append(item[0])
        return self.kinds

    def until(
        self, what: str, predicate: Callable[[dict[tuple[str, str], dict[str, Any]]], bool]
    ) -> None:
        end = time.monotonic() + DEADLINE
        while not predicate(self.rows):
            left = end - time.monotonic()
            try:
                item = self._events.get(timeout=max(left, 0.01))
            except queue.Empty:
                item = None
                left = 0
            if left <= 0 or item is None:
                raise AssertionError(f"timed out waiting for {what} in the event stream")
            kind, data = item
            self.kinds.append(kind)
            if kind == "status":
                for row in data["rows"]:
                    self.rows[(row["node"], row["name"])] = row
                for gone in data["removed"]:
                    self.rows.pop((gone["node"], gone["name"]), None)


def rows_of(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Status rows by (node, name)."""
    return {(row["node"], row["name"]): row for row in rows}


def api_rows(client: httpx.Client) -> dict[tuple[str, str], dict[str, Any]]:
    """The page's ``/api/status`` rows, by (node, name)."""
    answer = client.get("/api/status")
    assert answer.status_code == 200, answer.text
    return rows_of(answer.json()["rows"])
