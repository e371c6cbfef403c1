"""``spoolbox init --relay HOST[:PORT] [--relay-user USER]``, ``--direct`` and
``--hostname``: the profile also sends mail for other hosts, through a smart host or
directly, and says what is left to do; bad values are refused before anything is
written.  The relay is a real aiosmtpd server with AUTH (in a thread), reached by a
real daemon."""

from __future__ import annotations

import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from conftest import CLI, DEADLINE, Daemons, Home, _env, wait_until
from spoolbox.profile import load_profile
from spoolbox.profile.default import is_loopback, parse_relay


def init(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "init", "--dir", str(directory), "--smtp-port", "0", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=DEADLINE,
    )


def test_relay_host_and_port_are_parsed() -> None:
    assert parse_relay("smtp.example.org") == ("smtp.example.org", None)
    assert parse_relay("smtp.example.org:2525") == ("smtp.example.org", 2525)
    assert parse_relay("192.0.2.1:25") == ("192.0.2.1", 25)
    assert parse_relay("[2001:db8::25]:587") == ("2001:db8::25", 587)
    assert parse_relay("2001:db8::25") == ("2001:db8::25", None)
    for bad, words in [
        ("smtp.example.org:0", "the port must be a number from 1 to 65535"),
        ("smtp.example.org:x", "the port must be"),
        ("a b", "is not a host name or address"),
        ("[2001:db8::25", "expected HOST, HOST:PORT or [IPv6]:PORT"),
        ('evil"\nhost = "x', "is not a host name or address"),
    ]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            parse_relay(bad)


def test_a_relay_on_this_machine_is_plain_smtp_and_a_remote_one_starttls(
    tmp_path: Path,
) -> None:
    """A smart host on loopback (a local MTA, a development server such as Mailpit)
    gets ``tls = "none"`` (its port then defaults to 25); any other keeps the
    transport's default, STARTTLS on 587, and AUTH is never allowed in plain text
    there."""
    for host in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("smtp.example.org", "192.0.2.1", "10.0.0.1", "localhost.example.org"):
        assert not is_loopback(host), host
    for relay, options in [
        ("localhost", {"host": "localhost", "tls": "none"}),
        ("[::1]:1025", {"host": "::1", "port": 1025, "tls": "none"}),
        ("smtp.example.org", {"host": "smtp.example.org"}),
    ]:
        directory = tmp_path / relay.replace(":", "_").replace("[", "").replace("]", "")
        r = init(directory, "--relay", relay)
        assert r.returncode == 0, r.stderr
        profile = load_profile(directory / "spoolbox.toml")
        [table] = [t for t in profile.spooler.transports if t.name == "relay"]
        assert dict(table.options) == options, relay
    r = init(tmp_path / "remote-user", "--relay", "smtp.example.org", "--relay-user", "me")
    assert r.returncode == 0, r.stderr
    assert "allow_plain_auth" not in (tmp_path / "remote-user" / "spoolbox.toml").read_text()


def test_without_options_no_mail_leaves_for_other_hosts(tmp_path: Path) -> None:
    r = init(tmp_path / "d")
    assert r.returncode == 0, r.stderr
    profile = load_profile(tmp_path / "d" / "spoolbox.toml")
    assert [t.name for t in profile.spooler.transports] == ["local"]
    assert "check it with" not in r.stdout


def test_direct_with_a_hostname(tmp_path: Path) -> None:
    r = init(tmp_path / "d", "--direct", "--hostname", "mail.example.org")
    assert r.returncode == 0, r.stderr
    profile = load_profile(tmp_path / "d" / "spoolbox.toml")
    assert profile.spooler.hostname == "mail.example.org"
    internet = profile.spooler.transports[-1]
    assert (internet.name, internet.provider, internet.address_types) == (
        "internet",
        "smtp",
        ("SMTP",),
    )
    assert dict(internet.options) == {"delivery": "mx"}
    assert "greets mail servers as mail.example.org; it needs port 25 out" in r.stdout
    assert "not a fully qualified name" not in r.stdout
    assert "needs dnspython" not in r.stdout  # the test extra has it
    check = subprocess.run(
        [*CLI, "--profile", str(tmp_path / "d" / "spoolbox.toml"), "check"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=DEADLINE,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "internet: ok" in check.stdout
    # The commented options are real ones: uncommented, the profile still loads.
    path = tmp_path / "d" / "spoolbox.toml"
    text = path.read_text()
    for key in (
        "mta_sts",
        "dane",
        "max_connections",
        "destination_concurrency",
        "destination_rate_delay",
    ):
        assert f"# {key} = " in text
        text = text.replace(f"# {key} = ", f"{key} = ")
    path.write_text(text)
    options = dict(load_profile(path).spooler.transports[-1].options)
    assert options == {
        "delivery": "mx",
        "mta_sts": False,
        "dane": True,
        "max_connections": 100,
        "destination_concurrency": 20,
        "destination_rate_delay": 0,
    }
    # Without --hostname on a host whose name is not qualified, init says so.
    r = init(tmp_path / "e", "--direct", "--hostname", "vm")
    assert r.returncode == 0, r.stderr
    assert "vm is not a fully qualified name: most mail servers refuse it" in r.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--relay", "a.example", "--direct"], "--relay and --direct exclude each other"),
        (["--relay-user", "me"], "--relay-user needs --relay"),
        (["--relay", "a b"], "Invalid value for '--relay': 'a b': 'a b' is not a host name"),
        (["--relay", "a.example:99999"], "the port must be a number from 1 to 65535"),
        (["--hostname", "bad name"], "Invalid value for '--hostname': 'bad name' is not"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    tmp_path: Path, args: list[str], words: str
) -> None:
    r = init(tmp_path / "d", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr
    assert not (tmp_path / "d").exists()


class _Relay:
    def __init__(self) -> None:
        self.rcpts: list[str] = []

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.rcpts.extend(envelope.rcpt_tos)
        return "250 2.0.0 queued"


def _authenticator(
    server: AiosmtpdSMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"me", b"s3cret!")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def relay() -> Iterator[tuple[int, _Relay]]:
    handler = _Relay()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()


def test_a_relay_with_a_user_sends_once_its_password_is_in_place(
    tmp_path: Path, daemons: Daemons, relay: tuple[int, _Relay]
) -> None:
    port, handler = relay
    directory = tmp_path / "d"
    r = init(directory, "--relay", f"127.0.0.1:{port}", "--relay-user", "me")
    assert r.returncode == 0, r.stderr
    password = directory / "relay.password"
    assert f"put the smart host's password for me in {password}" in r.stdout
    doc = tomllib.loads((directory / "spoolbox.toml").read_text())
    [relay_table] = [t for t in doc["transports"] if t["name"] == "relay"]
    # On loopback: no TLS (the mail crosses no network), so AUTH in plain text.
    assert relay_table["options"] == {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "username": "me",
        "password_file": "relay.password",
        "allow_plain_auth": True,
    }
    home = Home(directory)
    r = home.run("check", "--no-logon")
    assert r.returncode == 1
    assert f"relay: not configured: password is not set (file {password})" in r.stdout
    password.write_text("s3cret!\n")
    password.chmod(0o600)
    r = home.run("check")
    assert r.returncode == 0, r.stdout + r.stderr
    daemons.start(home)
    assert home.run("send", "--to", "bob@example.org", "--subject", "out").returncode == 0
    wait_until("the relay to have it", lambda: handler.rcpts == ["bob@example.org"])
