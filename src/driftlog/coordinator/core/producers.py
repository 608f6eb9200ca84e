"""Idempotent-producer state per (producer id, partition): epochs and sequence checks. Pure.

Kafka's rules (KIP-98, KIP-360), applied inside the coordinator's commit so
they hold across agents and restarts:

- A batch from a newer epoch starts that epoch; its first sequence must be 0.
- A batch from an older epoch is fenced: INVALID_PRODUCER_EPOCH.
- Within an epoch, a batch equal to one of the last five batches (same first and
  last sequence) is a duplicate: it is acknowledged with its original offset
  and not stored again. Any other batch must continue the sequence exactly
  (sequences wrap at 2^31 - 1), or it is OUT_OF_ORDER_SEQUENCE_NUMBER.
- A producer with no state for the partition must start at sequence 0.
  Kafka 2.5+ accepts any first sequence because its state can expire; here it
  never expires, and accepting a later sequence first would let a batch
  overtake an earlier one whose object failed to upload (the client retries
  OUT_OF_ORDER_SEQUENCE_NUMBER while an earlier batch is unacknowledged).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

CACHED_BATCHES = 5  # Kafka keeps the last five batches per producer and partition.
MAX_SEQUENCE = 2**31 - 1


def next_sequence(last_sequence: int) -> int:
    return 0 if last_sequence == MAX_SEQUENCE else last_sequence + 1


def last_sequence_of(base_sequence: int, record_count: int) -> int:
    return (base_sequence + record_count - 1) % (MAX_SEQUENCE + 1)


@dataclass(frozen=True, slots=True)
class CachedBatch:
    first_sequence: int
    last_sequence: int
    base_offset: int


@dataclass(slots=True)
class ProducerPartitionState:
    epoch: int
    batches: collections.deque[CachedBatch] = field(
        default_factory=lambda: collections.deque(maxlen=CACHED_BATCHES)
    )
    # The first offset of the producer's open transaction in this partition, or -1:
    # the last stable offset cannot pass it until the transaction's marker is written.
    txn_first_offset: int = -1

    def copy(self) -> ProducerPartitionState:
        return ProducerPartitionState(
            self.epoch, collections.deque(self.batches, CACHED_BATCHES), self.txn_first_offset
        )


@dataclass(frozen=True, slots=True)
class SequenceVerdict:
    """ACCEPT (error none, duplicate_of -1), a duplicate's original offset, or an error."""

    error: ErrorCode
    duplicate_of: int = -1


ACCEPT = SequenceVerdict(ErrorCode.none)


def check_sequence(
    state: ProducerPartitionState | None, epoch: int, first_sequence: int, record_count: int
) -> SequenceVerdict:
    if state is None:
        return (
            ACCEPT
            if first_sequence == 0
            else SequenceVerdict(ErrorCode.out_of_order_sequence_number)
        )
    if epoch < state.epoch:
        return SequenceVerdict(ErrorCode.invalid_producer_epoch)
    if epoch > state.epoch or not state.batches:
        # A new epoch (or one a transaction marker bumped) starts at sequence 0.
        return (
            ACCEPT
            if first_sequence == 0
            else SequenceVerdict(ErrorCode.out_of_order_sequence_number)
        )
    last = last_sequence_of(first_sequence, record_count)
    for cached in state.batches:
        if cached.first_sequence == first_sequence and cached.last_sequence == last:
            return SequenceVerdict(ErrorCode.none, duplicate_of=cached.base_offset)
    if state.batches and first_sequence != next_sequence(state.batches[-1].last_sequence):
        return SequenceVerdict(ErrorCode.out_of_order_sequence_number)
    return ACCEPT


def record_batch(
    state: ProducerPartitionState | None,
    epoch: int,
    first_sequence: int,
    record_count: int,
    base_offset: int,
) -> ProducerPartitionState:
    """The state after an accepted batch (a new object; the old one is left untouched)."""
    updated = (
        ProducerPartitionState(epoch) if state is None or epoch != state.epoch else state.copy()
    )
    updated.batches.append(
        CachedBatch(first_sequence, last_sequence_of(first_sequence, record_count), base_offset)
    )
    return updated


def after_marker(state: ProducerPartitionState, epoch: int) -> ProducerPartitionState:
    """The state after a transaction marker of `epoch`: no transaction open; a bumped
    epoch (the coordinator fenced the producer) forgets the old epoch's batches, so a
    zombie of the old epoch is refused and the producer starts again at sequence 0."""
    if epoch > state.epoch:
        return ProducerPartitionState(epoch)
    updated = state.copy()
    updated.txn_first_offset = -1
    return updated
