"""The one host name (issue 15): its default, the profile key, and what carries it.

``model.default_hostname()`` is the FQDN, else the host name, never ``localhost``
when this machine has a real name; the profile's top-level ``hostname`` replaces
it; ``Support.hostname`` gives it to transports, in the spooler's process and in an
isolated transport's child (the Maildir file names show it).  The SMTP EHLO,
Reporting-MTA and MAILER-DAEMON are checked in tests/transports/test_double_bounce.py,
the listener's banner in tests/ingress/test_listener_routes.py and
tests/cli/test_cli_routes.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spoolbox import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.model import default_hostname, is_hostname
from spoolbox.profile import ProfileError, load_profile


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("mail.example.org", True),
        ("mail.example.org.", True),
        ("vm", True),
        ("a-b.c1", True),
        ("", False),
        ("-a.org", False),
        ("a-.org", False),
        ("a..org", False),
        ("a b.org", False),
        ("mail_1.org", False),
        ("m\u00e4il.org", False),
        ("a" * 64 + ".org", False),
        (".".join(["a" * 9] * 26), False),  # 259 characters
    ],
)
def test_is_hostname(name: str, ok: bool) -> None:
    assert is_hostname(name) is ok


def test_the_default_is_this_hosts_name_never_localhost() -> None:
    real = [n for n in (socket.getfqdn(), socket.gethostname()) if not n.startswith("localhost")]
    if not real:
        pytest.skip("this machine calls itself localhost")
    name = default_hostname()
    assert name != "localhost" and is_hostname(name)
    assert name in real


def _profile(tmp_path: Path, top: str) -> Path:
    path = tmp_path / "spoolbox.toml"
    path.write_text(top + '\n[[transports]]\nname = "local"\nprovider = "maildir"\n')
    return path


def test_the_profile_key_sets_hostname_and_reporting_mta(tmp_path: Path) -> None:
    config = load_profile(_profile(tmp_path, 'hostname = "mx.example.test"')).spooler
    assert (config.hostname, config.reporting_mta) == ("mx.example.test", "mx.example.test")
    both = 'hostname = "mx.example.test"\nreporting_mta = "dsn.example.test"'
    config = load_profile(_profile(tmp_path, both)).spooler
    assert (config.hostname, config.reporting_mta) == ("mx.example.test", "dsn.example.test")
    for absent in ("", 'hostname = ""'):
        config = load_profile(_profile(tmp_path, absent)).spooler
        assert config.hostname == config.reporting_mta == default_hostname()


def test_a_bad_hostname_is_a_profile_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"hostname.*not 'mx example'") as info:
        load_profile(_profile(tmp_path, 'hostname = "mx example"'))
    assert str(tmp_path / "spoolbox.toml") in str(info.value)


@pytest.mark.parametrize("isolate", [False, True])
async def test_maildir_file_names_carry_the_hostname(tmp_path: Path, isolate: bool) -> None:
    local = TransportConfig("local", "maildir", options={"root": str(tmp_path)}, isolate=isolate)
    config = SpoolerConfig(transports=(local,), hostname="mx.example.test")
    async with Spooler.open(config, idle=AlwaysIdle()) as sp:
        info = await sp.submit(
            NewMessage(
                sender=None, recipients=(Address("MAILDIR", "bob"),), content=b"Subject: x\r\n\r\n"
            )
        )
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
    [delivered] = (tmp_path / "bob" / "new").iterdir()
    assert delivered.name.endswith(".mx.example.test")
