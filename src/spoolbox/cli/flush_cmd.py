"""``spoolbox flush``: send and receive now, with a live progress bar per transport.

The bars are driven by the status rows' progress (done of total, bytes) that the
daemon streams while the flush runs; Ctrl-C cancels the flush cleanly (the daemon
sends every transport its END_*_FLUSH and nothing queued is touched)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from ..api.client import EXIT_ERROR, EXIT_INTERRUPTED
from ._common import Ctx, emit_json, fail, json_option, pass_ctx


class _Bars:
    """One rich progress bar per transport: n of m, bytes, rate, status."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}

    def event(self, ev: dict[str, Any]) -> None:
        if self.progress is None:
            return
        if ev["event"] == "started":
            for name in ev["transports"]:
                self.tasks[name] = self.progress.add_task(
                    name, total=None, bytes="", status="waiting"
                )
            return
        row = ev.get("row") or {}
        task = self.tasks.get(row.get("name", ""))
        if task is None:
            return
        progress = row.get("progress")
        fields: dict[str, Any] = {"status": row.get("status", "")}
        if progress:
            now = time.monotonic()
            started = self.started.setdefault(row["name"], now)
            rate = progress["bytes_done"] / (now - started) if now > started else 0.0
            fields["bytes"] = f"{decimal(progress['bytes_done'])} {decimal(int(rate))}/s"
            self.progress.update(
                task, completed=progress["done"], total=progress["total"], **fields
            )
        else:
            self.progress.update(task, **fields)

    def finish(self, report: dict[str, Any]) -> None:
        if self.progress is None:
            return
        for result in report["results"]:
            task = self.tasks.get(result["transport"])
            if task is None:
                continue
            count = result["uploaded"] + result["downloaded"]
            status = (
                "cancelled" if result["cancelled"] else ("error" if result["error"] else "done")
            )
            total = self.progress.tasks[task].total
            self.progress.update(
                task,
                completed=max(count, int(total or 0)) if status == "done" else count,
                total=max(count, int(total or 0)) if status == "done" else total,
                bytes=decimal(result["bytes"]),
                status=status,
            )


def _summary(report: dict[str, Any]) -> None:
    for result in report["results"]:
        state = (
            "cancelled"
            if result["cancelled"]
            else (f"error: {result['error']}" if result["error"] else "ok")
        )
        click.echo(
            f"{result['transport']}: {result['uploaded']} sent, {result['downloaded']} received, "
            f"{decimal(result['bytes'])} in {result['seconds']:.1f} s ({state})"
        )


@click.command("flush")
@click.option("--upload", "mode", flag_value="upload", help="Send only.")
@click.option("--download", "mode", flag_value="download", help="Receive only.")
@click.option("--both", "mode", flag_value="both", default=True, help="Send and receive (default).")
@click.option("--transport", "-t", metavar="NAME", help="Only this transport.")
@json_option
@pass_ctx
def flush_cmd(obj: Ctx, mode: str, transport: str | None, as_json: bool) -> None:
    """Flush the queues now through the running daemon (Ctrl-C cancels)."""
    client = obj.client()
    console = Console(stderr=True)
    show = not as_json
    progress = (
        Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[bytes]}"),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        if show
        else None
    )
    bars = _Bars(progress)
    cancelled = False
    report: dict[str, Any] | None = None
    try:
        if progress is not None:
            progress.start()
        try:
            report = client.flush(
                upload=mode in ("upload", "both"),
                download=mode in ("download", "both"),
                transport=transport,
                on_event=bars.event,
            )
        except KeyboardInterrupt as exc:
            cancelled = True
            final = exc.args[0] if exc.args else None
            report = final if isinstance(final, dict) else None
        if report is not None:
            bars.finish(report)
    finally:
        if progress is not None:
            progress.stop()
    if as_json:
        emit_json(report if report is not None else {"cancelled": True, "results": []})
    elif report is not None:
        _summary(report)
    if cancelled or (report is not None and report["cancelled"]):
        click.echo("spoolbox: flush cancelled", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if report is not None and any(result["error"] for result in report["results"]):
        fail("the flush failed for some transports", EXIT_ERROR, kind="flush")
