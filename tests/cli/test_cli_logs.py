"""The daemon's log as an administrator reads it: ``spoolbox run`` in a subprocess,
relaying to a real aiosmtpd smart host (in a thread of the test).

* one ``status=`` line per recipient: sent (250), deferred (451), bounced (550);
* the ``[log] format``: text, JSON (every line parses), journald (chosen because
  stderr is the ``JOURNAL_STREAM``: priority prefixes, no time stamp);
* a smart host that refuses the password or the connection: FAILURE and its reason in
  ``spoolbox status --json``, one WARNING however many retries, one INFO when fixed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from conftest import CLI, Daemons, Home, _env, free_port, wait_until

HOST = "127.0.0.1"


class SmartHost:
    """An aiosmtpd handler: 451 for ``grey@``, 550 for ``nobody@``, 250 otherwise; AUTH
    accepts ``alice`` with :attr:`password`."""

    def __init__(self) -> None:
        self.password = "secret"
        self.received: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("grey@"):
            return "451 4.7.1 Greylisted, try again later"
        if address.startswith("nobody@"):
            return "550 5.1.1 <nobody@example.org>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 Ok: queued as 4F2"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == b"alice"
            and data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smart_host() -> Iterator[tuple[SmartHost, int]]:
    handler = SmartHost()
    port = free_port()
    controller = Controller(
        handler,
        hostname=HOST,
        port=port,
        authenticator=handler.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def write_profile(home: Home, port: int, *, log: str = "", auth: bool = False) -> None:
    """A profile relaying SMTP mail to ``port``; local sender alice (reports to the inbox)."""
    credentials = 'username = "alice"\npassword_env = "RELAY_PW"\nallow_plain_auth = true\n'
    home.profile.write_text(
        f"""
data_dir = "."
[daemon]
socket = "spoolbox.sock"
[policy]
retry_base = "1h"
router_interval = "100ms"
[identities]
senders = ["SMTP:alice@example.org"]
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
host = "{HOST}"
port = {port}
tls = "none"
{credentials if auth else ""}
{log}
"""
    )


def send(home: Home, *to: str, env: dict[str, str] | None = None) -> str:
    args = ["send", "--from", "SMTP:alice@example.org", "--subject", "hi", "--body", "x"]
    for address in to:
        args += ["--to", address]
    r = home.run(*args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def log_text(home: Home, n: int = 0) -> str:
    return (home.path / f"daemon-{n}.log").read_text()


def status_lines(text: str, mid: str) -> dict[str, str]:
    """The ``status=`` lines of message ``mid``, by recipient."""
    out = {}
    for line in text.splitlines():
        m = re.search(rf"{mid}: to=<([^>]+)>, .*status=\w+", line)
        if m:
            out[m.group(1)] = line
    return out


def test_each_recipient_outcome_is_one_status_line(
    home: Home, daemons: Daemons, smart_host: tuple[SmartHost, int]
) -> None:
    _, port = smart_host
    write_profile(home, port)
    proc = daemons.start(home)
    mid = send(home, "SMTP:bob@example.org", "SMTP:grey@example.org", "SMTP:nobody@example.org")
    wait_until("three outcomes logged", lambda: len(status_lines(log_text(home), mid)) == 3)
    wait_until("the bounce report", lambda: "sender non-delivery notification" in log_text(home))
    daemons.stop(proc)
    lines = status_lines(log_text(home), mid)
    relay = f"transport=relay, relay={HOST}, delay="
    sent = lines["bob@example.org"]
    assert re.search(r"^\S+ \S+ INFO spoolbox\.delivery: ", sent), sent
    assert relay in sent
    assert sent.endswith("dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4F2)")
    grey = lines["grey@example.org"]
    assert relay in grey
    assert grey.endswith("dsn=4.7.1, status=deferred (451 4.7.1 Greylisted, try again later)")
    bounced = lines["nobody@example.org"]
    assert bounced.endswith(
        "dsn=5.1.1, status=bounced (550 5.1.1 <nobody@example.org>: Recipient address rejected)"
    )
    (report,) = [ln for ln in log_text(home).splitlines() if "notification" in ln]
    assert report.endswith(
        f"{mid}: sender non-delivery notification: put in the inbox, to=<alice@example.org>"
    )
    assert "overran its slice" not in log_text(home)


def test_json_format_is_one_object_a_line_with_the_delivery_fields(
    home: Home, daemons: Daemons, smart_host: tuple[SmartHost, int]
) -> None:
    _, port = smart_host
    write_profile(home, port, log='[log]\nformat = "json"\n')
    proc = daemons.start(home)
    mid = send(home, "SMTP:bob@example.org")
    wait_until("the sent line", lambda: '"to": "bob@example.org"' in log_text(home))
    daemons.stop(proc)
    objects = [json.loads(line) for line in log_text(home).splitlines()]  # every line parses
    (sent,) = [o for o in objects if o.get("status") == "sent"]
    assert {k: sent[k] for k in ("level", "logger", "id", "to", "transport", "dsn")} == {
        "level": "info",
        "logger": "spoolbox.delivery",
        "id": mid,
        "to": "bob@example.org",
        "transport": "relay",
        "dsn": "2.0.0",
    }
    assert sent["response"] == "250 2.0.0 Ok: queued as 4F2"
    assert sent["relay"] == HOST and float(sent["delay"]) >= 0
    assert sent["msg"].startswith(f"{mid}: to=<bob@example.org>, ")
    assert all({"ts", "level", "logger", "msg"} <= set(o) for o in objects)


def test_journald_format_when_stderr_is_the_journal_stream(
    home: Home, smart_host: tuple[SmartHost, int], tmp_path: Path
) -> None:
    _, port = smart_host
    write_profile(home, port)  # no [log] format: "auto"
    stream = tmp_path / "journal-stream"
    with stream.open("wb") as out:
        st = os.fstat(out.fileno())
        env = _env({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        proc = subprocess.Popen(
            [*CLI, "--profile", str(home.profile), "run", "--no-nice"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd=home.path,
        )
    try:
        wait_until("the daemon to answer", lambda: home.run("status").returncode == 0)
        mid = send(home, "SMTP:bob@example.org", "SMTP:grey@example.org")
        wait_until("two outcomes", lambda: len(status_lines(stream.read_text(), mid)) == 2)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lines = stream.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>spoolbox[.\w]*: ", line) for line in lines), lines
    got = status_lines(stream.read_text(), mid)
    assert got["bob@example.org"].startswith(f"<6>spoolbox.delivery: {mid}: to=<bob@example.org>")
    assert "status=deferred" in got["grey@example.org"]


def relay_row(home: Home) -> dict[str, Any]:
    rows = {r["name"]: r for r in home.json("status")["rows"]}
    return rows["relay"]  # type: ignore[no-any-return]


def trouble(text: str) -> list[str]:
    """The transport's own lines at INFO and above."""
    return [
        line.split(" spoolbox.transport: ", 1)[1]
        for line in text.splitlines()
        if " spoolbox.transport: " in line and " DEBUG " not in line
    ]


