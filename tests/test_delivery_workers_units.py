"""The pure parts of ``[daemon] workers``: the restart back-off and its limit, a
worker's status row, a worker's spooler configuration, its log tag, the profile key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from spoolbox import TransportConfig
from spoolbox.daemon import restarts
from spoolbox.daemon.delivery_protocol import DeliverySpec, store_counters, worker_node
from spoolbox.daemon.delivery_worker import delivery_config
from spoolbox.daemon.log_format import make_formatter
from spoolbox.daemon.preflight import provider_limits
from spoolbox.daemon.shares import idle_workers, process_transports, share, shares_told
from spoolbox.daemon.workers import (
    RESTART_LIMIT,
    STABLE_AFTER,
    WorkerState,
    WorkerView,
    restart_delay,
    worker_row,
    workers_advice,
)
from spoolbox.model import StatusCode
from spoolbox.profile import ProfileError, load_profile


def test_a_worker_that_keeps_dying_waits_longer_each_time_then_is_given_up() -> None:
    failures, delays = 0, []
    for _ in range(RESTART_LIMIT + 1):
        failures, delay = restart_delay(failures, ran_for=0.5)
        delays.append(delay)
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert delays[RESTART_LIMIT - 1] == 30.0  # the last restart still happens
    assert delays[RESTART_LIMIT] is None  # then no more
    assert failures == RESTART_LIMIT + 1


def test_a_worker_that_ran_a_while_before_it_died_starts_again_at_once() -> None:
    assert restart_delay(RESTART_LIMIT, ran_for=STABLE_AFTER) == (1, 1.0)
    assert restart_delay(3, ran_for=STABLE_AFTER - 1) == (4, 8.0)


def test_a_listener_process_that_keeps_dying_is_never_given_up_on() -> None:
    # The listener processes share the back-off without a limit (daemon/restarts.py):
    # a submission port given up on would leave the daemon deaf.
    failures, delays = 0, []
    for _ in range(RESTART_LIMIT + 3):
        failures, delay = restarts.restart_delay(failures, ran_for=0.5)
        delays.append(delay)
    assert delays[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert delays[-1] == 30.0
    assert restarts.restart_delay(failures, ran_for=STABLE_AFTER) == (1, 1.0)


def _view(state: WorkerState, **kw: object) -> WorkerView:
    base: dict[str, object] = {
        "tag": "w2",
        "node": "mx-w2",
        "state": state,
        "pid": 4321,
        "restarts": 0,
        "last_exit": None,
    }
    base.update(kw)
    return WorkerView(**base)  # type: ignore[arg-type]


def test_a_running_workers_row_names_its_node_and_where_its_transport_rows_are() -> None:
    row = worker_row(_view(WorkerState.RUNNING, counters={"delivered": 7}), "mx")
    assert row.name == "worker:w2"
    assert row.status_code == StatusCode.AVAILABLE | StatusCode.OUTBOUND_ENABLED
    assert row.status_string == "delivering (node mx-w2, pid 4321)"
    assert row.counters == {"delivered": 7}
    assert row.detail is not None
    assert "its transports' rows are node mx-w2's" in row.detail
    assert "this daemon is node mx" in row.detail


def test_a_worker_given_up_on_shows_a_failure_and_why() -> None:
    row = worker_row(
        _view(WorkerState.GAVE_UP, pid=None, restarts=8, last_exit="exited with status 1"), "mx"
    )
    assert row.status_code & StatusCode.FAILURE
    assert not row.status_code & StatusCode.AVAILABLE
    assert row.status_string == "not started again (spoolbox reload tries again) (node mx-w2)"
    assert row.detail is not None and "restarts 8; last end: exited with status 1" in row.detail


def test_every_state_has_a_row() -> None:
    for state in WorkerState:
        assert worker_row(_view(state), "mx").status_string


def test_a_workers_store_counters_on_its_row_are_whole_numbers_in_ms() -> None:
    sqlite = {
        "path": "/var/spool/spoolbox.sqlite3",
        "commits": 120,
        "lock_waits": 31,
        "lock_wait_seconds": 0.0426,
        "write_seconds": 1.2004,
        "pragmas": {"synchronous": 2},
    }
    assert store_counters(sqlite) == {
        "store_commits": 120,
        "store_lock_waits": 31,
        "store_lock_wait_ms": 43,
        "store_write_ms": 1200,
    }
    # PostgreSQL's statistics have no lock waits: the row shows what there is.
    assert store_counters({"commits": 5, "pool": {"size": 2}}) == {"store_commits": 5}


def test_more_delivering_processes_than_cpus_on_sqlite_are_warned_about() -> None:
    assert workers_advice(1, 2, "sqlite") is None  # two processes on two CPUs
    assert workers_advice(0, 1, "sqlite") is None  # the daemon alone: nothing to say
    assert workers_advice(4, 8, "sqlite") is None
    assert workers_advice(4, 2, "postgres") is None  # the server does the locking
    assert workers_advice(4, None, "sqlite") is None  # CPUs unknown: no guess
    advice = workers_advice(2, 2, "sqlite")
    assert advice is not None
    assert advice.startswith("workers = 2 on 2 CPUs: 3 delivering processes on one SQLite")
    assert advice.endswith(
        "more than the CPUs: each message costs more CPU, and the drain gains little or "
        "loses against workers = 1 (docs/operations.md, 'Worker processes')"
    )
    single = workers_advice(1, 1, "sqlite")
    assert single is not None and "on 1 CPU: 2 delivering" in single
    assert "loses against workers = 0 (" in single


def test_worker_node_names_are_stable_per_index() -> None:
    assert worker_node("mx.example.org", 3) == "mx.example.org-w3"


def test_the_spec_keeps_the_dialog_answers_off_the_command_line() -> None:
    spec = DeliverySpec(
        index=1,
        node="n-w1",
        profile="/p.toml",
        log_level="INFO",
        extra_secrets=[["relay", "password", "s3cret"]],
        processes=3,
    )
    again = DeliverySpec.from_json(spec.to_json())
    assert again == spec
    assert again.processes == 3
    assert again.secrets_map() == {("relay", "password"): "s3cret"}
    assert again.tag == "w1"


PROFILE = """
node = "mx"
[daemon]
workers = {workers}
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
[transports.options]
host = "127.0.0.1"
[[transports]]
name = "mailbox"
provider = "maildir"
inbound = true
outbound = {mailbox_outbound}
[transports.options]
root = "mail"
"""


def _profile(tmp_path: Path, workers: object = 2, mailbox_outbound: str = "true") -> Path:
    path = tmp_path / "spoolbox.toml"
    path.write_text(PROFILE.format(workers=workers, mailbox_outbound=mailbox_outbound))
    return path


def test_a_workers_config_is_the_profiles_outbound_side_under_its_own_node(
    tmp_path: Path,
) -> None:
    profile = load_profile(_profile(tmp_path, mailbox_outbound="false"))
    assert profile.daemon.workers == 2
    config = delivery_config(profile, "mx-w1")
    assert config.node == "mx-w1"
    assert [t.name for t in config.transports] == ["relay"]  # inbound-only: not here
    assert not any(t.inbound for t in config.transports)
    assert all(t.outbound for t in config.transports)
    assert config.policy == profile.spooler.policy
    both = load_profile(_profile(tmp_path, mailbox_outbound="true"))
    assert [t.name for t in delivery_config(both, "mx-w1").transports] == ["relay", "mailbox"]


@pytest.mark.parametrize("value", [-1, 65, '"two"'])
def test_a_bad_workers_value_is_named(tmp_path: Path, value: object) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(_profile(tmp_path, workers=value))
    assert info.value.key == "[daemon] workers"


def test_workers_default_to_none(tmp_path: Path) -> None:
    path = tmp_path / "spoolbox.toml"
    path.write_text('node = "mx"\n')
    assert load_profile(path).daemon.workers == 0


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("spoolbox.delivery", logging.INFO, __file__, 1, msg, None, None)


def test_a_delivery_workers_lines_carry_its_tag_in_every_format() -> None:
    text = make_formatter("text", delivery="w2").format(_record("sent"))
    assert " INFO spoolbox.delivery[w2]: sent" in text
    journald = make_formatter("journald", delivery="w2").format(_record("sent"))
    assert journald == "<6>spoolbox.delivery[w2]: sent"
    obj = json.loads(make_formatter("json", delivery="w2").format(_record("sent")))
    assert (obj["worker"], obj["msg"]) == ("w2", "sent")
    assert "worker" not in json.loads(make_formatter("json").format(_record("sent")))


@pytest.mark.parametrize(
    ("limit", "processes", "shares"),
    [(5, 3, [2, 2, 1]), (2, 3, [1, 1, 0]), (3, 3, [1, 1, 1]), (1, 2, [1, 0]), (7, 1, [7])],
)
def test_a_limit_is_shared_in_whole_parts_the_daemon_first(
    limit: int, processes: int, shares: list[int]
) -> None:
    got = [share(limit, i, processes) for i in range(processes)]
    assert got == shares
    assert sum(got) == limit


def test_a_share_of_a_process_that_is_not_there_is_an_error() -> None:
    with pytest.raises(ValueError, match="process 3 of 3"):
        share(4, 3, 3)
    with pytest.raises(ValueError, match="process 0 of 0"):
        share(4, 0, 0)


def _transports(**options: object) -> tuple[TransportConfig, ...]:
    return (
        TransportConfig("relay", "smtp", options={"host": "mx.example", **options}),
        TransportConfig("local", "maildir", options={"root": "mail"}),
    )


def _options(transports: tuple[TransportConfig, ...], name: str) -> dict[str, object] | None:
    found = [dict(t.options) for t in transports if t.name == name]
    return found[0] if found else None


def test_each_process_gets_its_share_of_max_connections_and_they_add_up() -> None:
    transports = _transports(max_connections=5)
    parts = [process_transports(transports, i, 3) for i in range(3)]
    relay = [_options(p, "relay") for p in parts]
    assert relay == [{"host": "mx.example", "max_connections": n} for n in (2, 2, 1)]
    # the transport without limits runs unchanged in every process
    assert all(_options(p, "local") == {"root": "mail"} for p in parts)
    # the profile's own configuration is not changed
    assert transports[0].options["max_connections"] == 5


def test_a_process_left_without_a_share_does_not_run_the_transport() -> None:
    transports = _transports(max_connections=10, destination_concurrency=2)
    parts = [process_transports(transports, i, 3) for i in range(3)]
    assert [_options(p, "relay") for p in parts] == [
        {"host": "mx.example", "max_connections": 5, "destination_concurrency": 1},
        {"host": "mx.example", "max_connections": 5, "destination_concurrency": 1},
        None,
    ]
    assert [t.name for t in parts[2]] == ["local"]


def test_a_rate_delay_leaves_the_transport_to_the_daemon() -> None:
    transports = _transports(max_connections=4, destination_rate_delay=2.5)
    parts = [process_transports(transports, i, 3) for i in range(3)]
    assert _options(parts[0], "relay") == {
        "host": "mx.example",
        "max_connections": 4,
        "destination_rate_delay": 2.5,
    }
    assert _options(parts[1], "relay") is None and _options(parts[2], "relay") is None


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_connections": "2"},
        {"max_connections": True},
        {"max_connections": 0},
        {"destination_rate_delay": 0},
        {"destination_rate_delay": "x"},
    ],
)
def test_limits_the_transport_would_refuse_or_does_not_set_are_left_alone(
    options: dict[str, object],
) -> None:
    transports = _transports(**options)
    assert process_transports(transports, 2, 3) == transports
    assert shares_told(transports, 2) == []


def test_one_process_or_an_inbound_only_transport_shares_nothing() -> None:
    transports = _transports(max_connections=2)
    assert process_transports(transports, 0, 1) == transports
    assert shares_told(transports, 0) == []
    inbound = (TransportConfig("box", "imap", options={"max_connections": 2}, outbound=False),)
    assert process_transports(inbound, 2, 3) == inbound


def test_shares_told_says_each_processs_part_and_who_is_left_out() -> None:
    transports = _transports(max_connections=2)
    assert shares_told(transports, 2) == [
        "transport 'relay': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon, w1): max_connections = 2 as 1 + 1; "
        "w2 does not deliver for it"
    ]


def test_a_workers_config_has_its_share_of_the_limits(tmp_path: Path) -> None:
    path = _profile(tmp_path, mailbox_outbound="false")
    path.write_text(
        path.read_text().replace(
            'host = "127.0.0.1"\n', 'host = "127.0.0.1"\nmax_connections = 3\n'
        )
    )
    profile = load_profile(path)
    assert [
        t.options["max_connections"] for t in delivery_config(profile, "mx-w1", 1, 3).transports
    ] == [1]
    assert [
        t.options["max_connections"] for t in delivery_config(profile, "mx-w2", 2, 4).transports
    ] == [1]
    assert delivery_config(profile, "mx-w3", 3, 4).transports == ()


def test_workers_left_with_no_transport_at_all_are_named() -> None:
    only = (TransportConfig("relay", "smtp", options={"host": "h", "max_connections": 2}),)
    assert idle_workers(only, 2) == (
        "w2 delivers for no transport: the limits the transports set leave no part to it "
        "([daemon] workers = 2 is more than they use)"
    )
    assert idle_workers(only, 1) is None
    assert idle_workers(_transports(max_connections=1), 2) is None  # local has no limit
    slow = (TransportConfig("relay", "smtp", options={"destination_rate_delay": 1}),)
    said = idle_workers(slow, 3)
    assert said is not None and said.startswith("w1, w2, w3 deliver for no transport"), said


def test_a_providers_defaults_are_shared_as_the_values_set_are() -> None:
    """With the providers' own reading (``provider_limits``) the smtp transport's
    default ``max_connections`` (10 for a smart host) is divided as one set in the
    profile; the maildir transport has nothing to share."""
    transports = _transports()
    parts = [process_transports(transports, i, 3, provider_limits) for i in range(3)]
    assert [_options(p, "relay") for p in parts] == [
        {"host": "mx.example", "max_connections": n} for n in (4, 3, 3)
    ]
    assert all(_options(p, "local") == {"root": "mail"} for p in parts)
    assert shares_told(transports, 2, provider_limits) == [
        "transport 'relay': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon, w1, w2): max_connections = 10 "
        "(its default) as 4 + 3 + 3"
    ]
    # what the profile sets wins over the default, and is not called one
    assert shares_told(_transports(max_connections=2), 2, provider_limits) == [
        "transport 'relay': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon, w1): max_connections = 2 as 1 + 1; "
        "w2 does not deliver for it"
    ]
    # delivery "mx": its connections and its connections to one domain
    mx = (TransportConfig("out", "smtp", options={"delivery": "mx", "max_connections": 9}),)
    assert [_options(process_transports(mx, i, 2, provider_limits), "out") for i in (0, 1)] == [
        {"delivery": "mx", "max_connections": 5, "destination_concurrency": 3},
        {"delivery": "mx", "max_connections": 4, "destination_concurrency": 2},
    ]
    # the webhook transport's default, 4 connections
    options = {"endpoints": {"in": "https://h.example/in"}, "sign": False}
    hook = (TransportConfig("hook", "webhook", options=options),)
    assert _options(process_transports(hook, 1, 2, provider_limits), "hook") == {
        **options,
        "max_connections": 2,
    }


def test_a_modem_is_the_daemons_alone() -> None:
    """The sms transport owns its serial port: with workers only the daemon delivers
    for it, and nothing is added to its options."""
    modem = TransportConfig("gsm", "sms", options={"port": "/dev/ttyUSB0"})
    parts = [process_transports((modem,), i, 3, provider_limits) for i in range(3)]
    assert parts == [(modem,), (), ()]
    assert shares_told((modem,), 2, provider_limits) == [
        "transport 'gsm': its limits are for the daemon as a whole, shared by the "
        "processes that deliver for it (the daemon): its provider runs in one process "
        "only; w1, w2 do not deliver for it"
    ]


def test_without_a_providers_word_the_profiles_limits_are_shared() -> None:
    """``provider_limits`` asks the provider; a provider without ``process_limits``,
    one that cannot be loaded, or options it refuses: the profile's values."""
    assert provider_limits(_transports(max_connections=3)[0]) == {"max_connections": 3}
    typo = TransportConfig("relay", "smtp", options={"host": "h", "max_connections": 2, "prot": 1})
    assert provider_limits(typo) is typo.options
    missing = TransportConfig("x", "no-such-provider", options={"max_connections": 2})
    assert provider_limits(missing) is missing.options
    plain = TransportConfig("p", f"{_NoLimits.__module__}:_NoLimits", options={"a": 1})
    assert provider_limits(plain) is plain.options
    assert provider_limits(TransportConfig("l", "maildir", options={"root": "m"})) == {}


class _NoLimits:
    """A provider that says nothing of its limits."""
