"""``spoolbox status`` (the status table, live with --watch) and ``spoolbox transports``.

Not on a terminal (a pipe, a log file), ``status --watch`` prints one plain line per
row change instead of redrawing a table: ``12:00:01 relay: ... progress counters``.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import entry_points
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .. import ENTRY_POINT_GROUP, __version__
from ..api.client import DaemonNotRunning
from ._common import Ctx, emit_json, json_option, pass_ctx


def _progress(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    total = progress.get("total")
    text = f"{progress['done']}/{total if total is not None else '?'}"
    if progress.get("text"):
        text += f" {progress['text']}"
    return text


def _counters(counters: dict[str, int]) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted(counters.items()) if value)


def _key(row: dict[str, Any], local: str | None = None) -> str:
    """A row's name, after its node's when it is another node's than ``local`` (the
    node answering: the node of the first row it sends)."""
    node = row.get("node")
    return f"{node}/{row['name']}" if node and node != local else str(row["name"])


def status_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="spoolbox status", expand=False)
    nodes = len({row.get("node") for row in rows}) > 1
    for col in ("node", "name", "status", "progress", "counters", "detail"):
        if col != "node" or nodes:
            table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(
            *([row.get("node") or ""] if nodes else []),
            row["name"],
            row["status"],
            _progress(row.get("progress")),
            _counters(row.get("counters") or {}),
            row.get("detail") or "",
        )
    return table


def status_line(row: dict[str, Any], local: str | None = None) -> str:
    """One row as a plain line (``status --watch`` off a terminal), without its time;
    a row of a node other than ``local`` is named ``node/name``."""
    parts = [f"{_key(row, local)}: {row['status']}"]
    parts += [
        text
        for text in (
            _progress(row.get("progress")),
            _counters(row.get("counters") or {}),
            row.get("detail") or "",
        )
        if text
    ]
    return " | ".join(parts)


def _say_version(running: object) -> None:
    """On stderr, when the daemon runs another spoolbox than the one installed here (an
    upgrade without a restart: the daemon runs the old code until it is restarted)."""
    if running == __version__:
        return
    said = (
        "an older spoolbox (its status does not name its version)"
        if running is None
        else f"spoolbox {running}"
    )
    click.echo(
        f"spoolbox: the daemon runs {said}, and {__version__} is installed here: "
        "restart the daemon to run the installed code (systemctl restart spoolbox, or "
        "spoolbox stop, then spoolbox run)",
        err=True,
    )


def _watch_lines(events: Any) -> None:
    """``status --watch`` off a terminal: a line per row that changed (what it shows)."""
    shown: dict[str, str] = {}
    local: str | None = None
    for ev in events:
        if ev["event"] == "status":
            local = ev["row"].get("node") if local is None else local
            name, line = _key(ev["row"], local), status_line(ev["row"], local)
        elif ev["event"] == "removed":
            name = _key(ev, local)
            line = f"{name}: removed"
        else:
            continue
        if shown.get(name) == line:
            continue
        shown[name] = line
        click.echo(f"{time.strftime('%H:%M:%S')} {line}")


@click.command("status")
@click.option("--watch", is_flag=True, help="Keep showing changes until Ctrl-C.")
@json_option
@pass_ctx
def status_cmd(obj: Ctx, watch: bool, as_json: bool) -> None:
    """Show the status table of the running spooler."""
    client = obj.client()
    if not watch:
        answer = client.call("status")
        running = answer.get("version")
        if as_json:
            emit_json({"rows": answer["rows"], "ready": answer.get("ready"), "version": running})
        else:
            Console().print(status_table(answer["rows"]))
        _say_version(running)
        return
    events = client.watch()
    try:
        if as_json:
            for ev in events:
                click.echo(json.dumps({key: value for key, value in ev.items() if key != "id"}))
            return
        console = Console()
        if not console.is_terminal:
            _watch_lines(events)
            return
        current: dict[str, dict[str, Any]] = {}
        with Live(status_table([]), auto_refresh=False, console=console) as live:
            for ev in events:
                if ev["event"] == "status":
                    current[_key(ev["row"])] = ev["row"]
                elif ev["event"] == "removed":
                    current.pop(_key(ev), None)
                live.update(status_table(list(current.values())), refresh=True)
    except KeyboardInterrupt:
        return


def installed_providers() -> list[dict[str, str]]:
    return [
        {"name": ep.name, "class": ep.value}
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    ]


@click.command("transports")
@json_option
@pass_ctx
def transports_cmd(obj: Ctx, as_json: bool) -> None:
    """List installed transport providers and the profile's transports with their
    address types (from the running daemon, else as the profile declares them)."""
    providers = installed_providers()
    source = "daemon"
    try:
        configured = obj.client().transports()
    except DaemonNotRunning:
        source = "profile"
        sent = _sent_offline(obj)
        configured = [
            {
                "name": transport.name,
                "provider": str(raw.get("provider")),
                "class": None,
                "logged_on": None,
                "address_types": list(transport.address_types or ()),
                "address_types_source": "profile",
                "outbound": transport.outbound,
                "inbound": transport.inbound,
                "domains": None if transport.domains is None else sorted(transport.domains),
                "max_rate": None if transport.max_rate is None else str(transport.max_rate),
                "sent_in_window": sent.get(transport.name),
            }
            for transport, raw in zip(
                obj.profile().spooler.transports, obj.profile().raw_transports, strict=True
            )
        ]
    if as_json:
        emit_json({"providers": providers, "configured": configured, "source": source})
        return
    console = Console()
    table = Table(title=f"installed providers (entry-point group {ENTRY_POINT_GROUP})")
    table.add_column("name")
    table.add_column("class", overflow="fold")
    for provider in providers:
        table.add_row(provider["name"], provider["class"])
    console.print(table)
    table = Table(title=f"configured transports, in transport order (from the {source})")
    for col in ("name", "provider", "address types", "out", "in", "logged on", "max rate"):
        table.add_column(col)
    for transport in configured:
        logged = (
            "" if transport["logged_on"] is None else ("yes" if transport["logged_on"] else "no")
        )
        domains = transport.get("domains")
        table.add_row(
            transport["name"],
            transport["provider"],
            (", ".join(transport["address_types"]) or "(from the session)")
            + (f" at {', '.join(domains)}" if domains else ""),
            "yes" if transport["outbound"] else "no",
            "yes" if transport["inbound"] else "no",
            logged,
            _rate_text(transport),
        )
    console.print(table)


def _sent_offline(obj: Ctx) -> dict[str, int]:
    """Each rate-limited transport's sends in its window, from the store; nothing (and
    a warning) when the store cannot be read: the listing does not need it."""
    try:
        return obj.client().sent_in_windows()
    except Exception as exc:
        click.echo(f"spoolbox: the max_rate windows could not be read: {exc}", err=True)
        return {}


def _rate_text(transport: dict[str, Any]) -> str:
    """``14/s``, and from the daemon how many of them the last window used."""
    rate = transport.get("max_rate")
    if not rate:
        return ""
    sent = transport.get("sent_in_window")
    return rate if sent is None else f"{rate} ({sent} in the window now)"
