"""The profile ``spoolbox init`` writes: ``default.toml`` (package data) filled in."""

from __future__ import annotations

import os
import socket
from importlib import resources
from pathlib import Path
from string import Template

__all__ = ["default_listener_processes", "default_profile_text"]


def default_listener_processes(cpus: int | None) -> int:
    """``processes`` of the listener ``spoolbox init`` writes on a machine of ``cpus``
    CPUs: 1 (a process of its own) where there is a second CPU for it, else 0 (the
    daemon's loop).  Measured on 2 CPUs (docs/benchmarks.md, issue 17, session 10);
    more processes gave no more (they take turns at SQLite's write lock)."""
    return 1 if (cpus or 1) >= 2 else 0


def default_profile_text(data_dir: Path, *, smtp_port: int = 2525) -> str:
    """A commented profile that works at once: SQLite store in ``data_dir``, a Maildir
    transport delivering under ``data_dir/mail``, the SMTP listener on loopback.

    ``default.toml`` holds it, with ``${hostname}``, ``${mail}``, ``${smtp_port}`` and
    ``${listener_processes}`` (:func:`default_listener_processes`) where this machine's
    values go."""
    template = resources.files(__package__).joinpath("default.toml").read_text("utf-8")
    return Template(template).substitute(
        hostname=socket.gethostname(),
        mail=(data_dir / "mail").resolve(),
        smtp_port=smtp_port,
        listener_processes=default_listener_processes(os.cpu_count()),
    )
