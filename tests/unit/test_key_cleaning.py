"""Key compaction's rules (lifecycle/key_cleaning.py) and the record rewriting it relies
on (records/recordset.py)."""

from __future__ import annotations

import struct

import crc32c
import pytest
from batch_builder import build_batch

from driftlog.coordinator.core.retention import RetentionLimits, RetentionPolicy, limits_for
from driftlog.coordinator.core.transactions import AbortedTxn
from driftlog.lifecycle.key_cleaning import (
    BatchInfo,
    CleaningHistory,
    KeyCompactionPolicy,
    KeyMap,
    aborted_in,
    cleanable_end,
    keep_record,
    key_digest,
    policy_for,
    should_clean,
)
from driftlog.records.recordset import compress, decode_records, rewrite_batch
from driftlog.records.timestamps import decompress

POLICY = KeyCompactionPolicy(min_lag_ms=0, delete_retention_ms=1_000, dirty_ratio=0.5)


def batches(*spans: tuple[int, int, int]) -> list[BatchInfo]:
    """(base, last, max timestamp) each, 100 bytes."""
    return [BatchInfo(base, last, 100, ts) for base, last, ts in spans]


def test_policy_only_for_compacted_topics() -> None:
    assert policy_for({}) is None
    assert policy_for({"cleanup.policy": "delete"}) is None
    policy = policy_for({"cleanup.policy": "compact,delete", "delete.retention.ms": "5"})
    assert policy is not None and policy.delete_retention_ms == 5 and policy.dirty_ratio == 0.5


def test_the_cleanable_end_spares_the_last_batch_open_transactions_and_young_data() -> None:
    log = batches((0, 9, 100), (10, 19, 200), (20, 29, 300), (30, 39, 400))
    # The last batch holds the high watermark: never cleaned (the "active segment").
    assert cleanable_end(log, 40, now_ms=10_000, policy=POLICY) == 30
    # Nothing at or past the last stable offset.
    assert cleanable_end(log, 15, now_ms=10_000, policy=POLICY) == 15
    # Nothing younger than min.compaction.lag.ms (by the batch's max timestamp).
    young = KeyCompactionPolicy(min_lag_ms=9_750)
    assert cleanable_end(log, 40, now_ms=10_000, policy=young) == 20  # 300 > 10_000 - 9_750
    assert cleanable_end([], 0, 0, POLICY) == 0


def test_should_clean_by_dirty_ratio_max_lag_and_due_tombstones() -> None:
    log = batches((0, 9, 100), (10, 19, 200), (20, 29, 300), (30, 39, 400))
    empty = CleaningHistory()
    # Cleaned up to 20 of a cleanable 30: a third dirty, below the 0.5 ratio.
    assert not should_clean(log, 20, 30, empty, 1_000, POLICY)
    assert should_clean(log, 10, 30, empty, 1_000, POLICY)
    # Nothing dirty: nothing to do, unless tombstones kept by a pass are due.
    assert not should_clean(log, 30, 30, empty, 1_000, POLICY)
    due = CleaningHistory([(30, 500, 2)])
    assert should_clean(log, 30, 30, due, 1_500, POLICY)
    assert not should_clean(log, 30, 30, due, 1_499, POLICY)
    # A dirty batch older than max.compaction.lag.ms forces a pass whatever the ratio.
    lagging = KeyCompactionPolicy(max_lag_ms=700, dirty_ratio=0.9)
    assert should_clean(log, 20, 30, empty, 1_000, lagging)
    assert not should_clean(log, 20, 30, empty, 999, lagging)


def test_keep_only_the_latest_record_of_each_key() -> None:
    key_map = KeyMap(10)
    assert key_map.put(key_digest(b"a"), 5) and key_map.put(key_digest(b"a"), 8)
    history = CleaningHistory()
    assert not keep_record(5, key_digest(b"a"), False, key_map, history, 0, POLICY)
    assert keep_record(8, key_digest(b"a"), False, key_map, history, 0, POLICY)
    # Keys not in the map (only in the clean part) stay; unkeyed records go.
    assert keep_record(1, key_digest(b"b"), False, key_map, history, 0, POLICY)
    assert not keep_record(1, None, False, key_map, history, 0, POLICY)


def test_tombstones_go_delete_retention_after_the_first_pass_over_them() -> None:
    key_map = KeyMap(10)
    history = CleaningHistory()
    digest = key_digest(b"gone")
    # First pass: kept, and counted on that pass.
    assert keep_record(7, digest, True, key_map, history, 5_000, POLICY)
    first = history.after_pass(10, 5_000, [7])
    assert first.tombstones == 1 and history.first_cleaned_ms(7) == 5_000
    # Later passes keep it until delete.retention.ms after the first one.
    assert keep_record(7, digest, True, key_map, history, 5_999, POLICY)
    assert not keep_record(7, digest, True, key_map, history, 6_000, POLICY)
    # A pass further on keeps the first pass's date for offset 7.
    history.after_pass(20, 9_000, [])
    assert history.first_cleaned_ms(7) == 5_000 and history.first_cleaned_ms(15) == 9_000
    assert history.passes[0].tombstones == 0


