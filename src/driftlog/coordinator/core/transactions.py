"""Transactions (KIP-98) as the coordinator keeps them: one state machine per
transactional id. Pure: no I/O, no clock reads (every call takes `now_ms`).

Kafka's transaction coordinator keeps these states in its log and writes the
commit or abort markers in a second step (PrepareCommit, then markers, then
CompleteCommit), because its markers go to other brokers. Here the writer
assigns the markers' offsets itself, so ending a transaction is one database
transaction: the markers, the new state, the aborted-transaction index and the
transaction's group offsets commit together or not at all. There is no
Prepare* state to recover after a writer failover: a transaction is either
still Ongoing (the client's EndTxn is retried and ends it) or complete.

The rules are Kafka's (TransactionCoordinator, TransactionMetadata; KIP-360
for epoch bumps by InitProducerId, KIP-890 part 1 for verifying that a
partition is in the transaction before its data is accepted):

- InitProducerId: a new transactional id gets a fresh producer id at epoch 0;
  an existing one has its epoch bumped (which fences an older instance of the
  producer). If a transaction is open it is aborted first, with a bumped epoch,
  and the caller gets CONCURRENT_TRANSACTIONS and retries. A request carrying
  the producer's current id and epoch (KIP-360) must match: the current epoch
  is bumped; the previous epoch (a retry whose answer was lost) gets the
  current one again; anything else is PRODUCER_FENCED. When the epoch is
  exhausted the id is rotated.
- AddPartitionsToTxn / AddOffsetsToTxn open the transaction (Ongoing) and add
  to it; the producer id must match (INVALID_PRODUCER_ID_MAPPING) and the epoch
  too (PRODUCER_FENCED).
- EndTxn ends an Ongoing transaction; a retry after it completed with the same
  outcome answers NONE, the other outcome INVALID_TXN_STATE.
- A transaction open longer than its timeout is aborted with a bumped epoch,
  so its producer is fenced. A transactional id idle for
  `transactional.id.expiration.ms` is forgotten.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from kio.schema.errors import ErrorCode

PartitionKey = tuple[uuid.UUID, int]

# Kafka's producer epochs are int16; an epoch this high cannot be bumped twice more.
MAX_EPOCH = 32767
# Kafka's defaults: transaction.max.timeout.ms, transactional.id.expiration.ms.
DEFAULT_MAX_TIMEOUT_MS = 900_000
DEFAULT_ID_EXPIRATION_MS = 604_800_000
# Longest transactional id accepted (the wire allows 32 KiB; Kafka has no lower cap,
# but an id is a primary key here).
MAX_TRANSACTIONAL_ID_BYTES = 4096


class TxnState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"


@dataclass(frozen=True, slots=True)
class Transaction:
    """One transactional id's state, as stored (a row of `transactions`)."""

    transactional_id: str
    producer_id: int
    epoch: int
    state: TxnState = TxnState.EMPTY
    timeout_ms: int = 60_000
    # When the open transaction started (-1 unless Ongoing) and when the state last changed.
    start_ms: int = -1
    updated_ms: int = 0
    partitions: frozenset[PartitionKey] = frozenset()
    groups: frozenset[str] = frozenset()
    # The id and epoch before the last bump (KIP-360: a retried InitProducerId whose
    # answer was lost carries them, and gets the current ones again).
    last_producer_id: int = -1
    last_epoch: int = -1

    @property
    def ongoing(self) -> bool:
        return self.state is TxnState.ONGOING


@dataclass(frozen=True, slots=True)
class TxnEnd:
    """A transaction to end: markers for its partitions, its group offsets settled."""

    transactional_id: str
    producer_id: int
    # The markers' epoch: the transaction's, or one more when the coordinator aborts
    # it (a timeout, a new producer instance) and so fences the producer.
    epoch: int
    commit: bool
    partitions: frozenset[PartitionKey]
    groups: frozenset[str]


class TxnOpen(NamedTuple):
    """A producer's transaction took its first offset in a partition: the last stable
    offset stays at or below it until the transaction's marker is written."""

    topic_id: uuid.UUID
    partition: int
    producer_id: int
    first_offset: int


class TxnClose(NamedTuple):
    """A transaction's marker in one partition (`first_offset` -1: it wrote nothing there)."""

    topic_id: uuid.UUID
    partition: int
    producer_id: int
    first_offset: int
    marker_offset: int
    commit: bool


class AbortedTxn(NamedTuple):
    """An aborted transaction's range in a partition (Kafka's aborted-transaction index):
    read_committed consumers skip the producer's batches from `first_offset` until its
    abort marker at `last_offset`."""

    producer_id: int
    first_offset: int
    last_offset: int


