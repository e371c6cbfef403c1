"""Array parameters written as PostgreSQL array literals.

psycopg adapts a Python list by looking at its elements (the first that is not None
chooses the element type) and then dumps each element through its own dumper, in
Python.  For the short lists the store sends with almost every statement (the ids of
a group of settles, a submission's addresses and routes, a group's new recipient
rows column by column) that machinery cost more of a node's CPU than the statements'
other parameters (py-spy of a PostgreSQL drain, docs/benchmarks.md, session 14).  A
list written here is one ``str`` parameter, which psycopg passes on without looking
into it, and the statement casts it (``%s::text[]``, ``%s::integer[]``, ...): the
server parses the literal.

The literal syntax is PostgreSQL's (``{"a","b",NULL}``): every text element is
double-quoted, with ``\\`` and ``"`` escaped, so that any string (empty, ``NULL``,
with braces, commas, quotes or spaces) comes back as itself, and ``None`` is an SQL
NULL.

A message's content goes as a ``bytea[]`` of its chunks in binary
(:class:`ByteaChunks`, dumped by :class:`ByteaChunksDumper` in the adapters the
store's connections use, :data:`ADAPTERS`): the chunks as they are, no text escaping,
no element scan.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from psycopg import adapters
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

__all__ = [
    "ADAPTERS",
    "ByteaChunks",
    "ByteaChunksDumper",
    "float_array",
    "int_array",
    "text_array",
]


def _quoted(value: str) -> str:
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def text_array(values: Iterable[str | None]) -> str:
    """A ``text[]`` literal of ``values`` (None: NULL)."""
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


def int_array(values: Iterable[int | None]) -> str:
    """An ``integer[]`` / ``bigint[]`` / ``smallint[]`` literal of ``values``."""
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def _float(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_array(values: Iterable[float | None]) -> str:
    """A ``double precision[]`` literal of ``values`` (exact: ``repr`` round-trips)."""
    return "{" + ",".join("NULL" if v is None else _float(v) for v in values) + "}"


class ByteaChunks(tuple[bytes, ...]):
    """A message's content in chunks: a ``bytea[]`` parameter (``%(name)b``)."""

    __slots__ = ()


_BYTEA = adapters.types["bytea"]
# The binary array's header: 1 dimension, no NULLs, element type bytea; the dimension's
# length and lower bound follow, then each element's length and bytes.
_HEADER = struct.Struct("!iiIii")
_LENGTH = struct.Struct("!i")


class ByteaChunksDumper(Dumper):
    """:class:`ByteaChunks` as a binary ``bytea[]``."""

    format = Format.BINARY
    oid = _BYTEA.array_oid

    def dump(self, obj: ByteaChunks) -> bytes:
        parts = [_HEADER.pack(1, 0, _BYTEA.oid, len(obj), 1)]
        for chunk in obj:
            parts.append(_LENGTH.pack(len(chunk)))
            parts.append(chunk)
        return b"".join(parts)


#: psycopg's adapters with :class:`ByteaChunksDumper`: the store's connections' context.
ADAPTERS = AdaptersMap(adapters)
ADAPTERS.register_dumper(ByteaChunks, ByteaChunksDumper)
