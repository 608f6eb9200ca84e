"""Checks a request's length fields against the frame before kio decodes it. No I/O.

kio 0.6.5's native reader trusts length prefixes: it reserves memory for an
array's declared element count before reading any element, so a 16-byte frame
declaring 2^32 elements makes the process abort on a failed allocation. It also
returns None for a null array where the schema does not allow null. This module
walks the same schemas kio generates (field by field, using kio's own
introspection) and refuses a frame whose counts or lengths exceed the bytes
left, or that is null where the schema says it cannot be, so kio only ever sees
frames whose lengths are plausible.

Only lengths are checked; values are kio's business. Walkers are compiled once
per schema and cached.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
    is_optional,
)

# A step reads one field at `pos` of `data` and returns the position after it.
Step = Callable[[memoryview, int], int]

_FIXED_SIZES = {
    "bool": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "error_code": 2,
    "timedelta_i32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "datetime_i64": 8,
    "timedelta_i64": 8,
    "uuid": 16,
}


class LengthError(ValueError):
    """A length or count field that cannot be right for this frame."""


def _uvarint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise LengthError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise LengthError("varint too long")


def _int(data: memoryview, pos: int, size: int) -> tuple[int, int]:
    if pos + size > len(data):
        raise LengthError("truncated integer")
    return int.from_bytes(data[pos : pos + size], "big", signed=True), pos + size


def _skip(data: memoryview, pos: int, length: int) -> int:
    if length < 0 or pos + length > len(data):
        raise LengthError(f"length {length} exceeds the {len(data) - pos} bytes left")
    return pos + length


def _length_prefix(flexible: bool, wide: bool) -> Callable[[memoryview, int], tuple[int, int]]:
    """Reads a length; returns -1 for null. Compact lengths are stored plus one."""
    if flexible:

        def compact(data: memoryview, pos: int) -> tuple[int, int]:
            raw, pos = _uvarint(data, pos)
            return raw - 1, pos

        return compact
    size = 4 if wide else 2
    return lambda data, pos: _int(data, pos, size)


def _sized(kind: str, flexible: bool, nullable: bool, name: str) -> Step:
    """A string, bytes or records field: a length then that many bytes."""
    read_length = _length_prefix(flexible, wide=kind != "string")

    def step(data: memoryview, pos: int) -> int:
        length, pos = read_length(data, pos)
        if length < 0:
            if length == -1 and nullable:
                return pos
            raise LengthError(f"{name}: null or negative length where not allowed")
        return _skip(data, pos, length)

    return step


def _fixed(size: int) -> Step:
    return lambda data, pos: _skip(data, pos, size)


def _element_step(kafka_type: str, flexible: bool, name: str) -> Step:
    if kafka_type in _FIXED_SIZES:
        return _fixed(_FIXED_SIZES[kafka_type])
    return _sized(kafka_type, flexible, nullable=False, name=name)


def _array(
    element: Step, min_element_bytes: int, flexible: bool, nullable: bool, name: str
) -> Step:
    read_count = _length_prefix(flexible, wide=True)

    def step(data: memoryview, pos: int) -> int:
        count, pos = read_count(data, pos)
        if count < 0:
            if count == -1 and nullable:
                return pos
            raise LengthError(f"{name}: null or negative array count where not allowed")
        if count * min_element_bytes > len(data) - pos:
            raise LengthError(f"{name}: {count} elements cannot fit in {len(data) - pos} bytes")
        for _ in range(count):
            pos = element(data, pos)
        return pos

    return step


def _tagged_fields(data: memoryview, pos: int) -> int:
    count, pos = _uvarint(data, pos)
    if count > len(data) - pos:
        raise LengthError(f"{count} tagged fields cannot fit")
    for _ in range(count):
        _, pos = _uvarint(data, pos)
        size, pos = _uvarint(data, pos)
        pos = _skip(data, pos, size)
    return pos


@functools.cache
def entity_walker(schema: type, is_request_header: bool = False) -> Step:
    flexible = bool(getattr(schema, "__flexible__", False))
    steps: list[Step] = []
    for field in dataclasses.fields(schema):
        if get_field_tag(field) is not None:
            continue  # tagged fields are size-delimited; skipped as a block below
        name = f"{schema.__name__}.{field.name}"
        nullable = is_optional(field)
        # The request header's client id is a legacy string even in flexible headers.
        field_flexible = flexible and not (is_request_header and field.name == "client_id")
        shape = classify_field(field)
        if isinstance(shape, EntityTupleField):
            element = entity_walker(shape.type_)
            steps.append(_array(element, 1, field_flexible, nullable, name))
            continue
        if isinstance(shape, EntityField):
            walk_entity = entity_walker(shape.type_)
            steps.append(_nullable_entity(walk_entity) if nullable else walk_entity)
            continue
        kind = get_schema_field_type(field)
        if isinstance(shape, PrimitiveTupleField):
            element = _element_step(kind, field_flexible, name)
            size = _FIXED_SIZES.get(kind, 1)
            steps.append(_array(element, size, field_flexible, nullable, name))
        elif kind in _FIXED_SIZES:
            steps.append(_fixed(_FIXED_SIZES[kind]))
        else:
            steps.append(_sized(kind, field_flexible, nullable, name))
    if flexible:
        steps.append(_tagged_fields)

    def walk(data: memoryview, pos: int) -> int:
        for step in steps:
            pos = step(data, pos)
        return pos

    return walk


def _nullable_entity(walk: Step) -> Step:
    def step(data: memoryview, pos: int) -> int:
        marker, pos = _int(data, pos, 1)
        return pos if marker == -1 else walk(data, pos)

    return step


def check_request(header_schema: type, body_schema: type, frame: memoryview) -> None:
    """Raise LengthError unless every length in the frame fits (header, then body)."""
    pos = entity_walker(header_schema, True)(frame, 0)
    entity_walker(body_schema)(frame, pos)
