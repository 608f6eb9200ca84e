"""Metadata and DescribeCluster: live agents of this agent's group as brokers, zone-aware
leaders among the produce agents, the fetch agents among the replicas; topics
auto-created when allowed."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.cluster.placement import (
    client_zone,
    endpoint,
    partition_leaders,
    producers,
    read_replicas,
)
from driftlog.coordinator.api import AgentInfo, CoordinatorError, TopicInfo
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import CLUSTER_NAME, AclOperation, ResourceType, authorized_operations
from driftlog.server.access import CLUSTER, TOPIC
from driftlog.server.context import RequestContext

METADATA = 3
DESCRIBE_CLUSTER = 60
ENDPOINT_BROKERS = 1
# "Not requested", the schema default of the authorized-operations fields.
_OPERATIONS_OMITTED = -2147483648
# Without an authorizer Kafka reports every operation the resource supports as
# allowed (AclEntry.supportedOperations); Driftlog has no ACLs, so it does the same.
# AclOperation codes: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
# DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12; READ 3, WRITE 4, DELETE 6.
CLUSTER_OPERATIONS = sum(1 << op for op in (5, 7, 8, 9, 10, 11, 12))
TOPIC_OPERATIONS = sum(1 << op for op in (3, 4, 5, 6, 7, 8, 10, 11))
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
    coordinator = ctx.services.coordinator
    topic = coordinator.topic(name)
    if topic is not None:
        return ErrorCode.none, topic
    if not ctx.services.config.auto_create_topics:
        return ErrorCode.unknown_topic_or_partition, None
    if topic_name_error(name):
        return ErrorCode.invalid_topic_exception, None
    try:
        error, topic = await coordinator.create_topic(
            name, ctx.services.config.default_partitions, {}
        )
    except CoordinatorError:
        # Retriable, as Kafka answers while a topic is being created.
        return ErrorCode.leader_not_available, None
    if error == ErrorCode.topic_already_exists:
        error = ErrorCode.none
    return error, topic


def _partition(
    module: Any, partition: int, leader: AgentInfo | None, readers: tuple[AgentInfo, ...]
) -> Any:
    node = leader.node_id if leader is not None else -1
    # The fetch agents clients may be sent to are replicas too: the Java consumer follows
    # a preferred read replica (KIP-392) only if Metadata lists it among the replicas.
    replicas = (node, *(a.node_id for a in readers if a.node_id != node))
    return build(
        module.MetadataResponsePartition,
        error_code=ErrorCode.none,
        partition_index=partition,
        leader_id=node,
        leader_epoch=0,
        replica_nodes=replicas,
        isr_nodes=replicas,
        offline_replicas=(),
    )


def _operations(ctx: RequestContext, resource_type: ResourceType, name: str, bits: int) -> int:
    """KIP-430's bit field: of the operations the resource supports, those allowed."""
    candidates = [AclOperation(op) for op in range(32) if bits & (1 << op)]
    return authorized_operations(
        ctx.access.authorizer,
        ctx.access.principal,
        ctx.access.host,
        resource_type,
        name,
        candidates,
    )


def reachable(ctx: RequestContext) -> list[AgentInfo]:
    """The live agents with an address on the listener this request came in on."""
    name = ctx.session.listener.name
    return [a for a in ctx.services.membership.live if endpoint(a, name) is not None]


def placement_pool(ctx: RequestContext) -> list[AgentInfo]:
    """The agents of this group to place work on for this request's listener: the live
    ones, without this agent while it is cut off from the database or the writer
    (cluster/membership.py)."""
    name = ctx.session.listener.name
    candidates = [a for a in ctx.services.membership.leaders() if endpoint(a, name) is not None]
    return candidates or reachable(ctx)


def leader_candidates(ctx: RequestContext) -> list[AgentInfo]:
    """The agents to name as partition leaders on this request's listener: the produce
    agents of `placement_pool` (all of it when none has the produce role)."""
    return producers(placement_pool(ctx))


def addresses(
    ctx: RequestContext, agents: list[AgentInfo]
) -> list[tuple[AgentInfo, tuple[str, int]]]:
    name = ctx.session.listener.name
    return [(a, address) for a in agents if (address := endpoint(a, name)) is not None]


def node_endpoints(ctx: RequestContext, module: Any, agents: list[AgentInfo]) -> tuple[Any, ...]:
    """KIP-951's node endpoints of Produce v10+ and Fetch v16 (none in older versions):
    where to reach these agents on this request's listener."""
    if not hasattr(module, "NodeEndpoint"):
        return ()
    return tuple(
        build(module.NodeEndpoint, node_id=a.node_id, host=host, port=port, rack=a.zone or None)
        for a, (host, port) in addresses(ctx, agents)
    )


