"""``spoolbox stop`` and ``spoolbox reload`` against the real daemon subprocess."""

from __future__ import annotations

import re
import smtplib
import threading

import pytest

from conftest import Daemons, Home, free_port, wait_until

_TYPO = """
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
host = "127.0.0.1"
prot = 25
"""


def test_stop_waits_until_the_daemon_has_exited(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    r = home.run("stop")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"stopped the daemon (pid {proc.pid})"
    # Exited, not merely signalled: the process is gone and its exit status is 0.
    assert proc.poll() == 0
    assert not (home.path / "spoolbox.pid").exists()
    r = home.run("stop")
    assert r.returncode == 3
    assert "no daemon runs for this profile" in r.stderr


def test_stop_works_when_the_profile_was_broken_meanwhile(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    home.profile.write_text(home.profile.read_text() + "\nbogus = 1\n")
    r = home.run("stop")
    assert r.returncode == 0, r.stderr
    assert "the profile is invalid now" in r.stderr
    assert proc.poll() == 0


def test_reload_reports_success_and_the_daemon_took_it(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    before = home.json("status")["rows"]
    assert "relay2" not in {row["name"] for row in before}
    text = home.profile.read_text()
    cut = text.index("[listeners.submission]")
    extra = f"""
[[transports]]
name = "relay2"
provider = "maildir"
address_types = ["RELAY"]
[transports.options]
root = "{home.path / "relay"}"
"""
    home.profile.write_text(text[:cut] + extra + "\n" + text[cut:])
    r = home.run("reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"reloaded {home.profile}"
    # Acknowledged means done: the new transport is there at once.
    assert "relay2" in {row["name"] for row in home.json("status")["rows"]}


def test_reload_with_bad_options_reports_them_and_the_daemon_runs_on(
    home: Home, daemons: Daemons
) -> None:
    proc = daemons.start(home)
    home.profile.write_text(home.profile.read_text() + _TYPO)
    r = home.run("reload")
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert r.stderr.startswith("spoolbox: reload failed, the daemon runs on: the new profile")
    assert "smtp option 'prot' is unknown; did you mean 'port'?" in r.stderr
    assert proc.poll() is None
    assert home.run("status").returncode == 0


def test_reload_with_an_unreadable_profile_does_not_signal(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    home.profile.write_text(home.profile.read_text() + "\nbogus = 1\n")
    r = home.run("reload")
    assert r.returncode == 5
    assert "not reloaded: the daemon runs on as before" in r.stderr
    assert proc.poll() is None


def test_reload_without_a_daemon_exits_3(home: Home) -> None:
    r = home.run("reload")
    assert r.returncode == 3, r.stderr


# -- the listeners across a reload -------------------------------------------------------
def _listener(home: Home, processes: int) -> None:
    """The default profile's listener in ``processes`` processes (0: on the daemon's
    loop), bare addresses delivered to the Maildir transport."""
    text = re.sub(r"^processes = .*\n", "", home.profile.read_text(), count=1, flags=re.M)
    text = text.replace(
        "[listeners.submission]\n",
        f'[listeners.submission]\nprocesses = {processes}\ndefault_address_type = "MAILDIR"\n',
        1,
    )
    home.profile.write_text(text)


def _listening(home: Home) -> str:
    rows = {r["name"]: r for r in home.json("status")["rows"]}
    return str(rows.get("listener:submission", {}).get("status", ""))


def _relay(port: int, home: Home, subject: str) -> None:
    """One message through the listener, then its delivery."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        _send(client, subject)
    wait_until("delivery", lambda: subject in home.delivered())


def _send(client: smtplib.SMTP, subject: str) -> None:
    refused = client.sendmail(
        "alice@example.org", ["bob@example.org"], f"Subject: {subject}\r\n\r\nhello\r\n".encode()
    )
    assert refused == {}


@pytest.mark.parametrize("processes", [0, 1], ids=["on-the-loop", "in-a-process"])
def test_a_reload_keeps_the_listener_its_port_and_its_connections(
    home: Home, daemons: Daemons, processes: int
) -> None:
    _listener(home, processes)
    daemons.start(home)
    wait_until("the listener", lambda: _listening(home).startswith("listening on"))
    before = _listening(home)
    port = int(before.rsplit(":", 1)[1])
    sent: list[str] = []
    refused: list[str] = []
    done = threading.Event()

    def keep_sending() -> None:
        # New connections all through the reloads: not one may be refused.
        n = 0
        while not done.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    _send(client, f"during-{n}")
                sent.append(f"during-{n}")
            except OSError as exc:
                refused.append(f"{type(exc).__name__}: {exc}")
            n += 1

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as held:
        held.ehlo()
        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            for _ in range(3):
                r = home.run("reload")
                assert r.returncode == 0, r.stderr
        finally:
            done.set()
            sender.join()
        # The connection opened before the reloads is still served.
        _send(held, "held")
    assert refused == [], refused[:3]
    assert len(sent) >= 3
    assert _listening(home) == before  # the same socket, the same port
    wait_until("delivery", lambda: sorted(home.delivered()) == sorted([*sent, "held"]))
    assert all(len(files) == 1 for files in home.delivered().values())


def test_a_reload_restarts_a_listener_whose_table_changed(home: Home, daemons: Daemons) -> None:
    _listener(home, 0)
    proc = daemons.start(home)
    wait_until("the listener", lambda: _listening(home).startswith("listening on"))
    old_port = int(_listening(home).rsplit(":", 1)[1])
    text = home.profile.read_text()
    home.profile.write_text(
        re.sub(r"^port = \d+", f"port = {free_port()}", text, count=1, flags=re.M)
    )
    r = home.run("reload")
    assert r.returncode == 0, r.stderr
    new_port = int(_listening(home).rsplit(":", 1)[1])
    assert new_port != old_port
    with smtplib.SMTP("127.0.0.1", new_port, timeout=30) as client:
        _send(client, "on-the-new-port")
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP("127.0.0.1", old_port, timeout=5)
    wait_until("delivery", lambda: "on-the-new-port" in home.delivered())
    assert daemons.stop(proc) == 0
    log = (home.path / "daemon-0.log").read_text()
    assert "listener 'submission': its settings changed, restarting it" in log, log


def test_a_reload_leaves_an_unchanged_listener_alone_in_the_log(
    home: Home, daemons: Daemons
) -> None:
    _listener(home, 1)
    proc = daemons.start(home)
    wait_until("the listener", lambda: _listening(home).startswith("listening on"))
    assert home.run("reload").returncode == 0
    assert daemons.stop(proc) == 0
    log = (home.path / "daemon-0.log").read_text()
    assert "restarting it" not in log, log
    # One listener process started, and stopped once (at the stop, not at the reload).
    assert log.count("SMTP submission listener stopped") == 1, log


def _log_level(home: Home, level: str) -> None:
    text = home.profile.read_text()
    home.profile.write_text(
        re.sub(r'^log_level = ".*"$', f'log_level = "{level}"', text, count=1, flags=re.M)
    )


def test_a_reload_changes_the_log_level_here_and_in_the_listener_processes(
    home: Home, daemons: Daemons
) -> None:
    _listener(home, 1)
    _log_level(home, "warning")
    proc = daemons.start(home)
    port = home.listener_port()
    _relay(port, home, "at-warning")
    _log_level(home, "debug")
    assert home.run("reload").returncode == 0
    _relay(port, home, "at-debug")
    assert daemons.stop(proc) == 0
    log = (home.path / "daemon-0.log").read_text()
    assert "log level now debug (was warning)" in log, log
    assert "restarting it" not in log, log  # the listener kept its process
    # The listener process's own debug line, for the second connection only; the
    # daemon's delivery line (INFO) for the second message only.
    assert log.count("SMTP connection from") == 1, log
    assert "status=sent" in log, log
    assert log.index("log level now debug") < log.index("status=sent"), log
    assert "Traceback" not in log, log


def test_run_log_level_wins_over_the_level_a_reload_brings(home: Home, daemons: Daemons) -> None:
    _log_level(home, "info")
    proc = daemons.start(home, args=["--log-level", "warning"])
    _log_level(home, "debug")
    assert home.run("reload").returncode == 0
    assert home.run("send", "--to", "MAILDIR:bob", "--subject", "s", "--body", "x").returncode == 0
    wait_until("delivery", lambda: len(home.delivered()) == 1)
    assert daemons.stop(proc) == 0
    log = (home.path / "daemon-0.log").read_text()
    assert "`spoolbox run --log-level warning` sets it: the level stays warning" in log, log
    assert "status=sent" not in log, log  # INFO: still below the level


def test_a_reload_changes_the_log_level_of_the_delivery_workers(
    home: Home, daemons: Daemons
) -> None:
    _log_level(home, "warning")
    home.profile.write_text(
        home.profile.read_text().replace("[daemon]\n", "[daemon]\nworkers = 1\n", 1)
    )
    proc = daemons.start(home)
    wait_until("the worker", lambda: "delivery worker" in _rows(home))
    _log_level(home, "info")
    assert home.run("reload").returncode == 0
    assert daemons.stop(proc) == 0
    log = (home.path / "daemon-0.log").read_text()
    # The worker's own INFO line for the reload it made after the level came.
    assert re.search(r"w1.*profile reloaded", log), log
    # The worker and the listener process closed their end of the pipe at the stop
    # (with warnings as errors, an unclosed one failed the event loop's close).
    assert "Traceback" not in log, log


def _rows(home: Home) -> str:
    return " ".join(str(r) for r in home.json("status")["rows"])


def test_a_reload_leaves_the_log_format_event_loop_and_nice_to_the_next_start(
    home: Home, daemons: Daemons
) -> None:
    _listener(home, 1)
    proc = daemons.start(home)
    port = home.listener_port()
    text = re.sub(
        r"^event_loop = \S+", 'event_loop = "asyncio"', home.profile.read_text(), flags=re.M
    )
    assert 'event_loop = "asyncio"' in text
    text = re.sub(r"^nice = \d+", "nice = 3", text, flags=re.M)
    assert "\n[daemon]\n" in text
    text = text.replace("\n[daemon]\n", "\n[daemon]\nstandby_when_crowded = true\n", 1)
    home.profile.write_text(text + '\n[log]\nformat = "json"\n')
    assert home.run("reload").returncode == 0
    _relay(port, home, "after-the-reload")
    assert daemons.stop(proc) == 0
    log = (home.path / "daemon-0.log").read_text()
    assert "[log] format changed: it takes effect at the next start" in log, log
    assert "[daemon] event_loop changed: it takes effect at the next start" in log, log
    assert "[daemon] nice changed: it takes effect at the next start" in log, log
    said = "[daemon] standby_when_crowded changed: it takes effect at the next start"
    assert said in log, log
    # The listener process was not restarted for them, and nothing logs in JSON yet.
    assert "restarting it" not in log, log
    assert not any(line.startswith("{") for line in log.splitlines()), log


def _listener_counters(home: Home) -> dict[str, int]:
    rows = {r["name"]: r for r in home.json("status")["rows"]}
    return dict(rows["listener:submission"]["counters"])


@pytest.mark.parametrize("processes", [0, 1], ids=["on-the-loop", "in-a-process"])
def test_a_listeners_row_counts_what_it_accepted_and_refused(
    home: Home, daemons: Daemons, processes: int
) -> None:
    _listener(home, processes)
    proc = daemons.start(home)
    port = home.listener_port()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        _send(client, "one")
        _send(client, "two")
        client.mail("alice@example.org")
        code, _ = client.rcpt("not an address")
        assert code == 553  # (RFC 5321: mailbox name not allowed)
    wait_until(
        "the counts on the row",
        lambda: (
            {k: v for k, v in _listener_counters(home).items() if k != "active"}
            == {"accepted": 2, "rejected": 1, "rejected_bad_address": 1, "connections": 1}
        ),
    )
    assert daemons.stop(proc) == 0
