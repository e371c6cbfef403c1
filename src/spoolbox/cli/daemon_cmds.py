"""``spoolbox init`` (write a working profile) and ``spoolbox run`` (the daemon)."""

from __future__ import annotations

import getpass
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .._private import openness, private_dir, write_private
from ..api.client import EXIT_ERROR
from ..model.hostname import is_hostname
from ..profile import (
    DEFAULT_PROFILE_NAME,
    Profile,
    ask_missing_secrets,
    default_profile_text,
    load_profile,
)
from ..profile.default import RELAY_PASSWORD_FILE, Outbound, parse_relay
from ._common import Ctx, emit_json, fail, json_option, pass_ctx

if TYPE_CHECKING:
    from ..daemon.process import ServiceFactory


@click.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The data directory; the profile is written there as spoolbox.toml.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing profile.")
@click.option(
    "--smtp-port",
    type=click.IntRange(0, 65535),
    default=2525,
    show_default=True,
    help="Port of the SMTP submission listener on loopback (0: any free port).",
)
@click.option(
    "--relay",
    metavar="HOST[:PORT]",
    help="Send mail for other hosts (bob@example.org) through this smart host "
    "(STARTTLS, port 587 unless given; on this machine (localhost, 127.0.0.1) plain "
    "SMTP, port 25 unless given).",
)
@click.option(
    "--relay-user",
    metavar="USER",
    help="Log in to the smart host as USER; its password is read from relay.password "
    "beside the profile.",
)
@click.option(
    "--direct",
    is_flag=True,
    help="Send mail for other hosts directly to each domain's mail servers (MX lookup, "
    "port 25; needs the mx extra).",
)
@click.option(
    "--hostname",
    metavar="NAME",
    help="This host's mail name (EHLO, Received, reports); default: its FQDN.",
)
@json_option
@pass_ctx
def init_cmd(
    obj: Ctx,
    directory: Path,
    force: bool,
    smtp_port: int,
    relay: str | None,
    relay_user: str | None,
    direct: bool,
    hostname: str | None,
    as_json: bool,
) -> None:
    """Write a commented profile that works at once (SQLite store, Maildir transport,
    SMTP listener on loopback; with --relay or --direct, mail for other hosts too)."""
    outbound = _outbound(relay, relay_user, direct)
    if hostname is not None and not is_hostname(hostname):
        raise click.BadParameter(
            f"{hostname!r} is not a host name (letters, digits, '-' and '.')",
            param_hint="'--hostname'",
        )
    target = directory / DEFAULT_PROFILE_NAME
    if target.exists() and not force:
        fail(f"{target} exists; use --force to overwrite it", EXIT_ERROR, kind="exists")
    _make_data_dir(directory)
    private_dir(directory / "mail")
    # 0600: the profile is where secrets go (inline, or the names of their files).
    text = default_profile_text(
        directory, smtp_port=smtp_port, outbound=outbound, hostname=hostname
    )
    write_private(target, text)
    profile = load_profile(target)  # what we wrote must load
    if as_json:
        emit_json(
            {
                "profile": str(target.resolve()),
                "data_dir": str(profile.data_dir),
                "store": str(profile.store.path),
                "socket": str(profile.daemon.socket),
            }
        )
    else:
        click.echo(f"wrote {target}")
        for line in _next_steps(directory, outbound, profile):
            click.echo(line)
        click.echo(f"start the spooler with: spoolbox --profile {target} run")


def _outbound(relay: str | None, user: str | None, direct: bool) -> Outbound:
    if relay is not None and direct:
        raise click.UsageError("--relay and --direct exclude each other: choose one")
    if user is not None and relay is None:
        raise click.UsageError("--relay-user needs --relay (the smart host it logs in to)")
    if relay is None:
        return Outbound(direct=direct)
    try:
        return Outbound(relay=parse_relay(relay), user=user)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--relay'") from None


def _next_steps(directory: Path, outbound: Outbound, profile: Profile) -> list[str]:
    """What the user still has to do for the mail to other hosts to go out."""
    steps = []
    if outbound.user is not None:
        password = directory / RELAY_PASSWORD_FILE
        steps.append(
            f"put the smart host's password for {outbound.user} in {password} "
            f"(umask 077; printf %s PASSWORD > {password})"
        )
    if outbound.direct and importlib.util.find_spec("dns") is None:
        steps.append("direct delivery needs dnspython: pip install 'spoolbox[mx]'")
    if outbound.direct:
        steps.append(
            f"direct delivery: this host greets mail servers as {profile.spooler.hostname}; it "
            "needs port 25 out, a reverse DNS (PTR) record of its address giving that "
            "name, and SPF/DKIM for the sending domains (docs/operations.md, "
            '"Direct delivery")'
        )
        if "." not in profile.spooler.hostname:
            steps.append(
                f"{profile.spooler.hostname} is not a fully qualified name: most mail servers "
                "refuse it; spoolbox init --force --direct --hostname mail.example.org"
            )
    if outbound.direct or outbound.relay is not None:
        steps.append("check it with: spoolbox check")
    return steps


