"""Kafka consumer-group APIs: coordinator lookup, membership, and committed offsets.

Owns the translation between the group APIs' kio entities (every version in
`GROUP_API_VERSIONS`) and `GroupCoordinator` calls for membership, or batch
coordinator calls for committed offsets. Must not hold group state, decide
protocol rules (that is `groups.machine`) or parse bytes.

In a cluster each group has one coordinating agent (`cluster/placement.py`); the others
answer NOT_COORDINATOR. Before this agent coordinates a group (JoinGroup, SyncGroup,
Heartbeat, LeaveGroup, OffsetCommit, DeleteGroups) it holds the group's claim in the
database (`_claimed`), and its offset writes carry it: while agents' membership lists
differ, two may both believe they coordinate a group, but only the last to claim it
writes. A refused write answers NOT_COORDINATOR and drops the group's state here.
TxnOffsetCommit is not fenced this way: the writer stores those offsets at EndTxn.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.cluster.placement import endpoint
from driftlog.coordinator.api import (
    CommittedOffset,
    CoordinatorError,
    GroupClaim,
    GroupFenced,
    TopicInfo,
)
from driftlog.groups.machine import (
    GroupOverview,
    GroupState,
    JoinRequest,
    JoinResult,
    LeaveResult,
    LeavingMember,
    MemberAssignment,
    ProtocolMetadata,
    SyncRequest,
    SyncResult,
)
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import AclOperation, authorized_operations
from driftlog.server.access import GROUP, TOPIC, TRANSACTIONAL_ID
from driftlog.server.context import Handler, RequestContext

OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
DELETE_GROUPS = 42

GROUP_API_VERSIONS: dict[int, tuple[int, int]] = {
    OFFSET_COMMIT: (2, 10),
    OFFSET_FETCH: (1, 10),
    FIND_COORDINATOR: (0, 6),
    JOIN_GROUP: (0, 9),
    HEARTBEAT: (0, 4),
    LEAVE_GROUP: (0, 5),
    SYNC_GROUP: (0, 5),
    DESCRIBE_GROUPS: (0, 6),
    LIST_GROUPS: (0, 5),
    DELETE_GROUPS: (0, 2),
}

OFFSET_METADATA_BYTES_MAX = 4096
"""Longest committed metadata string accepted (Kafka's offset.metadata.max.bytes)."""

# FindCoordinator key types (KIP-98 added transactions, KIP-932 share groups).
_KEY_TYPE_GROUP = 0
_KEY_TYPE_TRANSACTION = 1

_GROUP_TYPE_CLASSIC = "classic"
"""ListGroups v5 group type (KIP-848); every group here uses the classic protocol."""

_GROUP_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8)
"""READ, DELETE and DESCRIBE: what Kafka reports for a group when no authorizer is set."""

_NO_OFFSET = -1
_UNSTABLE = ErrorCode.unstable_offset_commit
_NO_LEADER_EPOCH = -1


def _ms(value: datetime.timedelta) -> int:
    return value // datetime.timedelta(milliseconds=1)


def _client_host(peer: str) -> str:
    # Kafka reports InetAddress.toString(), e.g. "/127.0.0.1".
    return "/" + peer.rsplit(":", 1)[0] if ":" in peer else "/" + peer


# FindCoordinator -------------------------------------------------------------------


