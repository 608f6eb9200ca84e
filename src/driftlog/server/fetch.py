"""Fetch: plan from committed coordinates, long-poll on commits, then read the bytes.

The plan (which batches of which partitions) is cheap: tail readers find
their coordinates in the view's in-memory tail cache, older offsets cost one
indexed database query. The long poll re-plans after every commit until
`min_bytes` is reached or `max_wait` passes, and only then reads from cache
or object storage.

Size limits follow KIP-74: the response stays within `max_bytes` and each
partition within `partition_max_bytes`, except that the first batch of the
first non-empty partition is returned whole so a consumer always progresses.

Incremental fetch sessions (KIP-227) are declined by answering session id 0,
which makes clients send full fetch requests.
"""

from __future__ import annotations

import datetime
import time
import uuid
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import BatchLocation, CoordinatorError, TopicInfo
from driftlog.protocol.schema import build, response_module
from driftlog.server.context import RequestContext

FETCH = 1
_NO_THROTTLE = datetime.timedelta(0)
# Bounds a client's long poll regardless of what it asks for.
MAX_WAIT_S = 30.0
# Bounds one response's size whatever the client asks (Kafka's fetch.max.bytes).
MAX_RESPONSE_BYTES = 55 * 1024 * 1024


@dataclass(slots=True)
class _PartitionPlan:
    partition: int
    error: ErrorCode
    high_watermark: int = -1
    log_start_offset: int = -1
    locations: tuple[BatchLocation, ...] = ()


@dataclass(slots=True)
class _TopicPlan:
    name: str
    topic_id: uuid.UUID
    partitions: list[_PartitionPlan]


async def _plan(ctx: RequestContext, request: Any) -> tuple[list[_TopicPlan], int]:
    coordinator = ctx.agent.coordinator
    uses_ids = ctx.api_version >= 13
    budget = min(request.max_bytes, MAX_RESPONSE_BYTES)
    total = 0
    plans: list[_TopicPlan] = []
    for fetch_topic in request.topics:
        topic: TopicInfo | None
        if uses_ids:
            topic = coordinator.topic_by_id(fetch_topic.topic_id)
            missing = ErrorCode.unknown_topic_id
            plan = _TopicPlan("", fetch_topic.topic_id, [])
        else:
            topic = coordinator.topic(fetch_topic.topic)
            missing = ErrorCode.unknown_topic_or_partition
            plan = _TopicPlan(fetch_topic.topic, topic.topic_id if topic else uuid.UUID(int=0), [])
        plans.append(plan)
        for fp in fetch_topic.partitions:
            offsets = coordinator.partition_offsets(topic.topic_id, fp.partition) if topic else None
            if topic is None or offsets is None:
                plan.partitions.append(_PartitionPlan(fp.partition, missing))
                continue
            part = _PartitionPlan(
                fp.partition, ErrorCode.none, offsets.high_watermark, offsets.log_start_offset
            )
            plan.partitions.append(part)
            offset = fp.fetch_offset
            if offset < offsets.log_start_offset or offset > offsets.high_watermark:
                part.error = ErrorCode.offset_out_of_range
                continue
            limit = min(fp.partition_max_bytes, budget - total)
            if offset == offsets.high_watermark or (limit <= 0 and total > 0):
                continue
            # find_batches always includes the first batch, so a response that is
            # still empty gets at least one batch whatever the limits say (KIP-74).
            try:
                locations = await coordinator.find_batches(
                    topic.topic_id, fp.partition, offset, max(limit, 1)
                )
            except CoordinatorError:
                part.error = ErrorCode.kafka_storage_error  # retriable: the index is unreachable
                continue
            if locations and total > 0 and locations[0].byte_length > limit:
                continue  # only the response's first batch may exceed the limits
            part.locations = tuple(locations)
            total += sum(loc.byte_length for loc in locations)
    return plans, total


async def handle_fetch(ctx: RequestContext, request: Any) -> Any:
    max_wait_s = min(request.max_wait.total_seconds(), MAX_WAIT_S)
    deadline = time.monotonic() + max(max_wait_s, 0.0)
    while True:
        plans, total = await _plan(ctx, request)
        remaining = deadline - time.monotonic()
        has_error = any(p.error != ErrorCode.none for t in plans for p in t.partitions)
        if total >= request.min_bytes or remaining <= 0 or has_error:
            break
        watched = [
            (t.topic_id, p.partition)
            for t in plans
            for p in t.partitions
            if p.error == ErrorCode.none
        ]
        await ctx.agent.coordinator.wait_for_commit(watched, remaining)
    return await _respond(ctx, plans)


async def _respond(ctx: RequestContext, plans: list[_TopicPlan]) -> Any:
    module = response_module(FETCH, ctx.api_version)
    wanted = [p.locations for t in plans for p in t.partitions if p.locations]
    data: Any = iter(())
    error: ErrorCode = ErrorCode.none
    try:
        data = iter(await ctx.agent.fetcher.read_many(wanted))
    except Exception as e:
        ctx.agent.log_client_error("store", FETCH, f"fetch read failed: {e!r}")
        error = ErrorCode.kafka_storage_error
    responses = []
    for plan in plans:
        partitions = []
        for part in plan.partitions:
            records: Any = b""
            partition_error = part.error
            if part.locations:
                if error == ErrorCode.none:
                    records = next(data)
                else:
                    partition_error = error
            partitions.append(
                build(
                    module.PartitionData,
                    partition_index=part.partition,
                    error_code=partition_error,
                    high_watermark=part.high_watermark,
                    last_stable_offset=part.high_watermark,
                    log_start_offset=part.log_start_offset,
                    aborted_transactions=None,
                    preferred_read_replica=-1,
                    records=records,
                )
            )
        responses.append(
            build(
                module.FetchableTopicResponse,
                topic=plan.name,
                topic_id=plan.topic_id,
                partitions=tuple(partitions),
            )
        )
    return build(
        module.FetchResponse,
        throttle_time=_NO_THROTTLE,
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(responses),
        node_endpoints=(),
    )
