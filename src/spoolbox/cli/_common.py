"""What every command shares: the profile, the client, JSON output, errors and exit codes.

This module is imported by ``spoolbox --help``: it imports nothing heavy at the top
(the profile loader, the client and the store come in when a command needs them).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .os_errors import EXIT_OS_ERROR, os_error_line

if TYPE_CHECKING:
    from ..api.client import Client
    from ..profile import Profile

__all__ = ["Ctx", "SpoolboxGroup", "emit_json", "fail", "json_option", "pass_ctx"]

#: The exit codes of api/client.py, repeated here so that --help need not import it
#: (tests/cli/test_startup_imports.py checks they agree).
_EXIT_ERROR = 1
_EXIT_PROFILE = 5
_EXIT_INTERRUPTED = 130
#: The reader of the command's output went away (``spoolbox queue list | head``): a
#: quiet exit 1, as rich's console ends a table's printing then, and as Python's
#: documentation does it (signal.SIGPIPE's note).
_EXIT_PIPE = 1


@dataclass
class Ctx:
    """The command line's state: the profile path, loaded on first use."""

    profile_path: str | None = None
    json: bool = False
    debug: bool = False
    _profile: Profile | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        from ..profile import find_profile

        return find_profile(self.profile_path)

    def profile(self) -> Profile:
        if self._profile is None:
            from ..profile import load_profile

            self._profile = load_profile(self.path)
        return self._profile

    def client(self) -> Client:
        from ..api.client import Client

        return Client(self.profile())


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def fail(message: str, code: int = _EXIT_ERROR, *, kind: str = "error") -> NoReturn:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Ctx) if ctx is not None else None
    if obj is not None and obj.json:
        click.echo(json.dumps({"error": {"code": kind, "exit_code": code, "message": message}}))
    click.echo(f"spoolbox: {message}", err=True)
    sys.exit(code)


def _json_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(Ctx).json = True
    return value


def json_option(command: Any) -> Any:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,
        callback=_json_callback,
        help="Print JSON (schemas in docs/operations.md).",
    )(command)


class SpoolboxGroup(click.Group):
    """Turns the errors a script relies on into their exit codes (docs/operations.md):
    a profile error, a client error, an interrupt, and an operating system or store
    error (one line with a hint; the traceback only with ``spoolbox --debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
            return result
        except KeyboardInterrupt:
            fail("interrupted", _EXIT_INTERRUPTED, kind="interrupted")
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError as exc:
            if not _stdout_gone():
                _fail_for(ctx, exc)  # another pipe or socket (the daemon's): an error
            _quiet_exit(_EXIT_PIPE)
        except Exception as exc:
            _fail_for(ctx, exc)


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file (a test's capture)
        return False


def _quiet_exit(code: int) -> NoReturn:
    """Exit without another word: what is left in stdout's buffer goes nowhere (the
    interpreter would flush it at exit and print a BrokenPipeError)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(code)


def _fail_for(ctx: click.Context, exc: Exception) -> NoReturn:
    """Exit with the code ``exc`` stands for; re-raises an exception it does not know.
    The classes are imported here, once something went wrong, not for ``--help``."""
    from ..api.client import ClientError
    from ..profile import ProfileError
    from ..store import StoreError, StoreFull

    if isinstance(exc, ProfileError):
        fail(str(exc), _EXIT_PROFILE, kind="profile")
    # The daemon's full store (a ClientError too) is said as the same without it.
    if isinstance(exc, ClientError) and not isinstance(exc, StoreFull):
        fail(str(exc), exc.exit_code, kind=exc.code)
    if not isinstance(exc, OSError | StoreError):
        raise exc
    obj = ctx.find_object(Ctx)
    if obj is not None and obj.debug:
        raise exc
    fail(f"error: {os_error_line(exc)}", EXIT_OS_ERROR, kind="os_error")
