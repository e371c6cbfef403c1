"""``spoolbox install-sendmail [--prefix DIR] [--force]``: the ``sendmail``, ``mailq``
and ``newaliases`` commands, as symbolic links to the ``spoolbox-sendmail`` console
script, where Postfix puts them: ``DIR/sbin/sendmail``, ``DIR/bin/mailq``,
``DIR/bin/newaliases`` (``DIR`` is ``/usr`` by default).

spoolbox installs nothing there by itself; this command does, when asked.  A file
that is not one of spoolbox's links is never replaced without ``--force`` (it is
another mail system's sendmail, most likely).  Links are replaced atomically."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ..api.client import EXIT_ERROR
from ._common import emit_json, fail, json_option

__all__ = ["SCRIPT", "install_sendmail_cmd", "links", "plan"]

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


@click.command("install-sendmail")
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/usr"),
    show_default=True,
    help="Make PREFIX/sbin/sendmail, PREFIX/bin/mailq and PREFIX/bin/newaliases.",
)
@click.option("--force", is_flag=True, help="Replace files that are not spoolbox's links.")
@json_option
def install_sendmail_cmd(prefix: Path, force: bool, as_json: bool) -> None:
    """Link sendmail, mailq and newaliases to spoolbox (as Postfix installs them)."""
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
    if as_json:
        emit_json(
            {
                "target": str(target),
                "links": [{"path": str(s.link), "action": s.action} for s in steps],
            }
        )
        return
    for step in steps:
        verb = {"create": "made", "replace": "replaced", "keep": "already"}[step.action]
        click.echo(f"{verb}: {step.link} -> {target}")
