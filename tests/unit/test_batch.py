"""Record-batch header parsing, validation and offset stamping."""

from __future__ import annotations

import struct

import crc32c
import pytest
from batch_builder import build_batch
from kio.schema.errors import ErrorCode

from driftlog.records.batch import InvalidBatch, parse_header, split_batches, with_offsets
from driftlog.records.timestamps import first_offset_at_or_after, max_timestamp_offset


def test_parse_valid_batch() -> None:
    batch = build_batch([b"a", b"bb", b"ccc"], producer_id=7, producer_epoch=1, base_sequence=5)
    header = parse_header(batch)
    assert header.size == len(batch)
    assert header.record_count == 3
    assert header.last_offset_delta == 2
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 1, 5)
    assert header.max_timestamp_ms == header.base_timestamp_ms + 2


def test_corrupted_payload_fails_crc() -> None:
    batch = bytearray(build_batch([b"hello"]))
    batch[-1] ^= 0xFF
    with pytest.raises(InvalidBatch) as e:
        parse_header(bytes(batch))
    assert e.value.error == ErrorCode.corrupt_message


def test_wrong_magic() -> None:
    batch = bytearray(build_batch([b"x"]))
    batch[16] = 1
    with pytest.raises(InvalidBatch) as e:
        parse_header(bytes(batch))
    assert e.value.error == ErrorCode.unsupported_for_message_format


@pytest.mark.parametrize("cut", [0, 10, 60, 70])
def test_truncated_batch(cut: int) -> None:
    batch = build_batch([b"x" * 20])
    with pytest.raises(InvalidBatch):
        list(split_batches(batch[:cut]))


def test_length_field_beyond_data() -> None:
    batch = bytearray(build_batch([b"x"]))
    struct.pack_into(">i", batch, 8, 10_000)
    with pytest.raises(InvalidBatch):
        parse_header(bytes(batch))


def test_split_several_batches() -> None:
    a, b = build_batch([b"1"]), build_batch([b"2", b"3"])
    found = list(split_batches(a + b))
    assert [start for start, _ in found] == [0, len(a)]
    assert [h.record_count for _, h in found] == [1, 2]


def test_with_offsets_keeps_crc_valid() -> None:
    batch = build_batch([b"x", b"y"])
    served = with_offsets(batch, 1234)
    assert struct.unpack_from(">q", served)[0] == 1234
    assert served[8:] == batch[8:]
    parse_header(served)


def test_log_append_time_rewrites_timestamp_and_crc() -> None:
    batch = build_batch([b"x"])
    served = with_offsets(batch, 5, log_append_time_ms=42)
    header = parse_header(served)  # CRC recomputed, so this must not raise
    assert header.max_timestamp_ms == 42
    assert header.attributes & 0x08
    assert crc32c.crc32c(served[21:]) == struct.unpack_from(">I", served, 17)[0]


def test_timestamps_inside_batch() -> None:
    batch = build_batch([b"a", b"b", b"c", b"d"], base_timestamp_ms=1000, timestamp_step_ms=10)
    assert first_offset_at_or_after(batch, 100, 1015) == (102, 1020)
    assert first_offset_at_or_after(batch, 100, 1000) == (100, 1000)
    assert first_offset_at_or_after(batch, 100, 1031) is None
    assert max_timestamp_offset(batch, 100) == (103, 1030)
