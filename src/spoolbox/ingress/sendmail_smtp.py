"""``sendmail -bs``: an SMTP session on stdin and stdout (Symfony Mailer's and Laravel's
default way to call sendmail).

No second SMTP server: the session is the submission listener's own connection
(:meth:`SubmissionListener.session`, around the machine of
:mod:`spoolbox.smtp.server`) on a transport made of two asyncio pipe transports, the
read end on stdin and the write end on stdout.  As Postfix's ``sendmail -bs`` does,
the client is the local host (``127.0.0.1``): it may relay, and needs no AUTH.  DATA
is answered ``250`` only after ``submit`` returned (the durable commit), as on the
socket; the process ends when the client quits or closes stdin, after every started
submission has finished.

asyncio's pipe transports take pipes, sockets and terminals; a regular file or a
device on stdin or stdout (``sendmail -bs < session.txt > replies.txt``, or
``< /dev/null``) is copied through a pipe by a thread.  The descriptors are put back
in blocking mode on the way out (a terminal left non-blocking breaks the shell that
started us).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import threading
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar

from ..model import NewMessage
from .listener import ListenerConfig, SubmissionListener, SubmitMany
from .local_names import LocalNames
from .sendmail import EX_OK, Submit

_T = TypeVar("_T")

__all__ = ["serve_smtp_session"]

#: Postfix's sendmail -bs (smtpd in stand-alone mode) takes its client for this
PEER = ("127.0.0.1", 0)


class _Stdio(asyncio.Transport):
    """One duplex transport over a read pipe transport and a write pipe transport."""

    def __init__(self, protocol: asyncio.Protocol, done: asyncio.Future[None]) -> None:
        super().__init__({"peername": PEER, "sockname": PEER})
        self._protocol = protocol
        self._done = done
        self.reader: asyncio.ReadTransport | None = None
        self.writer: asyncio.WriteTransport | None = None
        self._paused = False
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.writer is not None and not self._closing:
            self.writer.write(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            self.writer.close()  # what is buffered is written first, then writer_lost
        else:
            self.writer_lost(None)

    def writer_lost(self, exc: Exception | None) -> None:
        """stdout is closed (by us, or the client went away): the session ends."""
        self._closing = True
        if self.reader is not None:
            self.reader.close()
        if not self._done.done():
            self._protocol.connection_lost(exc)
            self._done.set_result(None)

    def pause_reading(self) -> None:
        self._paused = True
        if self.reader is not None:
            self.reader.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self.reader is not None:
            self.reader.resume_reading()

    def is_reading(self) -> bool:
        return not self._paused

    def attach_reader(self, reader: asyncio.ReadTransport) -> None:
        self.reader = reader
        if self._paused:
            reader.pause_reading()
        if self._closing:
            reader.close()


class _ReadSide(asyncio.Protocol):
    def __init__(self, stdio: _Stdio, protocol: asyncio.Protocol) -> None:
        self._stdio = stdio
        self._protocol = protocol

    def data_received(self, data: bytes) -> None:
        if not self._stdio.is_closing():
            self._protocol.data_received(data)

    def eof_received(self) -> bool:
        if not self._stdio.is_closing() and not self._protocol.eof_received():
            self._stdio.close()
        return True  # the duplex transport decides when to close


class _WriteSide(asyncio.BaseProtocol):
    def __init__(self, stdio: _Stdio, protocol: asyncio.Protocol) -> None:
        self._stdio = stdio
        self._protocol = protocol

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stdio.writer_lost(exc)


def _is_pipe_like(fd: int) -> bool:
    """Whether the event loop can watch ``fd``: a pipe, a socket or a terminal (not a
    regular file, nor a device such as /dev/null: epoll refuses both)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    with src, dst:
        shutil.copyfileobj(src, dst)


@contextlib.contextmanager
def _ends(stdin_fd: int, stdout_fd: int) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Files for asyncio's pipe transports: duplicates of the descriptors, or pipes
    that threads fill from (or drain to) a regular file.  On exit the copy to stdout
    is complete and both descriptors are blocking again."""
    threads: list[threading.Thread] = []
    if _is_pipe_like(stdin_fd):
        reader = os.fdopen(os.dup(stdin_fd), "rb", buffering=0)
    else:
        r, w = os.pipe()
        src = os.fdopen(os.dup(stdin_fd), "rb")
        threads.append(threading.Thread(target=_copy, args=(src, os.fdopen(w, "wb")), daemon=True))
        reader = os.fdopen(r, "rb", buffering=0)
    draining: threading.Thread | None = None
    if _is_pipe_like(stdout_fd):
        writer = os.fdopen(os.dup(stdout_fd), "wb", buffering=0)
    else:
        r, w = os.pipe()
        dst = os.fdopen(os.dup(stdout_fd), "wb")
        draining = threading.Thread(target=_copy, args=(os.fdopen(r, "rb"), dst), daemon=True)
        threads.append(draining)
        writer = os.fdopen(w, "wb", buffering=0)
    for t in threads:
        t.start()
    try:
        yield reader, writer
    finally:
        for f in (reader, writer):
            with contextlib.suppress(OSError):
                f.close()
        if draining is not None:
            draining.join()
        for fd in (stdin_fd, stdout_fd):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)


async def serve_smtp_session(
    submit: Submit,
    *,
    hostname: str,
    max_message_size: int = 25 * 1024 * 1024,
    default_address_type: str = "SMTP",
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    local_names: LocalNames | None = None,
    submit_many: SubmitMany | None = None,
) -> int:
    """Serve one SMTP session on ``stdin_fd``/``stdout_fd``, queueing through ``submit``;
    returns the exit code (0: the session ended, whatever the client did in it).
    ``default_address_type`` is the type of the addresses in MAIL and RCPT, as the
    listener's option of that name; ``local_names`` (the profile's ``[local_names]``)
    makes an address at this host's own name what it stands for, as the listener does;
    ``submit_many`` (all or none in one commit) takes a transaction whose recipients
    ask for different DSN NOTIFYs whole, one message each, as the daemon's listener
    does (without it, such a recipient is ``452 4.5.3``)."""
    pending: set[asyncio.Future[Any]] = set()
    idle = asyncio.Event()
    idle.set()

    def finished(future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        if not pending:
            idle.set()

    def tracked(message: NewMessage) -> Awaitable[object]:
        return track(submit(message))

    def tracked_many(messages: list[NewMessage]) -> Awaitable[Sequence[object]]:
        assert submit_many is not None
        return track(submit_many(messages))

    def track(work: Awaitable[_T]) -> asyncio.Future[_T]:
        # Registered when the listener starts the submission (not when its task first
        # runs): the process must not end before the last one has committed.
        future = asyncio.ensure_future(work)
        pending.add(future)
        idle.clear()
        future.add_done_callback(finished)
        return future

    listener = SubmissionListener(
        tracked,
        ListenerConfig(
            hostname=hostname,
            max_message_size=max_message_size,
            default_address_type=default_address_type,
            port=0,
        ),
        local_names=local_names,
        submit_many=None if submit_many is None else tracked_many,
    )
    protocol = listener.session()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    with _ends(stdin_fd, stdout_fd) as (reader, writer):
        stdio = _Stdio(protocol, done)
        stdio.writer, _ = await loop.connect_write_pipe(lambda: _WriteSide(stdio, protocol), writer)
        protocol.connection_made(stdio)  # the greeting
        read, _ = await loop.connect_read_pipe(lambda: _ReadSide(stdio, protocol), reader)
        stdio.attach_reader(read)
        await done
        await idle.wait()
    return EX_OK
