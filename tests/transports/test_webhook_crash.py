"""The idempotency key survives a crash: a real ``spoolbox run`` SIGKILLed while a
recipient's request is in flight posts it again after the restart, with the same key,
and a receiver that drops repeated keys acts on the message once.

The receiver (Hypercorn in the test's loop, webhook_servers.py) takes the first
request and never answers it; the daemon is killed with SIGKILL while it waits.  The
store then still has the recipient in flight (``active``).  The second daemon gives
it back to the queue at start and posts it again: same ``Idempotency-Key``, a valid
signature with a fresh timestamp, and the message ends sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from webhook_servers import SECRET, WAIT, Answer, Receiver, http_server

CLI = [sys.executable, "-m", "spoolbox.cli"]


class Home:
    """A data directory made by ``spoolbox init``, with a webhook transport added."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.profile = path / "spoolbox.toml"
        self.env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
        self.env.update(PYTHONWARNINGS="error", WEBHOOK_SECRET=SECRET)
        self.url = url

    async def run(self, *args: str, expect: int = 0) -> str:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "--profile",
            str(self.profile),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.path,
        )
        out, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
        assert proc.returncode == expect, (args, proc.returncode, out, err)
        return out.decode()

    async def json(self, *args: str) -> Any:
        return json.loads(await self.run(*args, "--json"))

    async def init(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "init", "--dir", str(self.path), "--smtp-port", "0", env=self.env
        )
        assert await asyncio.wait_for(proc.wait(), WAIT * 2) == 0
        with self.profile.open("a") as f:
            f.write(
                "\n[[transports]]\n"
                'name = "hooks"\n'
                'provider = "webhook"\n'
                'address_types = ["WEBHOOK"]\n'
                "inbound = false\n"
                "[transports.options]\n"
                f'endpoints = {{ orders = "{self.url}/hook" }}\n'
                'secret_env = "WEBHOOK_SECRET"\n'
                "read_timeout = 600\n"
                "total_timeout = 600\n"
            )

    async def start(self, n: int) -> asyncio.subprocess.Process:
        log = (self.path / f"daemon-{n}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "--profile",
            str(self.profile),
            "run",
            "--no-nice",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self.env,
            cwd=self.path,
        )
        log.close()
        async with asyncio.timeout(WAIT * 2):
            while True:
                assert proc.returncode is None, (self.path / f"daemon-{n}.log").read_text()
                status = await asyncio.create_subprocess_exec(
                    *CLI, "--profile", str(self.profile), "status", env=self.env,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                if await status.wait() == 0:
                    return proc
                await asyncio.sleep(0.2)

    async def recipient(self, mid: str) -> dict[str, Any]:
        shown = await self.json("queue", "show", mid)
        [rcpt] = shown["recipients"]
        return {"message": shown["state"], **rcpt}


async def test_sigkill_in_flight_posts_again_with_the_same_idempotency_key(
    tmp_path: Path,
) -> None:
    receiver = Receiver(secret=SECRET)
    receiver.answer("/hook", Answer(hang=True), Answer(200))
    async with http_server(receiver) as srv:
        home = Home(tmp_path / "sbx", srv.url)
        await home.init()
        daemon = await home.start(0)
        try:
            sent = await home.json("send", "--to", "WEBHOOK:orders", "--subject", "order 42")
            mid = sent["id"]
            async with asyncio.timeout(WAIT):
                first = await receiver.arrived.get()
            daemon.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(daemon.wait(), WAIT) == -signal.SIGKILL
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
        # The store: the recipient was in flight at the crash.
        before = await home.recipient(mid)
        assert before["state"] == "active", before

        daemon = await home.start(1)
        try:
            async with asyncio.timeout(WAIT):
                second = await receiver.arrived.get()
                while (after := await home.recipient(mid))["message"] != "sent":
                    await asyncio.sleep(0.2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), WAIT)
    key = f"{mid}.0"
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == key
    assert json.loads(first.body)["idempotency_key"] == json.loads(second.body)["idempotency_key"]
    assert first.verified == second.verified == "ok"
    assert receiver.keys_done == [key]  # acted on once
    assert len(receiver.requests) == 2
    assert after["state"] == "delivered"
    assert after["status"] == "2.0.0"
