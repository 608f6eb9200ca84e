"""The transaction state machine (coordinator/core/transactions.py) and the sequencer's part in
transactions (verification of transactional batches, open transactions, markers)."""

from __future__ import annotations

import uuid

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    TRANSACTIONAL_ATTRIBUTE,
    BatchLocation,
    BatchToCommit,
    TopicInfo,
)
from driftlog.coordinator.core import transactions as txns
from driftlog.coordinator.core.sequencer import PartitionSequence, Sequencer, SequencerSnapshot
from driftlog.coordinator.core.transactions import Transaction, TxnLimits, TxnState
from driftlog.coordinator.engines.backend import LogStart
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.records.batch import parse_header
from driftlog.records.control import MARKER_BATCH_BYTES, control_batch, parse_marker_key

LIMITS = TxnLimits(max_timeout_ms=60_000, id_expiration_ms=100_000)
TOPIC = uuid.UUID(int=7)


def init(current: Transaction | None, now: int = 1000, **kw: int) -> txns.Decision:
    return txns.init_producer_id(
        current,
        "app",
        kw.get("timeout", 10_000),
        kw.get("pid", -1),
        kw.get("epoch", -1),
        kw.get("fresh", 99),
        now,
        LIMITS,
    )


def ongoing(producer_id: int = 5, epoch: int = 3) -> Transaction:
    txn = Transaction("app", producer_id, epoch)
    decision = txns.add_to_transaction(txn, producer_id, epoch, 2000, partitions=[(TOPIC, 0)])
    assert decision.record is not None
    return decision.record


def test_a_new_transactional_id_gets_a_fresh_producer_at_epoch_0() -> None:
    decision = init(None)
    assert decision.error == ErrorCode.none
    assert decision.record == Transaction("app", 99, 0, TxnState.EMPTY, 10_000, -1, 1000)


def test_timeouts_outside_the_limit_are_refused() -> None:
    for timeout in (0, -5, 60_001):
        assert init(None, timeout=timeout).error == ErrorCode.invalid_transaction_timeout
    assert init(None, timeout=60_000).error == ErrorCode.none


def test_a_second_instance_bumps_the_epoch_and_fences_the_first() -> None:
    first = Transaction("app", 5, 3)
    decision = init(first)
    assert decision.record is not None
    assert (decision.record.producer_id, decision.record.epoch) == (5, 4)
    # The fenced instance's KIP-360 InitProducerId (its own id and epoch) is not a retry of
    # the new instance's bump: it is fenced, never handed the new epoch.
    assert init(decision.record, pid=5, epoch=3).error == ErrorCode.producer_fenced
    # The first instance's requests now carry a stale epoch.
    added = txns.add_to_transaction(decision.record, 5, 3, 2000, partitions=[(TOPIC, 0)])
    assert added.error == ErrorCode.producer_fenced
    assert txns.end_transaction(decision.record, 5, 3, True, 2000).error == (
        ErrorCode.producer_fenced
    )


def test_init_with_an_open_transaction_aborts_it_with_a_bumped_epoch_and_asks_to_retry() -> None:
    current = ongoing()
    decision = init(current, now=3000)
    assert decision.error == ErrorCode.concurrent_transactions
    assert decision.end == txns.TxnEnd("app", 5, 4, False, frozenset({(TOPIC, 0)}), frozenset())
    assert decision.record is not None and decision.record.state is TxnState.COMPLETE_ABORT
    # The retry gets an epoch above the fencing one.
    retry = init(decision.record, now=3001)
    assert retry.error == ErrorCode.none and retry.record is not None
    assert retry.record.epoch == 5 and retry.end is None


