"""The TOML profile: defaults, validation errors naming file and key, secrets."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from spoolbox import Address, MemoryStore, Spooler
from spoolbox.daemon import RedactingFilter
from spoolbox.model import StatusCode
from spoolbox.profile import (
    ProfileError,
    Secret,
    ask_missing_secrets,
    default_profile_text,
    load_profile,
    parse_duration,
)
from spoolbox.profile.default import default_listener_processes


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spoolbox.toml"
    p.write_text(text)
    return p


def test_default_profile_loads_with_maildir_and_listener(tmp_path: Path) -> None:
    p = _write(tmp_path, default_profile_text(tmp_path, smtp_port=0))
    prof = load_profile(p)
    (t,) = prof.spooler.transports
    assert (t.name, t.provider, t.address_types) == ("local", "maildir", ("MAILDIR",))
    assert t.options["root"] == str((tmp_path / "mail").resolve())
    assert prof.store.path == tmp_path.resolve() / "spool.sqlite3"
    assert (prof.store.synchronous, prof.store.progress_synchronous) == ("FULL", "NORMAL")
    assert prof.daemon.socket == tmp_path.resolve() / "spoolbox.sock"
    assert prof.spooler.policy.lifetime == 5 * 86400
    assert [lst.name for lst in prof.listeners] == ["submission"]
    # a process of its own where there is a second CPU (issue 17), else the daemon's loop
    assert prof.listeners[0].processes == default_listener_processes(os.cpu_count())
    assert "processes" not in prof.listeners[0].options
    assert str(prof.default_sender) == "MAILDIR:postmaster"
    # cron's mail to "root" goes to the local Maildir (docs/operations.md, "Local names")
    assert prof.local_names is not None
    assert [str(a) for a in prof.local_names.resolve("root")] == ["MAILDIR:root"]
    assert load_profile(_write(tmp_path, "")).local_names is None
    # root@HOST (the profile's hostname) and root@localhost are root too, and a report
    # to such a sender goes there (the spooler is given the rule).
    assert prof.local_names.host_names == {prof.spooler.hostname.lower(), "localhost"}
    assert prof.spooler.local_recipients is not None
    here = Address("SMTP", f"root@{prof.spooler.hostname}")
    assert [str(a) for a in prof.spooler.local_recipients(here) or ()] == ["MAILDIR:root"]
    off = load_profile(_write(tmp_path, '[local_names]\ndomain = "a.org"\nhost_names = []\n'))
    assert off.local_names is not None and off.local_names.host_names == frozenset()


def test_the_default_profile_is_package_data_filled_in(tmp_path: Path) -> None:
    template = resources.files("spoolbox.profile").joinpath("default.toml").read_text("utf-8")
    assert {"${hostname}", "${mail}", "${smtp_port}"} <= set(template.replace('"', " ").split())
    text = default_profile_text(tmp_path / "d", smtp_port=2600)
    assert "${" not in text
    doc = tomllib.loads(text)
    assert doc["listeners"]["submission"]["port"] == 2600
    assert doc["transports"][0]["options"]["root"] == str((tmp_path / "d" / "mail").resolve())
    assert f'# node = "{socket.gethostname()}"' in text
    # what the file says, apart from the filled-in values, is what `spoolbox init` writes
    assert text.splitlines()[:5] == template.splitlines()[:5]
    assert len(text.splitlines()) == len(template.splitlines())


def test_init_gives_the_listener_a_process_of_its_own_where_there_is_a_second_cpu() -> None:
    assert [default_listener_processes(n) for n in (None, 1, 2, 4, 64)] == [0, 0, 1, 1, 1]


def test_the_default_profiles_processes_line_can_be_set_to_the_daemons_loop(
    tmp_path: Path,
) -> None:
    text = default_profile_text(tmp_path, smtp_port=0)
    wrote = f"\nprocesses = {default_listener_processes(os.cpu_count())} "
    assert wrote in text
    prof = load_profile(_write(tmp_path, text.replace(wrote, "\nprocesses = 0 ")))
    assert prof.listeners[0].processes == 0


@pytest.mark.parametrize(
    ("snippet", "key", "expected"),
    [
        ("colour = 1\n", "colour", "unknown key"),
        ('[policy]\nretry_cap = "soon"\n', "[policy] retry_cap", "expected a duration"),
        ("[policy]\nclaim_batch = 1.5\n", "[policy] claim_batch", "expected an integer"),
        ("[daemon]\nnice = 40\n", "[daemon] nice", "from 0 to 19"),
        (
            '[store]\nprogress_synchronous = "lazy"\n',
            "[store] progress_synchronous",
            "got 'LAZY'",
        ),
        ('[daemon]\nevent_loop = "trio"\n', "[daemon] event_loop", '"uvloop" or "asyncio"'),
        ('[identities]\nsenders = ["nobody"]\n', "[identities] senders[0]", "TYPE:value"),
        (
            '[[transports]]\nname = "a"\nprovider = "maildir"\nfoo = 1\n',
            "[transports.a] foo",
            "unknown",
        ),
        ('[[transports]]\nname = "a"\n', "[transports.a] provider", "expected a provider"),
        ('[listeners.x]\nport = "25"\n', "[listeners.x] port", "expected an integer"),
        ("[listeners.x]\nportt = 1\n", "[listeners.x] portt", "unknown key"),
        ("[listeners.x]\nprocesses = -1\n", "[listeners.x] processes", "expected 0"),
        ("[listeners.x]\nprocesses = 65\n", "[listeners.x] processes", "to 64, got 65"),
        ('[listeners.x]\nprocesses = "2"\n', "[listeners.x] processes", "expected an integer"),
        ("[listeners.x]\nidle_timeout = nan\n", "[listeners.x] idle_timeout", "a number nan"),
        ('[identities]\nsenders = "a"\n', "[identities] senders", "strings, got a string 'a'"),
        ("[identities]\nsenders = [1]\n", "[identities] senders", "strings, got an array [1]"),
        ("[daemon]\nnice = -1\n", "[daemon] nice", "from 0 to 19, got -1"),
        ('[store]\nkeep_sent = "ever"\n', "[store] keep_sent", 'or "forever"'),
        ("[store]\nkeep_inbox = true\n", "[store] keep_inbox", "not a boolean"),
        ('[daemon]\nnice = "1"\n', "[daemon] nice", "expected an integer, got a string '1'"),
        ("[policy]\ndestination_backoff = 1\n", "[policy] destination_backoff", "true or false"),
        ('[local_names]\ndomain = "exa mple"\n', "[local_names] domain", "a DNS domain name"),
        (
            '[local_names]\ndomain = "a.org"\naddress_type = "MAILDIR"\n',
            "[local_names]",
            "set domain or address_type, not both",
        ),
        ('[local_names]\naliases = "x"\n', "[local_names] aliases", "expected a table of names"),
        (
            "[local_names]\naliases = { root = 1 }\n",
            "[local_names] aliases.root",
            "an address or an array of addresses, got 1",
        ),
        (
            '[local_names]\naliases = { root = "admin@" }\n',
            "[local_names] aliases.root",
            "'admin@': expected user@domain",
        ),
        (
            '[local_names]\naliases = { root = "ops" }\n',
            "[local_names]",
            "'ops' (from aliases.root) is a local name without a domain",
        ),
        ("[local_names]\nfoo = 1\n", "[local_names] foo", "unknown key"),
        (
            '[local_names]\nhost_names = ["ok.test", "n o"]\n',
            "[local_names] host_names[1]",
            "expected a DNS name, not 'n o'",
        ),
        ('[local_names]\nhost_names = "h.test"\n', "[local_names] host_names", "array"),
        (
            '[[transports]]\nname = "a"\nprovider = "maildir"\n'
            '[[transports]]\nname = "a"\nprovider = "maildir"\n',
            "[transports.a] name",
            "the transport name 'a' is used twice",
        ),
    ],
)
def test_errors_name_the_file_the_key_and_what_was_expected(
    tmp_path: Path, snippet: str, key: str, expected: str
) -> None:
    p = _write(tmp_path, snippet)
    with pytest.raises(ProfileError) as info:
        load_profile(p)
    text = str(info.value)
    assert str(p) in text
    assert key in text
    assert expected in text


def test_empty_strings_are_values_the_profile_takes(tmp_path: Path) -> None:
    p = _write(tmp_path, 'node = ""\n[listeners.x]\nlocal_domains = [""]\nhostname = ""\n')
    prof = load_profile(p)
    assert prof.spooler.node == socket.gethostname()  # "" is the default
    assert prof.listeners[0].options["local_domains"] == [""]


def test_retention_keys_take_durations_and_forever(tmp_path: Path) -> None:
    default = load_profile(_write(tmp_path, ""))
    assert default.store.retention == default.spooler.retention
    assert (default.spooler.retention.keep_sent, default.spooler.retention.keep_inbox) == (
        7 * 86400,
        30 * 86400,
    )
    p = _write(tmp_path, '[store]\nkeep_sent = 0\nkeep_failed = "Forever"\nkeep_inbox = "12h"\n')
    retention = load_profile(p).spooler.retention
    assert (retention.keep_sent, retention.keep_failed, retention.keep_inbox) == (0, None, 43200)


def test_durations() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("4h") == 4 * 3600
    assert parse_duration(3) == 3.0
    with pytest.raises(ValueError, match="duration"):
        parse_duration(True)


TRANSPORT = """
[[transports]]
name = "relay"
provider = "maildir"
[transports.options]
root = "/tmp"
password_env = "SBX_PW"
"""


def test_secret_from_environment_and_file(tmp_path: Path) -> None:
    p = _write(tmp_path, TRANSPORT)
    prof = load_profile(p, environ={"SBX_PW": "hunter2"})
    pw = prof.spooler.transports[0].options["password"]
    assert isinstance(pw, Secret)
    assert pw == "hunter2"
    assert "hunter2" not in repr(prof.spooler.transports[0])
    assert prof.redact("x hunter2 y") == "x *** y"
    (tmp_path / "pw").write_text("from-file\n")
    p.write_text(TRANSPORT.replace('password_env = "SBX_PW"', 'password_file = "pw"'))
    assert load_profile(p, environ={}).spooler.transports[0].options["password"] == "from-file"


def test_inline_and_env_secret_together_is_an_error(tmp_path: Path) -> None:
    p = _write(tmp_path, TRANSPORT.replace("root =", 'password = "x"\nroot ='))
    with pytest.raises(ProfileError, match="given twice"):
        load_profile(p, environ={"SBX_PW": "y"})


async def test_missing_secret_fails_only_its_transport_row(tmp_path: Path) -> None:
    p = _write(tmp_path, TRANSPORT)
    prof = load_profile(p, environ={})
    assert [(m.transport, m.option) for m in prof.missing] == [("relay", "password")]
    async with Spooler.open(prof.spooler, store=MemoryStore()) as sp:
        assert await sp.wait_ready(timeout=10) == {"relay": False}
        row = sp.status["relay"]
        assert row.status_code & StatusCode.FAILURE
        assert "not configured" in (row.detail or "")
        assert "SBX_PW" in (row.detail or "")
    # The logon dialog fills it in.
    answers = ask_missing_secrets(prof, lambda prompt: "typed")
    assert answers == {("relay", "password"): "typed"}
    again = load_profile(p, environ={}, extra_secrets=answers)
    assert not again.missing
    assert again.spooler.transports[0].options["password"] == "typed"


def test_log_filter_redacts_secrets() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw is %s", ("hunter2",), None)
    assert RedactingFilter(lambda: frozenset({"hunter2"})).filter(record)
    assert record.getMessage() == "pw is ***"


def test_event_loop_runner_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import uvloop

    from spoolbox.daemon import event_loop_runner

    assert event_loop_runner("auto") is uvloop.run
    assert event_loop_runner("uvloop") is uvloop.run
    assert event_loop_runner("asyncio") is asyncio.run
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop_runner("auto") is asyncio.run
    with pytest.raises(ImportError, match="uvloop is not installed"):
        event_loop_runner("uvloop")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('port = "25"', "expected an integer, got a string '25'"),
        ("port = 25.0", "expected an integer, got a number 25.0"),
        ("host = 127", "expected a string, got an integer 127"),
        ('max_message_size = "10M"', "expected an integer"),
        ("max_recipients = true", "expected an integer, got a boolean"),
        ('max_line_length = "998"', "expected an integer"),
        ('require_auth = "yes"', "expected true or false"),
        ("allow_plain_auth = 1", "expected true or false"),
        ('relay_networks = "127.0.0.0/8"', "expected an array of strings"),
        ("local_domains = [1]", "expected an array of strings"),
        ("hostname = false", "expected a string"),
        ("default_address_type = []", "expected a string"),
        ("tls_cert = 1", "expected a string"),
        ("tls_key = 1", "expected a string"),
        ('idle_timeout = "5m"', "expected a number, got a string '5m'"),
        ("shutdown_grace = true", "expected a number, got a boolean"),
        ('users = "ann:pw"', "expected a table of user = password"),
    ],
)
def test_every_listener_key_names_itself_and_its_type(
    tmp_path: Path, line: str, expected: str
) -> None:
    p = _write(tmp_path, f"[listeners.x]\n{line}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(p)
    key = line.split(" ", 1)[0]
    assert str(info.value) == f"{p}: [listeners.x] {key}: " + str(info.value).split(": ", 2)[2]
    assert expected in str(info.value)


LISTENER_USERS = """
[listeners.x]
port = 0
[listeners.x.users]
ann = "inline-pw"
bob = { password_env = "SBX_BOB_PW" }
cat = { password_file = "cat.pw" }
"""


def test_certificate_files_are_found_from_the_profiles_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative tls_cert, tls_key or ca_file is the profile directory's file, not
    one under wherever the daemon was started (systemd starts it in /)."""
    p = _write(
        tmp_path,
        """
[[transports]]
name = "relay"
provider = "smtp"
[transports.options]
host = "smtp.example.org"
ca_file = "certs/ca.pem"

[[transports]]
name = "other"
provider = "smtp"
[transports.options]
host = "smtp.example.org"
ca_file = "/etc/ssl/other.pem"

[listeners.submissions]
tls = "implicit"
tls_cert = "certs/listener.pem"
tls_key = "~/listener.key"
""",
    )
    monkeypatch.chdir("/")
    monkeypatch.setenv("HOME", "/home/ann")
    prof = load_profile(p)
    base = tmp_path.resolve()
    relay, other = prof.spooler.transports
    assert relay.options["ca_file"] == str(base / "certs/ca.pem")
    assert other.options["ca_file"] == "/etc/ssl/other.pem"
    (lst,) = prof.listeners
    assert lst.options["tls_cert"] == str(base / "certs/listener.pem")
    assert lst.options["tls_key"] == "/home/ann/listener.key"


