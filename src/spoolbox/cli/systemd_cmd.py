"""``spoolbox systemd-unit``: print the systemd unit shipped with the package
(spoolbox/daemon/spoolbox.service; with ``--template`` the template unit
spoolbox/daemon/spoolbox@.service, one node per instance), with ExecStart= and
ExecReload= pointing at this installation's ``spoolbox`` command."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import click

__all__ = ["UNIT_COMMAND", "systemd_unit_cmd", "unit_text"]

#: The command the shipped unit names, replaced by ``--command``.
UNIT_COMMAND = "/opt/spoolbox/.venv/bin/spoolbox"


def unit_text(command: str = UNIT_COMMAND, *, template: bool = False) -> str:
    """The shipped unit (the template ``spoolbox@.service`` if ``template``), running
    ``command``."""
    name = "spoolbox@.service" if template else "spoolbox.service"
    text = resources.files("spoolbox.daemon").joinpath(name).read_text("utf-8")
    return text.replace(UNIT_COMMAND, command)


def _this_command() -> str:
    script = Path(sys.executable).parent / "spoolbox"
    return str(script) if script.exists() else UNIT_COMMAND


@click.command("systemd-unit")
@click.option(
    "--command",
    "command",
    metavar="PATH",
    default=None,
    help="The spoolbox command the unit runs (default: this installation's).",
)
@click.option(
    "--template",
    is_flag=True,
    help="The template unit spoolbox@.service: one node per instance (spoolbox@NODE).",
)
def systemd_unit_cmd(command: str | None, template: bool) -> None:
    """Print a hardened systemd unit (Type=notify) for the daemon."""
    click.echo(unit_text(command or _this_command(), template=template), nl=False)
