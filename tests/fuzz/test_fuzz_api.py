"""Fuzz target: the daemon's local API decoder (JSON lines on its Unix socket).

Two levels:

* ``message_from_args`` (the decoding of a ``submit`` request's arguments, also each
  item of ``submit_many``) in-process: it returns a message or raises what the daemon
  answers as ``bad_request`` (``ApiError``, ``MessageError``, ``AddressError``),
  never anything that becomes an ``internal`` error;
* request lines sent to a real ``spoolbox run`` on a scratch data directory: every
  non-blank line gets one answer line, a JSON object that carries the request's
  ``id`` when the request had one, and whose error code is never ``internal`` (a
  decoder crash); the daemon still answers ``ping`` afterwards.

Streaming ops (``flush``, ``watch``) and ``reload`` are not sent: they take the
connection over or restart the spooler; their decoding is the same code.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_settings import budget
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.api.wire import ApiError, message_from_args
from spoolbox.model import AddressError, MessageError, NewMessage

_OPS = [
    "ping",
    "submit",
    "submit_many",
    "status",
    "statistics",
    "queue.list",
    "queue.select",
    "queue.purge",
    "queue.show",
    "queue.hold",
    "queue.release",
    "queue.cancel",
    "queue.retry",
    "inbox.list",
    "inbox.read",
    "inbox.delete",
    "transports",
]
_CODES = {
    "bad_request",
    "not_found",
    "conflict",
    "store",
    "not_running",
    "profile",
    "unsupported_version",
    "too_large",
}

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_CONTENT = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "!!!", "YQ", "YQ==="]),
    _JSON,
)
_ADDRESS = st.one_of(
    st.sampled_from(["MAILDIR:bob", "SMTP:a@b.c", "bob", "", "X:\n", "MAILDIR:" + "x" * 999]),
    _JSON,
)
_SUBMIT_ARGS = st.fixed_dictionaries(
    {},
    optional={
        "content": _CONTENT,
        "sender": _ADDRESS,
        "recipients": st.one_of(st.lists(_ADDRESS, max_size=3), _JSON),
        "priority": st.one_of(st.sampled_from(["low", "normal", "urgent", "HIGH"]), _JSON),
        "notify": st.one_of(st.sampled_from([0, 1, 2, 4, 7, -1, 2**70]), _JSON),
        "send_at": st.one_of(st.sampled_from([0, 1e12, -1.0]), _JSON),
        "id": st.one_of(st.sampled_from(["m1", "../x", "a" * 300]), _JSON),
        "original_recipients": st.one_of(
            st.dictionaries(
                _ADDRESS.filter(lambda a: isinstance(a, str)),
                st.one_of(
                    st.sampled_from(["rfc822;b@old", "b@old", "rfc822;", "x;a\r\nb", "a" * 600]),
                    _JSON,
                ),
                max_size=3,
            ),
            _JSON,
        ),
        "unknown": _JSON,
    },
)


@budget(150)
@given(args=_SUBMIT_ARGS)
@example(args={"content": "YQ==", "recipients": ["MAILDIR:bob"], "notify": "x"}).via(
    "notify not a number: ValueError"
)
@example(args={"content": "YQ==", "recipients": ["MAILDIR:bob"], "notify": [2]}).via(
    "notify a list: TypeError"
)
@example(args={"content": "YQ==", "recipients": ["MAILDIR:bob"], "notify": float("inf")}).via(
    "notify infinite: OverflowError"
)
@example(args={"content": "YQ==", "recipients": ["MAILDIR:bob"], "send_at": "soon"}).via(
    "send_at not a number: ValueError"
)
@example(
    args={"content": "YQ==", "recipients": ["MAILDIR:bob"], "original_recipients": {"bob": "x"}}
).via("an original for an address without a type")
@example(
    args={
        "content": "YQ==",
        "recipients": ["MAILDIR:bob"],
        "original_recipients": {"MAILDIR:bob": "rfc822;b@old\n"},
    }
).via("an original with a line break")
@example(args={"content": "\x80", "recipients": ["MAILDIR:bob"]}).via(
    "content not ASCII: ValueError from b64decode (found by the long run)"
)
def test_submit_arguments_decode_or_are_a_bad_request(args: dict[str, Any]) -> None:
    message: NewMessage | None = None
    refusal = ""
    try:
        message = message_from_args(args)
    except ApiError as exc:
        refusal = f"{exc.code}: {exc}"
    except (MessageError, AddressError) as exc:  # the daemon maps these to bad_request
        refusal = f"bad_request: {exc}"
    if message is None:
        assert refusal.startswith("bad_request: ") and len(refusal) > len("bad_request: ")
    else:
        assert message.recipients


# -- request lines against a real daemon ------------------------------------------------
_CLI = [sys.executable, "-m", "spoolbox.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    env["PYTHONWARNINGS"] = "error"
    return env


@pytest.fixture(scope="module")
def daemon_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("api") / "sbx"
    subprocess.run(
        [*_CLI, "init", "--dir", str(home), "--smtp-port", "0"],
        check=True,
        capture_output=True,
        env=_env(),
        timeout=60,
    )
    log = open(home / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*_CLI, "--profile", str(home / "spoolbox.toml"), "run", "--no-nice"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=home,
    )
    log.close()
    path = home / "spoolbox.sock"
    try:
        deadline = time.monotonic() + 60
        while not _pings(path):
            assert proc.poll() is None, (home / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the daemon did not answer within 60 s"
            time.sleep(0.1)
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "API request failed" not in (home / "daemon.log").read_text()


def _exchange(path: Path, data: bytes, answers: int) -> list[bytes]:
    """Send ``data``, read ``answers`` lines (fewer if the daemon closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        sock.sendall(data)
        reader = sock.makefile("rb")
        lines = []
        for _ in range(answers):
            line = reader.readline()
            if not line:
                break
            lines.append(line)
        return lines


def _pings(path: Path) -> bool:
    try:
        (line,) = _exchange(path, b'{"op": "ping", "id": 7}\n', 1)
    except (OSError, ValueError):
        return False
    answer = json.loads(line)
    return bool(answer["ok"]) and answer["id"] == 7


def _request_line(request: Any) -> bytes:
    return json.dumps(request).encode() + b"\n"


_REQUEST = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(_OPS), _JSON)},
    optional={"id": _JSON, "args": st.one_of(_SUBMIT_ARGS, _JSON), "v": _JSON},
)
_LINE = st.one_of(
    _REQUEST.map(_request_line),
    _REQUEST.map(_request_line),
    _JSON.map(_request_line),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b.strip()).map(lambda b: b + b"\n"),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n + b"\n"),
    st.integers(4300, 4400).map(lambda n: b'{"op": "ping", "id": ' + b"9" * n + b"}\n"),
)


