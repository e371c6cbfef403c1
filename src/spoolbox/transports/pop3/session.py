"""The POP3 session (logon, poll, fetch one message per session, DELE after the
commit) and the provider that logs it on.

The module docstring of :mod:`spoolbox.transports.pop3` says what it guarantees;
the blocking poplib steps live in :mod:`.wire`.
"""

from __future__ import annotations

import poplib
from collections.abc import Mapping
from typing import Any, ClassVar

from spoolbox.contract import (
    BaseTransportSession,
    FailOneProvider,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    NetworkError,
    StatusCode,
    Support,
)

from .._mailbox import MailboxSettings, fetch_status
from .wire import (
    _close,
    _dele,
    _LoginRefused,
    _open,
    _quit,
    _retr,
    _sizes,
    _uidl,
)

__all__ = ["POP3Provider", "POP3Session"]

_CHUNK = 65536
_RETRY = 30.0
_STATE = "fetched_uidls"


class POP3Session(BaseTransportSession):
    """One logon of the POP3 transport; see the module docstring."""

    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.SP_POLL

    def __init__(self, support: Support, settings: MailboxSettings) -> None:
        super().__init__(support)
        self.settings = settings
        self._held: poplib.POP3 | None = None  # a delete session waiting for its commit
        self.fetched = 0
        self.bytes = 0
        self.last = ""
        self.last_error = ""
        self.skipped: set[str] = set()  # UIDLs over max_size, this logon

    def __repr__(self) -> str:
        return f"<POP3Session {self.settings.where}>"

    # -- status -------------------------------------------------------------------------
    def _fetched(self) -> list[str]:
        value = self.support.profile_section().get(_STATE, [])
        return [str(u) for u in value] if isinstance(value, list) else []

    def status_object(self) -> Mapping[str, Any]:
        return {
            "server": self.settings.where,
            "tls": self.settings.tls,
            "after_fetch": self.settings.after_fetch,
            "fetched_uidls": len(self._fetched()),
            "fetched": self.fetched,
            "bytes": self.bytes,
            "skipped": len(self.skipped),
            "last_error": self.last_error or None,
        }

    def _status(self) -> None:
        text = fetch_status(self.fetched, self.last, self.last_error)
        self.support.modify_status_row(status_string=text)

    def _skip(self, uidl: str, size: int) -> None:
        """A message over ``max_size``: left on the server (never deleted: it is not
        in ``fetched_uidls``) and not fetched; said once per logon."""
        self.skipped.add(uidl)
        self.last_error = (
            f"UIDL {uidl} ({size} bytes) is larger than max_size ({self.settings.max_size}): "
            "left on the server, not fetched"
        )
        self.support.logger.error("pop3 %s: %s", self.settings.where, self.last_error)
        self._status()

    def _network_error(self, what: str, exc: BaseException) -> NetworkError:
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        self.support.logger.warning("pop3 %s: %s", self.settings.where, self.last_error)
        self._status()
        return NetworkError(_RETRY, f"pop3 {self.settings.where}: {self.last_error}")

    # -- sessions ---------------------------------------------------------------------------
    async def _run(self, conn: poplib.POP3, fn: Any, *args: object) -> Any:
        """``fn(conn, *args)`` in a worker; on any failure the connection is dropped."""
        try:
            return await self.support.run_blocking(fn, conn, *args)
        except BaseException:
            _close(conn)
            raise

    async def _connect(self) -> poplib.POP3:
        self._drop_held()
        s = self.settings
        ctx = s.ssl_context(self.support.logger)
        try:
            conn: poplib.POP3 = await self.support.run_blocking(_open, s, ctx)
        except _LoginRefused as exc:
            raise FailOneProvider(
                f"pop3 login to {s.host}:{s.port} as {s.username!r} refused: {exc}"
            ) from None
        return conn

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            _close(held)  # its message was not committed: no QUIT, nothing deleted

    # -- inbound ------------------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            conn = await self._connect()
            await self._run(conn, _quit)
        except (OSError, poplib.error_proto) as exc:
            raise self._network_error("connect", exc) from exc

    async def poll(self) -> int:
        try:
            conn = await self._connect()
            listing = await self._run(conn, _uidl)
            fetched = set(self._fetched())
            left = [n for n, u in listing if u in fetched]
            if left and self.settings.after_fetch == "delete":
                await self._run(conn, _dele, left)
            await self._run(conn, _quit)
        except (OSError, poplib.error_proto) as exc:
            raise self._network_error("poll", exc) from exc
        if left and self.settings.after_fetch == "delete":
            self.support.logger.info(
                "pop3 %s: deleted %d fetched messages left on the server",
                self.settings.where,
                len(left),
            )
        return sum(1 for _n, u in listing if u not in fetched and u not in self.skipped)

    async def start_message(self, message: InboundWriter) -> None:
        try:
            conn = await self._connect()
            listing: list[tuple[int, str]] = await self._run(conn, _uidl)
            fetched = self._fetched()
            done = set(fetched)
            todo = [(n, u) for n, u in listing if u not in done and u not in self.skipped]
            if todo:
                sizes: dict[int, int] = await self._run(conn, _sizes)
                for n, u in todo:
                    if sizes.get(n, 0) > self.settings.max_size:
                        self._skip(u, sizes[n])
                todo = [(n, u) for n, u in todo if u not in self.skipped]
            if not todo:
                await self._run(conn, _quit)
                return
            number, uidl = todo[0]
            data: bytes = await self._run(conn, _retr, number)
            if self.settings.after_fetch == "keep":
                await self._run(conn, _quit)
            else:
                self._held = conn
        except (OSError, poplib.error_proto) as exc:
            raise self._network_error("fetch", exc) from exc
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            await message.write(bytes(view[i : i + _CHUNK]))
        if not data:
            self._drop_held()
            return
        on_server = {u for _n, u in listing}
        message.set_remote_id(uidl)
        message.set_state(_STATE, [u for u in fetched if u in on_server] + [uidl])
        size = len(data)

        async def committed() -> None:
            await self._committed(conn, number, uidl, size)

        message.after_commit(committed)

    async def _committed(self, conn: poplib.POP3, number: int, uidl: str, size: int) -> None:
        self.fetched += 1
        self.bytes += size
        self.last = f"UIDL {uidl} ({size} bytes)"
        if self._held is conn:
            self._held = None
            try:
                await self._run(conn, _dele, [number])
                await self._run(conn, _quit)
            except (OSError, poplib.error_proto) as exc:
                # Still on the server, and its UIDL is recorded: the next poll deletes it.
                self._network_error(f"deleting {uidl} (retried at the next poll)", exc)
                return
        self._status()

    async def logoff(self, flags: LogoffFlags) -> None:
        self._drop_held()


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
