"""The zone cache's peer frames, carried on the agents' authenticated RPC. Pure.

Frames use the RPC's framing (a 4-byte big-endian length, then the body); a body's
first byte is its tag. Big-endian throughout.

    READ  0x20  request id (uint64), flags (uint8; bit 0: prefetch, load the block
                and answer with no data; bit 1: held only, answer the whole block if
                it is held, MISS otherwise, never GET; no ranges), block size (uint32),
                block index (uint32), key length (uint16), key (UTF-8, no NUL), range
                count (uint16),
                ranges (start, end: uint32 each, relative to the block's start,
                start < end <= block size)
    WARM  0x21  block size (uint32), block index (uint32), key length (uint16), key,
                the block's bytes (1 to block size of them; no answer)
    REPLY 0x22  request id (uint64), status (uint8), count (uint16), lengths
                (uint32 each), then the bytes of each range asked, in order

Status: OK; NOT_FOUND (the store has no such object: the asker reports it as the
store would); ERROR (the owner's GET failed, or the range runs past the object:
the asker reads the store itself); BUSY (the owner has too many reads running, or
its block size differs: the asker reads the store itself); MISS (held only: not
held). Anything that does not
decode exactly is a `ProtocolError`: the connection is closed, and only that one.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from driftlog.coordinator.runtime.rpc_messages import LENGTH, ProtocolError
from driftlog.read.zone.blocks import MAX_BLOCK_BYTES, Range

READ = 0x20
WARM = 0x21
REPLY = 0x22
TAGS = (READ, WARM, REPLY)
PREFETCH = 0x01
HELD_ONLY = 0x02
MAX_KEY_BYTES = 1024
MAX_RANGES = 4096
# A reply carries at most one block's bytes plus its lengths.
MAX_REPLY_BYTES = MAX_BLOCK_BYTES + 64 * 1024

_READ_HEAD = struct.Struct(">BQBIIH")  # tag, id, flags, block size, index, key length
_WARM_HEAD = struct.Struct(">BIIH")  # tag, block size, index, key length
_REPLY_HEAD = struct.Struct(">BQBH")  # tag, id, status, count
_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")


class Status(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    ERROR = 2
    BUSY = 3
    MISS = 4


@dataclass(frozen=True, slots=True)
class ReadRequest:
    request_id: int
    prefetch: bool
    block_bytes: int
    index: int
    key: str
    ranges: tuple[Range, ...]  # relative to the block's start
    held_only: bool = False


@dataclass(frozen=True, slots=True)
class Warm:
    block_bytes: int
    index: int
    key: str
    data: memoryview


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    status: Status
    parts: tuple[memoryview, ...]


def _key_bytes(key: str) -> bytes:
    raw = key.encode()
    if not raw or len(raw) > MAX_KEY_BYTES or b"\x00" in raw:
        raise ValueError(f"an object key of {len(raw)} bytes cannot be sent")
    return raw


def _key_from(body: memoryview, at: int, length: int) -> str:
    if not 0 < length <= MAX_KEY_BYTES or at + length > len(body):
        raise ProtocolError(f"bad key length {length}")
    try:
        key = bytes(body[at : at + length]).decode()
    except UnicodeDecodeError as e:
        raise ProtocolError("the key is not UTF-8") from e
    if "\x00" in key:
        raise ProtocolError("NUL in the key")
    return key


def _check_block(block_bytes: int, index: int) -> None:
    if not 0 < block_bytes <= MAX_BLOCK_BYTES:
        raise ProtocolError(f"block size {block_bytes} out of range")
    if index * block_bytes >= 2**63:
        raise ProtocolError(f"block index {index} out of range")


def encode_read(request: ReadRequest) -> bytes:
    key = _key_bytes(request.key)
    if len(request.ranges) > MAX_RANGES:
        raise ValueError(f"{len(request.ranges)} ranges in one read")
    head = _READ_HEAD.pack(
        READ,
        request.request_id,
        (PREFETCH if request.prefetch else 0) | (HELD_ONLY if request.held_only else 0),
        request.block_bytes,
        request.index,
        len(key),
    )
    ranges = b"".join(_UINT32.pack(s) + _UINT32.pack(e) for s, e in request.ranges)
    body = b"".join((head, key, _UINT16.pack(len(request.ranges)), ranges))
    return LENGTH.pack(len(body)) + body


def decode_read(body: bytes | memoryview) -> ReadRequest:
    view = memoryview(body)
    try:
        tag, request_id, flags, block_bytes, index, key_length = _READ_HEAD.unpack_from(view)
        if tag != READ or flags & ~(PREFETCH | HELD_ONLY):
            raise ProtocolError(f"not a read (tag {tag:#x}, flags {flags:#x})")
        _check_block(block_bytes, index)
        at = _READ_HEAD.size
        key = _key_from(view, at, key_length)
        at += key_length
        (count,) = _UINT16.unpack_from(view, at)
        at += 2
        if count > MAX_RANGES or len(view) - at != 8 * count:
            raise ProtocolError(f"{len(view) - at} bytes for {count} ranges")
        ranges = []
        for i in range(count):
            start, end = struct.unpack_from(">II", view, at + 8 * i)
            if not start < end <= block_bytes:
                raise ProtocolError(f"bad range {start}-{end} in a block of {block_bytes}")
            ranges.append((start, end))
    except struct.error as e:
        raise ProtocolError(f"bad read: {e}") from e
    if flags & HELD_ONLY and ranges:
        raise ProtocolError("a held-only read names no ranges")
    return ReadRequest(
        request_id,
        bool(flags & PREFETCH),
        block_bytes,
        index,
        key,
        tuple(ranges),
        bool(flags & HELD_ONLY),
    )


def encode_warm(block_bytes: int, index: int, key: str, data: bytes | memoryview) -> list[bytes]:
    """The frame as chunks (the block is not copied into a joined frame)."""
    raw = _key_bytes(key)
    if not 0 < len(data) <= block_bytes:
        raise ValueError(f"a block of {len(data)} bytes (block size {block_bytes})")
    head = _WARM_HEAD.pack(WARM, block_bytes, index, len(raw))
    return [LENGTH.pack(len(head) + len(raw) + len(data)) + head + raw, bytes(data)]


def decode_warm(body: bytes | memoryview) -> Warm:
    view = memoryview(body)
    try:
        tag, block_bytes, index, key_length = _WARM_HEAD.unpack_from(view)
    except struct.error as e:
        raise ProtocolError(f"bad warm: {e}") from e
    if tag != WARM:
        raise ProtocolError(f"not a warm (tag {tag:#x})")
    _check_block(block_bytes, index)
    key = _key_from(view, _WARM_HEAD.size, key_length)
    data = view[_WARM_HEAD.size + key_length :]
    if not 0 < len(data) <= block_bytes:
        raise ProtocolError(f"a warmed block of {len(data)} bytes (block size {block_bytes})")
    return Warm(block_bytes, index, key, data.toreadonly())


def encode_reply(
    request_id: int, status: Status, parts: Sequence[bytes | memoryview]
) -> list[bytes | memoryview]:
    """The frame as chunks: the parts follow their lengths without being joined."""
    if len(parts) > MAX_RANGES:
        raise ValueError(f"{len(parts)} parts in one reply")
    lengths = b"".join(_UINT32.pack(len(p)) for p in parts)
    head = _REPLY_HEAD.pack(REPLY, request_id, int(status), len(parts)) + lengths
    size = len(head) + sum(len(p) for p in parts)
    if size > MAX_REPLY_BYTES:
        raise ValueError(f"a reply of {size} bytes")
    return [LENGTH.pack(size) + head, *parts]


def decode_reply(body: bytes | memoryview) -> Reply:
    view = memoryview(body)
    try:
        tag, request_id, status, count = _REPLY_HEAD.unpack_from(view)
        if tag != REPLY:
            raise ProtocolError(f"not a reply (tag {tag:#x})")
        try:
            kind = Status(status)
        except ValueError as e:
            raise ProtocolError(f"unknown status {status}") from e
        if count > MAX_RANGES:
            raise ProtocolError(f"{count} parts")
        at = _REPLY_HEAD.size
        lengths = [_UINT32.unpack_from(view, at + 4 * i)[0] for i in range(count)]
        at += 4 * count
        if len(view) - at != sum(lengths):
            raise ProtocolError(f"{len(view) - at} bytes for parts of {sum(lengths)}")
        parts = []
        for length in lengths:
            parts.append(view[at : at + length].toreadonly())
            at += length
    except struct.error as e:
        raise ProtocolError(f"bad reply: {e}") from e
    return Reply(request_id, kind, tuple(parts))