def test_kip_360_expected_epoch_bumps_retries_and_fences() -> None:
    current = Transaction("app", 5, 3, TxnState.COMPLETE_ABORT)
    bumped = init(current, pid=5, epoch=3)
    assert bumped.record is not None and bumped.record.epoch == 4
    # The same request again (its answer was lost): the current epoch, no second bump.
    again = init(bumped.record, pid=5, epoch=3)
    assert again.error == ErrorCode.none and again.record is not None
    assert again.record.epoch == 4
    # An epoch that is neither the current nor the last one is a zombie.
    assert init(bumped.record, pid=5, epoch=1).error == ErrorCode.producer_fenced
    # Another producer id entirely.
    assert init(bumped.record, pid=6, epoch=4).error == ErrorCode.producer_fenced


def test_an_exhausted_epoch_rotates_the_producer_id() -> None:
    current = Transaction("app", 5, txns.MAX_EPOCH - 1)
    decision = init(current, fresh=42, pid=5, epoch=txns.MAX_EPOCH - 1)
    assert decision.record is not None
    assert (decision.record.producer_id, decision.record.epoch) == (42, 0)
    assert (decision.record.last_producer_id, decision.record.last_epoch) == (5, txns.MAX_EPOCH - 1)
    # A new instance (no expected epoch) rotates too, and leaves no epoch to retry with.
    fresh_instance = init(current, fresh=44)
    assert fresh_instance.record is not None and fresh_instance.record.last_epoch == -1
    # A retry with the old id (its answer was lost) gets the rotated id again.
    retry = init(decision.record, pid=5, epoch=txns.MAX_EPOCH - 1, fresh=43)
    assert retry.record is not None and retry.record.producer_id == 42


def test_add_partitions_opens_the_transaction_and_checks_the_producer() -> None:
    empty = Transaction("app", 5, 3)
    assert txns.add_to_transaction(None, 5, 3, 1).error == ErrorCode.invalid_producer_id_mapping
    assert txns.add_to_transaction(empty, 6, 3, 1).error == ErrorCode.invalid_producer_id_mapping
    assert txns.add_to_transaction(empty, 5, 2, 1).error == ErrorCode.producer_fenced
    opened = txns.add_to_transaction(empty, 5, 3, 1000, partitions=[(TOPIC, 0)]).record
    assert opened is not None and opened.ongoing and opened.start_ms == 1000
    # Adding what is there already changes nothing; more partitions and groups are added.
    assert txns.add_to_transaction(opened, 5, 3, 1500, partitions=[(TOPIC, 0)]) == txns.NOTHING
    more = txns.add_to_transaction(opened, 5, 3, 1500, partitions=[(TOPIC, 1)], groups=["g"])
    assert more.record is not None
    assert more.record.partitions == {(TOPIC, 0), (TOPIC, 1)} and more.record.groups == {"g"}
    assert more.record.start_ms == 1000


def test_end_transaction_per_state_and_retries() -> None:
    current = ongoing()
    committed = txns.end_transaction(current, 5, 3, True, 3000)
    assert committed.end is not None and committed.end.commit and committed.end.epoch == 3
    done = committed.record
    assert done is not None and done.state is TxnState.COMPLETE_COMMIT and not done.partitions
    # A retried commit is answered NONE without ending anything again; an abort is wrong.
    assert txns.end_transaction(done, 5, 3, True, 3001) == txns.NOTHING
    assert txns.end_transaction(done, 5, 3, False, 3001).error == ErrorCode.invalid_txn_state
    aborted = txns.end_transaction(ongoing(), 5, 3, False, 3000).record
    assert aborted is not None
    assert txns.end_transaction(aborted, 5, 3, False, 3001) == txns.NOTHING
    assert txns.end_transaction(aborted, 5, 3, True, 3001).error == ErrorCode.invalid_txn_state
    empty = Transaction("app", 5, 3)
    assert txns.end_transaction(empty, 5, 3, True, 1).error == ErrorCode.invalid_txn_state


