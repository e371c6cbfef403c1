"""``spoolbox sendmail``: the sendmail-compatible entry point (exit codes from sysexits.h).

The message goes through the running daemon, or straight into the store when no
daemon runs (it is sent when the daemon starts).  This module gives
:func:`~spoolbox.ingress.sendmail.run_sendmail` what it cannot reach itself: the
routing table (from the daemon's transports, else as the profile declares them) to
refuse a recipient no transport serves, and the modes that need the spooler:
``-bs`` (an SMTP session on stdin/stdout), ``-bp`` (the queue, as mailq prints it)
and ``-q`` (a flush through the daemon)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from ..api.client import Client, ClientError, DaemonNotRunning
from ..ingress.local_names import LocalNames
from ..model import Address, NewMessage
from ..model.hostname import default_hostname
from ..profile import Profile, ProfileError
from ..routing import RouteEntry, RoutingTable
from ..routing.verify import verify
from ._common import Ctx, pass_ctx

__all__ = ["format_mailq", "routing_table", "sendmail_cmd", "sendmail_main"]

EX_UNAVAILABLE = 69  # sysexits.h; the ingress module's constants are imported lazily
EX_TEMPFAIL = 75
EX_CONFIG = 78

#: the message states mailq lists (unfinished mail)
_QUEUE_STATES = ("queued", "active", "deferred", "hold")
#: mailq's mark after the id: selected for delivery, on hold
_MARKS = {"active": "*", "hold": "!"}


def routing_table(client: Client) -> RoutingTable:
    """The outbound transports in transport order with the address types they serve:
    the daemon's view (a logged-on session's own answer), else the profile's
    declarations (a transport that declares none is not known until it logs on)."""
    try:
        rows: list[dict[str, Any]] | None = client.transports()
    except ClientError:  # not running, or not answering: what the profile declares
        rows = None
    if rows is None:
        return client.profile.spooler.declared_routes()
    entries = [
        RouteEntry(
            row["name"],
            frozenset(t.upper() for t in row["address_types"])
            if row["address_types"] or row.get("address_types_source") == "session"
            else None,
            None if row.get("domains") is None else frozenset(row["domains"]),
        )
        for row in rows
        if row.get("outbound", True)
    ]
    return RoutingTable.build(entries)


def _router(client: Client) -> Callable[[Address], tuple[bool, str]]:
    """``run_sendmail``'s ``route``: the table is read once, when first needed."""
    table: list[RoutingTable] = []

    def route(address: Address) -> tuple[bool, str]:
        if not table:
            table.append(routing_table(client))
        verdict = verify(table[0], address.type, address.value)
        return verdict.routable, verdict.text

    return route


