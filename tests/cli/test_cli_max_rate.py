"""``[[transports]] max_rate``: a real daemon, its SMTP listener, the smtp transport to
a real aiosmtpd server that notes when each message arrives; the profile as ``spoolbox
init --relay`` writes it, plus ``max_rate``."""

from __future__ import annotations

import re
import smtplib
import time
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


class _Server:
    def __init__(self) -> None:
        self.arrived: list[float] = []

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.arrived.append(time.monotonic())
        return "250 2.0.0 queued"


@pytest.fixture
def server() -> Iterator[tuple[int, _Server]]:
    handler = _Server()
    with smtp_server(handler) as port:
        yield port, handler


def _home(directory: Path, relay: int, rate: str) -> Home:
    home = relay_home(directory, relay)
    text = home.profile.read_text()
    old = '\nname = "relay"\n'
    assert old in text
    home.profile.write_text(text.replace(old, old + f"max_rate = {rate}\n", 1))
    return home


def test_the_relay_keeps_to_its_rate(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _Server]
) -> None:
    port, sink = server
    home = _home(tmp_path / "d", port, '"4/s"')
    listed = {t["name"]: t for t in home.json("transports")["configured"]}
    assert (listed["relay"]["max_rate"], listed["local"]["max_rate"]) == ("4/s", None)
    # Before the daemon ever ran: nothing sent, and no store made to say so.
    assert listed["relay"]["sent_in_window"] == 0
    assert not list(home.path.rglob("*.sqlite3"))
    assert "4/s (0 in the window now)" in home.run("transports").stdout
    proc = daemons.start(home)
    # Ten messages in one SMTP session, taken as fast as the listener answers.
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        for i in range(10):
            smtp.sendmail("app@example.org", [f"r{i}@example.org"], f"Subject: {i}\r\n\r\nx\r\n")
    wait_until("the server to have all ten", lambda: len(sink.arrived) == 10)
    arrived = sink.arrived
    # Four at most in a second: sent in three rounds a second apart (at 0, 1 and 2 s),
    # so no 0.9 s holds more than four arrivals, and the last came 1.8 s or more after
    # the first (a round's first send may take up to 0.2 s longer to arrive).
    for i, t in enumerate(arrived):
        assert sum(1 for u in arrived[i:] if u < t + 0.9) <= 4, arrived
    assert arrived[-1] - arrived[0] >= 1.8, arrived
    listed = {t["name"]: t for t in home.json("transports")["configured"]}
    assert listed["relay"]["max_rate"] == "4/s"
    assert 1 <= listed["relay"]["sent_in_window"] <= 4
    assert daemons.stop(proc) == 0
    log = daemons.logs[-1].read_text()
    assert "transport 'relay': max_rate 4/s reached; the next message in" in log
    assert log.count("status=sent") == 10


def test_delivery_workers_share_the_rate(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _Server]
) -> None:
    """``[daemon] workers = 2``: three processes deliver from one SQLite file, and
    ``max_rate = "4/s"`` holds for the three together (the window is the store's),
    not four a second each; how they share the relay's own ``max_connections`` is
    said at start."""
    port, sink = server
    home = _home(tmp_path / "d", port, '"4/s"')
    with_workers(home, 2, max_connections=2)
    proc = daemons.start(home)
    wait_workers_logged_on(daemons, 2)
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        for i in range(12):
            smtp.sendmail("app@example.org", [f"r{i}@example.org"], f"Subject: {i}\r\n\r\nx\r\n")
    wait_until("the server to have all twelve", lambda: len(sink.arrived) == 12)
    arrived = sink.arrived
    for i, t in enumerate(arrived):
        assert sum(1 for u in arrived[i:] if u < t + 0.9) <= 4, arrived
    assert arrived[-1] - arrived[0] >= 1.8, arrived
    assert daemons.stop(proc) == 0
    said = (
        "INFO spoolbox.daemon: transport 'relay': its limits are for the daemon as a whole, "
        "shared by the processes that deliver for it (the daemon, w1): max_connections = 2 "
        "as 1 + 1; w2 does not deliver for it"
    )
    assert daemons.logs[-1].read_text().count(said) == 1