def test_the_history_stays_bounded_and_only_delays_deletions() -> None:
    history = CleaningHistory()
    for i in range(200):
        history.after_pass(10 * (i + 1), 1_000 * i, [])
    assert len(history.passes) == 64
    # Offset 0 was first cleaned at 0; merging can only make it later, never earlier.
    assert history.first_cleaned_ms(0) is not None
    assert history.first_cleaned_ms(0) >= 0  # type: ignore[operator]
    assert history.passes[-1] == (2000, 199_000, 0)


def test_a_full_key_map_refuses_new_keys_only() -> None:
    key_map = KeyMap(2)
    assert key_map.put(b"1", 1) and key_map.put(b"2", 2)
    assert not key_map.put(b"3", 3)
    assert key_map.put(b"1", 4) and key_map.latest(b"1") == 4


def test_aborted_data_is_found_by_producer_and_range() -> None:
    aborted = [AbortedTxn(7, 10, 20)]
    assert aborted_in(aborted, 7, 10) and aborted_in(aborted, 7, 15)
    assert not aborted_in(aborted, 7, 21) and not aborted_in(aborted, 8, 15)


def _batch_with_codec(codec: int) -> bytes:
    """Three records compressed with `codec`, as a producer would send them."""
    plain = build_batch([b"one", b"two", b"three"], producer_id=5, producer_epoch=2,
                        base_sequence=40)  # fmt: skip
    out = bytearray(plain[:61] + compress(codec, plain[61:]))
    struct.pack_into(">i", out, 8, len(out) - 12)
    struct.pack_into(">h", out, 21, struct.unpack_from(">h", out, 21)[0] | codec)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_a_rewritten_batch_keeps_its_header_and_codec(codec: int) -> None:
    batch = _batch_with_codec(codec)
    _, records = decode_records(batch)
    assert len(records) == 3 and records[0].key is None and not records[0].is_tombstone
    out = rewrite_batch(batch, records[1:2])
    header, kept = decode_records(out)
    assert header.compression == codec
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (5, 2, 40)
    # The offsets stay: the batch still ends at delta 2; only the count changes.
    assert header.last_offset_delta == 2 and header.record_count == 1
    assert [r.offset_delta for r in kept] == [1] and kept[0].raw == records[1].raw
    assert decompress(codec, out[61:]) == records[1].raw
    assert header.max_timestamp_ms == header.base_timestamp_ms + 1


def test_lz4_frames_have_independent_blocks_as_the_java_client_requires() -> None:
    plain = build_batch([b"y" * 100_000])
    frame = compress(3, plain[61:])
    assert frame[:4] == b"\x04\x22\x4d\x18"  # the LZ4 frame magic
    flags = frame[4]
    assert flags >> 6 == 1  # version 01
    assert flags & 0x20  # block independence: Kafka's Java reader requires it
    assert not flags & 0x04  # no content checksum
    assert decompress(3, frame) == plain[61:]


def test_snappy_keeps_the_framing_it_came_in() -> None:
    plain = build_batch([b"x" * 100])
    framed = compress(2, plain[61:], xerial=True)
    assert framed.startswith(b"\x82SNAPPY\x00")
    assert decompress(2, framed) == plain[61:]


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_decompression_is_bounded(codec: int) -> None:
    """A batch that expands past the bound is refused without being expanded (a
    decompression bomb costs no memory); one that stays within it opens."""
    bomb = compress(codec, b"\0" * 5_000_000)
    with pytest.raises(ValueError, match="expands past"):
        decompress(codec, bomb, limit=1_000_000)
    assert decompress(codec, bomb, limit=5_000_000) == b"\0" * 5_000_000
    framed = compress(2, b"\0" * 5_000_000, xerial=True)
    with pytest.raises(ValueError, match="expands past"):
        decompress(2, framed, limit=1_000_000)


def test_retention_applies_only_when_the_policy_deletes() -> None:
    """A compact-only topic keeps every key's latest record however old (Kafka deletes by
    time or size only with cleanup.policy including delete)."""
    broker = RetentionPolicy(retention_ms=1_000, retention_bytes=10)
    assert limits_for({"cleanup.policy": "compact"}, broker).unlimited
    assert limits_for({"cleanup.policy": "compact,delete"}, broker) == RetentionLimits(1_000, 10)
    assert limits_for({}, broker) == RetentionLimits(1_000, 10)
