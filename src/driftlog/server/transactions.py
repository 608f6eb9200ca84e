"""Kafka's transaction APIs (KIP-98): InitProducerId with a transactional id,
AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, and the admin side
(DescribeTransactions, ListTransactions, DescribeProducers).

Translates kio entities to coordinator calls and back. Every change of
transaction state goes to the writer (`coordinator/runtime/writer.py`), which applies
the rules (`coordinator/core/transactions.py`); this module checks what only the
request can tell (known topics, group membership for TxnOffsetCommit v3) and
maps errors to what each request version's clients understand. Any agent
serves them: FindCoordinator names one, and they all reach the same writer.

With an authorizer, Kafka's checks (KafkaApis): AddPartitionsToTxn needs WRITE on the
transactional id (else every partition gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
and WRITE on each topic; TxnOffsetCommit WRITE on the transactional id, READ on the
group and READ on each topic; DescribeProducers READ on each topic;
DescribeTransactions DESCRIBE on each transactional id (and shows only the topics the
principal may DESCRIBE); ListTransactions lists only the transactional ids the
principal may DESCRIBE. AddOffsetsToTxn, EndTxn and WriteTxnMarkers are all or
nothing: server/access.py's GATES check them before they get here.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.clock import SYSTEM_CLOCK
from driftlog.coordinator.api import CoordinatorError
from driftlog.coordinator.core.transactions import (
    PendingOffset,
    Transaction,
    TxnEnd,
    TxnState,
    error_for_version,
)
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import AclOperation
from driftlog.server.access import GROUP, TOPIC, TRANSACTIONAL_ID
from driftlog.server.context import RequestContext

INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
END_TXN = 26
TXN_OFFSET_COMMIT = 28
WRITE_TXN_MARKERS = 27
DESCRIBE_PRODUCERS = 61
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66

_NO_THROTTLE = datetime.timedelta(0)
_NO_LEADER_EPOCH = -1
OFFSET_METADATA_BYTES_MAX = 4096
_TOPIC_DENIED_MESSAGE = "Topic authorization failed."  # Errors.TOPIC_AUTHORIZATION_FAILED


def _ms(value: datetime.timedelta) -> int:
    return value // datetime.timedelta(milliseconds=1)


def _unavailable(ctx: RequestContext, api_key: int, e: CoordinatorError) -> ErrorCode:
    ctx.services.log_client_error("coordinator", api_key, f"transaction request failed: {e}")
    # Retriable for every client: it looks the coordinator up again and retries.
    return ErrorCode.coordinator_not_available


async def init_transactional_producer(
    ctx: RequestContext, request: Any
) -> tuple[ErrorCode, int, int]:
    """InitProducerId with a transactional id: (error, producer id, epoch)."""
    try:
        error, producer_id, epoch = await ctx.services.coordinator.init_transactional_producer(
            request.transactional_id,
            _ms(request.transaction_timeout),
            getattr(request, "producer_id", -1),
            getattr(request, "producer_epoch", -1),
        )
    except CoordinatorError as e:
        return _unavailable(ctx, INIT_PRODUCER_ID, e), -1, -1
    return error_for_version(error, INIT_PRODUCER_ID, ctx.api_version), producer_id, epoch


async def handle_add_partitions_to_txn(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    module = response_module(ADD_PARTITIONS_TO_TXN, version)
    coordinator = ctx.services.coordinator
    access = ctx.access
    requested: list[tuple[str, int, uuid.UUID | None]] = []
    refused: dict[tuple[str, int], ErrorCode] = {}
    for topic in request.v3_and_below_topics:
        info = coordinator.topic(topic.name)
        writable = access.allows(AclOperation.WRITE, TOPIC, topic.name)
        for p in topic.partitions:
            known = info is not None and 0 <= p < info.partition_count
            if not writable:
                refused[(topic.name, p)] = ErrorCode.topic_authorization_failed
            elif not known:
                refused[(topic.name, p)] = ErrorCode.unknown_topic_or_partition
            requested.append((topic.name, p, info.topic_id if known and info else None))
    errors: dict[tuple[str, int], ErrorCode]
    if not access.allows(
        AclOperation.WRITE, TRANSACTIONAL_ID, request.v3_and_below_transactional_id
    ):
        errors = {(n, p): ErrorCode.transactional_id_authorization_failed for n, p, _ in requested}
    elif refused:
        # Kafka adds nothing when a partition is denied or unknown: those get their error,
        # the others OPERATION_NOT_ATTEMPTED.
        errors = {
            (n, p): refused.get((n, p), ErrorCode.operation_not_attempted) for n, p, _ in requested
        }
    else:
        try:
            error = await coordinator.add_to_transaction(
                request.v3_and_below_transactional_id,
                request.v3_and_below_producer_id,
                request.v3_and_below_producer_epoch,
                partitions=[(tid, p) for _, p, tid in requested if tid is not None],
            )
        except CoordinatorError as e:
            error = _unavailable(ctx, ADD_PARTITIONS_TO_TXN, e)
        error = error_for_version(error, ADD_PARTITIONS_TO_TXN, version)
        errors = {(n, p): error for n, p, _ in requested}
    by_topic: dict[str, list[Any]] = {}
    for (name, partition), error in errors.items():
        by_topic.setdefault(name, []).append(
            build(
                module.AddPartitionsToTxnPartitionResult,
                partition_index=partition,
                partition_error_code=error,
            )
        )
    return build(
        module.AddPartitionsToTxnResponse,
        throttle_time=_NO_THROTTLE,
        results_by_topic_v3_and_below=tuple(
            build(
                module.AddPartitionsToTxnTopicResult, name=name, results_by_partition=tuple(parts)
            )
            for name, parts in by_topic.items()
        ),
    )


async def handle_add_offsets_to_txn(ctx: RequestContext, request: Any) -> Any:
    module = response_module(ADD_OFFSETS_TO_TXN, ctx.api_version)
    try:
        error = await ctx.services.coordinator.add_to_transaction(
            request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            groups=[request.group_id],
        )
    except CoordinatorError as e:
        error = _unavailable(ctx, ADD_OFFSETS_TO_TXN, e)
    return build(
        module.AddOffsetsToTxnResponse,
        throttle_time=_NO_THROTTLE,
        error_code=error_for_version(error, ADD_OFFSETS_TO_TXN, ctx.api_version),
    )


async def handle_end_txn(ctx: RequestContext, request: Any) -> Any:
    module = response_module(END_TXN, ctx.api_version)
    try:
        error = await ctx.services.coordinator.end_transaction(
            request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            bool(request.committed),
        )
    except CoordinatorError as e:
        error = _unavailable(ctx, END_TXN, e)
    return build(
        module.EndTxnResponse,
        throttle_time=_NO_THROTTLE,
        error_code=error_for_version(error, END_TXN, ctx.api_version),
    )


async def handle_txn_offset_commit(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    module = response_module(TXN_OFFSET_COMMIT, version)
    services = ctx.services
    access = ctx.access
    # TxnOffsetCommitRequest.getErrorResponse: a denied id or group fails every partition.
    denied: ErrorCode | None = None
    if not access.allows(AclOperation.WRITE, TRANSACTIONAL_ID, request.transactional_id):
        denied = ErrorCode.transactional_id_authorization_failed
    elif not access.allows(AclOperation.READ, GROUP, request.group_id):
        denied = ErrorCode.group_authorization_failed
    if denied is not None:
        return _txn_offset_commit_response(
            module,
            {(t.name, p.partition_index): denied for t in request.topics for p in t.partitions},
        )
    # Sent to the group's coordinator, like OffsetCommit. v3 (KIP-447) names the member
    # and generation, so a zombie of an earlier generation cannot commit (exactly once
    # across a rebalance); generation -1 (no group management) is not checked.
    group_error = services.groups.validate_offset_commit(
        request.group_id,
        getattr(request, "member_id", ""),
        getattr(request, "group_instance_id", None),
        getattr(request, "generation_id", -1),
    )
    if group_error == ErrorCode.group_id_not_found:
        group_error = ErrorCode.illegal_generation
    pending: list[PendingOffset] = []
    errors: dict[tuple[str, int], ErrorCode] = {}
    for topic in request.topics:
        info = services.coordinator.topic(topic.name)
        readable = access.allows(AclOperation.READ, TOPIC, topic.name)
        for p in topic.partitions:
            metadata = p.committed_metadata
            if not readable:
                error = ErrorCode.topic_authorization_failed
            elif info is None or not 0 <= p.partition_index < info.partition_count:
                error = ErrorCode.unknown_topic_or_partition
            elif group_error != ErrorCode.none:
                error = group_error
            elif metadata is not None and len(metadata.encode()) > OFFSET_METADATA_BYTES_MAX:
                error = ErrorCode.offset_metadata_too_large
            else:
                error = ErrorCode.none
                pending.append(
                    PendingOffset(
                        request.producer_id, request.group_id, topic.name, p.partition_index,
                        p.committed_offset,
                        getattr(p, "committed_leader_epoch", _NO_LEADER_EPOCH),
                        metadata if metadata is not None else "",
                    )
                )  # fmt: skip
            errors[(topic.name, p.partition_index)] = error
    if pending:
        try:
            error = await services.coordinator.txn_offset_commit(
                request.transactional_id, request.producer_id, request.producer_epoch, pending
            )
        except CoordinatorError as e:
            error = _unavailable(ctx, TXN_OFFSET_COMMIT, e)
        error = error_for_version(error, TXN_OFFSET_COMMIT, version)
        for o in pending:
            errors[(o.topic, o.partition)] = error
    return _txn_offset_commit_response(module, errors)


def _txn_offset_commit_response(module: Any, errors: dict[tuple[str, int], ErrorCode]) -> Any:
    by_topic: dict[str, list[Any]] = {}
    for (name, partition), error in errors.items():
        by_topic.setdefault(name, []).append(
            build(module.TxnOffsetCommitResponsePartition, partition_index=partition,
                  error_code=error)
        )  # fmt: skip
    return build(
        module.TxnOffsetCommitResponse,
        throttle_time=_NO_THROTTLE,
        topics=tuple(
            build(module.TxnOffsetCommitResponseTopic, name=name, partitions=tuple(parts))
            for name, parts in by_topic.items()
        ),
    )


# Admin -------------------------------------------------------------------------------


async def handle_write_txn_markers(ctx: RequestContext, request: Any) -> Any:
    """WriteTxnMarkers, as `kafka-transactions.sh abort` sends it to a partition's leader
    for a hanging transaction (data of a producer whose coordinator has no transaction)."""
    module = response_module(WRITE_TXN_MARKERS, ctx.api_version)
    coordinator = ctx.services.coordinator
    ends: list[TxnEnd] = []
    unknown: dict[tuple[int, str, int], ErrorCode] = {}
    # Kafka: CLUSTER_ACTION on the cluster, or ALTER (what an administrator running
    # kafka-transactions.sh abort has); else every partition is refused.
    allowed = ctx.access.allows_cluster(AclOperation.CLUSTER_ACTION) or (
        ctx.access.allows_cluster(AclOperation.ALTER)
    )
    for marker in request.markers:
        if not allowed:
            for topic in marker.topics:
                for index in topic.partition_indexes:
                    unknown[(marker.producer_id, topic.name, index)] = (
                        ErrorCode.cluster_authorization_failed
                    )
            continue
        partitions = []
        for topic in marker.topics:
            info = coordinator.topic(topic.name)
            for index in topic.partition_indexes:
                if info is None or not 0 <= index < info.partition_count:
                    unknown[(marker.producer_id, topic.name, index)] = (
                        ErrorCode.unknown_topic_or_partition
                    )
                else:
                    partitions.append((info.topic_id, index))
        ends.append(
            TxnEnd("", marker.producer_id, marker.producer_epoch,
                   bool(marker.transaction_result), frozenset(partitions), frozenset())
        )  # fmt: skip
    errors: dict[tuple[int, uuid.UUID, int], ErrorCode] = {}
    failure: ErrorCode | None = None
    try:
        errors = await coordinator.write_markers([e for e in ends if e.partitions])
    except CoordinatorError as e:
        failure = _unavailable(ctx, WRITE_TXN_MARKERS, e)
    results = []
    for marker in request.markers:
        topics = []
        for topic in marker.topics:
            info = coordinator.topic(topic.name)
            partitions = []
            for index in topic.partition_indexes:
                error = unknown.get((marker.producer_id, topic.name, index))
                if error is None:
                    assert info is not None
                    error = failure or errors.get(
                        (marker.producer_id, info.topic_id, index), ErrorCode.unknown_server_error
                    )
                partitions.append(
                    build(module.WritableTxnMarkerPartitionResult, partition_index=index,
                          error_code=error)
                )  # fmt: skip
            topics.append(
                build(module.WritableTxnMarkerTopicResult, name=topic.name,
                      partitions=tuple(partitions))
            )  # fmt: skip
        results.append(
            build(module.WritableTxnMarkerResult, producer_id=marker.producer_id,
                  topics=tuple(topics))
        )  # fmt: skip
    return build(module.WriteTxnMarkersResponse, markers=tuple(results))


def _start_time(txn: Transaction) -> datetime.datetime:
    # -1 when no transaction is open, as Kafka reports it.
    return datetime.datetime.fromtimestamp(txn.start_ms / 1000, datetime.UTC)


async def handle_describe_transactions(ctx: RequestContext, request: Any) -> Any:
    module = response_module(DESCRIBE_TRANSACTIONS, ctx.api_version)
    services = ctx.services
    try:
        known = {t.transactional_id: t for t in await services.coordinator.transaction_states()}
        failure: ErrorCode | None = None
    except CoordinatorError as e:
        known, failure = {}, _unavailable(ctx, DESCRIBE_TRANSACTIONS, e)
    states = []
    access = ctx.access
    for txn_id in request.transactional_ids:
        txn = known.get(txn_id)
        allowed = access.allows(AclOperation.DESCRIBE, TRANSACTIONAL_ID, txn_id)
        if txn is None or not allowed:
            error = (
                ErrorCode.transactional_id_authorization_failed
                if not allowed
                else failure or ErrorCode.transactional_id_not_found
            )
            states.append(
                build(
                    module.TransactionState,
                    error_code=error,
                    transactional_id=txn_id,
                    transaction_state="",
                    transaction_timeout=datetime.timedelta(0),
                    transaction_start_time=datetime.datetime.fromtimestamp(0, datetime.UTC),
                    producer_id=-1,
                    producer_epoch=-1,
                    topics=(),
                )
            )
            continue
        by_topic: dict[str, list[int]] = {}
        for topic_id, partition in sorted(txn.partitions, key=lambda k: (k[0].bytes, k[1])):
            info = services.coordinator.topic_by_id(topic_id)
            # Only the topics the principal may describe are shown, as Kafka does.
            if info is not None and access.allows(AclOperation.DESCRIBE, TOPIC, info.name):
                by_topic.setdefault(info.name, []).append(partition)
        states.append(
            build(
                module.TransactionState,
                error_code=ErrorCode.none,
                transactional_id=txn_id,
                transaction_state=txn.state.value,
                transaction_timeout=datetime.timedelta(milliseconds=txn.timeout_ms),
                transaction_start_time=_start_time(txn),
                producer_id=txn.producer_id,
                producer_epoch=txn.epoch,
                topics=tuple(
                    build(module.TopicData, topic=name, partitions=tuple(parts))
                    for name, parts in by_topic.items()
                ),
            )
        )
    return build(
        module.DescribeTransactionsResponse,
        throttle_time=_NO_THROTTLE,
        transaction_states=tuple(states),
    )


async def handle_list_transactions(ctx: RequestContext, request: Any) -> Any:
    module = response_module(LIST_TRANSACTIONS, ctx.api_version)
    states = {s.value for s in TxnState}
    wanted_states = set(request.state_filters)
    wanted_producers = set(request.producer_id_filters)
    # KIP-994 (v1): only transactions open longer than this many ms.
    min_duration_ms = getattr(request, "duration_filter", -1)
    error = ErrorCode.none
    try:
        transactions = await ctx.services.coordinator.transaction_states()
    except CoordinatorError as e:
        transactions, error = [], _unavailable(ctx, LIST_TRANSACTIONS, e)
    now_ms = SYSTEM_CLOCK.wall_ms()
    access = ctx.access
    listed = [
        build(
            module.TransactionState,
            transactional_id=t.transactional_id,
            producer_id=t.producer_id,
            transaction_state=t.state.value,
        )
        for t in sorted(transactions, key=lambda t: t.transactional_id)
        if (not wanted_states or t.state.value in wanted_states)
        and (not wanted_producers or t.producer_id in wanted_producers)
        and (min_duration_ms < 0 or (t.ongoing and now_ms - t.start_ms >= min_duration_ms))
        # Only the transactional ids the principal may describe are listed, as Kafka does.
        and access.allows(AclOperation.DESCRIBE, TRANSACTIONAL_ID, t.transactional_id)
    ]
    return build(
        module.ListTransactionsResponse,
        throttle_time=_NO_THROTTLE,
        error_code=error,
        unknown_state_filters=tuple(sorted(wanted_states - states)),
        transaction_states=tuple(listed),
    )


async def handle_describe_producers(ctx: RequestContext, request: Any) -> Any:
    """The producers with state in each partition (for `kafka-transactions.sh
    find-hanging` and `describe-producers`), from the coordinator's producer states."""
    module = response_module(DESCRIBE_PRODUCERS, ctx.api_version)
    coordinator = ctx.services.coordinator
    try:
        states = await coordinator.producer_states()
        failure: ErrorCode | None = None
    except CoordinatorError as e:
        states, failure = {}, _unavailable(ctx, DESCRIBE_PRODUCERS, e)
    topics = []
    for topic in request.topics:
        info = coordinator.topic(topic.name)
        readable = ctx.access.allows(AclOperation.READ, TOPIC, topic.name)
        partitions = []
        for index in topic.partition_indexes:
            message = None
            if not readable:
                error, active = ErrorCode.topic_authorization_failed, ()
                message = _TOPIC_DENIED_MESSAGE
            elif info is None or not 0 <= index < info.partition_count:
                error, active = ErrorCode.unknown_topic_or_partition, ()
            elif failure is not None:
                error, active = failure, ()
            else:
                error = ErrorCode.none
                active = tuple(
                    build(
                        module.ProducerState,
                        producer_id=pid,
                        producer_epoch=state.epoch,
                        last_sequence=state.batches[-1].last_sequence if state.batches else -1,
                        last_timestamp=-1,
                        coordinator_epoch=-1,
                        current_txn_start_offset=state.txn_first_offset,
                    )
                    for (pid, tid, p), state in sorted(states.items(), key=lambda kv: kv[0][0])
                    if tid == info.topic_id and p == index
                )
            partitions.append(
                build(
                    module.PartitionResponse,
                    partition_index=index,
                    error_code=error,
                    error_message=message,
                    active_producers=active,
                )
            )
        topics.append(build(module.TopicResponse, name=topic.name, partitions=tuple(partitions)))
    return build(module.DescribeProducersResponse, throttle_time=_NO_THROTTLE, topics=tuple(topics))
