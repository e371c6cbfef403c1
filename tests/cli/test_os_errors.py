"""Store and operating system errors: one line with a hint and exit 74, through the
real command; the traceback only with ``spoolbox --debug``.

The read-only and disk-full cases mount a real tmpfs (``-o ro``, ``-o size=...``):
as root only; they skip, saying why, where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import CLI, Daemons, Home, _env
from spoolbox import Address, NewMessage, StoreFull
from spoolbox.client import Client, ClientError

EXIT_OS_ERROR = 74
EX_TEMPFAIL = 75


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
            # A process that held a file there (a daemon's listener process, just
            # killed) may still be ending: detach the mount rather than leave it.
            if subprocess.run(["umount", str(point)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], check=False)


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


def test_a_full_disk_under_the_running_daemon(home: Home, mount: Mount, daemons: Daemons) -> None:
    """The daemon's store fills up: each way in says so as a temporary failure and
    nothing is queued half; with room again, the same submissions go through."""
    full = mount("daemon-full", "size=3m")
    _store_at(home, f"{full}/spool.sqlite3")
    daemon = daemons.start(home)
    assert home.run("send", "--to", "MAILDIR:bob", "--body", "small").returncode == 0
    big = home.path / "big.txt"
    big.write_bytes(os.urandom(1_500_000).hex().encode())  # 3 MB, more than the disk

    # spoolbox send, through the daemon: the line the same failure gets without it.
    line = _one_line(
        home.run("send", "--to", "MAILDIR:bob", "--body", "x", "--attach", str(big)),
        "no space left on the device",
        "free space",
    )
    assert "database or disk is full" in line
    # sendmail: try again later (75), saying why.
    r = home.run("sendmail", "bob", input=b"Subject: big\n\n" + big.read_bytes())
    assert r.returncode == EX_TEMPFAIL, (r.returncode, r.stderr)
    assert "disk is full, try again later" in r.stderr, r.stderr
    assert "internal error" not in r.stderr
    # The listener: 452 4.3.1 at MAIL for a size that does not fit.
    port = home.listener_port()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.mail("alice@example.org", ["SIZE=3000000"])
    assert (code, text.decode()[:5]) == (452, "4.3.1"), text

    # The Python client: one except catches it with the daemon running or not.
    client = Client(home.profile)
    too_big = NewMessage(
        sender=None,
        recipients=(Address.parse("MAILDIR:bob"),),
        content=b"Subject: big\r\n\r\n" + big.read_bytes(),
    )
    with pytest.raises(StoreFull) as info:
        client.submit(too_big)
    assert isinstance(info.value, ClientError) and info.value.code == "store_full"
    assert "disk is full" in str(info.value)

    subprocess.run(["mount", "-o", "remount,size=32m", str(full)], check=True)
    r = home.run("send", "--to", "MAILDIR:bob", "--body", "x", "--attach", str(big))
    assert r.returncode == 0, r.stderr
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("alice@example.org", ["SIZE=3000000"])[0] == 250
    # Two messages taken, none half: the small one and the big one.
    listed = home.json("queue", "list", "--all")
    assert listed["total"] == 2, listed
    assert daemons.stop(daemon) == 0
    assert not daemons.tracebacks()


def test_a_daemon_on_a_full_disk_names_the_file_it_could_not_write(
    home: Home, mount: Mount
) -> None:
    full = mount("data-full", "size=256k,mode=0700")
    text = home.profile.read_text()
    home.profile.write_text(re.sub(r'(?m)^data_dir = ".*"', f'data_dir = "{full}"', text, count=1))
    with open(full / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    _one_line(
        home.run("run", "--no-nice"),
        f"cannot use {full}/spoolbox.pid",
        "no space left on the device",
        log=True,
    )


def test_a_backup_to_a_full_disk_leaves_nothing_behind(home: Home, mount: Mount) -> None:
    big = home.path / "big.txt"
    big.write_bytes(os.urandom(200_000).hex().encode())
    r = home.run("send", "--to", "MAILDIR:bob", "--body", "x", "--attach", str(big))
    assert r.returncode == 0, r.stderr
    small = mount("backups", "size=64k")
    dest = small / "spool.sqlite3"
    r = home.run("store", "backup", str(dest))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"to {dest}: database or disk is full" in r.stderr, r.stderr
    assert list(small.iterdir()) == []  # neither the copy nor its temporary file


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
