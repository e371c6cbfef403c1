"""``spoolbox check`` and the daemon's refusal of transport options that can never
work, through the real command."""

from __future__ import annotations

import datetime
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trustme

from conftest import Home

_RELAY = """
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
host = "127.0.0.1"
{option}
"""

_MAILBOX = """
[[transports]]
name = "mailbox"
provider = "imap"
outbound = false
[transports.options]
host = "127.0.0.1"
port = {port}
tls = "none"
username = "ann"
password = "pw"
"""


def _append(home: Home, text: str) -> None:
    home.profile.write_text(home.profile.read_text() + text)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_good_profile_checks_ok(home: Home) -> None:
    r = home.run("check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"profile {home.profile}: ok", "local: ok", "local_names: ok"]
    assert r.stderr == ""


def test_local_names_no_transport_serves_are_a_problem(home: Home) -> None:
    # cron's mail to root would be refused by sendmail: said before it is lost.
    text = home.profile.read_text()
    old = 'address_type = "MAILDIR"\n'
    assert old in text
    home.profile.write_text(
        text.replace(old, 'aliases = { root = ["MAILDIR:admin", "ops@example.org"] }\n' + old)
    )
    r = home.run("check", "--no-logon")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == (
        "local_names: aliases.root: SMTP:ops@example.org: undeliverable: no transport "
        "serves address type SMTP (local: MAILDIR)"
    )
    got = json.loads(home.run("check", "--no-logon", "--json").stdout)
    assert got["local_names"]["ok"] is False
    assert "SMTP:ops@example.org" in got["local_names"]["problem"]
    home.profile.write_text(text.replace(old, ""))  # no [local_names]: no line
    r = home.run("check", "--no-logon")
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "local: ok")


def test_a_typo_in_an_option_is_named_with_a_suggestion(home: Home) -> None:
    _append(home, _RELAY.format(option="prot = 25"))
    for args in (("check",), ("check", "--no-logon")):
        r = home.run(*args)
        assert r.returncode == 1, (r.stdout, r.stderr)
        lines = r.stdout.splitlines()
        assert lines[1] == "local: ok"
        assert lines[2].startswith(
            "relay: smtp option 'prot' is unknown; did you mean 'port'? the options are: "
        )
        assert "host, " in lines[2]
    got = json.loads(home.run("check", "--no-logon", "--json").stdout)
    assert [t["ok"] for t in got["transports"]] == [True, False]


def test_the_daemon_refuses_to_start_on_a_typo(home: Home) -> None:
    _append(home, _RELAY.format(option="prot = 25"))
    r = home.run("run", "--no-nice")
    assert r.returncode == 5
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"spoolbox: {home.profile}: [transports.relay]: smtp option 'prot'")
    assert "did you mean 'port'?" in last
    assert "WARNING" not in r.stderr


def test_a_missing_password_is_a_problem_not_a_refusal(home: Home) -> None:
    _append(
        home,
        _RELAY.format(option='username = "ann"\npassword_env = "SPOOLBOX_TEST_UNSET_PW"'),
    )
    r = home.run("check", "--no-logon")
    assert r.returncode == 1
    assert (
        "relay: not configured: password is not set (environment variable SPOOLBOX_TEST_UNSET_PW)"
        in r.stdout.splitlines()
    )


def test_a_failing_logon_is_reported_and_no_logon_skips_it(home: Home) -> None:
    _append(home, _MAILBOX.format(port=_closed_port()))
    r = home.run("check", "--timeout", "20")
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[1] == "local: ok"
    assert lines[2].startswith("mailbox: logon failed: NetworkError: imap ann@127.0.0.1:"), lines
    assert "Connect call failed" in lines[2], lines
    assert r.stderr == ""
    r = home.run("check", "--no-logon")
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[2] == "mailbox: ok"


class _Relay(socketserver.StreamRequestHandler):
    """A smart host that greets with ``server.greeting`` and answers EHLO and QUIT."""

    def handle(self) -> None:
        greeting: bytes = self.server.greeting  # type: ignore[attr-defined]
        self.wfile.write(greeting)
        if not greeting.startswith(b"220"):
            return
        for line in self.rfile:
            if line.upper().startswith(b"EHLO"):
                self.wfile.write(b"250-relay.test\r\n250 PIPELINING\r\n")
            elif line.upper().startswith(b"QUIT"):
                self.wfile.write(b"221 2.0.0 bye\r\n")
                return
            else:
                self.wfile.write(b"250 2.0.0 ok\r\n")


