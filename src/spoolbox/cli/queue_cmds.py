"""``spoolbox queue`` (list, show, hold, release, cancel, retry, purge); ``spoolbox
inbox`` is :mod:`.inbox_cmds`'.  Through the daemon when it runs, else on the store
directly.

Messages are named as git names commits: by their full id or any unique prefix of it
(``queue list`` shows the shortest, at least 8 characters); the bulk actions also take
``ALL``, ``--state`` and ``--transport``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..api.client import ClientError
from ..model import MessageState
from ..profile.tables import parse_duration
from ._common import Ctx, emit_json, fail, json_option, pass_ctx
from ._listing import print_table, safe, short_when, when
from .inbox_cmds import inbox_group

__all__ = ["inbox_group", "queue_group"]

_STATES = [state.value for state in MessageState]
_FINISHED = [MessageState.SENT.value, MessageState.FAILED.value, MessageState.CANCELLED.value]
_F = TypeVar("_F", bound=Callable[..., Any])
#: How many messages ``queue list`` shows unless told otherwise.
DEFAULT_LIMIT = 50


@click.group("queue", invoke_without_command=True)
@click.pass_context
def queue_group(ctx: click.Context) -> None:
    """The outgoing queues (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(queue_list)


def _states_option(choices: list[str], help_text: str) -> Callable[[_F], _F]:
    """``--state`` (repeatable) as the listing, the bulk actions and purge take it."""
    return click.option(
        "--state", "states", type=click.Choice(choices), multiple=True, help=help_text
    )


@queue_group.command("list")
@_states_option(_STATES, "Only these queues (repeatable; default: queued, active, deferred, hold).")
@click.option("--all", "every", is_flag=True, help="Every queue (sent, failed ... too), no limit.")
@click.option(
    "--limit", type=click.IntRange(1), default=None, help=f"At most this many [{DEFAULT_LIMIT}]."
)
@click.option("--transport", help="Only messages with a recipient routed to this transport.")
@click.option("--recipient", help="Only messages with a recipient whose address contains this.")
@click.option("--full-ids", is_flag=True, help="Show whole ids, not their unique prefixes.")
@json_option
@pass_ctx
def queue_list(
    obj: Ctx,
    states: tuple[str, ...] = (),
    every: bool = False,
    limit: int | None = None,
    transport: str | None = None,
    recipient: str | None = None,
    full_ids: bool = False,
    as_json: bool = False,
) -> None:
    """List messages, newest first (default: the unfinished ones)."""
    if limit is None and not every:
        limit = DEFAULT_LIMIT
    listing = obj.client().queue_listing(
        states=states or None, transport=transport, recipient=recipient, limit=limit, all=every
    )
    if as_json:
        emit_json(listing)
        return
    msgs = listing["messages"]
    rows = [
        [
            message["id"] if full_ids else message["short_id"],
            message["state"],
            short_when(message["submitted_at"]),
            str(message["size"]),
            ", ".join(
                f"{safe(recipient['address'])} ({recipient['state']})"
                for recipient in message["recipients"]
            ),
            safe(message["subject"]),
        ]
        for message in msgs
    ]
    if rows:
        columns = ["id", "state", "submitted", "size", "recipients", "subject"]
        print_table("spoolbox queue", columns, rows)
    else:
        what = "messages" if states or every else "unfinished messages"
        click.echo(f"no {what}" + ("" if every else " (--all shows every queue)"))
    if listing["more"]:
        click.echo(f"{listing['more']} more (use --limit/--all)")


def _show_message(message: dict[str, Any]) -> None:
    click.echo(f"id:        {message['id']}")
    held = message["held"] and message["state"] != "hold"  # ("hold (held)" says it twice)
    click.echo(f"state:     {message['state']}{' (held)' if held else ''}")
    click.echo(f"sender:    {safe(message['sender']) or '<>'}")
    click.echo(f"subject:   {safe(message['subject'])}")
    click.echo(f"size:      {message['size']}")
    click.echo(f"priority:  {message['priority']}")
    click.echo(f"submitted: {when(message['submitted_at'])}")
    click.echo(f"expires:   {when(message['expires_at'])}")
    for recipient in message["recipients"]:
        line = f"  [{recipient['index']}] {safe(recipient['address'])}"
        if recipient.get("original"):  # RFC 3461 ORCPT (an older daemon has none)
            line += f" (originally {safe(recipient['original'])})"
        line += f": {recipient['state']}"
        if recipient["route"]:
            line += f" via {recipient['route']}"
        if recipient["attempts"]:
            line += f", {_plural(recipient['attempts'], 'attempt')}"
        if recipient["retry_at"] and recipient["state"] == "queued":
            line += f", next try {when(recipient['retry_at'])}"
        if recipient.get("waiting"):  # from the daemon: why it is not sent now
            line += f", waiting: {recipient['waiting']}"
        said = [recipient["status"] or "", safe(recipient["diagnostic"] or "")]
        if any(said):
            line += f" ({' '.join(part for part in said if part)})"
        click.echo(line)


@queue_group.command("show")
@click.argument("message_id", metavar="ID")
@json_option
@pass_ctx
def queue_show(obj: Ctx, message_id: str, as_json: bool) -> None:
    """Show one message (ID or a unique prefix) and each recipient's state."""
    message = obj.client().show(message_id)
    if as_json:
        emit_json(message)
    else:
        _show_message(message)


def _action(name: str, doc: str) -> click.Command:
    @click.argument("message_ids", nargs=-1, metavar="[ID...|ALL]")
    @_states_option(_STATES, "Messages in this queue (repeatable).")
    @click.option("--transport", help="Messages with a recipient routed to this transport.")
    @json_option
    @pass_ctx
    def cmd(
        obj: Ctx,
        message_ids: tuple[str, ...],
        states: tuple[str, ...],
        transport: str | None,
        as_json: bool,
    ) -> None:
        if not (message_ids or states or transport):
            raise click.UsageError(
                "name the messages: IDs (or unique prefixes), ALL, --state or --transport"
            )
        client = obj.client()
        ids = client.select(message_ids, states=states, transport=transport)
        results: list[dict[str, Any]] = []
        errors: list[ClientError] = []
        for mid in ids:
            try:
                results.append(getattr(client, name)(mid))
            except ClientError as exc:  # one message's refusal does not stop the others
                errors.append(exc)
                results.append({"id": mid, "error": {"code": exc.code, "message": str(exc)}})
        if as_json:
            emit_json({"results": results})
        else:
            for result in results:
                if "error" in result:
                    click.echo(f"{result['id']}: {result['error']['message']}", err=True)
                    continue
                click.echo(f"{result['id']}: {result['state']}{_what_it_did(result)}")
            if not ids:
                click.echo("no messages match")
        if errors:
            raise SystemExit(errors[0].exit_code)

    cmd.__doc__ = doc
    return click.command(name)(cmd)


def _what_it_did(result: dict[str, Any]) -> str:
    """What an action's result says beyond the message's queue after it."""
    if "retried" in result:
        waiting = f"; waiting: {result['waiting']}" if "waiting" in result else ""
        return f" ({_plural(result['retried'], 'recipient')} made ready{waiting})"
    cancelled = result.get("cancelled")
    if cancelled == 0:
        return ", nothing left to cancel"
    if cancelled is not None and result["state"] != "cancelled":
        return f" ({_plural(cancelled, 'unfinished recipient')} cancelled, the others had finished)"
    return ""


def _plural(n: int, noun: str) -> str:
    """``1 attempt``, ``2 attempts``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


queue_group.add_command(_action("hold", "Hold messages (they wait until released)."))
queue_group.add_command(_action("release", "Release held messages."))
queue_group.add_command(_action("cancel", "Cancel messages (unfinished recipients)."))
queue_group.add_command(
    _action("retry", "Retry deferred messages now (their destinations' back-off lifted).")
)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@queue_group.command("purge")
@_states_option(_FINISHED, "Only this finished queue (repeatable; default: all three).")
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_duration,
    help='Finished longer ago than this ("0", "12h", "7d"; default: [store] keep_*).',
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@json_option
@pass_ctx
def queue_purge(
    obj: Ctx, states: tuple[str, ...], older_than: float | None, dry_run: bool, as_json: bool
) -> None:
    """Delete finished messages (never unfinished ones) and print how many."""
    try:
        result = obj.client().purge(states=states, older_than=older_than, dry_run=dry_run)
    except ClientError as exc:
        fail(str(exc), exc.exit_code, kind=exc.code)
    if as_json:
        emit_json(result)
        return
    n = result["removed"]
    noun = "message" if n == 1 else "messages"
    if dry_run:
        click.echo(f"would purge {n} finished {noun} (dry run: nothing deleted)")
    else:
        click.echo(f"purged {n} finished {noun}")
