"""The ``spoolbox`` command: init, run, submit, send, status, queue, flush, inbox,
transports, sendmail.

Every command reads the profile given with ``--profile`` (or ``$SPOOLBOX_PROFILE``,
or ``./spoolbox.toml``).  Commands that act on the spooler talk to the running
daemon through its local API (:mod:`spoolbox.client`); ``submit``, ``send``,
``queue`` and ``inbox`` work on the store directly when no daemon runs.  Exit codes
and the ``--json`` schemas are documented in docs/operations.md.

Built with click (commands) and rich (tables, progress bars).
"""

from __future__ import annotations

import click

from .. import __version__
from ._common import Ctx, SpoolboxGroup
from .daemon_cmds import init_cmd, run_cmd
from .flush_cmd import flush_cmd
from .install_sendmail import install_sendmail_cmd
from .messages import send_cmd, submit_cmd
from .queue_cmds import inbox_group, queue_group
from .sendmail_cmd import sendmail_cmd
from .status_cmds import status_cmd, transports_cmd

__all__ = ["cli", "main"]


@click.group(cls=SpoolboxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-p",
    "--profile",
    "profile_path",
    envvar="SPOOLBOX_PROFILE",
    metavar="PATH",
    help="The profile (default: $SPOOLBOX_PROFILE, else ./spoolbox.toml).",
)
@click.version_option(__version__, prog_name="spoolbox")
@click.pass_context
def cli(ctx: click.Context, profile_path: str | None) -> None:
    """spoolbox: a durable message spooler."""
    ctx.ensure_object(Ctx).profile_path = profile_path


for _cmd in (
    init_cmd,
    run_cmd,
    submit_cmd,
    send_cmd,
    status_cmd,
    queue_group,
    flush_cmd,
    inbox_group,
    transports_cmd,
    sendmail_cmd,
    install_sendmail_cmd,
):
    cli.add_command(_cmd)


def main() -> None:
    """The console script."""
    cli.main(prog_name="spoolbox")


if __name__ == "__main__":
    main()
