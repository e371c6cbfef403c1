"""A full disk and a read-only database while a client submits.

The submitter gets a clear :class:`~spoolbox.StoreError` (what happened, which file),
nothing half-written is ever visible, and once space is back (or the file system is
writable again) the queue is intact and takes submissions again.

These need real file systems that fill up or turn read-only under the store, so
they mount a small tmpfs (and a read-only bind mount of it): root only.  Where
mounting is not permitted they are skipped, and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolbox import (
    Address,
    MessageState,
    NewMessage,
    RecipientState,
    SQLiteStore,
    StoreError,
    StoreFull,
    UnknownMessage,
)
from spoolbox.ingress import ListenerConfig, SubmissionListener
from spoolbox.store.space import room_check

LIFETIME = 3600.0
BIG = 200 * 1024  # content per message while filling the disk
FILLER = 512 * 1024  # pre-allocated, deleted to free space
READ_ONLY = re.compile(r"read-?only", re.IGNORECASE)


# -- mounts (root only) -------------------------------------------------------------


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _cannot_mount(what: str, result: subprocess.CompletedProcess[str]) -> None:
    pytest.skip(
        f"cannot mount {what} here (need root; {' '.join(result.args)}: "
        f"{result.stderr.strip() or result.returncode}): disk-full/read-only test not run"
    )


def _umount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # never leave a mount behind


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` for the duration."""
    if os.geteuid() != 0:
        pytest.skip("cannot mount a tmpfs here (need root): disk-full/read-only test not run")
    path.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if result.returncode != 0:
        _cannot_mount("a tmpfs", result)
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only_bind(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a read-only bind mount)."""
    target.mkdir()
    result = _run("mount", "--bind", str(source), str(target))
    if result.returncode != 0:
        _cannot_mount("a bind mount", result)
    try:
        result = _run("mount", "-o", "remount,bind,ro", str(target))
        if result.returncode != 0:
            _cannot_mount("a read-only bind mount", result)
        yield target
    finally:
        _umount(target)


def remount(path: Path, mode: str, *, bind: bool = False) -> None:
    options = f"remount,bind,{mode}" if bind else f"remount,{mode}"
    result = _run("mount", "-o", options, str(path))
    assert result.returncode == 0, f"mount -o {options} {path}: {result.stderr}"


# -- helpers --------------------------------------------------------------------------


def message(i: int, size: int = 0) -> NewMessage:
    body = bytes(65 + (i + n) % 26 for n in range(size)) if size else b"small body\r\n"
    return NewMessage(
        sender=Address.parse("MAILDIR:postmaster"),
        recipients=(Address.parse("MAILDIR:box"),),
        content=b"Subject: message %d\r\nMessage-ID: <m%d@full.test>\r\n\r\n" % (i, i) + body,
        id=f"m{i:04d}",
    )


def write_filler(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.write(b"\xa5" * size)
        f.flush()
        os.fsync(f.fileno())


def integrity(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


async def assert_queue(store: SQLiteStore, expected: dict[str, bytes]) -> None:
    """The store holds exactly ``expected`` (id -> content), every one queued, whole."""
    listed = await store.list_messages(limit=10_000, now=time.time())
    assert sorted(s.info.id for s in listed) == sorted(expected)
    for mid, content in expected.items():
        assert await store.read_content(mid) == content, f"{mid}: content differs"
        [rec] = await store.recipients(mid)
        assert rec.state is RecipientState.QUEUED
    counts = await store.counts()
    assert counts[RecipientState.QUEUED] == len(expected)
    assert sum(counts.values()) == len(expected)


async def submit_in_a_new_store(path: Path, msg: NewMessage) -> None:
    """What a client does: open the store, submit, close."""
    async with SQLiteStore(path) as store:
        await store.submit(msg, now=time.time(), lifetime=LIFETIME)


# -- disk full ------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4], ids=["one-by-one", "group-commit"])
async def test_disk_full_during_submit(tmp_path: Path, concurrency: int) -> None:
    with tmpfs(tmp_path / "small", "2m") as small:
        filler = small / "filler"
        write_filler(filler, FILLER)
        db = small / "spool.sqlite3"
        accepted: dict[str, bytes] = {}
        refused: dict[str, StoreError] = {}
        async with SQLiteStore(db) as store:
            i = 0
            while not refused:
                assert i < 200, "the 2 MB file system never filled up"
                wave = [message(i + k, BIG) for k in range(concurrency)]
                i += concurrency
                results = await asyncio.gather(
                    *(store.submit(m, now=time.time(), lifetime=LIFETIME) for m in wave),
                    return_exceptions=True,
                )
                for m, result in zip(wave, results, strict=True):
                    if isinstance(result, BaseException):
                        assert isinstance(result, StoreFull), repr(result)
                        refused[m.id] = result
                    else:
                        assert result.id == m.id
                        accepted[m.id] = m.content
            assert accepted, "not even the first message fitted"

            # Nothing half-written: what was accepted is whole, what was refused absent.
            await assert_queue(store, accepted)
            for mid in refused:
                with pytest.raises(UnknownMessage):
                    await store.get_message(mid)

            # Space back: the refused message goes in now, and a new one too.
            filler.unlink()
            again = message(int(min(refused).removeprefix("m")), BIG)
            await store.submit(again, now=time.time(), lifetime=LIFETIME)
            accepted[again.id] = again.content
            last = message(9999)
            await store.submit(last, now=time.time(), lifetime=LIFETIME)
            accepted[last.id] = last.content
            await assert_queue(store, accepted)

        async with SQLiteStore(db) as store:  # reopened: the same queue
            await assert_queue(store, accepted)
        assert integrity(db) == ["ok"]

        # The error says what happened and to which file (checked last, so that a
        # vague message does not hide whether the queue survived).
        for error in refused.values():
            text = str(error)
            assert "disk is full" in text, text
            assert str(db) in text, text


def _smtp_send(port: int, i: int, *, announce: bool) -> tuple[int, str]:
    """One message of about BIG bytes over SMTP: the first reply that is not a
    success (MAIL's or the data's), or the data's 250; MAIL carries SIZE= only if
    ``announce``."""
    body = b"".join(b"%07d %s\r\n" % (n, b"x" * 68) for n in range(BIG // 78))
    content = b"Subject: message %d\r\n\r\n" % i + body
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        options = [f"SIZE={len(content)}"] if announce else []
        code, text = smtp.mail("postmaster@full.test", options)
        if code != 250:
            return code, text.decode()
        assert smtp.rcpt("box@full.test")[0] == 250
        code, text = smtp.data(content)
        return code, text.decode()


async def test_the_listener_answers_452_and_keeps_what_it_accepted(tmp_path: Path) -> None:
    """The SMTP listener on a store whose disk fills up: 452 4.3.1 after the data once
    the store is full (a listener that cannot see the store's disk, as on
    PostgreSQL or ``sendmail -bs``), at MAIL with the daemon's check of the room
    left (the client need not send the message); once there is room, mail is taken
    again, and nothing accepted before is lost."""
    with tmpfs(tmp_path / "small", "3m") as small:
        filler = small / "filler"
        write_filler(filler, FILLER)
        db = small / "spool.sqlite3"
        accepted: dict[str, bytes] = {}
        async with SQLiteStore(db) as store:

            async def submit(m: NewMessage) -> object:
                info = await store.submit(m, now=time.time(), lifetime=LIFETIME)
                accepted[info.id] = m.content
                return info

            config = ListenerConfig(port=0, default_address_type="MAILDIR")
            blind = SubmissionListener(submit, config)
            seeing = SubmissionListener(submit, config, no_room=room_check("sqlite", db))
            await blind.start()
            await seeing.start()
            try:
                replies = []
                for i in range(40):
                    code, text = await asyncio.to_thread(_smtp_send, blind.port, i, announce=False)
                    replies.append((code, text))
                    if code != 250:
                        break
                assert accepted, replies
                code, text = replies[-1]
                assert code == 452, replies
                assert text.startswith("4.3.1 Insufficient system storage"), replies
                assert blind.statistics()["rejected_store_full"] == 1
                await assert_queue(store, accepted)

                # The daemon's listener refuses at MAIL, announced size or not.
                for announce in (True, False):
                    code, text = await asyncio.to_thread(
                        _smtp_send, seeing.port, 100, announce=announce
                    )
                    assert (code, text[:5]) == (452, "4.3.1"), text
                assert seeing.statistics()["rejected_store_full"] == 2

                filler.unlink()  # room again
                remount(small, "size=16m")
                for listener in (blind, seeing):
                    for announce in (True, False):
                        code, text = await asyncio.to_thread(
                            _smtp_send, listener.port, 200, announce=announce
                        )
                        assert code == 250, text
            finally:
                await blind.stop(grace=1.0)
                await seeing.stop(grace=1.0)
            await assert_queue(store, accepted)
        assert integrity(db) == ["ok"]


# -- read-only database -------------------------------------------------------------


async def test_read_only_bind_mount_while_the_spooler_runs(tmp_path: Path) -> None:
    """A submitter that sees the spool through a read-only mount, next to a spooler
    that has it open read-write: its submit fails clearly and leaves no trace."""
    with (
        tmpfs(tmp_path / "spool", "8m") as spool,
        read_only_bind(spool, tmp_path / "ro") as ro,
    ):
        db = spool / "spool.sqlite3"
        expected: dict[str, bytes] = {}
        async with SQLiteStore(db) as running:
            for i in range(5):
                m = message(i)
                await running.submit(m, now=time.time(), lifetime=LIFETIME)
                expected[m.id] = m.content

            refused = message(100)
            with pytest.raises(StoreError) as caught:
                await submit_in_a_new_store(ro / db.name, refused)
            await assert_queue(running, expected)
            with pytest.raises(UnknownMessage):
                await running.get_message(refused.id)

            remount(ro, "rw", bind=True)
            await submit_in_a_new_store(ro / db.name, refused)
            expected[refused.id] = refused.content
            await assert_queue(running, expected)
        assert integrity(db) == ["ok"]

        text = str(caught.value)
        assert READ_ONLY.search(text), text
        assert str(ro / db.name) in text, text


_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    sys.path.insert(0, sys.argv[2])
    from test_disk_full import LIFETIME, message
    from spoolbox import SQLiteStore

    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        for i in range(5):
            await store.submit(message(i), now=time.time(), lifetime=LIFETIME)
        os.kill(os.getpid(), signal.SIGKILL)  # leaves the -wal and -shm files behind

    asyncio.run(main())
    """
)


