"""One logged-in IMAP connection with the folder selected (aioimaplib), and the
commands the session sends on it: search, sizes, a ranged fetch, delete or move.

Every step runs under the ``timeout`` option; a ranged fetch gets its timeout plus
its announced size at ``_MIN_RATE``.  Connecting covers implicit TLS, STARTTLS
(refused if the server does not offer it) and the login; a refused login or a
folder that cannot be selected is :class:`~spoolbox.contract.FailOneProvider`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

import aioimaplib  # type: ignore[import-untyped]  # no py.typed in 2.0

from spoolbox.contract import FailOneProvider, Support

from .._mailbox import MailboxSettings
from .lines import BUDGET, LineBounded
from .wire import (
    _check,
    _fetch_result,
    _lines,
    _Overrun,
    _ProtocolError,
    _quote,
    _search_result,
    _sizes_result,
    _uid_set,
    _uidvalidity,
)

#: A ranged fetch may take its timeout plus its size at this rate (bytes per second).
_MIN_RATE = 64 * 1024
_RECV_SIZE = 16 * 1024  # bytes per socket read (see _Connection.open)


def _nothing_after(received: bytes, tag: str) -> None:
    """What came with the STARTTLS answer ends with its tagged line: bytes after it,
    sent in the clear, would be read as answers to commands sent under TLS (STARTTLS
    command injection, CVE-2011-0411's kind)."""
    mark = received.find(tag.encode() + b" ")
    end = received.find(b"\n", mark) if mark >= 0 else -1
    if end < 0 or received[end + 1 :]:
        raise _ProtocolError("the server sent data after its STARTTLS answer, before TLS")


class _Connection:
    """One logged-in IMAP connection with the folder selected."""

    def __init__(self, settings: MailboxSettings, support: Support) -> None:
        self.settings = settings
        self.support = support
        self.imap: aioimaplib.IMAP4 | None = None
        self.uidvalidity = 0
        self.capabilities: frozenset[str] = frozenset()
        #: Set when the connection is lost (once it was made): the IDLE watch's wake-up.
        self.lost = asyncio.Event()
        self._bounded: LineBounded | None = None

    async def open(self) -> None:
        s = self.settings
        ctx = s.ssl_context(self.support.logger)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(s.timeout):
            if s.tls == "implicit":
                imap: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                    s.host, s.port, timeout=s.timeout, ssl_context=ctx
                )
            else:
                imap = aioimaplib.IMAP4(s.host, s.port, timeout=s.timeout)
            self.imap = imap
            await imap.wait_hello_from_server()
            proto = imap.protocol
            # aioimaplib's parser gets what arrives a few hundred lines at a time (lines.py).
            bounded = self._bounded = LineBounded(proto, lambda _exc: self.lost.set())
            proto.transport.set_protocol(bounded)
            bounded.attach(proto.transport)
            if isinstance(getattr(proto.transport, "max_size", None), int):
                # aioimaplib parses each chunk it receives by copying the rest of the
                # chunk after every line: quadratic in the chunk size.  asyncio reads
                # up to 256 KiB at a time; smaller reads make a ranged FETCH of many
                # small messages about a third faster (plain sockets only).
                proto.transport.max_size = _RECV_SIZE
            if s.tls == "starttls":
                assert ctx is not None
                if "STARTTLS" not in proto.capabilities:
                    raise FailOneProvider(
                        f"imap {s.where}: the server does not offer STARTTLS (tls = 'starttls')"
                    )
                tag = proto.new_tag()
                cmd = aioimaplib.Command("STARTTLS", tag, loop=proto.loop)
                bounded.record(True)
                _check(await proto.execute(cmd), "STARTTLS")
                _nothing_after(bounded.record(False), tag)
                proto.transport = await loop.start_tls(
                    proto.transport, bounded, ctx, server_hostname=s.host
                )
                bounded.attach(proto.transport)
                await proto.capability()
            resp = await imap.login(s.username, s.password)
        if resp.result != "OK":
            text = b" ".join(x for x in _lines(resp) if isinstance(x, bytes))
            raise FailOneProvider(
                f"imap login to {s.host}:{s.port} as {s.username!r} refused: "
                f"{text.decode(errors='replace')}"
            )
        async with asyncio.timeout(s.timeout):
            await proto.capability()  # the list after login is the one that counts
            self.capabilities = frozenset(c.upper() for c in proto.capabilities)
            resp = await imap.select(_quote(s.folder))
        if resp.result != "OK":
            raise FailOneProvider(f"imap {s.where}: cannot select folder {s.folder!r}")
        self.uidvalidity = _uidvalidity(_lines(resp))
        if not self.uidvalidity:
            raise _ProtocolError(f"imap {s.where}: SELECT gave no UIDVALIDITY")

    @property
    def alive(self) -> bool:
        imap = self.imap
        if imap is None:
            return False
        proto = imap.protocol
        transport = proto.transport
        return (
            transport is not None
            and not transport.is_closing()
            and proto.state == aioimaplib.SELECTED
        )

    def abort(self) -> None:
        """Drop the connection at once (no LOGOUT)."""
        imap, self.imap = self.imap, None
        if imap is None:
            return
        for task in list(imap.tasks) + list(imap.protocol.tasks):
            task.cancel()
        if imap.protocol.transport is not None:
            imap.protocol.transport.close()
        else:
            imap._client_task.cancel()

    async def discard(self) -> None:
        """After a failed or cancelled ``open``: let a connect still in progress end
        (bounded), then close what it made.  Cancelling asyncio's ``create_connection``
        in the middle of a TLS handshake leaks its transport and socket (CPython 3.11),
        which is what a shutdown during a failing logon would otherwise do."""
        imap = self.imap
        task = getattr(imap, "_client_task", None)
        if task is not None and not task.done():
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(min(5.0, self.settings.timeout)):
                    await asyncio.shield(task)
        self.abort()

    async def close(self) -> None:
        """LOGOUT (best effort, bounded), then close; closed even when cancelled during
        the LOGOUT (the transport would otherwise be left to the garbage collector)."""
        imap = self.imap
        try:
            if imap is not None and self.alive:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(min(5.0, self.settings.timeout)):
                        await imap.logout()
        finally:
            try:
                await self.discard()
            finally:
                self.abort()

    def _imap(self) -> aioimaplib.IMAP4:
        if self.imap is None:
            raise _ProtocolError("not connected")
        return self.imap

    async def _answer(self, command: Awaitable[Any], what: str, budget: int = BUDGET) -> Any:
        """``command``'s response, or ConnectionResetError as soon as the server closes
        the connection: aioimaplib leaves a command in flight waiting for its time
        limit then (a server restarted mid-fetch read as a 60 s timeout).  The server
        may send ``budget`` bytes for it (:mod:`.lines`): past that the connection is
        dropped, a _ProtocolError."""
        if self._bounded is not None:
            self._bounded.expect(budget)
        task = asyncio.ensure_future(command)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        overrun = self._bounded.overrun if self._bounded is not None else None
        if overrun is not None:
            raise _Overrun(
                f"the server sent over {overrun[1]} bytes for {what}, more than it "
                "announced: connection dropped"
            )
        if task.cancelled():
            raise ConnectionResetError(f"the server closed the connection during {what}")
        return task.result()

    async def search_uids(self, lo: int, hi: int | None) -> list[int]:
        """UIDs in ``lo:hi`` (``hi`` None = ``*``), really in that range, ascending."""
        rng = f"{lo}:{'*' if hi is None else hi}"
        async with asyncio.timeout(self.settings.timeout):
            # A session sees new mail only at a command boundary (Dovecot evaluates a
            # SEARCH on the view before it and reports EXISTS after it): sync first.
            _check(await self._answer(self._imap().noop(), "NOOP"), "NOOP")
            resp = _check(
                await self._answer(self._imap().uid_search("UID", rng, charset=None), "UID SEARCH"),
                "UID SEARCH",
            )
        # aioimaplib strips "* SEARCH"; the last line is the tagged completion text.
        return _search_result(_lines(resp)[:-1], lo, hi)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """``RFC822.SIZE`` of each of ``uids`` still in the folder (one command)."""
        if not uids:
            return {}
        async with asyncio.timeout(self.settings.timeout):
            what = "UID FETCH RFC822.SIZE"
            command = self._imap().uid("fetch", _uid_set(uids), "(UID RFC822.SIZE)")
            resp = _check(await self._answer(command, what), what)
        return _sizes_result(_lines(resp)[:-1], uids)

    async def fetch_many(self, uids: Sequence[int], size: int = 0) -> dict[int, bytes]:
        """The messages with ``uids`` (one ``UID FETCH``); those gone are absent.
        ``size``: their total size, as announced (RFC822.SIZE), for the time limit.

        Strict: a ``BODY[]`` this cannot pair with its UID and its announced length,
        or a UID that was not asked for, is a :class:`_ProtocolError`."""
        if not uids:
            return {}
        what = f"UID FETCH {_uid_set(uids)}"
        # One time limit for the whole command: the timeout, plus the time the data
        # takes at _MIN_RATE.  (aioimaplib's own limit, "timeout seconds without
        # data", re-arms a timer for every line received: a tenth of the download's
        # CPU time in a profile of 64-message fetches.)
        # A size not known (0: one message fetched alone) keeps aioimaplib's limit.
        if size > 0:
            async with asyncio.timeout(self.settings.timeout + size / _MIN_RATE):
                command = self._imap().protocol.uid(
                    "fetch", _uid_set(uids), "(UID BODY.PEEK[])", timeout=None
                )
                # Twice what the sizes announced (some servers count LF line ends, or
                # round), room for the lines around each literal: a server sending
                # more is not telling the truth about its sizes.
                budget = 2 * size + len(uids) * 4096 + 1024 * 1024
                resp = _check(await self._answer(command, what, budget), what)
        else:
            command = self._imap().uid("fetch", _uid_set(uids), "(UID BODY.PEEK[])")
            resp = _check(await self._answer(command, what), what)
        return _fetch_result(_lines(resp)[:-1], uids, what)  # [-1]: the tagged completion

    async def remove(self, uids: Sequence[int]) -> None:
        """Delete or move ``uids`` as ``after_fetch`` says."""
        s = self.settings
        if not uids or s.after_fetch == "keep":
            return
        imap = self._imap()
        uid_set = _uid_set(uids)
        async with asyncio.timeout(s.timeout):
            if s.after_fetch == "move":
                assert s.move_to is not None
                if "MOVE" in self.capabilities:
                    move = imap.uid("move", uid_set, _quote(s.move_to))
                    _check(await self._answer(move, "UID MOVE"), "UID MOVE")
                    return
                copy = imap.uid("copy", uid_set, _quote(s.move_to))
                _check(await self._answer(copy, "UID COPY"), "UID COPY")
            store = imap.uid("store", uid_set, "+FLAGS.SILENT", r"(\Deleted)")
            _check(await self._answer(store, "UID STORE"), "UID STORE")
            if "UIDPLUS" in self.capabilities:
                expunge = imap.uid("expunge", uid_set)
                _check(await self._answer(expunge, "UID EXPUNGE"), "UID EXPUNGE")
            else:
                _check(await self._answer(imap.expunge(), "EXPUNGE"), "EXPUNGE")
