"""The IMAP transport's guard in front of aioimaplib's parser (``imap/lines.py``): a
read of thousands of lines (a folder another client expunges while this connection
idles) reaches aioimaplib a few hundred lines at a time, parses as the whole read,
and the IDLE watch hears of a lost connection at once.  Against a real Dovecot: a
mass expunge of 3,000 messages while idling, and a connection Dovecot drops."""

from __future__ import annotations

import asyncio
import imaplib
import logging
from pathlib import Path
from typing import Any

import aioimaplib  # type: ignore[import-untyped]
import dovecot_server as dc
import pytest
from mailbox_kit import NO_POLL, WAIT, eventually, imap_options, inbox, message

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig, SQLiteStore, TransportConfig
from spoolbox.transports.imap.lines import LINES, LineBounded


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.events: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(f"inner lost {exc}")


def _expunges(n: int) -> bytes:
    return b"".join(b"* %d EXPUNGE\r\n" % (n - i) for i in range(n))


def test_a_long_read_goes_on_in_pieces_cut_after_a_line() -> None:
    inner = _Recorder()
    lost: list[object] = []
    bounded = LineBounded(inner, lost.append)
    data = _expunges(5000) + b"* 1 EXIS"  # and the start of a line still to come
    bounded.data_received(data)
    assert b"".join(inner.pieces) == data
    assert len(inner.pieces) == 26  # 25 pieces of 200 lines, then the partial line
    assert all(p.count(b"\n") == LINES and p.endswith(b"\r\n") for p in inner.pieces[:-1])
    assert inner.pieces[-1] == b"* 1 EXIS"
    short = _expunges(LINES)
    bounded.data_received(short)
    assert inner.pieces[-1] == short  # a read of LINES lines or fewer: as it came
    error = ConnectionResetError("reset")
    bounded.connection_lost(error)
    assert inner.events == ["inner lost reset"] and lost == [error]


def test_aioimaplib_parses_the_pieces_where_the_whole_read_overflows_its_stack() -> None:
    """aioimaplib's own protocol, fed 3,000 untagged EXPUNGE lines in one read: whole,
    its parser recurses out of the stack (what the event loop logs as a fatal error
    and closes the connection for); through LineBounded it parses them all (the
    Dovecot test below sees them as IDLE pushes)."""
    loop = asyncio.new_event_loop()
    try:
        whole = aioimaplib.IMAP4ClientProtocol(loop, None)
        with pytest.raises(RecursionError):
            whole.data_received(_expunges(3000))
        proto = aioimaplib.IMAP4ClientProtocol(loop, None)
        LineBounded(proto, lambda _exc: None).data_received(_expunges(3000) + b"* 3 EX")
        assert proto.incomplete_line == b"* 3 EX"  # all parsed, the cut line kept
    finally:
        loop.close()


_needs_dovecot = pytest.mark.skipif(not dc.available(), reason=dc.SKIP_REASON)


def _spooler(dovecot: dc.Dovecot, user: str, tmp_path: Path, **options: Any) -> Spooler:
    opts = imap_options(dovecot, user, **options)
    cfg = SpoolerConfig(transports=(TransportConfig("imap", "imap", options=opts),), policy=NO_POLL)
    return Spooler.open(
        cfg, store=SQLiteStore(tmp_path / "s.db"), idle=AlwaysIdle(), close_store=True
    )


def _other_client_expunges_everything(dovecot: dc.Dovecot, user: str) -> None:
    other = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    other.login(user, dc.PASSWORD)
    other.select("INBOX")
    assert other.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
    assert other.expunge()[0] == "OK"
    other.logout()


@_needs_dovecot
@pytest.mark.parametrize("tls", ["none", "starttls"])
async def test_a_mass_expunge_while_idling_breaks_nothing(
    dovecot: dc.Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, tls: str
) -> None:
    n = 3000
    for i in range(n):
        dovecot.deliver(user, message(i, tag="old"))
    extra: dict[str, Any] = {"tls": tls}
    if tls != "none":
        extra["ca_file"] = dovecot.ca_file
    with caplog.at_level(logging.WARNING):
        async with _spooler(dovecot, user, tmp_path, **extra) as sp:
            assert (await sp.wait_ready(timeout=WAIT)) == {"imap": True}
            await sp.wait_inbox(n, timeout=4 * WAIT)
            idle = lambda: sp.host("imap").status_object()["idle"]  # noqa: E731
            await eventually(lambda: idle() == "idling", "idling")
            _other_client_expunges_everything(dovecot, user)  # 3,000 EXPUNGE pushes
            await asyncio.sleep(1.0)  # Dovecot checks the folder each second
            dovecot.deliver(user, message(1, tag="new"))
            # Polls are an hour apart: only the IDLE connection can bring it in.
            await sp.wait_inbox(n + 1, timeout=WAIT)
            assert idle() == "idling"
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []  # neither a fatal protocol error nor an IDLE reconnect
    assert len(await _inbox_count(tmp_path)) == n + 1


async def _inbox_count(tmp_path: Path) -> list[Any]:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        return await store.list_inbox(limit=10_000)
    finally:
        await store.close()


@_needs_dovecot
async def test_the_idle_watch_connects_again_at_once_when_dovecot_drops_it(
    dovecot: dc.Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _spooler(dovecot, user, tmp_path) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": True}
        idle = lambda: sp.host("imap").status_object()["idle"]  # noqa: E731
        await eventually(lambda: idle() == "idling", "idling")
        await sp.flush(upload=False)
        with caplog.at_level(logging.WARNING):
            kick = await asyncio.create_subprocess_exec(
                "doveadm",
                "-c",
                str(dovecot.root / "dovecot.conf"),
                "kick",
                user,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            said, _ = await asyncio.wait_for(kick.communicate(), timeout=30)
            assert kick.returncode == 0, said
            # Without the lost-connection wake-up the watch waits out its IDLE (minutes).
            await eventually(
                lambda: "IDLE connection was lost" in caplog.text, "the loss noticed", WAIT
            )
        await eventually(lambda: idle() == "idling", "idling again", WAIT)
        dovecot.deliver(user, message(7, tag="after"))
        await sp.wait_inbox(1, timeout=WAIT)
        assert await inbox(sp) == [message(7, tag="after")]
