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

from driftlog.coordinator.api import (
    TRANSACTIONAL_ATTRIBUTE,
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    TopicInfo,
)
from driftlog.coordinator.core.producers import (
    ProducerPartitionState,
    after_marker,
    check_sequence,
    record_batch,
)
from driftlog.coordinator.core.transactions import Transaction, TxnClose, TxnEnd, TxnOpen
from driftlog.records.control import MARKER_BATCH_BYTES, MarkerKey, marker_key

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
    # Transactions this object opened in a partition (their first offsets hold the last
    # stable offset back), and, for a marker object, the transactions it ended.
    txn_opens: list[TxnOpen] | None = None
    txn_closes: list[TxnClose] | None = None


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
    transactions: list[Transaction] = field(default_factory=list)
    # Per partition, the marker offset of its newest aborted transaction (views skip the
    # aborted-transaction index for reads that start past it).
    aborted_ends: dict[PartitionKey, int] = field(default_factory=dict)


class _TopicSequence(NamedTuple):
    """What sequencing needs of a topic, found once per run of its batches."""

    # The partitions' states by partition number (the same objects as in `partitions`).
    partitions: list[PartitionSequence | None]
    # Are batches stamped with the commit time (LogAppendTime)?
    log_append: bool


class Sequencer:
    def __init__(self, snapshot: SequencerSnapshot) -> None:
        self.topics_by_id: dict[uuid.UUID, TopicInfo] = {t.topic_id: t for t in snapshot.topics}
        self.partitions = snapshot.partitions
        self.producers = snapshot.producers
        self.next_object_id = snapshot.next_object_id
        # Transactional producers by their current producer id: a transactional batch
        # is accepted only into a partition its open transaction holds (KIP-890 part 1).
        self.transactions: dict[str, Transaction] = {}
        self.by_producer: dict[int, Transaction] = {}
        for txn in snapshot.transactions:
            self.put_transaction(txn)
        # Per topic, for the hot path: a list index per batch instead of hashing a
        # (uuid, partition) key (a uuid hashes in Python).
        self._topics: dict[uuid.UUID, _TopicSequence] = {}
        for topic in snapshot.topics:
            self._index_topic(topic)

    def _index_topic(self, topic: TopicInfo) -> None:
        tid = topic.topic_id
        self._topics[tid] = _TopicSequence(
            [self.partitions.get((tid, p)) for p in range(topic.partition_count)],
            _log_append(topic),
        )

    # Topics -----------------------------------------------------------------
    def put_topic(self, topic: TopicInfo) -> None:
        self.topics_by_id[topic.topic_id] = topic
        for partition in range(topic.partition_count):
            self.partitions.setdefault((topic.topic_id, partition), PartitionSequence())
        self._index_topic(topic)

    def drop_topic(self, topic_id: uuid.UUID) -> None:
        topic = self.topics_by_id.pop(topic_id, None)
        self._topics.pop(topic_id, None)
        if topic is None:
            return
        for partition in range(topic.partition_count):
            self.partitions.pop((topic_id, partition), None)
        for key in [k for k in self.producers if k[1] == topic_id]:
            del self.producers[key]

    # Transactions -------------------------------------------------------------
    def put_transaction(self, txn: Transaction) -> None:
        old = self.transactions.get(txn.transactional_id)
        if old is not None and self.by_producer.get(old.producer_id) is old:
            del self.by_producer[old.producer_id]
        self.transactions[txn.transactional_id] = txn
        self.by_producer[txn.producer_id] = txn

    def drop_transaction(self, transactional_id: str) -> None:
        old = self.transactions.pop(transactional_id, None)
        if old is not None and self.by_producer.get(old.producer_id) is old:
            del self.by_producer[old.producer_id]

    def end_transaction(self, end: TxnEnd, coordinator_epoch: int, now_ms: int) -> SequencedObject:
        """The markers that end a transaction: one offset in each of its partitions, under
        a marker key (the fetch path builds the control batches from it). Producer states
        close their open transaction; a bumped epoch fences the old one."""
        object_id = self.next_object_id
        self.next_object_id += 1
        key = marker_key(
            MarkerKey(end.commit, end.producer_id, end.epoch, coordinator_epoch), object_id
        )
        obj = SequencedObject(object_id, key, 0, now_ms, [], [], txn_closes=[])
        closes = obj.txn_closes
        assert closes is not None
        batches: list[BatchToCommit] = []
        for topic_id, partition in sorted(end.partitions, key=lambda k: (k[0].bytes, k[1])):
            part = self.partitions.get((topic_id, partition))
            if part is None:
                continue  # the topic was deleted meanwhile: nothing to end there
            base_offset = part.next_offset
            part.next_offset = base_offset + 1
            if now_ms > part.time_index_ms:
                part.time_index_ms = now_ms
            key_ = (end.producer_id, topic_id, partition)
            state = self.producers.get(key_)
            first_offset = -1
            if state is not None:
                first_offset = state.txn_first_offset
                obj.producer_updates[key_] = self.producers[key_] = after_marker(state, end.epoch)
            location = BatchLocation(
                key, 0, MARKER_BATCH_BYTES, base_offset, base_offset, now_ms, -1
            )
            obj.rows.append(BatchRow(topic_id, partition, location, part.time_index_ms))
            obj.parts.append(part)
            obj.outcomes.append(CommitOutcome(_NONE, base_offset, -1, part.log_start_offset))
            batches.append(
                BatchToCommit(topic_id, partition, 0, MARKER_BATCH_BYTES, 1, now_ms, now_ms)
            )
            closes.append(
                TxnClose(topic_id, partition, end.producer_id, first_offset, base_offset,
                         end.commit)
            )  # fmt: skip
        obj.batches = batches
        return obj

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
        # The hot path of every commit, per batch: no helper calls, no hashing of
        # (uuid, partition) keys (an object's batches come sorted by topic, so the
        # topic is looked up once per run), named tuples built with tuple.__new__
        # (their generated __new__ is a Python function).
        rows: list[BatchRow] = []
        outcomes: list[CommitOutcome] = []
        parts: list[PartitionSequence] = []
        obj = SequencedObject(
            self.next_object_id, object_key, object_size, now_ms, rows, outcomes,
            parts=parts, batches=batches,
        )  # fmt: skip
        self.next_object_id += 1
        new = tuple.__new__
        last_topic: uuid.UUID | None = None
        topic_parts: list[PartitionSequence | None] = []
        log_append = False
        for batch in batches:
            (
                topic_id, partition, byte_offset, byte_length, record_count, _,
                max_timestamp_ms, producer_id, producer_epoch, base_sequence, attributes,
            ) = batch  # fmt: skip
            if topic_id is not last_topic:
                last_topic = topic_id
                topic = self._topics.get(topic_id)
                topic_parts, log_append = topic if topic is not None else ([], False)
            part = topic_parts[partition] if 0 <= partition < len(topic_parts) else None
            if part is None:
                # The topic was deleted (or shrunk) between upload and commit.
                outcomes.append(new(CommitOutcome, (_UNKNOWN, -1, -1, 0)))
                continue
            base_offset = part.next_offset
            if producer_id >= 0:
                key = (producer_id, topic_id, partition)
                transactional = attributes & TRANSACTIONAL_ATTRIBUTE
                if transactional:
                    error = self._verify_transactional(producer_id, producer_epoch, topic_id,
                                                       partition)  # fmt: skip
                    if error is not None:
                        outcomes.append(CommitOutcome(error))
                        continue
                previous = self.producers.get(key)
                verdict = check_sequence(previous, producer_epoch, base_sequence, record_count)
                if verdict.error != ErrorCode.none:
                    outcomes.append(CommitOutcome(verdict.error))
                    continue
                if verdict.duplicate_of >= 0:
                    # A retry of a batch already committed: its original offset, nothing
                    # stored.
                    outcomes.append(
                        CommitOutcome(
                            ErrorCode.none, verdict.duplicate_of, -1, part.log_start_offset
                        )
                    )
                    continue
                state = record_batch(
                    previous, producer_epoch, base_sequence, record_count, base_offset
                )
                if transactional and state.txn_first_offset < 0:
                    state.txn_first_offset = base_offset
                    if obj.txn_opens is None:
                        obj.txn_opens = []
                    obj.txn_opens.append(TxnOpen(topic_id, partition, producer_id, base_offset))
                self.producers[key] = state
                obj.producer_updates[key] = state
            part.next_offset = next_offset = base_offset + record_count
            if log_append:
                append_time_ms = timestamp_ms = now_ms
            else:
                append_time_ms, timestamp_ms = -1, max_timestamp_ms
            if timestamp_ms > part.time_index_ms:
                part.time_index_ms = timestamp_ms
            location = new(
                BatchLocation,
                (object_key, byte_offset, byte_length, base_offset, next_offset - 1,
                 max_timestamp_ms, append_time_ms),
            )  # fmt: skip
            rows.append(new(BatchRow, (topic_id, partition, location, part.time_index_ms)))
            parts.append(part)
            outcomes.append(
                new(CommitOutcome, (_NONE, base_offset, append_time_ms, part.log_start_offset))
            )
        return obj

    def _verify_transactional(
        self, producer_id: int, epoch: int, topic_id: uuid.UUID, partition: int
    ) -> ErrorCode | None:
        txn = self.by_producer.get(producer_id)
        if txn is not None and epoch < txn.epoch:
            return ErrorCode.invalid_producer_epoch  # a zombie of a fenced epoch
        if (
            txn is None
            or not txn.ongoing
            or epoch != txn.epoch
            or (topic_id, partition) not in txn.partitions
        ):
            return ErrorCode.invalid_txn_state
        return None

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
                end = row[2][4] + 1  # row.location.last_offset, by index: once per batch
                if end > part.high_watermark:
                    part.high_watermark = end


_NONE = ErrorCode.none
_UNKNOWN = ErrorCode.unknown_topic_or_partition


def _log_append(topic: TopicInfo) -> bool:
    return topic.configs.get("message.timestamp.type") == "LogAppendTime"
