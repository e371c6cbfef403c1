"""Queued mail and the profile are private to their user: what the ``spoolbox`` command
creates is 0700/0600, ``init`` tightens a directory others can read and refuses one
they can write; and another local user really cannot read a queued message."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CLI, DEADLINE, Home, _env

BODY = "the-secret-body-of-a-queued-message"


def _init(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "init", "--dir", str(directory), "--smtp-port", "0"],
        capture_output=True,
        text=True,
        env={**_env(), "PYTHONWARNINGS": "error"},
        timeout=DEADLINE,
    )


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is not: its parent is 0700),
    so that only the modes spoolbox sets stand between another user and the queue."""
    base = Path(tempfile.mkdtemp(prefix="sbx-perm-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_init_creates_a_private_directory_and_profile(tmp_path: Path) -> None:
    target = tmp_path / "new" / "sbx"
    r = _init(target)
    assert r.returncode == 0, r.stderr
    assert _mode(target) == 0o700
    assert _mode(target.parent) == 0o700  # a parent init created, too
    assert _mode(target / "mail") == 0o700
    assert _mode(target / "spoolbox.toml") == 0o600


def test_init_tightens_a_directory_others_can_read(tmp_path: Path) -> None:
    target = tmp_path / "sbx"
    target.mkdir()
    target.chmod(0o755)
    r = _init(target)
    assert r.returncode == 0, r.stderr
    assert _mode(target) == 0o700
    assert "readable by other users (mode 0755)" in r.stderr
    assert "made it 0700" in r.stderr


def test_init_force_makes_an_old_profile_private(tmp_path: Path) -> None:
    target = tmp_path / "sbx"
    assert _init(target).returncode == 0
    (target / "spoolbox.toml").chmod(0o644)
    r = subprocess.run(
        [*CLI, "init", "--dir", str(target), "--force", "--smtp-port", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=DEADLINE,
    )
    assert r.returncode == 0, r.stderr
    assert _mode(target / "spoolbox.toml") == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_init_refuses_a_directory_others_can_write(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "sbx"
    target.mkdir()
    target.chmod(mode)
    r = _init(target)
    assert r.returncode == 1
    assert f"writable by other users (mode {mode:04o})" in r.stderr
    assert _mode(target) == mode  # left as it was
    assert list(target.iterdir()) == []  # no profile written


def test_send_before_the_daemon_ever_ran_keeps_the_queue_private(
    home: Home, shared_tmp: Path
) -> None:
    """The CLI's store fallback creates the data directory and the store; another user
    (nobody) then tries to read the queued message's body."""
    data = shared_tmp / "data"
    home.profile.write_text(
        home.profile.read_text().replace('data_dir = "."', f'data_dir = "{data}"')
    )
    r = home.run("send", "--to", "MAILDIR:bob", "--subject", "s", "--body", BODY)
    assert r.returncode == 0, r.stderr
    store = data / "spool.sqlite3"
    assert _mode(data) == 0o700
    assert _mode(store) == 0o600
    assert BODY.encode() in store.read_bytes() + _wal(store)  # it is there to be read
    if os.geteuid() != 0:
        pytest.skip("reading as another user (nobody) needs root to switch users")
    cat = shutil.which("cat")
    assert cat is not None
    # cat, not this interpreter: nobody may not be able to enter the virtualenv.
    other = subprocess.run([cat, str(store)], capture_output=True, user="nobody", timeout=DEADLINE)
    assert BODY.encode() not in other.stdout
    assert other.returncode != 0
    assert b"Permission denied" in other.stderr


def _wal(store: Path) -> bytes:
    wal = Path(f"{store}-wal")
    return wal.read_bytes() if wal.exists() else b""
