"""Whole columns as PostgreSQL arrays in the binary format, for the group commit.

A round of the writer (`postgres.py`) sends each column of its batch rows as one
array parameter. Building them in C (`struct` packs the numbers, then strided
copies interleave their lengths) costs a fraction of formatting text literals,
and the server reads them without parsing numbers.
psycopg's list adapters would dump element by element in Python, so the arrays are
built here and handed to psycopg as ready bytes: each wrapper type has a dumper
that passes its bytes through with the array's type oid (`register`).

The format is PostgreSQL's `array_send`: the number of dimensions, a has-nulls
flag, the element type's oid, then per dimension its size and lower bound, then
each element as its length and its binary value (big-endian).
"""

from __future__ import annotations

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


_HEADER = struct.Struct(">5i")  # one dimension, no nulls, the element type, its size, 1


def _array(packed: bytes, oid: int, size: int, count: int) -> bytes:
    """`count` elements of `size` bytes each, already big-endian in `packed`."""
    if count == 0:
        return _EMPTY.pack(0, 0, oid)
    # Each element is its length (4 bytes, big-endian) then its bytes: interleaved
    # by strided slice copies, one per byte of an element, in C.
    width = 4 + size
    out = bytearray(width * count)
    out[3::width] = bytes((size,)) * count
    for byte in range(size):
        out[4 + byte :: width] = packed[byte::size]
    return _HEADER.pack(1, 0, oid, count, 1) + out


def _numbers(code: str, values: Sequence[int]) -> bytes:
    # struct packs a sequence twice as fast as `array` converts one, big-endian at
    # once; a repeated code compiles to one entry, so the format costs no memory.
    try:
        return struct.pack(f">{len(values)}{code}", *values)
    except struct.error as e:
        raise OverflowError(f"a number out of range: {e}") from e


def int4_array(values: Sequence[int]) -> Int4Array:
    return Int4Array(_array(_numbers("i", values), _INT4_OID, 4, len(values)))


def int8_array(values: Sequence[int]) -> Int8Array:
    return Int8Array(_array(_numbers("q", values), _INT8_OID, 8, len(values)))


def uuid_array(values: Sequence[uuid.UUID | bytes]) -> UuidArray:
    """From UUIDs or their 16 bytes (callers that repeat one id pass its bytes)."""
    try:
        raw = b"".join(values)  # type: ignore[arg-type]  # the usual case: all bytes
    except TypeError:
        raw = b"".join([v if isinstance(v, bytes) else v.bytes for v in values])
    if len(raw) != 16 * len(values):
        raise ValueError("a uuid is 16 bytes")
    return UuidArray(_array(raw, _UUID_OID, 16, len(values)))


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
