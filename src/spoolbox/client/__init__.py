"""``spoolbox.client``, kept for the import path users have: the client is
:mod:`spoolbox.api.client` (this package re-exports it)."""

from ..api.client import *  # noqa: F403
from ..api.client import __all__ as __all__
