"""The spoolbox command without a daemon: init, errors and exit codes, submit/send into
the store, queue and inbox on the store, transports, and the --json schemas."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from conftest import CLI, Home
from spoolbox import SQLiteStore

MESSAGE_KEYS = {
    "id",
    "state",
    "sender",
    "subject",
    "size",
    "priority",
    "submitted_at",
    "send_at",
    "expires_at",
    "envelope_id",
    "return_content",
    "held",
    "is_report",
    "recipients",
}
RECIPIENT_KEYS = {
    "index",
    "address",
    "state",
    "route",
    "attempts",
    "retry_at",
    "status",
    "diagnostic",
    "original",
}


def test_init_writes_a_profile_that_loads_and_refuses_to_overwrite(home: Home) -> None:
    text = home.profile.read_text()
    assert 'provider = "maildir"' in text
    assert "[listeners.submission]" in text
    r = home.run("init", "--dir", str(home.path))
    assert r.returncode == 1
    assert "exists" in r.stderr


def test_missing_profile_exits_5_naming_the_file(home: Home) -> None:
    r = home.run("--profile", str(home.path / "nope.toml"), "status")
    assert r.returncode == 5
    assert "nope.toml" in r.stderr


def test_unknown_key_exits_5_naming_file_and_key(home: Home) -> None:
    home.profile.write_text(home.profile.read_text().replace("[store]", "[store]\nbakend = 1"))
    r = home.run("queue", "list")
    assert r.returncode == 5
    assert "spoolbox.toml" in r.stderr
    assert "[store] bakend" in r.stderr
    assert "unknown key" in r.stderr


def test_bad_value_names_the_key_and_what_was_expected(home: Home) -> None:
    home.profile.write_text(
        home.profile.read_text().replace('lifetime = "5d"', 'lifetime = "forever"')
    )
    r = home.run("status", "--json")
    assert r.returncode == 5
    assert "[policy] lifetime" in r.stderr
    assert "expected a duration" in r.stderr
    assert json.loads(r.stdout)["error"]["code"] == "profile"


def test_invalid_toml_exits_5(home: Home) -> None:
    home.profile.write_text("[store\n")
    r = home.run("status")
    assert r.returncode == 5
    assert "invalid TOML" in r.stderr


def test_daemon_commands_exit_3_when_it_is_not_running(home: Home) -> None:
    r = home.run("status", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["error"]["exit_code"] == 3
    assert "not running" in r.stderr
    assert home.run("flush").returncode == 3


def test_send_attaches_files_byte_for_byte(home: Home) -> None:
    # Sizes around the 57 bytes of a base64 line and the 57 KiB blocks they are read in.
    files = {
        "empty.bin": b"",
        "one.bin": b"\x00",
        "line.bin": bytes(range(57)),
        "blocks.bin": os.urandom(57 * 1024 * 2 + 1),
        "notes.txt": "caf\u00e9 \u2603\n".encode() * 5000,
    }
    args = ["send", "--to", "MAILDIR:bob", "--subject", "files", "--body", "see attached"]
    for name, data in files.items():
        (home.path / name).write_bytes(data)
        args += ["--attach", str(home.path / name)]
    r = home.run(*args)
    assert r.returncode == 0, r.stderr

    async def content() -> bytes:
        async with SQLiteStore(home.path / "spool.sqlite3") as store:
            return await store.read_content(r.stdout.strip())

    raw = asyncio.run(content())
    # As the email package writes a message: CRLF lines, base64 in lines of 76.
    lines = raw.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert max(map(len, lines)) <= 78
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    attached = {
        part.get_filename(): (part.get_content_type(), part.get_payload(decode=True))
        for part in message.iter_attachments()
    }
    assert attached == {
        "empty.bin": ("application/octet-stream", b""),
        "one.bin": ("application/octet-stream", b"\x00"),
        "line.bin": ("application/octet-stream", bytes(range(57))),
        "blocks.bin": ("application/octet-stream", files["blocks.bin"]),
        "notes.txt": ("text/plain", files["notes.txt"]),
    }
    body = message.get_body(("plain",))
    assert body is not None and body.get_content() == "see attached\r\n"


def test_send_without_daemon_queues_in_the_store(home: Home) -> None:
    r = home.run("send", "--to", "MAILDIR:bob", "--subject", "offline", "--body", "hi")
    assert r.returncode == 0, r.stderr
    mid = r.stdout.strip()
    assert "not running" in r.stderr
    listing = home.json("queue", "list")
    assert [m["id"] for m in listing["messages"]] == [mid]
    m = listing["messages"][0]
    assert set(m) == MESSAGE_KEYS | {"short_id"}  # a listing adds the short id
    assert m["state"] == "queued"
    assert m["subject"] == "offline"
    assert m["sender"] == "MAILDIR:postmaster"
    assert set(m["recipients"][0]) == RECIPIENT_KEYS
    assert m["recipients"][0]["address"] == "MAILDIR:bob"
    shown = home.json("queue", "show", mid)
    assert shown["id"] == mid


def test_send_and_submit_ask_for_the_reports_notify_says(home: Home) -> None:
    r = home.run("send", "--to", "MAILDIR:bob", "--subject", "d", "--notify", "delay,failure")
    assert r.returncode == 0, r.stderr
    r = home.run("submit", "--to", "MAILDIR:bob", "--notify", "never", input=b"Subject: n\r\n\r\n")
    assert r.returncode == 0, r.stderr
    home.run("send", "--to", "MAILDIR:bob", "--subject", "default")

    async def notify_of_each() -> list[int]:
        store = SQLiteStore(home.path / "spool.sqlite3")
        await store.open()
        try:
            listing = await store.list_messages(now=0)
            return [int(s.info.notify) for s in sorted(listing, key=lambda s: s.info.id)]
        finally:
            await store.close()

    assert asyncio.run(notify_of_each()) == [2 | 4, 0, 2]  # FAILURE|DELAY, NEVER, FAILURE
    r = home.run("send", "--to", "MAILDIR:bob", "--notify", "sometimes")
    assert r.returncode == 2
    assert (
        "Invalid value for '--notify': 'sometimes': expected never, or a comma list of "
        "success, failure, delay" in r.stderr
    )


def test_submit_from_stdin_takes_recipients_from_headers(home: Home) -> None:
    # SMTP recipients need a transport that serves SMTP (else refused at submit, 67).
    with home.profile.open("a") as f:
        f.write(
            '\n[[transports]]\nname = "relay"\nprovider = "smtp"\naddress_types = ["SMTP"]\n'
            '[transports.options]\nhost = "127.0.0.1"\nport = 9\ntls = "none"\n'
        )
    content = b"From: a@example.org\r\nTo: b@example.org, c@example.org\r\nSubject: s\r\n\r\nx\r\n"
    r = home.run("submit", "--json", input=content)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"id", "state", "via", "note"}
    assert out["via"] == "store"
    assert "not running" in out["note"]
    shown = home.json("queue", "show", out["id"])
    assert [x["address"] for x in shown["recipients"]] == [
        "SMTP:b@example.org",
        "SMTP:c@example.org",
    ]
    assert shown["sender"] == "SMTP:a@example.org"


def test_submit_rejects_a_message_without_recipients(home: Home) -> None:
    r = home.run("submit", input=b"Subject: none\r\n\r\nx\r\n")
    assert r.returncode == 1
    assert "recipient" in r.stderr


def test_unknown_message_id_exits_4(home: Home) -> None:
    for args in (("queue", "show", "nosuchid"), ("queue", "hold", "nosuchid")):
        r = home.run(*args)
        assert r.returncode == 4, (args, r.stderr)
    r = home.run("inbox", "show", "nosuchid")
    assert r.returncode == 4


def test_hold_release_cancel_on_the_store(home: Home) -> None:
    mid = home.run("send", "--to", "MAILDIR:bob", "--body", "x").stdout.strip()
    assert home.json("queue", "hold", mid)["results"] == [{"id": mid, "state": "hold"}]
    assert home.json("queue", "list", "--state", "hold")["messages"][0]["id"] == mid
    assert "state:     hold\n" in home.run("queue", "show", mid).stdout  # not "hold (held)"
    assert home.json("queue", "release", mid)["results"][0]["state"] == "queued"
    assert home.json("queue", "cancel", mid)["results"][0]["state"] == "cancelled"


def test_inbox_is_empty_and_transports_lists_providers(home: Home) -> None:
    assert home.json("inbox", "list") == {"messages": []}
    t = home.json("transports")
    assert set(t) == {"providers", "configured", "source"}
    assert t["source"] == "profile"
    assert {"name": "maildir", "class": "spoolbox.transports.maildir:MaildirProvider"} in t[
        "providers"
    ]
    assert t["configured"][0]["name"] == "local"
    assert t["configured"][0]["address_types"] == ["MAILDIR"]


@pytest.mark.parametrize(
    "args",
    [("transports",), ("transports", "--json"), ("queue", "show", "{mid}")],
    ids=["rich-table", "json", "plain-lines"],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(
    home: Home, args: tuple[str, ...]
) -> None:
    """``spoolbox queue show ID | head -1``: the reader closed the pipe; the command
    ends with exit 1 and nothing on stderr, whatever prints it (click's lines were
    ``spoolbox: error: Broken pipe`` and exit 74; rich's tables already ended so)."""
    mid = home.run("send", "--to", "MAILDIR:bob", "--body", "x").stdout.strip()
    proc = subprocess.Popen(
        [*CLI, "--profile", str(home.profile), *(a.format(mid=mid) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=home.path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes anything
    with proc.stderr:
        stderr = proc.stderr.read()
    assert (proc.wait(timeout=60), stderr) == (1, b"")


def test_usage_error_exits_2(home: Home) -> None:
    r = home.run("queue", "frobnicate")
    assert r.returncode == 2
