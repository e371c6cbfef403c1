"""What every command shares: the profile, the client, JSON output, errors and exit codes."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from ..api.client import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_PROFILE,
    Client,
    ClientError,
)
from ..profile import Profile, ProfileError, find_profile, load_profile

__all__ = ["Ctx", "SpoolboxGroup", "emit_json", "fail", "json_option", "pass_ctx"]


@dataclass
class Ctx:
    """The command line's state: the profile path, loaded on first use."""

    profile_path: str | None = None
    json: bool = False
    _profile: Profile | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return find_profile(self.profile_path)

    def profile(self) -> Profile:
        if self._profile is None:
            self._profile = load_profile(self.path)
        return self._profile

    def client(self) -> Client:
        return Client(self.profile())


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def fail(message: str, code: int = EXIT_ERROR, *, kind: str = "error") -> NoReturn:
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
    """Turns the errors a script relies on into their exit codes (docs/operations.md)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProfileError as exc:
            fail(str(exc), EXIT_PROFILE, kind="profile")
        except ClientError as exc:
            fail(str(exc), exc.exit_code, kind=exc.code)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED, kind="interrupted")
