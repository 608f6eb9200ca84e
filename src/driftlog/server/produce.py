"""Produce: validate batches, hand them to the write pipeline, answer once committed.

acks=0 gets no response; acks=1 and acks=-1 both mean "in object storage and
committed" (there are no replicas to wait for). A batch that fails validation
fails its partition with the Kafka error code, and the other partitions of the
request go on (with acks=0 the connection is closed instead, as Kafka does).

Records are not decoded, except for topics whose configs require a per-record
check (server/record_checks.py): then an invalid record refuses the whole batch
with KIP-467 record errors, as Kafka does.
"""

from __future__ import annotations

import asyncio
import datetime
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.clock import SYSTEM_CLOCK
from driftlog.cluster.placement import PRODUCE as PRODUCE_ROLE
from driftlog.cluster.placement import client_zone, partition_leaders
from driftlog.coordinator.api import AgentInfo, CommitOutcome
from driftlog.protocol.codec import EncodedBody, encode_body
from driftlog.protocol.schema import build, response_module
from driftlog.records.batch import BatchHeader, InvalidBatch, split_batches
from driftlog.security.acl import AclOperation
from driftlog.server import broker_configs
from driftlog.server.access import TOPIC, TRANSACTIONAL_ID
from driftlog.server.context import RequestContext
from driftlog.server.listener import ConnectionClosed
from driftlog.server.metadata import leader_candidates, node_endpoints
from driftlog.server.quota_handlers import throttle
from driftlog.server.record_checks import RecordChecks, RecordErrors, check_records, checks_for

PRODUCE = 0


@dataclass(slots=True)
class _PartitionResult:
    topic: str
    partition: int
    error: ErrorCode = ErrorCode.none
    message: str | None = None
    # KIP-467: (batch index, message) of each invalid record.
    record_errors: tuple[tuple[int, str], ...] = ()
    # The validated batch and, once buffered, the future of its commit outcome.
    batch: tuple[bytes, BatchHeader] | None = None
    outcome: asyncio.Future[CommitOutcome] | None = None
    topic_id: uuid.UUID | None = None


def _validate(
    records: bytes | None, max_bytes: int, checks: RecordChecks | None
) -> tuple[bytes, BatchHeader]:
    """The partition's single batch, or InvalidBatch with the Kafka error to answer."""
    if not records:
        raise InvalidBatch(ErrorCode.corrupt_message, "no records")
    batches = list(split_batches(records))
    if len(batches) != 1:
        # Kafka requires exactly one batch per partition from Produce v3 on
        # (one batch is also what makes a partition's data commit atomically).
        raise InvalidBatch(ErrorCode.invalid_record, "exactly one record batch per partition")
    _, header = batches[0]
    if header.is_control:
        raise InvalidBatch(ErrorCode.invalid_record, "control batches are the coordinator's")
    if header.is_transactional and header.producer_id < 0:
        raise InvalidBatch(ErrorCode.invalid_record, "a transactional batch needs a producer id")
    if header.size > max_bytes:
        raise InvalidBatch(
            ErrorCode.message_too_large,
            f"batch of {header.size} bytes exceeds max.message.bytes {max_bytes}",
        )
    if checks is not None:
        check_records(records, header, checks, SYSTEM_CLOCK.wall_ms())
    return records, header


