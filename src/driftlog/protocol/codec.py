"""Request decoding and response encoding with kio, by API key and version. No storage calls.

The request header is read by hand only as far as its fixed prefix (api key,
version, correlation id), so that an unsupported version can still be answered
with the right correlation id. Lengths are checked against the frame before
kio sees it (`bounds.py`). A body that does not decode is malformed: the
caller disconnects that client. Everything else goes through kio's native
readers. Schema lookups are cached.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from driftlog.protocol.bounds import LengthError, check_request

_PREFIX = struct.Struct(">hhi")


class MalformedRequest(Exception):
    """The frame is not a request we can parse: disconnect that client."""


class UnsupportedRequest(Exception):
    """A well-formed header naming an API or version we do not serve."""

    def __init__(self, api_key: int, api_version: int, correlation_id: int) -> None:
        super().__init__(f"api key {api_key} version {api_version} not supported")
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


@dataclass(frozen=True, slots=True)
class Request:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any


def peek_prefix(frame: bytes | memoryview) -> tuple[int, int, int]:
    if len(frame) < _PREFIX.size:
        raise MalformedRequest("frame shorter than a request header")
    key, version, correlation_id = _PREFIX.unpack_from(frame, 0)
    return int(key), int(version), int(correlation_id)


@functools.cache
def _request_reader(api_key: int, api_version: int) -> tuple[Any, Any, Any, Any]:
    schema = load_request_schema(api_key, api_version)
    header = schema.__header_schema__
    return header, schema, entity_reader(header), entity_reader(schema)


@functools.cache
def _response_writer(api_key: int, api_version: int) -> tuple[Any, Any, Any]:
    schema = load_response_schema(api_key, api_version)
    header_schema = schema.__header_schema__
    return header_schema, entity_writer(header_schema), entity_writer(schema)


def decode_request(frame: bytes | memoryview, supported: dict[int, tuple[int, int]]) -> Request:
    """Parse one request frame; raise UnsupportedRequest or MalformedRequest."""
    api_key, api_version, correlation_id = peek_prefix(frame)
    versions = supported.get(api_key)
    if versions is None or not versions[0] <= api_version <= versions[1]:
        raise UnsupportedRequest(api_key, api_version, correlation_id)
    try:
        header_schema, body_schema, read_header, read_body = _request_reader(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity) as e:
        raise UnsupportedRequest(api_key, api_version, correlation_id) from e
    view = frame if isinstance(frame, memoryview) else memoryview(frame)
    try:
        check_request(header_schema, body_schema, view)
    except LengthError as e:
        raise MalformedRequest(f"api {api_key} v{api_version}: {e}") from e
    try:
        header, used = read_header(frame, 0)
        body, _ = read_body(frame, used)
    except Exception as e:  # kio raises many types (KeyError for unknown tags, ValueError, ...)
        raise MalformedRequest(f"cannot decode api {api_key} v{api_version}: {e!r}") from e
    # Trailing bytes are tolerated, as Kafka's own parser does: librdkafka's
    # all-topics Metadata v12 request carries three of them.
    return Request(api_key, api_version, correlation_id, header.client_id, body)


class _Chunks(list[bytes]):
    """A kio Writable that collects chunks instead of copying into one buffer."""

    def write(self, data: bytes) -> int:
        self.append(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """A response body already encoded (by kio, see `encode_body`), to send as is."""

    data: bytes


def encode_body(api_key: int, api_version: int, body: Any) -> bytes:
    _, _, write_body = _response_writer(api_key, api_version)
    chunks = _Chunks()
    write_body(chunks, body)
    return b"".join(chunks)


def encode_response(
    api_key: int, api_version: int, correlation_id: int, body: Any | EncodedBody
) -> list[bytes]:
    """The response frame as a list of chunks for `writelines`, size prefix first."""
    header_schema, write_header, write_body = _response_writer(api_key, api_version)
    chunks = _Chunks()
    chunks.append(b"")
    write_header(chunks, header_schema(correlation_id=correlation_id))
    if isinstance(body, EncodedBody):
        chunks.append(body.data)
    else:
        write_body(chunks, body)
    chunks[0] = struct.pack(">i", sum(len(c) for c in chunks))
    return list(chunks)
