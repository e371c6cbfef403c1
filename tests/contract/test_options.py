"""The typed options reader (spoolbox.contract.options): every type, every error, the
option named in each message, and a secret's value never in one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from spoolbox.contract import OptionError, Unconfigured, option, read_options
from spoolbox.contract.options import Check, WrongValue


@dataclass(frozen=True, slots=True)
class Opts:
    host: str = option(help="the smart host")
    user: str | None = None
    port: int | None = option(None, low=1, high=65535)
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    verify: bool = True
    timeout: float = option(60.0, positive=True)
    password: str | None = option(None, secret=True)
    names: tuple[str, ...] = ()
    folders: list[str] | None = None
    note: str = option("", empty=True)
    timeouts: Mapping[str, float] = option(factory=dict, positive=True, keys=("mail", "rcpt"))
    limits: dict[str, int] | None = option(None, low=0)
    max_size: int = option(100, low=1, high=100, what="a number of bytes from 1 to 100")

    def __post_init__(self) -> None:
        if self.user is not None and self.password is None:
            raise OptionError("password", f"must be given with user {self.user!r}")
        if self.tls == "none" and self.password is not None:
            raise ValueError("no password over plaintext")


def read(**config: Any) -> Opts:
    return read_options(Opts, {"host": "h", **config}, kind="smtp")


def error(**config: Any) -> str:
    with pytest.raises(OptionError) as info:
        read(**config)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# -- what comes back ------------------------------------------------------------------------
def test_defaults() -> None:
    o = read()
    assert (o.host, o.user, o.port, o.tls, o.verify) == ("h", None, None, "starttls", True)
    assert (o.timeout, o.password, o.names, o.folders, o.note) == (60.0, None, (), None, "")
    assert (dict(o.timeouts), o.limits) == ({}, None)
    assert o.max_size == 100


def test_every_type_read() -> None:
    o = read(
        user="u",
        port=587,
        tls="implicit",
        verify=False,
        timeout=5,
        password="pw",
        names=["a", "b"],
        folders=("x",),
        note="",
        timeouts={"rcpt": 7},
        limits={"a": 0},
        max_size=1,
    )
    assert (o.user, o.port, o.tls, o.verify, o.password) == ("u", 587, "implicit", False, "pw")
    assert o.timeout == 5.0 and type(o.timeout) is float
    assert o.names == ("a", "b") and type(o.names) is tuple
    assert o.folders == ["x"] and type(o.folders) is list
    assert dict(o.timeouts) == {"rcpt": 7.0} and type(o.timeouts["rcpt"]) is float
    assert o.limits == {"a": 0} and o.max_size == 1


def test_none_given_for_an_optional_option_is_its_default() -> None:
    assert read(port=None, folders=None).port is None


def test_range_bounds_are_inclusive() -> None:
    assert read(port=1).port == 1
    assert read(port=65535).port == 65535
    assert read(timeout=0.001).timeout == 0.001


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "key", "text"),
    [
        ({"port": 0}, "port", "must be a whole number from 1 to 65535, not 0"),
        ({"port": 65536}, "port", "must be a whole number from 1 to 65535, not 65536"),
        ({"port": True}, "port", "must be a whole number from 1 to 65535, not True"),
        ({"port": 25.0}, "port", "must be a whole number from 1 to 65535, not 25.0"),
        ({"port": "25"}, "port", "must be a whole number from 1 to 65535, not '25'"),
        ({"host": 5}, "host", "must be a non-empty string, not 5"),
        ({"user": ""}, "user", "must be a non-empty string, not ''"),
        ({"note": 1}, "note", "must be a string, not 1"),
        ({"tls": "ssl"}, "tls", "must be one of none, starttls, implicit, not 'ssl'"),
        ({"verify": "no"}, "verify", "must be true or false, not 'no'"),
        ({"verify": 1}, "verify", "must be true or false, not 1"),
        ({"verify": None}, "verify", "must be true or false, not None"),
        ({"timeout": 0}, "timeout", "must be a positive number, not 0"),
        ({"timeout": -1.5}, "timeout", "must be a positive number, not -1.5"),
        ({"timeout": True}, "timeout", "must be a positive number, not True"),
        ({"timeout": "5s"}, "timeout", "must be a positive number, not '5s'"),
        ({"timeout": float("nan")}, "timeout", "must be a positive number, not nan"),
        ({"timeout": 10**400}, "timeout", "must be a positive number, not 1000"),
        ({"names": "ab"}, "names", "must be a list of non-empty strings, not 'ab'"),
        ({"names": ["a", 1]}, "names[1]", "must be a non-empty string, not 1"),
        ({"names": ["a", ""]}, "names[1]", "must be a non-empty string, not ''"),
        ({"folders": [2]}, "folders[0]", "must be a non-empty string, not 2"),
        (
            {"timeouts": 5},
            "timeouts",
            "must be a mapping whose values are each a positive number, not 5",
        ),
        ({"timeouts": {"rcpt": 0}}, "timeouts.rcpt", "must be a positive number, not 0"),
        (
            {"timeouts": {"data": 1}},
            "timeouts",
            "must be a mapping whose values are each a positive number, "
            "with only the keys mail, rcpt, not {'data': 1}",
        ),
        ({"limits": {"a": -1}}, "limits.a", "must be a whole number of at least 0, not -1"),
        (
            {"limits": {1: 1}},
            "limits",
            "must be a mapping whose values are each a whole number of at least 0, with only names",
        ),
        ({"limits": {"a": "1"}}, "limits.a", "must be a whole number of at least 0, not '1'"),
        ({"max_size": 0}, "max_size", "must be a number of bytes from 1 to 100, not 0"),
        ({"max_size": 101}, "max_size", "must be a number of bytes from 1 to 100, not 101"),
    ],
)
def test_a_bad_value_names_the_kind_the_option_and_what_was_wrong(
    config: dict[str, Any], key: str, text: str
) -> None:
    assert error(**config).startswith(f"smtp option {key!r} {text}")


def test_the_error_carries_kind_key_and_text() -> None:
    with pytest.raises(OptionError) as info:
        read(timeouts={"rcpt": 0})
    assert (info.value.kind, info.value.key) == ("smtp", "timeouts.rcpt")
    assert info.value.text == "must be a positive number, not 0"


def test_unknown_keys_are_refused_listing_the_known_ones() -> None:
    text = error(hots="x")
    assert text == (
        "smtp option 'hots' is unknown; did you mean 'host'? the options are: folders, host, "
        "limits, max_size, "
        "names, note, password, port, timeout, timeouts, tls, user, verify"
    )
    assert error(zz=1, hots=3).startswith(
        "smtp option 'hots' is unknown (so is 'zz'); did you mean 'host'?"
    )
    assert error(zz=1, aa=2, hots=3).startswith("smtp option 'aa' is unknown (so is 'hots', 'zz');")
    with pytest.raises(OptionError, match="option '1' is unknown"):
        read_options(Opts, {"host": "h", 1: 2}, kind="smtp")


def test_missing_required_options_are_unconfigured_all_of_them() -> None:
    @dataclass(frozen=True)
    class Two:
        host: str
        username: str
        port: int = 1

    for absent in ({}, {"host": None, "username": ""}, {"port": 2}):
        with pytest.raises(Unconfigured) as info:
            read_options(Two, absent, kind="imap")
        assert info.value.missing == ("host", "username")
        assert "the imap transport needs them" in str(info.value)
    with pytest.raises(Unconfigured) as info:
        read_options(Two, {"host": "h"}, kind="imap")
    assert info.value.missing == ("username",)
    assert "the imap transport needs it" in str(info.value)
    # an unknown key is reported before what is missing
    with pytest.raises(OptionError, match="'colour'"):
        read_options(Two, {"colour": "blue"}, kind="imap")


def test_a_missing_options_help_says_what_it_is() -> None:
    with pytest.raises(Unconfigured) as info:
        read_options(Opts, {}, kind="smtp")
    assert info.value.missing == ("host",)
    assert str(info.value) == "missing configuration: host (host: the smart host)"


def test_post_init_errors_get_the_kind_and_others_pass_through() -> None:
    assert error(user="u") == "smtp option 'password' must be given with user 'u'"
    with pytest.raises(ValueError, match=r"^no password over plaintext$"):
        read(tls="none", password="pw")
    with pytest.raises(OptionError) as info:
        Opts(host="h", user="u")
    assert str(info.value) == "option 'password' must be given with user 'u'"


def test_an_error_already_with_a_kind_is_kept() -> None:
    @dataclass(frozen=True)
    class Own:
        x: int = 0

        def __post_init__(self) -> None:
            raise OptionError("x", "is wrong", kind="other")

    with pytest.raises(OptionError, match=r"^other option 'x' is wrong$"):
        read_options(Own, {}, kind="smtp")


# -- secrets ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "shown"),
    [(12345, "an integer"), ("", "an empty string"), (["hunter2"], "a list"), (True, "a boolean")],
)
def test_a_secret_value_is_never_shown(value: object, shown: str) -> None:
    text = error(password=value)
    assert text == f"smtp option 'password' must be a non-empty string, not {shown}"
    assert "hunter2" not in text and "12345" not in text


def test_a_secret_mapping_item_is_never_shown() -> None:
    @dataclass(frozen=True)
    class Keys:
        tokens: dict[str, str] = option(factory=dict, secret=True)

    with pytest.raises(OptionError) as info:
        read_options(Keys, {"tokens": {"a": "s3cret", "b": 4242}}, kind="x")
    assert str(info.value) == "x option 'tokens.b' must be a non-empty string, not an integer"
    assert "s3cret" not in repr(read_options(Keys, {"tokens": {"a": "s3cret"}}, kind="x"))


def test_a_secret_is_not_in_the_repr() -> None:
    o = read(password="hunter2")
    assert "hunter2" not in repr(o)
    assert "host='h'" in repr(o)


# -- the dataclass itself ---------------------------------------------------------------------
def test_option_defaults_and_factories() -> None:
    a, b = read(), read()
    assert a.timeouts is not b.timeouts  # a fresh mapping each time
    f = {f.name: f for f in dataclasses.fields(Opts)}
    assert f["host"].default is dataclasses.MISSING
    assert f["port"].default is None and f["timeout"].default == 60.0
    assert f["password"].repr is False and f["port"].repr is True


def test_not_a_dataclass_or_an_unsupported_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="not a dataclass"):
        read_options(int, {}, kind="x")

    @dataclass(frozen=True)
    class Bad:
        x: int | str = 0

    with pytest.raises(TypeError, match=r"only X \| None"):
        read_options(Bad, {}, kind="x")

    @dataclass(frozen=True)
    class Worse:
        x: set[str] = dataclasses.field(default_factory=set)

    with pytest.raises(TypeError, match="unsupported option type"):
        read_options(Worse, {}, kind="x")


# -- Check: the checks behind the reader (the profile uses them too) --------------------------
def test_check_words_for_ranges() -> None:
    assert Check.of(int).expected == "a whole number"
    assert Check.of(int, low=0).expected == "a whole number of at least 0"
    assert Check.of(int, high=9).expected == "a whole number of at most 9"
    assert Check.of(float, positive=True).expected == "a positive number"
    assert Check.of(int, positive=True).expected == "a positive whole number"
    assert Check.of(float, low=0.5, high=2).expected == "a number from 0.5 to 2"
    assert Check.of(int, what="an integer").expected == "an integer"
    assert Check.of(tuple[str, ...], empty=True).expected == "a list of strings"


def test_check_float_is_never_nan() -> None:
    c = Check.of(float)
    assert c(-3) == -3.0 and c(0) == 0.0
    assert c(float("inf")) == float("inf") and c(-float("inf")) == -float("inf")
    for bad in (10**400, -(10**400), float("nan")):
        with pytest.raises(WrongValue):
            c(bad)


def test_check_says_whether_only_the_range_was_wrong() -> None:
    c = Check.of(int, low=0, high=19)
    with pytest.raises(WrongValue) as info:
        c(20)
    assert info.value.type_ok and info.value.value == 20
    with pytest.raises(WrongValue) as info:
        c("20")
    assert not info.value.type_ok
    assert c(19) == 19 and c(0) == 0


def test_check_literal_choices_are_exact() -> None:
    c = Check.of(Literal[1, "a"])
    assert c(1) == 1 and c("a") == "a"
    for bad in (True, 1.0, "A", None):
        with pytest.raises(WrongValue):
            c(bad)
    assert Check.of(Literal["x"] | None)(None) is None
