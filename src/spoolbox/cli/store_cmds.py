"""``spoolbox store migrate [--check]``: bring the store's schema up to this spoolbox's
version without starting the daemon (or only say whether it is), for the PostgreSQL
store, whose nodes may run with ``migrate`` left to the operator.  The SQLite store
migrates its file whenever it is opened; the command does that, or checks it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import urllib.parse
from typing import Any

import click

from ..api.client import EXIT_ERROR
from ..profile import Profile
from ..store import StoreError
from ._common import Ctx, emit_json, fail, json_option, pass_ctx

__all__ = ["store_group"]


@click.group("store")
def store_group() -> None:
    """The store itself: its schema."""


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


def _postgres(profile: Profile, check: bool) -> dict[str, Any]:
    settings = profile.store
    if settings.dsn is None:
        raise StoreError(
            f'[store] backend = "postgres": the dsn could not be read from {settings.dsn_missing}'
        )
    try:
        from ..store.postgres.admin import migrate_database
    except ImportError as exc:
        raise StoreError(
            f"the PostgreSQL store needs psycopg ({exc}): pip install 'spoolbox[postgres]'"
        ) from None
    r = asyncio.run(migrate_database(settings.dsn, apply=not check))
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
