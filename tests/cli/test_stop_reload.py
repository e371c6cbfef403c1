"""``spoolbox stop`` and ``spoolbox reload`` against the real daemon subprocess."""

from __future__ import annotations

from conftest import Daemons, Home

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
