"""Per-record checks a topic's configs ask for on produce (KIP-467 record errors). Pure.

Kafka's LogValidator checks every record of a batch and, when any fails, refuses
the whole batch with the failing records' batch indexes and messages. Of its
record checks, those that apply to Driftlog are the timestamp ones:

- CreateTime topics with `message.timestamp.before.max.ms` or
  `message.timestamp.after.max.ms` (KIP-937): a record timestamped further in the
  past or future than that gets INVALID_TIMESTAMP. Records must be decoded for
  this, so it happens only for topics that set a bound (decoding is never on
  the path of an ordinary produce).
- LogAppendTime topics: a producer batch already marked LogAppendTime gets
  INVALID_TIMESTAMP for each record (a header bit: nothing is decoded).

- Compacted topics (`cleanup.policy` with compact): a record without a key gets
  INVALID_RECORD (key compaction keeps the latest record per key; an unkeyed one has
  none). Records are decoded for this on compacted topics only.

Magic and inner compression checks concern v0/v1 message sets, which Driftlog
refuses whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from driftlog.records.batch import TIMESTAMP_TYPE_LOG_APPEND, BatchHeader, InvalidBatch
from driftlog.records.recordset import decode_records
from driftlog.records.timestamps import record_timestamps
from driftlog.topic_config import NO_BOUND_MS

NO_TIMESTAMP = -1
# Kafka's top-level message; the per-record ones come in record_errors.
INVALID_TIMESTAMP_MESSAGE = "One or more records have been rejected due to invalid timestamp"
NO_KEY_MESSAGE = "Compacted topic cannot accept message without key"


@dataclass(frozen=True, slots=True)
class RecordChecks:
    """What a topic's configs require of every record."""

    log_append_time: bool
    before_max_ms: int
    after_max_ms: int
    requires_keys: bool = False

    @property
    def bounded(self) -> bool:
        return self.before_max_ms != NO_BOUND_MS or self.after_max_ms != NO_BOUND_MS


class RecordErrors(InvalidBatch):
    """Some records of the batch are invalid: the batch is refused, these are named."""

    def __init__(self, error: ErrorCode, reason: str, errors: list[tuple[int, str]]) -> None:
        super().__init__(error, reason)
        self.record_errors = errors


def checks_for(configs: Mapping[str, str]) -> RecordChecks | None:
    """The checks a topic needs, or None (the usual case) when there are none."""
    log_append_time = configs.get("message.timestamp.type") == "LogAppendTime"
    before = configs.get("message.timestamp.before.max.ms")
    after = configs.get("message.timestamp.after.max.ms")
    compacted = "compact" in configs.get("cleanup.policy", "delete").split(",")
    if not log_append_time and before is None and after is None and not compacted:
        return None
    return RecordChecks(
        log_append_time,
        int(before) if before is not None else NO_BOUND_MS,
        int(after) if after is not None else NO_BOUND_MS,
        compacted,
    )


def check_records(batch: bytes, header: BatchHeader, checks: RecordChecks, now_ms: int) -> None:
    """Raise RecordErrors naming every invalid record, or InvalidBatch if records are unreadable."""
    if checks.requires_keys:
        _check_keys(batch)
    marked_log_append = bool(header.attributes & TIMESTAMP_TYPE_LOG_APPEND)
    if checks.log_append_time:
        if marked_log_append:
            reason = "Producer should not set timestamp type to LogAppendTime."
            raise RecordErrors(
                ErrorCode.invalid_timestamp,
                INVALID_TIMESTAMP_MESSAGE,
                [(i, f"Invalid timestamp type in record {i}. {reason}")
                 for i in range(header.record_count)],
            )  # fmt: skip
        return  # the append time replaces the records' timestamps: no bounds to check
    if not checks.bounded:
        return
    if marked_log_append:
        # Records of a LogAppendTime batch all carry the batch's max timestamp.
        timestamps = [(i, header.max_timestamp_ms) for i in range(header.record_count)]
    else:
        try:
            timestamps = record_timestamps(batch)
        except Exception as e:  # cramjam and the varint walk raise many types
            raise InvalidBatch(ErrorCode.corrupt_message, f"records cannot be read: {e}") from e
        if len(timestamps) != header.record_count:
            raise InvalidBatch(
                ErrorCode.corrupt_message,
                f"batch declares {header.record_count} records but holds {len(timestamps)}",
            )
    low = now_ms - checks.before_max_ms
    high = now_ms + checks.after_max_ms
    errors = [
        (
            index,
            f"Timestamp {ts} of message with offset {offset_delta} is out of range. "
            f"The timestamp should be within [{low}, {high}]",
        )
        for index, (offset_delta, ts) in enumerate(timestamps)
        if ts != NO_TIMESTAMP and not low <= ts <= high
    ]
    if errors:
        raise RecordErrors(ErrorCode.invalid_timestamp, INVALID_TIMESTAMP_MESSAGE, errors)


def _check_keys(batch: bytes) -> None:
    try:
        _, records = decode_records(batch)
    except Exception as e:  # cramjam and the varint walk raise many types
        raise InvalidBatch(ErrorCode.corrupt_message, f"records cannot be read: {e}") from e
    errors = [
        (index, "Compacted topic cannot accept message without key.")
        for index, record in enumerate(records)
        if record.key is None
    ]
    if errors:
        raise RecordErrors(ErrorCode.invalid_record, NO_KEY_MESSAGE, errors)
