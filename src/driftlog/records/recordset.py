"""The records inside a batch, for the two places that must open one: key compaction
(which keeps some records and writes the batch again) and the produce check that
compacted topics only take keyed records. Pure; off the produce/fetch hot path.

A record is kept as the bytes it was encoded in (its length prefix included): a
batch written again is the kept records' bytes, compressed with the batch's own
codec (snappy with the framing it came in), under a header that keeps what Kafka's
cleaner keeps: base offset, last offset delta, base timestamp, partition leader
epoch, attributes (codec, transactional and control bits), producer id, epoch and
base sequence; the record count, max timestamp, length and CRC are new.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import cramjam
import crc32c

from driftlog.records.batch import CRC_START, HEADER_SIZE, BatchHeader, parse_header
from driftlog.records.timestamps import decompress, read_varint

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024  # snappy-java's default block size
_HEADER = struct.Struct(">qiibIhiqqqhii")


class Record(NamedTuple):
    offset_delta: int
    timestamp_delta: int
    key: bytes | None
    is_tombstone: bool  # a null value
    raw: bytes  # the whole record as encoded, length prefix included


def decode_records(batch: bytes) -> tuple[BatchHeader, list[Record]]:
    """The batch's header and records; ValueError when the records do not fit the batch."""
    header = parse_header(batch, stored=True)
    body = decompress(header.compression, batch[HEADER_SIZE : header.size])
    records: list[Record] = []
    pos = 0
    while pos < len(body):
        start = pos
        length, pos = read_varint(body, pos)
        end = pos + length
        if length < 6 or end > len(body):
            raise ValueError(f"record length {length} at {start} does not fit the batch")
        pos += 1  # attributes
        timestamp_delta, pos = read_varint(body, pos)
        offset_delta, pos = read_varint(body, pos)
        key_length, pos = read_varint(body, pos)
        key = None
        if key_length >= 0:
            key = bytes(body[pos : pos + key_length])
            pos += key_length
        value_length, pos = read_varint(body, pos)
        if pos > end or (value_length > 0 and pos + value_length > end):
            raise ValueError(f"record at {start} overruns its length")
        records.append(
            Record(offset_delta, timestamp_delta, key, value_length < 0, bytes(body[start:end]))
        )
        pos = end
    if len(records) != header.record_count:
        raise ValueError(f"batch declares {header.record_count} records, holds {len(records)}")
    return header, records


def compress(codec: int, data: bytes, *, xerial: bool = False) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return bytes(cramjam.gzip.compress(data))
    if codec == 2:
        if not xerial:
            return bytes(cramjam.snappy.compress_raw(data))
        out = bytearray(_XERIAL_HEADER)
        for at in range(0, len(data), _XERIAL_BLOCK):
            block = bytes(cramjam.snappy.compress_raw(data[at : at + _XERIAL_BLOCK]))
            out += struct.pack(">i", len(block)) + block
        return bytes(out)
    if codec == 3:
        # Independent blocks, no content checksum: the Java client's KafkaLZ4BlockInputStream
        # refuses linked blocks ("Dependent block stream is unsupported").
        compressor = cramjam.lz4.Compressor(block_linked=False, content_checksum=False)
        compressor.compress(data)
        return bytes(compressor.finish())
    if codec == 4:
        return bytes(cramjam.zstd.compress(data))
    raise ValueError(f"unknown compression codec {codec}")


def rewrite_batch(batch: bytes, kept: Sequence[Record]) -> bytes:
    """The batch with only `kept` (a non-empty subset of its records, in order)."""
    header = parse_header(batch, stored=True)
    (_, _, leader_epoch, _, _, attributes, last_delta, base_ts, _, pid, epoch, base_seq, _) = (
        _HEADER.unpack_from(batch, 0)
    )
    xerial = header.compression == 2 and batch[HEADER_SIZE:].startswith(_XERIAL_MAGIC)
    body = compress(header.compression, b"".join(r.raw for r in kept), xerial=xerial)
    max_ts = base_ts + max(r.timestamp_delta for r in kept)
    out = bytearray(HEADER_SIZE)
    _HEADER.pack_into(
        out, 0, 0, HEADER_SIZE + len(body) - 12, leader_epoch, 2, 0, attributes, last_delta,
        base_ts, max_ts, pid, epoch, base_seq, len(kept),
    )  # fmt: skip
    out += body
    struct.pack_into(">I", out, 17, crc32c.crc32c(memoryview(out)[CRC_START:]))
    return bytes(out)