@dataclass(frozen=True, slots=True)
class PendingOffset:
    """An offset committed in a transaction (TxnOffsetCommit): visible to the group only
    once the transaction commits."""

    producer_id: int
    group_id: str
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """What a request does: its error, the state to store (None: unchanged) and the
    transaction to end with it (markers written in the same database transaction)."""

    error: ErrorCode
    record: Transaction | None = None
    end: TxnEnd | None = None


NOTHING = Decision(ErrorCode.none)


@dataclass(frozen=True, slots=True)
class TxnLimits:
    max_timeout_ms: int = DEFAULT_MAX_TIMEOUT_MS
    id_expiration_ms: int = DEFAULT_ID_EXPIRATION_MS


def epoch_exhausted(epoch: int) -> bool:
    # Kafka keeps one bump in reserve so that a fencing abort can always bump once more.
    return epoch >= MAX_EPOCH - 1


def init_producer_id(
    current: Transaction | None,
    transactional_id: str,
    timeout_ms: int,
    expected_producer_id: int,
    expected_epoch: int,
    new_producer_id: int,
    now_ms: int,
    limits: TxnLimits,
) -> Decision:
    """InitProducerId with a transactional id. `new_producer_id` is a fresh id the
    caller allocated, used if this call needs one (unused ids are harmless)."""
    if not transactional_id or len(transactional_id.encode()) > MAX_TRANSACTIONAL_ID_BYTES:
        return Decision(ErrorCode.invalid_request)
    if not 0 < timeout_ms <= limits.max_timeout_ms:
        return Decision(ErrorCode.invalid_transaction_timeout)
    if current is None:
        return Decision(
            ErrorCode.none,
            Transaction(transactional_id, new_producer_id, 0, TxnState.EMPTY, timeout_ms,
                        -1, now_ms),
        )  # fmt: skip
    if expected_producer_id >= 0 and not (
        expected_producer_id == current.producer_id
        or (expected_producer_id == current.last_producer_id and epoch_exhausted(expected_epoch))
    ):
        return Decision(ErrorCode.producer_fenced)
    if current.ongoing:
        # Another instance (or this one after an error) starts over: abort what is open,
        # with a bumped epoch that fences the old instance, and let the caller retry.
        decision = _abort_fencing(current, now_ms)
        return Decision(ErrorCode.concurrent_transactions, decision.record, decision.end)
    if expected_producer_id >= 0 and expected_producer_id != current.producer_id:
        # A retry of a rotation whose answer was lost: the rotated id again.
        return Decision(ErrorCode.none, dataclasses.replace(current, updated_ms=now_ms))
    # Only a KIP-360 request (it names the epoch it had) records the epoch it leaves: its
    # retry may come back with it. A new instance's bump records none, so the instance it
    # fenced can never pass for a retry and be handed the new epoch (Kafka does the same).
    left_epoch = current.epoch if expected_epoch >= 0 else -1
    if epoch_exhausted(current.epoch) and expected_epoch in (-1, current.epoch):
        rotated = Transaction(
            transactional_id, new_producer_id, 0, TxnState.EMPTY, timeout_ms, -1, now_ms,
            last_producer_id=current.producer_id, last_epoch=left_epoch,
        )  # fmt: skip
        return Decision(ErrorCode.none, rotated)
    if expected_epoch in (-1, current.epoch):
        bumped = dataclasses.replace(
            current,
            epoch=current.epoch + 1,
            state=TxnState.EMPTY,
            timeout_ms=timeout_ms,
            start_ms=-1,
            updated_ms=now_ms,
            partitions=frozenset(),
            groups=frozenset(),
            last_producer_id=current.producer_id,
            last_epoch=left_epoch,
        )
        return Decision(ErrorCode.none, bumped)
    if expected_epoch == current.last_epoch and current.last_producer_id == current.producer_id:
        # A retry of the last bump whose answer was lost.
        return Decision(ErrorCode.none, dataclasses.replace(current, updated_ms=now_ms))
    return Decision(ErrorCode.producer_fenced)


def _check_producer(current: Transaction | None, producer_id: int, epoch: int) -> ErrorCode | None:
    if current is None or current.producer_id != producer_id:
        return ErrorCode.invalid_producer_id_mapping
    if current.epoch != epoch:
        return ErrorCode.producer_fenced
    return None


