"""Metadata: live agents as brokers, zone-aware leaders; topics auto-created when allowed."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.cluster.placement import client_zone, partition_leader
from driftlog.coordinator.api import AgentInfo, CoordinatorError, TopicInfo
from driftlog.protocol.schema import build, response_module
from driftlog.server.context import RequestContext

METADATA = 3
_ZERO_UUID = uuid.UUID(int=0)
_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def topic_name_error(name: str) -> str | None:
    """Why a topic name is illegal (Kafka's Topic.validate rules), or None."""
    if name in (".", ".."):
        return "topic name cannot be '.' or '..'"
    if not _LEGAL_TOPIC.match(name):
        return "topic names are 1-249 characters of [a-zA-Z0-9._-]"
    return None


async def ensure_topic(ctx: RequestContext, name: str) -> tuple[ErrorCode, TopicInfo | None]:
    """The topic, auto-created with the default partition count when enabled."""
    coordinator = ctx.agent.coordinator
    topic = coordinator.topic(name)
    if topic is not None:
        return ErrorCode.none, topic
    if not ctx.agent.config.auto_create_topics:
        return ErrorCode.unknown_topic_or_partition, None
    if topic_name_error(name):
        return ErrorCode.invalid_topic_exception, None
    try:
        error, topic = await coordinator.create_topic(name, ctx.agent.config.default_partitions, {})
    except CoordinatorError:
        # Retriable, as Kafka answers while a topic is being created.
        return ErrorCode.leader_not_available, None
    if error == ErrorCode.topic_already_exists:
        error = ErrorCode.none
    return error, topic


def _partition(
    module: Any, topic: TopicInfo, partition: int, live: Sequence[AgentInfo], zone: str | None
) -> Any:
    # Every agent serves every partition; the leader named is where we want this
    # client's traffic (its zone, spread by partition).
    leader = partition_leader(topic.topic_id.bytes, partition, live, zone)
    node = leader.node_id if leader is not None else -1
    return build(
        module.MetadataResponsePartition,
        error_code=ErrorCode.none,
        partition_index=partition,
        leader_id=node,
        leader_epoch=0,
        replica_nodes=(node,),
        isr_nodes=(node,),
        offline_replicas=(),
    )


async def handle_metadata(ctx: RequestContext, request: Any) -> Any:
    module = response_module(METADATA, ctx.api_version)
    agent = ctx.agent
    coordinator = agent.coordinator
    # v0 has no null topics: an empty list means all topics there (KIP-4 changed it in v1).
    all_topics = request.topics is None or (ctx.api_version == 0 and not request.topics)
    allow_create = getattr(request, "allow_auto_topic_creation", True)

    topics: list[Any] = []
    if all_topics:
        found: list[tuple[str, ErrorCode, TopicInfo | None]] = [
            (t.name, ErrorCode.none, t) for t in coordinator.topics()
        ]
    else:
        found = []
        for requested in request.topics:
            name = requested.name
            if name is None:
                topic = coordinator.topic_by_id(requested.topic_id)
                found.append(
                    ("", ErrorCode.unknown_topic_id, None)
                    if topic is None
                    else (topic.name, ErrorCode.none, topic)
                )
                continue
            if allow_create:
                error, topic = await ensure_topic(ctx, name)
            else:
                topic = coordinator.topic(name)
                error = ErrorCode.none if topic else ErrorCode.unknown_topic_or_partition
            found.append((name, error, topic))

    live = agent.membership.live
    zone = client_zone(ctx.client_id)
    for name, error, topic in found:
        partitions = ()
        if topic is not None:
            partitions = tuple(
                _partition(module, topic, p, live, zone) for p in range(topic.partition_count)
            )
        topics.append(
            build(
                module.MetadataResponseTopic,
                error_code=error,
                name=name,
                topic_id=topic.topic_id if topic else _ZERO_UUID,
                is_internal=False,
                partitions=partitions,
                topic_authorized_operations=-2147483648,
            )
        )
    brokers = tuple(
        build(
            module.MetadataResponseBroker,
            node_id=a.node_id,
            host=a.host,
            port=a.port,
            rack=a.zone or None,
        )
        for a in live
    )
    return build(
        module.MetadataResponse,
        throttle_time=datetime.timedelta(0),
        brokers=brokers,
        cluster_id=agent.cluster_id,
        controller_id=agent.node_id,
        topics=tuple(topics),
        cluster_authorized_operations=-2147483648,
        error_code=ErrorCode.none,
    )
