"""The coordinator's in-memory state and its sequencer. Pure: no I/O, no clock reads.

A single writer owns this state for its partitions. Committing an object is two
steps so that a database failure can never leave readers ahead of durability:

1. `sequence()` assigns offsets from each partition's `next_offset` and returns
   the rows to persist. Readers do not see them yet.
2. After the backend persisted the rows, `apply()` indexes them and advances
   the high watermarks. If persisting failed, `rollback()` returns
   `next_offset` to the high watermark, so no offset is skipped.

Many objects are sequenced before one persist (group commit), so `sequence()`
works on top of earlier, not yet applied sequences.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    CommittedOffset,
    PartitionOffsets,
    TopicInfo,
)
from driftlog.coordinator.producers import (
    ProducerPartitionState,
    check_sequence,
    record_batch,
)


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A committed batch as persisted: its location plus who wrote it."""

    topic_id: uuid.UUID
    partition: int
    location: BatchLocation
    producer_id: int
    producer_epoch: int
    base_sequence: int


ProducerKey = tuple[int, uuid.UUID, int]  # producer id, topic id, partition


@dataclass(slots=True)
class SequencedObject:
    """The rows one object commit produces, before they are durable."""

    object_key: str
    object_size: int
    committed_ms: int
    rows: list[BatchRow]
    outcomes: list[CommitOutcome]
    # Producer states replaced by this commit, to restore if it is not persisted.
    undo: list[tuple[ProducerKey, ProducerPartitionState | None]] = field(default_factory=list)


@dataclass(slots=True)
class PartitionLog:
    """Committed batches of one partition, in offset order."""

    log_start_offset: int = 0
    high_watermark: int = 0
    next_offset: int = 0
    base_offsets: list[int] = field(default_factory=list)
    batches: list[BatchLocation] = field(default_factory=list)
    # Running maximum of batch timestamps, so that "first batch with a
    # timestamp >= T" is a bisection (Kafka's time index is monotonic the same way).
    max_timestamp_prefix: list[int] = field(default_factory=list)

    def append(self, location: BatchLocation) -> None:
        self.base_offsets.append(location.base_offset)
        self.batches.append(location)
        ts = (
            location.log_append_time_ms
            if location.log_append_time_ms >= 0
            else location.max_timestamp_ms
        )
        previous = self.max_timestamp_prefix[-1] if self.max_timestamp_prefix else -1
        self.max_timestamp_prefix.append(max(previous, ts))
        self.high_watermark = location.last_offset + 1
        self.next_offset = max(self.next_offset, self.high_watermark)


