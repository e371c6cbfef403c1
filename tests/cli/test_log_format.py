"""The daemon's log formats (text, journald, JSON), the journal detection and the
``[log]`` table of the profile."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolbox.daemon.log_format import choose_format, make_formatter, on_journal
from spoolbox.daemon.runtime import RedactingFilter, configure_logging, set_log_level
from spoolbox.profile import ProfileError, default_profile_text, load_profile


def _record(level: int, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("spoolbox.delivery", level, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
def test_journald_lines_carry_the_priority_and_no_time_stamp(level: int, prefix: str) -> None:
    text = make_formatter("journald").format(_record(level, "hello %s", "bob"))
    assert text == f"{prefix}spoolbox.delivery: hello bob"


def test_journald_prefixes_every_line_of_a_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = make_formatter("journald").format(record).splitlines()
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def test_text_is_time_level_logger_message() -> None:
    text = make_formatter("text").format(_record(logging.WARNING, "careful"))
    stamp, level, rest = text.split(" ", 3)[1:]
    assert (level, rest) == ("WARNING", "spoolbox.delivery: careful")
    assert stamp.count(":") == 2  # 07:12:01,532


def test_text_time_stamps_are_the_standard_formatters_across_seconds() -> None:
    ours, standard = make_formatter("text"), logging.Formatter("%(asctime)s %(message)s")
    for created in (1_700_000_000.25, 1_700_000_000.999, 1_700_000_001.0, 1_700_000_000.5):
        record = _record(logging.INFO, "x")
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record).split(" INFO ")[0] == standard.format(record).split(" x")[0]


def test_json_is_one_object_a_line_with_the_structured_fields() -> None:
    fields = {"id": "3Fz9", "to": "bob@example.org", "status": "sent", "dsn": "2.0.0"}
    text = make_formatter("json").format(
        _record(logging.INFO, "3Fz9: to=<bob@example.org>\n...", spoolbox_fields=fields)
    )
    assert "\n" not in text
    obj = json.loads(text)
    assert obj["level"] == "info" and obj["logger"] == "spoolbox.delivery"
    assert obj["msg"] == "3Fz9: to=<bob@example.org>\n..."
    assert obj["ts"].endswith("+00:00")
    assert {k: obj[k] for k in fields} == fields


def test_a_listener_worker_is_named_in_each_format() -> None:
    rec = _record(logging.INFO, "up")
    rec.process = None  # what logging.logProcesses = False leaves (configure_logging)
    tag = f"[listener smtp pid {os.getpid()}]: up"
    assert make_formatter("text", worker="smtp").format(rec).endswith(tag)
    assert make_formatter("journald", worker="smtp").format(rec).endswith(tag)
    assert (
        make_formatter("text", worker="50%")
        .format(rec)
        .endswith(
            f"[listener 50% pid {os.getpid()}]: up"  # a name with % in it, as it is
        )
    )
    assert make_formatter("text", delivery="w%d").format(rec).endswith("[w%d]: up")
    obj = json.loads(make_formatter("json", worker="smtp").format(rec))
    assert (obj["listener"], obj["pid"]) == ("smtp", os.getpid())
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        make_formatter("xml")


def test_secrets_are_redacted_in_the_message_and_the_fields() -> None:
    record = _record(
        logging.INFO, "pw %s", "hunter2", spoolbox_fields={"response": "535 hunter2 wrong"}
    )
    assert RedactingFilter(lambda: frozenset({"hunter2"})).filter(record)
    obj = json.loads(make_formatter("json").format(record))
    assert obj["msg"] == "pw ***"
    assert obj["response"] == "535 *** wrong"


def test_auto_is_journald_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    stream = tmp_path / "stream"
    other = tmp_path / "other"
    with stream.open("w") as s, other.open("w") as o:
        st = os.fstat(s.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert on_journal(env, s.fileno())
        assert choose_format("auto", env, s.fileno()) == "journald"
        assert not on_journal(env, o.fileno())  # another file: not the journal
        assert choose_format("auto", env, o.fileno()) == "text"
        assert choose_format("auto", {}, s.fileno()) == "text"
        assert not on_journal({"JOURNAL_STREAM": "junk"}, s.fileno())
        assert choose_format("json", env, s.fileno()) == "json"  # the profile's word wins


def _profile(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "spoolbox.toml"
    p.write_text(default_profile_text(tmp_path, smtp_port=0) + "\n" + extra)
    return p


def test_the_log_table(tmp_path: Path) -> None:
    prof = load_profile(_profile(tmp_path, '[log]\nformat = "json"\nlevel = "debug"\n'))
    assert (prof.log.format, prof.log.level) == ("json", "DEBUG")
    plain = load_profile(_profile(tmp_path, ""))
    assert (plain.log.format, plain.log.level) == ("auto", "INFO")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[log]\nformat = "xml"', '[log] format: expected "auto", "text", "journald" or'),
        ('[log]\nlevel = "loud"', '[log] level: expected "debug"'),
        ("[log]\ncolour = true", "[log] colour: unknown key"),
    ],
)
def test_a_wrong_log_table_is_refused_naming_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ProfileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_profile(_profile(tmp_path, table))


def test_daemon_log_level_is_the_older_spelling_of_log_level(tmp_path: Path) -> None:
    text = default_profile_text(tmp_path, smtp_port=0)
    assert 'log_level = "info"' in text
    p = tmp_path / "spoolbox.toml"
    p.write_text(text.replace('log_level = "info"', 'log_level = "warning"'))
    assert load_profile(p).log.level == "WARNING"
    p.write_text(p.read_text() + '\n[log]\nlevel = "error"\n')
    assert load_profile(p).log.level == "ERROR"  # [log] level wins


@pytest.fixture
def _levels_restored() -> Iterator[None]:
    names = ("", "psycopg", "psycopg.pool")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("_levels_restored")
def test_the_database_librarys_warnings_show_at_debug_only() -> None:
    # A PostgreSQL restart makes psycopg's pool warn once per connection it cut; the
    # store says it once ("the store is unavailable: ...").
    pool = logging.getLogger("psycopg.pool")
    set_log_level("INFO")
    assert logging.getLogger().getEffectiveLevel() == logging.INFO
    assert not pool.isEnabledFor(logging.WARNING)
    assert pool.isEnabledFor(logging.ERROR)
    assert not logging.getLogger("psycopg").isEnabledFor(logging.WARNING)
    assert logging.getLogger("spoolbox.store").isEnabledFor(logging.WARNING)
    set_log_level("DEBUG")  # a reload to debug shows them all
    assert pool.isEnabledFor(logging.DEBUG)
    set_log_level("WARNING")
    assert not pool.isEnabledFor(logging.WARNING)


def test_configure_logging_leaves_out_what_no_format_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    switches = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("INFO", frozenset, "text", worker="smtp")
        assert (logging.logThreads, logging.logProcesses, logging.logMultiprocessing) == (
            False,
            False,
            False,
        )
        record = logging.getLogger("spoolbox.test").makeRecord(
            "spoolbox.test", logging.INFO, __file__, 1, "hello", (), None
        )
        assert (record.thread, record.process, record.processName) == (None, None, None)
        logging.getLogger("spoolbox.test").info("hello")
        assert f"[listener smtp pid {os.getpid()}]: hello" in capsys.readouterr().err
    finally:
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = switches
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
