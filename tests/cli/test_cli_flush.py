"""``spoolbox flush`` tells the truth (issue #15): through the real command against the
real daemon and a real smart host (aiosmtpd in a thread of this process, or a raw
asyncio peer that hangs), the exit code, the plain-text report and the ``--json``
counts say what happened to the mail: delivered (0), deferred or left queued (75),
failed (69), the flush deadline passed (75); off a terminal there are no bars and no
escape sequences.  ``status --watch`` off a terminal prints lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from conftest import CLI, Daemons, Home, _env, wait_until

HOST = "127.0.0.1"
EXIT_DEFERRED, EXIT_FAILED = 75, 69


class SmartHost:
    """aiosmtpd on a loopback port in its own thread: AUTH against ``users``, RCPT
    answered with ``rcpt_reply`` when set, every accepted envelope recorded."""

    def __init__(self) -> None:
        self.users = {"alice": "right"}
        self.rcpt_reply: str | None = None
        self.received: list[list[str]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(list(envelope.rcpt_tos))
        return "250 2.0.0 Ok: queued"

    def check(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (
            self.users.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def serving(factory: Callable[[], asyncio.BaseProtocol]) -> Iterator[int]:
    """A server of ``factory``'s protocol on a free loopback port, in a thread's loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    protocols: list[asyncio.BaseProtocol] = []

    def made() -> asyncio.BaseProtocol:
        protocols.append(factory())
        return protocols[-1]

    async def main(stop: asyncio.Event) -> None:
        server = await loop.create_server(made, HOST, 0)
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        await stop.wait()
        server.close()
        for proto in protocols:  # the connections still open (a hanging peer's)
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abort()
        await server.wait_closed()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # aiosmtpd's handlers of the aborted connections
        await asyncio.sleep(0)

    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(stop),), daemon=True)
    thread.start()
    assert started.wait(10), "the test smart host did not start"
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def smart_host(host: SmartHost) -> Iterator[int]:
    def factory() -> SMTP:
        return SMTP(
            host,
            hostname="smarthost.test",
            authenticator=host.check,
            auth_require_tls=False,
            loop=asyncio.get_running_loop(),
        )

    with serving(factory) as port:
        yield port


class _HangsAfterAuth(asyncio.Protocol):
    """Greets, answers EHLO and AUTH, then never answers again (MAIL FROM hangs)."""

    seen: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        transport.write(b"220 hangs.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            cmd, self.buffer = self.buffer.split(b"\r\n", 1)
            verb = cmd.split(b" ", 1)[0].upper()
            self.seen.append(verb)
            if verb == b"EHLO":
                self.transport.write(b"250-hangs.test\r\n250 AUTH PLAIN LOGIN\r\n")
            elif verb == b"AUTH":
                self.transport.write(b"235 2.7.0 Authentication successful\r\n")


def add_relay(home: Home, port: int, *extra: str) -> None:
    with home.profile.open("a") as f:
        f.write(
            '\n[[transports]]\nname = "relay"\nprovider = "smtp"\n'
            'address_types = ["SMTP"]\n[transports.options]\n'
            f'host = "{HOST}"\nport = {port}\ntls = "none"\n'
            'username = "alice"\npassword = "right"\nallow_plain_auth = true\n'
            + "".join(f"{line}\n" for line in extra)
        )


def send(home: Home, to: str = "SMTP:bob@example.org") -> str:
    r = home.run("send", "--to", to, "--subject", "flush me", "--body", "x")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def flush_json(home: Home, *args: str) -> tuple[int, dict[str, Any]]:
    r = home.run("flush", "--upload", "-t", "relay", "--json", *args, timeout=120)
    return r.returncode, json.loads(r.stdout)


def counts(part: dict[str, Any]) -> tuple[int, int, int, int]:
    return part["delivered"], part["deferred"], part["failed"], part["queued"]


def test_refused_auth_defers_then_a_fixed_host_delivers(home: Home, daemons: Daemons) -> None:
    """535 to AUTH: deferred, exit 75, the report says so; the same mail once the
    password is right: delivered, exit 0."""
    host = SmartHost()
    host.users["alice"] = "something else"  # our password is refused: 535
    with smart_host(host) as port:
        add_relay(home, port)
        daemons.start(home)
        mid = send(home)
        code, report = flush_json(home)
        assert code == EXIT_DEFERRED, report
        relay = report["results"][0]
        assert counts(relay) == (0, 1, 0, 1), report
        assert counts(report["totals"]) == (0, 1, 0, 1)
        assert (report["cancelled"], report["timed_out"], relay["timed_out"]) == (False,) * 3

        # Not on a terminal: plain lines, no bar glyphs, no escape sequences.
        r = home.run("flush", "--upload", "-t", "relay", timeout=120)
        assert r.returncode == EXIT_DEFERRED, (r.stdout, r.stderr)
        lines = r.stdout.splitlines()
        assert lines[0].startswith("relay: 0 delivered, 1 deferred, 1 message still queued ("), (
            lines
        )
        assert lines[-1] == "flush: 0 delivered, 1 deferred, 1 message still queued", lines
        assert r.stderr == ""  # no bars (off a terminal rich draws them without glyphs)
        assert "\x1b" not in r.stdout and "━" not in r.stdout, r.stdout
        assert host.received == []
        assert home.json("queue", "show", mid)["state"] == "deferred"

        host.users["alice"] = "right"
        code, report = flush_json(home)
        assert code == 0, report
        assert counts(report["results"][0]) == (1, 0, 0, 0), report
        assert host.received == [["bob@example.org"]]
        r = home.run("flush", "--upload", "-t", "relay", timeout=120)
        assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "flush: nothing to do"), r


