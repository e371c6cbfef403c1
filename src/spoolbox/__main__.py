"""The ``spoolbox`` console script (and ``python -m spoolbox``): the command line, or one
line saying how to install it.

The command line needs the ``cli`` extra (click and rich); the library does not.  In
an installation without it, ``spoolbox`` prints one line naming the extra and exits
1 instead of a traceback.  The check looks the two packages up before anything
imports them (a missing one is a missing extra, whichever command would have
imported it, and however lazily), and an ImportError of either while importing the
command line is taken for the same thing (a broken installation of it).
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["CLI_PACKAGES", "main", "missing_cli_packages", "sendmail_main"]

#: What the ``cli`` extra installs (pyproject.toml).
CLI_PACKAGES = ("click", "rich")

_HINT = "spoolbox: the command line needs the cli extra ({}): pip install 'spoolbox[cli]'"


def missing_cli_packages() -> list[str]:
    """The packages of the ``cli`` extra that cannot be found, in ``CLI_PACKAGES`` order."""
    return [name for name in CLI_PACKAGES if importlib.util.find_spec(name) is None]


def _refuse(missing: list[str]) -> int:
    print(_HINT.format(", ".join(missing) + " not installed"), file=sys.stderr)
    return 1


def main() -> None:
    """Run the ``spoolbox`` command, or say which extra it needs (exit 1)."""
    missing = missing_cli_packages()
    if missing:
        sys.exit(_refuse(missing))
    try:
        from .cli import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in CLI_PACKAGES:
            raise
        sys.exit(_refuse([exc.name or "?"]))
    cli_main()


def sendmail_main() -> None:
    """The ``spoolbox-sendmail`` script (``sendmail``, ``mailq``, ``newaliases`` by the
    name it is run as), or which extra it needs (exit 69, EX_UNAVAILABLE: what a
    program that calls sendmail expects of a sendmail that cannot run)."""
    missing = missing_cli_packages()
    if missing:
        sys.exit(_refuse(missing) and 69)
    from .cli.sendmail_cmd import sendmail_main as run

    run()


if __name__ == "__main__":
    main()
