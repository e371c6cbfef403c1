"""The ``spoolbox`` command: init, run, check, stop, reload, submit, send, status, queue,
flush, inbox, transports, web, sendmail, install-sendmail, store, systemd-unit.

Every command reads the profile given with ``--profile`` (or ``$SPOOLBOX_PROFILE``,
or ``./spoolbox.toml``).  Commands that act on the spooler talk to the running
daemon through its local API (:mod:`spoolbox.client`); ``submit``, ``send``,
``queue`` and ``inbox`` work on the store directly when no daemon runs.  Exit codes
and the ``--json`` schemas are documented in docs/operations.md.

Built with click (commands) and rich (tables, progress bars).  The group loads a
command's module only when that command runs (:data:`COMMANDS`), so that ``spoolbox
--help`` and a ``send`` do not pay for the modules the other commands import.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__
from ._common import Ctx, SpoolboxGroup

__all__ = ["COMMANDS", "cli", "main"]

#: name -> (module in spoolbox.cli, attribute, the short help ``--help`` lists).  The
#: short help is the command's own (tests/cli/test_startup_imports.py checks that it
#: is): writing it here spares ``--help`` importing every command's module.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": (
        "daemon_cmds",
        "init_cmd",
        "Write a commented profile that works at once (SQLite store, Maildir transport, "
        "SMTP listener on loopback; with --relay or --direct, mail for other hosts too).",
    ),
    "run": (
        "daemon_cmds",
        "run_cmd",
        "Run the spooler daemon in the foreground (SIGTERM/SIGINT stop it, SIGHUP reloads "
        "the profile).",
    ),
    "check": (
        "check_cmd",
        "check_cmd",
        "Check the profile and every transport's options, log each on, and see that it "
        "can reach its server.",
    ),
    "stop": (
        "control_cmds",
        "stop_cmd",
        "Stop the running daemon (SIGTERM) and wait until it has exited.",
    ),
    "reload": (
        "control_cmds",
        "reload_cmd",
        "Reload the profile of the running daemon (SIGHUP) and report the outcome.",
    ),
    "submit": (
        "messages",
        "submit_cmd",
        "Submit an RFC 5322 message from FILE (or stdin); prints its id.",
    ),
    "send": ("messages", "send_cmd", "Build a MIME message and submit it; prints its id."),
    "status": ("status_cmds", "status_cmd", "Show the status table of the running spooler."),
    "queue": ("queue_cmds", "queue_group", "The outgoing queues (default: list)."),
    "flush": (
        "flush_cmd",
        "flush_cmd",
        "Flush the queues now through the running daemon (Ctrl-C cancels).",
    ),
    "inbox": (
        "queue_cmds",
        "inbox_group",
        "Received messages and reports for local senders (default: list).",
    ),
    "transports": (
        "status_cmds",
        "transports_cmd",
        "List installed transport providers and the profile's transports with their "
        "address types (from the running daemon, else as the profile declares them).",
    ),
    "web": (
        "web_cmd",
        "web_cmd",
        "Print the web page's address with its access token (opens nothing).",
    ),
    "store": ("store_cmds", "store_group", "The store itself: its schema, its size, a backup."),
    "systemd-unit": (
        "systemd_cmd",
        "systemd_unit_cmd",
        "Print a hardened systemd unit (Type=notify) for the daemon.",
    ),
    "sendmail": (
        "sendmail_cmd",
        "sendmail_cmd",
        "sendmail [-bs|-bp|-bv|-bi|-q] [-t] [-f SENDER] [-i] [options] [recipients...] "
        '(`spoolbox sendmail --help`; docs/operations.md, "sendmail").',
    ),
    "install-sendmail": (
        "install_sendmail",
        "install_sendmail_cmd",
        "Link sendmail, mailq and newaliases to spoolbox (as Postfix installs them).",
    ),
}


class LazyGroup(SpoolboxGroup):
    """A group whose commands (:data:`COMMANDS`) are imported when one is run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in COMMANDS:
            module, attr, _ = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
            assert isinstance(command, click.Command)
            self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in COMMANDS and name not in self.commands:
                short = click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit)
            else:
                command = self.get_command(ctx, name)
                if command is None or command.hidden:
                    continue
                short = command.get_short_help_str(limit)
            rows.append((name, short))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-p",
    "--profile",
    "profile_path",
    envvar="SPOOLBOX_PROFILE",
    metavar="PATH",
    help="The profile (default: $SPOOLBOX_PROFILE, else ./spoolbox.toml, else "
    "/etc/spoolbox/spoolbox.toml).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Show the traceback of an operating system or store error (else one line).",
)
@click.version_option(__version__, prog_name="spoolbox")
@click.pass_context
def cli(ctx: click.Context, profile_path: str | None, debug: bool) -> None:
    """spoolbox: a durable message spooler."""
    obj = ctx.ensure_object(Ctx)
    obj.profile_path = profile_path
    obj.debug = debug


def main() -> None:
    """The console script."""
    cli.main(prog_name="spoolbox")


if __name__ == "__main__":
    main()
