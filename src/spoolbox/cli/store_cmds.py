"""``spoolbox store migrate [--check]``: bring the store's schema up to this spoolbox's
version without starting the daemon (or only say whether it is), for the PostgreSQL
store, whose nodes may run with ``migrate`` left to the operator.  The SQLite store
migrates its file whenever it is opened; the command does that, or checks it.

``spoolbox store compact [--check] [--online]``: give the room of purged messages back
to the file system (SQLite: ``VACUUM``, with the daemon stopped unless ``--online``;
PostgreSQL: ``VACUUM (ANALYZE)`` of the store's tables), or only say how much there is.

``spoolbox store backup DEST [--force]``: a consistent copy of the SQLite store while
the daemon runs (:mod:`spoolbox.store.sqlite.backup`); a PostgreSQL store is backed
up with PostgreSQL's own tools."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import click

from ..api.client import EXIT_CONFLICT, EXIT_ERROR
from ..profile import Profile
from ..store import StoreError
from ._common import Ctx, emit_json, fail, json_option, pass_ctx

__all__ = ["store_group"]


@click.group("store")
def store_group() -> None:
    """The store itself: its schema, its size, a backup."""


@store_group.command("migrate")
@click.option("--check", is_flag=True, help="Only say whether migrations are pending (exit 1).")
@json_option
@pass_ctx
def migrate_cmd(obj: Ctx, check: bool, as_json: bool) -> None:
    """Migrate the store's schema to this spoolbox's version."""
    profile = obj.profile()
    try:
        report = _postgres(profile, check) if profile.store.backend == "postgres" else None
        if report is None:
            report = _sqlite(profile, check)
    except StoreError as exc:
        fail(str(exc), EXIT_ERROR, kind="store")
    if as_json:
        emit_json(report)
    else:
        click.echo(_text(report, check))
    if check and report["pending"]:
        raise SystemExit(EXIT_ERROR)


def _text(report: dict[str, Any], check: bool) -> str:
    where, now, supported = report["store"], report["after"], report["supported"]
    if report["pending"]:
        versions = ", ".join(map(str, report["pending"]))
        return (
            f"{where}: schema version {now}; migrations to run: {versions} "
            "(`spoolbox store migrate` runs them)"
        )
    if report["applied"]:
        return f"{where}: migrated from schema version {report['before']} to {now}"
    return f"{where}: schema version {now}, current (this spoolbox supports {supported})"


def _dsn(profile: Profile) -> str:
    """The PostgreSQL store's DSN; StoreError when it could not be read."""
    settings = profile.store
    if settings.dsn is None:
        raise StoreError(
            f'[store] backend = "postgres": the dsn could not be read from {settings.dsn_missing}'
        )
    return settings.dsn


def _no_psycopg(exc: ImportError) -> StoreError:
    return StoreError(
        f"the PostgreSQL store needs psycopg ({exc}): pip install 'spoolbox[postgres]'"
    )


def _postgres(profile: Profile, check: bool) -> dict[str, Any]:
    dsn = _dsn(profile)
    try:
        from ..store.postgres.admin import migrate_database
    except ImportError as exc:
        raise _no_psycopg(exc) from None
    r = asyncio.run(migrate_database(dsn, apply=not check))
    return {
        "store": r.database,
        "backend": "postgres",
        "before": r.before,
        "after": r.after,
        "supported": r.supported,
        "applied": list(r.applied),
        "pending": list(r.pending),
    }


def _sqlite(profile: Profile, check: bool) -> dict[str, Any]:
    from ..store.sqlite import StoreFile, schema

    path = profile.store.path
    before = _sqlite_version(str(path)) if path.exists() else 0
    if before > schema.SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {before}, but this spoolbox supports versions "
            f"up to {schema.SCHEMA_VERSION}: upgrade spoolbox (the file was left untouched)"
        )
    pending = list(range(before + 1, schema.SCHEMA_VERSION + 1))
    after = before
    if not check and (pending or not path.exists()):
        settings = profile.store
        with StoreFile.open(
            path,
            synchronous=settings.synchronous,
            progress_synchronous=settings.progress_synchronous,
        ):
            pass
        after = _sqlite_version(str(path))
    return {
        "store": str(path),
        "backend": "sqlite",
        "before": before,
        "after": after,
        "supported": schema.SCHEMA_VERSION,
        "applied": [] if check else pending,
        "pending": pending if check else [],
    }