@contextmanager
def _relay(greeting: bytes) -> Iterator[int]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Relay) as server:
        server.greeting = greeting  # type: ignore[attr-defined]
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.server_address[1])
        finally:
            server.shutdown()


def test_a_relay_that_is_down_is_a_problem_not_ok(home: Home) -> None:
    """The SMTP logon only reads its settings; check connects (ValidateState)."""
    port = _closed_port()
    _append(home, _RELAY.format(option=f'port = {port}\ntls = "none"'))
    r = home.run("check", "--timeout", "20")
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[1] == "local: ok"
    assert lines[2].startswith(
        f"relay: logged on, but not reachable: NetworkError: cannot connect to 127.0.0.1:{port}: "
    ), lines
    assert r.stderr == ""
    got = json.loads(home.run("check", "--json").stdout)
    assert [t["ok"] for t in got["transports"]] == [True, False]
    assert home.run("check", "--no-logon").returncode == 0  # the options are good


def test_a_relay_that_answers_is_ok_and_one_that_refuses_is_not(home: Home) -> None:
    with _relay(b"220 relay.test ESMTP\r\n") as port:
        _append(home, _RELAY.format(option=f'port = {port}\ntls = "none"'))
        r = home.run("check", "--timeout", "20")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert r.stdout.splitlines()[1:] == ["local: ok", "relay: ok", "local_names: ok"]
    with _relay(b"554 5.7.1 not you\r\n") as port:
        home.profile.write_text(
            home.profile.read_text().rsplit("port = ", 1)[0] + f'port = {port}\ntls = "none"\n'
        )
        r = home.run("check", "--timeout", "20")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert r.stdout.splitlines()[2] == (
            "relay: logged on, but not reachable: NetworkError: "
            "smtp; 554 5.7.1 not you (the greeting)"
        )


def test_a_relay_that_never_greets_is_reported_within_the_timeout(home: Home) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        _append(home, _RELAY.format(option=f'port = {silent.getsockname()[1]}\ntls = "none"'))
        r = home.run("check", "--timeout", "1.5")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.splitlines()[2] == (
        "relay: logged on, but not reachable: no answer within 1.5 s (--timeout)"
    )


def test_an_invalid_profile_exits_5(home: Home) -> None:
    _append(home, "\n[store]\nbackend = 1\n")
    r = home.run("check")
    assert r.returncode == 5
    assert r.stderr.startswith(f"spoolbox: {home.profile}")


_HOOKS = """
[[hooks]]
name = "strip"
hook = "headers"
[hooks.options]
remove = ["Bcc"]

[[hooks]]
name = "sign"
hook = "dkim"
[hooks.options]
domain = "example.org"
selector = "s1"
key_file = "no-such-key.pem"
"""


def test_a_hook_that_cannot_start_is_a_problem_before_the_daemon_runs(home: Home) -> None:
    _append(home, _HOOKS)
    r = home.run("check", "--no-logon")
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[1:3] == ["local: ok", "hook:strip: ok"]
    assert lines[3].startswith("hook:sign: cannot load hook 'dkim': dkim hook: cannot read the key")
    assert "no-such-key.pem" in lines[3]
    r = home.run("check", "--no-logon", "--json")
    assert r.returncode == 1
    hooks = {h["name"]: h for h in json.loads(r.stdout)["hooks"]}
    assert hooks["strip"] == {"name": "strip", "ok": True, "problem": None}
    assert hooks["sign"]["ok"] is False and "no-such-key.pem" in hooks["sign"]["problem"]