def test_closed_port_defers_and_exits_75(home: Home, daemons: Daemons) -> None:
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connection refused
    add_relay(home, port)
    daemons.start(home)
    send(home)
    code, report = flush_json(home)
    assert code == EXIT_DEFERRED, report
    assert counts(report["results"][0]) == (0, 1, 0, 1), report


def test_a_550_fails_the_recipient_and_exits_69(home: Home, daemons: Daemons) -> None:
    """Deferred first (AUTH refused), so the flush is what tries it: RCPT gets 550, the
    recipient fails, exit 69."""
    host = SmartHost()
    host.users["alice"] = "something else"
    with smart_host(host) as port:
        add_relay(home, port)
        daemons.start(home)
        mid = send(home)
        wait_until(
            "the first attempt", lambda: home.json("queue", "show", mid)["state"] == "deferred"
        )
        host.users["alice"] = "right"
        host.rcpt_reply = "550 5.1.1 <bob@example.org>: no such user"
        code, report = flush_json(home)
        assert code == EXIT_FAILED, report
        assert counts(report["results"][0]) == (0, 0, 1, 0), report
        assert home.json("queue", "show", mid)["state"] == "failed"


def _hang_factory(seen: list[bytes]) -> Callable[[], asyncio.Protocol]:
    def factory() -> asyncio.Protocol:
        proto = _HangsAfterAuth()
        proto.seen = seen
        return proto

    return factory


def test_hang_after_auth_is_bounded_by_command_timeout(home: Home, daemons: Daemons) -> None:
    """The smart host takes the connection and AUTH, then never answers MAIL FROM: with
    ``command_timeout = 1`` the flush ends deferred (exit 75), the recipient's response
    says what was waited for."""
    seen: list[bytes] = []
    with serving(_hang_factory(seen)) as port:
        add_relay(home, port, "command_timeout = 1")
        daemons.start(home)
        mid = send(home)
        code, report = flush_json(home, "--timeout", "100")
        assert code == EXIT_DEFERRED, report
        assert counts(report["results"][0]) == (0, 1, 0, 1), report
        assert report["timed_out"] is False
        assert b"AUTH" in seen and b"MAIL" in seen
        shown = home.json("queue", "show", mid)
        [diagnostic] = [r["diagnostic"] for r in shown["recipients"]]
        assert diagnostic.startswith(
            f"x-spoolbox; timed out after 1 s waiting for the reply of {HOST}:{port} to MAIL FROM:<"
        ), shown


def test_the_flush_deadline_stops_waiting_and_keeps_the_mail(home: Home, daemons: Daemons) -> None:
    """A host that hangs with the transport's own timeouts long (60 s): ``--timeout 1``
    ends the flush, exit 75, the message still queued (in the transport's hands)."""
    seen: list[bytes] = []
    with serving(_hang_factory(seen)) as port:
        add_relay(home, port)
        daemons.start(home)
        mid = send(home)
        wait_until("the relay to reach MAIL FROM", lambda: b"MAIL" in seen)
        code, report = flush_json(home, "--timeout", "1")
        assert code == EXIT_DEFERRED, report
        relay = report["results"][0]
        assert (report["timed_out"], relay["timed_out"]) == (True, True), report
        assert relay["queued"] == 1 and report["totals"]["queued"] == 1, report
        assert home.json("queue", "show", mid)["state"] in ("active", "queued", "deferred")
        r = home.run("flush", "--upload", "-t", "relay", "--timeout", "1", timeout=120)
        assert r.returncode == EXIT_DEFERRED, r
        assert "flush deadline reached" in r.stdout.splitlines()[0], r.stdout
        assert "the flush deadline passed" in r.stdout.splitlines()[-1], r.stdout


def test_status_watch_off_a_terminal_prints_lines(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    proc = subprocess.Popen(
        [*CLI, "--profile", str(home.profile), "status", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=home.path,
    )
    try:
        assert proc.stdout is not None
        # A table redrawn in place (rich Live) shows nothing off a terminal: wait for a
        # line, but not for ever.
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "status --watch printed nothing off a terminal"
        first = proc.stdout.readline().decode()
    finally:
        proc.kill()
        proc.communicate()
    # "HH:MM:SS name: status ..." for the first row, no escape sequences or table lines.
    time_part, rest = first.split(" ", 1)
    assert len(time_part) == 8 and time_part.count(":") == 2, first
    assert rest.split(":", 1)[0] in ("spooler", "local"), first
    assert "\x1b" not in first and "━" not in first and "┃" not in first, first


def _on_a_terminal(home: Home, *args: str) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal; its exit code and
    everything it wrote there."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "--profile", str(home.profile), *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=_env({"TERM": "xterm-256color"}),
        cwd=home.path,
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, "the command wrote nothing for 120 s"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=60), out.decode("utf-8", "replace")


def test_on_a_terminal_the_bar_ends_with_the_outcome_in_a_warning_colour(
    home: Home, daemons: Daemons
) -> None:
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()
    add_relay(home, port)
    daemons.start(home)
    send(home)
    code, out = _on_a_terminal(home, "flush", "--upload", "-t", "relay")
    assert code == EXIT_DEFERRED, out
    assert "━" in out  # the bar
    # The bar's status and the summary say it, in yellow (SGR 33).
    assert "\x1b[33m0 delivered, 1 deferred, 1 message still queued" in out, repr(out)
    assert "relay: 0 delivered, 1 deferred, 1 message still queued (" in out