async def handle_find_coordinator(ctx: RequestContext, request: Any) -> Any:
    module = response_module(FIND_COORDINATOR, ctx.api_version)
    services = ctx.services
    key_type = getattr(request, "key_type", _KEY_TYPE_GROUP)

    def find(key: str) -> dict[str, Any]:
        if key_type not in (_KEY_TYPE_GROUP, _KEY_TYPE_TRANSACTION):
            return {
                "error_code": ErrorCode.invalid_request,
                "error_message": f"unsupported coordinator key type {key_type}",
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        resource = GROUP if key_type == _KEY_TYPE_GROUP else TRANSACTIONAL_ID
        if not ctx.access.allows(AclOperation.DESCRIBE, resource, key):
            return {
                "error_code": ErrorCode.group_authorization_failed
                if resource == GROUP
                else ErrorCode.transactional_id_authorization_failed,
                "error_message": None,
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        chosen = services.group_coordinator(key)
        address = endpoint(chosen, ctx.session.listener.name)
        if address is None:
            return {
                "error_code": ErrorCode.listener_not_found,
                "error_message": f"the coordinator has no listener {ctx.session.listener.name}",
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        return {
            "error_code": ErrorCode.none,
            "error_message": None,
            "node_id": chosen.node_id,
            "host": address[0],
            "port": address[1],
        }

    if ctx.api_version >= 4:
        # KIP-699: v4+ looks up a batch of keys at once.
        coordinators = tuple(
            build(module.Coordinator, key=key, **find(key)) for key in request.coordinator_keys
        )
        return build(module.FindCoordinatorResponse, coordinators=coordinators)
    return build(module.FindCoordinatorResponse, **find(request.key))


# Claims ----------------------------------------------------------------------------


async def _claimed(ctx: RequestContext, group_id: str) -> GroupClaim | ErrorCode:
    """This agent's claim on the group, taken on its first request here (one database
    round trip per group per coordinator change); NOT_COORDINATOR if the group is
    another agent's, COORDINATOR_NOT_AVAILABLE if the database cannot be reached."""
    services = ctx.services
    if not services.owns_group(group_id):
        return ErrorCode.not_coordinator
    agent_id = services.membership.me.agent_id
    try:
        claim = await services.groups.claimed(
            group_id, lambda: services.coordinator.claim_group(group_id, agent_id)
        )
    except CoordinatorError as e:
        services.log_client_error("coordinator", ctx.api_key, f"group claim failed: {e}")
        return ErrorCode.coordinator_not_available
    return ErrorCode.not_coordinator if claim is None else claim


async def _membership_error(ctx: RequestContext, group_id: str) -> ErrorCode | None:
    """Why a membership request (join, sync, heartbeat, leave) cannot reach the group's
    state here, or None: the claim is held (or the group id is empty, which the group
    coordinator refuses itself)."""
    if not group_id:
        return None
    claim = await _claimed(ctx, group_id)
    return claim if isinstance(claim, ErrorCode) else None


# Membership ------------------------------------------------------------------------


async def handle_join_group(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    session_timeout_ms = _ms(request.session_timeout)
    # JoinGroup v0 has no rebalance timeout; Kafka uses the session timeout.
    rebalance_timeout_ms = _ms(request.rebalance_timeout) if version >= 1 else session_timeout_ms
    join = JoinRequest(
        member_id=request.member_id,
        group_instance_id=getattr(request, "group_instance_id", None),
        client_id=ctx.client_id or "",
        client_host=_client_host(ctx.peer),
        protocol_type=request.protocol_type,
        protocols=tuple(ProtocolMetadata(p.name, p.metadata) for p in request.protocols),
        session_timeout_ms=session_timeout_ms,
        rebalance_timeout_ms=rebalance_timeout_ms,
        require_known_member_id=version >= 4,
        supports_skip_assignment=version >= 9,
    )
    error = await _membership_error(ctx, request.group_id)
    if error is not None:
        result = JoinResult(error, request.member_id)
    else:
        result = await ctx.services.groups.join(request.group_id, join)
    module = response_module(JOIN_GROUP, version)
    members = tuple(
        build(
            module.JoinGroupResponseMember,
            member_id=m.member_id,
            group_instance_id=m.group_instance_id,
            metadata=m.metadata,
        )
        for m in result.members
    )
    # The protocol name is nullable only from v7; before that Kafka sends "".
    protocol_name = result.protocol_name if version >= 7 else result.protocol_name or ""
    return build(
        module.JoinGroupResponse,
        error_code=result.error,
        generation_id=result.generation_id,
        protocol_type=result.protocol_type,
        protocol_name=protocol_name,
        leader=result.leader_id,
        skip_assignment=result.skip_assignment,
        member_id=result.member_id,
        members=members,
    )


async def handle_sync_group(ctx: RequestContext, request: Any) -> Any:
    sync = SyncRequest(
        member_id=request.member_id,
        generation_id=request.generation_id,
        group_instance_id=getattr(request, "group_instance_id", None),
        protocol_type=getattr(request, "protocol_type", None),
        protocol_name=getattr(request, "protocol_name", None),
        assignments=tuple(MemberAssignment(a.member_id, a.assignment) for a in request.assignments),
    )
    error = await _membership_error(ctx, request.group_id)
    if error is not None:
        result = SyncResult(error)
    else:
        result = await ctx.services.groups.sync(request.group_id, sync)
    module = response_module(SYNC_GROUP, ctx.api_version)
    return build(
        module.SyncGroupResponse,
        error_code=result.error,
        protocol_type=result.protocol_type,
        protocol_name=result.protocol_name,
        assignment=result.assignment,
    )


async def handle_heartbeat(ctx: RequestContext, request: Any) -> Any:
    error = await _membership_error(ctx, request.group_id)
    if error is None:
        error = await ctx.services.groups.heartbeat(
            request.group_id,
            request.member_id,
            getattr(request, "group_instance_id", None),
            request.generation_id,
        )
    return build(response_module(HEARTBEAT, ctx.api_version).HeartbeatResponse, error_code=error)


async def handle_leave_group(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    module = response_module(LEAVE_GROUP, version)
    if version < 3:
        leaving: tuple[LeavingMember, ...] = (LeavingMember(request.member_id),)
    else:
        # KIP-345: v3+ removes a batch of members, static ones by instance id alone.
        leaving = tuple(LeavingMember(m.member_id, m.group_instance_id) for m in request.members)
    refused = await _membership_error(ctx, request.group_id)
    result: LeaveResult
    if refused is not None:
        result = LeaveResult(refused)
    else:
        result = await ctx.services.groups.leave(request.group_id, leaving)
    if version < 3:
        # One member and no member list: its error is the answer, as in Kafka.
        error = result.error
        if error is ErrorCode.none and result.members:
            error = result.members[0].error
        return build(module.LeaveGroupResponse, error_code=error)
    members = tuple(
        build(
            module.MemberResponse,
            member_id=m.member_id,
            group_instance_id=m.group_instance_id,
            error_code=m.error,
        )
        for m in result.members
    )
    return build(module.LeaveGroupResponse, error_code=result.error, members=members)


# Administration --------------------------------------------------------------------


async def handle_describe_groups(ctx: RequestContext, request: Any) -> Any:
    """DESCRIBE on each group (KafkaApis.handleDescribeGroupsRequest): a denied group gets
    GROUP_AUTHORIZATION_FAILED alone; v3+ reports the principal's operations on each
    group described without error (KIP-430), from the ACLs."""
    try:
        return await _describe_groups(ctx, request)
    except CoordinatorError:
        module = response_module(DESCRIBE_GROUPS, ctx.api_version)
        return build(
            module.DescribeGroupsResponse,
            groups=tuple(
                _group_error(
                    module,
                    group_id,
                    ErrorCode.coordinator_not_available
                    if ctx.access.allows(AclOperation.DESCRIBE, GROUP, group_id)
                    else ErrorCode.group_authorization_failed,
                )
                for group_id in request.groups
            ),
        )


_OPERATIONS_OMITTED = -2147483648
"""KIP-430: authorized operations not reported (Integer.MIN_VALUE)."""


def _group_error(module: Any, group_id: str, error: ErrorCode) -> Any:
    """DescribeGroupsResponse.groupError: no state, no members, operations omitted."""
    return build(
        module.DescribedGroup,
        error_code=error,
        group_id=group_id,
        group_state="",
        protocol_type="",
        protocol_data="",
        members=(),
        authorized_operations=_OPERATIONS_OMITTED,
    )


def _group_operations(ctx: RequestContext, group_id: str) -> int:
    """The principal's operations on the group, of those Driftlog reports (KIP-430)."""
    access = ctx.access
    candidates = [AclOperation(op) for op in range(32) if _GROUP_OPERATIONS & (1 << op)]
    return authorized_operations(
        access.authorizer, access.principal, access.host, GROUP, group_id, candidates
    )


async def _describe_groups(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    module = response_module(DESCRIBE_GROUPS, version)
    services = ctx.services
    with_operations = getattr(request, "include_authorized_operations", False)
    with_offsets: set[str] | None = None
    described: list[Any] = []
    for group_id in request.groups:
        if not ctx.access.allows(AclOperation.DESCRIBE, GROUP, group_id):
            described.append(_group_error(module, group_id, ErrorCode.group_authorization_failed))
            continue
        extra: dict[str, Any] = {}
        if with_operations:
            # Kafka sets them only on groups described without error.
            extra["authorized_operations"] = _group_operations(ctx, group_id)
        if not services.owns_group(group_id):
            described.append(_group_error(module, group_id, ErrorCode.not_coordinator))
            continue
        description = services.groups.describe(group_id)
        if description is not None:
            members = tuple(
                build(
                    module.DescribedGroupMember,
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    client_id=m.client_id,
                    client_host=m.client_host,
                    member_metadata=m.metadata,
                    member_assignment=m.assignment,
                )
                for m in description.members
            )
            described.append(
                build(
                    module.DescribedGroup,
                    error_code=ErrorCode.none,
                    group_id=group_id,
                    group_state=description.state.value,
                    protocol_type=description.protocol_type,
                    protocol_data=description.protocol,
                    members=members,
                    **extra,
                )
            )
            continue
        if with_offsets is None:
            with_offsets = set(await services.coordinator.groups_with_offsets())
        if group_id in with_offsets:
            # Offsets outlive membership (and agent restarts): an Empty group.
            state, error, message = GroupState.EMPTY, ErrorCode.none, None
        elif version >= 6:
            # KIP-1043: v6+ says the group does not exist instead of calling it Dead.
            state, error = GroupState.DEAD, ErrorCode.group_id_not_found
            message = f"Group {group_id} not found."
            extra.pop("authorized_operations", None)
        else:
            state, error, message = GroupState.DEAD, ErrorCode.none, None
        described.append(
            build(
                module.DescribedGroup,
                error_code=error,
                error_message=message,
                group_id=group_id,
                group_state=state.value,
                protocol_type="",
                protocol_data="",
                members=(),
                **extra,
            )
        )
    return build(module.DescribeGroupsResponse, groups=tuple(described))


async def handle_list_groups(ctx: RequestContext, request: Any) -> Any:
    try:
        return await _list_groups(ctx, request)
    except CoordinatorError:
        module = response_module(LIST_GROUPS, ctx.api_version)
        return build(
            module.ListGroupsResponse, error_code=ErrorCode.coordinator_not_available, groups=()
        )


async def _list_groups(ctx: RequestContext, request: Any) -> Any:
    """KafkaApis.handleListGroupsRequest: every group with DESCRIBE on the cluster, else
    only the groups the principal may DESCRIBE."""
    module = response_module(LIST_GROUPS, ctx.api_version)
    services = ctx.services
    access = ctx.access
    sees_all = access.allows_cluster(AclOperation.DESCRIBE)
    # Kafka compares states and types case-insensitively (KIP-518, KIP-848).
    states = {s.lower() for s in getattr(request, "states_filter", ())}
    types = {t.lower() for t in getattr(request, "types_filter", ())}
    overviews: list[GroupOverview] = []
    if not types or _GROUP_TYPE_CLASSIC in types:
        overviews = services.groups.list_groups()
        live = {o.group_id for o in overviews}
        overviews.extend(
            GroupOverview(group_id, "", GroupState.EMPTY)
            for group_id in await services.coordinator.groups_with_offsets()
            # Each agent lists the groups it coordinates: clients merge all agents' lists.
            if group_id not in live and services.owns_group(group_id)
        )
    groups = tuple(
        build(
            module.ListedGroup,
            group_id=o.group_id,
            protocol_type=o.protocol_type,
            group_state=o.state.value,
            group_type=_GROUP_TYPE_CLASSIC,
        )
        for o in overviews
        if (not states or o.state.value.lower() in states)
        and (sees_all or access.allows(AclOperation.DESCRIBE, GROUP, o.group_id))
    )
    return build(module.ListGroupsResponse, error_code=ErrorCode.none, groups=groups)


async def handle_delete_groups(ctx: RequestContext, request: Any) -> Any:
    """DELETE on each group (KafkaApis.handleDeleteGroupsRequest): a denied group gets
    GROUP_AUTHORIZATION_FAILED and is left alone."""
    try:
        return await _delete_groups(ctx, request)
    except CoordinatorError:
        module = response_module(DELETE_GROUPS, ctx.api_version)
        return build(
            module.DeleteGroupsResponse,
            results=tuple(
                build(
                    module.DeletableGroupResult,
                    group_id=group_id,
                    error_code=ErrorCode.coordinator_not_available
                    if ctx.access.allows(AclOperation.DELETE, GROUP, group_id)
                    else ErrorCode.group_authorization_failed,
                )
                for group_id in request.groups_names
            ),
        )


async def _delete_groups(ctx: RequestContext, request: Any) -> Any:
    module = response_module(DELETE_GROUPS, ctx.api_version)
    services = ctx.services
    with_offsets = set(await services.coordinator.groups_with_offsets())
    results: list[Any] = []
    for group_id in request.groups_names:
        if not ctx.access.allows(AclOperation.DELETE, GROUP, group_id):
            results.append(
                build(
                    module.DeletableGroupResult,
                    group_id=group_id,
                    error_code=ErrorCode.group_authorization_failed,
                )
            )
            continue
        if not services.owns_group(group_id):
            # Only the coordinating agent knows whether the group is live.
            results.append(
                build(
                    module.DeletableGroupResult,
                    group_id=group_id,
                    error_code=ErrorCode.not_coordinator,
                )
            )
            continue
        claim = await _claimed(ctx, group_id)
        if isinstance(claim, ErrorCode):
            error = claim
        else:
            error = services.groups.delete_group(group_id)
            if error is ErrorCode.group_id_not_found and group_id in with_offsets:
                error = ErrorCode.none  # only offsets are left of it
        if error is ErrorCode.none and isinstance(claim, GroupClaim):
            try:
                await services.coordinator.delete_group_offsets(group_id, claim)
            except GroupFenced:
                services.groups.fenced(claim)
                error = ErrorCode.not_coordinator
        results.append(build(module.DeletableGroupResult, group_id=group_id, error_code=error))
    return build(module.DeleteGroupsResponse, results=tuple(results))


# Committed offsets -----------------------------------------------------------------


async def handle_offset_commit(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    module = response_module(OFFSET_COMMIT, version)
    services = ctx.services
    group_error: ErrorCode
    claim: GroupClaim | ErrorCode = ErrorCode.none
    if not ctx.access.allows(AclOperation.READ, GROUP, request.group_id):
        group_error = ErrorCode.group_authorization_failed
    elif isinstance(claim := await _claimed(ctx, request.group_id), ErrorCode):
        group_error = claim
    else:
        group_error = services.groups.validate_offset_commit(
            request.group_id,
            request.member_id,
            getattr(request, "group_instance_id", None),
            request.generation_id_or_member_epoch,
        )
        if group_error is ErrorCode.group_id_not_found and version < 9:
            # Kafka answers a generation for an unknown group with ILLEGAL_GENERATION
            # before v9 and GROUP_ID_NOT_FOUND from v9 on.
            group_error = ErrorCode.illegal_generation
    by_id = version >= 10  # KIP-848: v10 names topics by id only
    unknown_topic = ErrorCode.unknown_topic_id if by_id else ErrorCode.unknown_topic_or_partition
    to_commit: list[CommittedOffset] = []
    topics: list[Any] = []
    for topic in request.topics:
        info = (
            services.coordinator.topic_by_id(topic.topic_id)
            if by_id
            else services.coordinator.topic(topic.name)
        )
        partitions: list[Any] = []
        for p in topic.partitions:
            metadata = p.committed_metadata if p.committed_metadata is not None else ""
            error: ErrorCode
            if group_error is ErrorCode.group_authorization_failed:
                error = group_error
            elif info is not None and not ctx.access.allows(AclOperation.READ, TOPIC, info.name):
                error = ErrorCode.topic_authorization_failed
            elif info is None:
                error = unknown_topic
            elif not 0 <= p.partition_index < info.partition_count:
                error = ErrorCode.unknown_topic_or_partition
            elif group_error is not ErrorCode.none:
                error = group_error
            elif len(metadata.encode()) > OFFSET_METADATA_BYTES_MAX:
                error = ErrorCode.offset_metadata_too_large
            else:
                error = ErrorCode.none
                to_commit.append(
                    CommittedOffset(
                        topic=info.name,
                        partition=p.partition_index,
                        offset=p.committed_offset,
                        leader_epoch=getattr(p, "committed_leader_epoch", _NO_LEADER_EPOCH),
                        metadata=metadata,
                    )
                )
            partitions.append(
                build(
                    module.OffsetCommitResponsePartition,
                    partition_index=p.partition_index,
                    error_code=error,
                )
            )
        topics.append(
            build(
                module.OffsetCommitResponseTopic,
                name=getattr(topic, "name", None),
                topic_id=getattr(topic, "topic_id", None),
                partitions=tuple(partitions),
            )
        )
    if to_commit and isinstance(claim, GroupClaim):
        failed: ErrorCode | None = None
        try:
            await services.coordinator.commit_offsets(request.group_id, to_commit, claim)
        except GroupFenced:
            # Another agent claimed the group since: it coordinates it now, or will once
            # membership agrees. The client looks the coordinator up again and rejoins.
            services.groups.fenced(claim)
            failed = ErrorCode.not_coordinator
        except CoordinatorError as e:
            # Retriable: the client looks the coordinator up again and re-commits.
            services.log_client_error("coordinator", OFFSET_COMMIT, f"offset commit failed: {e}")
            failed = ErrorCode.coordinator_not_available
        if failed is not None:
            topics = [
                build(
                    module.OffsetCommitResponseTopic,
                    # Each version's topic has only one of the two (v10: the id).
                    name=getattr(t, "name", None),
                    topic_id=getattr(t, "topic_id", None),
                    partitions=tuple(
                        build(
                            module.OffsetCommitResponsePartition,
                            partition_index=p.partition_index,
                            error_code=failed,
                        )
                        for p in t.partitions
                    ),
                )
                for t in topics
            ]
    return build(module.OffsetCommitResponse, topics=tuple(topics))


async def handle_offset_fetch(ctx: RequestContext, request: Any) -> Any:
    try:
        return await _offset_fetch(ctx, request)
    except CoordinatorError as e:
        ctx.services.log_client_error("coordinator", OFFSET_FETCH, f"offset fetch failed: {e}")
        module = response_module(OFFSET_FETCH, ctx.api_version)
        unavailable = ErrorCode.coordinator_not_available
        if ctx.api_version >= 8:
            groups = tuple(
                build(
                    module.OffsetFetchResponseGroup,
                    group_id=g.group_id,
                    topics=(),
                    error_code=unavailable,
                )
                for g in request.groups
            )
            return build(module.OffsetFetchResponse, groups=groups)
        return build(module.OffsetFetchResponse, topics=(), error_code=unavailable)


async def _offset_fetch(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    module = response_module(OFFSET_FETCH, version)
    denied = ErrorCode.group_authorization_failed
    if version >= 8:
        # KIP-709: v8+ fetches for a batch of groups. Classic groups check neither
        # the member id nor the member epoch of v9+ (those are for KIP-848 groups).
        groups = tuple(
            [
                build(
                    module.OffsetFetchResponseGroup,
                    group_id=g.group_id,
                    topics=await _fetch_topics(
                        ctx, module, version, g.group_id, g.topics, request.require_stable
                    ),
                    error_code=ErrorCode.none,
                )
                if ctx.access.allows(AclOperation.DESCRIBE, GROUP, g.group_id)
                else build(
                    module.OffsetFetchResponseGroup,
                    group_id=g.group_id,
                    topics=(),
                    error_code=denied,
                )
                for g in request.groups
            ]
        )
        return build(module.OffsetFetchResponse, groups=groups)
    if not ctx.access.allows(AclOperation.DESCRIBE, GROUP, request.group_id):
        return build(module.OffsetFetchResponse, topics=(), error_code=denied)
    topics = await _fetch_topics(
        ctx, module, version, request.group_id, request.topics,
        getattr(request, "require_stable", False),
    )  # fmt: skip
    return build(module.OffsetFetchResponse, topics=topics, error_code=ErrorCode.none)


async def _fetch_topics(
    ctx: RequestContext,
    module: Any,
    version: int,
    group_id: str,
    requested: Sequence[Any] | None,
    require_stable: bool = False,
) -> tuple[Any, ...]:
    """One group's committed offsets as response topics: every topic when `requested` is None.

    With `require_stable` (KIP-447, what read_committed consumers send), a partition with
    an offset committed in a transaction still open answers UNSTABLE_OFFSET_COMMIT, and
    the consumer asks again instead of starting from an offset about to change."""
    coordinator = ctx.services.coordinator
    unstable = await coordinator.pending_offsets(group_id) if require_stable else set()
    batched = version >= 8
    topic_cls = module.OffsetFetchResponseTopics if batched else module.OffsetFetchResponseTopic
    partition_cls = (
        module.OffsetFetchResponsePartitions if batched else module.OffsetFetchResponsePartition
    )
    by_id = version >= 10  # KIP-848: v10 names topics by id only

    def partition(index: int, found: CommittedOffset | None, error: ErrorCode) -> Any:
        return build(
            partition_cls,
            partition_index=index,
            committed_offset=found.offset if found else _NO_OFFSET,
            committed_leader_epoch=found.leader_epoch if found else _NO_LEADER_EPOCH,
            # Kafka stores a null commit metadata as "" and answers "" when nothing is committed.
            metadata=(found.metadata or "") if found else "",
            error_code=error,
        )

    def topic_entry(
        info: TopicInfo | None, name: str, topic_id: uuid.UUID | None
    ) -> dict[str, Any]:
        if by_id:
            return {"topic_id": info.topic_id if info is not None else topic_id}
        return {"name": name}

    if requested is None:
        by_topic: dict[str, list[CommittedOffset]] = {}
        for committed in await coordinator.fetch_offsets(group_id, None):
            by_topic.setdefault(committed.topic, []).append(committed)
        entries: list[Any] = []
        for name, offsets in by_topic.items():
            info = coordinator.topic(name)
            if by_id and info is None:
                continue  # a deleted topic has no id to report
            if not ctx.access.allows(AclOperation.DESCRIBE, TOPIC, name):
                continue  # as Kafka: topics the principal may not describe are left out
            entries.append(
                build(
                    topic_cls,
                    **topic_entry(info, name, None),
                    partitions=tuple(
                        partition(c.partition, None, _UNSTABLE)
                        if (name, c.partition) in unstable
                        else partition(c.partition, c, ErrorCode.none)
                        for c in sorted(offsets, key=lambda c: c.partition)
                    ),
                )
            )
        return tuple(entries)

    # Each requested topic with its name, or None for a v10 topic id we do not know.
    resolved: list[tuple[Any, TopicInfo | None, str | None]] = []
    for t in requested:
        if by_id:
            known = coordinator.topic_by_id(t.topic_id)
            resolved.append((t, known, known.name if known is not None else None))
        else:
            resolved.append((t, None, t.name))
    wanted = [(n, p) for t, _, n in resolved if n is not None for p in t.partition_indexes]
    committed_by_partition = {
        (c.topic, c.partition): c for c in await coordinator.fetch_offsets(group_id, wanted)
    }
    entries = []
    for t, known, topic_name in resolved:
        if topic_name is None:
            partitions = tuple(
                partition(p, None, ErrorCode.unknown_topic_id) for p in t.partition_indexes
            )
        elif not ctx.access.allows(AclOperation.DESCRIBE, TOPIC, topic_name):
            partitions = tuple(
                partition(p, None, ErrorCode.topic_authorization_failed)
                for p in t.partition_indexes
            )
        else:
            partitions = tuple(
                partition(p, None, _UNSTABLE)
                if (topic_name, p) in unstable
                else partition(p, committed_by_partition.get((topic_name, p)), ErrorCode.none)
                for p in t.partition_indexes
            )
        entries.append(
            build(
                topic_cls,
                **topic_entry(known, topic_name or "", getattr(t, "topic_id", None)),
                partitions=partitions,
            )
        )
    return tuple(entries)


GROUP_HANDLERS: dict[int, Handler] = {
    OFFSET_COMMIT: handle_offset_commit,
    OFFSET_FETCH: handle_offset_fetch,
    FIND_COORDINATOR: handle_find_coordinator,
    JOIN_GROUP: handle_join_group,
    HEARTBEAT: handle_heartbeat,
    LEAVE_GROUP: handle_leave_group,
    SYNC_GROUP: handle_sync_group,
    DESCRIBE_GROUPS: handle_describe_groups,
    LIST_GROUPS: handle_list_groups,
    DELETE_GROUPS: handle_delete_groups,
}
