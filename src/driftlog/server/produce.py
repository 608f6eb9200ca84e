"""Produce: validate batches, hand them to the write pipeline, answer once committed.

acks=0 gets no response; acks=1 and acks=-1 both mean "in object storage and
committed" (there are no replicas to wait for). A batch that fails validation
fails its whole partition with the Kafka error code, and the other partitions
of the request go on.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CommitOutcome
from driftlog.protocol.schema import build, response_module
from driftlog.records.batch import InvalidBatch, split_batches
from driftlog.server.context import RequestContext
from driftlog.topic_config import TOPIC_CONFIGS

PRODUCE = 0
_NO_THROTTLE = datetime.timedelta(0)
_DEFAULT_MAX_MESSAGE_BYTES = int(TOPIC_CONFIGS["max.message.bytes"].default)


async def handle_produce(ctx: RequestContext, request: Any) -> Any:
    agent = ctx.agent
    coordinator = agent.coordinator
    # (topic name, partition) -> either an immediate error or the batch futures
    results: list[tuple[str, int, ErrorCode, str | None, list[asyncio.Future[CommitOutcome]]]] = []
    for topic_data in request.topic_data:
        topic = coordinator.topic(topic_data.name)
        max_bytes = _DEFAULT_MAX_MESSAGE_BYTES
        if topic is not None and "max.message.bytes" in topic.configs:
            max_bytes = int(topic.configs["max.message.bytes"])
        for partition_data in topic_data.partition_data:
            index = partition_data.index
            if topic is None or not 0 <= index < topic.partition_count:
                results.append(
                    (topic_data.name, index, ErrorCode.unknown_topic_or_partition, None, [])
                )
                continue
            records = partition_data.records
            try:
                if not records:
                    raise InvalidBatch(ErrorCode.corrupt_message, "no records")
                batches = list(split_batches(records))
                for _, header in batches:
                    if header.is_transactional or header.is_control:
                        raise InvalidBatch(
                            ErrorCode.invalid_record, "transactional batches are not supported"
                        )
                    if header.size > max_bytes:
                        raise InvalidBatch(
                            ErrorCode.message_too_large,
                            f"batch of {header.size} bytes exceeds max.message.bytes {max_bytes}",
                        )
            except InvalidBatch as e:
                agent.log_client_error(ctx.peer, PRODUCE, f"produce to {topic.name}-{index}: {e}")
                results.append((topic_data.name, index, e.error, e.reason, []))
                continue
            futures = []
            single = len(batches) == 1
            for start, header in batches:
                data = records if single else records[start : start + header.size]
                futures.append(await agent.pipeline.append(topic.topic_id, index, data, header))
            results.append((topic_data.name, index, ErrorCode.none, None, futures))

    if request.acks == 0:
        return None

    module = response_module(PRODUCE, ctx.api_version)
    by_topic: dict[str, list[Any]] = {}
    for name, index, error, message, futures in results:
        base_offset, log_append_time, log_start = -1, None, -1
        if futures:
            outcomes = [await f for f in futures]
            failed = next((o for o in outcomes if o.error != ErrorCode.none), None)
            if failed is not None:
                error = failed.error
            else:
                base_offset = outcomes[0].base_offset
                log_start = outcomes[0].log_start_offset
                if outcomes[0].log_append_time_ms >= 0:
                    log_append_time = datetime.datetime.fromtimestamp(
                        outcomes[0].log_append_time_ms / 1000, datetime.UTC
                    )
        by_topic.setdefault(name, []).append(
            build(
                module.PartitionProduceResponse,
                index=index,
                error_code=error,
                base_offset=base_offset,
                log_append_time=log_append_time,
                log_start_offset=log_start,
                record_errors=(),
                error_message=message,
            )
        )
    return build(
        module.ProduceResponse,
        responses=tuple(
            build(module.TopicProduceResponse, name=name, partition_responses=tuple(parts))
            for name, parts in by_topic.items()
        ),
        throttle_time=_NO_THROTTLE,
    )
