"""systemd: the notify protocol against a real AF_UNIX datagram socket and the real
daemon subprocess, the shipped unit, and ``[daemon] socket_group``."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLI, Daemons, Home, _env
from spoolbox.cli.systemd_cmd import UNIT_COMMAND, unit_text

_DEADLINE = 60.0


def _messages(sock: socket.socket) -> list[str]:
    """The next datagram's lines."""
    return sock.recv(4096).decode().splitlines()


def test_ready_after_the_listener_accepts_then_watchdog_and_stopping(
    home: Home, tmp_path: Path
) -> None:
    # A fixed free port, so that the test can connect to the listener when READY comes.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = home.profile.read_text()
    home.profile.write_text(text.replace("port = 0", f"port = {port}"))
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(_DEADLINE)
        env = _env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        with open(home.path / "daemon.log", "wb") as log:
            proc = subprocess.Popen(
                [*CLI, "--profile", str(home.profile), "run", "--no-nice"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=home.path,
            )
        try:
            ready = _messages(sock)
            assert "READY=1" in ready, ready
            assert f"MAINPID={proc.pid}" in ready
            # READY means listening: the SMTP listener and the API answer now.
            with socket.create_connection(("127.0.0.1", port), timeout=_DEADLINE) as smtp:
                assert smtp.recv(512).startswith(b"220")
            assert home.run("status").returncode == 0
            # WATCHDOG=1 keeps coming (every 0.2 s for WATCHDOG_USEC=0.4 s).
            assert _messages(sock) == ["WATCHDOG=1"]
            assert _messages(sock) == ["WATCHDOG=1"]
            proc.send_signal(signal.SIGTERM)
            while (lines := _messages(sock)) == ["WATCHDOG=1"]:
                pass
            assert lines[0] == "STOPPING=1", lines
            assert proc.wait(timeout=_DEADLINE) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_no_notify_socket_no_datagrams(home: Home, daemons: Daemons) -> None:
    # Without NOTIFY_SOCKET the daemon runs as before (the other tests' daemons too).
    proc = daemons.start(home)
    assert daemons.stop(proc) == 0


def _unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (a key may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None, line
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        section.setdefault(key, []).append(value)
    return out


def test_the_shipped_unit_has_the_directives() -> None:
    unit = _unit(unit_text())
    service = unit["Service"]
    expected = {
        "Type": ["notify"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "StateDirectory": ["spoolbox"],
        "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    }
    for key, values in expected.items():
        assert service.get(key) == values, key
    assert "@system-service" in service["SystemCallFilter"]
    assert int(service["WatchdogSec"][0]) > 0
    assert service["ExecStart"] == [f"{UNIT_COMMAND} run --no-dialog --no-nice"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_prints_it_with_this_installation(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "spoolbox.cli", "systemd-unit", "--command", "/x/spoolbox"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=_DEADLINE,
    )
    assert r.returncode == 0, r.stderr
    assert _unit(r.stdout)["Service"]["ExecReload"] == ["/x/spoolbox reload"]


def test_systemd_analyze_rates_the_unit_ok(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("SKIPPED LOUDLY: systemd-analyze is not installed (Debian package systemd)")
    path = tmp_path / "spoolbox.service"
    path.write_text(unit_text())
    # --threshold: exit non-zero above this exposure (x10): 2.0 is "OK" at worst.
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=_DEADLINE,
    )
    if "offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip(f"SKIPPED LOUDLY: this systemd-analyze has no --offline: {r.stderr}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "OK" in r.stdout.splitlines()[-1]


def _group() -> grp.struct_group:
    for name in ("mail", "daemon", "adm"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip("SKIPPED LOUDLY: no group mail, daemon or adm to give the socket to")


def test_socket_group_makes_the_socket_0660_for_that_group(home: Home, daemons: Daemons) -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: giving the socket to another group needs root")
    group = _group()
    text = home.profile.read_text()
    home.profile.write_text(
        text.replace("[daemon]\n", f'[daemon]\nsocket_group = "{group.gr_name}"\n', 1)
    )
    daemons.start(home)
    st = os.stat(home.path / "spoolbox.sock")
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == group.gr_gid


def test_socket_group_that_does_not_exist_is_named(home: Home) -> None:
    text = home.profile.read_text()
    home.profile.write_text(
        text.replace("[daemon]\n", '[daemon]\nsocket_group = "no-such-group-sbx"\n', 1)
    )
    r = home.run("run", "--no-nice")
    assert r.returncode == 5
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        f"spoolbox: {home.profile}: [daemon] socket_group: no such group 'no-such-group-sbx' "
        "(create it: groupadd --system no-such-group-sbx)"
    )


def test_without_socket_group_the_socket_is_0600(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    assert stat.S_IMODE(os.stat(home.path / "spoolbox.sock").st_mode) == 0o600
