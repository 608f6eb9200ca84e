"""ListOffsets: earliest, latest, max timestamp, and the first offset at or after a time.

Timestamps need one stored batch: a batch whose object is not found is looked up
once more (its coordinates may be stale, see `server/fetch.py`); if the database
still names the missing object the partition gets CORRUPT_MESSAGE, as Fetch does.

A topic the principal may not DESCRIBE gets TOPIC_AUTHORIZATION_FAILED on each of
its partitions, whether or not it exists (KafkaApis.handleListOffsetRequest).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import BatchLocation, TopicInfo
from driftlog.protocol.schema import build, response_module
from driftlog.records.timestamps import first_offset_at_or_after, max_timestamp_offset
from driftlog.security.acl import AclOperation
from driftlog.server.access import TOPIC
from driftlog.server.context import RequestContext
from driftlog.server.fetch import LOST_DATA_ERROR
from driftlog.storage.api import ObjectNotFound

LIST_OFFSETS = 2
LATEST = -1
# The longest ListOffsets waits for this agent's view to show what it acknowledged.
READ_YOUR_WRITES_WAIT_S = 2.0
EARLIEST = -2
MAX_TIMESTAMP = -3  # KIP-734
EARLIEST_LOCAL = -4  # KIP-405: all data is "local" here
LATEST_TIERED = -5  # KIP-1005


async def _batch_at(
    ctx: RequestContext, topic: TopicInfo, partition: int, timestamp: int
) -> tuple[BatchLocation, bytes | None] | ErrorCode | None:
    """The first batch at or after `timestamp` and its stored bytes (None when the
    batch carries its time itself: LogAppendTime); None if there is no such batch."""
    coordinator = ctx.services.coordinator
    lost: BatchLocation | None = None
    for _ in range(2):  # a second look if the object was not found: coordinates may be stale
        location = await coordinator.batch_at_timestamp(topic.topic_id, partition, timestamp)
        if location is None:
            return None
        if location.log_append_time_ms >= 0:
            return location, None
        if lost is not None and location.object_key == lost.object_key:
            break  # the database still names the object the store said is not there
        try:
            return location, await ctx.services.fetcher.read_raw(location)
        except ObjectNotFound:
            lost = location
            coordinator.forget_cached([(topic.topic_id, partition)])
    assert lost is not None
    ctx.services.fetcher.missing.report(
        lost.object_key, topic.name, partition, lost.base_offset, lost.last_offset, time.monotonic()
    )
    return LOST_DATA_ERROR


async def _lookup(
    ctx: RequestContext, topic: TopicInfo, partition: int, timestamp: int, read_committed: bool
) -> tuple[ErrorCode, int, int]:
    coordinator = ctx.services.coordinator
    offsets = coordinator.partition_offsets(topic.topic_id, partition)
    if offsets is None:
        return ErrorCode.unknown_topic_or_partition, -1, -1
    if timestamp in (LATEST, LATEST_TIERED):
        # Read your writes: what this agent acknowledged is visible in its answer.
        await coordinator.caught_up(topic.topic_id, partition, READ_YOUR_WRITES_WAIT_S)
        offsets = coordinator.partition_offsets(topic.topic_id, partition) or offsets
        if read_committed:  # KIP-98: the last stable offset
            stable = coordinator.last_stable_offset(topic.topic_id, partition)
            return ErrorCode.none, -1, offsets.high_watermark if stable is None else stable
        return ErrorCode.none, -1, offsets.high_watermark
    if timestamp in (EARLIEST, EARLIEST_LOCAL):
        return ErrorCode.none, -1, offsets.log_start_offset
    if timestamp == MAX_TIMESTAMP:
        timestamp = await coordinator.max_timestamp(topic.topic_id, partition)
        if timestamp < 0:
            return ErrorCode.none, -1, -1
        found_batch = await _batch_at(ctx, topic, partition, timestamp)
        if found_batch is None:
            return ErrorCode.none, -1, -1
        if isinstance(found_batch, ErrorCode):
            return found_batch, -1, -1
        location, raw = found_batch
        if raw is None:
            return ErrorCode.none, location.log_append_time_ms, location.base_offset
        # Decompressing and walking records is CPU work: keep it off the event loop.
        offset, found_ts = await asyncio.to_thread(max_timestamp_offset, raw, location.base_offset)
        return ErrorCode.none, found_ts, offset
    if timestamp < 0:
        return ErrorCode.invalid_request, -1, -1
    found_batch = await _batch_at(ctx, topic, partition, timestamp)
    if found_batch is None:
        return ErrorCode.none, -1, -1
    if isinstance(found_batch, ErrorCode):
        return found_batch, -1, -1
    location, raw = found_batch
    if raw is None:
        return ErrorCode.none, location.log_append_time_ms, location.base_offset
    found = await asyncio.to_thread(first_offset_at_or_after, raw, location.base_offset, timestamp)
    if found is None:
        return ErrorCode.none, -1, -1
    offset, found_ts = found
    # Records before the log start are gone even if their batch is still stored.
    return ErrorCode.none, found_ts, max(offset, offsets.log_start_offset)


async def handle_list_offsets(ctx: RequestContext, request: Any) -> Any:
    module = response_module(LIST_OFFSETS, ctx.api_version)
    coordinator = ctx.services.coordinator
    read_committed = getattr(request, "isolation_level", 0) == 1
    topics = []
    for requested in request.topics:
        topic = coordinator.topic(requested.name)
        described = ctx.access.allows(AclOperation.DESCRIBE, TOPIC, requested.name)
        partitions = []
        for p in requested.partitions:
            if not described:
                error, ts, offset = ErrorCode.topic_authorization_failed, -1, -1
            elif topic is None:
                error, ts, offset = ErrorCode.unknown_topic_or_partition, -1, -1
            else:
                try:
                    error, ts, offset = await _lookup(
                        ctx, topic, p.partition_index, p.timestamp, read_committed
                    )
                except Exception as e:
                    ctx.services.log_client_error(ctx.peer, LIST_OFFSETS, f"lookup failed: {e!r}")
                    error, ts, offset = ErrorCode.kafka_storage_error, -1, -1
            partitions.append(
                build(
                    module.ListOffsetsPartitionResponse,
                    partition_index=p.partition_index,
                    error_code=error,
                    timestamp=ts,
                    offset=offset,
                    old_style_offsets=(offset,) if offset >= 0 else (),
                    leader_epoch=0 if error == ErrorCode.none else -1,
                )
            )
        topics.append(
            build(
                module.ListOffsetsTopicResponse, name=requested.name, partitions=tuple(partitions)
            )
        )
    return build(
        module.ListOffsetsResponse, throttle_time=datetime.timedelta(0), topics=tuple(topics)
    )
