"""The maildrop (``[daemon] maildrop``): its file format, hostile files, and the
daemon's pickup over a real SQLite store.  The end to end run, with a user who may
not write the store, is tests/cli/test_cli_maildrop.py."""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from spoolbox import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    Notify,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)
from spoolbox.api.maildrop import (
    MAGIC,
    DropError,
    decode_drop,
    drop,
    encode_drop,
)
from spoolbox.daemon import maildrop as pickup_module
from spoolbox.daemon.maildrop import DIRECTORY_MODE, MaildropPickup
from spoolbox.profile import ProfileError


def message(to: str = "MAILDIR:bob", body: bytes = b"hello\r\n", **kw: object) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:app@example.org"),
        recipients=(Address.parse(to),),
        content=b"Subject: drop\r\n\r\n" + body,
        **kw,  # type: ignore[arg-type]
    )


# -- the format ----------------------------------------------------------------------------------
def test_a_drop_holds_messages_as_the_local_api_takes_them() -> None:
    first = message(
        notify=Notify.SUCCESS | Notify.FAILURE, envelope_id="env-1", return_content=False
    )
    second = message("MAILDIR:carol", b"8-bit \xff\r\n" * 3)
    third = message("MAILDIR:dave", return_content=True)
    data = encode_drop([first, second, third])
    assert data.startswith(MAGIC)
    decoded = decode_drop(data)
    assert decoded == [first, second, third]
    assert [m.return_content for m in decoded] == [False, None, True]


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda d: b"spoolbox-maildrop 9\n" + d[len(MAGIC) :], "not a drop file"),
        (lambda d: d[:-3], "cut short?"),
        (lambda d: d + b"x", "1 bytes after the last message"),
        (lambda d: MAGIC + b"[1, 2]\n", 'not {"messages": [...]}'),
        (lambda d: MAGIC + b"{nope\n", "the envelope line is not JSON"),
        (lambda d: MAGIC + b'{"messages": []}\n', "with a message"),
        (lambda d: MAGIC + b'{"messages": [{"recipients": []}]}\n', "message #1: no size"),
        (
            lambda d: MAGIC + b'{"messages": [{"recipients": ["MAILDIR:bob"], "size": -1}]}\n',
            "no size",
        ),
        (
            lambda d: MAGIC + b'{"messages": [{"recipients": ["bad\\u0000addr"], "size": 3}]}\nabc',
            "message #1:",
        ),
        (lambda d: MAGIC + b"x" * 10, "no end to the envelope line"),
    ],
)
def test_what_is_not_a_drop_is_said(mangle: object, words: str) -> None:
    data = mangle(encode_drop([message()]))  # type: ignore[operator]
    with pytest.raises(DropError, match=words.replace("[", r"\[").replace("?", r"\?")):
        decode_drop(data)


def test_a_drop_is_written_whole_under_a_name_the_pickup_takes(tmp_path: Path) -> None:
    m = message()
    path = drop(tmp_path, [m])
    assert path.parent == tmp_path and not path.name.startswith(".")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    assert decode_drop(path.read_bytes()) == [m]


# -- the pickup ----------------------------------------------------------------------------------
def _group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


class _Run:
    def __init__(self, spooler: Spooler, pickup: MaildropPickup, mail: Path) -> None:
        self.spooler = spooler
        self.pickup = pickup
        self.mail = mail


async def _spooler(tmp_path: Path) -> Spooler:
    config = SpoolerConfig(
        transports=(TransportConfig("local", "maildir", options={"root": str(tmp_path / "m")}),)
    )
    return Spooler.open(config, store=SQLiteStore(tmp_path / "spool.sqlite3"), idle=AlwaysIdle())


async def test_the_pickup_makes_the_directory_and_takes_what_was_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    box = tmp_path / "maildrop"
    async with await _spooler(tmp_path) as spooler:
        pickup = MaildropPickup(lambda: spooler, box, _group(), tmp_path / "spoolbox.toml")
        pickup.prepare()
        st = box.stat()
        assert stat.S_IMODE(st.st_mode) == DIRECTORY_MODE and st.st_gid == os.getgid()
        assert stat.S_IMODE((box / "corrupt").stat().st_mode) == 0o700
        one = message()
        two = [message("MAILDIR:carol"), message("MAILDIR:dave")]
        drop(box, [one])
        drop(box, two)
        (box / ".being-written").write_bytes(b"half")  # a writer still at it
        assert await pickup.take() == 2
        for m in (one, *two):
            assert await spooler.wait_for(m.id, timeout=20) is MessageState.SENT
        assert sorted(p.name for p in box.iterdir()) == [".being-written", "corrupt"]
        # Taken again after a crash between the commit and the removal: nothing twice.
        drop(box, [one])
        assert await pickup.take() == 1
        assert len(list((tmp_path / "m" / "bob" / "new").iterdir())) == 1
    assert f"maildrop: queued {one.id} from uid {os.getuid()}" in caplog.text