def test_a_restarted_daemon_keeps_the_window(
    tmp_path: Path, daemons: Daemons, server: tuple[int, _Server]
) -> None:
    """A quota a day long is not reset by a restart: the sends are in the store."""
    port, sink = server
    home = _home(tmp_path / "d", port, '"2/h"')
    proc = daemons.start(home)
    with smtplib.SMTP("127.0.0.1", home.listener_port(), timeout=DEADLINE) as smtp:
        for i in range(3):
            smtp.sendmail("app@example.org", [f"r{i}@example.org"], f"Subject: {i}\r\n\r\nx\r\n")
    wait_until("two sent", lambda: len(sink.arrived) == 2)
    assert daemons.stop(proc) == 0
    # With no daemon, `spoolbox transports` reads the window from the store.
    offline = home.json("transports")
    listed = {t["name"]: t for t in offline["configured"]}
    assert offline["source"] == "profile"
    assert (listed["relay"]["sent_in_window"], listed["local"]["sent_in_window"]) == (2, None)
    assert "2/h (2 in the window now)" in home.run("transports").stdout
    proc = daemons.start(home)
    listed = {t["name"]: t for t in home.json("transports")["configured"]}
    assert (listed["relay"]["max_rate"], listed["relay"]["sent_in_window"]) == ("2/h", 2)
    wait_until(
        "the restarted daemon to say why the third waits",
        lambda: "max_rate 2/h reached" in daemons.logs[-1].read_text(),
    )
    # The wait in plain seconds (an hour less the seconds since the two were sent).
    said = re.search(
        r"max_rate 2/h reached; the next message in ([0-9,]+) s ", daemons.logs[-1].read_text()
    )
    assert said is not None and 3_500 < int(said.group(1).replace(",", "")) <= 3_600, said
    time.sleep(1.0)
    assert len(sink.arrived) == 2
    queued = home.json("queue", "list")
    assert [m["state"] for m in queued["messages"]] == ["queued"], queued
    # Why it waits, where a user looks: queue show.
    [third] = queued["messages"]
    shown = home.json("queue", "show", third["id"])
    why = "max_rate 2/h reached (2 sent in the last 1 h)"
    assert [r.get("waiting") for r in shown["recipients"]] == [why], shown
    assert f"via relay, waiting: {why}" in home.run("queue", "show", third["id"]).stdout
    # A retry cannot make it go sooner, and says why.
    retried = home.run("queue", "retry", third["id"])
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == (
        f"{third['id']}: queued (0 recipients made ready; waiting: {why})"
    )
    # And in the transport's row of spoolbox status.
    rows = {row["name"]: row for row in home.json("status")["rows"]}
    assert rows["relay"]["detail"] == (
        "max_rate 2/h reached: the rest stays queued until there is room"
    ), rows["relay"]
    # A flush says so too, and does not wait out its deadline for an hour's room.
    started = time.monotonic()
    r = home.run("flush", "--upload", "--timeout", "30")
    assert time.monotonic() - started < 20, r.stdout
    assert r.returncode == 75, r.stdout
    line = re.search(r"^relay: 0 delivered, 1 message still queued \(.*\)$", r.stdout, re.M)
    assert line is not None, r.stdout
    assert re.search(r"; max_rate 2/h reached; room again in 3,[0-9]{3} s\)$", line.group(0))
    assert "deadline" not in r.stdout, r.stdout
    assert daemons.stop(proc) == 0


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('"fast"', 'expected "N/period"'),
        ('"0/s"', "the count must be 1 to 1,000,000, not 0"),
        ("14", "expected a string"),
    ],
)
def test_a_bad_max_rate_is_named(
    tmp_path: Path, server: tuple[int, _Server], value: str, says: str
) -> None:
    home = _home(tmp_path / "d", server[0], value)
    r = home.run("check", "--no-logon")
    assert r.returncode == 5, r.stderr
    assert "[transports.relay] max_rate" in r.stderr
    assert says in r.stderr
