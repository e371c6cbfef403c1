"""``spoolbox web``: the address of the daemon's web page, with its access token.

It prints the address and opens nothing (a browser, if there is one, is the user's
to start).  The token is made in the data directory if there is none yet (the
daemon reads the same file when it starts).  With ``[web] enabled = false`` it says
how to switch the page on and exits 5 (a profile matter); when the daemon is not
running, or runs but the page does not answer at its address (``[web]`` enabled or
moved since the daemon's last start or reload, or a port it could not take, which
another server may hold: the page is asked for its status with the token, so an
SMTP listener or another web server there is not taken for it), it still prints the
address and says so on stderr (exit 3).
"""

from __future__ import annotations

import http.client
import socket
import sys

import click

from ..api.client import EXIT_NOT_RUNNING, EXIT_PROFILE, DaemonNotRunning
from ..web.token import load_or_create_token, page_url
from ._common import Ctx, emit_json, fail, json_option, pass_ctx

_ANY_HOST = ("0.0.0.0", "::", "")


@click.command("web")
@json_option
@pass_ctx
def web_cmd(obj: Ctx, as_json: bool) -> None:
    """Print the web page's address with its access token (opens nothing)."""
    profile = obj.profile()
    web = profile.web
    if not web.enabled:
        fail(
            f"the web page is off: set enabled = true under [web] in {profile.path}, "
            "then reload the daemon (spoolbox reload)",
            EXIT_PROFILE,
            kind="profile",
        )
    host = socket.getfqdn() if web.host in _ANY_HOST else web.host
    token = load_or_create_token(profile.data_dir)
    url = page_url(host, web.port, token)
    running = True
    try:
        obj.client().ping()
    except DaemonNotRunning:
        running = False
    # The daemon serves [web] as it last started or reloaded: enabled (or moved) since,
    # the page does not answer there until `spoolbox reload`; a port taken, nor after it.
    unserved = _not_served("127.0.0.1" if web.host in _ANY_HOST else web.host, web.port, token)
    if as_json:
        emit_json({"url": url, "running": running, "served": running and not unserved})
    else:
        click.echo(url)
    if not running:
        click.echo("spoolbox: the daemon is not running: start it (spoolbox run)", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    if unserved:
        click.echo(
            f"spoolbox: the daemon runs but its web page does not answer at "
            f"{web.host}:{web.port} ({unserved}): it serves [web] as it last started or reloaded; "
            "`spoolbox reload` applies the profile (its log says why a page cannot be "
            "served)",
            err=True,
        )
        sys.exit(EXIT_NOT_RUNNING)


def _not_served(host: str, port: int, token: str) -> str:
    """Why the web page does not answer at ``host:port`` ("" when it does): its
    status asked for with the token, as a script would."""
    conn = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("GET", "/api/status", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
    except http.client.HTTPException:
        return "something else answers there, not speaking HTTP"  # an SMTP listener, say
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        conn.close()
    if response.status != 200:
        return f"something else answers there: HTTP {response.status} {response.reason}"
    return ""
