"""One step of a message's way through spoolbox, alone in a process, and its peak RSS.

Run as ``python tests/memory/worker.py STEP SIZE DIR`` (``tests/memory/test_memory.py``
and ``bench/memory.py`` do).  The process sets up what the step needs (imports, the
store, a spooler, a peer), then measures: it resets the kernel's high-water mark of
its resident set (``/proc/self/clear_refs``, value 5) and takes its RSS as the
baseline, runs the step on a message of SIZE bytes, and reads the peak back
(``VmHWM`` in ``/proc/self/status``; see :func:`peak` for why not ``ru_maxrss``).
It prints one JSON object: ``{"step", "size", "growth"}``, growth being the peak minus
the baseline in bytes.  Where a step takes the message from the caller as bytes
(``api``, ``store-write``, ``client``), the caller's copy is made after the baseline
and counts (1x); where it comes from a file or a socket, only what spoolbox holds
counts.  The steps that start a daemon also report the daemon's growth
(``daemon_growth``), read from its ``/proc/PID/status`` the same way.

Steps:

``api``          ``Spooler.submit(NewMessage(content=...))`` on a SQLite store;
``store-write``  ``SQLiteStore.submit`` (no spooler);
``memory-store`` ``MemoryStore.submit`` then ``read_content``;
``store-read``   ``SQLiteStore.read_content`` of a stored message (the result is 1x);
``store-stream`` ``SQLiteStore.iter_content`` of a stored message;
``listener``     the SMTP listener takes the message from a client process on a
                 loopback port and commits it (the client streams from a file);
``relay``        the SMTP transport relays a stored message to Postfix's
                 ``smtp-sink`` on a loopback port;
``maildir``      the Maildir transport delivers a stored message;
``inbound``      the Maildir transport picks a message up into the inbox;
``report``       a stored message fails at once (its Maildir is outside the root):
                 the spooler builds and queues the delivery report to its sender,
                 and delivers it to the sender's Maildir;
``client``       ``Client.submit`` with no daemon running (into the store);
``daemon``       ``Client.submit`` through a running ``spoolbox run`` daemon (its
                 local API); ``daemon_growth`` is the daemon's;
``sendmail``     ``spoolbox sendmail`` reading the message from a file as stdin,
                 no daemon running;
``send``         ``spoolbox send --attach FILE`` (SIZE is the file's), no daemon.

Exit status 3 with a line on stderr means a program the step needs is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from spoolbox import (
    Address,
    AlwaysIdle,
    MemoryStore,
    MessageState,
    NewMessage,
    Notify,
    Policy,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)
from spoolbox.reports.dsn import RETURN_SIZE_LIMIT

HOST = "127.0.0.1"
SMTP_SINK = "/usr/sbin/smtp-sink"
#: The sender of the report step's message: a Maildir of the step's transport, so the
#: report is delivered (streamed, as the ``maildir`` step measures).  An address no
#: transport serves made the report fail in turn, and its double bounce, which
#: returns the failed report whole, read it back: a third copy whenever the spooler
#: got to the report before the step ended (under CPU load).
SENDER = "MAILDIR:sender"
BAD_MAILDIR = "MAILDIR:../outside"  # outside the Maildir root: fails with 5.1.3
LINE = b"x" * 76 + b"\r\n"
SKIP = 3
MESSAGE = "message.eml"  # the message of the step, in its directory
STEPS = (
    "api",
    "store-write",
    "memory-store",
    "store-read",
    "store-stream",
    "listener",
    "relay",
    "maildir",
    "inbound",
    "report",
    "client",
    "daemon",
    "sendmail",
    "send",
)
POLICY = Policy(
    router_interval=0.02, housekeeping_interval=0.05, poll_interval=0.05, retry_base=3600.0
)
CLI = [sys.executable, "-m", "spoolbox.cli"]
DEADLINE = 120.0


class Missing(Exception):
    """A program the step needs is not installed."""


# -- measuring -----------------------------------------------------------------------------
def _kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int | str = "self") -> int:
    """Reset the high-water mark of the resident set to the current RSS; the RSS (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _kb("VmRSS", pid)


def peak(pid: int | str = "self") -> int:
    """The high-water mark (KiB) since the last reset: ``VmHWM``.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: that is the larger of ``VmHWM`` and
    a figure the kernel keeps per process, which ``exec`` sets to the high-water
    mark of the memory it replaces, i.e. the parent's when the parent forked with
    ``vfork`` (as ``subprocess`` does): a child of a pytest process that had grown
    to 100 MiB reported at least that, whatever it did.  The reset does not touch
    that figure."""
    return _kb("VmHWM", pid)


def write_message(path: Path, size: int) -> None:
    """An RFC 5322 message of exactly ``size`` bytes (CRLF lines of 78 octets, none
    starting with a dot), written a block at a time."""
    head = b"From: sender@example.org\r\nTo: rcpt@example.net\r\nSubject: memory\r\n\r\n"
    lines, rest = divmod(size - len(head), len(LINE))
    block = LINE * 1024
    with open(path, "wb") as fh:
        fh.write(head)
        for _ in range(lines // 1024):
            fh.write(block)
        fh.write(LINE * (lines % 1024))
        fh.write(b"y" * max(0, rest - 2) + b"\r\n"[: min(rest, 2)])


def content_of(path: Path) -> bytes:
    """The file's bytes in one allocation of their size (as a caller would hold them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
    finally:
        os.close(fd)
    if len(data) != size:
        raise RuntimeError(f"short read of {path}: {len(data)} of {size} bytes")
    return data


def message(content: bytes, *recipients: str) -> NewMessage:
    # The null sender: no delivery report is built inside the measured window.
    return NewMessage(
        sender=None,
        recipients=tuple(Address.parse(r) for r in recipients),
        content=content,
        notify=Notify.NEVER,
    )


# -- set-ups --------------------------------------------------------------------------------
def prepare(work: Path, recipient: str) -> Path:
    """A store with the step's message queued, written by a process of its own."""
    db = work / "store.db"
    subprocess.run(
        [sys.executable, __file__, "prepare", str(work), recipient],
        check=True,
        timeout=DEADLINE,
    )
    return db


async def _prepare(work: Path, recipient: str) -> None:
    msg = message(content_of(work / MESSAGE), recipient)
    if recipient == BAD_MAILDIR:  # fails at once: a report to the sender
        msg = dataclasses.replace(msg, sender=Address.parse(SENDER), notify=Notify.FAILURE)
    async with SQLiteStore(work / "store.db") as store:
        await store.submit(msg, now=time.time(), lifetime=3600.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's ``smtp-sink`` on a free loopback port (it keeps nothing)."""
    if not os.path.exists(SMTP_SINK):
        raise Missing("smtp-sink not installed: apt-get install postfix")
    port = free_port()
    args = [SMTP_SINK, "-c"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    proc = subprocess.Popen(
        [*args, f"{HOST}:{port}", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, proc, "smtp-sink")
        yield port
    finally:
        proc.kill()
        proc.wait()


def spooler(db: Path, *transports: TransportConfig) -> Spooler:
    """A spooler on the SQLite store ``db``, which it opens and closes."""
    return Spooler.open(
        SpoolerConfig(transports=transports, policy=POLICY, node="memory"),
        store=SQLiteStore(db),
        idle=AlwaysIdle(),
        close_store=True,
    )


async def wait_state(sp: Spooler, mid: str, expect: MessageState) -> None:
    state = await sp.wait_for(
        mid, (MessageState.SENT, MessageState.FAILED, MessageState.DEFERRED), timeout=DEADLINE
    )
    if state is not expect:
        records = await sp.store.recipients(mid)
        raise RuntimeError(f"message {mid} ended {state}, not {expect}: {records}")


async def only_message(store: SQLiteStore) -> str:
    listed = await store.list_messages(limit=10, now=time.time())
    if len(listed) != 1:
        raise RuntimeError(f"expected one message in the store, found {len(listed)}")
    return listed[0].info.id


# -- the steps ------------------------------------------------------------------------------
Measure = Callable[[], Awaitable[None]]
Run = Callable[[Measure], Awaitable[int]]  # runs a step; the peak RSS growth in bytes


async def step_api(size: int, work: Path, run: Run) -> int:
    async with spooler(work / "store.db") as sp:

        async def go() -> None:
            await sp.submit(message(content_of(work / MESSAGE), "SMTP:rcpt@example.net"))

        return await run(go)


async def step_store_write(size: int, work: Path, run: Run) -> int:
    async with SQLiteStore(work / "store.db") as store:

        async def go() -> None:
            msg = message(content_of(work / MESSAGE), "SMTP:rcpt@example.net")
            await store.submit(msg, now=time.time(), lifetime=3600.0)

        return await run(go)


async def step_memory_store(size: int, work: Path, run: Run) -> int:
    store = MemoryStore()
    await store.open()

    async def go() -> None:
        msg = message(content_of(work / MESSAGE), "SMTP:rcpt@example.net")
        await store.submit(msg, now=time.time(), lifetime=3600.0)
        del msg  # the store's copy and what read_content returns are left
        data = await store.read_content(await _first_id(store))
        assert len(data) == size

    return await run(go)


async def _first_id(store: MemoryStore) -> str:
    listed = await store.list_messages(limit=1, now=time.time())
    return listed[0].info.id


async def step_store_read(size: int, work: Path, run: Run) -> int:
    db = prepare(work, "SMTP:rcpt@example.net")
    async with SQLiteStore(db) as store:
        mid = await only_message(store)

        async def go() -> None:
            data = await store.read_content(mid)
            assert len(data) == size

        return await run(go)


async def step_store_stream(size: int, work: Path, run: Run) -> int:
    db = prepare(work, "SMTP:rcpt@example.net")
    async with SQLiteStore(db) as store:
        mid = await only_message(store)

        async def go() -> None:
            total = 0
            async for chunk in store.iter_content(mid):
                total += len(chunk)
            assert total == size

        return await run(go)


async def step_listener(size: int, work: Path, run: Run) -> int:
    from spoolbox.ingress import ListenerConfig, SubmissionListener

    data = work / MESSAGE
    async with spooler(work / "store.db") as sp:
        listener = SubmissionListener(
            sp.submit, ListenerConfig(port=0, max_message_size=size + 4096)
        )
        await listener.start()
        try:
            port = listener.port

            async def go() -> None:
                client = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "smtp-client", str(port), str(data)
                )
                if await client.wait() != 0:
                    raise RuntimeError(f"the SMTP client failed ({client.returncode})")

            growth = await run(go)
        finally:
            await listener.stop()
        mid = await only_message(sp.store)
        info = await sp.store.get_message(mid)
        assert info.size > size, info
        return growth


def smtp_client(port: int, path: Path) -> None:
    """Send the file at ``path`` (CRLF lines, none starting with a dot) as one message,
    streamed from the file, and expect 250 to the final dot."""
    with socket.create_connection((HOST, port), DEADLINE) as sock, sock.makefile("rb") as replies:

        def expect(code: bytes) -> None:
            while True:
                line = replies.readline()
                if not line.startswith(code):
                    raise RuntimeError(f"expected {code!r}, got {line!r}")
                if line[3:4] == b" ":
                    return

        expect(b"220")
        for command, code in (
            (b"EHLO client.example.org", b"250"),
            (b"MAIL FROM:<>", b"250"),
            (b"RCPT TO:<rcpt@example.net>", b"250"),
            (b"DATA", b"354"),
        ):
            sock.sendall(command + b"\r\n")
            expect(code)
        with open(path, "rb") as fh:
            while chunk := fh.read(65536):
                sock.sendall(chunk)
        sock.sendall(b".\r\n")
        expect(b"250")
        sock.sendall(b"QUIT\r\n")
        expect(b"221")


async def step_relay(size: int, work: Path, run: Run) -> int:
    db = prepare(work, "SMTP:rcpt@example.net")
    with smtp_sink() as port:
        options = {"host": HOST, "port": port, "tls": "none"}
        return await _deliver(db, TransportConfig("smtp", "smtp", options=options), run)


async def step_maildir(size: int, work: Path, run: Run) -> int:
    db = prepare(work, "MAILDIR:box")
    root = work / "mail"
    root.mkdir()
    options = {"root": str(root)}
    growth = await _deliver(db, TransportConfig("local", "maildir", options=options), run)
    (delivered,) = (root / "box" / "new").iterdir()
    assert delivered.stat().st_size > size
    return growth


async def _deliver(db: Path, transport: TransportConfig, run: Run) -> int:
    """Deliver the one message of ``db`` through ``transport``, measured from the
    spooler's start (the claim) to the message's settle (with its reports)."""
    async with SQLiteStore(db) as store:
        mid = await only_message(store)
    sp = spooler(db, transport)

    async def go() -> None:
        async with sp:
            await wait_state(sp, mid, MessageState.SENT)

    return await run(go)


async def step_inbound(size: int, work: Path, run: Run) -> int:
    pickup = work / "pickup"
    for sub in ("tmp", "new", "cur"):
        (pickup / sub).mkdir(parents=True)
    options = {"pickup": str(pickup)}
    sp = spooler(
        work / "store.db", TransportConfig("local", "maildir", options=options, outbound=False)
    )

    async def go() -> None:
        (work / MESSAGE).rename(pickup / "new" / "1.memory")
        async with sp:
            end = time.monotonic() + DEADLINE
            while not await sp.store.list_inbox():
                if time.monotonic() > end:
                    raise RuntimeError("the message did not reach the inbox")
                await asyncio.sleep(0.02)
            (entry,) = await sp.store.list_inbox()
            assert entry.size == size, entry

    return await run(go)


async def step_report(size: int, work: Path, run: Run) -> int:
    db = prepare(work, BAD_MAILDIR)
    root = work / "mail"
    root.mkdir()
    transport = TransportConfig("local", "maildir", options={"root": str(root)})
    async with SQLiteStore(db) as store:
        mid = await only_message(store)
    sp = spooler(db, transport)
    inbox = root / "sender" / "new"

    async def go() -> None:
        async with sp:
            await wait_state(sp, mid, MessageState.FAILED)
            # The report is delivered to the sender's Maildir within the step.
            end = time.monotonic() + DEADLINE
            while not (inbox.is_dir() and any(inbox.iterdir())):
                if time.monotonic() > end:
                    raise RuntimeError(f"the report did not reach {inbox}")
                await asyncio.sleep(0.02)

    growth = await run(go)
    # The whole message returned up to the limit, its header section above it.
    (report,) = inbox.iterdir()
    returned = report.stat().st_size
    assert (returned > size) == (size <= RETURN_SIZE_LIMIT), (returned, size)
    return growth


def _home(work: Path) -> Path:
    home = work / "home"
    subprocess.run(
        [*CLI, "init", "--dir", str(home)], check=True, capture_output=True, timeout=DEADLINE
    )
    profile = home / "spoolbox.toml"
    # SMTP recipients must be routable (they are refused at submit otherwise): a relay
    # that refuses connections (the discard port) keeps them queued, never delivered.
    with profile.open("a") as f:
        f.write(
            '\n[[transports]]\nname = "relay"\nprovider = "smtp"\n'
            'address_types = ["SMTP"]\n[transports.options]\nhost = "127.0.0.1"\nport = 9\n'
        )
    return profile


async def step_client(size: int, work: Path, run: Run) -> int:
    from spoolbox.client import Client

    client = Client(_home(work))

    async def go() -> None:
        # As ``spoolbox submit FILE`` does: the recipients from the To header.
        msg = NewMessage.from_bytes(content_of(work / MESSAGE), notify=Notify.NEVER)
        result = await asyncio.to_thread(client.submit, msg)
        assert result["via"] == "store", result

    return await run(go)


async def step_sendmail(size: int, work: Path, run: Run) -> int:
    from spoolbox.client import Client
    from spoolbox.ingress.sendmail import run_sendmail

    client = Client(_home(work))
    data = work / MESSAGE

    async def submit(msg: NewMessage) -> object:
        return await asyncio.to_thread(client.submit, msg)

    async def go() -> None:
        with open(data, "rb") as stdin:  # noqa: ASYNC230 (stdin, as the command has it)
            code = await run_sendmail(
                ["-i", "rcpt@example.net"],
                stdin,
                submit,
                stderr=sys.stderr,
                max_message_size=size + 4096,
            )
        assert code == 0, code

    return await run(go)


def start_daemon(work: Path, profile: Path) -> subprocess.Popen[bytes]:
    """``spoolbox run`` on ``profile``, answering on its local API."""
    from spoolbox.client import Client

    with open(work / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(
            [*CLI, "--profile", str(profile), "run", "--no-nice"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = Client(profile)
    end = time.monotonic() + DEADLINE
    while not client.running():
        if daemon.poll() is not None or time.monotonic() > end:
            daemon.kill()
            daemon.wait()
            raise RuntimeError(f"the daemon did not start: {(work / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return daemon


async def step_send(size: int, work: Path, run: Run) -> int:
    from spoolbox.cli import cli

    attachment = work / "attachment.bin"
    (work / MESSAGE).rename(attachment)
    profile = _home(work)
    args = ["--profile", str(profile), "send", "--to", "SMTP:rcpt@example.net"]
    args += ["--subject", "memory", "--body", "see the attachment", "--attach", str(attachment)]

    async def go() -> None:
        await asyncio.to_thread(cli.main, args, standalone_mode=False)

    growth = await run(go)
    async with SQLiteStore(profile.parent / "spool.sqlite3") as store:
        info = await store.get_message(await only_message(store))
    assert info.size > size * 4 // 3, info  # the attachment, in base64
    return growth


async def step_daemon(size: int, work: Path, run: Run) -> tuple[int, int]:
    from spoolbox.client import Client

    profile = _home(work)
    daemon = await asyncio.to_thread(start_daemon, work, profile)
    try:
        client = Client(profile)
        base = reset_peak(daemon.pid)

        async def go() -> None:
            msg = message(content_of(work / MESSAGE), "SMTP:rcpt@example.net")
            result = await asyncio.to_thread(client.submit, msg, fallback=False)
            assert result["via"] == "daemon", result

        growth = await run(go)
        return growth, (peak(daemon.pid) - base) * 1024
    finally:
        daemon.terminate()
        await asyncio.to_thread(daemon.wait, DEADLINE)


async def measure(step: str, size: int, work: Path) -> dict[str, Any]:
    async def run(go: Measure) -> int:
        base = reset_peak()
        await go()
        return (peak() - base) * 1024

    write_message(work / MESSAGE, size)
    out: dict[str, Any] = {"step": step, "size": size}
    if step == "daemon":
        out["growth"], out["daemon_growth"] = await step_daemon(size, work, run)
        return out
    fn = globals()["step_" + step.replace("-", "_")]
    out["growth"] = await fn(size, work, run)
    return out


def main(argv: list[str]) -> int:
    if argv[0] == "prepare":
        asyncio.run(_prepare(Path(argv[1]), argv[2]))
        return 0
    if argv[0] == "smtp-client":
        smtp_client(int(argv[1]), Path(argv[2]))
        return 0
    step, size, work = argv[0], int(argv[1]), Path(argv[2])
    if step not in STEPS:
        print(f"unknown step {step!r}; the steps are: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(measure(step, size, work))
    except Missing as exc:
        print(f"skip: {exc}", file=sys.stderr)
        return SKIP
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
