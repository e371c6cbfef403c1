"""``spoolbox inbox`` (list, show, export, delete): received messages and reports for
local senders.  Through the daemon when it runs, else on the store directly.

Senders and subjects are shown decoded (RFC 2047), with control characters escaped;
entries are named by their id or a unique prefix of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..api.selection import short_ids
from ._common import Ctx, emit_json, json_option, pass_ctx
from ._listing import print_table, safe, short_when

__all__ = ["inbox_group"]


@click.group("inbox", invoke_without_command=True)
@click.pass_context
def inbox_group(ctx: click.Context) -> None:
    """Received messages and reports for local senders (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(inbox_list)


@inbox_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--full-ids", is_flag=True, help="Show whole ids, not their unique prefixes.")
@json_option
@pass_ctx
def inbox_list(obj: Ctx, limit: int = 100, full_ids: bool = False, as_json: bool = False) -> None:
    """List the inbox (sender and subject decoded from the headers)."""
    msgs = obj.client().inbox(limit=limit)
    if as_json:
        emit_json({"messages": msgs})
        return
    if not msgs:
        click.echo("the inbox is empty")
        return
    short = short_ids(entry["id"] for entry in msgs)
    rows = [
        [
            entry["id"] if full_ids else short[entry["id"]],
            short_when(entry["received_at"]),
            safe(entry["transport"]),
            safe(entry["sender"]),
            str(entry["size"]),
            safe(entry["subject"]),
        ]
        for entry in msgs
    ]
    print_table("spoolbox inbox", ["id", "received", "via", "from", "size", "subject"], rows)


@inbox_group.command("show")
@click.argument("entry_id", metavar="ID")
@pass_ctx
def inbox_show(obj: Ctx, entry_id: str) -> None:
    """Write one message (ID or a unique prefix; RFC 5322 bytes) to stdout."""
    data = obj.client().inbox_read(entry_id)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@inbox_group.command("delete")
@click.argument("entry_ids", nargs=-1, required=True, metavar="ID...")
@json_option
@pass_ctx
def inbox_delete(obj: Ctx, entry_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete inbox messages (ids or unique prefixes; all must match, or none goes)."""
    deleted = obj.client().inbox_delete(entry_ids)
    if as_json:
        emit_json({"deleted": deleted})
    else:
        for entry_id in deleted:
            click.echo(f"deleted {entry_id}")


@inbox_group.command("export")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--id", "ids", multiple=True, help="Only these messages (default: all).")
@json_option
@pass_ctx
def inbox_export(obj: Ctx, dest: Path, ids: tuple[str, ...], as_json: bool) -> None:
    """Write inbox messages to DEST as ID.eml files."""
    client = obj.client()
    wanted = list(ids) or [entry["id"] for entry in client.inbox(limit=1_000_000)]
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for mid in wanted:
        path = dest / f"{mid}.eml"
        path.write_bytes(client.inbox_read(mid))
        files.append(str(path))
    if as_json:
        emit_json({"exported": files})
    else:
        click.echo(f"exported {len(files)} messages to {dest}")