def add_to_transaction(
    current: Transaction | None,
    producer_id: int,
    epoch: int,
    now_ms: int,
    *,
    partitions: Iterable[PartitionKey] = (),
    groups: Iterable[str] = (),
) -> Decision:
    """AddPartitionsToTxn (partitions) and AddOffsetsToTxn (groups): open the
    transaction if needed and add to it."""
    error = _check_producer(current, producer_id, epoch)
    if error is not None:
        return Decision(error)
    assert current is not None
    new_partitions = frozenset(partitions)
    new_groups = frozenset(groups)
    if current.ongoing:
        if new_partitions <= current.partitions and new_groups <= current.groups:
            return NOTHING
        return Decision(
            ErrorCode.none,
            dataclasses.replace(
                current,
                partitions=current.partitions | new_partitions,
                groups=current.groups | new_groups,
                updated_ms=now_ms,
            ),
        )
    return Decision(
        ErrorCode.none,
        dataclasses.replace(
            current,
            state=TxnState.ONGOING,
            start_ms=now_ms,
            updated_ms=now_ms,
            partitions=new_partitions,
            groups=new_groups,
        ),
    )


def check_offset_commit(
    current: Transaction | None, producer_id: int, epoch: int, group_id: str
) -> ErrorCode:
    """TxnOffsetCommit: the producer must be the transaction's, and the group in it."""
    error = _check_producer(current, producer_id, epoch)
    if error is not None:
        return error
    assert current is not None
    if not current.ongoing or group_id not in current.groups:
        return ErrorCode.invalid_txn_state
    return ErrorCode.none


def end_transaction(
    current: Transaction | None, producer_id: int, epoch: int, commit: bool, now_ms: int
) -> Decision:
    """EndTxn: commit or abort the open transaction."""
    error = _check_producer(current, producer_id, epoch)
    if error is not None:
        return Decision(error)
    assert current is not None
    if current.state is TxnState.COMPLETE_COMMIT:
        return NOTHING if commit else Decision(ErrorCode.invalid_txn_state)
    if current.state is TxnState.COMPLETE_ABORT:
        return Decision(ErrorCode.invalid_txn_state) if commit else NOTHING
    if not current.ongoing:
        return Decision(ErrorCode.invalid_txn_state)
    return _complete(current, current.epoch, commit, now_ms)


def _complete(current: Transaction, epoch: int, commit: bool, now_ms: int) -> Decision:
    end = TxnEnd(
        current.transactional_id, current.producer_id, epoch, commit, current.partitions,
        current.groups,
    )  # fmt: skip
    bumped = epoch != current.epoch
    record = dataclasses.replace(
        current,
        epoch=epoch,
        state=TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT,
        start_ms=-1,
        updated_ms=now_ms,
        partitions=frozenset(),
        groups=frozenset(),
        # A fencing bump (Kafka's prepareFenceProducerEpoch) leaves no previous epoch to
        # retry with: the fenced instance's InitProducerId is PRODUCER_FENCED.
        last_epoch=-1 if bumped else current.last_epoch,
    )
    return Decision(ErrorCode.none, record, end)


def _abort_fencing(current: Transaction, now_ms: int) -> Decision:
    """Abort the open transaction with a bumped epoch (unless exhausted): the producer
    that opened it is fenced, as Kafka's coordinator does on a timeout or a new instance."""
    epoch = current.epoch if epoch_exhausted(current.epoch) else current.epoch + 1
    return _complete(current, epoch, False, now_ms)


def timed_out(current: Transaction, now_ms: int) -> bool:
    return current.ongoing and now_ms - current.start_ms > current.timeout_ms


def expire(current: Transaction, now_ms: int) -> Decision:
    """The timeout abort of an open transaction past its timeout (fencing its producer)."""
    if not timed_out(current, now_ms):
        return NOTHING
    return _abort_fencing(current, now_ms)


def id_expired(current: Transaction, now_ms: int, limits: TxnLimits) -> bool:
    """An idle transactional id past `transactional.id.expiration.ms` is forgotten."""
    return not current.ongoing and now_ms - current.updated_ms > limits.id_expiration_ms


# Errors by request version: Kafka answers PRODUCER_FENCED only to clients that know it
# (KIP-588); older versions get INVALID_PRODUCER_EPOCH, which they treat as fenced.
PRODUCER_FENCED_SINCE: dict[int, int] = {
    22: 4,  # InitProducerId
    24: 2,  # AddPartitionsToTxn
    25: 2,  # AddOffsetsToTxn
    26: 2,  # EndTxn
    # TxnOffsetCommit: Kafka's group coordinator answers a stale epoch with
    # INVALID_PRODUCER_EPOCH at every version (it never says PRODUCER_FENCED).
    28: 1 << 15,
}


def error_for_version(error: ErrorCode, api_key: int, version: int) -> ErrorCode:
    if error == ErrorCode.producer_fenced and version < PRODUCER_FENCED_SINCE.get(api_key, 0):
        return ErrorCode.invalid_producer_epoch
    return error