async def handle_produce(ctx: RequestContext, request: Any) -> Any:
    services = ctx.services
    coordinator = services.coordinator
    membership = services.membership
    if membership.stepping_aside() or PRODUCE_ROLE not in membership.me.roles:
        # Cut off (it cannot commit), or not a produce agent (--roles): clients go to the
        # leaders Metadata names, unless that is this agent (no other can take them).
        others = leader_candidates(ctx)
        if all(a.agent_id != membership.me.agent_id for a in others):
            if membership.stepping_aside():
                return redirect(ctx, request, others)
            services.request_metrics.produce_role_redirects.inc()
            return redirect(ctx, request, others, "this agent does not take produce (--roles)")
    results: list[_PartitionResult] = []
    transactional_id = getattr(request, "transactional_id", None)
    txn_denied = transactional_id is not None and not ctx.access.allows(
        AclOperation.WRITE, TRANSACTIONAL_ID, transactional_id
    )
    for topic_data in request.topic_data:
        denied = (
            ErrorCode.transactional_id_authorization_failed
            if txn_denied
            else None
            if ctx.access.allows(AclOperation.WRITE, TOPIC, topic_data.name)
            else ErrorCode.topic_authorization_failed
        )
        if denied is not None:
            for partition_data in topic_data.partition_data:
                result = _PartitionResult(topic_data.name, partition_data.index)
                result.error = denied
                results.append(result)
            continue
        topic = coordinator.topic(topic_data.name)
        checks: RecordChecks | None = None
        max_bytes = broker_configs.message_max_bytes(services)
        if topic is not None:
            if "max.message.bytes" in topic.configs:
                max_bytes = int(topic.configs["max.message.bytes"])
            checks = checks_for(topic.configs)
        for partition_data in topic_data.partition_data:
            result = _PartitionResult(topic_data.name, partition_data.index)
            results.append(result)
            if topic is None or not 0 <= result.partition < topic.partition_count:
                result.error = ErrorCode.unknown_topic_or_partition
                continue
            try:
                result.batch = _validate(partition_data.records, max_bytes, checks)
            except InvalidBatch as e:
                services.log_client_error(
                    ctx.peer, PRODUCE, f"produce to {topic.name}-{result.partition}: {e}"
                )
                result.error, result.message = e.error, e.reason
                if isinstance(e, RecordErrors):
                    result.record_errors = tuple(e.record_errors)

    if request.acks == 0 and any(r.error != ErrorCode.none for r in results):
        # acks=0 has no response to carry the error: Kafka closes the connection
        # so the client notices.
        raise ConnectionClosed

    # Reserve the whole request's bytes, then buffer every batch without awaiting:
    # the request reaches the buffer whole and in arrival order.
    accepted = [r for r in results if r.batch is not None]
    total = sum(len(r.batch[0]) for r in accepted if r.batch is not None)
    if total:
        await services.pipeline.reserve(total)
    for r in accepted:
        assert r.batch is not None
        topic = coordinator.topic(r.topic)
        if topic is None or r.partition >= topic.partition_count:  # deleted while waiting
            services.pipeline.release(len(r.batch[0]))
            r.error, r.batch = ErrorCode.unknown_topic_or_partition, None
            continue
        r.outcome = services.pipeline.append(topic.topic_id, r.partition, *r.batch)
        r.topic_id = topic.topic_id

    # Counted when accepted, as Kafka records a request's size; acks=0 is muted too.
    throttle_ms = throttle(ctx, "produce", total)
    if request.acks == 0:
        return None

    answers: list[_Answer] = []
    metrics = services.request_metrics
    for r in results:
        answer = _Answer(r.topic, r.partition, r.error, r.message, record_errors=r.record_errors)
        if r.outcome is not None:
            outcome = await r.outcome
            answer.error = outcome.error
            if outcome.error == ErrorCode.invalid_txn_state and ctx.api_version >= 11:
                # KIP-890: a batch for a partition not in the transaction. Clients that
                # know TRANSACTION_ABORTABLE abort and go on; older ones get the old code.
                answer.error = ErrorCode.transaction_abortable
            if outcome.error == ErrorCode.none and r.batch is not None:
                metrics.produced_bytes.inc(len(r.batch[0]))
                metrics.produced_records.inc(r.batch[1].record_count)
                if r.topic_id is not None:
                    end = outcome.base_offset + r.batch[1].last_offset_delta + 1
                    coordinator.note_acknowledged(r.topic_id, r.partition, end)
            if outcome.error == ErrorCode.none:
                answer.base_offset = outcome.base_offset
                answer.log_start_offset = outcome.log_start_offset
                answer.log_append_time_ms = outcome.log_append_time_ms
        answers.append(answer)
    if len(answers) == 1 and answers[0].error == ErrorCode.none and throttle_ms == 0:
        fast = _single_partition_response(ctx.api_version, answers[0])
        if fast is not None:
            return fast
    return _response(ctx.api_version, answers, throttle_ms)


