"""Idempotent-producer sequence rules."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from driftlog.coordinator.core.producers import (
    MAX_SEQUENCE,
    check_sequence,
    record_batch,
)


def test_sequence_rules() -> None:
    assert check_sequence(None, 0, 0, 3).error == ErrorCode.none  # a new producer
    assert check_sequence(None, 0, 17, 3).error == ErrorCode.out_of_order_sequence_number
    state = record_batch(None, 0, 0, 3, base_offset=100)  # sequences 0-2
    assert check_sequence(state, 0, 3, 2).error == ErrorCode.none
    assert check_sequence(state, 0, 4, 2).error == ErrorCode.out_of_order_sequence_number
    duplicate = check_sequence(state, 0, 0, 3)
    assert (duplicate.error, duplicate.duplicate_of) == (ErrorCode.none, 100)
    assert check_sequence(state, 0, 0, 2).error == ErrorCode.out_of_order_sequence_number
    # A new epoch must start at 0; an old epoch is fenced.
    assert check_sequence(state, 1, 0, 1).error == ErrorCode.none
    assert check_sequence(state, 1, 3, 1).error == ErrorCode.out_of_order_sequence_number
    newer = record_batch(state, 1, 0, 1, base_offset=200)
    assert check_sequence(newer, 0, 3, 1).error == ErrorCode.invalid_producer_epoch
    assert len(newer.batches) == 1


def test_only_last_five_batches_are_remembered() -> None:
    state = None
    for i in range(7):
        state = record_batch(state, 0, i, 1, base_offset=i)
    assert state is not None
    assert check_sequence(state, 0, 2, 1).duplicate_of == 2
    assert check_sequence(state, 0, 1, 1).error == ErrorCode.out_of_order_sequence_number


def test_sequence_wraps() -> None:
    state = record_batch(None, 0, MAX_SEQUENCE - 1, 2, base_offset=0)
    assert check_sequence(state, 0, 0, 1).error == ErrorCode.none
    assert check_sequence(state, 0, MAX_SEQUENCE - 1, 2).duplicate_of == 0
