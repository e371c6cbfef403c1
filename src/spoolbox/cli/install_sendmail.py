"""``spoolbox install-sendmail [--prefix DIR] [--force]``: the ``sendmail``, ``mailq``
and ``newaliases`` commands, as symbolic links to the ``spoolbox-sendmail`` console
script, where Postfix puts them: ``DIR/sbin/sendmail``, ``DIR/bin/mailq``,
``DIR/bin/newaliases`` (``DIR`` is ``/usr`` by default).

spoolbox installs nothing there by itself; this command does, when asked.  A file
that is not one of spoolbox's links is never replaced without ``--force`` (it is
another mail system's sendmail, most likely).  Links are replaced atomically.

cron runs sendmail with neither ``$SPOOLBOX_PROFILE`` nor a profile in its working
directory: it finds the host's profile at ``/etc/spoolbox/spoolbox.toml``
(:data:`~spoolbox.profile.SYSTEM_PROFILE`).  ``--system-profile`` links that to the
profile in use; without it the command says when that file is missing or is not
the profile in use."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ..api.client import EXIT_ERROR
from ._common import Ctx, emit_json, fail, json_option, pass_ctx

__all__ = ["SCRIPT", "install_sendmail_cmd", "links", "plan", "system_profile"]

#: the console script the links point to (pyproject.toml, [project.scripts])
SCRIPT = "spoolbox-sendmail"


def links(prefix: Path) -> tuple[Path, ...]:
    """Where Postfix puts its sendmail(1) interface under ``prefix``."""
    return (prefix / "sbin" / "sendmail", prefix / "bin" / "mailq", prefix / "bin" / "newaliases")


@dataclass(frozen=True, slots=True)
class Step:
    link: Path
    #: "create", "replace" (a spoolbox link, or --force), "keep" (already right),
    #: "refuse" (someone else's file, without --force)
    action: str
    was: str = ""  # what is there now, for the messages


def _ours(path: Path) -> bool:
    return path.is_symlink() and Path(os.readlink(path)).name == SCRIPT


def plan(prefix: Path, target: Path, *, force: bool) -> list[Step]:
    """What installing would do to each link (a pure look at the file system)."""
    steps = []
    for link in links(prefix):
        if not link.is_symlink() and not link.exists():
            steps.append(Step(link, "create"))
            continue
        was = f"a link to {os.readlink(link)}" if link.is_symlink() else "a file"
        if link.is_symlink() and Path(os.readlink(link)) == target:
            steps.append(Step(link, "keep", was))
        elif _ours(link) or force:
            steps.append(Step(link, "replace", was))
        else:
            steps.append(Step(link, "refuse", was))
    return steps


def _script() -> Path | None:
    """The spoolbox-sendmail script of this installation: next to the running
    ``spoolbox`` script or the interpreter (a virtual environment's bin), else on PATH."""
    for directory in (Path(sys.argv[0]).parent, Path(sys.executable).parent):
        candidate = directory / SCRIPT
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    found = shutil.which(SCRIPT)
    return Path(found).absolute() if found else None


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.spoolbox-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def system_profile(profile: Path, system: Path) -> str:
    """What ``system`` (the host's profile path) is, for the profile in use ``profile``:
    "same" (it is that profile, or a link to it), "missing", or "other"."""
    if not system.exists() and not system.is_symlink():
        return "missing"
    try:
        return "same" if system.resolve() == profile.resolve() else "other"
    except OSError:
        return "other"


def _link_system_profile(profile: Path, system: Path) -> None:
    state = system_profile(profile, system)
    if state == "same":
        return
    if state == "other" and not system.is_symlink():
        fail(
            f"{system} is a file, not the profile in use ({profile}): nothing was changed "
            "there; remove it, or pass --profile to use it",
            EXIT_ERROR,
            kind="exists",
        )
    try:
        _link(system, profile.resolve())
    except OSError as exc:
        fail(f"cannot make {system}: {exc.strerror or exc} (run as root)", EXIT_ERROR)


@click.command("install-sendmail")
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/usr"),
    show_default=True,
    help="Make PREFIX/sbin/sendmail, PREFIX/bin/mailq and PREFIX/bin/newaliases.",
)
@click.option("--force", is_flag=True, help="Replace files that are not spoolbox's links.")
@click.option(
    "--system-profile",
    "system_profile_flag",
    is_flag=True,
    help="Also link /etc/spoolbox/spoolbox.toml to the profile in use, where cron's "
    "sendmail finds it.",
)
@json_option
@pass_ctx
def install_sendmail_cmd(
    obj: Ctx, prefix: Path, force: bool, system_profile_flag: bool, as_json: bool
) -> None:
    """Link sendmail, mailq and newaliases to spoolbox (as Postfix installs them)."""
    from ..profile import SYSTEM_PROFILE

    profile = obj.path.absolute()
    if system_profile_flag and not profile.is_file():
        fail(f"--system-profile: {profile}: no such profile to link", EXIT_ERROR)
    target = _script()
    if target is None:
        fail(
            f"cannot find the {SCRIPT} script of this installation (next to "
            f"{sys.executable} or on PATH); reinstall spoolbox",
            EXIT_ERROR,
        )
    steps = plan(prefix, target, force=force)
    refused = [s for s in steps if s.action == "refuse"]
    if refused:
        names = "; ".join(f"{s.link} is {s.was}" for s in refused)
        fail(
            f"{names}: not spoolbox's (another mail system's sendmail?); nothing was "
            "changed. Remove it, or pass --force to replace it",
            EXIT_ERROR,
            kind="exists",
        )
    for step in steps:
        if step.action in ("create", "replace"):
            try:
                _link(step.link, target)
            except OSError as exc:
                fail(
                    f"cannot make {step.link}: {exc.strerror or exc} (run as root for "
                    "/usr, or pass --prefix)",
                    EXIT_ERROR,
                    kind="permissions",
                )
    before = system_profile(profile, SYSTEM_PROFILE)
    if system_profile_flag:
        _link_system_profile(profile, SYSTEM_PROFILE)
    after = system_profile(profile, SYSTEM_PROFILE)
    if as_json:
        emit_json(
            {
                "target": str(target),
                "links": [{"path": str(s.link), "action": s.action} for s in steps],
                "system_profile": {"path": str(SYSTEM_PROFILE), "is": after},
            }
        )
        return
    for step in steps:
        verb = {"create": "made", "replace": "replaced", "keep": "already"}[step.action]
        click.echo(f"{verb}: {step.link} -> {target}")
    if system_profile_flag:
        verb = "already" if before == "same" else "made"
        click.echo(f"{verb}: {SYSTEM_PROFILE} -> {profile.resolve()}")
    elif after != "same":
        what = "does not exist" if after == "missing" else "is another profile"
        if profile.is_file():
            how = f"pass --system-profile to link it to {profile}"
        else:  # no profile found here to link
            how = "link it with `spoolbox -p PROFILE install-sendmail --system-profile`"
        click.echo(
            f"note: {SYSTEM_PROFILE} {what}: cron runs sendmail without SPOOLBOX_PROFILE "
            f"and finds the profile there; {how}"
        )
