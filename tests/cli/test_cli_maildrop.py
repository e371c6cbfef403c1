"""The maildrop end to end: a user in ``socket_group`` who may not write the store
(here ``nobody``, in a child of this test that gave up root) submits while the
daemon is down; the message is left in the maildrop, and the daemon, once started,
queues and delivers it and empties the maildrop.

The child is forked, not executed: it runs the code this process already imported
(the virtual environment and Python's own library may not be readable by
``nobody``)."""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spoolbox.api.maildrop  # noqa: F401  (imported before the fork: the child uses it)
from conftest import CLI, DEADLINE, Daemons, Home, _env, wait_until
from spoolbox import Address, NewMessage
from spoolbox.api.client import Client, StoreNotWritable
from spoolbox.profile import load_profile

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="acts as another user (nobody): needs root, as CI has"
)


@pytest.fixture
def layout() -> Iterator[Path]:
    """A service's layout under a directory ``nobody`` may enter: the data directory
    root's (0700), the profile 0640 and the socket's directory 0750 for the group,
    the maildrop's parent open."""
    base = Path(tempfile.mkdtemp(prefix="spoolbox-maildrop-", dir="/tmp"))
    try:
        base.chmod(0o755)
        group = grp.getgrgid(NOBODY).gr_name
        r = subprocess.run(
            [*CLI, "init", "--dir", str(base / "data"), "--smtp-port", "0"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=DEADLINE,
        )
        assert r.returncode == 0, r.stderr
        (base / "etc").mkdir(mode=0o755)
        (base / "run").mkdir(mode=0o750)
        os.chown(base / "run", 0, NOBODY)
        (base / "spool").mkdir(mode=0o755)
        text = (base / "data" / "spoolbox.toml").read_text()
        text = text.replace('data_dir = "."', f'data_dir = "{base / "data"}"', 1)
        text = text.replace(
            'socket = "spoolbox.sock"',
            f'socket = "{base / "run" / "spoolbox.sock"}"\nsocket_group = "{group}"\n'
            f'maildrop = "{base / "spool" / "maildrop"}"',
            1,
        )
        profile = base / "etc" / "spoolbox.toml"
        profile.write_text(text)
        profile.chmod(0o640)
        os.chown(profile, 0, NOBODY)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(profile: Path, message: NewMessage) -> dict[str, Any]:
    """``Client.submit`` in a forked child running as nobody (group nogroup); what it
    returned, or the error it raised, and whether it could list the maildrop."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read)
            os.setgroups([NOBODY])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out: dict[str, Any] = {}
            try:
                out["result"] = Client(load_profile(profile)).submit(message)
            except StoreNotWritable as exc:
                out["error"] = str(exc)
            directory = load_profile(profile).daemon.maildrop
            try:
                os.listdir(str(directory))
                out["listed"] = "listed"
            except OSError as exc:
                out["listed"] = type(exc).__name__
            os.write(write, json.dumps(out).encode())
        except BaseException as exc:
            os.write(write, json.dumps({"crash": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    out = json.loads(data)
    assert "crash" not in out, out["crash"]
    return out


def _message() -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:app@example.org"),
        recipients=(Address.parse("MAILDIR:bob"),),
        content=b"Subject: left while the daemon was down\r\n\r\nhello\r\n",
    )


def test_mail_left_while_the_daemon_is_down_is_delivered_when_it_starts(
    layout: Path, daemons: Daemons
) -> None:
    home = Home(layout / "etc")
    # A warm-up as root on the same code path (modules the child needs, imported).
    warm = Client(load_profile(home.profile)).submit(_message())
    assert warm["via"] == "store"
    # The maildrop does not exist before the daemon made it: nothing queued, said so.
    out = _as_nobody(home.profile, _message())
    assert "may not write the store" in out["error"], out
    assert "nor leave it in the maildrop" in out["error"], out
    # The daemon makes it (mode 1730, the group's), then stops.
    proc = daemons.start(home)
    box = layout / "spool" / "maildrop"  # made before the daemon says it is ready
    st = box.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1730, 0, NOBODY)
    assert daemons.stop(proc) == 0
    # Down again: nobody's message is left in the maildrop.
    message = _message()
    out = _as_nobody(home.profile, message)
    assert out["result"]["via"] == "maildrop", out
    assert out["result"]["id"] == message.id
    assert "left in the maildrop" in out["result"]["note"]
    assert out["listed"] == "PermissionError"  # the group may drop, not look
    [dropped] = [p for p in box.iterdir() if p.name != "corrupt"]
    st = dropped.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o644)
    # Started, the daemon takes it in and delivers it; the maildrop is empty.
    daemons.start(home)
    new = layout / "data" / "mail" / "bob" / "new"
    wait_until("both messages delivered", lambda: new.exists() and len(list(new.iterdir())) == 2)
    assert [p.name for p in box.iterdir()] == ["corrupt"]
    log = daemons.logs[-1].read_text()
    assert f"maildrop: queued {message.id} from uid {NOBODY}" in log


def test_a_maildrop_that_cannot_be_one_stops_the_daemon_before_it_listens(
    layout: Path,
) -> None:
    home = Home(layout / "etc")
    (layout / "spool" / "maildrop").write_text("a file")
    r = home.run("run", timeout=DEADLINE)
    assert r.returncode == 5, r.stderr
    assert "maildrop is not a directory (a link or a file)" in r.stderr.replace("\n", " ")
    assert "listening" not in r.stderr and "listener" not in r.stderr, r.stderr
    assert (layout / "spool" / "maildrop").read_text() == "a file"
