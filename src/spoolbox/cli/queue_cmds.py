"""``spoolbox queue`` (list, show, hold, release, cancel, retry) and ``spoolbox inbox``
(list, show, export).  Through the daemon when it runs, else on the store directly."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..model import MessageState
from ._common import Ctx, emit_json, json_option, pass_ctx

_STATES = [state.value for state in MessageState]


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else ""


@click.group("queue", invoke_without_command=True)
@click.pass_context
def queue_group(ctx: click.Context) -> None:
    """The outgoing queues (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(queue_list)


@queue_group.command("list")
@click.option("--state", type=click.Choice(_STATES), help="Only this queue.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@json_option
@pass_ctx
def queue_list(obj: Ctx, state: str | None, limit: int, as_json: bool = False) -> None:
    """List messages (id, queue, recipients, subject)."""
    msgs = obj.client().queue(state=state, limit=limit)
    if as_json:
        emit_json({"messages": msgs})
        return
    table = Table(title="spoolbox queue")
    for col in ("id", "state", "submitted", "size", "recipients", "subject"):
        table.add_column(col, overflow="fold")
    for message in msgs:
        table.add_row(
            message["id"],
            message["state"],
            _when(message["submitted_at"]),
            str(message["size"]),
            ", ".join(
                f"{recipient['address']} ({recipient['state']})"
                for recipient in message["recipients"]
            ),
            message["subject"],
        )
    Console().print(table)


def _show_message(message: dict[str, Any]) -> None:
    click.echo(f"id:        {message['id']}")
    click.echo(f"state:     {message['state']}{' (held)' if message['held'] else ''}")
    click.echo(f"sender:    {message['sender'] or '<>'}")
    click.echo(f"subject:   {message['subject']}")
    click.echo(f"size:      {message['size']}")
    click.echo(f"priority:  {message['priority']}")
    click.echo(f"submitted: {_when(message['submitted_at'])}")
    click.echo(f"expires:   {_when(message['expires_at'])}")
    for recipient in message["recipients"]:
        line = f"  [{recipient['index']}] {recipient['address']}: {recipient['state']}"
        if recipient["route"]:
            line += f" via {recipient['route']}"
        if recipient["attempts"]:
            line += f", {recipient['attempts']} attempts"
        if recipient["retry_at"]:
            line += f", next try {_when(recipient['retry_at'])}"
        if recipient["status"] or recipient["diagnostic"]:
            line += f" ({recipient['status'] or ''} {recipient['diagnostic'] or ''})".replace(
                "( ", "("
            )
        click.echo(line)


@queue_group.command("show")
@click.argument("message_id")
@json_option
@pass_ctx
def queue_show(obj: Ctx, message_id: str, as_json: bool) -> None:
    """Show one message and each recipient's state."""
    message = obj.client().show(message_id)
    if as_json:
        emit_json(message)
    else:
        _show_message(message)


def _action(name: str, doc: str) -> click.Command:
    @click.argument("message_ids", nargs=-1, required=True, metavar="ID...")
    @json_option
    @pass_ctx
    def cmd(obj: Ctx, message_ids: tuple[str, ...], as_json: bool) -> None:
        client = obj.client()
        results = [getattr(client, name)(mid) for mid in message_ids]
        if as_json:
            emit_json({"results": results})
        else:
            for result in results:
                extra = (
                    f" ({result['retried']} recipients made ready)" if "retried" in result else ""
                )
                click.echo(f"{result['id']}: {result['state']}{extra}")

    cmd.__doc__ = doc
    return click.command(name)(cmd)


queue_group.add_command(_action("hold", "Hold messages (they wait until released)."))
queue_group.add_command(_action("release", "Release held messages."))
queue_group.add_command(_action("cancel", "Cancel messages (unfinished recipients)."))
queue_group.add_command(_action("retry", "Retry deferred messages now."))


@click.group("inbox", invoke_without_command=True)
@click.pass_context
def inbox_group(ctx: click.Context) -> None:
    """Received messages and reports for local senders (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(inbox_list)


@inbox_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@json_option
@pass_ctx
def inbox_list(obj: Ctx, limit: int, as_json: bool = False) -> None:
    """List the inbox."""
    msgs = obj.client().inbox(limit=limit)
    if as_json:
        emit_json({"messages": msgs})
        return
    table = Table(title="spoolbox inbox")
    for col in ("id", "received", "via", "from", "size", "subject"):
        table.add_column(col, overflow="fold")
    for entry in msgs:
        table.add_row(
            entry["id"],
            _when(entry["received_at"]),
            entry["transport"],
            entry["sender"] or "",
            str(entry["size"]),
            entry["subject"],
        )
    Console().print(table)


@inbox_group.command("show")
@click.argument("entry_id")
@pass_ctx
def inbox_show(obj: Ctx, entry_id: str) -> None:
    """Write one message (RFC 5322 bytes) to stdout."""
    data = obj.client().inbox_read(entry_id)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


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
