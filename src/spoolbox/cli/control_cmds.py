"""``spoolbox stop`` and ``spoolbox reload``: signal the running daemon, as a sysadmin
would with ``kill``, and wait for the outcome.

``stop`` sends SIGTERM to the pid in the pid file and waits until the daemon has
released its lock and its process has exited (in-flight work finished or returned to
the queue).
``reload`` sends SIGHUP to the pid the local API reports and waits, through the API,
until the daemon says how the reload went: an invalid new profile is reported (exit
5) while the daemon keeps running on the old one.  Exit codes: docs/operations.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import click

from ._common import Ctx, emit_json, fail, json_option, pass_ctx

__all__ = ["reload_cmd", "stop_cmd"]

_EXIT_NOT_RUNNING = 3  # as api/client.py's EXIT_NOT_RUNNING
_EXIT_PROFILE = 5
_POLL = 0.1


def _running_pid(pid_file: Path) -> int | None:
    """The pid of the daemon holding the lock on ``pid_file``; None when none holds it."""
    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped by its
    parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _pid_file(obj: Ctx) -> Path:
    """The profile's pid file; when the profile has since been broken, read from its
    raw TOML (``data_dir``, ``[daemon] pid_file``), so that a daemon can be stopped
    whatever was done to its profile meanwhile."""
    from ..profile import ProfileError

    try:
        return obj.profile().daemon.pid_file
    except ProfileError as exc:
        try:
            data = tomllib.loads(obj.path.read_text(encoding="utf-8"))
            data_dir = obj.path.resolve().parent / Path(data.get("data_dir", ".")).expanduser()
            daemon = data.get("daemon", {})
            name = Path(daemon.get("pid_file", "spoolbox.pid")).expanduser()
        except (OSError, ValueError, TypeError, AttributeError):
            raise exc from None
        click.echo(f"spoolbox: the profile is invalid now: {exc}", err=True)
        return Path(os.path.normpath(data_dir / name))


def _waiting(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options stop and reload share: ``--timeout`` (waiting for ``what``),
    ``--json``, and the context."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        command = pass_ctx(command)
        command = json_option(command)
        return click.option(
            "--timeout",
            type=click.FloatRange(min=0),
            default=60.0,
            show_default=True,
            help=f"Seconds to wait for {what}.",
        )(command)

    return decorate


@click.command("stop")
@_waiting("the daemon to exit")
def stop_cmd(obj: Ctx, timeout: float, as_json: bool) -> None:
    """Stop the running daemon (SIGTERM) and wait until it has exited."""
    pid_file = _pid_file(obj)
    pid = _running_pid(pid_file)
    if pid is None:
        fail(
            f"no daemon runs for this profile (no lock on {pid_file})",
            _EXIT_NOT_RUNNING,
            kind="not_running",
        )
    if pid <= 0:
        fail(f"the pid file {pid_file} is locked but holds no pid", kind="error")
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while _running_pid(pid_file) is not None or _alive(pid):
        if time.monotonic() >= end:
            fail(f"the daemon (pid {pid}) did not exit within {timeout:g} s", kind="timeout")
        time.sleep(_POLL)
    if as_json:
        emit_json({"stopped": pid})
    else:
        click.echo(f"stopped the daemon (pid {pid})")


@click.command("reload")
@_waiting("the daemon to say how the reload went")
def reload_cmd(obj: Ctx, timeout: float, as_json: bool) -> None:
    """Reload the profile of the running daemon (SIGHUP) and report the outcome."""
    from ..api.client import ClientError, DaemonNotRunning
    from ..profile import ProfileError

    try:
        client = obj.client()
    except ProfileError as exc:
        fail(f"{exc} (not reloaded: the daemon runs on as before)", _EXIT_PROFILE, kind="profile")
    before = client.ping()  # DaemonNotRunning: exit 3
    attempts = before.get("reload_attempts")
    if attempts is None:
        fail("the running daemon is too old to report reloads; use kill -HUP", kind="error")
    os.kill(int(before["pid"]), signal.SIGHUP)
    end = time.monotonic() + timeout
    while True:
        now: dict[str, object] | None = None
        with contextlib.suppress(ClientError):
            now = client.ping()
        if now is not None and now.get("reload_attempts", 0) > attempts:
            break
        if time.monotonic() >= end:
            if now is None:
                raise DaemonNotRunning("the daemon went away while reloading")
            fail(f"the daemon did not finish reloading within {timeout:g} s", kind="timeout")
        time.sleep(_POLL)
    error = now.get("reload_error")
    if error:
        fail(f"reload failed, the daemon runs on: {error}", _EXIT_PROFILE, kind="profile")
    if as_json:
        emit_json({"reloaded": True, "reloads": now.get("reloads")})
    else:
        click.echo(f"reloaded {now.get('profile')}")
