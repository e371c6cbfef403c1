"""The daemon's local API against hostile or careless clients: an oversize line, wrong
argument types, an unknown protocol version; and a listener whose user passwords are
missing.  The daemon runs in the test's event loop (real SQLite store, real socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolbox import Address, MessageState, NewMessage
from spoolbox.client import MAX_REQUEST_LINE, Client
from spoolbox.daemon import Daemon
from spoolbox.daemon.listener_processes import ListenerProcesses
from spoolbox.model import StatusCode
from spoolbox.profile import Profile, default_profile_text, load_profile

WAIT = 20.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short: the socket path must stay under the Unix limit (tmp_path can be long).
    with tempfile.TemporaryDirectory(prefix="sbx-api-") as d:
        yield Path(d)


def _profile(data_dir: Path, listener: str = "enabled = false") -> Profile:
    text = default_profile_text(data_dir, smtp_port=0).replace("enabled = true", listener)
    (data_dir / "spoolbox.toml").write_text(text)
    return load_profile(data_dir / "spoolbox.toml")


async def _exchange(profile: Profile, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(profile.daemon.socket))
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
        return answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def running(profile: Profile) -> AsyncIterator[Daemon]:
    daemon = Daemon(profile, renice=False)
    task = asyncio.ensure_future(daemon.run())
    try:
        async with asyncio.timeout(WAIT):
            while True:  # until the API answers
                assert not task.done(), task.result()
                with contextlib.suppress(OSError):
                    if (await _exchange(profile, {"v": 1, "op": "ping"}))["ok"]:
                        break
                await asyncio.sleep(0.02)
        yield daemon
    finally:
        daemon.request_stop()
        await task


async def test_an_oversize_line_is_refused_and_the_connection_closed(data_dir: Path) -> None:
    profile = _profile(data_dir)
    async with running(profile):
        reader, writer = await asyncio.open_unix_connection(str(profile.daemon.socket))
        prefix = b'{"v": 1, "op": "ping", "args": {}, "junk": "'

        # 1.5 times the limit, written whole before the answer is read (as a client
        # that sends its request, then reads, does): the daemon stops buffering at the
        # limit, answers, drops the rest of the line and closes.
        writer.write(prefix + b"a" * (MAX_REQUEST_LINE // 2 * 3) + b"\n")
        await asyncio.wait_for(writer.drain(), WAIT)  # all of it was taken
        answer = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert answer["ok"] is False
        assert answer["error"]["code"] == "too_large"
        assert str(MAX_REQUEST_LINE) in answer["error"]["message"]
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed
        writer.close()
        # A line just under the limit is read and answered; the daemon serves on.
        filler = "a" * (MAX_REQUEST_LINE - 200)
        big = await _exchange(profile, {"v": 1, "op": "ping", "args": {}, "junk": filler})
        assert big["ok"] is True


@pytest.mark.parametrize(
    ("op", "args", "field"),
    [
        ("submit", {"content": 5, "recipients": ["SMTP:a@b.c"]}, "'content'"),
        ("submit", {"content": "eA==", "recipients": "SMTP:a@b.c"}, "'recipients'"),
        ("submit", {"content": "eA==", "recipients": [7]}, "'recipients[0]'"),
        ("submit", {"content": "eA==", "recipients": ["SMTP:a@b.c"], "sender": 5}, "'sender'"),
        (
            "submit",
            {"content": "eA==", "recipients": ["SMTP:a@b.c"], "priority": 2},
            "'priority'",
        ),
        (
            "submit",
            {"content": "eA==", "recipients": ["SMTP:a@b.c"], "notify": "never"},
            "'notify'",
        ),
        (
            "submit",
            {"content": "eA==", "recipients": ["SMTP:a@b.c"], "send_at": "soon"},
            "'send_at'",
        ),
        ("submit", {"content": "eA==", "recipients": ["SMTP:a@b.c"], "id": ["x"]}, "'id'"),
        ("submit_many", {"messages": [{"content": 5, "recipients": []}]}, "'content'"),
        ("queue.list", {"limit": "ten"}, "'limit'"),
        ("queue.list", {"limit": 0}, "'limit'"),
        ("queue.list", {"limit": True}, "'limit'"),
        ("queue.list", {"state": 3}, "'state'"),
        ("queue.show", {"id": 5}, "'id'"),
        ("queue.hold", {"id": {}}, "'id'"),
        ("inbox.list", {"limit": []}, "'limit'"),
        ("inbox.read", {"id": None}, "'id'"),
        ("flush", {"upload": "no"}, "'upload'"),
        ("flush", {"transport": 5}, "'transport'"),
    ],
)
async def test_wrong_argument_types_are_bad_requests_naming_the_field(
    data_dir: Path, op: str, args: dict[str, Any], field: str
) -> None:
    profile = _profile(data_dir)
    async with running(profile):
        answer = await _exchange(profile, {"v": 1, "id": 9, "op": op, "args": args})
    assert answer["ok"] is False, answer
    assert answer["id"] == 9
    assert answer["error"]["code"] == "bad_request", answer
    message = answer["error"]["message"]
    assert field in message
    assert "Error" not in message and "object" not in message.replace("an object", "")


async def test_protocol_versions(data_dir: Path) -> None:
    profile = _profile(data_dir)
    async with running(profile):
        for v in (99, 0, "1", True, None):
            answer = await _exchange(profile, {"v": v, "id": 1, "op": "ping"})
            assert answer["ok"] is False, v
            assert answer["error"]["code"] == "unsupported_version"
            message = answer["error"]["message"]
            assert repr(v) in message and "version 1" in message
        assert (await _exchange(profile, {"v": 1, "op": "ping"}))["ok"] is True
        assert (await _exchange(profile, {"op": "ping"}))["ok"] is True  # no "v": 1


async def test_a_refused_request_with_raw_content_closes_the_connection(data_dir: Path) -> None:
    # The raw content after a refused line was never read: the connection is out of
    # step, so the daemon answers and closes instead of reading the content as lines.
    profile = _profile(data_dir)
    content = b'{"v": 1, "id": 2, "op": "ping"}\n'  # would be answered if read as a line
    async with running(profile):
        reader, writer = await asyncio.open_unix_connection(str(profile.daemon.socket))
        args = {"content_length": len(content), "recipients": ["MAILDIR:bob"]}
        request = {"v": 99, "id": 1, "op": "submit", "args": args}
        writer.write(json.dumps(request).encode() + b"\n" + content)
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert answer["id"] == 1
        assert answer["error"]["code"] == "unsupported_version"
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, not a 2nd answer
        writer.close()


async def test_a_message_larger_than_the_line_limit_goes_to_the_daemon_as_raw_content(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A submit's content follows the request line as raw bytes: the line limit does
    # not bound the size of a message.
    monkeypatch.setattr("spoolbox.api.client.MAX_REQUEST_LINE", 64 * 1024)
    profile = _profile(data_dir)
    content = b"Subject: big\r\n\r\n" + b"x" * 100 * 1024 + b"\r\n"
    message = NewMessage(sender=None, recipients=(Address.parse("MAILDIR:bob"),), content=content)
    async with running(profile) as daemon:
        result = await asyncio.to_thread(Client(profile).submit, message)
        assert result["via"] == "daemon"
        assert daemon.spooler is not None
        state = await daemon.spooler.wait_for(result["id"], timeout=WAIT)
        assert state is MessageState.SENT
    (delivered,) = (data_dir / "mail" / "bob" / "new").iterdir()
    assert delivered.read_bytes().endswith(content)


async def test_a_batch_too_large_for_one_line_goes_through_the_store(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spoolbox.api.client.MAX_REQUEST_LINE", 64 * 1024)
    profile = _profile(data_dir)
    contents = [b"Subject: big %d\r\n\r\n" % i + b"x" * 40 * 1024 + b"\r\n" for i in range(2)]
    messages = [
        NewMessage(sender=None, recipients=(Address.parse("MAILDIR:bob"),), content=c)
        for c in contents
    ]
    async with running(profile) as daemon:
        result = await asyncio.to_thread(Client(profile).submit_many, messages)
        assert result["via"] == "store"
        assert "too large for the local API" in result["note"]
        assert daemon.spooler is not None
        for mid in result["ids"]:
            state = await daemon.spooler.wait_for(mid, timeout=WAIT)
            assert state is MessageState.SENT
    delivered = sorted(p.read_bytes() for p in (data_dir / "mail" / "bob" / "new").iterdir())
    assert [d[-len(contents[0]) :] for d in delivered] == sorted(contents)


async def test_a_listener_with_a_missing_user_password_does_not_start(data_dir: Path) -> None:
    listener = (
        "enabled = true\nallow_plain_auth = true\n"
        'users = { ann = { password_env = "SBX_TEST_UNSET_ANN" } }'
    )
    profile = _profile(data_dir, listener)
    assert profile.listeners[0].missing
    async with running(profile) as daemon:
        assert daemon.spooler is not None
        row = daemon.spooler.status["listener:submission"]
    assert row.status_code & StatusCode.FAILURE
    assert row.status_string == "not listening"
    assert "users.ann" in (row.detail or "")
    assert "SBX_TEST_UNSET_ANN" in (row.detail or "")


async def test_the_daemon_warns_of_a_data_directory_others_can_read(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    profile = _profile(data_dir)
    os.chmod(data_dir, 0o755)
    async with running(profile):
        pass
    assert f"the data directory {data_dir} is readable by other users (mode 0755)" in caplog.text
    assert f"chmod 700 {data_dir}" in caplog.text


async def test_a_listener_row_says_starting_while_its_processes_start(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API answers before the listener processes listen: ``status`` shows the
    # listener as starting then, not no row at all (CI once read the table in between).
    gate = asyncio.Event()
    original = ListenerProcesses.start

    async def held_start(self: ListenerProcesses) -> None:
        await gate.wait()
        await original(self)

    monkeypatch.setattr(ListenerProcesses, "start", held_start)
    text = default_profile_text(data_dir, smtp_port=0)
    text = re.sub(r"^processes = .*$", "processes = 1", text, count=1, flags=re.M)
    (data_dir / "spoolbox.toml").write_text(text)
    profile = load_profile(data_dir / "spoolbox.toml")
    assert profile.listeners[0].enabled and profile.listeners[0].processes == 1

    async def row() -> dict[str, Any]:
        answer = await _exchange(profile, {"v": 1, "op": "status"})
        rows = {r["name"]: r for r in answer["result"]["rows"]}
        return dict(rows["listener:submission"])

    daemon = Daemon(profile, renice=False)
    task = asyncio.ensure_future(daemon.run())
    try:
        async with asyncio.timeout(WAIT):
            while True:
                assert not task.done(), task.result()
                with contextlib.suppress(OSError):
                    if (await _exchange(profile, {"v": 1, "op": "ping"}))["ok"]:
                        break
                await asyncio.sleep(0.02)
            starting = await row()
            assert starting["status"] == "starting"
            assert starting["status_code"] == StatusCode.OFFLINE, starting
            gate.set()
            while not (await row())["status"].startswith("listening on"):
                await asyncio.sleep(0.05)
    finally:
        gate.set()
        daemon.request_stop()
        await task