def test_a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() -> None:
    current = ongoing()  # started at 2000, timeout 60 s
    assert txns.expire(current, 2000 + 60_000) == txns.NOTHING
    decision = txns.expire(current, 2000 + 60_001)
    assert decision.end is not None and not decision.end.commit and decision.end.epoch == 4
    assert decision.record is not None and decision.record.epoch == 4
    assert decision.record.state is TxnState.COMPLETE_ABORT
    assert txns.end_transaction(decision.record, 5, 3, True, 70_000).error == (
        ErrorCode.producer_fenced
    )


def test_idle_transactional_ids_expire_but_open_ones_do_not() -> None:
    idle = Transaction("app", 5, 3, updated_ms=1000)
    assert not txns.id_expired(idle, 101_000, LIMITS)
    assert txns.id_expired(idle, 101_001, LIMITS)
    assert not txns.id_expired(ongoing(), 10**9, LIMITS)


def test_offset_commits_need_the_group_in_the_transaction() -> None:
    current = ongoing()
    assert txns.check_offset_commit(current, 5, 3, "g") == ErrorCode.invalid_txn_state
    with_group = txns.add_to_transaction(current, 5, 3, 2500, groups=["g"]).record
    assert txns.check_offset_commit(with_group, 5, 3, "g") == ErrorCode.none
    assert txns.check_offset_commit(with_group, 5, 2, "g") == ErrorCode.producer_fenced


def test_producer_fenced_becomes_invalid_producer_epoch_for_old_versions() -> None:
    fenced = ErrorCode.producer_fenced
    assert txns.error_for_version(fenced, 22, 3) == ErrorCode.invalid_producer_epoch
    assert txns.error_for_version(fenced, 22, 4) == fenced
    assert txns.error_for_version(fenced, 26, 1) == ErrorCode.invalid_producer_epoch
    assert txns.error_for_version(fenced, 26, 2) == fenced
    assert txns.error_for_version(fenced, 28, 3) == ErrorCode.invalid_producer_epoch
    assert txns.error_for_version(ErrorCode.none, 22, 0) == ErrorCode.none


# The sequencer's part ------------------------------------------------------------------


def _sequencer(txn: Transaction | None = None) -> Sequencer:
    topic = TopicInfo("t", TOPIC, 2)
    partitions = {(TOPIC, p): PartitionSequence() for p in range(2)}
    return Sequencer(SequencerSnapshot([topic], partitions, {}, 1, [txn] if txn else []))


def _txn_batch(partition: int, sequence: int, epoch: int = 3, count: int = 2) -> BatchToCommit:
    return BatchToCommit(TOPIC, partition, 0, 100, count, 1, 1, 5, epoch, sequence,
                         TRANSACTIONAL_ATTRIBUTE)  # fmt: skip


def test_transactional_batches_only_for_partitions_in_the_open_transaction() -> None:
    sequencer = _sequencer(ongoing())
    obj = sequencer.sequence("o1", 100, [_txn_batch(0, 0), _txn_batch(1, 0)], 5000)
    # Partition 0 is in the transaction; partition 1 is not (KIP-890 part 1).
    assert [o.error for o in obj.outcomes] == [ErrorCode.none, ErrorCode.invalid_txn_state]
    assert obj.txn_opens == [txns.TxnOpen(TOPIC, 0, 5, 0)]
    # A zombie of an older epoch is refused as such.
    zombie = sequencer.sequence("o2", 100, [_txn_batch(0, 0, epoch=2)], 5000)
    assert zombie.outcomes[0].error == ErrorCode.invalid_producer_epoch
    # The next batch of the same transaction does not open it again.
    more = sequencer.sequence("o3", 100, [_txn_batch(0, 2)], 5000)
    assert more.outcomes[0].error == ErrorCode.none and more.txn_opens is None
    # Without any transaction the producer's transactional batches are refused.
    assert _sequencer().sequence("o", 1, [_txn_batch(0, 0)], 1).outcomes[0].error == (
        ErrorCode.invalid_txn_state
    )


