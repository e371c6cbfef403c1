"""Ranged fetches and group commits of the IMAP transport, against a real Dovecot and
a real SQLiteStore: fewer commands and transactions than messages, and still every
message in the inbox exactly once (with keep, delete, a failed commit, a message
expunged between SEARCH and FETCH, messages larger than the byte caps)."""

from __future__ import annotations

import asyncio
import imaplib
import logging
import types
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import dovecot_server as dc
import pytest
from mailbox_kit import FAST, NO_POLL, WAIT, eventually, imap_options, inbox, message

from spoolbox import AlwaysIdle, Policy, Spooler, SpoolerConfig, SQLiteStore, TransportConfig
from spoolbox._core.hosts import inbound as host_module
from spoolbox.store import InboundMessage, InboxEntry, StoreError
from spoolbox.transports._mailbox import MailboxSettings
from spoolbox.transports.imap import connection as imap_connection
from spoolbox.transports.imap import session as imap_session
from spoolbox.transports.imap import wire as imap_wire

pytestmark = pytest.mark.skipif(not dc.available(), reason=dc.SKIP_REASON)


def options(server: dc.Dovecot, user: str, **extra: Any) -> dict[str, Any]:
    return imap_options(server, user, idle=False, **extra)


def spooler(store: SQLiteStore, opts: dict[str, Any], policy: Policy = NO_POLL) -> Spooler:
    cfg = SpoolerConfig(transports=(TransportConfig("imap", "imap", options=opts),), policy=policy)
    return Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True)


def expunge(server: dc.Dovecot, user: str, uid: int) -> None:
    """Delete one message from another IMAP session (a second client)."""
    imap = imaplib.IMAP4(server.host, server.imap_port)
    imap.login(user, dc.PASSWORD)
    imap.select("INBOX")
    assert imap.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
    assert imap.expunge()[0] == "OK"
    imap.logout()


# -- batches ------------------------------------------------------------------------------------
@pytest.mark.parametrize("after_fetch", ["keep", "delete"])
async def test_batches_exactly_once(
    dovecot: dc.Dovecot, user: str, tmp_path: Path, after_fetch: str
) -> None:
    n = 300
    sent = [message(i, size=2000 + 7 * i) for i in range(n)]
    for m in sent:
        dovecot.deliver(user, m)
    fetches: list[int] = []
    original = imap_connection._Connection.fetch_many

    async def counting(self: Any, uids: Sequence[int], size: int = 0) -> dict[int, bytes]:
        fetches.append(len(uids))
        assert size > 0 or len(uids) == 1  # the time limit knows how much is coming
        return await original(self, uids, size)

    mp = pytest.MonkeyPatch()
    mp.setattr(imap_connection._Connection, "fetch_many", counting)
    try:
        store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
        async with spooler(store, options(dovecot, user, after_fetch=after_fetch)) as sp:
            commits_before = int(store.statistics()["commits"])  # type: ignore[call-overload]
            report = await sp.flush(upload=False)
            assert report.for_transport("imap").downloaded == n
            commits = int(store.statistics()["commits"]) - commits_before  # type: ignore[call-overload]
            assert sorted(await inbox(sp)) == sorted(sent)
            state = await sp.store.profile_get("transport:imap")
            assert state["last_uid"] == n
            # 64 per commit at most (other commits: housekeeping), 64 per UID FETCH.
            assert commits < n // 10, commits
            assert len(fetches) <= n // 64 + 2 and max(fetches) <= 64, fetches
            assert sum(fetches) == n
            if after_fetch == "delete":
                await eventually(lambda: not dovecot.files(user), "all removed on the server")
            else:
                assert len(dovecot.files(user)) == n
        # Again on the same store: nothing is fetched twice.
        store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
        async with spooler(store, options(dovecot, user, after_fetch=after_fetch)) as sp:
            report = await sp.flush(upload=False)
            assert report.for_transport("imap").downloaded == 0
            assert len(await sp.store.list_inbox(limit=10_000)) == n
    finally:
        mp.undo()


