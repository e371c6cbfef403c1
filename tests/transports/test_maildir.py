"""The Maildir transport, through the real spooler.

Races the spooler cannot be made to hit on cue (a cancel between two recipients,
a second start_message before the first one's file is removed) are driven against
the session directly, with small fakes of the support object, the message and the
inbound writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import errno
import inspect
import logging
import os
import re
import resource
import signal
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from spoolbox import (
    Address,
    AlwaysIdle,
    IdlePolicy,
    ManualIdle,
    MemoryStore,
    MessageState,
    NewMessage,
    Policy,
    RecipientState,
    Spooler,
    SpoolerConfig,
    StatusRow,
    StoreError,
    TransportConfig,
)
from spoolbox.contract import (
    FailOneProvider,
    LogonFlags,
    MessageCancelled,
    OutboundRecipient,
    RecipientResult,
    StatusCode,
    SubmitFlags,
)
from spoolbox.model import Outcome, RecipientRecord
from spoolbox.store import InboundMessage, InboxEntry
from spoolbox.transports.maildir import MaildirProvider, status_for_error, unique_name

FAST = Policy(
    router_interval=0.02,
    housekeeping_interval=0.05,
    relogon_delay=0.05,
    failure_backoff=0.05,
    failure_backoff_cap=0.2,
    retry_jitter=0.0,
    shutdown_grace=2.0,
)
CONTENT = b"From: alice@example.org\r\nTo: bob\r\nSubject: hello\r\n\r\nHello, Bob.\r\n"
NAME_RE = re.compile(r"^(\d+)\.M(\d{1,6})P(\d+)Q(\d+)\.[^/:]+$")
SECTION = "transport:maildir"


# -- helpers -------------------------------------------------------------------------------
def make_maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def listing(md: Path, sub: str) -> list[str]:
    return sorted(os.listdir(md / sub))


def open_spooler(
    options: Mapping[str, Any],
    *,
    store: MemoryStore | None = None,
    idle: IdlePolicy | None = None,
) -> Spooler:
    cfg = SpoolerConfig(
        transports=(TransportConfig("maildir", "maildir", options=options),),  # the entry point
        policy=FAST,
        node="test-node",
    )
    return Spooler.open(cfg, store=store, idle=idle or AlwaysIdle())


def busy() -> ManualIdle:
    """Holds the background lanes back, so only a flush receives: deterministic."""
    idle = ManualIdle()
    idle.set_busy(True)
    return idle


def message(
    *rcpts: str, content: bytes = CONTENT, sender: str | None = "SMTP:alice@example.org"
) -> NewMessage:
    return NewMessage(
        sender=Address.parse(sender) if sender else None,
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=content,
    )


def trace(return_path: str, maildir: Path, eol: bytes = b"\r\n") -> bytes:
    return (
        b"Return-Path: <" + return_path.encode() + b">" + eol
        + b"Delivered-To: MAILDIR:" + str(maildir).encode() + eol
    )  # fmt: skip


async def wait_row(sp: Spooler, pred: Callable[[StatusRow], bool]) -> StatusRow:
    """The maildir status row, once ``pred`` holds (driven by status changes)."""
    async with asyncio.timeout(10):
        async with sp.subscribe(name="test") as changes:
            async for change in changes:
                row = change.new
                if row is not None and row.name == "maildir" and pred(row):
                    return row
    raise AssertionError("status subscription ended")


async def logged_on(sp: Spooler) -> StatusRow:
    return await wait_row(sp, lambda row: bool(row.status_code & StatusCode.INBOUND_ENABLED))


async def sent(sp: Spooler, msg: NewMessage) -> list[RecipientRecord]:
    info = await sp.submit(msg)
    await sp.wait_for(info.id, timeout=10)
    return await sp.store.recipients(info.id)


# -- outbound -----------------------------------------------------------------------------------
async def test_one_message_is_delivered_into_two_maildirs(tmp_path: Path) -> None:
    a = make_maildir(tmp_path / "a")
    b = tmp_path / "deep" / "b"  # missing: created, with tmp/new/cur
    async with open_spooler({}) as sp:
        info = await sp.submit(message(f"MAILDIR:{a}", f"MAILDIR:{b}"))
        assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        recs = await sp.store.recipients(info.id)
        row = sp.status["maildir"]
    for md, rec in zip((a, b), recs, strict=True):
        names = listing(md, "new")
        assert len(names) == 1 and NAME_RE.match(names[0]), names
        assert (md / "new" / names[0]).read_bytes() == trace("alice@example.org", md) + CONTENT
        assert listing(md, "tmp") == []
        assert rec.state is RecipientState.DELIVERED and rec.status == "2.0.0"
        assert rec.diagnostic == f"maildir; delivered to {md / 'new' / names[0]}"
    for d in (b, b / "tmp", b / "new", b / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert row.status_string is not None
    assert row.status_string.startswith(f"delivered 2, last: {b / 'new'}/")


async def test_tmp_files_left_by_a_crash_go_after_36_hours(tmp_path: Path) -> None:
    """The first delivery of a session to a maildir removes tmp/ files untouched for
    36 hours (a delivery a crash cut off); newer ones may be in use: they stay."""
    md = make_maildir(tmp_path / "md")
    old, fresh = md / "tmp" / "1.M1P1Q1.host", md / "tmp" / "2.M2P2Q2.host"
    old.write_bytes(b"half a message")
    fresh.write_bytes(b"being written")
    long_ago = time.time() - 37 * 3600
    os.utime(old, (long_ago, long_ago))
    async with open_spooler({}) as sp:
        for _ in range(2):
            [rec] = await sent(sp, message(f"MAILDIR:{md}"))
            assert rec.state is RecipientState.DELIVERED
    assert listing(md, "tmp") == [fresh.name]
    assert len(listing(md, "new")) == 2


async def test_relative_value_under_root_null_sender_and_lf_content(tmp_path: Path) -> None:
    root = tmp_path / "root"
    content = b"Subject: unix line endings\n\nbody\n"
    async with open_spooler({"root": str(root)}) as sp:
        [rec] = await sent(sp, message("MAILDIR:users/bob", content=content, sender=None))
    bob = root / "users" / "bob"
    assert rec.state is RecipientState.DELIVERED
    [name] = listing(bob, "new")
    assert (bob / "new" / name).read_bytes() == trace("", bob, eol=b"\n") + content


async def test_200_messages_get_200_distinct_files(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "md")
    bodies = {f"Subject: n{i}\r\n\r\nmessage {i}\r\n".encode() for i in range(200)}
    async with open_spooler({}) as sp:
        infos = [await sp.submit(message(f"MAILDIR:{md}", content=c)) for c in sorted(bodies)]
        for info in infos:
            assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
    names = listing(md, "new")
    assert len(names) == 200
    assert all(NAME_RE.match(n) for n in names)
    head = trace("alice@example.org", md)
    found = set()
    for n in names:
        data = (md / "new" / n).read_bytes()
        assert data.startswith(head)
        found.add(data[len(head) :])
    assert found == bodies  # none overwritten, none lost
    assert listing(md, "tmp") == []


def test_unique_names_within_one_microsecond() -> None:
    names = [unique_name("host") for _ in range(10_000)]
    assert len(set(names)) == len(names)
    m = NAME_RE.match(names[0])
    assert m is not None and int(m.group(3)) == os.getpid()
    assert names[0].endswith(".host")
    assert unique_name("a/b:c").endswith(".a\\057b\\072c")  # the spec's escapes


async def test_missing_maildir_without_create_fails_511_with_a_report(tmp_path: Path) -> None:
    alice = make_maildir(tmp_path / "alice")  # the sender: the report is delivered here
    nobody = tmp_path / "nobody"
    async with open_spooler({"create": False}) as sp:
        info = await sp.submit(message(f"MAILDIR:{nobody}", sender=f"MAILDIR:{alice}"))
        assert await sp.wait_for(info.id, timeout=10) is MessageState.FAILED
        [rec] = await sp.store.recipients(info.id)
        assert sp.counters["reports"] >= 1
        summaries = await sp.store.list_messages(now=sp.clock.now())
        reports = [s for s in summaries if s.info.is_report]
        assert len(reports) == 1
        assert await sp.wait_for(reports[0].info.id, timeout=10) is MessageState.SENT
    assert rec.state is RecipientState.FAILED and rec.status == "5.1.1"
    assert rec.diagnostic is not None and str(nobody) in rec.diagnostic
    assert not nobody.exists()
    [name] = listing(alice, "new")
    dsn = (alice / "new" / name).read_bytes()
    assert b"multipart/report" in dsn and b"5.1.1" in dsn
    assert dsn.startswith(b"Return-Path: <>")  # reports have a null sender


async def test_destinations_outside_root_fail_513(tmp_path: Path) -> None:
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    async with open_spooler({"root": str(root)}) as sp:
        recs = await sent(
            sp,
            message("MAILDIR:../escape", f"MAILDIR:{elsewhere}", "MAILDIR:sub/../inside"),
        )
    assert [(r.state, r.status) for r in recs] == [
        (RecipientState.FAILED, "5.1.3"),
        (RecipientState.FAILED, "5.1.3"),
        (RecipientState.DELIVERED, "2.0.0"),
    ]
    assert not (tmp_path / "escape").exists() and not elsewhere.exists()
    assert len(listing(root / "inside", "new")) == 1


async def test_relative_value_without_root_fails_513(tmp_path: Path) -> None:
    async with open_spooler({}) as sp:
        [rec] = await sent(sp, message("MAILDIR:relative/box"))
    assert (rec.state, rec.status) == (RecipientState.FAILED, "5.1.3")
    assert rec.diagnostic is not None and "root" in rec.diagnostic


async def test_new_that_is_a_file_fails_511_and_leaves_nothing_in_tmp(tmp_path: Path) -> None:
    """Our stand-in for an unwritable maildir when the tests run as root (chmod does not
    stop root).  The link into ``new/`` fails with ENOTDIR after the content was
    written to ``tmp/``: that is a broken maildir, a permanent failure (5.1.1), and
    the written ``tmp/`` file must be gone."""
    md = make_maildir(tmp_path / "md")
    (md / "new").rmdir()
    (md / "new").write_bytes(b"not a directory")
    async with open_spooler({}) as sp:  # create=true must not "repair" it either
        [rec] = await sent(sp, message(f"MAILDIR:{md}"))
    assert (rec.state, rec.status) == (RecipientState.FAILED, "5.1.1")
    assert listing(md, "tmp") == []
    assert (md / "new").read_bytes() == b"not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory anyway")
async def test_unwritable_maildir_is_deferred_420(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "md")
    (md / "new").chmod(0o500)
    try:
        async with open_spooler({}) as sp:
            info = await sp.submit(message(f"MAILDIR:{md}"))
            state = await sp.wait_for(info.id, (MessageState.DEFERRED,), timeout=10)
            [rec] = await sp.store.recipients(info.id)
    finally:
        (md / "new").chmod(0o700)
    assert state is MessageState.DEFERRED
    assert (rec.state, rec.status) == (RecipientState.QUEUED, "4.2.0")
    assert listing(md, "tmp") == [] and listing(md, "new") == []


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (errno.ENOENT, "5.1.1"),
        (errno.ENOTDIR, "5.1.1"),
        (errno.ENAMETOOLONG, "5.1.3"),
        (errno.EFBIG, "5.3.4"),
        (errno.EACCES, "4.2.0"),
        (errno.EPERM, "4.2.0"),
        (errno.EROFS, "4.3.0"),
        (errno.ENOSPC, "4.3.1"),
        (errno.EDQUOT, "4.2.2"),
        (errno.EIO, "4.3.0"),
    ],
)
def test_errno_to_status(code: int, status: str) -> None:
    got, reason = status_for_error(OSError(code, os.strerror(code)))
    assert got == status and reason


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE: writes past ``limit`` fail with EFBIG (SIGXFSZ ignored)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


async def test_write_failing_midway_removes_the_tmp_file(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "md")
    big = b"Subject: big\r\n\r\n" + b"0123456789abcde\n" * (3 * 65536)  # 3 MiB
    async with open_spooler({}) as sp:
        with file_size_limit(1 << 20):
            [rec] = await sent(sp, message(f"MAILDIR:{md}", content=big))
    assert (rec.state, rec.status) == (RecipientState.FAILED, "5.3.4")
    assert listing(md, "tmp") == [] and listing(md, "new") == []


async def test_8_mb_message_is_delivered_byte_exact(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "md")
    body = (bytes(range(1, 256)) * (8 * 1024 * 1024 // 255 + 1))[: 8 * 1024 * 1024]
    content = b"Subject: large\r\n\r\n" + body
    async with open_spooler({}) as sp:
        [rec] = await sent(sp, message(f"MAILDIR:{md}", content=content))
    assert rec.state is RecipientState.DELIVERED
    [name] = listing(md, "new")
    assert (md / "new" / name).read_bytes() == trace("alice@example.org", md) + content


async def test_bad_option_fails_the_logon_naming_the_key(tmp_path: Path) -> None:
    async with open_spooler({"root": str(tmp_path), "bogus": 1}) as sp:
        row = await wait_row(sp, lambda r: bool(r.status_code & StatusCode.FAILURE))
    assert row.detail is not None and "'bogus'" in row.detail


# -- inbound (pickup) ------------------------------------------------------------------------------
class RecordingStore(MemoryStore):
    """A memory store that notes, at each inbox commit, whether the source file is
    still in the pickup maildir (it must be: removal comes after the commit)."""

    def __init__(self, pickup: Path) -> None:
        super().__init__()
        self.pickup = pickup
        self.committed: list[tuple[str | None, bool]] = []
        self.fail = False

    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> InboxEntry:
        if self.fail:
            raise StoreError("the test's store refuses the commit")
        name = message.remote_id or ""
        present = any((self.pickup / sub / name).is_file() for sub in ("new", "cur"))
        self.committed.append((message.remote_id, present))
        return await super().deliver_inbound(message, profile_updates=profile_updates)


def drop(path: Path, data: bytes, mtime: int) -> Path:
    path.write_bytes(data)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return path


async def test_pickup_delivers_files_and_removes_them_after_commit(tmp_path: Path) -> None:
    pickup = make_maildir(tmp_path / "pickup")
    files = {
        "d:2,S": (b"Subject: d\r\n\r\nalready seen\r\n", 1000),
        "a": (b"Subject: a\n\nunix\n", 2000),
        "b": (b"Subject: b\r\n\r\ndos\r\n", 3000),
        "c": (b"Subject: c\r\n\r\n" + b"x" * 200_000, 4000),  # several chunks
    }
    for name, (data, mtime) in files.items():
        drop(pickup / ("cur" if ":" in name else "new") / name, data, mtime)
    (pickup / "new" / "empty").write_bytes(b"")
    (pickup / "new" / ".hidden").write_bytes(b"Subject: dot file\r\n\r\n")
    secret = drop(tmp_path / "secret", b"Subject: not in the maildir\r\n\r\n", 1)
    (pickup / "new" / "link").symlink_to(secret)
    store = RecordingStore(pickup)
    async with open_spooler({"pickup": str(pickup)}, store=store, idle=busy()) as sp:
        await logged_on(sp)
        report = await sp.flush(upload=False, download=True)
        row = sp.status["maildir"]
    assert report.for_transport("maildir").downloaded == 4
    # Oldest first, and every file was still there when its message was committed.
    assert store.committed == [(n, True) for n in ("d:2,S", "a", "b", "c")]
    inbox = await store.list_inbox()
    assert {e.remote_id: await store.read_inbox(e.id) for e in inbox} == {
        n: data for n, (data, _) in files.items()
    }
    assert listing(pickup, "new") == [".hidden", "empty", "link"]  # never picked up
    assert listing(pickup, "cur") == []
    assert secret.exists()
    assert not any(k.startswith("picked:") for k in await store.profile_get(SECTION))
    assert row.status_string == "received 4, last: new/c"


async def test_a_file_dropped_between_polls_comes_in_within_seconds(tmp_path: Path) -> None:
    # The polls an hour apart: only the watch of new/ (NEWMAIL) can bring the file in
    # before the test's deadline; before it, a dropped file waited for the next poll
    # (a minute by default).
    pickup = make_maildir(tmp_path / "pickup")
    store = MemoryStore()
    cfg = SpoolerConfig(
        transports=(TransportConfig("maildir", "maildir", options={"pickup": str(pickup)}),),
        policy=dataclasses.replace(FAST, poll_interval=3600.0),
        node="test-node",
    )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        await logged_on(sp)
        await asyncio.sleep(0.2)  # the logon's first poll is over
        tmp = pickup / "tmp" / "m1"
        tmp.write_bytes(b"Subject: dropped\r\n\r\nbody\r\n")
        tmp.rename(pickup / "new" / "m1")
        async with asyncio.timeout(10):
            while not await store.list_inbox():
                await asyncio.sleep(0.05)
        [entry] = await store.list_inbox()
        assert await store.read_inbox(entry.id) == b"Subject: dropped\r\n\r\nbody\r\n"
    assert listing(pickup, "new") == []


async def test_commit_failure_keeps_the_file_for_the_next_try(tmp_path: Path) -> None:
    pickup = make_maildir(tmp_path / "pickup")
    path = drop(pickup / "new" / "m1", b"Subject: one\r\n\r\nbody\r\n", 1000)
    store = RecordingStore(pickup)
    store.fail = True
    async with open_spooler({"pickup": str(pickup)}, store=store, idle=busy()) as sp:
        await logged_on(sp)
        with contextlib.suppress(StoreError):
            await sp.flush(upload=False, download=True)
        assert path.exists()  # not committed: not removed
        assert await store.list_inbox() == []
        store.fail = False
        report = await sp.flush(upload=False, download=True)
    assert report.for_transport("maildir").downloaded == 1
    assert store.committed == [("m1", True)]
    assert not path.exists()


async def test_crash_between_commit_and_removal_is_not_delivered_twice(tmp_path: Path) -> None:
    pickup = make_maildir(tmp_path / "pickup")
    done = drop(pickup / "new" / "done", b"Subject: committed before the crash\r\n\r\n", 1000)
    same_name = drop(pickup / "new" / "other", b"Subject: a different file\r\n\r\n", 2000)
    st = done.stat()
    store = RecordingStore(pickup)
    await store.profile_update(
        SECTION,
        {
            "picked:done": {
                "sub": "new", "name": "done", "size": st.st_size, "mtime": str(st.st_mtime_ns),
            },
            "picked:other": {  # a record whose file has changed since: not the same file
                "sub": "new", "name": "other", "size": 1, "mtime": str(st.st_mtime_ns),
            },
        },
    )  # fmt: skip
    async with open_spooler({"pickup": str(pickup)}, store=store, idle=busy()) as sp:
        await logged_on(sp)
        assert not done.exists()  # removed at logon, without a second delivery
        assert same_name.exists()
        report = await sp.flush(upload=False, download=True)
    assert report.for_transport("maildir").downloaded == 1
    assert [e.remote_id for e in await store.list_inbox()] == ["other"]
    assert not same_name.exists()
    assert await store.profile_get(SECTION) == {}


# -- the session directly, with fakes ------------------------------------------------------------
class FakeProfile:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self.values.get(key, default))

    def snapshot(self) -> Mapping[str, Any]:
        return copy.deepcopy(self.values)

    async def update(self, values: Mapping[str, Any]) -> None:
        for k, v in values.items():
            if v is None:
                self.values.pop(k, None)
            else:
                self.values[k] = copy.deepcopy(v)


class FakeSupport:
    """The support object, minus the spooler: records rows and results."""

    transport_name = "maildir"
    hostname = "mx.example.test"  # Support.hostname: the unique part of file names

    def __init__(self, *, cancel_at_yield: int | None = None) -> None:
        self.profile = FakeProfile()
        self.rows: list[dict[str, Any]] = []
        self.reports: list[list[RecipientResult]] = []
        self.yields = 0
        self.cancel_at_yield = cancel_at_yield

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger("test.maildir")

    def now(self) -> float:
        return 1_000_000.0

    async def spooler_yield(self) -> None:
        self.yields += 1
        await asyncio.sleep(0)
        if self.cancel_at_yield is not None and self.yields >= self.cancel_at_yield:
            raise MessageCancelled("m1")

    def slice_spent(self) -> bool:
        return False

    def modify_status_row(self, **kw: Any) -> None:
        self.rows.append(kw)

    async def status_recips(self, message: object, results: Sequence[RecipientResult]) -> None:
        self.reports.append(list(results))

    def profile_section(self) -> FakeProfile:
        return self.profile

    async def run_blocking(self, fn: Callable[..., Any], /, *args: object) -> Any:
        return await asyncio.to_thread(fn, *args)


class FakeMessage:
    """An outbound message that only streams (``content()`` would hold it whole)."""

    ref = "m1"
    flags = SubmitFlags.NONE
    sender = None

    def __init__(self, rcpts: Sequence[str], content: bytes, *, cancel_at_chunk: int = -1):
        self.recipients = tuple(OutboundRecipient(i, Address.parse(a)) for i, a in enumerate(rcpts))
        self._content = content
        self._cancel_at = cancel_at_chunk
        self.size = len(content)

    async def content(self) -> bytes:
        raise AssertionError("the transport must stream the content, not read it whole")

    async def iter_content(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        for n, i in enumerate(range(0, len(self._content), chunk_size)):
            if n == self._cancel_at:
                raise MessageCancelled(self.ref)
            yield self._content[i : i + chunk_size]

    async def iter_recipients(self) -> AsyncIterator[OutboundRecipient]:
        for r in self.recipients:
            yield r


class FakeWriter:
    """An inbound writer whose commit the test performs, in two steps as the spooler
    does: the commit (with the set_state values), then the after_commit callbacks."""

    ref = "w"

    def __init__(self, *, refuse: bytes | None = None) -> None:
        self.chunks: list[bytes] = []
        self.remote_id: str | None = None
        self.state: dict[str, Any] = {}
        self.callbacks: list[Callable[[], Any]] = []
        self._refuse = refuse

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))

    def content(self) -> bytes:
        return b"".join(self.chunks)

    async def write(self, data: bytes) -> None:
        if self._refuse is not None and self._refuse in data:
            raise ValueError("the test's writer refuses this content")
        self.chunks.append(bytes(data))

    def set_remote_id(self, remote_id: str) -> None:
        self.remote_id = remote_id

    def set_state(self, key: str, value: Any) -> None:
        self.state[key] = copy.deepcopy(value)

    def after_commit(self, callback: Callable[[], Any]) -> None:
        self.callbacks.append(callback)

    async def commit(self, profile: FakeProfile) -> None:
        await profile.update(self.state)

    async def run_callbacks(self) -> None:
        for cb in self.callbacks:
            res = cb()
            if inspect.isawaitable(res):
                await res


async def logon(support: FakeSupport, options: Mapping[str, Any]) -> Any:
    return await MaildirProvider().logon(support, options, LogonFlags.NONE)  # type: ignore[arg-type]


async def test_logon_creates_the_status_row_and_declares_its_types(tmp_path: Path) -> None:
    support = FakeSupport()
    session = await logon(support, {"root": str(tmp_path)})
    assert support.rows[0]["update"] is False
    assert support.rows[0]["status_code"] == StatusCode.AVAILABLE
    assert str(tmp_path) in support.rows[0]["status_string"]
    assert set(session.address_types()) == {"MAILDIR"}
    assert not session.capabilities()  # no pickup: nothing to poll
    pickup = await logon(FakeSupport(), {"pickup": str(tmp_path / "in")})
    assert pickup.capabilities()
    assert (tmp_path / "in" / "new").is_dir()  # create defaults to true


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"bogus": 1}, ValueError, "'bogus'"),
        ({"root": "relative/dir"}, ValueError, "'root'"),
        ({"pickup": 42}, ValueError, "'pickup'"),
        ({"create": "yes"}, ValueError, "'create'"),
        ({"pickup": "{tmp}/missing", "create": False}, FailOneProvider, "missing"),
    ],
)
async def test_bad_configuration_is_refused(
    tmp_path: Path, options: dict[str, Any], error: type[Exception], words: str
) -> None:
    opts = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(error, match=re.escape(words)):
        await logon(FakeSupport(), opts)
    assert not (tmp_path / "missing").exists()


async def test_paths_may_be_path_objects_and_are_normalised(tmp_path: Path) -> None:
    session = await logon(
        FakeSupport(), {"root": tmp_path / "x" / ".." / "root", "pickup": tmp_path / "in"}
    )
    assert session.settings.root == str(tmp_path / "root")
    assert session.settings.pickup == str(tmp_path / "in")
    assert (tmp_path / "in" / "new").is_dir()


async def test_cancel_between_recipients_reports_the_delivered_one(tmp_path: Path) -> None:
    a = make_maildir(tmp_path / "a")
    b = tmp_path / "b"
    support = FakeSupport(cancel_at_yield=1)
    session = await logon(support, {})
    msg = FakeMessage([f"MAILDIR:{a}", f"MAILDIR:{b}"], CONTENT)
    with pytest.raises(MessageCancelled):
        await session.submit_message(msg, SubmitFlags.NONE)
    [results] = support.reports  # one status_recips call, for what was done
    assert [(r.index, r.outcome) for r in results] == [(0, Outcome.DELIVERED)]
    assert len(listing(a, "new")) == 1 and listing(a, "tmp") == []
    assert not b.exists()


async def test_cancel_in_the_middle_of_the_content_removes_the_tmp_file(tmp_path: Path) -> None:
    a = make_maildir(tmp_path / "a")
    support = FakeSupport()
    session = await logon(support, {})
    msg = FakeMessage([f"MAILDIR:{a}"], CONTENT + b"y" * 300_000, cancel_at_chunk=2)
    with pytest.raises(MessageCancelled):
        await session.submit_message(msg, SubmitFlags.NONE)
    assert listing(a, "tmp") == [] and listing(a, "new") == []
    assert support.reports == []


async def test_a_handed_out_file_is_not_handed_out_twice(tmp_path: Path) -> None:
    pickup = make_maildir(tmp_path / "pickup")
    x = drop(pickup / "new" / "x", b"Subject: x\r\n\r\n", 1000)
    y = drop(pickup / "new" / "y", b"Subject: y\r\n\r\n", 2000)
    support = FakeSupport()
    session = await logon(support, {"pickup": str(pickup)})
    assert await session.poll() == 2

    w1 = FakeWriter()
    await session.start_message(w1)
    assert (w1.remote_id, w1.content()) == ("x", b"Subject: x\r\n\r\n")
    await w1.commit(support.profile)  # committed; its callback has not run yet
    assert x.exists()

    w2 = FakeWriter()
    await session.start_message(w2)  # x is committed, awaiting removal: not again
    assert w2.remote_id == "y"
    # w2 is never committed (say the store failed): y is offered again.
    w3 = FakeWriter()
    await session.start_message(w3)
    assert w3.remote_id == "y"

    await w1.run_callbacks()
    assert not x.exists() and "picked:x" not in support.profile.values
    await w3.commit(support.profile)
    await w3.run_callbacks()
    assert not y.exists() and support.profile.values == {}
    assert await session.poll() == 0
    w4 = FakeWriter()
    await session.start_message(w4)
    assert w4.size == 0 and w4.callbacks == []  # nothing left: nothing delivered


async def test_a_file_that_cannot_be_received_does_not_block_the_others(tmp_path: Path) -> None:
    pickup = make_maildir(tmp_path / "pickup")
    poison = drop(pickup / "new" / "poison", b"Subject: poison\r\n\r\n", 1000)
    drop(pickup / "new" / "good", b"Subject: good\r\n\r\n", 2000)
    support = FakeSupport()
    session = await logon(support, {"pickup": str(pickup)})
    with pytest.raises(ValueError, match="refuses"):
        await session.start_message(FakeWriter(refuse=b"poison"))
    w = FakeWriter(refuse=b"poison")
    await session.start_message(w)
    assert w.remote_id == "good"
    assert poison.exists()  # skipped, never removed
    assert "poison" in session.status_object()["pickup_skipped"]
