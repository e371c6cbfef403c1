"""The store the daemon opens: the profile's ``[store] backend`` made into a
:class:`~spoolbox.store.base.Store` (SQLite by default, PostgreSQL with the
``postgres`` extra).  Nothing is opened here; the spooler opens and closes it.

A store that can tell of work committed by other processes (the PostgreSQL store's
``listen``: LISTEN/NOTIFY) is wired to the spooler by :func:`wake_on_other_nodes`, so
an idle node claims a message another node took on within milliseconds, instead of
at its next poll."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import Spooler
from .._core.node import node_of
from .._private import private_dir
from ..profile.schema import Profile, StoreSettings
from ..store import SQLiteStore, Store, StoreError
from ..store.postgres_open import postgres_store

__all__ = ["describe_store", "shares_store", "store_from_settings", "wake_on_other_nodes"]

log = logging.getLogger("spoolbox.daemon")

#: Wake-up payloads (:mod:`spoolbox.store.postgres.wakeups`).
_ROUTE, _ANY, _FLUSH = "route", "*", "flush:"


def store_from_settings(settings: StoreSettings, *, shared: bool = False) -> Store:
    """The (unopened) store of ``[store]``; StoreError when it cannot be made, saying
    what to set or install.  ``shared``: other processes of this daemon (listener
    processes, delivery workers) write the SQLite file too, so a durable commit's
    fsync is made after the write lock is released (``sync_after_unlock``)."""
    if settings.backend == "postgres":
        return postgres_store(settings.dsn, settings.dsn_missing)
    private_dir(settings.path.parent)
    return SQLiteStore(
        settings.path,
        synchronous=settings.synchronous,
        progress_synchronous=settings.progress_synchronous,
        sync_after_unlock=shared,
    )


def shares_store(profile: Profile, workers: int) -> bool:
    """Whether processes besides the daemon's own spooler write its store: listener
    processes (``[listeners.NAME] processes``) or delivery workers."""
    return workers > 0 or any(
        listener.enabled and listener.processes > 0 for listener in profile.listeners
    )


def describe_store(settings: StoreSettings) -> str:
    """The store for messages: the SQLite file, or the database (never a password)."""
    if settings.backend == "postgres":
        if settings.dsn is None:
            return f"postgres (dsn from {settings.dsn_missing}, not set)"
        try:
            from ..store.postgres import describe
        except ImportError:
            return "postgres"
        return describe(settings.dsn)
    return str(settings.path)


async def wake_on_other_nodes(spooler: Spooler) -> bool:
    """Wake the spooler's router and transports when other nodes commit work for
    them, if its store can tell (False if not: polling alone finds that work).  While
    the store cannot (its LISTEN connection is down, at start too: it tries again in
    the background), the node's row says so (:meth:`NodePresence.wakeups`)."""
    listen: Callable[..., Any] | None = getattr(spooler.store, "listen", None)
    if listen is None:
        return False

    def woken(payload: str) -> None:
        if payload.startswith(_FLUSH) or payload == _ANY:
            node = node_of(spooler)  # a flush request was recorded: read it now
            if node is not None:
                node.wake()
        if payload in (_ROUTE, _ANY):
            spooler.routing_changed()
        for host in spooler.hosts:
            if payload == _ANY or host.name == payload:
                host.wake.set()

    def state(problem: str | None) -> None:
        node = node_of(spooler)
        if node is not None:
            node.wakeups(problem)

    try:
        await listen(woken, on_state=state)
    except StoreError as exc:
        log.warning("no wake-ups from other nodes (polling finds their work): %s", exc)
        return False
    log.debug("store wake-ups from other nodes: on")
    return True
