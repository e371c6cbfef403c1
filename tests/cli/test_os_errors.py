"""Store and operating system errors: one line with a hint and exit 74, through the
real command; the traceback only with ``spoolbox --debug``.

The read-only and disk-full cases mount a real tmpfs (``-o ro``, ``-o size=...``):
as root only; they skip, saying why, where mounting is not permitted.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import CLI, Home, _env

EXIT_OS_ERROR = 74


def _store_at(home: Home, path: str) -> None:
    text = home.profile.read_text()
    home.profile.write_text(re.sub(r'(?m)^path = ".*"', f'path = "{path}"', text, count=1))


def _one_line(r: subprocess.CompletedProcess[str], *words: str, log: bool = False) -> str:
    """The error line of ``r`` (the last line; the only one unless ``log``: a daemon's
    log lines come before it), checked for ``words`` and a hint."""
    assert r.returncode == EXIT_OS_ERROR, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert log or len(lines) == 1, r.stderr
    line = lines[-1]
    assert line.startswith("spoolbox: error: "), line
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in line, line
    assert "(hint: " in line, line
    return line


Mount = Callable[[str, str], Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """``mount(name, options)``: a tmpfs mounted with ``options``; unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("SKIPPED LOUDLY: needs root and mount(8) (util-linux) to mount a tmpfs")
    where = tmp_path / "mnt"
    where.mkdir()
    done: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = where / name
        point.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"SKIPPED LOUDLY: mount -t tmpfs -o {options} not permitted: {r.stderr}")
        done.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(done):
            subprocess.run(["umount", str(point)], check=False)


def test_a_store_on_a_read_only_file_system(home: Home, mount: Mount) -> None:
    ro = mount("ro", "ro,size=64k")
    _store_at(home, f"{ro}/spool.sqlite3")
    line = _one_line(
        home.run("send", "--to", "MAILDIR:bob", "--body", "x"),
        f"cannot open the store {ro}/spool.sqlite3",
        "read-only",
        "writable file system",
    )
    assert line.count("read-only") == 1  # said once (the store says it), not twice
    # The daemon too: it refuses to start with the same line.
    _one_line(home.run("run", "--no-nice"), f"cannot open the store {ro}/spool.sqlite3", log=True)
    # --debug: the traceback.
    r = home.run("--debug", "send", "--to", "MAILDIR:bob", "--body", "x")
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "StoreError" in r.stderr


def test_a_full_disk(home: Home, mount: Mount) -> None:
    full = mount("full", "size=256k")
    _store_at(home, f"{full}/spool.sqlite3")
    r = home.run("send", "--to", "MAILDIR:bob", "--body", "small")
    assert r.returncode == 0, r.stderr  # the store fits
    big = home.path / "big.txt"
    big.write_bytes(os.urandom(1_000_000).hex().encode())
    _one_line(
        home.run("send", "--to", "MAILDIR:bob", "--body", "x", "--attach", str(big)),
        "no space left on the device",
        "free space",
    )
    # Too small even to create the store.
    tiny = mount("tiny", "size=4k")
    _store_at(home, f"{tiny}/spool.sqlite3")
    _one_line(
        home.run("send", "--to", "MAILDIR:bob", "--body", "x"),
        f"cannot create the store {tiny}/spool.sqlite3",
        "no space left on the device",
    )


def test_a_missing_directory(home: Home) -> None:
    # /proc refuses new directories whoever asks: a path that cannot be created.
    _store_at(home, "/proc/self/no-such-dir/spool.sqlite3")
    line = _one_line(
        home.run("send", "--to", "MAILDIR:bob", "--body", "x"),
        "/proc/self/no-such-dir",
        "no such file or directory",
        "create the directory",
    )
    assert "[Errno" not in line


def test_permission_denied(home: Home) -> None:
    # sysfs refuses new files whoever asks (root too): EACCES, or EROFS where /sys is
    # mounted read-only; the test asks the kernel which, then the command.
    target = "/sys/spoolbox-test/spool.sqlite3"
    try:
        os.mkdir(os.path.dirname(target))
    except OSError as exc:
        number = exc.errno
    else:  # pragma: no cover - a sysfs that takes directories
        os.rmdir(os.path.dirname(target))
        pytest.skip("SKIPPED LOUDLY: /sys accepts new directories here")
    words = {errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
    words[errno.EROFS] = "read-only file system"
    if number not in words:
        pytest.skip(f"SKIPPED LOUDLY: mkdir under /sys fails with {errno.errorcode[number]}")
    _store_at(home, target)
    _one_line(
        home.run("send", "--to", "MAILDIR:bob", "--body", "x"),
        "/sys/spoolbox-test",
        words[number],
    )


def test_a_profile_that_does_not_exist(tmp_path: Path) -> None:
    profile = tmp_path / "nowhere" / "spoolbox.toml"
    r = subprocess.run(
        [*CLI, "--profile", str(profile), "send", "--to", "MAILDIR:bob", "--body", "x"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 5
    assert r.stderr.strip() == (
        f"spoolbox: {profile}: no such profile (create one with `spoolbox init`, or pass --profile)"
    )
