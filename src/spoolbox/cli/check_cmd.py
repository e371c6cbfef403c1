"""``spoolbox check``: is the profile good, can every transport log on, and reach its
server?

After its logon each transport is asked to validate its state (ValidateState): the
SMTP transport connects to its smart host then (greeting, EHLO, STARTTLS, AUTH as
configured), so a relay that is down or refuses the login is a problem here, not
"ok" until the first message is deferred.

One line per transport, ``NAME: ok`` or ``NAME: <the problem>``, then one per spooler
hook (``hook:NAME: ok``: its class loads and takes its options, a DKIM key included),
then, when the profile has ``[local_names]``, ``local_names: ok`` when a transport
serves every address a local name can become (cron's ``root``: sendmail refuses it
otherwise), then one per listener with TLS (``listener:NAME: ok (certificate valid
until ...)``: its certificate and key load, and it does not expire within 14
days), then a ``routing: warning: ...`` line for each pair of transports limited to
the same domain for the same address type (the second gets that mail only when the
first declines it; a warning, not a problem), and a ``workers: ...`` line for each
transport with a limit the delivering processes share when ``[daemon] workers`` is
set (``max_connections``, ``destination_concurrency``, ``destination_rate_delay``, set
in the profile or its provider's default; a provider that runs in one process only:
each process's part, :mod:`spoolbox.daemon.shares`; the daemon logs it at start as
well), and a ``workers: warning: ...`` line when those limits leave some workers
nothing to deliver for; exit 0 when all are good, 1 when any of them has a problem,
5 when the profile itself cannot be read (docs/operations.md, "Exit codes").  The
logons run on a throw-away spooler over an empty in-memory store, outbound only:
nothing is sent, and no mailbox is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from typing import TYPE_CHECKING

import click

from ..routing import shadowed_domains
from ._common import Ctx, emit_json, json_option, pass_ctx

if TYPE_CHECKING:
    from .. import Spooler

__all__ = ["check_cmd"]


@click.command("check")
@click.option("--no-logon", is_flag=True, help="Check the options only; do not log on.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds the logons and their connections may take together.",
)
@json_option
@pass_ctx
def check_cmd(obj: Ctx, no_logon: bool, timeout: float, as_json: bool) -> None:
    """Check the profile and every transport's options, log each on, and see that it can
    reach its server.

    The SMTP transport connects to its smart host (greeting, EHLO, STARTTLS and AUTH as
    configured); nothing is sent."""
    from ..daemon.preflight import check_transports, provider_limits
    from ..daemon.shares import idle_workers, shares_told

    profile = obj.profile()  # a ProfileError: exit 5 (SpoolboxGroup)
    problems: dict[str, str | None] = {c.transport: c.problem for c in check_transports(profile)}
    if not no_logon:
        ready = [name for name, problem in problems.items() if problem is None]
        problems.update(asyncio.run(_try_logons(profile, ready, timeout)))
    hooks = _check_hooks(profile)
    local_names = _check_local_names(profile)
    certificates = _check_certificates(profile)
    warnings = list(shadowed_domains(profile.spooler.declared_routes()))
    shared = shares_told(profile.spooler.transports, profile.daemon.workers, provider_limits)
    idle = idle_workers(profile.spooler.transports, profile.daemon.workers, provider_limits)
    if as_json:
        emit_json(
            {
                "profile": str(profile.path),
                "transports": [
                    {"name": name, "ok": problem is None, "problem": problem}
                    for name, problem in problems.items()
                ],
                "hooks": [
                    {"name": name, "ok": problem is None, "problem": problem}
                    for name, problem in hooks.items()
                ],
                "local_names": {"ok": not local_names, "problem": local_names or None},
                "listeners": [
                    {
                        "name": name,
                        "ok": c.problem is None,
                        "problem": c.problem,
                        "certificate_expires": c.not_after,
                    }
                    for name, c in certificates.items()
                ],
                "warnings": warnings + ([idle] if idle is not None else []),
                "shared_limits": shared,
            }
        )
    else:
        click.echo(f"profile {profile.path}: ok")
        for name, problem in problems.items():
            click.echo(f"{name}: {problem or 'ok'}")
        for name, problem in hooks.items():
            click.echo(f"hook:{name}: {problem or 'ok'}")
        if local_names is not None:
            click.echo(f"local_names: {local_names or 'ok'}")
        for name, c in certificates.items():
            click.echo(f"listener:{name}: {c.problem or 'ok'}{c.validity}")
        for warning in warnings:
            click.echo(f"routing: warning: {warning}")
        for line in shared:
            click.echo(f"workers: {line}")
        if idle is not None:
            click.echo(f"workers: warning: {idle}")
    bad = (
        any(problems.values())
        or any(hooks.values())
        or bool(local_names)
        or any(c.problem for c in certificates.values())
    )
    sys.exit(1 if bad else 0)


@dataclasses.dataclass(frozen=True)
class _Certificate:
    """A TLS listener's certificate as ``check`` found it."""

    problem: str | None
    not_after: float | None = None

    @property
    def validity(self) -> str:
        if self.not_after is None or self.problem is not None:
            return ""
        day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.not_after))
        return f" (certificate valid until {day})"


