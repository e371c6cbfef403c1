"""The PostgreSQL store's connections: the DSN, the pool, and one transaction per operation.

:class:`Database` owns a :class:`psycopg_pool.AsyncConnectionPool`.  Opening it first
makes one plain connection (so a wrong host, a refused password or a missing database
fails at once with PostgreSQL's own words, not as a pool time-out), migrates the
schema on it (:func:`.schema.migrate`), then opens the pool.

:meth:`Database.run` runs one operation in one transaction of the kind
:data:`spoolbox.store.operations.OPERATIONS` gives it:

* ``READ``: ``REPEATABLE READ, READ ONLY``, one consistent snapshot;
* ``WRITE``: ``READ COMMITTED``, committed with the server's ``synchronous_commit``
  (durable before the caller resumes, as the profile's database is set up);
* ``PROGRESS``: the same with ``SET LOCAL synchronous_commit = off``: the commit does
  not wait for the WAL flush, yet is ordered before every later durable commit, so a
  server crash can only undo progress (work done again), never an acceptance.

A deadlock or serialization failure (two nodes touching the same rows in an order
the server had to break) rolls the transaction back and runs it again, a few times.
Every other database error becomes a :class:`~spoolbox.store.base.StoreError` that
names the database (:func:`describe`, never the password).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import psycopg
from psycopg import AsyncConnection, errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..base import StoreError
from ..operations import Kind
from . import schema

__all__ = ["Database", "describe"]

log = logging.getLogger("spoolbox.store")

_T = TypeVar("_T")
Conn = AsyncConnection[DictRow]

#: Times a transaction is run again after a deadlock or a serialization failure.
RETRIES: Final = 8
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)


def describe(dsn: str) -> str:
    """The database a DSN names, for messages: ``user@host:port/dbname``, never the
    password (a DSN that does not parse is described without its text)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<a dsn that does not parse>"
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    port = parts.get("port")
    user = parts.get("user")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{parts.get('dbname') or user or ''}"


def _masked(text: str) -> str:
    """libpq's words about a DSN, with each quoted piece that is not an option name
    blanked out: it may be a piece of the password."""
    return re.sub(r'"([^"]*)"', lambda m: m[0] if _OPTION.fullmatch(m[1]) else '"***"', text)


_OPTION = re.compile(r"[a-z_]+")


def _safe(exc: BaseException, dsn_parts: dict[str, object]) -> str:
    """The error's text with the DSN's password blanked out, if it appears."""
    text = str(exc).strip()
    password = dsn_parts.get("password")
    if isinstance(password, str) and password:
        text = text.replace(password, "***")
    return text


class Database:
    """One PostgreSQL database behind a connection pool (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 10.0,
        migrate: bool = True,
    ) -> None:
        try:
            self._parts: dict[str, object] = dict(conninfo_to_dict(dsn))
        except psycopg.Error as exc:
            raise StoreError(
                f"the PostgreSQL dsn does not parse: {_masked(str(exc))} "
                "(a libpq connection string or a postgresql:// URL is expected)"
            ) from None
        self._dsn = dsn
        self.where = describe(dsn)
        self._min, self._max = min_size, max_size
        self._timeout = connect_timeout
        self._migrate = migrate
        self._pool: AsyncConnectionPool[Conn] | None = None
        self.migrated: list[int] = []

    def error(self, doing: str, exc: BaseException) -> StoreError:
        """A StoreError naming the database, what was being done, and what it said."""
        return StoreError(f"PostgreSQL store {self.where}: {doing}: {_safe(exc, self._parts)}")

    async def connect(self) -> Conn:
        """One plain connection (autocommit, rows as dicts), outside the pool."""
        try:
            return await AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, round(self._timeout)),
            )
        except psycopg.Error as exc:
            raise self.error("cannot connect", exc) from None

    async def open(self) -> None:
        conn = await self.connect()
        try:
            if self._migrate:
                self.migrated = await schema.migrate(conn, self.where)
                for version in self.migrated:
                    log.info("store %s: migrated to schema version %d", self.where, version)
            elif (version := await schema.version_of(conn, self.where)) < schema.SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL store {self.where} is at schema version {version}, "
                    f"this spoolbox needs {schema.SCHEMA_VERSION}: "
                    "run `spoolbox store migrate`"
                )
        except psycopg.Error as exc:
            raise self.error("cannot prepare the schema", exc) from None
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._dsn,
            connection_class=AsyncConnection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=self._min,
            max_size=self._max,
            timeout=self._timeout,
            open=False,
            name=f"spoolbox {self.where}",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise self.error("cannot open the connection pool", exc) from None
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def run(self, kind: Kind, what: str, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """``fn`` in one transaction of ``kind``, run again after a deadlock."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL store {self.where} is not open: call open() first")
        delay = 0.005
        for attempt in range(RETRIES + 1):
            try:
                async with pool.connection() as conn, conn.transaction():
                    if kind is Kind.READ:
                        await conn.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                        )
                    elif kind is Kind.PROGRESS:
                        await conn.execute("SET LOCAL synchronous_commit = off")
                    return await fn(conn)
            except _RETRYABLE as exc:
                if attempt == RETRIES:
                    raise self.error(f"{what} failed {RETRIES + 1} times", exc) from None
                log.debug("store %s: %s rolled back (%s); again", self.where, what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
            except PoolTimeout as exc:
                raise self.error(f"{what}: no connection", exc) from None
            except psycopg.Error as exc:
                raise self.error(what, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover
