"""The PostgreSQL store's array literals (:mod:`spoolbox.store.postgres.arrays`): what
the server reads back from each is exactly the list written, whatever the strings
hold."""

from __future__ import annotations

import math

import psycopg
import pytest

from spoolbox.store.postgres.arrays import (
    ADAPTERS,
    ByteaChunks,
    float_array,
    int_array,
    text_array,
)

NASTY = [
    "",
    "NULL",
    "null",
    "plain",
    "with space",
    " leading and trailing ",
    'a "quoted" word',
    "back\\slash",
    "\\",
    '"',
    '\\"',
    "{braces}",
    "a,b",
    "}",
    "{",
    "tab\tand\nnewline",
    "SMTP:user@example.org",
    "ünïcödé ✉",
    "'single'",
]


def test_the_literals_are_what_postgresql_writes() -> None:
    assert text_array(["a", None, ""]) == '{"a",NULL,""}'
    assert text_array([]) == "{}"
    assert text_array(['x"y\\z']) == '{"x\\"y\\\\z"}'
    assert int_array([1, None, -3]) == "{1,NULL,-3}"
    assert float_array([0.5, None, math.inf, -math.inf]) == "{0.5,NULL,Infinity,-Infinity}"


def test_text_arrays_come_back_as_written(pg_dsn: str) -> None:
    values: list[str | None] = [*NASTY, None, *reversed(NASTY)]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT %s::text[]", (text_array(values),)).fetchone()
        assert row is not None
        assert row[0] == values
        # Each element one by one too (an element alone in its array)
        for value in NASTY:
            row = conn.execute("SELECT (%s::text[])[1]", (text_array([value]),)).fetchone()
            assert row is not None
            assert row[0] == value, value


@pytest.mark.parametrize("cast", ["integer[]", "bigint[]", "smallint[]"])
def test_integer_arrays_come_back_as_written(pg_dsn: str, cast: str) -> None:
    big = 2**62 if cast == "bigint[]" else 2**14
    values = [0, 1, -1, None, big, -big]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(f"SELECT %s::{cast}", (int_array(values),)).fetchone()
        assert row is not None
        assert row[0] == values


def test_float_arrays_come_back_exactly(pg_dsn: str) -> None:
    values = [
        0.0,
        -0.0,
        1.0,
        0.1,
        1 / 3,
        1_796_000_000.123456,
        5e-324,
        1.7976931348623157e308,
        None,
        math.inf,
        -math.inf,
    ]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT %s::double precision[]", (float_array(values),)).fetchone()
        assert row is not None
        back = row[0]
        assert back == values  # exact: repr round-trips through float8in
        assert math.copysign(1.0, back[1]) == -1.0
        row = conn.execute(
            "SELECT (%s::double precision[])[1]", (float_array([math.nan]),)
        ).fetchone()
        assert row is not None
        assert math.isnan(row[0])


def test_content_chunks_go_as_a_binary_bytea_array(pg_dsn: str) -> None:
    chunks = ByteaChunks([b"", bytes(range(256)), b"\\x00 not hex", b"x" * 300_000])
    with psycopg.connect(pg_dsn, context=ADAPTERS) as conn:
        row = conn.execute(
            "SELECT %(c)b::bytea[], array_length(%(c)b::bytea[], 1)", {"c": chunks}
        ).fetchone()
        assert row is not None
        assert [bytes(b) for b in row[0]] == list(chunks)
        assert row[1] == 4
        row = conn.execute("SELECT %b::bytea[]", (ByteaChunks([b"only"]),)).fetchone()
        assert row is not None
        assert [bytes(b) for b in row[0]] == [b"only"]
