"""The local API's names where users import them: ``spoolbox.client`` (the path users
have) is ``spoolbox.api.client``, and the schema is the one ``spoolbox.api.wire``."""

from __future__ import annotations

import spoolbox.api.client
import spoolbox.client
from spoolbox.api import wire

#: what ``from spoolbox.client import ...`` gave before the client moved to api/
_USERS_NAMES = {
    "Client",
    "ClientError",
    "Conflict",
    "DaemonNotRunning",
    "NotFound",
    "RequestTooLarge",
    "MAX_REQUEST_LINE",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_NOT_RUNNING",
    "EXIT_NOT_FOUND",
    "EXIT_PROFILE",
    "EXIT_CONFLICT",
    "EXIT_INTERRUPTED",
    "flush_report_to_dict",
    "inbox_to_dict",
    "message_to_dict",
    "recipient_to_dict",
}


def test_spoolbox_client_re_exports_the_client_of_api() -> None:
    missing = {name for name in _USERS_NAMES if not hasattr(spoolbox.client, name)}
    assert missing == set()
    for name in _USERS_NAMES:
        assert getattr(spoolbox.client, name) is getattr(spoolbox.api.client, name), name


def test_the_client_speaks_the_schema_of_wire() -> None:
    assert spoolbox.client.PROTOCOL_VERSION == wire.PROTOCOL_VERSION
    assert spoolbox.client.MAX_REQUEST_LINE == wire.MAX_REQUEST_LINE
    assert spoolbox.client.message_to_dict is wire.message_to_dict
    # every error code the client maps to a class of its own is one the daemon sends
    for error in (
        spoolbox.client.NotFound,
        spoolbox.client.Conflict,
        spoolbox.client.DaemonNotRunning,
        spoolbox.client.RequestTooLarge,
    ):
        assert error.code in wire.ERROR_CODES, error
