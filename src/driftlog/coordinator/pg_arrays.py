"""Whole columns as PostgreSQL arrays in the binary format, for the group commit.

A round of the writer (`postgres.py`) sends each column of its batch rows as one
array parameter. Building them with `struct` (one call per column) costs a third
of formatting text literals, and the server reads them without parsing numbers.
psycopg's list adapters would dump element by element in Python, so the arrays are
built here and handed to psycopg as ready bytes: each wrapper type has a dumper
that passes its bytes through with the array's type oid (`register`).

The format is PostgreSQL's `array_send`: the number of dimensions, a has-nulls
flag, the element type's oid, then per dimension its size and lower bound, then
each element as its length and its binary value (big-endian).
"""

from __future__ import annotations

import functools
import struct
import uuid
from collections.abc import Sequence

from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper
from psycopg.pq import Format

_INT4_OID, _INT8_OID, _UUID_OID = 23, 20, 2950
_EMPTY = struct.Struct(">3i")  # no dimensions, no nulls, the element type


class Int4Array(bytes):
    """An integer[] in the binary format."""


class Int8Array(bytes):
    """A bigint[] in the binary format."""


class UuidArray(bytes):
    """A uuid[] in the binary format."""


@functools.lru_cache(maxsize=1024)
def _layout(element: str, count: int) -> struct.Struct:
    return struct.Struct(">5i" + element * count)


def _array(element: str, oid: int, size: int, values: Sequence[object]) -> bytes:
    count = len(values)
    if count == 0:
        return _EMPTY.pack(0, 0, oid)
    items: list[object] = [size] * (2 * count)
    items[1::2] = values  # each value after its length: one C-level slice assignment
    return _layout(element, count).pack(1, 0, oid, count, 1, *items)


def int4_array(values: Sequence[int]) -> Int4Array:
    return Int4Array(_array("ii", _INT4_OID, 4, values))


def int8_array(values: Sequence[int]) -> Int8Array:
    return Int8Array(_array("iq", _INT8_OID, 8, values))


def uuid_array(values: Sequence[uuid.UUID | bytes]) -> UuidArray:
    """From UUIDs or their 16 bytes (callers that repeat one id pass its bytes)."""
    raw = [v if isinstance(v, bytes) else v.bytes for v in values]
    return UuidArray(_array("i16s", _UUID_OID, 16, raw))


class _PassThrough(Dumper):
    format = Format.BINARY

    def dump(self, obj: object) -> bytes:
        assert isinstance(obj, bytes)
        return obj


class _Int4ArrayDumper(_PassThrough):
    oid = 1007  # integer[]


class _Int8ArrayDumper(_PassThrough):
    oid = 1016  # bigint[]


class _UuidArrayDumper(_PassThrough):
    oid = 2951  # uuid[]


def register(context: AdaptContext) -> None:
    """Let a connection (or any adaptation context) send these arrays: use `%b`."""
    adapters = context.adapters
    adapters.register_dumper(Int4Array, _Int4ArrayDumper)
    adapters.register_dumper(Int8Array, _Int8ArrayDumper)
    adapters.register_dumper(UuidArray, _UuidArrayDumper)