def _sqlite_version(path: str) -> int:
    uri = "file:" + urllib.parse.quote(os.fspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from None


@store_group.command("compact")
@click.option("--check", is_flag=True, help="Only say how much room is free; change nothing.")
@click.option(
    "--online",
    is_flag=True,
    help="SQLite: compact while the daemon runs (its writes wait until it is done).",
)
@json_option
@pass_ctx
def compact_cmd(obj: Ctx, check: bool, online: bool, as_json: bool) -> None:
    """Give the room of purged messages back to the file system."""
    profile = obj.profile()
    try:
        if profile.store.backend == "postgres":
            report = _vacuum_postgres(profile, check)
        else:
            if not (check or online) and obj.client().running():
                fail(
                    f"the daemon of {obj.path} is running, and compacting holds the store's "
                    "write lock until it is done: `spoolbox stop` first, or pass --online "
                    "(the daemon's writes wait meanwhile, up to 30 s each)",
                    EXIT_CONFLICT,
                    kind="conflict",
                )
            report = _compact_sqlite(profile, check)
    except StoreError as exc:
        fail(str(exc), EXIT_ERROR, kind="store")
    if as_json:
        emit_json(report)
    else:
        click.echo(_compact_text(report))


def _compact_sqlite(profile: Profile, check: bool) -> dict[str, Any]:
    from ..store.sqlite.compact import compact, space

    path = profile.store.path
    before = space(path)
    report: dict[str, Any] = {
        "store": str(path),
        "backend": "sqlite",
        "size": before.size,
        "free": before.free,
        "wal": before.wal,
        "compacted": False,
    }
    if check or before.free == 0:
        return report
    done = compact(path)
    report.update(
        compacted=True,
        size_after=done.after.size,
        free_after=done.after.free,
        wal_after=done.after.wal,
        seconds=round(done.seconds, 3),
    )
    return report


def _vacuum_postgres(profile: Profile, check: bool) -> dict[str, Any]:
    dsn = _dsn(profile)
    try:
        from ..store.postgres.admin import vacuum_database
    except ImportError as exc:
        raise _no_psycopg(exc) from None
    r = asyncio.run(vacuum_database(dsn, apply=not check))
    report: dict[str, Any] = {
        "store": r.database,
        "backend": "postgres",
        "size": r.before,
        "compacted": not check,
    }
    if not check:
        report.update(size_after=r.after, seconds=round(r.seconds, 3))
    return report


def _mb(n: int) -> str:
    """A size as people read it: ``403.2 MB``, or ``37.9 KB`` under a megabyte."""
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} KB"


def _compact_text(r: dict[str, Any]) -> str:
    where = r["store"]
    if r["backend"] == "postgres":
        if not r["compacted"]:
            return f"{where}: the store's tables take {_mb(r['size'])} (with indexes and TOAST)"
        return (
            f"{where}: VACUUM (ANALYZE) done in {r['seconds']:.1f} s; the store's tables take "
            f"{_mb(r['size_after'])} (were {_mb(r['size'])}). PostgreSQL keeps the room of "
            "deleted rows for new ones; only VACUUM FULL, which locks the tables, gives it "
            "to the file system"
        )
    size, free = r["size"], r["free"]
    share = f" ({100 * free / size:.0f}%)" if size else ""
    if not r["compacted"]:
        if free == 0:
            return f"{where}: {_mb(size)}, none of it free: nothing to compact"
        return (
            f"{where}: {_mb(size)}, {_mb(free)} of it free{share}; "
            "`spoolbox store compact` gives that back"
        )
    return (
        f"{where}: {_mb(size)} -> {_mb(r['size_after'])} "
        f"({_mb(size - r['size_after'])} given back) in {r['seconds']:.1f} s"
    )


@store_group.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@json_option
@pass_ctx
def backup_cmd(obj: Ctx, dest: Path, force: bool, as_json: bool) -> None:
    """Write a consistent copy of the store to DEST, while the daemon runs.

    SQLite: one snapshot of the file (every message whole or absent), checked, synced,
    mode 0600. To restore: stop the daemon, put the file at [store] path (no -wal or
    -shm file beside it), start it. PostgreSQL: use pg_dump or the server's backups."""
    profile = obj.profile()
    if profile.store.backend == "postgres":
        fail(
            "the PostgreSQL store is backed up with PostgreSQL's own tools: pg_dump of "
            "its database, or the server's base backups and WAL archive "
            '(docs/operations.md, "Backups")',
            EXIT_ERROR,
            kind="store",
        )
    from ..store.sqlite.backup import backup

    try:
        done = backup(profile.store.path, dest, replace=force)
    except StoreError as exc:
        fail(str(exc), EXIT_ERROR, kind="store")
    if as_json:
        emit_json(
            {
                "store": done.source,
                "backup": done.dest,
                "size": done.size,
                "messages": done.messages,
                "inbox": done.inbox,
                "seconds": round(done.seconds, 3),
            }
        )
    else:
        click.echo(
            f"{done.source} -> {done.dest}: {_mb(done.size)}, {done.messages} messages and "
            f"{done.inbox} inbox entries, in {done.seconds:.1f} s"
        )
