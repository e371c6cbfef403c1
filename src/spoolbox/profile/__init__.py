"""The TOML profile: the store, the transports in their order, listeners, identities
and policies, read from ``spoolbox.toml`` into a :class:`Profile`.

* :mod:`.schema`: what a loaded profile is (:class:`Profile`, :class:`StoreSettings`,
  :class:`DaemonSettings`, :class:`ListenerSettings`);
* :mod:`.loading`: finding the file and reading it (:func:`find_profile`,
  :func:`load_profile`), every table and key checked;
* :mod:`.tables`: the table reader behind it (:class:`ProfileError`,
  :func:`parse_duration`), on the contract's typed checks;
* :mod:`.secrets`: secrets inline, from the environment or a file
  (:class:`Secret`, :class:`MissingSecret`, :func:`ask_missing_secrets`);
* :mod:`.default`: the profile ``spoolbox init`` writes (``default.toml``).

See docs/operations.md for the reference of every key.
"""

from .default import default_profile_text
from .loading import DEFAULT_PROFILE_NAME, PROFILE_ENV, SYSTEM_PROFILE, find_profile, load_profile
from .schema import (
    EVENT_LOOPS,
    MAX_LISTENER_PROCESSES,
    DaemonSettings,
    ListenerSettings,
    Profile,
    StoreSettings,
)
from .secrets import MissingSecret, Secret, ask_missing_secrets
from .tables import ProfileError, parse_duration

__all__ = [
    "DEFAULT_PROFILE_NAME",
    "EVENT_LOOPS",
    "MAX_LISTENER_PROCESSES",
    "PROFILE_ENV",
    "SYSTEM_PROFILE",
    "DaemonSettings",
    "ListenerSettings",
    "MissingSecret",
    "Profile",
    "ProfileError",
    "Secret",
    "StoreSettings",
    "ask_missing_secrets",
    "default_profile_text",
    "find_profile",
    "load_profile",
    "parse_duration",
]
