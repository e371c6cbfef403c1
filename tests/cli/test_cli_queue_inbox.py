"""``spoolbox queue`` and ``spoolbox inbox`` through the real command: the default list
view and its filters, ids as unique prefixes, bulk actions, purge, and the inbox's
decoded senders and subjects, with and without the daemon."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemons, Home, wait_until
from spoolbox.cli.queue_cmds import _show_message, _what_it_did
from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate
from spoolbox.store.sqlite import SQLiteStore


def _send(home: Home, to: str, subject: str) -> str:
    r = home.run("send", "--to", to, "--subject", subject)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _listed(home: Home, *args: str) -> list[str]:
    """The subjects ``queue list --json`` shows, in its order."""
    return [m["subject"] for m in home.json("queue", "list", *args)["messages"]]


def test_default_list_shows_unfinished_mail_newest_first_with_a_more_line(home: Home) -> None:
    ids = [_send(home, f"MAILDIR:bob{i}", f"m{i}") for i in range(4)]
    r = home.run("queue", "cancel", ids[0])
    assert r.returncode == 0, r.stderr
    assert _listed(home) == ["m3", "m2", "m1"]  # the cancelled one is finished
    assert _listed(home, "--all") == ["m3", "m2", "m1", "m0"]
    assert _listed(home, "--state", "cancelled") == ["m0"]
    assert _listed(home, "--state", "cancelled", "--state", "queued") == ["m3", "m2", "m1", "m0"]
    assert _listed(home, "--recipient", "BOB2") == ["m2"]
    assert _listed(home, "--transport", "local") == []  # not routed while no daemon runs
    r = home.run("queue", "list", "--limit", "2")
    assert r.returncode == 0, r.stderr
    assert "m3" in r.stdout and "m2" in r.stdout and "m1" not in r.stdout
    assert r.stdout.rstrip().endswith("1 more (use --limit/--all)")
    listing = home.json("queue", "list", "--limit", "2")
    assert (listing["total"], listing["more"]) == (3, 1)
    assert [m["id"] for m in listing["messages"]] == [ids[3], ids[2]]
    # The queue is empty of unfinished mail: said so, with the way to see the rest.
    home.run("queue", "cancel", "ALL")
    r = home.run("queue")
    assert r.stdout.strip() == "no unfinished messages (--all shows every queue)"


def test_ids_are_short_unique_prefixes_that_do_not_wrap_in_80_columns(home: Home) -> None:
    ids = [_send(home, "MAILDIR:a-rather-long-recipient-name", f"s{i}") for i in range(3)]
    listing = home.json("queue", "list")
    shorts = {m["id"]: m["short_id"] for m in listing["messages"]}
    assert set(shorts) == set(ids)
    for full, short in shorts.items():
        assert full.startswith(short) and 8 <= len(short) < len(full)
        assert [i for i in ids if i.startswith(short)] == [full]  # unique
    r = home.run("queue", "list", env={"COLUMNS": "80"})
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for short in shorts.values():  # each whole on one line, never split
        assert any(short in line for line in lines), (short, r.stdout)
    r = home.run("queue", "list", "--full-ids", env={"COLUMNS": "80"})
    assert all(any(full in line for line in r.stdout.splitlines()) for full in ids)


def _common_prefix(ids: list[str]) -> str:
    first, last = min(ids), max(ids)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def test_bulk_actions_take_all_states_and_git_style_prefixes(home: Home) -> None:
    ids = [_send(home, f"MAILDIR:c{i}", f"b{i}") for i in range(3)]
    prefix = _common_prefix(ids)
    assert prefix  # time-ordered ids sent within a second share their first digits
    r = home.run("queue", "hold", prefix)
    assert r.returncode == 1
    assert f"ambiguous id prefix {prefix} matches 3 messages" in r.stderr
    assert _listed(home, "--state", "hold") == []  # nothing was held
    r = home.run("queue", "hold", "ALL")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted([f"{i}:" for i in ids] + ["hold"] * 3)
    short = home.json("queue", "list")["messages"][0]["short_id"]  # the newest: ids[2]
    r = home.run("queue", "release", short)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{ids[2]}: queued"
    r = home.run("queue", "show", short, "--json")
    assert r.returncode == 0, r.stderr
    r = home.run("queue", "cancel", "--state", "hold")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(f"{i}: cancelled" for i in ids[:2])
    assert _listed(home) == ["b2"]
    assert home.run("queue", "retry", "ALL").returncode == 0
    r = home.run("queue", "hold", "zzzz")
    assert r.returncode == 4
    assert "zzzz" in r.stderr
    r = home.run("queue", "hold")
    assert r.returncode == 2
    assert "name the messages" in r.stderr


def test_purge_deletes_finished_mail_only_and_says_how_many(home: Home) -> None:
    keep = _send(home, "MAILDIR:d0", "stays")
    gone = _send(home, "MAILDIR:d1", "goes")
    home.run("queue", "cancel", gone)
    r = home.run("queue", "purge")  # cancelled mail is kept 30 days by default
    assert (r.returncode, r.stdout.strip()) == (0, "purged 0 finished messages")
    r = home.run("queue", "purge", "--older-than", "0", "--dry-run")
    assert r.stdout.strip() == "would purge 1 finished message (dry run: nothing deleted)"
    assert _listed(home, "--all") == ["goes", "stays"]
    r = home.run("queue", "purge", "--older-than", "0", "--state", "sent")
    assert r.stdout.strip() == "purged 0 finished messages"
    r = home.run("queue", "purge", "--older-than", "0")
    assert (r.returncode, r.stdout.strip()) == (0, "purged 1 finished message")
    assert _listed(home, "--all") == ["stays"]
    assert home.json("queue", "show", keep)["state"] == "queued"
    r = home.run("queue", "purge", "--state", "queued")
    assert r.returncode == 2  # never an unfinished queue
    r = home.run("queue", "purge", "--older-than", "soon")
    assert r.returncode == 2
    assert "expected a duration" in r.stderr


def test_purge_and_filters_through_the_daemon(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    mid = _send(home, "MAILDIR:bob", "local one")
    wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
    assert _listed(home) == []
    assert _listed(home, "--all", "--transport", "local") == ["local one"]
    assert _listed(home, "--all", "--transport", "elsewhere") == []
    result = home.json("queue", "purge", "--older-than", "0", "--state", "sent")
    assert result["ids"] == [mid]
    r = home.run("queue", "show", mid)
    assert r.returncode == 4


_ENCODED = (
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@example.org>\r\n"
    b"To: postmaster@example.org\r\n"
    b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
    b"\r\n"
    b"Hallo.\r\n"
)
_HOSTILE = (
    b"From: Mallory <m@example.org>\r\nSubject: caf\xc3\xa9 \x1b[31mred [bold]x[/bold]\r\n\r\nx\r\n"
)


def _inbox(home: Home) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = home.json("inbox", "list")["messages"]
    return entries


def _with_pickup(home: Home) -> Path:
    pickup = home.path / "pickup"
    for sub in ("tmp", "new", "cur"):
        (pickup / sub).mkdir(parents=True)
    text = home.profile.read_text()
    text = text.replace("[policy]\n", '[policy]\npoll_interval = "200ms"\n', 1)
    text = text.replace("[transports.options]\n", f'[transports.options]\npickup = "{pickup}"\n', 1)
    home.profile.write_text(text)
    return pickup


def test_inbox_list_decodes_sender_and_subject_and_delete_takes_prefixes(
    home: Home, daemons: Daemons
) -> None:
    pickup = _with_pickup(home)
    daemons.start(home)
    (pickup / "new" / "1.eml").write_bytes(_ENCODED)
    wait_until(
        "the first inbound message", lambda: len(home.json("inbox", "list")["messages"]) == 1
    )
    (pickup / "new" / "2.eml").write_bytes(_HOSTILE)
    wait_until("the second", lambda: len(_inbox(home)) == 2)
    first, second = home.json("inbox", "list")["messages"]
    assert first["sender"] == "Jörg Müller <jm@example.org>"
    assert first["subject"] == "Grüße aus Köln"
    r = home.run("inbox", "list")
    assert r.returncode == 0, r.stderr
    assert "Jörg Müller" in r.stdout and "Grüße aus Köln" in r.stdout
    assert "\x1b" not in r.stdout  # the escape character is shown, not sent
    assert "\\x1b[31mred [bold]x[/bold]" in r.stdout  # nor taken as rich markup
    assert "café" in r.stdout
    r = home.run("inbox", "delete", second["id"][:12])
    assert (r.returncode, r.stdout.strip()) == (0, f"deleted {second['id']}")
    assert [e["id"] for e in home.json("inbox", "list")["messages"]] == [first["id"]]
    assert home.run("inbox", "delete", "nosuchid").returncode == 4
    daemons.stop(daemons.procs[0])
    # Without the daemon, on the store.
    r = home.run("inbox", "show", first["id"][:10])
    assert r.returncode == 0 and "Hallo." in r.stdout
    r = home.run("inbox", "delete", first["id"])
    assert r.returncode == 0, r.stderr
    assert home.run("inbox", "list").stdout.strip() == "the inbox is empty"


async def _half_finished(home: Home) -> tuple[str, str]:
    """In the home's store: a message delivered to one recipient and deferred (its next
    try set) for the other, and one delivered; their ids."""
    store = SQLiteStore(home.path / "spool.sqlite3")
    await store.open()
    try:
        ids = []
        for n in (2, 1):
            new = NewMessage(
                sender=None,
                recipients=tuple(Address.parse(f"MAILDIR:r{i}") for i in range(n)),
                content=b"Subject: x\r\n\r\nx\r\n",
            )
            now = time.time()
            info = await store.submit(new, now=now, lifetime=3600, routes=["local"] * n)
            [job] = await store.claim("local", owner="test", now=now, lease=60)
            updates = [RecipientUpdate(0, RecipientState.DELIVERED, "2.0.0", "ok")]
            if n == 2:
                updates.append(
                    RecipientUpdate(
                        1,
                        RecipientState.QUEUED,
                        "4.2.0",
                        "try later",
                        retry_at=now + 600,
                        count_attempt=True,
                    )
                )
            await store.settle(info.id, updates, owner="test", now=now, claim=job.claim)
            ids.append(info.id)
        return ids[0], ids[1]
    finally:
        await store.close()


def test_all_means_the_unfinished_and_a_cancel_says_what_it_cancelled(
    home: Home, daemons: Daemons
) -> None:
    """``ALL`` without ``--state`` is the queue as ``queue list`` shows it (a week of
    sent mail is not walked through), and each line of a cancel says what it did."""
    half, sent = asyncio.run(_half_finished(home))
    waiting = _send(home, "MAILDIR:bob", "waiting")
    r = home.run("queue", "show", half)
    assert r.returncode == 0, r.stderr
    [r0, r1] = [line for line in r.stdout.splitlines() if "MAILDIR:r" in line]
    assert r0.endswith("MAILDIR:r0: delivered via local (2.0.0 ok)"), r0
    assert "queued via local, 1 attempt, next try " in r1, r1
    r = home.run("queue", "hold", "ALL")
    assert r.returncode == 0, r.stderr
    held = sorted(line.split(":")[0] for line in r.stdout.splitlines())
    assert held == sorted([half, waiting])  # not the sent one
    daemons.start(home)  # the held messages wait
    r = home.run("queue", "cancel", "ALL", "--json")
    assert r.returncode == 0, r.stderr
    results = {x["id"]: x for x in json.loads(r.stdout)["results"]}
    assert set(results) == {half, waiting}
    assert results[waiting]["cancelled"] == 1 and results[half]["cancelled"] == 1
    assert (results[half]["state"], results[waiting]["state"]) == ("sent", "cancelled")
    r = home.run("queue", "cancel", half, sent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{half}: sent, nothing left to cancel",
        f"{sent}: sent, nothing left to cancel",
    ]
    r = home.run("queue", "show", half)
    assert r.returncode == 0, r.stderr
    [r1] = [line for line in r.stdout.splitlines() if "MAILDIR:r1" in line]
    assert "cancelled via local, 1 attempt (cancelled by user)" in r1, r1


def test_an_action_line_says_what_the_queue_alone_does_not() -> None:
    assert _what_it_did({"id": "m", "state": "cancelled", "cancelled": 2}) == ""
    assert (
        _what_it_did({"id": "m", "state": "sent", "cancelled": 1})
        == " (1 unfinished recipient cancelled, the others had finished)"
    )
    assert _what_it_did({"id": "m", "state": "failed", "cancelled": 0}) == (
        ", nothing left to cancel"
    )
    assert _what_it_did({"id": "m", "state": "queued", "retried": 1}) == (
        " (1 recipient made ready)"
    )
    assert _what_it_did({"id": "m", "state": "queued", "retried": 3}) == (
        " (3 recipients made ready)"
    )
    why = "max_rate 2/h reached (2 sent in the last 1 h)"
    assert _what_it_did({"id": "m", "state": "queued", "retried": 0, "waiting": why}) == (
        f" (0 recipients made ready; waiting: {why})"
    )
    assert _what_it_did({"id": "m", "state": "hold"}) == ""


def test_a_recipient_line_shows_status_and_diagnostic_without_stray_spaces(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def recipient(index: int, status: str | None, diagnostic: str | None) -> dict[str, Any]:
        return {
            "index": index,
            "address": f"SMTP:r{index}@example.org",
            "state": "delivered",
            "route": "relay",
            "attempts": 2,
            "retry_at": 1.0,  # kept from a deferral: not shown for a finished one
            "status": status,
            "diagnostic": diagnostic,
        }

    _show_message(
        {
            "id": "m",
            "state": "sent",
            "held": False,
            "sender": None,
            "subject": "s",
            "size": 1,
            "priority": "normal",
            "submitted_at": 0.0,
            "expires_at": 0.0,
            "recipients": [
                recipient(0, "2.0.0", None),
                recipient(1, None, "smtp; 250 ok"),
                recipient(2, "2.0.0", "smtp; 250 ok"),
                recipient(3, None, None),
            ],
        }
    )
    lines = capsys.readouterr().out.splitlines()[-4:]
    assert lines == [
        "  [0] SMTP:r0@example.org: delivered via relay, 2 attempts (2.0.0)",
        "  [1] SMTP:r1@example.org: delivered via relay, 2 attempts (smtp; 250 ok)",
        "  [2] SMTP:r2@example.org: delivered via relay, 2 attempts (2.0.0 smtp; 250 ok)",
        "  [3] SMTP:r3@example.org: delivered via relay, 2 attempts",
    ]
