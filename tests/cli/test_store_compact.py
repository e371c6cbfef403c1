"""``spoolbox store compact``: the room purged messages left in the SQLite file, given
back to the file system, with what is still queued intact."""

from __future__ import annotations

import asyncio
import os

from conftest import Daemons, Home
from spoolbox import Address, MessageState, NewMessage
from spoolbox.profile import load_profile
from spoolbox.store import SQLiteStore

PURGED = 300
KEPT = 5
BODY = 40_000


def _content(i: int) -> bytes:
    return f"Subject: message {i}\r\n\r\n".encode() + (b"%06d" % i) * (BODY // 6) + b"\r\n"


async def _fill(home: Home) -> list[str]:
    """PURGED large messages queued, cancelled and purged; KEPT still queued (their
    ids).  The routes name no transport: nothing runs them."""
    path = load_profile(home.profile).store.path
    async with SQLiteStore(path) as store:
        kept: list[str] = []
        for i in range(PURGED + KEPT):
            message = NewMessage(
                sender=None,
                recipients=(Address.parse("SMTP:bob@example.org"),),
                content=_content(i),
            )
            info = await store.submit(message, now=0.0, lifetime=86400, routes=["nowhere"])
            if i < PURGED:
                await store.cancel(info.id)
            else:
                kept.append(info.id)
        while await store.purge(finished_before={MessageState.CANCELLED: 1e12}, limit=100):
            pass
    return kept


async def _contents(home: Home, ids: list[str]) -> list[bytes]:
    path = load_profile(home.profile).store.path
    async with SQLiteStore(path) as store:
        return [await store.read_content(i) for i in ids]


def test_compact_gives_back_the_room_of_purged_messages(home: Home) -> None:
    kept = asyncio.run(_fill(home))
    path = load_profile(home.profile).store.path
    check = home.json("store", "compact", "--check")
    assert check["backend"] == "sqlite" and check["compacted"] is False
    assert check["free"] > PURGED * BODY * 0.8, check
    assert check["size"] >= os.stat(path).st_size - check["wal"]
    text = home.run("store", "compact", "--check")
    assert text.returncode == 0, text.stderr
    assert "of it free" in text.stdout and "`spoolbox store compact` gives that back" in text.stdout
    size_before = os.stat(path).st_size

    done = home.run("store", "compact")
    assert done.returncode == 0, done.stderr
    assert " -> " in done.stdout and "given back" in done.stdout, done.stdout
    assert os.stat(path).st_size < size_before / 5
    assert asyncio.run(_contents(home, kept)) == [_content(PURGED + i) for i in range(KEPT)]
    again = home.json("store", "compact")
    assert again["compacted"] is False and again["free"] == 0  # nothing left to give back
    assert "nothing to compact" in home.run("store", "compact").stdout


def test_compact_waits_for_the_daemon_to_stop_unless_told_online(
    home: Home, daemons: Daemons
) -> None:
    asyncio.run(_fill(home))
    daemons.start(home)
    refused = home.run("store", "compact")
    assert refused.returncode == 6, (refused.stdout, refused.stderr)
    assert "the daemon" in refused.stderr and "--online" in refused.stderr
    assert home.json("store", "compact", "--check")["free"] > 0  # --check reads only
    online = home.json("store", "compact", "--online")
    assert online["compacted"] is True and online["size_after"] < online["size"]
    assert home.run("status").returncode == 0  # the daemon goes on


def test_compact_without_a_store_file_says_so(home: Home) -> None:
    missing = home.run("store", "compact")
    assert missing.returncode == 1
    assert "no store at" in missing.stderr and str(home.path) in missing.stderr