def test_a_listeners_certificate_is_checked_and_its_end_said(home: Home) -> None:
    """It loads (with its key) and does not expire within 14 days: ok, with the date;
    otherwise a problem (a renewal that stopped working shows here first)."""
    ca = trustme.CA()
    pem = home.path / "listener.pem"
    _append(home, '\n[listeners.secure]\nport = 0\ntls = "implicit"\ntls_cert = "listener.pem"\n')

    def issue(days: float) -> None:
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        leaf = ca.issue_cert("mail.example.org", not_after=when.replace(microsecond=0))
        leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))

    issue(60)
    r = home.run("check")
    assert r.returncode == 0, (r.stdout, r.stderr)
    line = r.stdout.splitlines()[-1]
    assert line.startswith("listener:secure: ok (certificate valid until 20"), line
    [entry] = json.loads(home.run("check", "--json").stdout)["listeners"]
    assert entry["ok"] and 59 * 86400 < entry["certificate_expires"] - time.time() < 61 * 86400

    issue(3)
    r = home.run("check")
    assert r.returncode == 1
    assert "listener:secure: the certificate expires on " in r.stdout
    assert "has its renewal failed?" in r.stdout

    issue(-1)
    r = home.run("check")
    assert r.returncode == 1
    assert "listener:secure: the certificate expired on " in r.stdout

    pem.unlink()
    r = home.run("check")
    assert r.returncode == 1
    assert f"listener:secure: cannot load the TLS certificate {pem}" in r.stdout


def test_two_transports_limited_to_one_domain_are_a_warning(home: Home) -> None:
    """A second transport for corp.example gets its mail only when the first declines
    it: ``check`` says so, and exits 0 (a fallback is allowed)."""
    for name in ("corp", "corp2"):
        _append(
            home,
            f"""
[[transports]]
name = "{name}"
provider = "smtp"
address_types = ["SMTP"]
domains = ["corp.example"]
[transports.options]
host = "127.0.0.1"
""",
        )
    r = home.run("check", "--no-logon")
    said = (
        "transports 'corp' and 'corp2' both name corp.example for SMTP: 'corp' comes "
        "first and takes that mail; 'corp2' gets it only when 'corp' declines it (not me)"
    )
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1] == f"routing: warning: {said}"
    got = json.loads(home.run("check", "--no-logon", "--json").stdout)
    assert got["warnings"] == [said]


def test_check_says_how_the_worker_processes_share_a_transports_limits(home: Home) -> None:
    """With ``[daemon] workers = 2`` a transport's own ``max_connections`` and
    ``destination_concurrency`` are shared by the three delivering processes: ``check``
    says each one's part (exit 0, not a warning); a ``destination_rate_delay`` leaves
    the transport to the daemon alone; the smtp provider's defaults are shared as the
    values set are; without workers nothing is said."""
    relay = """
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
domains = ["corp.example"]
[transports.options]
delivery = "mx"
nameservers = ["127.0.0.1"]
max_connections = 5
destination_concurrency = 2

[[transports]]
name = "slow"
provider = "smtp"
address_types = ["SMTP"]
domains = ["slow.example"]
[transports.options]
delivery = "mx"
nameservers = ["127.0.0.1"]
destination_rate_delay = 20

[[transports]]
name = "plain"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
delivery = "mx"
nameservers = ["127.0.0.1"]
"""
    _append(home, relay)
    r = home.run("check", "--no-logon")
    assert r.returncode == 0, r.stdout
    assert "workers:" not in r.stdout
    text = home.profile.read_text()
    assert "\n[daemon]\n" in text
    home.profile.write_text(text.replace("\n[daemon]\n", "\n[daemon]\nworkers = 2\n", 1))
    r = home.run("check", "--no-logon")
    said = [
        "transport 'relay': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon, w1): max_connections = 5 as 3 + 2; "
        "destination_concurrency = 2 as 1 + 1; w2 does not deliver for it",
        "transport 'slow': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon): destination_rate_delay = 20 s, "
        "between any two messages; w1, w2 do not deliver for it",
        # the smtp transport's defaults (delivery "mx") are shared as well
        "transport 'plain': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon, w1, w2): max_connections = 100 "
        "(its default) as 34 + 33 + 33; destination_concurrency = 20 (its default) "
        "as 7 + 7 + 6",
    ]
    assert r.returncode == 0, r.stdout
    assert [line for line in r.stdout.splitlines() if line.startswith("workers:")] == [
        f"workers: {line}" for line in said
    ]
    got = json.loads(home.run("check", "--no-logon", "--json").stdout)
    assert got["shared_limits"] == said
    assert not any("workers" in w for w in got["warnings"])
