"""Builds valid magic-2 record batches for tests, independently of the broker's code."""

from __future__ import annotations

import struct

import crc32c


def _zigzag_varint(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        if raw:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _record(offset_delta: int, timestamp_delta: int, key: bytes | None, value: bytes) -> bytes:
    body = bytearray(b"\x00")  # attributes
    body += _zigzag_varint(timestamp_delta)
    body += _zigzag_varint(offset_delta)
    if key is None:
        body += _zigzag_varint(-1)
    else:
        body += _zigzag_varint(len(key)) + key
    body += _zigzag_varint(len(value)) + value
    body += _zigzag_varint(0)  # no headers
    return _zigzag_varint(len(body)) + bytes(body)


def build_batch(
    values: list[bytes],
    *,
    base_timestamp_ms: int = 1_700_000_000_000,
    timestamp_step_ms: int = 1,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
) -> bytes:
    """An uncompressed batch; record i has timestamp base + i * step."""
    records = b"".join(_record(i, i * timestamp_step_ms, None, v) for i, v in enumerate(values))
    max_ts = base_timestamp_ms + (len(values) - 1) * timestamp_step_ms
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            len(values) - 1,
            base_timestamp_ms,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            len(values),
        )
        + records
    )
    crc = crc32c.crc32c(after_crc)
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, rest
    return struct.pack(">qiibI", 0, batch_length, -1, 2, crc) + after_crc