def format_mailq(messages: Sequence[dict[str, Any]]) -> str:
    """The queue as Postfix's mailq prints it: id (``*`` active, ``!`` on hold), size,
    arrival time, sender; then each unfinished recipient, after the reason of its
    last failure in parentheses; a total line."""
    if not messages:
        return "Mail queue is empty\n"
    width = max(10, *(len(m["id"]) + 1 for m in messages))
    pad = " " * (width + 31)
    lines = [f"{'-Queue ID-':<{width}} --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for m in messages:
        total += int(m["size"])
        ident = m["id"] + _MARKS.get(m["state"], "")
        arrival = time.strftime("%a %b %e %H:%M:%S", time.localtime(m["submitted_at"]))
        sender = (m["sender"] or "MAILER-DAEMON").partition(":")[2] or m["sender"]
        lines.append(f"{ident:<{width}} {m['size']:>8} {arrival:<20} {sender}")
        for r in m["recipients"]:
            if r["state"] in ("delivered", "failed", "cancelled"):
                continue
            if r.get("diagnostic"):
                lines.append(f"{'':<{width - 1}}({r['diagnostic']})")
            lines.append(pad + r["address"])
        lines.append("")
    count = len(messages)
    kbytes = (total + 1023) // 1024
    lines.append(f"-- {kbytes} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(lines) + "\n"


def _mailq(client: Client) -> int:
    found: list[dict[str, Any]] = []
    for state in _QUEUE_STATES:
        found.extend(client.queue(state=state, limit=100_000))
    found.sort(key=lambda m: (m["submitted_at"], m["id"]))
    click.echo(format_mailq(found), nl=False)
    return 0


def _flush(client: Client) -> int:
    """``-q``: the daemon sends what is queued now (as ``postqueue -f``; the daemon
    retries later what stays deferred).  Quiet when it ran."""
    try:
        client.flush(upload=True, download=False)
    except DaemonNotRunning:
        click.echo(
            "sendmail: cannot flush the queue: the spoolbox daemon is not running "
            "(start it with `spoolbox run`; what is queued is sent when it starts)",
            err=True,
        )
        return EX_UNAVAILABLE
    except ClientError as exc:
        click.echo(f"sendmail: the flush failed: {exc}", err=True)
        return EX_TEMPFAIL
    return 0


def _smtp_options(profile: Profile, hostname: str) -> dict[str, Any]:
    """``-bs`` takes the host name, the size limit and the default address type of
    the profile's SMTP listener, when there is one (the same dialogue, the same mail)."""
    options: dict[str, Any] = {"hostname": hostname, "local_names": profile.local_names}
    for listener in profile.listeners:
        if listener.kind == "smtp":
            for key in ("hostname", "max_message_size", "default_address_type"):
                if listener.options.get(key) is not None:
                    options[key] = listener.options[key]
            break
    return options


def _hostname(obj: Ctx) -> str:
    """The profile's ``hostname`` (the default when there is no profile to read)."""
    try:
        return obj.profile().spooler.hostname
    except ProfileError:
        return default_hostname()


def _local_names(obj: Ctx) -> LocalNames | None:
    """The profile's ``[local_names]`` (none when there is no profile to read)."""
    try:
        return obj.profile().local_names
    except ProfileError:
        return None


def run(obj: Ctx, argv: Sequence[str]) -> int:
    """``spoolbox sendmail ARGV``; returns the exit code."""
    from ..ingress.sendmail import run_sendmail
    from ..ingress.sendmail_smtp import serve_smtp_session

    client = obj.client()
    hostname = _hostname(obj)
    local_names = _local_names(obj)

    async def submit(message: NewMessage) -> object:
        return await asyncio.to_thread(client.submit, message)

    async def submit_many(messages: list[NewMessage]) -> Sequence[object]:
        return [await asyncio.to_thread(client.submit_many, messages)]

    async def smtp() -> int:
        return await serve_smtp_session(
            submit, submit_many=submit_many, **_smtp_options(obj.profile(), hostname)
        )

    async def queue() -> int:
        return await asyncio.to_thread(_mailq, client)

    async def flush() -> int:
        return await asyncio.to_thread(_flush, client)

    return asyncio.run(
        run_sendmail(
            list(argv),
            sys.stdin.buffer,
            submit,
            stderr=sys.stderr,
            stdout=sys.stdout,
            domain=local_names.domain if local_names and local_names.domain else hostname,
            hostname=hostname,
            route=_router(client),
            modes={"smtp": smtp, "queue": queue, "flush": flush},
            local_names=local_names,
        )
    )


@click.command(
    "sendmail",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def sendmail_cmd(obj: Ctx, argv: tuple[str, ...]) -> None:
    """sendmail [-bs|-bp|-bv|-bi|-q] [-t] [-f SENDER] [-i] [options] [recipients...]
    (`spoolbox sendmail --help`; docs/operations.md, "sendmail")."""
    sys.exit(run(obj, argv))


def sendmail_main() -> None:
    """The ``spoolbox-sendmail`` console script, and what ``spoolbox install-sendmail``
    links as ``sendmail``, ``mailq`` and ``newaliases``: the name it is run by picks
    the mode (``mailq`` is ``sendmail -bp``, ``newaliases`` is ``sendmail -bi``)."""
    import os

    name = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    if name == "mailq":
        argv = ["-bp", *argv]
    elif name == "newaliases":
        argv = ["-bi", *argv]
    try:
        code = run(Ctx(), argv)
    except ProfileError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        code = EX_CONFIG
    except ClientError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        code = EX_TEMPFAIL
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
