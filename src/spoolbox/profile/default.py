"""The profile ``spoolbox init`` writes: ``default.toml`` (package data) filled in."""

from __future__ import annotations

import socket
from importlib import resources
from pathlib import Path
from string import Template

__all__ = ["default_profile_text"]


def default_profile_text(data_dir: Path, *, smtp_port: int = 2525) -> str:
    """A commented profile that works at once: SQLite store in ``data_dir``, a Maildir
    transport delivering under ``data_dir/mail``, the SMTP listener on loopback.

    ``default.toml`` holds it, with ``${hostname}``, ``${mail}`` and ``${smtp_port}``
    where this machine's values go."""
    template = resources.files(__package__).joinpath("default.toml").read_text("utf-8")
    return Template(template).substitute(
        hostname=socket.gethostname(),
        mail=(data_dir / "mail").resolve(),
        smtp_port=smtp_port,
    )
