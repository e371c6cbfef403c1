"""The web page's access token and the CSRF token derived from it.

The access token is 32 random bytes (URL-safe base64) kept in ``web.token`` in the
data directory, mode 0600: whoever can read the queue can open the page.  The
daemon creates it on its first start with ``[web] enabled``; ``spoolbox web`` reads
it (or creates it) to print the page's address.  The CSRF token is an HMAC of the
access token: the page carries it, a forged form from another site cannot know it.

Standard library only, so that ``spoolbox web`` needs no extra.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from .._private import private_dir, write_private

__all__ = [
    "TOKEN_FILE",
    "csrf_token",
    "load_or_create_token",
    "page_url",
    "same_token",
]

TOKEN_FILE = "web.token"
_MIN_LENGTH = 32


def load_or_create_token(data_dir: Path) -> str:
    """The access token of the data directory ``data_dir``, made on first use (0600).

    A token file that is empty or shorter than 32 characters is replaced: it was
    not written by us, and a short token could be guessed."""
    private_dir(data_dir)
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text("ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise OSError(
            f"cannot read the web token {path}: {exc} (remove it to make a new one)"
        ) from None
    if len(token) >= _MIN_LENGTH:
        return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    write_private(tmp, token + "\n")
    os.replace(tmp, path)
    return token


def csrf_token(token: str) -> str:
    """The CSRF token the page sends back with every action (an HMAC of ``token``)."""
    return hmac.new(token.encode(), b"spoolbox-web-csrf", hashlib.sha256).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """``given == expected`` in constant time (None is never the same)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def page_url(host: str, port: int, token: str | None = None) -> str:
    """The page's address (with ``?token=`` when ``token`` is given)."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    return url if token is None else f"{url}?token={quote(token)}"