def _make_data_dir(directory: Path) -> None:
    """The data directory, private: created 0700; an existing one that other users can
    read is made 0700 (said on stderr); one they can write, or that belongs to another
    user, is refused: it cannot be made safe after the fact (they may have put files
    in it already), which is why Postfix refuses a group- or world-writable queue."""
    if not directory.exists():
        private_dir(directory)
        return
    why = openness(directory)
    if why is None:
        return
    owner = directory.stat().st_uid
    if why.startswith("writable") or owner != os.geteuid():
        whose = f", owned by uid {owner}" if owner != os.geteuid() else ""
        fail(
            f"{directory} is {why}{whose}: other users could read or replace the queued "
            "mail, the profile or the socket; use a directory only you can write "
            "(spoolbox init --dir NEW creates it mode 0700)",
            EXIT_ERROR,
            kind="permissions",
        )
    mode = directory.stat().st_mode & 0o7777
    os.chmod(directory, mode & 0o7700)
    click.echo(
        f"spoolbox: {directory} was {why}: made it {mode & 0o7700:04o}, as queued mail is kept "
        "there",
        err=True,
    )


@click.command("run")
@click.option("--no-nice", is_flag=True, help="Do not lower the CPU priority.")
@click.option(
    "--no-dialog",
    is_flag=True,
    help=(
        "Never ask for missing credentials (the default when stdin is not a terminal "
        "or the daemon runs as a background job)."
    ),
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Override [log] level.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Delivery worker processes besides the daemon's own spooler (overrides [daemon] workers).",
)
@pass_ctx
def run_cmd(
    obj: Ctx, no_nice: bool, no_dialog: bool, log_level: str | None, workers: int | None
) -> None:
    """Run the spooler daemon in the foreground (SIGTERM/SIGINT stop it, SIGHUP reloads
    the profile)."""
    from ..daemon import DaemonError, run_daemon

    profile = obj.profile()
    why_not = _why_no_dialog(no_dialog)
    interactive = why_not is None
    if not interactive and profile.missing:
        # Never touch the terminal then: a background job that reads or sets it is
        # stopped by SIGTTIN/SIGTTOU.  Those transports stay off-line (their rows say
        # why; the daemon logs which setting would provide each secret).
        click.echo(f"spoolbox: not asking for missing credentials: {why_not}", err=True)
    extra: dict[tuple[str, str], str] = {}
    if interactive and profile.missing:
        # The logon dialog (LogonFlags.NO_DIALOG is clear): ask for what is missing.
        extra = ask_missing_secrets(profile, getpass.getpass)
        if extra:
            profile = load_profile(profile.path, extra_secrets=extra)
    try:
        code = run_daemon(
            profile,
            interactive=interactive,
            renice=not no_nice,
            extra_secrets=extra,
            log_level=log_level.upper() if log_level else None,
            services=web_services(profile),
            workers=workers,
        )
    except DaemonError as exc:
        fail(str(exc), EXIT_ERROR, kind="daemon")
    sys.exit(code)


def web_services(profile: Profile) -> list[ServiceFactory]:
    """The web page, served when ``[web] enabled`` and switched on or off by a reload
    (:mod:`spoolbox.cli.web_service`; spoolbox.web needs the ``web`` extra)."""
    if profile.web.enabled:
        try:
            import spoolbox.web.server  # noqa: F401  # the extra, checked before the start
        except ImportError as exc:
            fail(
                f"[web] enabled needs the web extra: pip install 'spoolbox[web]' ({exc})",
                EXIT_ERROR,
                kind="profile",
            )
    from .web_service import WebService

    return [WebService]


def _why_no_dialog(no_dialog: bool) -> str | None:
    """Why the logon dialog must not ask (None: it may).

    It asks only with a terminal on stdin and this process in the foreground process
    group of that terminal (``tcgetpgrp == getpgrp``, as a shell's job control has it).
    """
    if no_dialog:
        return "--no-dialog"
    if not sys.stdin.isatty():
        return "stdin is not a terminal"
    try:
        foreground = os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        foreground = False
    if not foreground:
        return "not in the foreground process group of the terminal (a background job)"
    return None
