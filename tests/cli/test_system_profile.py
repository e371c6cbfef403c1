"""The host's profile, /etc/spoolbox/spoolbox.toml: found when neither
$SPOOLBOX_PROFILE nor ./spoolbox.toml says otherwise (cron runs sendmail with
neither), and linked by ``install-sendmail --system-profile``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import spoolbox.profile
import spoolbox.profile.loading
from spoolbox.cli import cli as main
from spoolbox.cli.install_sendmail import system_profile
from spoolbox.profile import ProfileError, default_profile_text, find_profile, load_profile


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SYSTEM_PROFILE moved under tmp_path; the working directory empty; no env."""
    path = tmp_path / "etc" / "spoolbox" / "spoolbox.toml"
    monkeypatch.setattr(spoolbox.profile.loading, "SYSTEM_PROFILE", path)
    monkeypatch.setattr(spoolbox.profile, "SYSTEM_PROFILE", path)
    monkeypatch.delenv("SPOOLBOX_PROFILE", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return path


def write_profile(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(default_profile_text(path.parent, smtp_port=0))
    return path


def test_the_host_profile_is_found_after_the_env_and_the_working_directory(
    system: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ProfileError) as err:  # none anywhere: where it looked
        load_profile(find_profile())
    assert f"(looked for $SPOOLBOX_PROFILE, ./spoolbox.toml, {system})" in str(err.value)
    write_profile(system)
    assert find_profile() == system
    assert load_profile(find_profile()).path == system
    write_profile(Path("spoolbox.toml"))  # one here comes first
    assert find_profile() == Path("spoolbox.toml")
    monkeypatch.setenv("SPOOLBOX_PROFILE", "/elsewhere.toml")  # and the env before that
    assert find_profile() == Path("/elsewhere.toml")
    assert find_profile("given.toml") == Path("given.toml")


def test_what_the_host_profile_is_for_the_profile_in_use(tmp_path: Path, system: Path) -> None:
    mine = write_profile(tmp_path / "data" / "spoolbox.toml")
    assert system_profile(mine, system) == "missing"
    system.parent.mkdir(parents=True)
    system.symlink_to(tmp_path / "gone.toml")  # a dangling link is another's, not missing
    assert system_profile(mine, system) == "other"
    system.unlink()
    system.symlink_to(mine)
    assert system_profile(mine, system) == "same"
    system.unlink()
    write_profile(system)
    assert system_profile(mine, system) == "other"


def test_install_sendmail_links_the_host_profile_when_asked(tmp_path: Path, system: Path) -> None:
    mine = write_profile(tmp_path / "data" / "spoolbox.toml")
    runner = CliRunner()
    prefix = ["--prefix", str(tmp_path / "usr")]
    r = runner.invoke(main, ["-p", str(mine), "install-sendmail", *prefix, "--system-profile"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"made: {system} -> {mine}"
    assert os.readlink(system) == str(mine)
    r = runner.invoke(main, ["-p", str(mine), "install-sendmail", *prefix, "--system-profile"])
    assert r.output.splitlines()[-1] == f"already: {system} -> {mine}"
    # Another profile's link is moved to this one; a file is never replaced.
    other = write_profile(tmp_path / "other" / "spoolbox.toml")
    r = runner.invoke(main, ["-p", str(other), "install-sendmail", *prefix, "--system-profile"])
    assert (r.exit_code, os.readlink(system)) == (0, str(other))
    system.unlink()
    write_profile(system)
    r = runner.invoke(main, ["-p", str(mine), "install-sendmail", *prefix, "--system-profile"])
    assert r.exit_code == 1
    assert f"{system} is a file, not the profile in use ({mine})" in r.output
    assert not system.is_symlink()
    # Without the flag: a note, nothing changed.
    r = runner.invoke(main, ["-p", str(mine), "install-sendmail", *prefix])
    assert r.exit_code == 0
    assert r.output.splitlines()[-1] == (
        f"note: {system} is another profile: cron runs sendmail without SPOOLBOX_PROFILE "
        f"and finds the profile there; pass --system-profile to link it to {mine}"
    )
    missing = tmp_path / "nope.toml"
    r = runner.invoke(main, ["-p", str(missing), "install-sendmail", *prefix, "--system-profile"])
    assert r.exit_code == 1
    assert f"--system-profile: {missing}: no such profile to link" in r.output
    r = runner.invoke(main, ["-p", str(missing), "install-sendmail", *prefix])
    assert r.exit_code == 0
    assert r.output.splitlines()[-1].endswith(
        "; link it with `spoolbox -p PROFILE install-sendmail --system-profile`"
    )