def test_listener_user_passwords_from_the_environment_and_a_file(tmp_path: Path) -> None:
    p = _write(tmp_path, LISTENER_USERS)
    (tmp_path / "cat.pw").write_text("cat-from-file\n")
    prof = load_profile(p, environ={"SBX_BOB_PW": "bob-from-env"})
    (lst,) = prof.listeners
    assert lst.options["users"] == {
        "ann": "inline-pw",
        "bob": "bob-from-env",
        "cat": "cat-from-file",
    }
    assert all(isinstance(v, Secret) for v in lst.options["users"].values())
    assert lst.missing == ()
    assert {"inline-pw", "bob-from-env", "cat-from-file"} <= prof.secret_values
    assert prof.redact("bob-from-env cat-from-file") == "*** ***"


def test_a_listener_user_password_that_is_not_there_is_missing_not_fatal(
    tmp_path: Path,
) -> None:
    p = _write(tmp_path, LISTENER_USERS)
    prof = load_profile(p, environ={})  # no SBX_BOB_PW, no cat.pw
    (lst,) = prof.listeners
    assert lst.options["users"] == {"ann": "inline-pw"}
    assert [(m.transport, m.option) for m in lst.missing] == [
        ("listener:x", "users.bob"),
        ("listener:x", "users.cat"),
    ]
    assert "SBX_BOB_PW" in lst.missing[0].source
    assert str(tmp_path / "cat.pw") in lst.missing[1].source
    # require_auth with every user missing still loads: the listener reports them.
    p.write_text(
        "[listeners.x]\nrequire_auth = true\nallow_plain_auth = true\n"
        '[listeners.x.users]\nbob = { password_env = "SBX_BOB_PW" }\n'
    )
    assert load_profile(p, environ={}).listeners[0].missing[0].option == "users.bob"


