"""``spoolbox web`` against a running daemon, and ``[web]`` across reloads: a reload
switches the page on, moves it to another port and switches it off; when nothing
answers at the page's address, ``spoolbox web`` says so."""

from __future__ import annotations

import datetime
import json
import os
import socket
import urllib.request

import trustme

from conftest import Daemons, Home, free_port


def _enable_web(home: Home, port: int) -> None:
    text = home.profile.read_text()
    home.profile.write_text(text + f"\n[web]\nenabled = true\nport = {port}\n")


def _served(home: Home) -> tuple[int, dict[str, object]]:
    r = home.run("web", "--json")
    return r.returncode, json.loads(r.stdout) if r.stdout else {}


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_a_reload_switches_the_page_on_moves_it_and_switches_it_off(
    home: Home, daemons: Daemons
) -> None:
    first, second = free_port(), free_port()
    daemons.start(home)  # [web] off at its start
    assert not _answers(first)
    _enable_web(home, first)
    r = home.run("reload")
    assert r.returncode == 0, r.stderr
    code, printed = _served(home)
    assert (code, printed["running"], printed["served"]) == (0, True, True)
    assert str(printed["url"]).startswith(f"http://127.0.0.1:{first}/?token=")
    # Another port: served there, no longer on the first.
    home.profile.write_text(home.profile.read_text().replace(f"port = {first}", f"port = {second}"))
    assert home.run("reload").returncode == 0
    assert _answers(second) and not _answers(first)
    assert _served(home)[1]["served"] is True
    # Off again.
    home.profile.write_text(
        home.profile.read_text().replace("enabled = true\nport", "enabled = false\nport")
    )
    assert home.run("reload").returncode == 0
    assert not _answers(second)
    r = home.run("web")
    assert r.returncode == 5 and "the web page is off" in r.stderr
    assert "then reload the daemon (spoolbox reload)" in r.stderr
    log = daemons.logs[0].read_text()
    assert f"web page on http://127.0.0.1:{first}/" in log
    assert f"web page on http://127.0.0.1:{second}/" in log
    assert "web page stopped ([web] enabled = false)" in log
    assert "[web] changed: it takes effect at the next start" not in log


def test_a_reload_whose_page_cannot_listen_logs_why_and_mail_goes_on(
    home: Home, daemons: Daemons
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        proc = daemons.start(home)
        _enable_web(home, port)
        r = home.run("reload")
        assert r.returncode == 0, r.stderr  # the profile is good; the page stays off
        assert proc.poll() is None
        log = daemons.logs[0].read_text()
        assert "the web page cannot be served, it stays off: the web page cannot listen on" in log
        assert home.run("send", "--to", "MAILDIR:bob", "--subject", "still").returncode == 0
        # The port's holder accepts connections (its backlog) and says nothing.
        r = home.run("web")
        assert r.returncode == 3, r.stderr
        assert f"its web page does not answer at 127.0.0.1:{port} (timed out)" in r.stderr
    # The port free again, nothing serves it until the next reload.
    r = home.run("web")
    assert r.returncode == 3 and "its web page does not answer at 127.0.0.1:" in r.stderr
    assert home.run("reload").returncode == 0
    assert home.run("web").returncode == 0


def test_web_says_when_another_server_holds_the_pages_port(home: Home, daemons: Daemons) -> None:
    # The page's port set to the SMTP listener's (a port taken, the page off): the
    # listener accepts the connection, and `spoolbox web` said nothing was wrong.
    daemons.start(home)
    port = home.listener_port()
    _enable_web(home, port)
    assert home.run("reload").returncode == 0
    r = home.run("web")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith(f"http://127.0.0.1:{port}/?token=")
    assert (
        f"its web page does not answer at 127.0.0.1:{port} (something else answers "
        "there, not speaking HTTP)" in r.stderr
    )
    code, printed = _served(home)
    assert (code, printed["running"], printed["served"]) == (3, True, False)


def test_metrics_say_the_room_left_on_the_stores_disk_and_when_certificates_end(
    home: Home, daemons: Daemons
) -> None:
    port = free_port()
    _enable_web(home, port)
    end = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.UTC)
    leaf = trustme.CA().issue_cert("127.0.0.1", not_after=end)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(home.path / "cert.pem"))
    home.profile.write_text(
        home.profile.read_text()
        + '\n[listeners.secure]\nport = 0\ntls = "implicit"\ntls_cert = "cert.pem"\n'
    )
    daemons.start(home)  # ready: the page serves (the local API answers before it)
    url = str(_served(home)[1]["url"])
    token = url.split("token=", 1)[1]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    [line] = [x for x in text.splitlines() if x.startswith("spoolbox_store_disk_free_bytes ")]
    [expiry] = [
        x
        for x in text.splitlines()
        if x.startswith(
            'spoolbox_listener_certificate_expiry_timestamp_seconds{listener="secure"} '
        )
    ]
    assert float(expiry.split()[1]) == end.timestamp(), expiry
    st = os.statvfs(home.path)
    # What df says is available, give or take what was written meanwhile.
    assert abs(float(line.split()[1]) - st.f_bavail * st.f_frsize) < 64 * 2**20, line
