"""Version-independent construction of kio entities.

kio generates one dataclass per message version. Handlers describe a response
once, with every field any version has, and `build` keeps only the fields the
requested version defines. This module owns that mapping and nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import uuid
from types import ModuleType
from typing import Any

from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType


@functools.cache
def field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@functools.cache
def _required_defaults(cls: type) -> tuple[tuple[str, Any], ...]:
    """Fields without a kio default, with a neutral value for fields a handler omitted."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        kind = f.metadata.get("kafka_type", "")
        value: Any
        if kind == "error_code":
            value = ErrorCode.none
        elif kind in ("timedelta_i32", "timedelta_i64"):
            value = datetime.timedelta(0)
        elif kind == "datetime_i64":
            value = datetime.datetime.fromtimestamp(0, datetime.UTC)
        elif "int" in kind or kind == "float64":
            value = 0
        elif kind == "bool":
            value = False
        elif kind == "uuid":
            value = uuid.UUID(int=0)
        elif kind in ("string",):
            value = ""
        elif kind == "bytes" or kind == "records":
            value = b""
        else:
            value = ()
        out.append((f.name, value))
    return tuple(out)


def build(cls: type, **values: Any) -> Any:
    """Instantiate `cls` with the subset of `values` it has; missing required fields get zeros."""
    names = field_names(cls)
    kwargs = {k: v for k, v in values.items() if k in names}
    for name, default in _required_defaults(cls):
        kwargs.setdefault(name, default)
    return cls(**kwargs)


@functools.cache
def response_module(api_key: int, version: int) -> ModuleType:
    return load_payload_module(api_key, version, EntityType.response)


@functools.cache
def response_class(api_key: int, version: int) -> type:
    """The response entity of an API version (its top-level class)."""
    module = response_module(api_key, version)
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "__type__", None) == EntityType.response:
            return value
    raise LookupError(f"no response entity for API {api_key} v{version}")


@functools.cache
def request_module(api_key: int, version: int) -> ModuleType:
    return load_payload_module(api_key, version, EntityType.request)
