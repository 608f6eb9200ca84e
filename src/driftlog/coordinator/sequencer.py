"""The writer's in-memory sequencing state. Pure: no I/O, no clock reads.

The single writer of a shard owns this state for its partitions. It holds what
assigning offsets needs and nothing more, so a new writer loads it in time
proportional to partitions and producers, not to the length of the log:

- per partition: the log start offset, the next offset to assign, the durable
  high watermark and the running maximum of batch timestamps (the time index);
- per (producer id, partition): the idempotence state (`producers.py`);
- the next object id (object ids are the writer's: nobody else inserts objects).

Committing is two steps so that readers are never ahead of durability:

1. `sequence()` assigns offsets from each partition's `next_offset` and returns
   the rows to persist. Many objects are sequenced before one persist (group
   commit), so it works on top of earlier, not yet persisted sequences.
2. After the backend persisted them, `applied()` advances the high watermarks.

If persisting fails, the outcome is unknown (a COMMIT can fail after reaching
disk): the writer throws this state away and reloads it from the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import BatchLocation, BatchToCommit, CommitOutcome, TopicInfo
from driftlog.coordinator.producers import (
    ProducerPartitionState,
    check_sequence,
    record_batch,
)

ProducerKey = tuple[int, uuid.UUID, int]  # producer id, topic id, partition
PartitionKey = tuple[uuid.UUID, int]


class BatchRow(NamedTuple):
    """A committed batch as persisted."""

    topic_id: uuid.UUID
    partition: int
    location: BatchLocation
    # Running maximum of batch timestamps up to this batch: monotonic in offset
    # order, so "first batch at or after time T" is an index lookup (Kafka's
    # time index is monotonic the same way).
    time_index_ms: int


@dataclass(slots=True)
class SequencedObject:
    """The rows one object commit produces, before they are durable."""

    object_id: int
    object_key: str
    object_size: int
    committed_ms: int
    rows: list[BatchRow]
    outcomes: list[CommitOutcome]
    # Idempotence state after this object, to upsert with it.
    producer_updates: dict[ProducerKey, ProducerPartitionState] = field(default_factory=dict)
    # The partition of each row, so applying it needs no lookup.
    parts: list[PartitionSequence] = field(default_factory=list)
    # The batches as the agent described them (what the writer's stream forwards).
    batches: Sequence[BatchToCommit] = ()
    # The outcomes as JSON, encoded once for the database, the reply and the stream.
    outcomes_json: str = ""


@dataclass(slots=True)
class PartitionSequence:
    log_start_offset: int = 0
    high_watermark: int = 0
    next_offset: int = 0
    time_index_ms: int = -1


@dataclass(slots=True)
class SequencerSnapshot:
    """What a writer loads from the database when it takes the lease."""

    topics: list[TopicInfo]
    partitions: dict[PartitionKey, PartitionSequence]
    producers: dict[ProducerKey, ProducerPartitionState]
    next_object_id: int


class Sequencer:
    def __init__(self, snapshot: SequencerSnapshot) -> None:
        self.topics_by_id: dict[uuid.UUID, TopicInfo] = {t.topic_id: t for t in snapshot.topics}
        # Per topic: are batches stamped with the commit time (LogAppendTime)?
        self._log_append = {t.topic_id: _log_append(t) for t in snapshot.topics}
        self.partitions = snapshot.partitions
        self.producers = snapshot.producers
        self.next_object_id = snapshot.next_object_id

    # Topics -----------------------------------------------------------------
    def put_topic(self, topic: TopicInfo) -> None:
        self.topics_by_id[topic.topic_id] = topic
        self._log_append[topic.topic_id] = _log_append(topic)
        for partition in range(topic.partition_count):
            self.partitions.setdefault((topic.topic_id, partition), PartitionSequence())

    def drop_topic(self, topic_id: uuid.UUID) -> None:
        topic = self.topics_by_id.pop(topic_id, None)
        self._log_append.pop(topic_id, None)
        if topic is None:
            return
        for partition in range(topic.partition_count):
            self.partitions.pop((topic_id, partition), None)
        for key in [k for k in self.producers if k[1] == topic_id]:
            del self.producers[key]

    # Write path -------------------------------------------------------------
    def take_object_id(self) -> int:
        """An id for an object that is not a commit (the compactor's output)."""
        self.next_object_id += 1
        return self.next_object_id - 1

    def sequence(
        self,
        object_key: str,
        object_size: int,
        batches: Sequence[BatchToCommit],
        now_ms: int,
    ) -> SequencedObject:
        obj = SequencedObject(
            self.next_object_id, object_key, object_size, now_ms, [], [], batches=batches
        )
        self.next_object_id += 1
        for batch in batches:
            obj.outcomes.append(self._sequence_batch(obj, batch, now_ms))
        return obj

    def _sequence_batch(
        self, obj: SequencedObject, batch: BatchToCommit, now_ms: int
    ) -> CommitOutcome:
        # The hot path of every commit: positional tuple construction, no helpers.
        topic_id, partition = batch.topic_id, batch.partition
        part = self.partitions.get((topic_id, partition))
        log_append = self._log_append.get(topic_id)
        if part is None or log_append is None:
            # The topic was deleted (or shrunk) between upload and commit.
            return CommitOutcome(ErrorCode.unknown_topic_or_partition)
        base_offset = part.next_offset
        if batch.producer_id >= 0:
            key = (batch.producer_id, topic_id, partition)
            previous = self.producers.get(key)
            verdict = check_sequence(
                previous, batch.producer_epoch, batch.base_sequence, batch.record_count
            )
            if verdict.error != ErrorCode.none:
                return CommitOutcome(verdict.error)
            if verdict.duplicate_of >= 0:
                # A retry of a batch already committed: its original offset, nothing stored.
                return CommitOutcome(
                    ErrorCode.none, verdict.duplicate_of, -1, part.log_start_offset
                )
            state = record_batch(
                previous, batch.producer_epoch, batch.base_sequence, batch.record_count, base_offset
            )
            self.producers[key] = state
            obj.producer_updates[key] = state
        part.next_offset = next_offset = base_offset + batch.record_count
        if log_append:
            append_time_ms = timestamp_ms = now_ms
        else:
            append_time_ms, timestamp_ms = -1, batch.max_timestamp_ms
        if timestamp_ms > part.time_index_ms:
            part.time_index_ms = timestamp_ms
        location = BatchLocation(
            obj.object_key,
            batch.byte_offset,
            batch.byte_length,
            base_offset,
            next_offset - 1,
            batch.max_timestamp_ms,
            append_time_ms,
        )
        obj.rows.append(BatchRow(topic_id, partition, location, part.time_index_ms))
        obj.parts.append(part)
        return CommitOutcome(ErrorCode.none, base_offset, append_time_ms, part.log_start_offset)

    def advance_log_start(self, key: PartitionKey, offset: int) -> tuple[ErrorCode, int]:
        """Move a partition's log start forward (DeleteRecords, retention).

        -1 means the high watermark (Kafka's "delete everything"). Past the high
        watermark is OFFSET_OUT_OF_RANGE; at or before the log start changes nothing.
        Call with no round in flight: the high watermark is then the next offset.
        """
        part = self.partitions.get(key)
        if part is None:
            return ErrorCode.unknown_topic_or_partition, -1
        target = part.high_watermark if offset == -1 else offset
        if not 0 <= target <= part.high_watermark:
            return ErrorCode.offset_out_of_range, part.log_start_offset
        if target > part.log_start_offset:
            part.log_start_offset = target
        return ErrorCode.none, part.log_start_offset

    def applied(self, objects: Iterable[SequencedObject]) -> None:
        """The objects are durable: advance the high watermarks past their rows."""
        for obj in objects:
            for part, row in zip(obj.parts, obj.rows, strict=True):
                end = row.location.last_offset + 1
                if end > part.high_watermark:
                    part.high_watermark = end


def _log_append(topic: TopicInfo) -> bool:
    return topic.configs.get("message.timestamp.type") == "LogAppendTime"
