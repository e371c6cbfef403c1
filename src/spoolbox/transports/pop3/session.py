"""The POP3 session (logon, poll, one POP3 session handing out a batch of messages,
DELE after their commit) and the provider that logs it on.

The module docstring of :mod:`spoolbox.transports.pop3` says what it guarantees;
the connection and its commands live in :mod:`.wire`, the answers' reader in
:mod:`.reader`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from spoolbox.contract import (
    BaseTransportSession,
    FailOneProvider,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    NetworkError,
    SpoolerNotifyFlags,
    StatusCode,
    Support,
)

from .._mailbox import MailboxSettings, fetch_status
from .wire import RETR_SLACK, Connection, LoginRefused, Pop3Error, TooLarge

__all__ = ["POP3Provider", "POP3Session"]

_T = TypeVar("_T")
#: What a failing POP3 step raises (TimeoutError is an OSError).
_FAILED = (OSError, Pop3Error)

_CHUNK = 65536
_RETRY = 30.0
#: One profile key per message in the inbox: ``uidl:<UIDL>``.
KEY = "uidl:"
#: A key's value: the message is in the inbox ...
FETCHED = 1
#: ... and the server listed its UIDL for other messages too: a poll must not delete
#: what it lists under that UIDL (the twins were never fetched).
SHARED = 2
#: The list of UIDLs earlier versions kept under one key; read, and turned into keys
#: at the next poll.
LEGACY = "fetched_uidls"
#: A POP3 session unused this long is ended before the next fetch (servers log a
#: client out after ten minutes at the least, RFC 1939).
SESSION_IDLE = 60.0
#: With ``after_fetch = "delete"``, a session is ended (its DELEs and QUIT) once this
#: many of its messages are committed and none is waiting for its commit: what was
#: committed leaves the server at this pace even from a very large maildrop.
DELETES_PER_SESSION = 256
#: With PIPELINING, up to this many RETRs go in one write (and their messages wait in
#: memory to be handed out), up to PREFETCH_BYTES by LIST's sizes (at least one).
PREFETCH = 32
PREFETCH_BYTES = 4 * 1024 * 1024


@dataclass
class _Fetching:
    """One POP3 session handing out the messages its listing showed, one per
    ``start_message``, fetched a group at a time (``RETR`` pipelined when the server
    allows); the messages committed are deleted (with ``delete``) at its end, DELEs
    and QUIT together."""

    conn: Connection
    todo: deque[tuple[int, str]]  # (number, UIDL) listed, not fetched yet
    sizes: dict[int, int]  # LIST's
    ready: deque[tuple[int, str, bytes]] = field(default_factory=deque)  # fetched
    pending: dict[int, str] = field(default_factory=dict)  # handed out, not committed
    deletes: list[int] = field(default_factory=list)  # committed: DELE at the end
    exhausted: bool = False  # nothing left to hand out: QUIT once nothing is pending
    used: float = field(default_factory=time.monotonic)


class POP3Session(BaseTransportSession):
    """One logon of the POP3 transport; see the module docstring."""

    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.SP_POLL | LogonCaps.SP_INBOUND_BATCH

    def __init__(self, support: Support, settings: MailboxSettings) -> None:
        super().__init__(support)
        self.settings = settings
        self._fetching: _Fetching | None = None
        self._lock = asyncio.Lock()  # one command at a time on the connection
        self.fetched = 0
        self.bytes = 0
        self.sessions = 0  # POP3 sessions opened to fetch
        self.last = ""
        self.last_error = ""
        self.skipped: set[str] = set()  # UIDLs over max_size, this logon
        self.shared: set[str] = set()  # UIDLs listed for several messages, this logon
        # The UIDLs in the inbox as last counted (a status query must not copy the
        # whole section: with keep, it holds a key per message ever fetched).
        self._known: int | None = None

    def __repr__(self) -> str:
        return f"<POP3Session {self.settings.where}>"

    @property
    def _delete(self) -> bool:
        return self.settings.after_fetch == "delete"

    # -- the UIDLs in the inbox ------------------------------------------------------------
    def _fetched(self) -> dict[str, Any]:
        """The UIDLs of the messages already in the inbox, each with its key's value
        (:data:`FETCHED`, or :data:`SHARED`), and the list of an earlier version until
        a poll turns it into keys."""
        section = self.support.profile_section().snapshot()
        uidls = {key[len(KEY) :]: value for key, value in section.items() if key.startswith(KEY)}
        legacy = section.get(LEGACY)
        if isinstance(legacy, list):
            for u in legacy:
                uidls.setdefault(str(u), FETCHED)
        self._known = len(uidls)
        return uidls

    def _in_inbox(self, uidl: str) -> bool:
        """Whether ``uidl`` is in the inbox now (another node of a shared store may
        have fetched it since the listing: the section was read again then)."""
        return self.support.profile_section().get(KEY + uidl) is not None

    async def _prune(self, on_server: Iterable[str]) -> None:
        """Forget the UIDLs no longer on the server, and keep an earlier version's list
        as keys: one commit, only when something changes."""
        section = self.support.profile_section()
        present = set(on_server)
        snapshot = section.snapshot()
        changes: dict[str, Any] = {
            key: None for key in snapshot if key.startswith(KEY) and key[len(KEY) :] not in present
        }
        legacy = snapshot.get(LEGACY)
        if legacy is not None:
            changes[LEGACY] = None
            if isinstance(legacy, list):
                changes.update({KEY + str(u): FETCHED for u in legacy if str(u) in present})
        if changes:
            await section.update(changes)
            self._known = sum(1 for key in section.snapshot() if key.startswith(KEY))

    # -- status -------------------------------------------------------------------------
    def status_object(self) -> Mapping[str, Any]:
        return {
            "server": self.settings.where,
            "tls": self.settings.tls,
            "after_fetch": self.settings.after_fetch,
            "fetched_uidls": len(self._fetched()) if self._known is None else self._known,
            "fetched": self.fetched,
            "bytes": self.bytes,
            "sessions": self.sessions,
            "skipped": len(self.skipped),
            "last_error": self.last_error or None,
        }

    def _status(self) -> None:
        text = fetch_status(self.fetched, self.last, self.last_error)
        self.support.modify_status_row(status_string=text)

    def _skip(self, uidl: str, size: int | str, why: str = "") -> None:
        """A message over ``max_size`` (or, ``why``, empty): left on the server (never
        deleted: its UIDL is never recorded) and not fetched; said once per logon."""
        self.skipped.add(uidl)
        why = why or f"is larger than max_size ({self.settings.max_size})"
        size = f"{size} bytes" if isinstance(size, int) else size
        self.last_error = f"UIDL {uidl} ({size}) {why}: left on the server, not fetched"
        self.support.logger.error("pop3 %s: %s", self.settings.where, self.last_error)
        self._status()

    def _network_error(self, what: str, exc: BaseException) -> NetworkError:
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        self.support.logger.warning("pop3 %s: %s", self.settings.where, self.last_error)
        self._status()
        return NetworkError(_RETRY, f"pop3 {self.settings.where}: {self.last_error}")

    # -- sessions ---------------------------------------------------------------------------
    @staticmethod
    async def _on(conn: Connection, step: Awaitable[_T]) -> _T:
        """``step`` on ``conn``; on any failure the connection is dropped."""
        try:
            return await step
        except BaseException:
            conn.close()
            raise

    async def _connect(self) -> Connection:
        s = self.settings
        conn = Connection(s, s.ssl_context(self.support.logger))
        try:
            await conn.open()
        except LoginRefused as exc:
            raise FailOneProvider(
                f"pop3 login to {s.host}:{s.port} as {s.username!r} refused: {exc}"
            ) from None
        return conn

    def _drop(self) -> None:
        """End the fetching session without QUIT: the DELEs it marked are not applied
        (their UIDLs are recorded: the next poll deletes them)."""
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            fetching.conn.close()

    async def _end(self) -> None:
        """End the fetching session: QUIT (which applies its DELEs) when no message it
        handed out waits for its commit, else drop it."""
        fetching = self._fetching
        if fetching is None:
            return
        if fetching.pending:
            self._drop()
            return
        self._fetching = None
        conn, deletes = fetching.conn, fetching.deletes
        try:
            if deletes:
                await self._on(conn, conn.dele(deletes))
            await self._on(conn, conn.quit())
        except _FAILED as exc:
            if deletes:
                # Still on the server, and their UIDLs recorded: the next poll deletes them.
                self._network_error(
                    f"deleting {len(deletes)} fetched messages (retried at the next poll)", exc
                )

    async def _begin(self) -> _Fetching | None:
        """A new fetching session: its listing, less what is in the inbox already and
        what is over ``max_size``.  None (and QUIT) when nothing is new."""
        conn = await self._connect()
        self.sessions += 1
        listing = await self._on(conn, conn.uidl())
        done = self._fetched()
        self._shared(listing)
        first = {u: n for n, u in reversed(listing)}  # a UIDL listed twice: its first
        todo = [
            (n, u) for n, u in listing if u not in done and u not in self.skipped and first[u] == n
        ]
        if todo:
            sizes = await self._on(conn, conn.sizes())
            for n, u in todo:
                if sizes.get(n, 0) > self.settings.max_size:
                    self._skip(u, sizes[n])
            todo = [(n, u) for n, u in todo if u not in self.skipped]
        if not todo:
            await self._on(conn, conn.quit())
            return None
        self._fetching = _Fetching(conn, deque(todo), sizes)
        return self._fetching

    def _group(self, fetching: _Fetching) -> list[tuple[int, str]]:
        """The next messages to RETR together: up to :data:`PREFETCH` with PIPELINING
        (one without), :data:`PREFETCH_BYTES` by their LIST sizes, none already in the
        inbox."""
        width = PREFETCH if fetching.conn.pipelining else 1
        group: list[tuple[int, str]] = []
        total = 0
        todo = fetching.todo
        while todo and len(group) < width:
            number, uidl = todo[0]
            if self._in_inbox(uidl):
                todo.popleft()
                continue
            size = fetching.sizes.get(number, 0)
            if group and total + size > PREFETCH_BYTES:
                break
            todo.popleft()
            group.append((number, uidl))
            total += size
        return group

    # -- inbound ------------------------------------------------------------------------------
    def _shared(self, listing: list[tuple[int, str]]) -> set[str]:
        """UIDLs the server lists for more than one message (RFC 1939 forbids it): the
        first is fetched (and deleted after its commit, with ``delete``), the others
        never, and a poll deletes none of them, since which one is in the inbox cannot
        be told from the UIDL (its key says :data:`SHARED`, so also once the twin that
        was fetched is gone); said once per logon."""
        counts = collections.Counter(u for _n, u in listing)
        shared = {u for u, c in counts.items() if c > 1}
        new = shared - self.shared
        if new:
            self.shared.update(new)
            self.last_error = (
                f"the server lists UIDL {sorted(new)[0]!r} for {counts[sorted(new)[0]]} "
                f"messages ({len(new)} such UIDLs): only the first is fetched"
            )
            self.support.logger.error("pop3 %s: %s", self.settings.where, self.last_error)
            self._status()
        return shared

    async def _start(self) -> None:
        try:
            conn = await self._connect()
            await self._on(conn, conn.quit())
        except _FAILED as exc:
            raise self._network_error("connect", exc) from exc

    async def poll(self) -> int:
        async with self._lock:
            try:
                await self._end()  # a fetching session sees the maildrop as at its login
                conn = await self._connect()
                listing = await self._on(conn, conn.uidl())
                fetched = self._fetched()
                shared = self._shared(listing)
                left = (
                    [
                        n
                        for n, u in listing
                        if u in fetched and u not in shared and fetched[u] != SHARED
                    ]
                    if self._delete
                    else []
                )
                if left:
                    await self._on(conn, conn.dele(left))
                await self._on(conn, conn.quit())
            except _FAILED as exc:
                raise self._network_error("poll", exc) from exc
            gone = set(left)
            await self._prune(u for n, u in listing if n not in gone)
        if left:
            self.support.logger.info(
                "pop3 %s: deleted %d fetched messages left on the server",
                self.settings.where,
                len(left),
            )
        return len({u for _n, u in listing if u not in fetched and u not in self.skipped})

    async def start_message(self, message: InboundWriter) -> None:
        async with self._lock:
            try:
                fetching = self._fetching
                if fetching is not None and time.monotonic() - fetching.used > SESSION_IDLE:
                    await self._end()
                    fetching = None
                if fetching is None:
                    fetching = await self._begin()
                    if fetching is None:
                        return
                while True:
                    if not fetching.ready:
                        group = self._group(fetching)
                        if not group:
                            fetching.exhausted = True
                            if not fetching.pending:
                                await self._end()
                            return
                        limit = self.settings.max_size + RETR_SLACK
                        try:
                            fetched = await self._on(
                                fetching.conn, fetching.conn.retr([n for n, _u in group], limit)
                            )
                        except TooLarge as exc:
                            # LIST said less, but the server sends more than max_size.
                            # Read no further: the connection goes, the next session
                            # skips the message (and fetches the others again).
                            self._drop()
                            uidl = group[min(exc.index, len(group) - 1)][1]
                            self._skip(
                                uidl,
                                f"over {limit} bytes by its RETR; LIST said less",
                                "is too large",
                            )
                            self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
                            return
                        fetching.ready.extend(
                            (n, u, data) for (n, u), data in zip(group, fetched, strict=True)
                        )
                        fetching.used = time.monotonic()
                    number, uidl, data = fetching.ready.popleft()
                    if not data:
                        self._skip(uidl, 0, "is empty")  # nothing to put in the inbox
                    elif not self._in_inbox(uidl):  # (another node's, since the RETR)
                        break
                # The last one listed: QUIT once it (and the others) are committed.
                fetching.exhausted = not fetching.todo and not fetching.ready
            except _FAILED as exc:
                self._drop()
                raise self._network_error("fetch", exc) from exc
            fetching.pending[number] = uidl
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            await message.write(bytes(view[i : i + _CHUNK]))
        message.set_remote_id(uidl)
        message.set_state(KEY + uidl, SHARED if uidl in self.shared else FETCHED)
        size = len(data)

        async def committed() -> None:
            await self._committed(fetching, number, uidl, size)

        async def rolled_back() -> None:
            await self._rolled_back(fetching, number, uidl)

        message.after_commit(committed)
        message.after_rollback(rolled_back)

    async def _committed(self, fetching: _Fetching, number: int, uidl: str, size: int) -> None:
        self.fetched += 1
        if self._known is not None:
            self._known += 1
        self.bytes += size
        self.last = f"UIDL {uidl} ({size} bytes)"
        async with self._lock:
            fetching.pending.pop(number, None)
            if self._fetching is not fetching:
                # That session ended: the UIDL is recorded, the next poll deletes it.
                self._status()
                return
            if self._delete:
                fetching.deletes.append(number)
            if not fetching.pending and (
                fetching.exhausted
                or (len(fetching.deletes) >= DELETES_PER_SESSION and not fetching.ready)
            ):
                await self._end()
        self._status()

    async def _rolled_back(self, fetching: _Fetching, number: int, uidl: str) -> None:
        """Not in the inbox after all: offered again by this session (or the next)."""
        async with self._lock:
            fetching.pending.pop(number, None)
            if self._fetching is fetching:
                fetching.todo.appendleft((number, uidl))
                fetching.exhausted = False

    async def logoff(self, flags: LogoffFlags) -> None:
        async with self._lock:
            try:
                await self._end()
            except Exception as exc:  # the session ends anyway
                self.support.logger.debug("pop3 %s: QUIT at logoff: %s", self.settings.where, exc)


class POP3Provider:
    """The POP3 transport provider (entry point ``pop3``)."""

    display_name: ClassVar[str] = "POP3"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without logging on (``spoolbox
        check``, and the daemon before it starts): OptionError, ValueError or
        Unconfigured say what is wrong."""
        MailboxSettings.from_config("pop3", config)

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> POP3Session:
        settings = MailboxSettings.from_config("pop3", config)
        session = POP3Session(support, settings)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=settings.describe()
        )
        await session._start()
        session._status()
        return session

    async def shutdown(self) -> None:
        return None
