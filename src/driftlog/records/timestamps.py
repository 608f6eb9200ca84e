"""Record timestamps inside one batch, for ListOffsets by time. Off the hot path.

ListOffsets must answer the first offset whose timestamp is at or after the
asked time, which can fall inside a batch. Only here does Driftlog open a
batch: decompress it (gzip, snappy raw or xerial-framed, lz4 frame, zstd) and
walk the records' varint headers for (offsetDelta, timestampDelta).
"""

from __future__ import annotations

import io
import struct
import zlib

import cramjam
import lz4.frame
import zstandard

from driftlog.records.batch import HEADER_SIZE, parse_header

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
# attributes, timestamp delta, offset delta, key length, value length, header count
MIN_RECORD_BYTES = 6


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Kafka's record fields) and the position after it."""
    shift = 0
    raw = 0
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
    return (raw >> 1) ^ -(raw & 1), pos


# The most a batch may expand to when opened (Kafka bounds the compressed size only): a
# batch of max.message.bytes is far below it unless it is a decompression bomb.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


def _too_large(size: int, limit: int) -> None:
    if size > limit:
        raise ValueError(f"the batch expands past {limit} bytes")


def _snappy(data: bytes, limit: int) -> bytes:
    if not data.startswith(_XERIAL_MAGIC):
        _too_large(int(cramjam.snappy.decompress_raw_len(data)), limit)
        return bytes(cramjam.snappy.decompress_raw(data))
    out = bytearray()
    pos = 16  # magic, version, compatible version
    while pos < len(data):
        (length,) = struct.unpack_from(">i", data, pos)
        pos += 4
        block = data[pos : pos + length]
        _too_large(len(out) + int(cramjam.snappy.decompress_raw_len(block)), limit)
        out += bytes(cramjam.snappy.decompress_raw(block))
        pos += length
    return bytes(out)


def decompress(codec: int, data: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """The batch's records, uncompressed; ValueError if they would expand past `limit`
    (each codec is read with a bound, so a decompression bomb costs no memory) or are not
    valid for their codec."""
    try:
        return _decompress(codec, data, limit)
    except (zlib.error, zstandard.ZstdError, RuntimeError) as e:  # lz4 raises RuntimeError
        raise ValueError(f"codec {codec}: {e}") from e


def _decompress(codec: int, data: bytes, limit: int) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, with its header
        out = inflater.decompress(data, limit + 1)
        _too_large(len(out), limit)
        return out
    if codec == 2:
        return _snappy(data, limit)
    if codec == 3:
        out = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=limit + 1)
        _too_large(len(out), limit)
        return bytes(out)
    if codec == 4:
        chunks: list[bytes] = []
        size = 0
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while chunk := reader.read(1 << 20):
                size += len(chunk)
                _too_large(size, limit)
                chunks.append(chunk)
        return b"".join(chunks)
    raise ValueError(f"unknown compression codec {codec}")


def record_timestamps(batch: bytes) -> list[tuple[int, int]]:
    """(offset delta, timestamp ms) of every record in the batch, in order."""
    header = parse_header(batch, stored=True)
    body = decompress(header.compression, batch[HEADER_SIZE : header.size])
    (base_timestamp,) = struct.unpack_from(">q", batch, 27)
    out: list[tuple[int, int]] = []
    pos = 0
    # The count comes from the producer and records were never decoded on the
    # write path: walk only as far as the body really goes.
    while len(out) < header.record_count and pos < len(body):
        length, pos = read_varint(body, pos)
        if length < MIN_RECORD_BYTES or pos + length > len(body):
            raise ValueError(f"record length {length} at {pos} does not fit the batch")
        end = pos + length
        pos += 1  # attributes
        timestamp_delta, pos = read_varint(body, pos)
        offset_delta, pos = read_varint(body, pos)
        out.append((offset_delta, base_timestamp + timestamp_delta))
        pos = end
    return out


def first_offset_at_or_after(
    batch: bytes, base_offset: int, timestamp_ms: int
) -> tuple[int, int] | None:
    """(offset, timestamp) of the batch's first record with timestamp >= `timestamp_ms`."""
    for delta, ts in record_timestamps(batch):
        if ts >= timestamp_ms:
            return base_offset + delta, ts
    return None


def max_timestamp_offset(batch: bytes, base_offset: int) -> tuple[int, int]:
    """(offset, timestamp) of the batch's record with the largest timestamp (first on ties)."""
    best_delta, best_ts = 0, -1
    for delta, ts in record_timestamps(batch):
        if ts > best_ts:
            best_delta, best_ts = delta, ts
    return base_offset + best_delta, best_ts
