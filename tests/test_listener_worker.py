"""The listener worker process on its own: its pipe to the daemon, its log.

The worker tells the daemon about every commit over a pipe.  A daemon that stops
reading it (stopped with SIGSTOP, or stuck) must not stop the worker: it would stop
answering SMTP clients.  Here the pipe is a real one shrunk to one page, the store
a real SQLite file, and nobody reads until 400 submissions have returned.  And the
worker's log, like the daemon's, never shows a secret of the profile.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from spoolbox import Address, NewMessage
from spoolbox.daemon.listener_worker import _WorkerProcess
from spoolbox.daemon.worker_protocol import WorkerSpec

N = 400


def _spec(store: Path) -> WorkerSpec:
    return WorkerSpec(
        name="submission",
        options={},
        store=str(store),
        synchronous="NORMAL",
        lifetime=3600.0,
        event_loop="asyncio",
        log_level="WARNING",
        fd=-1,  # no socket: submissions are made directly
        routes=[["smtp", ["SMTP"]]],
    )


async def test_a_full_pipe_does_not_stop_the_worker_and_nothing_is_untold(
    tmp_path: Path,
) -> None:
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # fills after about a hundred lines
    os.set_blocking(r, False)
    worker = _WorkerProcess(_spec(tmp_path / "spool.db"), w)
    await worker.store.open()
    try:
        for i in range(N):
            await worker.submit(
                NewMessage(
                    sender=None,
                    recipients=(Address("SMTP", f"r{i}@example.org"),),
                    content=b"Subject: x\r\n\r\nbody\r\n",
                )
            )
            await asyncio.sleep(0)  # a loop turn each: one line each, were it read
        assert worker._unsent, "the pipe never filled: the test proves nothing"
        # Now the daemon reads again: every commit is told, the backlog in few lines.
        lines: list[dict[str, object]] = []
        buf = b""
        async with asyncio.timeout(10):
            while sum(int(str(x.get("n", 0))) for x in lines) < N:
                await asyncio.sleep(0.005)
                try:
                    buf += os.read(r, 65536)
                except BlockingIOError:
                    continue
                *done, buf = buf.split(b"\n")
                lines += [json.loads(line) for line in done]
        told = [x for x in lines if "n" in x]
        assert sum(int(str(x["n"])) for x in told) == N
        assert all(x["to"] == ["smtp"] for x in told)
        assert len(told) < N / 2  # what piled up was told together
        assert not worker._unsent
        assert len(await worker.store.list_messages(state=None, limit=N + 1, now=0.0)) == N
    finally:
        await worker.store.close()
        os.close(r)
        os.close(w)


def test_the_worker_log_never_shows_a_secret(tmp_path: Path) -> None:
    secret = "hunter2-s3cr3t"
    with socket.create_server(("127.0.0.1", 0)) as sock:
        spec = _spec(tmp_path / "spool.db")
        spec = WorkerSpec(
            **{
                **json.loads(spec.to_json()),
                "fd": sock.fileno(),
                "options": {"host": "127.0.0.1", "port": 0, "users": {"alice": secret}},
                "secrets": [secret],
            }
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoolbox.daemon.listener_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(sock.fileno(),),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec.to_json().encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["ready"] is True
        # A control line it cannot read is logged with its text, which holds the secret.
        proc.stdin.write(b'{"routes": "' + secret.encode() + b'"}\n')
        proc.stdin.close()  # then EOF: the worker stops
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "unreadable control line" in log
    assert "***" in log
    assert secret not in log