async def test_hostile_files_are_moved_aside_and_the_good_ones_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = tmp_path / "maildrop"
    secret = tmp_path / "secret"
    secret.write_bytes(encode_drop([message("MAILDIR:eve")]))
    async with await _spooler(tmp_path) as spooler:
        pickup = MaildropPickup(lambda: spooler, box, _group(), tmp_path / "spoolbox.toml")
        pickup.prepare()
        (box / "garbage").write_bytes(b"From: x\r\n\r\nnot a drop\r\n")
        (box / "link").symlink_to(secret)  # someone else's file, by a link
        os.link(secret, box / "hardlink")  # or a second name of it
        (box / "adir").mkdir()
        listening = socket.socket(socket.AF_UNIX)  # cannot be opened at all
        listening.bind(str(box / "asocket"))
        good = message()
        drop(box, [good])
        old = box / ".left-by-a-dead-writer"
        old.write_bytes(b"x")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        assert await pickup.take() == 1
        assert await spooler.wait_for(good.id, timeout=20) is MessageState.SENT
        assert sorted(p.name for p in (box / "corrupt").iterdir()) == [
            "adir",
            "asocket",
            "garbage",
            "hardlink",
        ]
        listening.close()
        assert sorted(p.name for p in box.iterdir()) == ["corrupt"]  # link and stale gone
        assert secret.exists()  # the link's target untouched
        assert not (tmp_path / "m" / "eve").exists()
    assert "maildrop: garbage from uid" in caplog.text
    assert "is not a drop (not a drop file" in caplog.text
    assert "maildrop: link is a link, not a drop: removed" in caplog.text
    assert "hardlink from uid" in caplog.text and "2 links to it" in caplog.text


async def test_a_store_that_fails_leaves_the_drop_for_the_next_round(tmp_path: Path) -> None:
    box = tmp_path / "maildrop"
    async with await _spooler(tmp_path) as spooler:
        current: list[Spooler | None] = [None]  # between two spoolers (a reload)
        pickup = MaildropPickup(lambda: current[0], box, _group(), tmp_path / "spoolbox.toml")
        pickup.prepare()
        m = message()
        path = drop(box, [m])
        assert await pickup.take() == 0 and path.exists()
        current[0] = spooler
        assert await pickup.take() == 1 and not path.exists()
        assert await spooler.wait_for(m.id, timeout=20) is MessageState.SENT


def test_a_maildrop_that_is_not_the_daemons_own_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "file"
    other.write_text("x")
    pickup = MaildropPickup(lambda: None, other, _group(), tmp_path / "spoolbox.toml")
    with pytest.raises(ProfileError, match="is not a directory"):
        pickup.prepare()
    pickup = MaildropPickup(lambda: None, tmp_path / "m", "no-such-group-x", tmp_path / "p")
    with pytest.raises(ProfileError, match="no such group 'no-such-group-x'"):
        pickup.prepare()
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, -1)
        pickup = MaildropPickup(lambda: None, theirs, _group(), tmp_path / "spoolbox.toml")
        with pytest.raises(ProfileError, match="belongs to uid 65534"):
            pickup.prepare()


def test_the_maildrop_needs_a_socket_group(tmp_path: Path) -> None:
    from spoolbox.profile import load_profile

    p = tmp_path / "spoolbox.toml"
    p.write_text('[daemon]\nmaildrop = "/var/spool/spoolbox/maildrop"\n')
    with pytest.raises(ProfileError, match="maildrop: needs socket_group"):
        load_profile(p)
    p.write_text(f'[daemon]\nmaildrop = "drop"\nsocket_group = "{_group()}"\n')
    assert load_profile(p).daemon.maildrop == tmp_path.resolve() / "drop"


async def test_the_files_are_read_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A drop may be 256 MiB: reading and decoding it must not stall the daemon's loop.
    box = tmp_path / "maildrop"
    threads: list[int] = []

    def decode(data: bytes) -> list[NewMessage]:
        threads.append(threading.get_ident())
        return decode_drop(data)

    monkeypatch.setattr(pickup_module, "decode_drop", decode)
    async with await _spooler(tmp_path) as spooler:
        pickup = MaildropPickup(lambda: spooler, box, _group(), tmp_path / "spoolbox.toml")
        pickup.prepare()
        drop(box, [message(body=b"x" * 1_000_000)])
        assert await pickup.take() == 1
    assert threads and threading.get_ident() not in threads
