"""The data directory and the profile are private to the user who runs spoolbox:
queued mail is in the store, and the profile may hold secrets.

* :func:`private_dir` creates a directory, and every missing parent, mode 0700
  (whatever the umask); one that exists is left as it is.
* :func:`openness` says how an existing directory or file is open to other users.
* :func:`write_private` writes a file mode 0600.

(The store makes its own files 0600: :mod:`spoolbox.store.sqlite`.)
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["openness", "private_dir", "write_private"]


def private_dir(path: Path) -> None:
    """``path`` as a directory; what this creates of it is mode 0700."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs to set
        os.chmod(d, 0o700)  # whatever the umask


def openness(path: Path) -> str | None:
    """None if only the owner may use ``path``; else what others may do with it
    (``"writable by other users (mode 0777)"``, ``"readable by other users (mode 0755)"``)."""
    mode = os.stat(path).st_mode & 0o7777
    if mode & 0o022:
        return f"writable by other users (mode {mode:04o})"
    if mode & 0o055:
        return f"readable by other users (mode {mode:04o})"
    return None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, mode 0600, also when it existed with another."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)
        f.write(text)
