"""``spoolbox flush``: send and receive now, with a live progress bar per transport.

The bars are driven by the status rows' progress (done of total, bytes) that the
daemon streams while the flush runs; each ends with what happened to the mail
("2 delivered, 1 deferred", in a warning colour when anything was not delivered).
Not on a terminal (cron, a pipe) there are no bars: one plain line per transport
and the total.  The exit code says how it went (:mod:`.flush_report`); Ctrl-C
cancels the flush cleanly (the daemon sends every transport its END_*_FLUSH and
nothing queued is touched)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from ..api.client import EXIT_OK
from ._common import Ctx, emit_json, json_option, pass_ctx
from .flush_report import Severity, exit_code, outcome_phrase, result_line, severity, total_line

#: A transport's line and the total, coloured by how it went (on a terminal only).
_COLOURS = {Severity.OK: "green", Severity.WARNING: "yellow", Severity.FAILED: "red"}


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
        """Each bar ends with its outcome: delivered (and received) of all there was."""
        if self.progress is None:
            return
        for result in report["results"]:
            task = self.tasks.get(result["transport"])
            if task is None:
                continue
            done = result.get("delivered", 0) + result["downloaded"]
            undone = sum(result.get(key, 0) for key in ("deferred", "failed", "queued"))
            colour = _COLOURS[severity(result)]
            words = outcome_phrase(result, received=result["downloaded"])
            if result.get("held"):
                words += f" ({result['held']})"
            if result["cancelled"] or result.get("timed_out") or result["error"]:
                words += " (cancelled)" if result["cancelled"] else ""
                words += " (timed out)" if result.get("timed_out") else ""
                words += " (error)" if result["error"] else ""
            self.progress.update(
                task,
                completed=done,
                total=max(done + undone, 1) if undone else max(done, 1),
                bytes=decimal(result["bytes"]),
                status=f"[{colour}]{words}[/]",
            )


def _summary(report: dict[str, Any]) -> None:
    """One line per transport and the total (styles are dropped off a terminal)."""
    for result in report["results"]:
        click.secho(result_line(result), fg=_COLOURS[severity(result)])
    worst = max((severity(r) for r in report["results"]), default=Severity.OK)
    click.secho(total_line(report), fg=_COLOURS[worst], bold=worst is not Severity.OK)


@click.command("flush")
@click.option("--upload", "mode", flag_value="upload", help="Send only.")
@click.option("--download", "mode", flag_value="download", help="Receive only.")
@click.option("--both", "mode", flag_value="both", default=True, help="Send and receive (default).")
@click.option("--transport", "-t", metavar="NAME", help="Only this transport.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop waiting after this long (default: the profile's [policy] flush_deadline); "
    "what is left stays queued.",
)
@json_option
@pass_ctx
def flush_cmd(
    obj: Ctx, mode: str, transport: str | None, timeout: float | None, as_json: bool
) -> None:
    """Flush the queues now through the running daemon (Ctrl-C cancels).

    Exits 0 when everything was delivered (or there was nothing to do), 75 when
    something was deferred or is still queued, 69 when a recipient failed."""
    client = obj.client()
    console = Console(stderr=True)
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
        if not as_json and console.is_terminal
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
                timeout=timeout,
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
    code = exit_code(report, interrupted=cancelled)
    if code == 130:
        click.echo("spoolbox: flush cancelled", err=True)
    if code != EXIT_OK:
        sys.exit(code)
