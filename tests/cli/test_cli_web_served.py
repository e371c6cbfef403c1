"""``spoolbox web`` against a running daemon: the address of a page the daemon serves,
or, when the daemon was started before ``[web]`` was enabled, that nothing answers
there and that a restart is what serves it (the daemon reads ``[web]`` at its start)."""

from __future__ import annotations

import json
import socket

from conftest import Daemons, Home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _enable_web(home: Home, port: int) -> None:
    text = home.profile.read_text()
    home.profile.write_text(text + f"\n[web]\nenabled = true\nport = {port}\n")


def test_web_says_when_the_running_daemon_does_not_serve_the_page(
    home: Home, daemons: Daemons
) -> None:
    port = _free_port()
    proc = daemons.start(home)  # [web] off at its start
    _enable_web(home, port)
    r = home.run("web")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith(f"http://127.0.0.1:{port}/?token=")
    assert "the daemon runs but nothing answers at 127.0.0.1:" in r.stderr
    assert "restart it" in r.stderr
    r = home.run("web", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["running"] is True
    assert json.loads(r.stdout)["served"] is False
    daemons.stop(proc)
    daemons.start(home)  # reads [web] now
    r = home.run("web", "--json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert (printed["running"], printed["served"]) == (True, True)
    assert r.stderr == ""
