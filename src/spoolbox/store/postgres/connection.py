"""The PostgreSQL store's connections: the DSN, the pool, and one transaction per operation.

:class:`Database` owns two pools (:class:`psycopg_pool.AsyncConnectionPool`).  Opening it first
makes one plain connection (so a wrong host, a refused password or a missing database
fails at once with PostgreSQL's own words, not as a pool time-out), migrates the
schema on it (:func:`.schema.migrate`), then opens the pools.

:meth:`Database.run` runs one operation in one transaction of the kind
:data:`spoolbox.store.operations.OPERATIONS` gives it:

* ``READ``: ``REPEATABLE READ, READ ONLY``, one consistent snapshot (said in the
  ``BEGIN`` itself: no statement of its own);
* ``WRITE``: ``READ COMMITTED``, committed with the server's ``synchronous_commit``
  (durable before the caller resumes, as the profile's database is set up);
* ``PROGRESS``: the same on a connection of the *progress pool*, whose connections
  were set up once with ``SET synchronous_commit = off``: the commit does not wait for
  the WAL flush, yet is ordered before every later durable commit, so a server crash
  can only undo progress (work done again), never an acceptance.  Two pools rather
  than a ``SET LOCAL`` in each transaction: one round trip fewer per progress
  transaction.  Acceptances never run on the progress pool.

``run(..., pipelined=True)`` sends the transaction in psycopg's pipeline mode, its
``BEGIN`` and ``COMMIT`` as statements of the pipeline: the server is waited for only
where the function reads an answer and once at the end, so a group of submits or
settles takes two round trips however many it holds (:mod:`.submits`,
:mod:`.settles`).  (psycopg's own ``transaction()`` inside a pipeline waits after
its ``BEGIN`` and after its ``COMMIT``.)  A function written for it sends every
statement before it reads the first answer, and reads ``rowcount`` only after the
rows.

:meth:`Database.run_batch` runs several calls in one transaction (group commit):
all together first, without savepoints; only if one of them fails is the
transaction rolled back and run again with each call in a savepoint of its own, so
that a failure fails only its caller (savepoints cost two round trips per call).

Every statement and round trip is counted (:class:`Counts`, the store's
``statistics()``): a cursor class of ours counts ``execute`` (one statement, one
round trip) and ``executemany`` (one statement per row, one round trip: psycopg
pipelines it), :meth:`Database.run` the ``BEGIN`` and the ``COMMIT`` or ``ROLLBACK``,
:func:`savepoint` its ``SAVEPOINT`` and ``RELEASE``.  Not counted: the ``DEALLOCATE
ALL`` psycopg sends after a rollback when it had prepared statements (psycopg
prepares a statement on a connection once it has run it 5 times).

A deadlock or serialization failure (two nodes touching the same rows in an order
the server had to break) rolls the transaction back and runs it again, a few times.
Every other database error becomes a :class:`~spoolbox.store.base.StoreError` that
names the database (:func:`describe`, never the password).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar, cast

import psycopg
from psycopg import AsyncConnection, AsyncCursor, AsyncPipeline, IsolationLevel, errors
from psycopg.abc import Params, Query
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..base import StoreError, StoreFull
from ..operations import Kind
from . import schema
from .arrays import ADAPTERS

__all__ = ["AfterCommit", "Counts", "Database", "describe", "savepoint"]

log = logging.getLogger("spoolbox.store")

_T = TypeVar("_T")
Conn = AsyncConnection[DictRow]
_Self = TypeVar("_Self", bound="_Cursor")

#: Times a transaction is run again after a deadlock or a serialization failure.
RETRIES: Final = 8
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)


class Counts:
    """What one store sent to PostgreSQL: transactions, statements (``BEGIN``,
    ``COMMIT``, savepoints included; a row of ``executemany`` counts as one), and
    round trips (each a wait for the server's answer)."""

    __slots__ = ("round_trips", "statements", "transactions")

    def __init__(self) -> None:
        self.transactions = 0
        self.statements = 0
        self.round_trips = 0

    def add(self, statements: int, round_trips: int) -> None:
        self.statements += statements
        self.round_trips += round_trips

    def as_dict(self) -> dict[str, int]:
        return {
            "transactions": self.transactions,
            "statements": self.statements,
            "round_trips": self.round_trips,
        }


class _Connection(AsyncConnection[DictRow]):
    """A pooled connection: it knows its store's :class:`Counts` (set by the pool's
    ``configure``), and whether :meth:`Database.run` has it in pipeline mode."""

    counts: Counts | None = None
    pipelined: bool = False


def _tally(conn: Any, statements: int, round_trips: int) -> None:
    counts = getattr(conn, "counts", None)
    if isinstance(counts, Counts):
        counts.add(statements, round_trips)


def _pipelined(conn: Any) -> bool:
    return bool(getattr(conn, "pipelined", False))


class _Cursor(AsyncCursor[DictRow]):
    """psycopg's cursor, counting statements and round trips (:class:`Counts`).

    In pipeline mode a statement is only queued; the round trip is counted where
    the caller waits for an answer: a fetch of a result not yet read."""

    async def execute(
        self: _Self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> _Self:
        _tally(self.connection, 1, 0 if _pipelined(self.connection) else 1)
        # (Any: psycopg overloads execute for template strings, which take no params.)
        return await super().execute(cast(Any, query), params, prepare=prepare, binary=binary)

    async def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        rows = list(params_seq)
        # psycopg sends the rows in one pipeline (one wait) where libpq has pipelines.
        waits = 1 if _PIPELINES else len(rows)
        _tally(self.connection, len(rows), 0 if _pipelined(self.connection) else waits)
        await super().executemany(query, rows, returning=returning)

    async def fetchone(self) -> DictRow | None:
        self._count_wait()
        return await super().fetchone()

    async def fetchall(self) -> list[DictRow]:
        self._count_wait()
        return await super().fetchall()

    def _count_wait(self) -> None:
        # In a pipeline, a fetch of a result not read yet waits for the server.
        if self.pgresult is None and _pipelined(self.connection):
            _tally(self.connection, 0, 1)


_PIPELINES: Final = AsyncPipeline.is_supported()
_INTRANS: Final = TransactionStatus.INTRANS
_INERROR: Final = TransactionStatus.INERROR


@asynccontextmanager
async def savepoint(conn: Conn) -> AsyncIterator[None]:
    """A savepoint (psycopg's nested ``transaction()``), counted: ``SAVEPOINT`` and
    ``RELEASE`` (``ROLLBACK TO`` too when the block fails), a round trip each."""
    _tally(conn, 2, 2)
    try:
        async with conn.transaction():
            yield
    except BaseException:
        _tally(conn, 1, 1)
        raise


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
    """The error's text on one line (libpq's hints come on lines of their own), with
    the DSN's password blanked out, if it appears."""
    text = " ".join(str(exc).split())
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
        self._progress: AsyncConnectionPool[Conn] | None = None
        self.migrated: list[int] = []
        self.counts = Counts()

    def error(self, doing: str, exc: BaseException) -> StoreError:
        """A StoreError naming the database, what was being done, and what it said: a
        :class:`~spoolbox.store.StoreFull` when the server's disk is full (SQLSTATE
        53100, ``disk_full``: the transaction was rolled back)."""
        kind = StoreFull if isinstance(exc, errors.DiskFull) else StoreError
        return kind(f"PostgreSQL store {self.where}: {doing}: {_safe(exc, self._parts)}")

    async def connect(self) -> Conn:
        """One plain connection (autocommit, rows as dicts), outside the pool."""
        try:
            return await _Connection.connect(
                self._dsn,
                autocommit=True,
                row_factory=dict_row,
                cursor_factory=_Cursor,
                context=ADAPTERS,
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
        try:
            # The progress pool opens its connections when first needed (a client
            # that only submits never opens one).
            # max_size split between the two (each at least 1).
            progress = max(1, self._max // 2)
            durable = max(1, self._max - progress)
            self._pool = await self._open_pool("", self._min, durable, self._durable)
            self._progress = await self._open_pool(" progress", 0, progress, self._progressive)
        except BaseException:
            await self.close()
            raise

    async def _durable(self, conn: Conn) -> None:
        if isinstance(conn, _Connection):
            conn.counts = self.counts

    async def _progressive(self, conn: Conn) -> None:
        await conn.execute("SET synchronous_commit = off")
        await self._durable(conn)

    async def _open_pool(
        self,
        name: str,
        min_size: int,
        max_size: int,
        configure: Callable[[Conn], Awaitable[None]],
    ) -> AsyncConnectionPool[Conn]:
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._dsn,
            connection_class=_Connection,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "cursor_factory": _Cursor,
                "context": ADAPTERS,
            },
            min_size=min(min_size, max_size),
            max_size=max_size,
            timeout=self._timeout,
            open=False,
            name=f"spoolbox {self.where}{name}",
            configure=configure,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise self.error(f"cannot open the{name} connection pool", exc) from None
        return pool

    async def close(self) -> None:
        for pool in (self._pool, self._progress):
            if pool is not None:
                await pool.close()
        self._pool = self._progress = None

    async def run(
        self,
        kind: Kind,
        what: str,
        fn: Callable[[Conn], Awaitable[_T]],
        *,
        pipelined: bool = False,
        implicit: bool = False,
    ) -> _T:
        """``fn`` in one transaction of ``kind``, run again after a deadlock.

        ``pipelined``: in psycopg's pipeline mode, the ``BEGIN`` sent with ``fn``'s
        first statement and the ``COMMIT`` with the statements after its last fetch
        (a transaction that reads once and then writes takes two round trips, however
        many statements it sends).  Only for a ``fn`` written for it: in a pipeline a
        statement's result (its rows, ``rowcount``) is there only once fetched.

        ``implicit`` (with ``pipelined``): no ``BEGIN`` and ``COMMIT`` at all: the
        statements up to the pipeline's sync are one implicit transaction, committed
        at the sync (rolled back there if one failed).  Only for a ``fn`` that raises
        before it writes anything (what it read is committed with nothing else), or
        one that decides nothing before the commit and reads its answers after it
        (:class:`AfterCommit`: a group of submits)."""
        pool = self._progress if kind is Kind.PROGRESS else self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL store {self.where} is not open: call open() first")
        read = kind is Kind.READ
        delay = 0.005
        for attempt in range(RETRIES + 1):
            try:
                async with pool.connection() as conn:
                    # Said in the BEGIN (psycopg writes it from these): no round trip.
                    await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ if read else None)
                    await conn.set_read_only(True if read else None)
                    self.counts.transactions += 1
                    if pipelined:
                        # BEGIN and COMMIT are counted as the statements they are
                        # here; the wait at the end (the pipeline's sync) here.
                        self.counts.add(0, 1)
                        return await self._pipelined(conn, fn, implicit)
                    self.counts.add(2, 2)  # BEGIN, then COMMIT or ROLLBACK
                    async with conn.transaction():
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

    @staticmethod
    async def _pipelined(
        conn: Conn, fn: Callable[[Conn], Awaitable[_T]], implicit: bool = False
    ) -> _T:
        """``fn`` between a ``BEGIN`` and a ``COMMIT`` sent in pipeline mode.  Said as
        statements of the pipeline: psycopg's ``transaction()`` inside a pipeline
        waits for its ``BEGIN`` and again after ``COMMIT`` (five waits for one
        statement, where this takes two)."""
        marked = conn if isinstance(conn, _Connection) else None
        if marked is not None:
            marked.pipelined = True
        try:
            async with conn.pipeline():
                if not implicit:
                    await conn.execute(b"BEGIN")
                result = await fn(conn)
                if not implicit:
                    await conn.execute(b"COMMIT")
            if isinstance(result, AfterCommit):
                # Its last answers came with the COMMIT's: read without a wait.  Out
                # of the pipeline now: a statement it sends waits (and is counted so).
                if marked is not None:
                    marked.pipelined = False
                return cast(_T, await result.read())
        except BaseException:
            # The server may be in the failed transaction (or in the one fn left
            # by raising): out of it, unless the connection is gone (the pool drops it).
            if marked is not None:
                marked.pipelined = False
            if conn.info.transaction_status in (_INTRANS, _INERROR):
                with contextlib.suppress(psycopg.Error):
                    await conn.execute(b"ROLLBACK")
            raise
        finally:
            if marked is not None:
                marked.pipelined = False
        return result

    async def run_reading_after_commit(
        self, kind: Kind, what: str, fn: Callable[[Conn], Awaitable[AfterCommit[_T]]]
    ) -> _T:
        """``fn`` pipelined (:meth:`run`), whose answers are read after the ``COMMIT``
        came back (:class:`AfterCommit`): a transaction that reads, then sends its last
        statement, waits twice."""
        return cast(_T, await self.run(kind, what, fn, pipelined=True, implicit=True))

    async def run_batch(
        self,
        kind: Kind,
        what: str,
        calls: Sequence[Callable[[Conn], Awaitable[_T]]],
        *,
        together: bool = True,
    ) -> list[_T | Exception]:
        """Every call in one transaction of ``kind``; each call's result, or the
        exception that failed it (a StoreError for a database error).

        All together first; if one fails, the transaction is rolled back and run again
        with each call in a savepoint, so only the failed calls fail (at once, with
        ``together=False``: the caller knows one will).  A lost connection (or a
        deadlock :data:`RETRIES` times over) raises for them all."""
        if len(calls) == 1:  # its own transaction: nothing to keep apart
            try:
                return [await self.run(kind, what, calls[0])]
            except Exception as exc:
                return [exc]

        async def all_of_them(conn: Conn) -> list[_T | Exception]:
            out: list[_T | Exception] = []
            for call in calls:
                try:
                    out.append(await call(conn))
                except errors.DiskFull as exc:  # this call's rows: maybe not the others'
                    raise _OneFailed from exc
                except (psycopg.OperationalError, *_RETRYABLE):
                    raise
                except Exception as exc:
                    raise _OneFailed from exc
            return out

        async def each(conn: Conn) -> list[_T | Exception]:
            out: list[_T | Exception] = []
            for call in calls:
                try:
                    async with savepoint(conn):
                        out.append(await call(conn))
                except errors.DiskFull as exc:  # an OperationalError, of this call only
                    out.append(self.error(what, exc))
                except (psycopg.OperationalError, *_RETRYABLE):
                    raise  # the connection is gone, or the server broke a deadlock
                except psycopg.Error as exc:
                    out.append(self.error(what, exc))
                except Exception as exc:
                    out.append(exc)
            return out

        if not together:
            return await self.run(kind, what, each)
        try:
            return await self.run(kind, what, all_of_them)
        except _OneFailed:
            return await self.run(kind, what, each)


class AfterCommit(Generic[_T]):
    """What a pipelined function returns when its last statements' answers are to be
    read once the ``COMMIT`` came back (they arrive together): ``read`` reads them
    (:meth:`Database.run_reading_after_commit`)."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], Awaitable[_T]]) -> None:
        self.read = read


class _OneFailed(Exception):
    """A call of a batch failed: run the batch again, each call in a savepoint."""
