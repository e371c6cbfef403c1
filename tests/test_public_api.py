"""The public API is what spoolbox, spoolbox.contract and spoolbox.testing export."""

from __future__ import annotations

import spoolbox
import spoolbox.contract
import spoolbox.testing

EXPECTED_TOP = {
    "ENTRY_POINT_GROUP",
    "Address",
    "AddressError",
    "AlwaysIdle",
    "Clock",
    "FlushHandle",
    "FlushReport",
    "HookConfig",
    "IdlePolicy",
    "InboxEntry",
    "LoopLagIdle",
    "ManualIdle",
    "MemoryStore",
    "MessageError",
    "MessageInfo",
    "MessageState",
    "NewMessage",
    "Notify",
    "Policy",
    "Priority",
    "RateLimit",
    "RecipientRecord",
    "RecipientState",
    "SQLiteStore",
    "Spooler",
    "SpoolerConfig",
    "StatusChange",
    "StatusRow",
    "StatusTable",
    "Store",
    "StoreError",
    "StoreFull",
    "SubscriberDropped",
    "SystemClock",
    "TransportConfig",
    "TransportFlushResult",
    "UnknownMessage",
    "__version__",
    "load_provider_class",
    "send",
    "send_message",
}

EXPECTED_CONTRACT = {
    "MAX_INBOUND_SIZE",
    "SPI_VERSION",
    "BaseTransportSession",
    "ContractViolation",
    "EndFlags",
    "FailOneProvider",
    "FlushFlags",
    "InboundWriter",
    "InvalidObject",
    "LogoffFlags",
    "LogonCaps",
    "LogonFlags",
    "MessageCancelled",
    "NetworkError",
    "NotMe",
    "OptionError",
    "OptionSpec",
    "OutboundMessage",
    "OutboundRecipient",
    "ProfileSection",
    "Progress",
    "RecipientResult",
    "ResourceMethods",
    "SpoolboxError",
    "SpoolerNotifyFlags",
    "StatusCode",
    "SubmitCancelled",
    "SubmitFlags",
    "Support",
    "TransportBusy",
    "TransportError",
    "TransportNotifyFlags",
    "TransportProvider",
    "TransportSession",
    "Unconfigured",
    "ValidateFlags",
    "WaitRetry",
    "option",
    "read_options",
    "KEEP",
    "Change",
    "Delete",
    "FileTo",
    "HookFlags",
    "HookMessage",
    "Keep",
    "PreprocessInfoRemover",
    "Preprocessor",
    "Reroute",
    "SpoolerHook",
}


def test_top_level_api_is_pinned() -> None:
    assert set(spoolbox.__all__) == EXPECTED_TOP
    for name in spoolbox.__all__:
        assert hasattr(spoolbox, name), name


def test_contract_api_is_pinned() -> None:
    assert set(spoolbox.contract.__all__) == EXPECTED_CONTRACT
    for name in spoolbox.contract.__all__:
        assert hasattr(spoolbox.contract, name), name


def test_testing_kit_exports() -> None:
    for name in (
        "FakeClock",
        "Script",
        "Act",
        "ScriptedProvider",
        "check_provider",
        "check_store",
        "STORE_CHECKS",
    ):
        assert name in spoolbox.testing.__all__
        assert hasattr(spoolbox.testing, name)


def test_flag_values_are_the_originals() -> None:
    from spoolbox.contract import (
        EndFlags,
        FlushFlags,
        LogonCaps,
        LogonFlags,
        SpoolerNotifyFlags,
        StatusCode,
        TransportNotifyFlags,
    )

    assert LogonFlags.NO_DIALOG == 0x1 and LogonFlags.NO_OUTBOUND == 0x10
    assert LogonCaps.SP_IDLE == 0x10000 and LogonCaps.SP_POLL == 0x20000
    assert TransportNotifyFlags.CANCEL_MESSAGE == 0x80000000
    assert TransportNotifyFlags.END_OUTBOUND_FLUSH == 0x80000
    assert EndFlags.DONT_RESEND == 0x40000 and EndFlags.RESEND_NOW == 0x10000
    assert SpoolerNotifyFlags.CRITSEC == 0x1000 and SpoolerNotifyFlags.CRITICAL_ERROR == 0x10000000
    assert StatusCode.OUTBOUND_FLUSH == 0x400000 and StatusCode.INBOUND_FLUSH == 0x40000
    assert FlushFlags.UPLOAD == 0x2 and FlushFlags.DOWNLOAD == 0x4