def test_markers_take_an_offset_in_each_partition_and_close_the_transaction() -> None:
    txn = txns.add_to_transaction(ongoing(), 5, 3, 2100, partitions=[(TOPIC, 1)]).record
    assert txn is not None
    sequencer = _sequencer(txn)
    sequencer.sequence("o1", 100, [_txn_batch(0, 0)], 5000)  # offsets 0-1 on partition 0
    end = txns.end_transaction(txn, 5, 3, False, 6000).end
    assert end is not None
    markers = sequencer.end_transaction(end, coordinator_epoch=9, now_ms=6000)
    assert [(r.partition, r.location.base_offset) for r in markers.rows] == [(0, 2), (1, 0)]
    assert markers.txn_closes == [
        txns.TxnClose(TOPIC, 0, 5, 0, 2, False),
        txns.TxnClose(TOPIC, 1, 5, -1, 0, False),
    ]
    assert sequencer.producers[(5, TOPIC, 0)].txn_first_offset == -1
    # The marker's bytes, built from its coordinates, are a valid control batch.
    location = markers.rows[0].location
    assert location.byte_length == MARKER_BATCH_BYTES
    data = control_batch(parse_marker_key(location.object_key), 2, 6000)
    header = parse_header(data)
    assert header.is_control and header.is_transactional
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (5, 3, -1)
    # The record: length 16, no attributes or deltas, key (version 0, type 0: abort),
    # value (version 0, coordinator epoch 9), no headers.
    assert data[-17:] == bytes.fromhex("20 000000 08 0000 0000 0c 0000 00000009 00")


def test_a_fencing_marker_makes_the_producer_start_its_sequence_again() -> None:
    sequencer = _sequencer(ongoing())
    sequencer.sequence("o1", 100, [_txn_batch(0, 0)], 5000)
    fencing = txns.expire(ongoing(), 10**9)
    assert fencing.end is not None
    sequencer.end_transaction(fencing.end, 1, 10**9)
    state = sequencer.producers[(5, TOPIC, 0)]
    assert state.epoch == 4 and not state.batches and state.txn_first_offset == -1


# The view's last stable offset ------------------------------------------------------


def _view() -> CoordinatorView:
    view = CoordinatorView(MemoryBackend(MemoryDatabase()))
    view.on_topic_put(TopicInfo("t", TOPIC, 1))
    return view


def _batch_row(base: int, count: int) -> tuple[uuid.UUID, int, BatchLocation]:
    return (TOPIC, 0, BatchLocation("objects/x", 0, 10, base, base + count - 1, 1, -1))


def test_a_late_close_does_not_end_the_producers_next_transaction() -> None:
    """After a resync the producer's next transaction may be open already when the
    stream delivers the previous one's marker: that close must leave it open."""
    view = _view()
    view.on_remote_applied([_batch_row(0, 3)])
    view.on_txn_opens([txns.TxnOpen(TOPIC, 0, 5, 3)])  # the next transaction, from 3
    view.on_remote_applied([_batch_row(3, 2)])
    assert view.last_stable_offset(TOPIC, 0) == 3
    view.on_txn_closes([txns.TxnClose(TOPIC, 0, 5, 0, 2, True)])  # the earlier one's marker
    assert view.last_stable_offset(TOPIC, 0) == 3
    view.on_txn_closes([txns.TxnClose(TOPIC, 0, 5, 3, 5, True)])
    assert view.last_stable_offset(TOPIC, 0) == 5


def test_the_last_stable_offset_never_falls_below_the_log_start() -> None:
    view = _view()
    view.on_txn_opens([txns.TxnOpen(TOPIC, 0, 5, 0)])
    view.on_remote_applied([_batch_row(0, 6)])
    assert view.last_stable_offset(TOPIC, 0) == 0
    view.on_log_starts([LogStart(TOPIC, 0, 4)])  # DeleteRecords past the open data
    assert view.last_stable_offset(TOPIC, 0) == 4
