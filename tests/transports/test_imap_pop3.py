"""The IMAP and POP3 transports against a real Dovecot, through the real spooler.

One private Dovecot serves the whole module (:mod:`dovecot_server`); every test
has a mailbox user of its own.  Messages are seeded as files in the user's
``Maildir/new`` with CRLF line endings, so the bytes the servers hand out are the
bytes written, and the inbox must hold exactly those.
"""

from __future__ import annotations

import asyncio
import os
import poplib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dovecot_server as dc
import pytest
from mailbox_kit import (
    FAST,
    NO_POLL,
    WAIT,
    eventually,
    imap_options,
    inbox,
    message,
    pop3_options,
)

from spoolbox import (
    AlwaysIdle,
    Policy,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)
from spoolbox.contract import LogonFlags, StatusCode, Unconfigured
from spoolbox.transports._mailbox import MailboxSettings
from spoolbox.transports.imap import IMAPProvider
from spoolbox.transports.pop3 import POP3Provider
from spoolbox.transports.pop3.session import DELETES_PER_SESSION

pytestmark = pytest.mark.skipif(not dc.available(), reason=dc.SKIP_REASON)

WORKER = Path(__file__).with_name("imap_crash_worker.py")


def spooler(
    db: Path, name: str, options: dict[str, Any], policy: Policy = FAST, provider: str = ""
) -> Spooler:
    cfg = SpoolerConfig(
        transports=(TransportConfig(name, provider or name, options=options),), policy=policy
    )
    return Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


# -- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", [IMAPProvider, POP3Provider])
async def test_options_are_validated(provider: Any) -> None:
    good = {"host": "h", "username": "u", "password": "p"}
    with pytest.raises(ValueError, match="'colour'"):
        await provider().logon(None, {**good, "colour": "blue"}, LogonFlags.NONE)
    with pytest.raises(Unconfigured) as info:
        await provider().logon(None, {"username": "u"}, LogonFlags.NONE)
    assert info.value.missing == ("host", "password")
    with pytest.raises(ValueError, match="'tls'"):
        await provider().logon(None, {**good, "tls": "maybe"}, LogonFlags.NONE)
    with pytest.raises(ValueError, match="'after_fetch'"):
        await provider().logon(None, {**good, "after_fetch": "shred"}, LogonFlags.NONE)
    with pytest.raises(ValueError, match="'timeout'"):
        await provider().logon(None, {**good, "timeout": 0}, LogonFlags.NONE)
    with pytest.raises(ValueError, match="'verify'"):
        await provider().logon(None, {**good, "verify": "no"}, LogonFlags.NONE)
    for bad in (0, 256 * 1024 * 1024 + 1, "1MB", True):
        with pytest.raises(ValueError, match="'max_size' must be a number of bytes from 1"):
            await provider().logon(None, {**good, "max_size": bad}, LogonFlags.NONE)


async def test_pop3_has_no_imap_options() -> None:
    good = {"host": "h", "username": "u", "password": "p"}
    with pytest.raises(ValueError, match="'folder'"):
        await POP3Provider().logon(None, {**good, "folder": "INBOX"}, LogonFlags.NONE)
    with pytest.raises(ValueError, match="'after_fetch'"):
        await POP3Provider().logon(None, {**good, "after_fetch": "move:X"}, LogonFlags.NONE)
    with pytest.raises(ValueError, match="'after_fetch'"):
        await IMAPProvider().logon(None, {**good, "after_fetch": "move:INBOX"}, LogonFlags.NONE)


@pytest.mark.parametrize("provider", [IMAPProvider, POP3Provider])
async def test_options_refuse_a_nan_timeout_and_hide_the_password(provider: Any) -> None:
    good = {"host": "h", "username": "u", "password": "hunter2"}
    with pytest.raises(ValueError, match="'timeout' must be a positive number"):
        await provider().logon(None, {**good, "timeout": float("nan")}, LogonFlags.NONE)
    with pytest.raises(ValueError, match="'password'") as info:
        await provider().logon(None, {**good, "password": ["hunter2"]}, LogonFlags.NONE)
    assert "hunter2" not in str(info.value)
    settings = MailboxSettings.from_config(provider.__name__[:4].lower(), good)
    assert settings.password == "hunter2" and "hunter2" not in repr(settings)