@pytest.mark.parametrize(
    ("users", "key", "expected"),
    [
        ('bob = { password_env = "A", password = "b" }', "users.bob.password_env", "exactly one"),
        ("bob = {}", "users.bob.password", "exactly one"),
        ('bob = { passwd_env = "A" }', "users.bob.passwd_env", "unknown key"),
        ('bob = { password_env = "" }', "users.bob.password_env", "environment variable"),
        ("bob = 1", "users.bob", "expected a password string"),
        ('bob = ""', "users.bob", "expected a password"),
    ],
)
def test_bad_listener_users_name_the_user(
    tmp_path: Path, users: str, key: str, expected: str
) -> None:
    p = _write(tmp_path, f"[listeners.x.users]\n{users}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(p, environ={})
    assert f"[listeners.x] {key}: " in str(info.value)
    assert expected in str(info.value)


def test_redaction_hides_long_secrets_anywhere_and_short_ones_where_they_stand_alone() -> None:
    from spoolbox.profile.secrets import redact

    password = "s3cretPassw0rd"
    assert redact(f"login as bob:{password}x failed", [password]) == "login as bob:***x failed"
    # A SIM PIN: hidden as a value, not inside a phone number that happens to hold it.
    assert redact("AT+CPIN=1234 to SMS:+15551234567", ["1234"]) == "AT+CPIN=*** to SMS:+15551234567"
    assert redact("pin 1234, then 1234_x and x1234", ["1234"]) == "pin ***, then ***_x and x1234"
    assert redact("nothing here", ["", "abc"]) == "nothing here"