def redirect(
    ctx: RequestContext,
    request: Any,
    leaders: list[AgentInfo],
    why: str = "this agent cannot reach the coordinator database",
) -> Any:
    """NOT_LEADER_OR_FOLLOWER for every partition, from an agent cut off from the database
    (it cannot commit) or without the produce role: each partition names the agent
    Metadata now names as its leader, and from v10 its address too (KIP-951), so the
    client moves without a Metadata round trip. acks=0 has no response to carry it: the
    connection closes, as Kafka does."""
    if request.acks == 0:
        raise ConnectionClosed
    module = response_module(PRODUCE, ctx.api_version)
    zone = client_zone(ctx.client_id)
    named: dict[int, AgentInfo] = {}
    topics = []
    for topic_data in request.topic_data:
        topic = ctx.services.coordinator.topic(topic_data.name)
        placed = (
            partition_leaders(topic.topic_id.bytes, topic.partition_count, leaders, zone)
            if topic is not None
            else []
        )
        partitions = []
        for partition_data in topic_data.partition_data:
            index = partition_data.index
            leader = placed[index] if 0 <= index < len(placed) else leaders[0]
            assert leader is not None
            named[leader.node_id] = leader
            partitions.append(
                build(
                    module.PartitionProduceResponse,
                    index=index,
                    error_code=ErrorCode.not_leader_or_follower,
                    base_offset=-1,
                    log_start_offset=-1,
                    record_errors=(),
                    error_message=why,
                    # v10+ (KIP-951); the epoch is constant, as in Metadata.
                    current_leader=build(
                        module.LeaderIdAndEpoch, leader_id=leader.node_id, leader_epoch=0
                    )
                    if hasattr(module, "LeaderIdAndEpoch")
                    else None,
                )
            )
        topics.append(
            build(
                module.TopicProduceResponse,
                name=topic_data.name,
                partition_responses=tuple(partitions),
            )
        )
    endpoints = node_endpoints(ctx, module, list(named.values()))
    return build(
        module.ProduceResponse,
        responses=tuple(topics),
        throttle_time=datetime.timedelta(0),
        node_endpoints=endpoints,
    )


@dataclass(slots=True)
class _Answer:
    topic: str
    partition: int
    error: ErrorCode
    message: str | None
    base_offset: int = -1
    log_start_offset: int = -1
    log_append_time_ms: int = -1
    record_errors: tuple[tuple[int, str], ...] = ()


def _response(version: int, answers: list[_Answer], throttle_ms: int = 0) -> Any:
    module = response_module(PRODUCE, version)
    by_topic: dict[str, list[Any]] = {}
    for a in answers:
        log_append_time = None
        if a.log_append_time_ms >= 0:
            log_append_time = datetime.datetime.fromtimestamp(
                a.log_append_time_ms / 1000, datetime.UTC
            )
        by_topic.setdefault(a.topic, []).append(
            build(
                module.PartitionProduceResponse,
                index=a.partition,
                error_code=a.error,
                base_offset=a.base_offset,
                log_append_time=log_append_time,
                log_start_offset=a.log_start_offset,
                record_errors=tuple(
                    build(
                        module.BatchIndexAndErrorMessage,
                        batch_index=index,
                        batch_index_error_message=text,
                    )
                    for index, text in a.record_errors
                )
                if hasattr(module, "BatchIndexAndErrorMessage")
                else (),
                error_message=a.message,
            )
        )
    return build(
        module.ProduceResponse,
        responses=tuple(
            build(module.TopicProduceResponse, name=name, partition_responses=tuple(parts))
            for name, parts in by_topic.items()
        ),
        throttle_time=datetime.timedelta(milliseconds=throttle_ms),
    )


# One produce request per partition is what librdkafka sends, and a flush answers
# hundreds at once: kio encodes one template per (version, topic, partition,
# log start) and each answer copies it with its base offset written in. The
# offset is a fixed-width int64, found by encoding a sentinel value.
_SENTINEL = struct.pack(">q", 0x5EC7_1E1A_B0FF_5E75)
_MAX_TEMPLATES = 10_000
_templates: dict[tuple[int, str, int, int], tuple[bytes, int] | None] = {}


def _single_partition_response(version: int, answer: _Answer) -> EncodedBody | None:
    if answer.log_append_time_ms >= 0 or answer.message is not None:
        return None
    key = (version, answer.topic, answer.partition, answer.log_start_offset)
    if key not in _templates:
        if len(_templates) >= _MAX_TEMPLATES:
            _templates.clear()
        probe = _Answer(answer.topic, answer.partition, ErrorCode.none, None,
                        int.from_bytes(_SENTINEL, "big"), answer.log_start_offset)  # fmt: skip
        body = encode_body(PRODUCE, version, _response(version, [probe]))
        position = body.find(_SENTINEL)
        unique = position >= 0 and body.find(_SENTINEL, position + 1) < 0
        _templates[key] = (body, position) if unique else None
    template = _templates[key]
    if template is None:
        return None
    body, position = template
    offset = struct.pack(">q", answer.base_offset)
    return EncodedBody(body[:position] + offset + body[position + 8 :])