class CoordinatorState:
    def __init__(self) -> None:
        self.topics_by_name: dict[str, TopicInfo] = {}
        self.topics_by_id: dict[uuid.UUID, TopicInfo] = {}
        self.logs: dict[tuple[uuid.UUID, int], PartitionLog] = {}
        self.group_offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        self.producers: dict[ProducerKey, ProducerPartitionState] = {}

    # Topics -----------------------------------------------------------------
    def put_topic(self, topic: TopicInfo) -> None:
        old = self.topics_by_name.get(topic.name)
        if old is not None and old.topic_id != topic.topic_id:
            self.drop_topic(old.name)
        self.topics_by_name[topic.name] = topic
        self.topics_by_id[topic.topic_id] = topic
        for partition in range(topic.partition_count):
            self.logs.setdefault((topic.topic_id, partition), PartitionLog())

    def drop_topic(self, name: str) -> None:
        topic = self.topics_by_name.pop(name, None)
        if topic is None:
            return
        del self.topics_by_id[topic.topic_id]
        for partition in range(topic.partition_count):
            self.logs.pop((topic.topic_id, partition), None)

    # Write path -------------------------------------------------------------
    def sequence(
        self,
        object_key: str,
        object_size: int,
        batches: Sequence[BatchToCommit],
        now_ms: int,
    ) -> SequencedObject:
        rows: list[BatchRow] = []
        outcomes: list[CommitOutcome] = []
        undo: list[tuple[ProducerKey, ProducerPartitionState | None]] = []
        for batch in batches:
            log = self.logs.get((batch.topic_id, batch.partition))
            if log is None:
                # The topic was deleted (or shrunk) between upload and commit.
                outcomes.append(CommitOutcome(ErrorCode.unknown_topic_or_partition))
                continue
            base_offset = log.next_offset
            if batch.producer_id >= 0:
                key = (batch.producer_id, batch.topic_id, batch.partition)
                previous = self.producers.get(key)
                verdict = check_sequence(
                    previous, batch.producer_epoch, batch.base_sequence, batch.record_count
                )
                if verdict.error != ErrorCode.none:
                    outcomes.append(CommitOutcome(verdict.error))
                    continue
                if verdict.duplicate_of >= 0:
                    # A retry of a batch already committed: its original offset, nothing stored.
                    outcomes.append(
                        CommitOutcome(
                            ErrorCode.none,
                            base_offset=verdict.duplicate_of,
                            log_start_offset=log.log_start_offset,
                        )
                    )
                    continue
                undo.append((key, previous))
                self.producers[key] = record_batch(
                    previous,
                    batch.producer_epoch,
                    batch.base_sequence,
                    batch.record_count,
                    base_offset,
                )
            topic = self.topics_by_id[batch.topic_id]
            log_append = topic.configs.get("message.timestamp.type") == "LogAppendTime"
            log.next_offset += batch.record_count
            location = BatchLocation(
                object_key=object_key,
                byte_offset=batch.byte_offset,
                byte_length=batch.byte_length,
                base_offset=base_offset,
                last_offset=base_offset + batch.record_count - 1,
                max_timestamp_ms=batch.max_timestamp_ms,
                log_append_time_ms=now_ms if log_append else -1,
            )
            rows.append(
                BatchRow(
                    batch.topic_id,
                    batch.partition,
                    location,
                    batch.producer_id,
                    batch.producer_epoch,
                    batch.base_sequence,
                )
            )
            outcomes.append(
                CommitOutcome(
                    ErrorCode.none,
                    base_offset=base_offset,
                    log_append_time_ms=location.log_append_time_ms,
                    log_start_offset=log.log_start_offset,
                )
            )
        return SequencedObject(object_key, object_size, now_ms, rows, outcomes, undo)

    def apply(self, sequenced: Iterable[SequencedObject]) -> None:
        for obj in sequenced:
            for row in obj.rows:
                log = self.logs.get((row.topic_id, row.partition))
                if log is not None:
                    log.append(row.location)

    def rollback(self, sequenced: Sequence[SequencedObject]) -> None:
        """Forget sequenced commits that were not persisted."""
        for log in self.logs.values():
            log.next_offset = log.high_watermark
        for obj in reversed(sequenced):
            for key, previous in reversed(obj.undo):
                if previous is None:
                    self.producers.pop(key, None)
                else:
                    self.producers[key] = previous

    def restore_producer(
        self,
        producer_id: int,
        epoch: int,
        topic_id: uuid.UUID,
        partition: int,
        base_sequence: int,
        record_count: int,
        base_offset: int,
    ) -> None:
        """Rebuild producer state from a committed batch (on load, in offset order)."""
        key = (producer_id, topic_id, partition)
        self.producers[key] = record_batch(
            self.producers.get(key), epoch, base_sequence, record_count, base_offset
        )

    # Read path --------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None:
        log = self.logs.get((topic_id, partition))
        if log is None:
            return None
        return PartitionOffsets(log.log_start_offset, log.high_watermark)

    def find_batches(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, max_bytes: int
    ) -> list[BatchLocation]:
        log = self.logs.get((topic_id, partition))
        if log is None or start_offset >= log.high_watermark:
            return []
        index = max(bisect.bisect_right(log.base_offsets, start_offset) - 1, 0)
        out: list[BatchLocation] = []
        total = 0
        batches = log.batches
        for i in range(index, len(batches)):  # no slice: the tail may be long
            location = batches[i]
            if location.last_offset < start_offset:
                continue
            if out and total + location.byte_length > max_bytes:
                break
            out.append(location)
            total += location.byte_length
            if total >= max_bytes:
                break
        return out

    def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        log = self.logs.get((topic_id, partition))
        if log is None:
            return None
        index = bisect.bisect_left(log.max_timestamp_prefix, timestamp_ms)
        while index < len(log.batches) and log.batches[index].last_offset < log.log_start_offset:
            index += 1
        return log.batches[index] if index < len(log.batches) else None

    def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        log = self.logs.get((topic_id, partition))
        return log.max_timestamp_prefix[-1] if log and log.max_timestamp_prefix else -1

    # Group offsets ------------------------------------------------------------
    def put_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None:
        group = self.group_offsets.setdefault(group_id, {})
        for offset in offsets:
            group[(offset.topic, offset.partition)] = offset

    def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        group = self.group_offsets.get(group_id, {})
        if partitions is None:
            return list(group.values())
        return [group[p] for p in partitions if p in group]


def topic_with_configs(topic: TopicInfo, changes: Mapping[str, str | None]) -> TopicInfo:
    configs = dict(topic.configs)
    for key, value in changes.items():
        if value is None:
            configs.pop(key, None)
        else:
            configs[key] = value
    return TopicInfo(topic.name, topic.topic_id, topic.partition_count, configs)
