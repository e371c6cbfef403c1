"""The TOML profile (moved to :mod:`spoolbox.profile.loading`; re-exported here)."""

from .loading import (
    DEFAULT_PROFILE_NAME,
    EVENT_LOOPS,
    MAX_LISTENER_PROCESSES,
    PROFILE_ENV,
    DaemonSettings,
    ListenerSettings,
    MissingSecret,
    Profile,
    ProfileError,
    Secret,
    StoreSettings,
    ask_missing_secrets,
    default_profile_text,
    find_profile,
    load_profile,
    parse_duration,
)

__all__ = [
    "DEFAULT_PROFILE_NAME",
    "EVENT_LOOPS",
    "MAX_LISTENER_PROCESSES",
    "PROFILE_ENV",
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