def test_a_refused_password_shows_failure_in_status_once_in_the_log_and_clears(
    home: Home, daemons: Daemons, smart_host: tuple[SmartHost, int]
) -> None:
    handler, port = smart_host
    write_profile(home, port, auth=True)
    env = {"RELAY_PW": "wrong"}
    proc = daemons.start(home, env=env)
    # Three messages to three destinations: three connections, each refused at AUTH.
    ids = [send(home, f"SMTP:bob@{d}.example", env=env) for d in ("a", "b", "c")]
    wait_until(
        "three deferrals",
        lambda: all("status=deferred" in log_text(home).split(i, 1)[-1] for i in ids),
    )
    row = relay_row(home)
    assert "FAILURE" in row["status_bits"], row
    assert row["status"].startswith(f"cannot relay via {HOST}:{port}: smtp; 535 5.7.8")
    assert "(authentication as alice failed)" in row["status"]
    assert trouble(log_text(home)) == [f"relay: {row['status']}"]

    handler.password = "wrong"  # the smart host now takes it
    mid = send(home, "SMTP:bob@d.example", env=env)
    wait_until("the message sent", lambda: "status=sent" in log_text(home).split(mid, 1)[-1])
    wait_until("FAILURE cleared", lambda: "FAILURE" not in relay_row(home)["status_bits"])
    assert relay_row(home)["status"].startswith(f"connected to {HOST}:{port}, 1 sent")
    daemons.stop(proc)
    assert trouble(log_text(home))[1:] == ["relay: back online after 3 failures"]
    assert "wrong" not in log_text(home)  # the password is a secret: redacted if ever shown


def test_a_refused_connection_shows_failure_in_status(home: Home, daemons: Daemons) -> None:
    port = free_port()  # nothing listens there
    write_profile(home, port)
    proc = daemons.start(home)
    mid = send(home, "SMTP:bob@example.org")
    wait_until("the deferral", lambda: "status=deferred" in log_text(home).split(mid, 1)[-1])
    wait_until("FAILURE", lambda: "FAILURE" in relay_row(home)["status_bits"])
    row = relay_row(home)
    assert row["status"].startswith(f"cannot relay via {HOST}:{port}: x-spoolbox; cannot connect")
    # No server answered: no relay to name (Postfix says relay=none too).
    assert f"{mid}: to=<bob@example.org>, transport=relay, relay=none, delay=" in log_text(home)
    assert "AVAILABLE" in row["status_bits"]  # logged on; the smart host is what fails
    daemons.stop(proc)
    assert trouble(log_text(home)) == [f"relay: {row['status']}"]