class FailingOnce(SQLiteStore):
    """A real SQLiteStore whose ``fail_at``-th inbox transaction fails (before it
    reaches the database, as a full disk would make it fail)."""

    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.calls = 0
        self.fail_at = fail_at
        self.failed: list[int] = []

    def _count(self, n: int) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            self.failed.append(n)
            raise StoreError("injected: the disk is full")

    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> InboxEntry:
        self._count(1)
        return await super().deliver_inbound(message, profile_updates=profile_updates)

    async def deliver_inbound_many(
        self, items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, Any]] | None]]
    ) -> list[InboxEntry]:
        self._count(len(items))
        return await super().deliver_inbound_many(items)


@pytest.mark.parametrize("after_fetch", ["keep", "delete"])
async def test_failed_commit_loses_nothing(
    dovecot: dc.Dovecot, user: str, tmp_path: Path, after_fetch: str
) -> None:
    """The second batch fails to commit: its UIDs go back to the queue (after_rollback)
    and are fetched again; without that, the third batch's watermark would pass them."""
    n = 200
    sent = [message(i, tag="rb") for i in range(n)]
    for m in sent:
        dovecot.deliver(user, m)
    store = FailingOnce(tmp_path / "s.db", fail_at=2)
    async with spooler(store, options(dovecot, user, after_fetch=after_fetch)) as sp:
        first = await sp.flush(upload=False)
        assert store.failed and store.failed[0] > 1  # a whole batch failed
        got = first.for_transport("imap").downloaded
        assert got < n
        report = await sp.flush(upload=False)
        assert got + report.for_transport("imap").downloaded == n
        contents = await inbox(sp)
        assert len(contents) == n, "a message was lost or fetched twice"
        assert sorted(contents) == sorted(sent)
        assert (await sp.store.profile_get("transport:imap"))["last_uid"] == n
        if after_fetch == "delete":
            await eventually(lambda: not dovecot.files(user), "all removed on the server")


async def test_message_expunged_between_search_and_fetch(
    dovecot: dc.Dovecot, user: str, tmp_path: Path
) -> None:
    sent = [message(i, tag="gone") for i in range(10)]
    for m in sent:
        dovecot.deliver(user, m)
    original = imap_connection._Connection.fetch_many
    done: list[int] = []

    async def expunge_first(self: Any, uids: Sequence[int], size: int = 0) -> dict[int, bytes]:
        if not done:
            done.append(4)
            await asyncio.to_thread(expunge, dovecot, user, 4)
        return await original(self, uids, size)

    mp = pytest.MonkeyPatch()
    mp.setattr(imap_connection._Connection, "fetch_many", expunge_first)
    try:
        store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
        async with spooler(store, options(dovecot, user)) as sp:
            report = await sp.flush(upload=False)
            assert done == [4]
            assert report.for_transport("imap").downloaded == 9
            assert sorted(await inbox(sp)) == sorted(sent[:3] + sent[4:])
            assert (await sp.store.profile_get("transport:imap"))["last_uid"] == 10
            assert sp.host("imap").counters["errors"] == 0
    finally:
        mp.undo()


async def test_messages_larger_than_the_byte_caps(
    dovecot: dc.Dovecot, user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap_session, "_FETCH_BYTES", 50_000)
    monkeypatch.setattr(host_module, "INBOUND_COMMIT_BYTES", 100_000)
    sizes = [1000, 120_000, 1000, 1000, 300_000, 40_000, 40_000, 1000]
    sent = [message(i, size=s, tag="big") for i, s in enumerate(sizes)]
    for m in sent:
        dovecot.deliver(user, m)
    store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
    async with spooler(store, options(dovecot, user, after_fetch="delete")) as sp:
        report = await sp.flush(upload=False)
        assert report.for_transport("imap").downloaded == len(sent)
        assert sorted(await inbox(sp)) == sorted(sent)
        await eventually(lambda: not dovecot.files(user), "all removed on the server")