def _check_certificates(profile: object) -> dict[str, _Certificate]:
    """Each enabled listener with ``tls_cert``: whether its certificate and key load
    (as the listener loads them) and when the certificate expires; a problem when it
    does not load, has expired, or expires within 14 days (a renewal that failed)."""
    import ssl

    from ..daemon.listeners import certificate_end, tls_listeners
    from ..ingress.certdates import expiry_problem
    from ..profile import Profile

    assert isinstance(profile, Profile)
    out: dict[str, _Certificate] = {}
    for name, cert, key in tls_listeners(profile):
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            not_after = certificate_end(cert)
        except (OSError, ssl.SSLError, ValueError) as exc:
            out[name] = _Certificate(f"cannot load the TLS certificate {cert}: {exc}")
            continue
        out[name] = _Certificate(expiry_problem(not_after, time.time()), not_after)
    return out


def _check_local_names(profile: object) -> str | None:
    """``[local_names]``: "" when an outbound transport may take every address a local
    name can become (by the transports' declared address types), else the first that
    none serves; None when the profile has no such table."""
    from ..model import Address
    from ..profile import Profile
    from ..routing.verify import verify

    assert isinstance(profile, Profile)
    rule = profile.local_names
    if rule is None:
        return None
    table = profile.spooler.declared_routes()
    made: list[tuple[str, Address]] = [
        (f"aliases.{name}", address) for name, found in rule.expanded.items() for address in found
    ]
    if rule.address_type is not None:
        made.append(("address_type", Address(rule.address_type, "NAME")))
    if rule.domain is not None:
        made.append(("domain", Address("SMTP", f"NAME@{rule.domain}")))
    for where, address in made:
        verdict = verify(table, address.type, address.value)
        if not verdict.routable:
            return f"{where}: {address}: {verdict.text}"
    return ""


def _check_hooks(profile: object) -> dict[str, str | None]:
    """Each ``[[hooks]]`` entry: None if its class loads and takes its options (as the
    daemon builds it at start, where a broken hook holds all outbound mail), else why
    not."""
    from .._core.config import HOOK_ENTRY_POINT_GROUP, load_provider_class
    from ..profile import Profile

    assert isinstance(profile, Profile)
    out: dict[str, str | None] = {}
    for config in profile.hooks:
        try:
            cls = load_provider_class(
                config.hook, group=HOOK_ENTRY_POINT_GROUP, what="spooler hook"
            )
            cls(dict(config.options))
        except Exception as exc:  # whatever a hook's constructor raises is its problem
            out[config.name] = f"cannot load hook {config.hook!r}: {exc}"
        else:
            out[config.name] = None
    return out


async def _try_logons(profile: object, names: list[str], timeout: float) -> dict[str, str | None]:
    """Log each of ``names`` on once; name -> None (logged on) or why not."""
    from .. import AlwaysIdle, MemoryStore, Spooler
    from ..profile import Profile

    assert isinstance(profile, Profile)
    if not names:
        return {}
    # What goes wrong is in the lines printed; the spooler's warnings would repeat it.
    logging.getLogger("spoolbox").setLevel(logging.ERROR)
    config = profile.spooler
    transports = tuple(
        dataclasses.replace(t, inbound=False, outbound=True)
        for t in config.transports
        if t.name in names
    )
    policy = dataclasses.replace(config.policy, shutdown_grace=0.5)
    config = dataclasses.replace(config, transports=transports, policy=policy)
    spooler = Spooler.open(config, store=MemoryStore(), close_store=True, idle=AlwaysIdle())
    out: dict[str, str | None] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await spooler.start()
    try:
        with contextlib.suppress(TimeoutError):
            await spooler.wait_ready(timeout=timeout)
        for name in names:
            host = spooler.host(name)
            if host.session is not None:
                out[name] = await _validate(spooler, name, deadline - loop.time(), timeout)
            elif not host.tried_logon.is_set():
                out[name] = f"logon did not finish within {timeout:g} s"
            else:
                out[name] = host.last_error or "logon failed"
    finally:
        await spooler.aclose()
    return out


async def _validate(spooler: Spooler, name: str, left: float, timeout: float) -> str | None:
    """ValidateState on a logged-on transport: None if it can work now (an SMTP
    transport connects to its smart host), else why not."""
    try:
        async with asyncio.timeout(max(left, 0.1)):
            state = (await spooler.validate_state(transport=name))[name]
    except TimeoutError:
        return f"logged on, but not reachable: no answer within {timeout:g} s (--timeout)"
    if state == "offline":
        return "logged off while it was checked"
    if state != "error":
        return None  # "ok" ("busy" is a critical section's holder: none here)
    error: str = spooler.host(name).last_error or "validate_state failed"
    error = error.removeprefix("validate_state raised ")
    # A server that cannot be reached, or (e.g. DANE behind DNS servers that do not
    # validate DNSSEC) a setting that cannot work.
    said = "not reachable" if error.startswith("NetworkError: ") else "cannot work"
    return f"logged on, but {said}: {error}"