@budget(75)
@given(line=_LINE)
@example(line=b"\xff\xfe\n").via("not UTF-8: UnicodeDecodeError")
@example(line=b"[" * 100_000 + b"\n").via("deep nesting: RecursionError")
@example(line=b'{"op": "ping", "id": ' + b"9" * 5000 + b"}\n").via("an int of 5000 digits")
@example(line=_request_line({"op": None, "id": [1]})).via("the id of a request without an op")
@example(
    line=_request_line(
        {
            "op": "submit",
            "id": 2,
            "args": {"content": "YQ==", "recipients": ["MAILDIR:b"], "notify": 2**70},
        }
    )
).via("a notify too large to store")
@example(
    line=_request_line(
        {
            "op": "submit",
            "id": 1,
            "args": {"content": "YQ==", "recipients": ["MAILDIR:b"], "notify": "x"},
        }
    )
).via("submit with a bad notify")
def test_every_request_line_gets_one_well_formed_answer(daemon_socket: Path, line: bytes) -> None:
    (answer_line,) = _exchange(daemon_socket, line, 1)
    answer = json.loads(answer_line)
    assert isinstance(answer, dict)
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        request = None
    if isinstance(request, dict) and "id" in request:
        assert answer["id"] == request["id"]
    if not answer["ok"]:
        assert answer["error"]["code"] in _CODES, answer
        assert answer["error"]["message"]
    assert _pings(daemon_socket)
