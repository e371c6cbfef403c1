"""The flag and status values of the MAPI transport contract, with their original numbers.

Every class is an :class:`enum.IntFlag` (or :class:`enum.IntEnum`) whose members
carry exactly the value of the MAPI header constant of the same name, so a status
row or a trace reads the same as the original documentation.  Names drop the
redundant prefix where the class name already says it (``StatusCode.OUTBOUND_FLUSH``
is ``STATUS_OUTBOUND_FLUSH``); docs/providers.md has the full table.
"""

from __future__ import annotations

import enum

__all__ = [
    "SPI_VERSION",
    "EndFlags",
    "FlushFlags",
    "LogoffFlags",
    "LogonCaps",
    "LogonFlags",
    "Priority",
    "ResourceMethods",
    "ResourceType",
    "SpoolerNotifyFlags",
    "StatusCode",
    "SubmitFlags",
    "TransportNotifyFlags",
    "ValidateFlags",
]

#: CURRENT_SPI_VERSION of the original (PDK3); providers may check it.
SPI_VERSION = 0x00010010


class LogonFlags(enum.IntFlag):
    """TransportLogon input flags (spooler -> provider)."""

    NONE = 0
    NO_DIALOG = 0x00000001  # LOGON_NO_DIALOG: never ask the user, even for missing credentials
    NO_CONNECT = 0x00000004  # LOGON_NO_CONNECT: offline logon, make no connections
    NO_INBOUND = 0x00000008  # LOGON_NO_INBOUND: inbound starts later with BEGIN_INBOUND
    NO_OUTBOUND = 0x00000010  # LOGON_NO_OUTBOUND: outbound starts later with BEGIN_OUTBOUND


class LogonCaps(enum.IntFlag):
    """TransportLogon output flags (provider -> spooler): what the session wants called."""

    NONE = 0
    SP_IDLE = 0x00010000  # LOGON_SP_IDLE: call idle() when the foreground is idle
    SP_POLL = 0x00020000  # LOGON_SP_POLL: call poll() regularly
    SP_RESOLVE = 0x00040000  # LOGON_SP_RESOLVE: resolve foreign recipients (kept for parity)
    #: spoolbox: start_message may be called again before the messages it delivered
    #: are committed (they commit together, up to ``policy.inbound_commit_batch``).
    SP_INBOUND_BATCH = 0x00100000


class TransportNotifyFlags(enum.IntFlag):
    """TransportNotify flags (spooler -> provider)."""

    NONE = 0
    BEGIN_INBOUND = 0x00000001
    BEGIN_OUTBOUND = 0x00000002
    BEGIN_INBOUND_FLUSH = 0x00000004
    BEGIN_OUTBOUND_FLUSH = 0x00000008
    END_INBOUND = 0x00010000
    END_OUTBOUND = 0x00020000
    END_INBOUND_FLUSH = 0x00040000
    END_OUTBOUND_FLUSH = 0x00080000
    ABORT_DEFERRED = 0x40000000
    CANCEL_MESSAGE = 0x80000000


class SubmitFlags(enum.IntFlag):
    """SubmitMessage flags."""

    NONE = 0
    BEGIN_DEFERRED = 0x00000001  # a message this session deferred comes back (SENTDEFERRED)


class EndFlags(enum.IntFlag):
    """EndMessage results (provider -> spooler). ``SENT`` (0) means done."""

    SENT = 0
    RESEND_NOW = 0x00010000  # END_RESEND_NOW: offer the rest to me again at once
    RESEND_LATER = 0x00020000  # END_RESEND_LATER: not now, for a non-error reason
    DONT_RESEND = 0x00040000  # END_DONT_RESEND: hold as deferred until NOTIFY_SENTDEFERRED


class SpoolerNotifyFlags(enum.IntFlag):
    """SpoolerNotify flags (provider -> spooler)."""

    NONE = 0
    NEWMAIL = 0x00000001
    READYTOSEND = 0x00000002
    SENTDEFERRED = 0x00000004
    CRITSEC = 0x00001000
    NONCRIT = 0x00002000
    CONFIG_CHANGE = 0x00004000
    CRITICAL_ERROR = 0x10000000


class StatusCode(enum.IntFlag):
    """PR_STATUS_CODE bits of a status row."""

    NONE = 0
    AVAILABLE = 0x00000001
    OFFLINE = 0x00000002
    FAILURE = 0x00000004
    INBOUND_ENABLED = 0x00010000
    INBOUND_ACTIVE = 0x00020000
    INBOUND_FLUSH = 0x00040000
    OUTBOUND_ENABLED = 0x00100000
    OUTBOUND_ACTIVE = 0x00200000
    OUTBOUND_FLUSH = 0x00400000
    REMOTE_ACCESS = 0x00800000


class ResourceMethods(enum.IntFlag):
    """PR_RESOURCE_METHODS: which status-object methods work."""

    NONE = 0
    VALIDATE_STATE = 0x1
    SETTINGS_DIALOG = 0x2
    CHANGE_PASSWORD = 0x4
    FLUSH_QUEUES = 0x8


class ResourceType(enum.IntEnum):
    """PR_RESOURCE_TYPE of a status row."""

    STORE_PROVIDER = 33
    AB = 34
    AB_PROVIDER = 35
    TRANSPORT_PROVIDER = 36
    SPOOLER = 37
    PROFILE_PROVIDER = 38
    SUBSYSTEM = 39
    HOOK_PROVIDER = 40


class FlushFlags(enum.IntFlag):
    """FlushQueues flags."""

    NONE = 0
    UPLOAD = 0x00000002
    DOWNLOAD = 0x00000004
    FORCE = 0x00000008
    NO_UI = 0x00000010
    ASYNC_OK = 0x00000020


class ValidateFlags(enum.IntFlag):
    """ValidateState flags."""

    NONE = 0
    SUPPRESS_UI = 0x00000001
    REFRESH_XP_HEADER_CACHE = 0x00010000
    PROCESS_XP_HEADER_CACHE = 0x00020000
    FORCE_XP_CONNECT = 0x00040000
    FORCE_XP_DISCONNECT = 0x00080000
    CONFIG_CHANGED = 0x00100000
    ABORT_XP_HEADER_OPERATION = 0x00200000
    SHOW_XP_SESSION_UI = 0x00400000


class LogoffFlags(enum.IntFlag):
    """TransportLogoff flags (header-only in the original; we use them)."""

    NORMAL = 0x00000001
    HURRY = 0x80000000


class Priority(enum.IntEnum):
    """PR_PRIORITY: -1 non-urgent, 0 normal, 1 urgent. Higher goes first."""

    LOW = -1
    NORMAL = 0
    HIGH = 1
