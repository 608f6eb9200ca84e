"""Record-batch headers (magic 2): parse, validate, and stamp offsets. No I/O.

Driftlog never decodes records on the hot path. A batch is kept byte-for-byte
as the producer sent it (compressed or not); only its 61-byte header is read.
Offsets are assigned later by the coordinator and written into `baseOffset`
when the batch is served, which is outside the CRC (KIP-98 layout), so it is an
8-byte write. LogAppendTime topics also rewrite `maxTimestamp` and the
timestamp-type attribute bit, which are inside the CRC, so the CRC is redone.

Layout (https://kafka.apache.org/documentation/#recordbatch):
    baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8,
    crc uint32, attributes int16, lastOffsetDelta int32, baseTimestamp int64,
    maxTimestamp int64, producerId int64, producerEpoch int16, baseSequence int32,
    recordsCount int32, records...
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c
from kio.schema.errors import ErrorCode

HEADER_SIZE = 61
# batchLength counts the bytes after itself: total size = batchLength + LOG_OVERHEAD.
LOG_OVERHEAD = 12
MAGIC_OFFSET = 16
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21
MAX_TIMESTAMP_OFFSET = 35
CRC_START = ATTRIBUTES_OFFSET

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_LOG_APPEND = 0x08
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20

_HEADER = struct.Struct(">qiibIhiqqqhii")
_OFFSET = struct.Struct(">q")
_TIMESTAMP = struct.Struct(">q")
_CRC = struct.Struct(">I")
_ATTRIBUTES = struct.Struct(">h")


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The header fields Driftlog uses; `size` is the whole batch in bytes."""

    size: int
    attributes: int
    last_offset_delta: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_FLAG)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_FLAG)


class InvalidBatch(Exception):
    """A batch the producer got wrong; `error` is the Kafka code to answer with."""

    def __init__(self, error: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def parse_header(data: bytes | memoryview, start: int = 0, *, stored: bool = False) -> BatchHeader:
    """Read and check the header of the batch at `start`; raise InvalidBatch if malformed.

    Checks what a broker must check without decoding records: length, magic,
    CRC-32C over the batch, a positive record count consistent with
    lastOffsetDelta, and a known compression codec. A `stored` batch may have lost
    records to key compaction: its count may be below lastOffsetDelta + 1.
    """
    available = len(data) - start
    if available < HEADER_SIZE:
        raise InvalidBatch(ErrorCode.corrupt_message, "batch shorter than its 61-byte header")
    (
        _base_offset,
        batch_length,
        _leader_epoch,
        magic,
        crc,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    ) = _HEADER.unpack_from(data, start)
    if magic != 2:
        raise InvalidBatch(
            ErrorCode.unsupported_for_message_format, f"magic {magic} (only 2 supported)"
        )
    size = batch_length + LOG_OVERHEAD
    if size < HEADER_SIZE or size > available:
        raise InvalidBatch(ErrorCode.corrupt_message, f"batchLength {batch_length} out of bounds")
    if crc32c.crc32c(data[start + CRC_START : start + size]) != crc:
        raise InvalidBatch(ErrorCode.corrupt_message, "CRC-32C mismatch")
    # Kafka refuses a producer batch whose offset range is not exactly its record
    # count ("inconsistent batch offset range"): anything else would open gaps.
    if record_count <= 0 or (
        last_offset_delta != record_count - 1
        if not stored
        else not 0 <= record_count - 1 <= last_offset_delta
    ):
        raise InvalidBatch(
            ErrorCode.invalid_record,
            f"record count {record_count} inconsistent with lastOffsetDelta {last_offset_delta}",
        )
    if attributes & COMPRESSION_MASK > 4:
        raise InvalidBatch(
            ErrorCode.unsupported_compression_type, f"compression {attributes & COMPRESSION_MASK}"
        )
    return BatchHeader(
        size=size,
        attributes=attributes,
        last_offset_delta=last_offset_delta,
        base_timestamp_ms=base_timestamp,
        max_timestamp_ms=max_timestamp,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=record_count,
    )


def split_batches(records: bytes) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (start, header) for each batch in a Produce `records` field; validate each."""
    view = memoryview(records)
    start = 0
    end = len(records)
    if end == 0:
        raise InvalidBatch(ErrorCode.corrupt_message, "empty records")
    while start < end:
        header = parse_header(view, start)
        yield start, header
        start += header.size


def write_base_offset(buffer: bytearray, position: int, base_offset: int) -> None:
    """Stamp the batch at `position` with its assigned offset (outside the CRC)."""
    _OFFSET.pack_into(buffer, position, base_offset)


def with_offsets(
    batch: bytes | memoryview, base_offset: int, log_append_time_ms: int = -1
) -> bytes:
    """The stored batch as served: `baseOffset` written in, LogAppendTime applied if asked.

    baseOffset is outside the CRC. For LogAppendTime (KIP-32) maxTimestamp and
    the timestamp-type bit change, which are covered by the CRC: recompute it.
    """
    if log_append_time_ms < 0:
        return _OFFSET.pack(base_offset) + bytes(batch[8:])
    out = bytearray(batch)
    _OFFSET.pack_into(out, 0, base_offset)
    (attributes,) = _ATTRIBUTES.unpack_from(out, ATTRIBUTES_OFFSET)
    _ATTRIBUTES.pack_into(out, ATTRIBUTES_OFFSET, attributes | TIMESTAMP_TYPE_LOG_APPEND)
    _TIMESTAMP.pack_into(out, MAX_TIMESTAMP_OFFSET, log_append_time_ms)
    _CRC.pack_into(out, CRC_OFFSET, crc32c.crc32c(memoryview(out)[CRC_START:]))
    return bytes(out)
