"""The IMAP session: logon, poll, fetch ahead, hand out, remove after the commit (the
provider that logs it on is :mod:`.provider`).

The module docstring of :mod:`spoolbox.transports.imap` says what it guarantees;
the connection (:mod:`.connection`), the durable record (:mod:`.state`) and IDLE
(:mod:`.idle`) live apart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import aioimaplib  # type: ignore[import-untyped]  # no py.typed in 2.0

from spoolbox.contract import (
    BaseTransportSession,
    FailOneProvider,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    NetworkError,
    Progress,
    SpoolerNotifyFlags,
    Support,
    TransportNotifyFlags,
)

from .._mailbox import MailboxSettings, fetch_status
from .connection import _Connection
from .idle import _IdleWatch
from .state import (
    LAST_UID,
    UIDVALIDITY,
    changed_from,
    restart_update,
    skip_update,
    skipped_uids,
    watermark,
)
from .wire import _Overrun, _ProtocolError

__all__ = ["IMAPSession"]

_CHUNK = 65536
_RETRY = 30.0  # NetworkError delay: the spooler's own back-off decides in practice
#: Messages fetched per ``UID FETCH`` command, at most, and their bytes (a message
#: larger than this comes alone).
_FETCH_BATCH = 64
_FETCH_BYTES = 8 * 1024 * 1024


class IMAPSession(BaseTransportSession):
    """One logon of the IMAP transport; see the module docstring."""

    # SP_INBOUND_BATCH: start_message keeps track of what it handed out (_inflight)
    # until after_commit / after_rollback, so it may be called again before a commit.
    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.SP_POLL | LogonCaps.SP_INBOUND_BATCH

    def __init__(self, support: Support, settings: MailboxSettings) -> None:
        super().__init__(support)
        self.settings = settings
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()  # one command sequence at a time on the connection
        self._queue: collections.deque[int] = collections.deque()  # UIDs from the last search
        # Fetched, not handed out yet: (uidvalidity, uid, content), ascending.
        self._buffer: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._inflight: list[int] = []  # handed out, neither committed nor rolled back
        self._removing: list[int] = []  # committed, to delete or move
        self._prefetch: asyncio.Task[None] | None = None  # the next range, while we commit
        self._idle = _IdleWatch(settings, support)
        self._warned_validity: int | None = None
        self.fetched = 0
        self.bytes = 0
        self.skipped: set[tuple[int, int]] = set()  # (uidvalidity, uid) left on the server
        # (uidvalidity, uid) of a fetch the server sent more for than it announced:
        # fetched one at a time from then on, so that the one that lies is found.
        self._alone: set[tuple[int, int]] = set()
        self.last = ""
        self.last_error = ""
        self._flushing = False
        self._flush_total: int | None = None
        self._flush_done = 0
        self._flush_bytes = 0

    def __repr__(self) -> str:
        return f"<IMAPSession {self.settings.where}>"

    # -- status ------------------------------------------------------------------------
    @property
    def idle_state(self) -> str:
        """What IDLE is doing: off, idling, not offered, failed (the status object's)."""
        return self._idle.state

    def status_object(self) -> Mapping[str, Any]:
        section = self.support.profile_section()
        return {
            "server": self.settings.where,
            "tls": self.settings.tls,
            "after_fetch": self.settings.after_fetch,
            "uidvalidity": section.get(UIDVALIDITY),
            "last_uid": section.get(LAST_UID),
            "fetched": self.fetched,
            "bytes": self.bytes,
            "skipped": len(self.skipped),
            "idle": self.idle_state,
            "last_error": self.last_error or None,
        }

    def _status(self) -> None:
        text = fetch_status(self.fetched, self.last, self.last_error)
        self.support.modify_status_row(status_string=text)

    async def _skip(self, uidvalidity: int, uid: int, size: int, *, lied: bool = False) -> None:
        """A message over ``max_size`` (or, ``lied``, one the server sent more for than
        its announced size): left on the server, never fetched, said once per logon.
        Its UID is recorded durably before anything after it is handed out, because
        the watermark passes it then, and the removal of what lies at or below the
        watermark (``_cleanup``) must leave it alone."""
        if (uidvalidity, uid) in self.skipped:
            return
        section = self.support.profile_section()
        update = skip_update(section, uidvalidity, uid)
        if update is not None:
            await section.update(update)
        self.skipped.add((uidvalidity, uid))
        self._alone.discard((uidvalidity, uid))
        if lied:
            self.last_error = (
                f"UID {uid}: the server sent far more than the {size} bytes it announced "
                "(RFC822.SIZE): left on the server, not fetched"
            )
        else:
            self.last_error = (
                f"UID {uid} ({size} bytes) is larger than max_size "
                f"({self.settings.max_size}): left on the server, not fetched"
            )
        self.support.logger.error("imap %s: %s", self.settings.where, self.last_error)
        self._status()

    def _error(self, text: str) -> None:
        self.last_error = text
        self.support.logger.warning("imap %s: %s", self.settings.where, text)
        self._status()

    # -- the watermark -------------------------------------------------------------------
    def _watermark(self, uidvalidity: int) -> int:
        """The committed ``last_uid`` if it belongs to ``uidvalidity``, else 0."""
        section = self.support.profile_section()
        stored = changed_from(section, uidvalidity)
        if stored is not None and self._warned_validity != uidvalidity:
            self._warned_validity = uidvalidity
            self._error(
                f"UIDVALIDITY of {self.settings.folder} changed from {stored} to "
                f"{uidvalidity}: starting again from UID 0 (messages still in the folder "
                "are fetched again)"
            )
        return watermark(section, uidvalidity)

    # -- the connection -------------------------------------------------------------------
    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        if conn is not None:
            conn.abort()
            self._conn = None
        conn = _Connection(self.settings, self.support)
        try:
            await conn.open()
        except BaseException:
            await conn.discard()
            raise
        self._conn = conn
        return conn

    def _network_error(self, what: str, exc: BaseException) -> NetworkError:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
        # (the private errors of .wire without their underscore: "ProtocolError: ...")
        name = type(exc).__name__.lstrip("_")
        text = f"{what}: {name}: {exc}" if str(exc) else f"{what}: {exc!r}"
        self._error(text)
        return NetworkError(_RETRY, f"imap {self.settings.where}: {text}")

    async def _start(self) -> None:
        """Logon: connect (checks the credentials) and finish removals a crash cut off."""
        try:
            conn = await self._connection()
        except FailOneProvider:
            raise
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            raise self._network_error("connect", exc) from exc
        section = self.support.profile_section()
        if changed_from(section, conn.uidvalidity) is not None:
            self._watermark(conn.uidvalidity)  # warns
            await section.update(restart_update(conn.uidvalidity))
        async with self._lock:
            await self._cleanup()

    async def _cleanup(self) -> None:
        """Remove messages at or below the watermark still in the folder (after a crash
        between a commit and its removal, or a removal that failed)."""
        if self.settings.after_fetch == "keep":
            return
        try:
            conn = await self._connection()
            w = self._watermark(conn.uidvalidity)
            if w <= 0:
                return
            skipped = skipped_uids(self.support.profile_section(), conn.uidvalidity)
            left = [u for u in await conn.search_uids(1, w) if u not in skipped]
            if left:
                await conn.remove(left)
                self.support.logger.info(
                    "imap %s: removed %d fetched messages left on the server",
                    self.settings.where,
                    len(left),
                )
        except FailOneProvider:
            raise
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            raise self._network_error("removing fetched messages", exc) from exc

    # -- inbound ---------------------------------------------------------------------------
    def _handed_out(self, watermark: int) -> int:
        """The highest UID that is committed or on its way to the inbox: the spooler
        may call ``start_message`` again before it committed the earlier messages."""
        return max(watermark, self._inflight[-1]) if self._inflight else watermark

    async def poll(self) -> int:
        async with self._lock:
            await self._cleanup()
            try:
                conn = await self._connection()
                w = self._handed_out(self._watermark(conn.uidvalidity))
                buffered = {uid for _v, uid, _data in self._buffer}
                found = await conn.search_uids(w + 1, None)
                self._queue = collections.deque(u for u in found if u not in buffered)
            except FailOneProvider:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
                raise self._network_error("poll", exc) from exc
            self._removing.clear()  # the cleanup removed them (all are <= last_uid)
            return len(self._queue) + len(self._buffer)

    async def _fill(self, conn: _Connection) -> None:
        """Fetch the next UIDs of the queue into the buffer: at most _FETCH_BATCH
        messages and _FETCH_BYTES (a larger message comes alone), one UID FETCH."""
        queue = self._queue
        v = conn.uidvalidity
        # Skipped before (over max_size, or a server's lie), this logon or an earlier one.
        skipped = skipped_uids(self.support.profile_section(), v)
        while queue and not self._buffer:
            head = [queue[i] for i in range(min(_FETCH_BATCH, len(queue)))]
            sizes = await conn.sizes(head)
            take: list[int] = []
            total = 0
            for uid in head:
                size = sizes.get(uid)
                if size is None or uid in skipped:
                    continue  # gone from the folder meanwhile, or left there
                if size > self.settings.max_size:
                    await self._skip(v, uid, size)
                    continue
                alone = (v, uid) in self._alone
                if take and (alone or total + size > _FETCH_BYTES):
                    break
                take.append(uid)
                total += size
                if alone:
                    break
            try:
                got = await conn.fetch_many(take, total) if take else {}
            except _Overrun:
                # One of them is much larger than the server says: fetched alone from
                # now on, and the one that does it again is left on the server, so the
                # rest of the mailbox is not held behind it at every poll.
                if len(take) > 1:
                    self._alone.update((v, uid) for uid in take)
                    raise
                await self._skip(v, take[0], total, lied=True)
                skipped.add(take[0])
                conn = await self._connection()  # the server's connection was cut: anew
                if conn.uidvalidity != v:
                    return  # the folder changed meanwhile: the caller sees it next
                continue
            if queue is not self._queue:
                return  # a rollback rebuilt the queue meanwhile: these UIDs are in it again
            # Everything up to the last UID asked for is done with: fetched now, or gone.
            last = take[-1] if take else head[-1]
            while queue and queue[0] <= last:
                queue.popleft()
            self._alone.difference_update((v, uid) for uid in take)
            self._buffer.extend((v, uid, got[uid]) for uid in take if got.get(uid))

    async def _prefetch_next(self) -> None:
        """The next range into the buffer, in the background (under the connection's
        lock, so start_message waits for it).  A failure here is only logged: the
        next start_message fetches again and reports it."""
        try:
            async with self._lock:
                if self._buffer or not self._queue:
                    return
                conn = await self._connection()
                await self._fill(conn)
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            self._network_error("fetching ahead (retried)", exc)
        finally:
            self._prefetch = None

    async def _stop_prefetch(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None and not task.done():
            task.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                if self._conn is not None:
                    self._conn.abort()  # cut mid-response: the session is out of step
                    self._conn = None

    async def _remove_committed(self, conn: _Connection) -> None:
        """Delete or move the committed messages collected so far, in one go."""
        uids, self._removing = sorted(self._removing), []
        if not uids:
            return
        try:
            await conn.remove(uids)
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            # Left on the server: the next poll removes them (they are <= last_uid).
            self._network_error(f"removing {len(uids)} fetched messages (retried at poll)", exc)

    async def start_message(self, message: InboundWriter) -> None:
        async with self._lock:
            try:
                conn = await self._connection()
                if self._removing and (not self._buffer or len(self._removing) >= _FETCH_BATCH):
                    await self._remove_committed(conn)
                    conn = await self._connection()
                v = conn.uidvalidity
                w = self._handed_out(self._watermark(v))
                if self._buffer and self._buffer[0][0] != v:
                    self._buffer.clear()  # fetched under another UIDVALIDITY
                # The queue is sorted: drop what the watermark passed from the front
                # (constant time per message, not a pass over the whole list).
                queue = self._queue
                while queue and queue[0] <= w:
                    queue.popleft()
                self._drop_passed(w)
                if not queue and not self._buffer:
                    self._queue = queue = collections.deque(await conn.search_uids(w + 1, None))
                await self._fill(conn)
                self._drop_passed(w)
            except FailOneProvider:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
                raise self._network_error("fetch", exc) from exc
            if not self._buffer:
                return
            v, uid, data = self._buffer.popleft()
            self._inflight.append(uid)
            more = bool(self._buffer or self._queue)
            if not self._buffer and self._queue and self._prefetch is None:
                # The last message fetched is handed out: fetch the next range now, so
                # that Dovecot's answer comes while the spooler commits this batch.
                self._prefetch = asyncio.create_task(
                    self._prefetch_next(), name=f"{self.support.transport_name}-imap-prefetch"
                )

        def rolled_back() -> None:
            self._rolled_back(uid)

        # Registered before anything can fail: if the message does not end in the
        # inbox, its UID goes back to the queue (else a later commit would pass it).
        message.after_rollback(rolled_back)
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            await message.write(bytes(view[i : i + _CHUNK]))
        message.set_remote_id(f"{v}:{uid}")
        message.set_state(UIDVALIDITY, v)
        message.set_state(LAST_UID, uid)
        size = len(data)

        async def committed() -> None:
            await self._committed(uid, size, more)

        message.after_commit(committed)

    def _drop_passed(self, watermark: int) -> None:
        """Drop fetched messages the watermark has passed: another node of a shared
        store fetched them while this one did not hold the mailbox (its state was read
        again since), here prefetched before that."""
        while self._buffer and self._buffer[0][1] <= watermark:
            self._buffer.popleft()

    def _rolled_back(self, uid: int) -> None:
        """after_rollback: not in the inbox after all; offer it again, before anything
        fetched after it (the buffer goes back to the queue too)."""
        with contextlib.suppress(ValueError):
            self._inflight.remove(uid)
        again = {uid} | {u for _v, u, _data in self._buffer} | set(self._queue)
        self._buffer.clear()
        # A new deque, not the old one refilled: a fetch in flight (_fill) sees that
        # the queue it took its UIDs from is gone, and drops what it fetched.
        self._queue = collections.deque(sorted(again))

    async def _committed(self, uid: int, size: int, more: bool) -> None:
        """after_commit: the message is in the inbox; remove it from the server (with
        the others of its batch, at the next fetch or poll)."""
        with contextlib.suppress(ValueError):
            self._inflight.remove(uid)
        self.fetched += 1
        self.bytes += size
        self.last = f"UID {uid} ({size} bytes)"
        # The status row once per committed batch (or when nothing more is waiting),
        # not once per message.
        show = not self._inflight or not more
        if self._flushing:
            self._flush_done += 1
            self._flush_bytes += size
        if self._flushing and show:
            self.support.modify_status_row(
                progress=Progress(
                    self._flush_done,
                    self._flush_total,
                    self._flush_bytes,
                    None,
                    f"fetched {self._flush_done} from {self.settings.where}",
                )
            )
        if self.settings.after_fetch != "keep":
            self._removing.append(uid)
            # Removed in groups: here when nothing more was waiting (the end of a
            # download) or a group is full, else at the next fetch or poll.
            if not more or len(self._removing) >= _FETCH_BATCH:
                async with self._lock:
                    try:
                        conn = await self._connection()
                    except Exception as exc:
                        self._network_error("reconnecting to remove fetched messages", exc)
                    else:
                        await self._remove_committed(conn)
        if show:
            self._status()
        if more and not self._flushing and not self._inflight:
            self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)

    # -- notifications ----------------------------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        f = TransportNotifyFlags
        if flags & f.BEGIN_INBOUND_FLUSH:
            self._flushing = True
            self._flush_done = self._flush_bytes = 0
            self._flush_total = len(self._queue) + len(self._buffer) or None
        if flags & f.END_INBOUND_FLUSH:
            self._flushing = False
        if flags & f.BEGIN_INBOUND and self.settings.idle:
            self._idle.start(self._conn)
        if flags & f.END_INBOUND:
            await self._idle.stop()

    # -- logoff ---------------------------------------------------------------------------
    async def logoff(self, flags: LogoffFlags) -> None:
        await self._idle.stop()
        await self._stop_prefetch()
        conn, self._conn = self._conn, None
        if conn is not None:
            if flags & LogoffFlags.HURRY:
                conn.abort()
            else:
                if self._removing and conn.alive:
                    async with self._lock:
                        self._conn = conn
                        await self._remove_committed(conn)
                        self._conn = None
                await conn.close()
