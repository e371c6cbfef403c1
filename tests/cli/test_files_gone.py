"""A daemon whose store or pid file is removed or replaced under it stops, saying so,
with exit status 74, instead of taking mail into a file no path leads to.

Real ``spoolbox run`` processes; the files are removed, moved and replaced as a user
(or a careless cleanup) would, with the daemon running."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Daemons, Home, wait_until
from spoolbox.client import Client
from spoolbox.daemon.files_watch import (
    EXIT_FILES_GONE,
    INTERVAL,
    FileIdentity,
    changes,
    identities,
    identity,
    watch_files,
)

#: Seconds a daemon may take to notice (a look every INTERVAL) and stop.
_NOTICE = INTERVAL + 20.0


def _exit_status(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait(timeout=_NOTICE)


def _log(daemons: Daemons) -> str:
    return daemons.logs[-1].read_text(errors="replace")


def test_removing_the_store_stops_the_daemon_with_74(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    port = home.listener_port()
    store = home.path / "spool.sqlite3"
    assert store.exists()
    store.unlink()
    assert _exit_status(proc) == EXIT_FILES_GONE
    log = _log(daemons)
    assert (
        f"the store {store} was removed while the daemon ran: mail accepted from now on "
        "would be kept where no path leads and lost at the next start; stopping "
        "(exit status 74)"
    ) in log
    assert "another daemon could start" not in log  # its pid file is still there
    # Its listener stopped with it: no mail goes into the removed file.
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
    assert not (home.path / "spoolbox.pid").exists()  # its own pid file, removed at the stop
    # Its write-ahead log is left: a start (systemd's restart) does not replay it into
    # a new, empty store, and says what to do.
    again = home.run("run", "--no-nice")
    assert again.returncode == EXIT_FILES_GONE
    assert f"the store {store} is missing but its write-ahead log {store}-wal" in again.stderr
    assert not store.exists()


def test_moving_the_data_directory_away_stops_the_daemon(
    home: Home, daemons: Daemons, tmp_path: Path
) -> None:
    proc = daemons.start(home)
    moved = tmp_path / "moved"
    os.rename(home.path, moved)
    assert _exit_status(proc) == EXIT_FILES_GONE
    log = (moved / daemons.logs[-1].name).read_text(errors="replace")
    assert (
        f"the pid file {home.path / 'spoolbox.pid'} was removed; the store "
        f"{home.path / 'spool.sqlite3'} was removed while the daemon ran: mail accepted "
        "from now on would be kept where no path leads and lost at the next start, and "
        "another daemon could start on this data directory"
    ) in log
    daemons.logs.clear()  # (moved with the directory: read above)


def test_a_replaced_pid_file_stops_the_daemon_and_is_left_in_place(
    home: Home, daemons: Daemons
) -> None:
    proc = daemons.start(home)
    pid_file = home.path / "spoolbox.pid"
    other = home.path / "other.pid"
    other.write_text("99999\n")
    os.replace(other, pid_file)  # as a daemon started after ours was removed would
    assert _exit_status(proc) == EXIT_FILES_GONE
    assert (
        f"the pid file {pid_file} was replaced by another file while the daemon ran: "
        "another daemon could start on this data directory; stopping"
    ) in _log(daemons)
    assert pid_file.read_text() == "99999\n"  # not ours: not removed at the stop


def test_after_a_reload_onto_another_store_the_new_one_is_watched(
    home: Home, daemons: Daemons
) -> None:
    proc = daemons.start(home)
    client = Client(home.profile)
    old, new = home.path / "spool.sqlite3", home.path / "other.sqlite3"
    text = home.profile.read_text()
    assert 'path = "spool.sqlite3"' in text
    home.profile.write_text(text.replace('path = "spool.sqlite3"', 'path = "other.sqlite3"'))
    proc.send_signal(signal.SIGHUP)
    wait_until("the reload", lambda: client.ping()["reloads"] == 1)
    assert new.exists()
    for suffix in ("", "-wal", "-shm", "-lock"):  # the old store, not used any more
        Path(f"{old}{suffix}").unlink(missing_ok=True)
    time.sleep(2 * INTERVAL + 1)
    assert proc.poll() is None, _log(daemons)  # the old store's going is no stop
    new.unlink()
    assert _exit_status(proc) == EXIT_FILES_GONE
    assert f"the store {new} was removed" in _log(daemons)


def test_a_reload_naming_another_pid_file_leaves_the_locked_one_watched_and_removed(
    home: Home, daemons: Daemons
) -> None:
    proc = daemons.start(home)
    locked, named = home.path / "spoolbox.pid", home.path / "next.pid"
    text = home.profile.read_text()
    home.profile.write_text(text.replace('pid_file = "spoolbox.pid"', 'pid_file = "next.pid"'))
    proc.send_signal(signal.SIGHUP)
    wait_until("the reload", lambda: "pid_file changed: it takes effect" in _log(daemons))
    time.sleep(INTERVAL + 1)
    assert proc.poll() is None  # the new name, not made yet, is not looked for
    named.write_text("not ours\n")
    assert daemons.stop(proc) == 0
    assert not locked.exists()  # the file it locked, removed at its stop
    assert named.read_text() == "not ours\n"


def test_a_stop_with_the_files_in_place_exits_0(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    assert daemons.stop(proc) == 0
    assert "was removed" not in _log(daemons)


# -- the decision and the loop, without a daemon ------------------------------------------


def test_changes_name_each_file_removed_or_replaced(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for p in (a, b, c):
        p.write_text("x")
    watched = identities({"store": a, "pid file": b, "other": c, "absent": tmp_path / "none"})
    assert set(watched) == {"store", "pid file", "other"}  # a missing one is not watched
    assert changes(watched, {w: identity(p) for w, (p, _) in watched.items()}) == {}
    a.unlink()
    b.unlink()
    b.write_text("new")  # another inode at the same path
    now = {w: identity(p) for w, (p, _) in watched.items()}
    assert now["pid file"] is not None and now["pid file"] != watched["pid file"][1]
    assert changes(watched, now) == {
        "store": f"the store {a} was removed",
        "pid file": f"the pid file {b} was replaced by another file",
    }


def test_a_path_under_a_file_counts_as_removed(tmp_path: Path) -> None:
    (tmp_path / "d").write_text("a file where a directory was")
    assert identity(tmp_path / "d" / "store") is None


def test_watch_files_calls_gone_once_and_returns(tmp_path: Path) -> None:
    f = tmp_path / "store"
    f.write_text("x")
    watched = {"store": (f, FileIdentity(os.stat(f).st_dev, os.stat(f).st_ino))}
    looks: list[float] = []
    told: list[dict[str, str]] = []

    async def sleep(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 3:
            f.unlink()

    asyncio.run(watch_files(lambda: watched, told.append, interval=0.5, sleep=sleep))
    assert looks == [0.5, 0.5, 0.5]
    assert told == [{"store": f"the store {f} was removed"}]