def _writer_crashes(db: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(db), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.mark.parametrize("writer", ["closed", "crashed"])
async def test_read_only_file_system_during_submit(tmp_path: Path, writer: str) -> None:
    """The spool's file system is remounted read-only (after the last writer closed
    the store cleanly, or after it crashed): a submit fails clearly, changes nothing,
    and works again once the file system is writable."""
    with tmpfs(tmp_path / "spool", "8m") as spool:
        db = spool / "spool.sqlite3"
        expected = {message(i).id: message(i).content for i in range(5)}
        if writer == "crashed":
            _writer_crashes(db)
        else:
            async with SQLiteStore(db) as store:
                for i in range(5):
                    await store.submit(message(i), now=time.time(), lifetime=LIFETIME)
        files = {p.name: p.read_bytes() for p in spool.iterdir()}

        refused = message(100)
        remount(spool, "ro")
        try:
            with pytest.raises(StoreError) as caught:
                await submit_in_a_new_store(db, refused)
        finally:
            remount(spool, "rw")
        assert {p.name: p.read_bytes() for p in spool.iterdir()} == files

        async with SQLiteStore(db) as store:
            await assert_queue(store, expected)
            with pytest.raises(UnknownMessage):
                await store.get_message(refused.id)
            await store.submit(refused, now=time.time(), lifetime=LIFETIME)
            expected[refused.id] = refused.content
            await assert_queue(store, expected)
        assert integrity(db) == ["ok"]

        text = str(caught.value)
        assert str(db) in text, text
        assert READ_ONLY.search(text), f"the error does not say the database is read-only: {text}"
        assert "corrupt" not in text, f"a read-only file system reported as corruption: {text}"


async def test_compact_on_a_disk_without_room_refuses_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # `spoolbox store compact` needs about the live data's size free next to the store
    # (the pages pass through the WAL): without it, it says so before it starts.
    from spoolbox.store.sqlite.compact import compact, space

    with tmpfs(tmp_path / "fs", "8m") as fs:
        db = fs / "spool.db"
        async with SQLiteStore(db) as store:
            ids = [
                (await store.submit(message(i, BIG), now=0.0, lifetime=LIFETIME)).id
                for i in range(12)
            ]
            for mid in ids[:4]:
                await store.cancel(mid)
            assert await store.purge(finished_before={MessageState.CANCELLED: 1e12}, limit=10)
        before = space(db)
        assert before.free > 0 and before.used > 6 * BIG
        filler = fs / "filler"
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
        filler.write_bytes(b"\0" * (free - before.used // 2))
        content = db.read_bytes()
        with pytest.raises(StoreError, match=r"compacting .*spool\.db needs about .* free"):
            compact(db)
        assert db.read_bytes() == content
        filler.unlink()
        done = compact(db)  # with the room back
        assert done.after.free == 0 and done.after.size < before.size
        async with SQLiteStore(db) as store:
            for i, mid in enumerate(ids[4:], start=4):
                assert await store.read_content(mid) == message(i, BIG).content
