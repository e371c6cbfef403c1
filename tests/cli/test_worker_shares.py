"""``[daemon] workers``: a transport's ``max_connections`` holds for the daemon as a
whole.  A real daemon with two delivery workers (three delivering processes), its
SMTP listener, and the smtp transport to a real aiosmtpd server that takes its time
over each message and counts how many transactions it has at once."""

from __future__ import annotations

import asyncio
import re
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session

from conftest import (
    DEADLINE,
    Daemons,
    Home,
    relay_home,
    smtp_server,
    wait_until,
    wait_workers_logged_on,
    with_workers,
)

_SENT = re.compile(r"spoolbox\.delivery(?:\[(w\d)\])?: \S+: to=<r\d+@example\.org>.*status=sent")


class _SlowServer:
    """Each message takes ``hold`` seconds; ``most`` is the most transactions it had
    at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.received = 0
        self.hold = 0.1

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.now -= 1
        self.received += 1
        return "250 2.0.0 queued"


@pytest.fixture
def server() -> Iterator[tuple[int, _SlowServer]]:
    handler = _SlowServer()
    with smtp_server(handler) as port:
        yield port, handler


def _relay_and_stop(
    home: Home, daemons: Daemons, proc: subprocess.Popen[bytes], sink: _SlowServer, total: int
) -> list[str]:
    """``total`` messages through the listener, until the server has them all; the
    daemon stopped; which process delivered each (its ``status=sent`` line)."""
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        for i in range(total):
            smtp.sendmail("app@example.org", [f"r{i}@example.org"], f"Subject: {i}\r\n\r\nx\r\n")
    wait_until("the server to have them all", lambda: sink.received == total)
    assert daemons.stop(proc) == 0
    by = [m.group(1) or "daemon" for m in _SENT.finditer(daemons.logs[-1].read_text())]
    assert len(by) == total, by
    return by


def test_max_connections_is_shared_by_the_daemon_and_its_workers(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _SlowServer]
) -> None:
    """``max_connections = 2`` with ``workers = 2``: the daemon and ``w1`` deliver
    with one connection each and ``w2`` not at all for the relay, so the server never
    has more than two messages at once (six before: two a process); the daemon says
    so at start."""
    port, sink = server
    home = relay_home(tmp_path / "d", port)
    with_workers(home, 2, max_connections=2)
    proc = daemons.start(home)
    wait_workers_logged_on(daemons, 2)
    log = daemons.logs[-1].read_text()
    logged_on = {
        m.group(1): set(m.group(2).split(", "))
        for m in re.finditer(r"daemon\[(w\d)\]: transports logged on: (.*)\n", log)
    }
    # w2 runs only the transports it has a share of: the local maildir one.
    assert logged_on == {"w1": {"relay yes", "local yes"}, "w2": {"local yes"}}, log
    said = (
        "INFO spoolbox.daemon: transport 'relay': its limits are for the daemon as a "
        "whole, shared by the processes that deliver for it (the daemon, w1): "
        "max_connections = 2 as 1 + 1; w2 does not deliver for it"
    )
    assert log.count(said) == 1, log
    by = _relay_and_stop(home, daemons, proc, sink, 30)
    assert 1 <= sink.most <= 2, sink.most
    assert "w2" not in by, by


def test_the_providers_default_connections_are_shared_too(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _SlowServer]
) -> None:
    """No ``max_connections`` in the profile, ``workers = 2``: the smtp transport's
    default, 10, holds for the daemon as a whole (4 + 3 + 3), not 10 in each process
    (30 before), while the three processes all deliver."""
    port, sink = server
    sink.hold = 0.3
    home = relay_home(tmp_path / "d", port)
    with_workers(home, 2, max_connections=None)
    proc = daemons.start(home)
    wait_workers_logged_on(daemons, 2)
    said = (
        "INFO spoolbox.daemon: transport 'relay': its limits are for the daemon as a "
        "whole, shared by the processes that deliver for it (the daemon, w1, w2): "
        "max_connections = 10 (its default) as 4 + 3 + 3"
    )
    assert daemons.logs[-1].read_text().count(said) == 1, daemons.logs[-1].read_text()
    by = _relay_and_stop(home, daemons, proc, sink, 80)
    assert 4 <= sink.most <= 10, sink.most
    assert set(by) == {"daemon", "w1", "w2"}, by