async def handle_metadata(ctx: RequestContext, request: Any) -> Any:
    module = response_module(METADATA, ctx.api_version)
    services = ctx.services
    coordinator = services.coordinator
    # v0 has no null topics: an empty list means all topics there (KIP-4 changed it in v1).
    all_topics = request.topics is None or (ctx.api_version == 0 and not request.topics)
    allow_create = getattr(request, "allow_auto_topic_creation", True)
    include_topic_operations = getattr(request, "include_topic_authorized_operations", False)
    include_cluster_operations = getattr(request, "include_cluster_authorized_operations", False)

    topics: list[Any] = []
    access = ctx.access
    if all_topics:
        # Topics this principal may not describe are left out, as Kafka does.
        found: list[tuple[str | None, ErrorCode, TopicInfo | None]] = [
            (t.name, ErrorCode.none, t)
            for t in coordinator.topics()
            if access.allows(AclOperation.DESCRIBE, TOPIC, t.name)
        ]
    else:
        found = []
        for requested in request.topics:
            name = requested.name
            if name is None:
                topic = coordinator.topic_by_id(requested.topic_id)
                if topic is None:
                    found.append(("", ErrorCode.unknown_topic_id, None))
                elif not access.allows(AclOperation.DESCRIBE, TOPIC, topic.name):
                    # As Kafka: refused, and the name stays hidden (null).
                    found.append((None, ErrorCode.topic_authorization_failed, None))
                else:
                    found.append((topic.name, ErrorCode.none, topic))
                continue
            if not access.allows(AclOperation.DESCRIBE, TOPIC, name):
                found.append((name, ErrorCode.topic_authorization_failed, None))
                continue
            may_create = access.allows_cluster(AclOperation.CREATE) or access.allows(
                AclOperation.CREATE, TOPIC, name
            )
            if allow_create and (may_create or coordinator.topic(name) is not None):
                error, topic = await ensure_topic(ctx, name)
            elif allow_create and ctx.services.config.auto_create_topics:
                topic = coordinator.topic(name)
                error = ErrorCode.topic_authorization_failed
            else:
                topic = coordinator.topic(name)
                error = ErrorCode.none if topic else ErrorCode.unknown_topic_or_partition
            found.append((name, error, topic))

    # Only agents this client can reach on its listener lead (any agent serves any
    # partition, and this agent is always one of them); a detached agent steps aside.
    pool = placement_pool(ctx)
    live = producers(pool)
    zone = client_zone(ctx.client_id)
    for name, error, topic in found:
        partitions = ()
        if topic is not None:
            # The leader named is where we want this client's produce traffic (a produce
            # agent of its zone, partitions spread evenly); the replicas add where Fetch
            # sends readers (cluster/placement.py).
            key = topic.topic_id.bytes
            leaders = partition_leaders(key, topic.partition_count, live, zone)
            readers = read_replicas(key, pool, zone, leaders)
            partitions = tuple(
                _partition(module, p, leader, readers[p]) for p, leader in enumerate(leaders)
            )
        topics.append(
            build(
                module.MetadataResponseTopic,
                error_code=error,
                name=name,
                topic_id=topic.topic_id if topic else _ZERO_UUID,
                is_internal=False,
                partitions=partitions,
                topic_authorized_operations=_operations(ctx, TOPIC, topic.name, TOPIC_OPERATIONS)
                if topic is not None and include_topic_operations
                else _OPERATIONS_OMITTED,
            )
        )
    brokers = tuple(
        build(
            module.MetadataResponseBroker,
            node_id=a.node_id,
            host=host,
            port=port,
            rack=a.zone or None,
        )
        for a, (host, port) in addresses(ctx, reachable(ctx))
    )
    return build(
        module.MetadataResponse,
        throttle_time=datetime.timedelta(0),
        brokers=brokers,
        cluster_id=services.cluster_id,
        controller_id=services.node_id,
        topics=tuple(topics),
        cluster_authorized_operations=_operations(ctx, CLUSTER, CLUSTER_NAME, CLUSTER_OPERATIONS)
        if include_cluster_operations
        else _OPERATIONS_OMITTED,
        error_code=ErrorCode.none,
    )


async def handle_describe_cluster(ctx: RequestContext, request: Any) -> Any:
    """DescribeCluster (KIP-700): the live agents, as Metadata lists them.

    Agents are brokers only; asking for controllers (KIP-919, endpoint type 2)
    gets UNSUPPORTED_ENDPOINT_TYPE as a Kafka broker answers. No agent is ever
    fenced, so include_fenced_brokers (v2) changes nothing.
    """
    module = response_module(DESCRIBE_CLUSTER, ctx.api_version)
    services = ctx.services
    endpoint_type = getattr(request, "endpoint_type", ENDPOINT_BROKERS)
    if endpoint_type != ENDPOINT_BROKERS:
        return build(
            module.DescribeClusterResponse,
            throttle_time=datetime.timedelta(0),
            error_code=ErrorCode.unsupported_endpoint_type,
            error_message=f"endpoint type {endpoint_type} is not served here: "
            "Driftlog agents are brokers (endpoint type 1) and have no controllers",
            endpoint_type=endpoint_type,
            cluster_id=services.cluster_id,
            controller_id=-1,
            brokers=(),
        )
    brokers = tuple(
        build(
            module.DescribeClusterBroker,
            broker_id=a.node_id,
            host=host,
            port=port,
            rack=a.zone or None,
            is_fenced=False,
        )
        for a, (host, port) in addresses(ctx, reachable(ctx))
    )
    return build(
        module.DescribeClusterResponse,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        error_message=None,
        endpoint_type=ENDPOINT_BROKERS,
        cluster_id=services.cluster_id,
        # Metadata names this agent as controller too: admin requests sent to it work.
        controller_id=services.node_id,
        brokers=brokers,
        cluster_authorized_operations=_operations(ctx, CLUSTER, CLUSTER_NAME, CLUSTER_OPERATIONS)
        if request.include_cluster_authorized_operations
        else _OPERATIONS_OMITTED,
    )
