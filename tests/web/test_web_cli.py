"""``spoolbox web`` and the profile's ``[web]`` table, through the real command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spoolbox.profile import ProfileError, load_profile
from spoolbox.web.token import TOKEN_FILE

CLI = [sys.executable, "-m", "spoolbox.cli"]


def _profile(tmp_path: Path, web: str) -> Path:
    path = tmp_path / "spoolbox.toml"
    path.write_text(f'data_dir = "data"\n{web}')
    return path


def _run(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    return subprocess.run(
        [*CLI, "--profile", str(profile), "web", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_web_page_is_off_by_default_and_loopback_only(tmp_path: Path) -> None:
    web = load_profile(_profile(tmp_path, "")).web
    assert (web.enabled, web.host, web.port) == (False, "127.0.0.1", 8025)
    r = _run(_profile(tmp_path, ""))
    assert r.returncode == 5, r.stderr
    assert "the web page is off: set enabled = true under [web]" in r.stderr
    assert r.stdout == ""


def test_spoolbox_web_prints_the_address_with_its_token(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "[web]\nenabled = true\nport = 8931\n")
    r = _run(profile)
    assert r.returncode == 3  # no daemon: the address, and why it does not answer yet
    assert "the daemon is not running" in r.stderr
    token = (tmp_path / "data" / TOKEN_FILE).read_text().strip()
    assert r.stdout == f"http://127.0.0.1:8931/?token={token}\n"
    assert stat.S_IMODE((tmp_path / "data" / TOKEN_FILE).stat().st_mode) == 0o600
    assert _run(profile).stdout == r.stdout  # the same token next time


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[web]\nport = 0\n", "port"),
        ("[web]\nport = 70000\n", "port"),
        ("[web]\nenabled = 'yes'\n", "enabled"),
        ("[web]\nbind = '0.0.0.0'\n", "bind"),
    ],
)
def test_a_wrong_web_key_is_refused_by_name(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ProfileError, match=key):
        load_profile(_profile(tmp_path, table))


def _without_web_extra(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with starlette, uvicorn and prometheus_client blocked."""
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'prometheus_client'):\n"
        "    sys.modules[name] = None\n"
        "from spoolbox.cli import main\n"
        f"sys.argv = ['spoolbox', '--profile', {str(profile)!r}, *{list(args)!r}]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


def test_without_the_web_extra_run_names_it_and_web_still_prints(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "[web]\nenabled = true\nport = 8931\n")
    run = _without_web_extra(profile, "run", "--no-nice")
    assert run.returncode == 1
    assert "[web] enabled needs the web extra: pip install 'spoolbox[web]'" in run.stderr
    assert "Traceback" not in run.stderr
    printed = _without_web_extra(profile, "web")
    assert printed.stdout.startswith("http://127.0.0.1:8931/?token=")