# -- IMAP -----------------------------------------------------------------------------------------
async def test_imap_fetches_everything_exactly_once(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    sent = [message(i, size=100_000 if i == 3 else 0) for i in range(6)]
    for m in sent:
        dovecot.deliver(user, m)
    async with spooler(db, "imap", imap_options(dovecot, user)) as sp:
        await sp.wait_inbox(6, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(sent)
        state = await sp.store.profile_get("transport:imap")
        assert state["last_uid"] == 6
        assert isinstance(state["uidvalidity"], int)
        entries = await sp.store.list_inbox()
        assert sorted(e.remote_id or "" for e in entries) == sorted(
            f"{state['uidvalidity']}:{u}" for u in range(1, 7)
        )
        row = sp.status["imap"]
        assert row.status_string is not None and "6 fetched, last: UID" in row.status_string
        assert row.status_code & StatusCode.AVAILABLE
    # keep: everything is still on the server, and \Seen was not set (BODY.PEEK)
    assert len(dovecot.files(user)) == 6
    assert not any(":2," in p.name and "S" in p.name.split(":2,")[1] for p in dovecot.files(user))

    # A second run on the same store fetches nothing again...
    async with spooler(db, "imap", imap_options(dovecot, user)) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": True}
        report = await sp.flush(upload=False)
        assert report.for_transport("imap").downloaded == 0
        assert len(await sp.store.list_inbox()) == 6
        # ...but what arrives now.
        late = message(99)
        dovecot.deliver(user, late)
        report = await sp.flush(upload=False)
        assert report.for_transport("imap").downloaded == 1
        assert sorted(await inbox(sp)) == sorted([*sent, late])
        assert (await sp.store.profile_get("transport:imap"))["last_uid"] == 7


async def test_imap_skips_a_message_over_max_size_and_never_removes_it(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    """One message too big: the others before and after it arrive, it stays on the
    server through after_fetch = delete (also after a restart, whose clean-up removes
    what lies below the watermark), and it is reported, not fetched again and again."""
    small = [message(i, tag="max") for i in range(4)]
    big = message(9, size=20_000, tag="max")
    for m in (small[0], small[1], big, small[2], small[3]):
        dovecot.deliver(user, m)
    options = imap_options(dovecot, user, max_size=10_000, after_fetch="delete")
    async with spooler(db, "imap", options) as sp:
        await sp.wait_inbox(4, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(small)
        await eventually(lambda: len(dovecot.files(user)) == 1, "the others deleted")
        status = sp.host("imap").status_object()
        assert status["skipped"] == 1
        assert "UID 3" in str(status["last_error"]) and "max_size (10000)" in str(
            status["last_error"]
        )
        state = await sp.store.profile_get("transport:imap")
        assert (state["last_uid"], state["skipped_uids"]) == (5, [3])
        report = await sp.flush(upload=False)
        assert report.for_transport("imap").downloaded == 0
    [left] = dovecot.files(user)
    assert left.read_bytes() == big
    async with spooler(db, "imap", options) as sp:  # the clean-up at logon spares it
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": True}
        await sp.flush(upload=False)
        assert len(await sp.store.list_inbox()) == 4
    assert [p.read_bytes() for p in dovecot.files(user)] == [big]


async def test_imap_idle_brings_new_mail(dovecot: dc.Dovecot, user: str, db: Path) -> None:
    async with spooler(db, "imap", imap_options(dovecot, user), policy=NO_POLL) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": True}
        await eventually(lambda: sp.host("imap").status_object()["idle"] == "idling", "idling")
        await sp.flush(upload=False)  # the one poll at start is over
        late = [message(i, tag="idle") for i in range(3)]
        for m in late:
            dovecot.deliver(user, m)
        # Polls are an hour apart: only IDLE's NEWMAIL can bring these in.
        await sp.wait_inbox(3, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(late)


async def test_imap_without_idle_polls(dovecot: dc.Dovecot, user: str, db: Path) -> None:
    async with spooler(db, "imap", imap_options(dovecot, user, idle=False)) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": True}
        assert sp.host("imap").status_object()["idle"] == "off"
        dovecot.deliver(user, message(1, tag="poll"))
        await sp.wait_inbox(1, timeout=WAIT)
        assert await inbox(sp) == [message(1, tag="poll")]


async def test_imap_after_fetch_delete(dovecot: dc.Dovecot, user: str, db: Path) -> None:
    sent = [message(i, tag="del") for i in range(4)]
    for m in sent:
        dovecot.deliver(user, m)
    async with spooler(db, "imap", imap_options(dovecot, user, after_fetch="delete")) as sp:
        await sp.wait_inbox(4, timeout=WAIT)
        await eventually(lambda: not dovecot.files(user), "all deleted on the server")
        assert sorted(await inbox(sp)) == sorted(sent)


async def test_imap_after_fetch_move(dovecot: dc.Dovecot, user: str, db: Path) -> None:
    archive = dovecot.maildir(user, "Archive")
    for sub in ("tmp", "new", "cur"):
        (archive / sub).mkdir(parents=True)
    dovecot._chown_tree(archive)
    sent = [message(i, tag="mv") for i in range(3)]
    for m in sent:
        dovecot.deliver(user, m)
    opts = imap_options(dovecot, user, after_fetch="move:Archive")
    async with spooler(db, "imap", opts) as sp:
        await sp.wait_inbox(3, timeout=WAIT)
        await eventually(lambda: not dovecot.files(user), "INBOX emptied")
        await eventually(lambda: len(dovecot.files(user, "Archive")) == 3, "moved to Archive")
        moved = sorted(p.read_bytes() for p in dovecot.files(user, "Archive"))
        assert moved == sorted(sent)
        assert sorted(await inbox(sp)) == sorted(sent)


async def test_imap_removes_what_a_crash_left_without_fetching_it_again(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    """Committed but not deleted (the crash window): the next logon deletes them."""
    sent = [message(i, tag="left") for i in range(3)]
    for m in sent:
        dovecot.deliver(user, m)
    async with spooler(db, "imap", imap_options(dovecot, user)) as sp:  # keep
        await sp.wait_inbox(3, timeout=WAIT)
    assert len(dovecot.files(user)) == 3  # as if the process died before deleting
    dovecot.deliver(user, message(3, tag="left"))
    async with spooler(db, "imap", imap_options(dovecot, user, after_fetch="delete")) as sp:
        await sp.wait_inbox(4, timeout=WAIT)
        await eventually(lambda: not dovecot.files(user), "leftovers deleted")
        assert sorted(await inbox(sp)) == sorted([*sent, message(3, tag="left")])


async def test_imap_uidvalidity_change_starts_again(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    sent = [message(i, tag="uv") for i in range(2)]
    for m in sent:
        dovecot.deliver(user, m)
    async with spooler(db, "imap", imap_options(dovecot, user)) as sp:
        await sp.wait_inbox(2, timeout=WAIT)
        before = (await sp.store.profile_get("transport:imap"))["uidvalidity"]
    dovecot.reset_uidvalidity(user)
    # Dovecot takes UIDVALIDITY from the clock, in seconds: let the second change.
    while time.time() < int(before) + 1:
        await asyncio.sleep(0.05)
    async with spooler(db, "imap", imap_options(dovecot, user)) as sp:
        await sp.wait_inbox(4, timeout=WAIT)
        state = await sp.store.profile_get("transport:imap")
        assert state["uidvalidity"] != before
        assert state["last_uid"] == 2
        # IMAP's contract: after a UIDVALIDITY change the folder is new to us.
        assert sorted(await inbox(sp)) == sorted(sent * 2)
        row = sp.status["imap"]
        assert row.status_string is not None and "UIDVALIDITY" in row.status_string


async def test_imap_wrong_password_fails_the_session_not_the_spooler(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    dovecot.deliver(user, message(1, tag="pw"))
    async with spooler(db, "imap", imap_options(dovecot, user, password="wrong")) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": False}
        row = sp.status["imap"]
        assert row.status_code & StatusCode.FAILURE
        assert row.detail is not None
        assert "logon failed" in row.detail and "refused" in row.detail, row.detail
        report = await sp.flush(upload=False)  # the spooler still works
        assert report.for_transport("imap").downloaded == 0
        assert await sp.store.list_inbox() == []


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_imap_tls(dovecot: dc.Dovecot, user: str, db: Path, tls: str) -> None:
    port = dovecot.imaps_port if tls == "implicit" else dovecot.imap_port
    opts = imap_options(dovecot, user, tls=tls, port=port, ca_file=dovecot.ca_file)
    dovecot.deliver(user, message(1, tag=tls))
    async with spooler(db, "imap", opts) as sp:
        await sp.wait_inbox(1, timeout=WAIT)
        assert await inbox(sp) == [message(1, tag=tls)]
        row = sp.status["imap"]
        assert row.status_code & StatusCode.AVAILABLE


async def test_imap_tls_verifies_the_server(dovecot: dc.Dovecot, user: str, db: Path) -> None:
    """Without our CA the certificate is not trusted: the logon fails, loudly."""
    opts = imap_options(dovecot, user, tls="implicit", port=dovecot.imaps_port)
    async with spooler(db, "imap", opts) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": False}
        row = sp.status["imap"]
        assert row.status_code & StatusCode.FAILURE
        assert row.detail is not None and "CERTIFICATE_VERIFY_FAILED" in row.detail, row.detail


async def test_imap_verify_false_is_explicit_and_logged(
    dovecot: dc.Dovecot, user: str, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opts = imap_options(dovecot, user, tls="implicit", port=dovecot.imaps_port, verify=False)
    dovecot.deliver(user, message(1, tag="noverify"))
    async with spooler(db, "imap", opts) as sp:
        await sp.wait_inbox(1, timeout=WAIT)
        assert await inbox(sp) == [message(1, tag="noverify")]
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


# -- POP3 ---------------------------------------------------------------------------------------
async def test_pop3_fetches_everything_exactly_once(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    sent = [message(i, size=50_000 if i == 2 else 0, tag="pop") for i in range(5)]
    sent.append(b"Subject: dots\r\n\r\n.\r\n..leading dots\r\n.\r\nend\r\n")
    for m in sent:
        dovecot.deliver(user, m)
    async with spooler(db, "pop3", pop3_options(dovecot, user)) as sp:
        await sp.wait_inbox(6, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(sent)
        state = await sp.store.profile_get("transport:pop3")
        assert sorted(k for k in state if k.startswith("uidl:")) == sorted(
            "uidl:" + u for u in _uidls(dovecot, user)
        )
        # The row says so once the after_commit callbacks ran (just after the commit).
        await eventually(
            lambda: "6 fetched, last: " in str(sp.status["pop3"].status_string), "the row"
        )
    assert len(dovecot.files(user)) == 6  # keep

    async with spooler(db, "pop3", pop3_options(dovecot, user)) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"pop3": True}
        report = await sp.flush(upload=False)
        assert report.for_transport("pop3").downloaded == 0
        late = message(77, tag="pop")
        dovecot.deliver(user, late)
        await sp.wait_inbox(7, timeout=WAIT)  # found by a poll
        assert sorted(await inbox(sp)) == sorted([*sent, late])


async def test_pop3_after_fetch_delete_and_leftovers(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    sent = [message(i, tag="pdel") for i in range(3)]
    for m in sent:
        dovecot.deliver(user, m)
    async with spooler(db, "pop3", pop3_options(dovecot, user)) as sp:  # keep first
        await sp.wait_inbox(3, timeout=WAIT)
    assert len(dovecot.files(user)) == 3  # committed, not deleted: the crash window
    more = message(3, tag="pdel")
    dovecot.deliver(user, more)
    async with spooler(db, "pop3", pop3_options(dovecot, user, after_fetch="delete")) as sp:
        await sp.wait_inbox(4, timeout=WAIT)
        await eventually(lambda: not dovecot.files(user), "all deleted")
        assert sorted(await inbox(sp)) == sorted([*sent, more])
        # Forgotten once a poll sees they are gone from the server.
        await eventually(
            lambda: sp.host("pop3").status_object()["fetched_uidls"] == 0, "UIDLs forgotten"
        )
        assert await sp.store.profile_get("transport:pop3") == {}


def _uidls(dovecot: dc.Dovecot, user: str) -> list[str]:
    """The UIDLs of the user's maildrop, as the server lists them."""
    conn = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=20)
    try:
        conn.user(user)
        conn.pass_(dc.PASSWORD)
        return [line.split()[1].decode() for line in conn.uidl()[1]]
    finally:
        conn.quit()


async def test_pop3_fetches_a_message_with_a_long_line_byte_for_byte(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    # HTML mail often has lines of many kilobytes; poplib refuses any over 2,048 bytes,
    # which kept such a message, and every one after it, on the server for ever.
    long = b"Subject: long line\r\n\r\n<p>" + b"x" * 200_000 + b"</p>\r\n.dot\r\n"
    short = message(1, tag="after-long")
    dovecot.deliver(user, long)
    dovecot.deliver(user, short)
    async with spooler(db, "pop3", pop3_options(dovecot, user, after_fetch="delete")) as sp:
        await sp.wait_inbox(2, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted([long, short])
        await eventually(lambda: not dovecot.files(user), "both deleted")


@pytest.mark.parametrize("after_fetch", ["keep", "delete"])
async def test_pop3_fetches_a_large_maildrop_in_few_sessions(
    dovecot: dc.Dovecot, user: str, db: Path, after_fetch: str
) -> None:
    # One POP3 session hands out message after message (with `delete`, one is ended
    # after DELETES_PER_SESSION deletions); their UIDLs commit in batches.
    n = 300
    sent = [message(i, tag=f"many-{after_fetch}") for i in range(n)]
    for m in sent:
        dovecot.deliver(user, m)
    options = pop3_options(dovecot, user, after_fetch=after_fetch)
    async with spooler(db, "pop3", options, NO_POLL) as sp:
        await sp.wait_inbox(n, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(sent)
        status = sp.host("pop3").status_object()
        assert status["fetched"] == n
        assert 1 <= status["sessions"] <= 1 + n // DELETES_PER_SESSION + 1, status
        if after_fetch == "delete":
            await eventually(lambda: not dovecot.files(user), "all deleted")
        else:
            assert len(dovecot.files(user)) == n
            state = await sp.store.profile_get("transport:pop3")
            assert len(state) == n
        report = await sp.flush(upload=False)
        assert report.for_transport("pop3").downloaded == 0
    assert len(await _read_all(db)) == n


async def test_pop3_takes_over_the_uidl_list_of_an_earlier_version(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    # Earlier versions kept one list, `fetched_uidls`: what it names is not fetched
    # again, and the next poll keeps it as one key per UIDL (those still on the server).
    sent = [message(i, tag="legacy") for i in range(3)]
    for m in sent:
        dovecot.deliver(user, m)
    uidls = _uidls(dovecot, user)
    store = SQLiteStore(db)
    async with store:
        await store.profile_update(
            "transport:pop3", {"fetched_uidls": [uidls[0], uidls[1], "gone-long-ago"]}
        )
    async with spooler(db, "pop3", pop3_options(dovecot, user)) as sp:
        await sp.wait_inbox(1, timeout=WAIT)  # after the first poll, which converted
        assert sp.host("pop3").status_object()["fetched_uidls"] == 3
        assert await sp.store.profile_get("transport:pop3") == {"uidl:" + u: 1 for u in uidls}
        assert await inbox(sp) == [sent[2]]


async def test_pop3_skips_a_message_over_max_size_and_never_deletes_it(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    small = [message(i, tag="pmax") for i in range(3)]
    big = message(9, size=20_000, tag="pmax")
    for m in (small[0], big, small[1], small[2]):
        dovecot.deliver(user, m)
    options = pop3_options(dovecot, user, max_size=10_000, after_fetch="delete")
    async with spooler(db, "pop3", options) as sp:
        await sp.wait_inbox(3, timeout=WAIT)
        assert sorted(await inbox(sp)) == sorted(small)
        await eventually(lambda: len(dovecot.files(user)) == 1, "the others deleted")
        status = sp.host("pop3").status_object()
        assert status["skipped"] == 1 and "max_size (10000)" in str(status["last_error"])
        report = await sp.flush(upload=False)
        assert report.for_transport("pop3").downloaded == 0
    assert [p.read_bytes() for p in dovecot.files(user)] == [big]


async def test_pop3_wrong_password_fails_the_session_not_the_spooler(
    dovecot: dc.Dovecot, user: str, db: Path
) -> None:
    async with spooler(db, "pop3", pop3_options(dovecot, user, password="nope")) as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"pop3": False}
        row = sp.status["pop3"]
        assert row.status_code & StatusCode.FAILURE
        assert row.detail is not None
        assert "logon failed" in row.detail and "refused" in row.detail, row.detail
        report = await sp.flush(upload=False)
        assert report.for_transport("pop3").downloaded == 0


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_pop3_tls(dovecot: dc.Dovecot, user: str, db: Path, tls: str) -> None:
    port = dovecot.pop3s_port if tls == "implicit" else dovecot.pop3_port
    opts = pop3_options(
        dovecot, user, tls=tls, port=port, ca_file=dovecot.ca_file, after_fetch="delete"
    )
    dovecot.deliver(user, message(1, tag=tls))
    async with spooler(db, "pop3", opts) as sp:
        await sp.wait_inbox(1, timeout=WAIT)
        assert await inbox(sp) == [message(1, tag=tls)]
        await eventually(lambda: not dovecot.files(user), "deleted")


# -- crash -----------------------------------------------------------------------------------------
def _message_ids(contents: list[bytes]) -> list[str]:
    out = []
    for c in contents:
        for line in c.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
    return out


@pytest.mark.parametrize(
    ("provider", "after_fetch"), [("imap", "delete"), ("pop3", "delete"), ("pop3", "keep")]
)
def test_inbound_survives_sigkill(
    dovecot: dc.Dovecot, user: str, tmp_path: Path, provider: str, after_fetch: str
) -> None:
    """A spooler process fetching 3000 messages is killed (SIGKILL) at random moments,
    restarted, and finishes: every message is in the inbox exactly once (and with
    ``delete``, none is left on the server).  (3000: with ranged fetches or one POP3
    session and group commits a run takes about a second, so the kills land in the
    middle of the download and of its batches.)"""
    n = 3000
    for i in range(n):
        dovecot.deliver(user, message(i, tag="crash"))
    db = tmp_path / "crash.db"
    cmd = [
        sys.executable,
        str(WORKER),
        "--db",
        str(db),
        "--host",
        dovecot.host,
        "--port",
        str(dovecot.imap_port if provider == "imap" else dovecot.pop3_port),
        "--user",
        user,
        "--password",
        dc.PASSWORD,
        "--count",
        str(n),
        "--after-fetch",
        after_fetch,
        "--provider",
        provider,
    ]
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    kills = 0
    at_kill: list[int] = []  # messages in the inbox after each kill
    for _ in range(4):
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"started\n"
            time.sleep(rng.uniform(0.05, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=WAIT)
            proc.stdout.read()
        at_kill.append(len(asyncio.run(_read_all(db))))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=120)
        assert out.decode().splitlines()[-1] == f"done {n}"
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    assert kills >= 1
    contents = asyncio.run(_read_all(db))
    ids = _message_ids(contents)
    expected = [f"<crash-{i}@spoolbox.test>" for i in range(n)]
    assert len(ids) == len(set(ids)), "a message was fetched twice"
    assert sorted(ids) == sorted(expected), "a message was lost"
    assert sorted(contents) == sorted(message(i, tag="crash") for i in range(n))
    if after_fetch == "delete":
        assert dovecot.files(user) == [], "fetched messages left on the server"
    else:
        assert len(dovecot.files(user)) == n
    print(
        f"crash test: {n} messages, {kills} kills (inbox after each: {at_kill}), "
        f"{len(ids)} at the end"
    )


async def _read_all(db: Path) -> list[bytes]:
    store = SQLiteStore(db)
    await store.open()
    try:
        return [await store.read_inbox(e.id) for e in await store.list_inbox(limit=10_000)]
    finally:
        await store.close()
