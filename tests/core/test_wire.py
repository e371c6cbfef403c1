"""The wire of isolated transports: errors travel as themselves, and the parent's
unpickler takes nothing but spoolbox's model and contract types."""

from __future__ import annotations

import os
import pickle
import struct

import pytest

from spoolbox._core.hosts.wire import Call, RemoteError, RemoteFailure, Reply, decode, encode
from spoolbox.contract import (
    ContractViolation,
    InvalidObject,
    MessageCancelled,
    NetworkError,
    NotMe,
    TransportBusy,
    Unconfigured,
    WaitRetry,
)
from spoolbox.model import RecipientResult, StatusCode


def roundtrip(exc: BaseException) -> BaseException:
    data = encode(Reply(1, RemoteError.of(exc)))
    reply = decode(data[4:])
    assert isinstance(reply, Reply)
    err = reply.value
    assert isinstance(err, RemoteError)
    return err.exception()


def test_the_contracts_errors_come_back_as_themselves() -> None:
    wait = roundtrip(WaitRetry(12.5, "greylisted"))
    assert type(wait) is WaitRetry and (wait.delay, wait.reason) == (12.5, "greylisted")
    net = roundtrip(NetworkError(3.0, "no route"))
    assert type(net) is NetworkError and net.delay == 3.0
    cancelled = roundtrip(MessageCancelled("m1"))
    assert isinstance(cancelled, MessageCancelled) and cancelled.message_id == "m1"
    missing = roundtrip(Unconfigured(["password"]))
    assert isinstance(missing, Unconfigured) and missing.missing == ("password",)
    assert type(roundtrip(NotMe())) is NotMe
    assert type(roundtrip(TransportBusy())) is TransportBusy
    assert type(roundtrip(InvalidObject("dead"))) is InvalidObject
    assert type(roundtrip(ContractViolation("bad"))) is ContractViolation
    other = roundtrip(KeyError("x"))
    assert isinstance(other, RemoteFailure) and str(other) == "KeyError: 'x'"


def test_frames_carry_model_values() -> None:
    value = (RecipientResult.delivered(0, "2.0.0"), StatusCode.AVAILABLE | StatusCode.FAILURE)
    frame = decode(encode(Call(7, "status_recips", value))[4:])
    assert frame == Call(7, "status_recips", value)


def test_the_unpickler_refuses_anything_else() -> None:
    evil = pickle.dumps(Call(1, "x", (os.system,)))
    refused = r"posix\.system, which is not a spoolbox model or contract type: refused"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        decode(evil)
    with pytest.raises(pickle.UnpicklingError, match="not a frame"):
        decode(pickle.dumps((1, 2)))
    # A function of an allowed module is refused too: the frame could call it.
    from spoolbox.model import states

    function = pickle.dumps(Call(1, "x", (states.check_transition,)))
    with pytest.raises(pickle.UnpicklingError, match=r"states\.check_transition.*refused"):
        decode(function)
    assert struct.unpack(">I", encode(Reply(1))[:4])[0] == len(encode(Reply(1))) - 4
