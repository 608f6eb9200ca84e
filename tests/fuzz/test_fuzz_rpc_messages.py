"""The writer RPC's binary frames (`coordinator/runtime/rpc_messages.py`): round trips, and
mutated or random bodies never raise anything but `ProtocolError`.

No network. Fixed seed (`fuzzlib.SEED`), no example database.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

from fuzz.fuzzlib import SEED, mutate, mutations
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import BatchLocation, BatchToCommit, CommitOutcome, CommitRequest
from driftlog.coordinator.core.sequencer import SequencedObject
from driftlog.coordinator.engines.backend import decode_outcomes, encode_outcomes, outcomes_json
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.rpc_messages import ProtocolError

SCALE = float(os.environ.get("DRIFTLOG_FUZZ_SCALE", "1"))

TOPICS = [uuid.UUID(int=n * 0x1234567890ABCDEF) for n in range(1, 4)]
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


def fuzz(examples: int) -> settings:
    return settings(
        database=None,
        deadline=None,
        max_examples=max(1, int(examples * SCALE)),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


batches_strategy = st.builds(
    BatchToCommit,
    st.sampled_from(TOPICS),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**31 - 1),
    st.integers(1, 2**31 - 1),
    INT64,
    INT64,
    INT64,
    st.integers(-(2**15), 2**15 - 1),
    INT32,
    st.integers(-(2**15), 2**15 - 1),  # attributes
)
requests_strategy = st.builds(
    CommitRequest,
    st.text(max_size=40).filter(lambda k: "\x00" not in k),
    INT64,
    st.lists(batches_strategy, max_size=12).map(lambda bs: sorted(bs, key=lambda b: b[0])),
    st.booleans(),
)


@fuzz(150)
@seed(SEED)
@given(st.integers(-(2**63), 2**63 - 1), requests_strategy)
def test_commit_round_trip(request_id: int, request: CommitRequest) -> None:
    frame = messages.encode_commit(request_id, request)
    assert messages.LENGTH.unpack_from(frame)[0] == len(frame) - 4
    got_id, got, raw = messages.decode_commit(frame[4:])
    assert got_id == request_id
    assert got == CommitRequest(
        request.object_key, request.object_size, list(request.batches), request.retry
    )
    assert raw == messages.encode_batches(request.batches)


def _check_decoded(request: CommitRequest) -> None:
    for b in request.batches:
        assert isinstance(b, BatchToCommit)
        assert b.partition >= 0 and b.byte_offset >= 0 and b.byte_length >= 0
        assert b.record_count >= 1
        assert isinstance(b.topic_id, uuid.UUID)


@fuzz(300)
@seed(SEED)
@given(requests_strategy, mutations(protect=1))
def test_mutated_commits_decode_or_raise_protocol_error(
    request: CommitRequest, edits: list[Any]
) -> None:
    body = mutate(messages.encode_commit(1, request)[4:], edits)
    try:
        _, decoded, _ = messages.decode_commit(body)
    except ProtocolError:
        return
    _check_decoded(decoded)


@fuzz(200)
@seed(SEED)
@given(st.binary(max_size=300))
def test_random_bodies_decode_or_raise_protocol_error(body: bytes) -> None:
    for candidate in (body, b"\x01" + body, b"\x02" + body):
        try:
            _, decoded, _ = messages.decode_commit(candidate)
            _check_decoded(decoded)
        except ProtocolError:
            pass
        with contextlib.suppress(ProtocolError):
            messages.decode_applied(candidate)


def test_batch_counts_are_checked_against_the_bytes() -> None:
    request = CommitRequest("k", 1, [BatchToCommit(TOPICS[0], 0, 0, 10, 1, 0, 0)])
    body = messages.encode_commit(1, request)[4:]
    key_end = len(body) - len(messages.encode_batches(request.batches))
    # A huge batch count, a huge topic count, a topic index out of range: refused.
    for at, value in (
        (key_end + 4 + 16, b"\xff\xff\xff\xff"),
        (key_end, b"\xff\xff\xff\xff"),
        (key_end + 4 + 16 + 4, b"\x00\x00\x00\x05"),
    ):
        bad = body[:at] + value + body[at + 4 :]
        try:
            messages.decode_commit(bad)
        except ProtocolError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def _sequenced(key: str, batches: list[BatchToCommit], base: int) -> SequencedObject:
    outcomes = []
    for n, b in enumerate(batches):
        error = 47 if n % 5 == 4 else 0  # some refused (e.g. INVALID_PRODUCER_EPOCH)
        outcomes.append(CommitOutcome(error, -1 if error else base, -1, 0))  # type: ignore[arg-type]
        base += b.record_count
    return SequencedObject(0, key, 0, 0, [], outcomes, batches=batches)


@fuzz(100)
@seed(SEED)
@given(
    st.lists(st.tuples(st.text(max_size=20), st.lists(batches_strategy, max_size=8)), max_size=4)
)
def test_applied_round_trip(objects: list[tuple[str, list[BatchToCommit]]]) -> None:
    sequenced = [  # keys are unique
        _sequenced(f"{key}/{n}", batches, 100 * n) for n, (key, batches) in enumerate(objects)
    ]
    # Half as the agent sent them (kept raw), half encoded by the writer.
    raw = {o.object_key: messages.encode_batches(o.batches) for o in sequenced[::2] if o.batches}
    frame = messages.applied_frame(sequenced, raw)
    assert messages.LENGTH.unpack_from(frame)[0] == len(frame) - 4
    expected = [
        (
            b.topic_id,
            b.partition,
            BatchLocation(
                o.object_key,
                b.byte_offset,
                b.byte_length,
                outcome.base_offset,
                outcome.base_offset + b.record_count - 1,
                b.max_timestamp_ms,
                outcome.log_append_time_ms,
            ),
        )
        for o in sequenced
        for b, outcome in zip(o.batches, o.outcomes, strict=True)
        if not outcome.error
    ]
    assert messages.decode_applied(frame[4:]) == expected


@fuzz(200)
@seed(SEED)
@given(
    st.lists(st.tuples(st.text(max_size=8), st.lists(batches_strategy, max_size=4)), max_size=3),
    mutations(protect=1),
)
def test_mutated_applied_events_decode_or_raise_protocol_error(
    objects: list[tuple[str, list[BatchToCommit]]], edits: list[Any]
) -> None:
    sequenced = [_sequenced(key, batches, 0) for key, batches in objects]
    body = mutate(messages.applied_frame(sequenced, {})[4:], edits)
    try:
        decoded = messages.decode_applied(body)
    except ProtocolError:
        return
    for topic_id, partition, location in decoded:
        assert isinstance(topic_id, uuid.UUID) and partition >= 0
        assert isinstance(location, BatchLocation)


def test_outcomes_that_are_not_arrays_are_a_protocol_error() -> None:
    obj = _sequenced("k", [BatchToCommit(TOPICS[0], 0, 0, 10, 1, 0, 0)], 0)
    for outcomes in ('{"a":1}', "[1]", '[["x",1,2,3]]', "[[0,1,2]]", "nope"):
        obj.outcomes_json = outcomes
        body = messages.applied_frame([obj], {})[4:]
        try:
            decoded = messages.decode_applied(body)
        except ProtocolError:
            continue
        # A string error code is truthy: the batch is skipped, nothing is built from it.
        assert decoded == [] and json.loads(outcomes)[0][0] == "x"


@fuzz(100)
@seed(SEED)
@given(
    st.lists(
        st.builds(
            CommitOutcome,
            st.sampled_from(list(ErrorCode)),
            INT64,
            INT64,
            INT64,
        ),
        max_size=20,
    )
)
def test_outcomes_json_is_the_encoders(outcomes: list[CommitOutcome]) -> None:
    obj = SequencedObject(0, "k", 0, 0, [], outcomes)
    assert outcomes_json(obj) == encode_outcomes(outcomes)
    assert decode_outcomes(outcomes_json(obj)) == outcomes