async def test_background_lane_batches_too(dovecot: dc.Dovecot, user: str, tmp_path: Path) -> None:
    sent = [message(i, tag="lane") for i in range(150)]
    for m in sent:
        dovecot.deliver(user, m)
    store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
    async with spooler(store, options(dovecot, user, after_fetch="delete"), FAST) as sp:
        await sp.wait_inbox(150, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(sent)
        await eventually(lambda: not dovecot.files(user), "all removed on the server")
        assert int(store.statistics()["commits"]) < 50  # type: ignore[call-overload]


# -- the parser ---------------------------------------------------------------------------------
class _Resp:
    def __init__(self, lines: list[Any]) -> None:
        self.result = "OK"
        self.lines = [*lines, b"Fetch completed."]


def _conn(lines: list[Any]) -> imap_connection._Connection:
    settings = MailboxSettings.from_config(
        "imap", {"host": "h", "username": "u", "password": "p", "tls": "none"}
    )
    support = types.SimpleNamespace(logger=logging.getLogger("test"))
    conn = imap_connection._Connection(settings, support)

    async def uid(*args: Any) -> _Resp:
        return _Resp(lines)

    conn.imap = types.SimpleNamespace(uid=uid)
    return conn


async def test_fetch_many_parses_literals_and_uids() -> None:
    conn = _conn(
        [
            b"1 FETCH (UID 5 BODY[] {3}",
            bytearray(b"abc"),
            b")",
            b"2 FETCH (FLAGS (\\Seen))",  # unsolicited: ignored
            b"3 EXISTS",
            b"4 FETCH (UID 7 BODY[] NIL)",  # expunged meanwhile (Dovecot says so)
            b"3 FETCH (BODY[] {2}",
            bytearray(b"de"),
            b" UID 9)",  # the UID may come after the literal
        ]
    )
    assert await conn.fetch_many([5, 7, 9]) == {5: b"abc", 9: b"de"}  # 7 is gone


@pytest.mark.parametrize(
    "lines",
    [
        [b"1 FETCH (BODY[] {3}", bytearray(b"abc"), b")"],  # no UID anywhere
        [b"1 FETCH (UID 5 BODY[] {4}", bytearray(b"abc"), b")"],  # short literal
        [b"1 FETCH (UID 6 BODY[] {3}", bytearray(b"abc"), b")"],  # not asked for
        [b"1 FETCH (UID 5 BODY[] {3}", bytearray(b"abc")],  # not closed
        [b"1 FETCH (UID 5 BODY[] {3}"],  # no literal
        [bytearray(b"abc")],  # a literal out of nowhere
        [b"1 FETCH (UID 5 BODY[]<0> {3}", bytearray(b"abc"), b")"],  # not what we asked
        [b"1 FETCH (UID 5 BODY[] {3}", bytearray(b"abc"), b")"] * 2,  # twice
    ],
)
async def test_fetch_many_is_strict(lines: list[Any]) -> None:
    with pytest.raises(imap_wire._ProtocolError):
        await _conn(lines).fetch_many([5])


async def test_a_ranged_fetch_has_one_time_limit_for_its_size() -> None:
    """With the batch's size known, the fetch runs without aioimaplib's per-line timer
    (``timeout=None``) under one limit: the timeout plus the size at 64 KiB/s."""
    conn = _conn([])
    conn.settings = replace(conn.settings, timeout=0.05)
    seen: list[Any] = []

    async def hang(*args: Any, timeout: Any = "unset") -> _Resp:
        seen.append(timeout)
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    conn.imap = types.SimpleNamespace(protocol=types.SimpleNamespace(uid=hang))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await conn.fetch_many([5, 6], size=64 * 1024 // 10)  # limit 0.05 + 0.1 s
    assert seen == [None]
    assert loop.time() - started >= 0.15


async def test_a_connection_cancelled_during_logout_is_closed(
    dovecot: dc.Dovecot, user: str
) -> None:
    """A session cancelled while its connection says LOGOUT must not leave the socket
    to the garbage collector (an "unclosed transport" ResourceWarning, an error in
    this suite, and a file descriptor held until then)."""
    settings = MailboxSettings.from_config("imap", imap_options(dovecot, user))
    support = types.SimpleNamespace(logger=logging.getLogger("test"))
    conn = imap_connection._Connection(settings, support)  # type: ignore[arg-type]
    await conn.open()
    assert conn.imap is not None and conn.alive
    transport = conn.imap.protocol.transport
    closing = asyncio.ensure_future(conn.close())
    for _ in range(3):  # LOGOUT is written, its answer not yet read
        await asyncio.sleep(0)
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert conn.imap is None
    assert transport.is_closing()
