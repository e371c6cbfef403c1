"""``spoolbox status`` (the status table, live with --watch) and ``spoolbox transports``."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .. import ENTRY_POINT_GROUP
from ..api.client import DaemonNotRunning
from ._common import Ctx, emit_json, json_option, pass_ctx


def _progress(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    total = p.get("total")
    text = f"{p['done']}/{total if total is not None else '?'}"
    if p.get("text"):
        text += f" {p['text']}"
    return text


def _counters(c: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(c.items()) if v)


def status_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="spoolbox status", expand=False)
    for col in ("name", "status", "progress", "counters", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            _progress(r.get("progress")),
            _counters(r.get("counters") or {}),
            r.get("detail") or "",
        )
    return table


@click.command("status")
@click.option("--watch", is_flag=True, help="Keep showing changes until Ctrl-C.")
@json_option
@pass_ctx
def status_cmd(obj: Ctx, watch: bool, as_json: bool) -> None:
    """Show the status table of the running spooler."""
    client = obj.client()
    if not watch:
        rows = client.status()
        if as_json:
            emit_json({"rows": rows})
        else:
            Console().print(status_table(rows))
        return
    events = client.watch()
    try:
        if as_json:
            for ev in events:
                click.echo(json.dumps({k: v for k, v in ev.items() if k != "id"}))
            return
        current: dict[str, dict[str, Any]] = {}
        with Live(status_table([]), auto_refresh=False) as live:
            for ev in events:
                if ev["event"] == "status":
                    current[ev["row"]["name"]] = ev["row"]
                elif ev["event"] == "removed":
                    current.pop(ev["name"], None)
                live.update(status_table(list(current.values())), refresh=True)
    except KeyboardInterrupt:
        return


def installed_providers() -> list[dict[str, str]]:
    return [
        {"name": ep.name, "class": ep.value}
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
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
        configured = [
            {
                "name": t.name,
                "provider": str(raw.get("provider")),
                "class": None,
                "logged_on": None,
                "address_types": list(t.address_types or ()),
                "address_types_source": "profile",
                "outbound": t.outbound,
                "inbound": t.inbound,
            }
            for t, raw in zip(
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
    for p in providers:
        table.add_row(p["name"], p["class"])
    console.print(table)
    table = Table(title=f"configured transports, in transport order (from the {source})")
    for col in ("name", "provider", "address types", "out", "in", "logged on"):
        table.add_column(col)
    for t in configured:
        logged = "" if t["logged_on"] is None else ("yes" if t["logged_on"] else "no")
        table.add_row(
            t["name"],
            t["provider"],
            ", ".join(t["address_types"]) or "(from the session)",
            "yes" if t["outbound"] else "no",
            "yes" if t["inbound"] else "no",
            logged,
        )
    console.print(table)
