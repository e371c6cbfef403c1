"""``spoolbox sendmail``: the sendmail-compatible entry point (exit codes from sysexits.h).

The message goes through the running daemon, or straight into the store when no
daemon runs (it is sent when the daemon starts)."""

from __future__ import annotations

import asyncio
import sys

import click

from ..model import NewMessage
from ._common import Ctx, pass_ctx


@click.command(
    "sendmail",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def sendmail_cmd(obj: Ctx, argv: tuple[str, ...]) -> None:
    """sendmail [-t] [-f SENDER] [-i] [options] [recipients...] (see docs/operations.md)."""
    from ..ingress.sendmail import run_sendmail

    client = obj.client()

    async def submit(message: NewMessage) -> object:
        return await asyncio.to_thread(client.submit, message)

    code = asyncio.run(run_sendmail(list(argv), sys.stdin.buffer, submit, stderr=sys.stderr))
    sys.exit(code)
