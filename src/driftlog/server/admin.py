"""Topic administration: CreateTopics, DeleteTopics, CreatePartitions, and configs.

Every unknown topic gets UNKNOWN_TOPIC_OR_PARTITION and every invalid config
INVALID_CONFIG, with a message; nothing answers NO_ERROR without doing the work.

With an authorizer each topic or config resource is checked before anything else
about it, with Kafka's mapping (ControllerApis, ConfigHelper): CreateTopics needs
CREATE on the cluster or the topic (and DESCRIBE_CONFIGS on the topic to see its
configs), DeleteTopics DELETE (on the cluster or the topic; without DESCRIBE a topic's
existence is not revealed), CreatePartitions ALTER, DeleteRecords DELETE on the topic;
DescribeConfigs DESCRIBE_CONFIGS and (Incremental)AlterConfigs ALTER_CONFIGS on the
topic, or on the cluster for a broker. A denied resource gets TOPIC_, GROUP_ or
CLUSTER_AUTHORIZATION_FAILED alone; the others in the request go ahead.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CoordinatorError
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import AclOperation
from driftlog.server import broker_configs
from driftlog.server.access import GROUP, TOPIC, Access
from driftlog.server.context import RequestContext
from driftlog.server.metadata import topic_name_error
from driftlog.topic_config import (
    BROKER_SYNONYMS,
    DYNAMIC_BROKER_CONFIGS,
    ConfigError,
    ConfigSource,
    ConfigType,
    Described,
    Synonym,
    apply_list_op,
    defaults,
    describe,
    validate_changes,
)

CREATE_TOPICS = 19
DELETE_TOPICS = 20
DELETE_RECORDS = 21
DESCRIBE_CONFIGS = 32
ALTER_CONFIGS = 33
CREATE_PARTITIONS = 37
INCREMENTAL_ALTER_CONFIGS = 44

# ConfigResource.Type ids.
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
RESOURCE_BROKER_LOGGER = 8
RESOURCE_CLIENT_METRICS = 16
RESOURCE_GROUP = 32
MAX_PARTITIONS = 10_000
_NO_THROTTLE = datetime.timedelta(0)
# Errors.message() of Kafka's authorization errors, which ApiError(error) reports.
TOPIC_DENIED_MESSAGE = "Topic authorization failed."
_DENIED_MESSAGES = {
    ErrorCode.topic_authorization_failed: TOPIC_DENIED_MESSAGE,
    ErrorCode.group_authorization_failed: "Group authorization failed.",
    ErrorCode.cluster_authorization_failed: "Cluster authorization failed.",
}


def config_denial(
    access: Access, operation: AclOperation, resource_type: int, name: str
) -> ErrorCode | None:
    """DESCRIBE_CONFIGS or ALTER_CONFIGS on a config resource (ConfigHelper and
    ControllerApis.authorizeAlterResource): the error if denied, else None. Broker-wide
    resources are the cluster's; a type Kafka does not authorize is left to the handler."""
    if resource_type in (RESOURCE_BROKER, RESOURCE_BROKER_LOGGER, RESOURCE_CLIENT_METRICS):
        allowed, denied = access.allows_cluster(operation), ErrorCode.cluster_authorization_failed
    elif resource_type == RESOURCE_TOPIC:
        allowed = access.allows(operation, TOPIC, name)
        denied = ErrorCode.topic_authorization_failed
    elif resource_type == RESOURCE_GROUP:
        allowed = access.allows(operation, GROUP, name)
        denied = ErrorCode.group_authorization_failed
    else:
        return None
    return None if allowed else denied


async def handle_create_topics(ctx: RequestContext, request: Any) -> Any:
    module = response_module(CREATE_TOPICS, ctx.api_version)
    services = ctx.services
    topic_defaults = broker_configs.topic_defaults(services)
    access = ctx.access
    # ControllerApis.createTopics: CREATE on the cluster covers every topic.
    may_create_all = access.allows_cluster(AclOperation.CREATE)
    results = []
    for topic in request.topics:
        configs = {c.name: c.value for c in topic.configs}
        count = topic.num_partitions
        if topic.assignments:
            count = len(topic.assignments)
        elif count == -1:
            count = services.config.default_partitions
        error, message = ErrorCode.none, None
        # Whether the configs may be shown: ReplicationControlManager.createTopic answers
        # TOPIC_AUTHORIZATION_FAILED in topic_config_error_code instead.
        configs_visible = access.allows(AclOperation.DESCRIBE_CONFIGS, TOPIC, topic.name)
        if not (may_create_all or access.allows(AclOperation.CREATE, TOPIC, topic.name)):
            # Before any other check: a denied principal learns nothing of the topic.
            error, message = ErrorCode.topic_authorization_failed, "Authorization failed."
        elif (name_error := topic_name_error(topic.name)) is not None:
            error, message = ErrorCode.invalid_topic_exception, name_error
        elif services.coordinator.topic(topic.name) is not None:
            error, message = ErrorCode.topic_already_exists, f"topic {topic.name!r} exists"
        elif not 1 <= count <= MAX_PARTITIONS:
            error, message = ErrorCode.invalid_partitions, f"partition count {count} not allowed"
        elif topic.replication_factor == 0 or topic.replication_factor < -1:
            error, message = ErrorCode.invalid_replication_factor, "replication factor below 1"
        elif topic.assignments and (count_error := _create_assignment_error(ctx, topic)):
            error, message = count_error
        elif any(v is None for v in configs.values()):
            error, message = ErrorCode.invalid_config, "null config value"
        stored: dict[str, str] = {}
        if error == ErrorCode.none:
            try:
                checked = validate_changes(configs, {}, defaults(topic_defaults))
                stored = {k: v for k, v in checked.items() if v is not None}
            except ConfigError as e:
                error, message = ErrorCode.invalid_config, str(e)
        topic_id = uuid.UUID(int=0)
        if error == ErrorCode.none and not request.validate_only:
            try:
                error, info = await services.coordinator.create_topic(topic.name, count, stored)
            except CoordinatorError as e:
                error, message, info = ErrorCode.request_timed_out, str(e), None
            if info is not None:
                topic_id = info.topic_id
        shown = error == ErrorCode.none and configs_visible
        described: tuple[Any, ...] | None = None if error != ErrorCode.none else ()
        if shown and hasattr(module, "CreatableTopicConfigs"):
            described = tuple(
                build(
                    module.CreatableTopicConfigs,
                    name=entry.name,
                    value=entry.value,
                    read_only=False,
                    config_source=entry.source,
                    is_sensitive=False,
                )
                for entry in describe(stored, topic_defaults)
            )
        hidden = error == ErrorCode.none and not configs_visible
        results.append(
            build(
                module.CreatableTopicResult,
                name=topic.name,
                topic_id=topic_id,
                error_code=error,
                error_message=message,
                topic_config_error_code=ErrorCode.topic_authorization_failed.value if hidden else 0,
                num_partitions=count if shown else -1,
                replication_factor=1 if shown else -1,
                configs=described,
            )
        )
    return build(module.CreateTopicsResponse, throttle_time=_NO_THROTTLE, topics=tuple(results))


def _live_node_ids(ctx: RequestContext) -> set[int]:
    return {a.node_id for a in ctx.services.membership.live}


def _replica_lists_error(
    replica_lists: Sequence[Sequence[int]], live: set[int], replicas: int | None = None
) -> str | None:
    """Why manual replica lists are invalid (KRaft's validateManualPartitionAssignment), or None.

    Every agent serves every partition, so an accepted assignment changes nothing;
    it is still checked as Kafka does, so tools that send one get Kafka's answers.
    """
    for brokers in replica_lists:
        if not brokers:
            return "The manual partition assignment includes an empty replica list."
        seen: set[int] = set()
        for broker in sorted(brokers):
            if broker not in live:
                return (
                    f"The manual partition assignment includes broker {broker}, but no such "
                    f"broker is registered (live brokers: {sorted(live)})."
                )
            if broker in seen:
                return (
                    f"The manual partition assignment includes the broker {broker} more than once."
                )
            seen.add(broker)
        if replicas is not None and len(brokers) != replicas:
            return (
                f"The manual partition assignment includes a partition with {len(brokers)} "
                "replica(s), but this is not consistent with previous partitions, which have "
                f"{replicas} replica(s)."
            )
        replicas = len(brokers)
    return None


def _create_assignment_error(ctx: RequestContext, topic: Any) -> tuple[ErrorCode, str] | None:
    """CreateTopics with `assignments`: Kafka's checks and messages, or None when valid."""
    if topic.replication_factor != -1 or topic.num_partitions != -1:
        return (
            ErrorCode.invalid_request,
            "Both numPartitions or replicationFactor and replicasAssignments were set. "
            "Both cannot be used at the same time.",
        )
    by_index: dict[int, Sequence[int]] = {}
    for assignment in topic.assignments:
        if assignment.partition_index in by_index:
            return (
                ErrorCode.invalid_replica_assignment,
                f"Found multiple manual partition assignments for partition "
                f"{assignment.partition_index}",
            )
        by_index[assignment.partition_index] = assignment.broker_ids
    if sorted(by_index) != list(range(len(by_index))):
        return (
            ErrorCode.invalid_replica_assignment,
            "partitions should be a consecutive 0-based integer sequence",
        )
    if len(by_index) > MAX_PARTITIONS:
        return ErrorCode.invalid_partitions, f"at most {MAX_PARTITIONS} partitions"
    lists = [by_index[i] for i in range(len(by_index))]
    if (reason := _replica_lists_error(lists, _live_node_ids(ctx))) is not None:
        return ErrorCode.invalid_replica_assignment, reason
    return None


async def handle_delete_records(ctx: RequestContext, request: Any) -> Any:
    """DeleteRecords: move each partition's log start (offset -1: to the high watermark).

    The records before it become unreadable at once (ListOffsets earliest and Fetch
    follow the new log start); their bytes go when garbage collection runs.
    """
    module = response_module(DELETE_RECORDS, ctx.api_version)
    coordinator = ctx.services.coordinator
    wanted: list[tuple[uuid.UUID, int, int]] = []
    answers: dict[tuple[str, int], tuple[ErrorCode, int]] = {}
    for t in request.topics:
        topic = coordinator.topic(t.name)
        deletable = ctx.access.allows(AclOperation.DELETE, TOPIC, t.name)
        for p in t.partitions:
            if not deletable:
                answers[(t.name, p.partition_index)] = (ErrorCode.topic_authorization_failed, -1)
            elif topic is None or not 0 <= p.partition_index < topic.partition_count:
                answers[(t.name, p.partition_index)] = (ErrorCode.unknown_topic_or_partition, -1)
            elif p.offset < -1:
                answers[(t.name, p.partition_index)] = (ErrorCode.offset_out_of_range, -1)
            else:
                wanted.append((topic.topic_id, p.partition_index, p.offset))
    if wanted:
        try:
            results = await coordinator.delete_records(wanted)
        except CoordinatorError:
            results = [(ErrorCode.request_timed_out, -1)] * len(wanted)  # retriable
        by_key = {(tid, p): r for (tid, p, _), r in zip(wanted, results, strict=True)}
        for t in request.topics:
            topic = coordinator.topic(t.name)
            for p in t.partitions:
                if topic is not None and (topic.topic_id, p.partition_index) in by_key:
                    answers[(t.name, p.partition_index)] = by_key[
                        (topic.topic_id, p.partition_index)
                    ]
    topics = tuple(
        build(
            module.DeleteRecordsTopicResult,
            name=t.name,
            partitions=tuple(
                build(
                    module.DeleteRecordsPartitionResult,
                    partition_index=p.partition_index,
                    low_watermark=answers.get((t.name, p.partition_index), (0, -1))[1],
                    error_code=answers.get(
                        (t.name, p.partition_index), (ErrorCode.unknown_topic_or_partition, -1)
                    )[0],
                )
                for p in t.partitions
            ),
        )
        for t in request.topics
    )
    return build(module.DeleteRecordsResponse, throttle_time=_NO_THROTTLE, topics=topics)


async def handle_delete_topics(ctx: RequestContext, request: Any) -> Any:
    module = response_module(DELETE_TOPICS, ctx.api_version)
    coordinator = ctx.services.coordinator
    if hasattr(request, "topic_names"):
        targets: list[tuple[str | None, uuid.UUID | None]] = [
            (name, None) for name in request.topic_names
        ]
    else:
        targets = [(t.name, t.topic_id) for t in request.topics]
    access = ctx.access
    # ControllerApis.deleteTopics: DELETE on the cluster covers every topic.
    may_delete_all = access.allows_cluster(AclOperation.DELETE)

    def may(operation: AclOperation, topic_name: str) -> bool:
        return may_delete_all or access.allows(operation, TOPIC, topic_name)

    results = []
    for name, topic_id in targets:
        if name is not None:
            topic = coordinator.topic(name)
        else:
            topic = coordinator.topic_by_id(topic_id) if topic_id is not None else None
        shown_name, shown_id = (topic.name, topic.topic_id) if topic else (name, topic_id)
        message = None
        if name is not None and not may(AclOperation.DESCRIBE, name):
            # Named but not describable: denied whether or not it exists, id not revealed.
            error, message = ErrorCode.topic_authorization_failed, TOPIC_DENIED_MESSAGE
            shown_id = None
        elif topic is None:
            error = (
                ErrorCode.unknown_topic_or_partition
                if name is not None
                else ErrorCode.unknown_topic_id
            )
        elif not may(AclOperation.DELETE, topic.name):
            error, message = ErrorCode.topic_authorization_failed, TOPIC_DENIED_MESSAGE
            if name is None and not may(AclOperation.DESCRIBE, topic.name):
                shown_name = None  # asked by id: the name stays hidden from who cannot see it
            if name is not None:
                shown_id = None
        else:
            try:
                error = await coordinator.delete_topic(topic.name)
            except CoordinatorError:
                error = ErrorCode.request_timed_out  # retriable: the writer is unreachable
        results.append(
            build(
                module.DeletableTopicResult,
                name=shown_name,
                topic_id=shown_id or uuid.UUID(int=0),
                error_code=error,
                error_message=message,
            )
        )
    return build(module.DeleteTopicsResponse, throttle_time=_NO_THROTTLE, responses=tuple(results))


async def handle_create_partitions(ctx: RequestContext, request: Any) -> Any:
    module = response_module(CREATE_PARTITIONS, ctx.api_version)
    coordinator = ctx.services.coordinator
    results = []
    for topic in request.topics:
        info = coordinator.topic(topic.name)
        message = None
        if not ctx.access.allows(AclOperation.ALTER, TOPIC, topic.name):
            error = ErrorCode.topic_authorization_failed  # before existence, as Kafka
        elif info is None:
            error, message = ErrorCode.unknown_topic_or_partition, f"no topic {topic.name!r}"
        elif topic.count <= info.partition_count:
            error = ErrorCode.invalid_partitions
            message = f"topic has {info.partition_count} partitions; {topic.count} is not more"
        elif topic.count > MAX_PARTITIONS:
            error, message = ErrorCode.invalid_partitions, f"at most {MAX_PARTITIONS} partitions"
        elif topic.assignments is not None and (
            reason := _new_partitions_assignment_error(
                ctx, topic.count - info.partition_count, topic.assignments
            )
        ):
            error, message = ErrorCode.invalid_replica_assignment, reason
        elif request.validate_only:
            error = ErrorCode.none
        else:
            try:
                error = await coordinator.create_partitions(topic.name, topic.count)
            except CoordinatorError:
                error = ErrorCode.request_timed_out  # retriable: the writer is unreachable
        results.append(
            build(
                module.CreatePartitionsTopicResult,
                name=topic.name,
                error_code=error,
                error_message=message,
            )
        )
    return build(
        module.CreatePartitionsResponse, throttle_time=_NO_THROTTLE, results=tuple(results)
    )


def _new_partitions_assignment_error(
    ctx: RequestContext, additional: int, assignments: Sequence[Any]
) -> str | None:
    """CreatePartitions with assignments: one replica list per new partition (Kafka's checks).

    Kafka also compares the lists' length with the topic's replication factor;
    Driftlog keeps no replication factor, so the lists need only agree together.
    """
    if len(assignments) != additional:
        return (
            f"Attempted to add {additional} additional partition(s), but only "
            f"{len(assignments)} assignment(s) were specified."
        )
    return _replica_lists_error([a.broker_ids for a in assignments], _live_node_ids(ctx))


async def handle_describe_configs(ctx: RequestContext, request: Any) -> Any:
    """Every config of the resource with its source; synonyms and documentation when asked."""
    module = response_module(DESCRIBE_CONFIGS, ctx.api_version)
    services = ctx.services
    with_synonyms = bool(getattr(request, "include_synonyms", False))
    with_documentation = bool(getattr(request, "include_documentation", False))
    results = []
    for resource in request.resources:
        wanted = set(resource.configuration_keys) if resource.configuration_keys else None
        error, message = ErrorCode.none, None
        entries: list[tuple[Described, bool]] = []
        denied = config_denial(
            ctx.access,
            AclOperation.DESCRIBE_CONFIGS,
            resource.resource_type,
            resource.resource_name,
        )
        if denied is not None:
            error, message = denied, _DENIED_MESSAGES[denied]
        elif resource.resource_type == RESOURCE_TOPIC:
            topic = services.coordinator.topic(resource.resource_name)
            if topic is None:
                error = ErrorCode.unknown_topic_or_partition
                message = f"no topic {resource.resource_name!r}"
            else:
                described = describe(topic.configs, broker_configs.topic_defaults(services))
                entries.extend((entry, False) for entry in described)
        elif resource.resource_type == RESOURCE_BROKER:
            if resource.resource_name not in ("", str(services.node_id)):
                error = ErrorCode.invalid_request
                message = f"unknown broker {resource.resource_name!r}"
            else:
                entries.extend(_broker_entries(ctx))
        else:
            error = ErrorCode.invalid_request
            message = f"resource type {resource.resource_type} is not supported"
        configs = tuple(
            build(
                module.DescribeConfigsResourceResult,
                name=entry.name,
                value=entry.value,
                read_only=read_only,
                config_source=entry.source,
                is_default=entry.source == ConfigSource.DEFAULT_CONFIG,
                is_sensitive=False,
                synonyms=tuple(
                    build(
                        module.DescribeConfigsSynonym, name=s.name, value=s.value, source=s.source
                    )
                    for s in entry.synonyms
                )
                if with_synonyms
                else (),
                config_type=entry.type,
                documentation=entry.documentation if with_documentation else None,
            )
            for entry, read_only in entries
            if wanted is None or entry.name in wanted
        )
        results.append(
            build(
                module.DescribeConfigsResult,
                error_code=error,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
                configs=configs,
            )
        )
    return build(module.DescribeConfigsResponse, throttle_time=_NO_THROTTLE, results=tuple(results))


# Types of the broker configs that are not a topic config's default.
_BROKER_TYPES: Mapping[str, ConfigType] = {
    "auto.create.topics.enable": ConfigType.BOOLEAN,
    "num.partitions": ConfigType.INT,
    "default.replication.factor": ConfigType.INT,
    "offsets.topic.replication.factor": ConfigType.SHORT,
    "max.connections": ConfigType.INT,
}


def _broker_entries(ctx: RequestContext) -> list[tuple[Described, bool]]:
    """This agent's broker configs: (entry, read_only), dynamic values first in synonyms."""
    entries = []
    for name, chain in sorted(broker_configs.broker_values(ctx.services).items()):
        spec = BROKER_SYNONYMS.get(name)
        if spec is not None:
            config_type = spec.type
            documentation = f"The broker default of topic config {spec.name}. {spec.documentation}"
        else:
            config_type = _BROKER_TYPES[name]
            documentation = "Set from the agent's command line."
        if name in DYNAMIC_BROKER_CONFIGS:
            documentation += (
                " Dynamic, per broker or cluster-wide (stored in the coordinator; every agent"
                " applies a change within a heartbeat)."
            )
        synonyms = tuple(Synonym(name, value, source) for value, source in chain)
        value, source = chain[0]
        described = Described(name, value, source, config_type, documentation, synonyms)
        entries.append((described, name not in DYNAMIC_BROKER_CONFIGS))
    return entries


def _alter_denial(ctx: RequestContext, resource: Any) -> tuple[ErrorCode, str | None]:
    """ALTER_CONFIGS on the resource (ControllerApis.authorizeAlterResource), checked
    before its configs are looked at."""
    denied = config_denial(
        ctx.access, AclOperation.ALTER_CONFIGS, resource.resource_type, resource.resource_name
    )
    if denied is None:
        return ErrorCode.none, None
    return denied, _DENIED_MESSAGES[denied]


def _preflight(configs: Sequence[Any], *, incremental: bool) -> tuple[ErrorCode, str | None]:
    """Kafka's checks before any resource is touched: duplicate keys, null values to set."""
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        return ErrorCode.invalid_request, "Error due to duplicate config keys"
    nulls = [
        c.name
        for c in configs
        if c.value is None and not (incremental and c.config_operation == OP_DELETE)
    ]
    if nulls:
        return ErrorCode.invalid_request, "Null value not supported for : " + ", ".join(nulls)
    return ErrorCode.none, None


async def _alter_broker(
    ctx: RequestContext, name: str, changes: dict[str, str | None], validate_only: bool
) -> tuple[ErrorCode, str | None]:
    """Set (value) or remove (None) a broker resource's dynamic configs (this agent's own
    or the cluster-wide default): all or none, stored before they apply."""
    services = ctx.services
    error, message = broker_configs.check_resource(services, name)
    if error == ErrorCode.none:
        # A delete of a config this agent never applies is refused too, as in Kafka.
        error, message = broker_configs.validate(changes)
    if error != ErrorCode.none or validate_only:
        return error, message
    try:
        stored = await services.coordinator.backend.load_broker_configs()
        current = dict(stored.get(name, {}))
        for config, value in changes.items():
            if value is None:
                current.pop(config, None)
            else:
                current[config] = value
        await services.coordinator.backend.put_broker_configs(name, current)
    except CoordinatorError as e:
        return ErrorCode.request_timed_out, f"the coordinator did not store it: {e}"
    broker_configs.apply_stored(services, {**stored, name: current})
    return ErrorCode.none, None


async def _alter(
    ctx: RequestContext, resource: Any, changes: dict[str, str | None], validate_only: bool
) -> tuple[ErrorCode, str | None]:
    if resource.resource_type == RESOURCE_BROKER:
        return await _alter_broker(ctx, resource.resource_name, changes, validate_only)
    if resource.resource_type != RESOURCE_TOPIC:
        return ErrorCode.invalid_request, f"Unknown resource type {resource.resource_type}"
    topic = ctx.services.coordinator.topic(resource.resource_name)
    if topic is None:
        return ErrorCode.unknown_topic_or_partition, f"no topic {resource.resource_name!r}"
    try:
        topic_defaults = defaults(broker_configs.topic_defaults(ctx.services))
        checked = validate_changes(changes, topic.configs, topic_defaults)
    except ConfigError as e:
        return ErrorCode.invalid_config, str(e)
    if validate_only:
        return ErrorCode.none, None
    try:
        return await ctx.services.coordinator.alter_topic_configs(topic.name, checked), None
    except CoordinatorError as e:
        return ErrorCode.request_timed_out, str(e)


async def handle_alter_configs(ctx: RequestContext, request: Any) -> Any:
    """AlterConfigs replaces a topic's whole config set (legacy, non-incremental semantics)."""
    module = response_module(ALTER_CONFIGS, ctx.api_version)
    responses = []
    for resource in request.resources:
        changes: dict[str, str | None] = {c.name: c.value for c in resource.configs}
        if resource.resource_type == RESOURCE_BROKER:
            existing: Iterable[str] = broker_configs.resource_values(
                ctx.services, resource.resource_name
            )
        else:
            topic = ctx.services.coordinator.topic(resource.resource_name)
            existing = topic.configs if topic is not None else ()
        for name in list(existing):
            changes.setdefault(name, None)
        error, message = _alter_denial(ctx, resource)
        if error == ErrorCode.none:
            error, message = _preflight(resource.configs, incremental=False)
        if error == ErrorCode.none:
            error, message = await _alter(ctx, resource, changes, request.validate_only)
        responses.append(
            build(
                module.AlterConfigsResourceResponse,
                error_code=error,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
            )
        )
    return build(
        module.AlterConfigsResponse, throttle_time=_NO_THROTTLE, responses=tuple(responses)
    )


# IncrementalAlterConfigs operations (KIP-339).
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3
_LIST_OPS = {OP_APPEND: "APPEND", OP_SUBTRACT: "SUBTRACT"}


def _incremental_changes(
    ctx: RequestContext, resource: Any
) -> tuple[dict[str, str | None], ErrorCode, str | None]:
    """The resource's operations as values to set (None: delete), or an error.

    APPEND and SUBTRACT become the whole new list, computed from what the topic
    stores now, as Kafka's controller does; the result is validated like a SET.
    """
    changes: dict[str, str | None] = {}
    topic = None
    if resource.resource_type == RESOURCE_TOPIC:
        topic = ctx.services.coordinator.topic(resource.resource_name)
    for config in resource.configs:
        op = config.config_operation
        if op == OP_SET:
            changes[config.name] = config.value
        elif op == OP_DELETE:
            changes[config.name] = None
        elif op in _LIST_OPS:
            if resource.resource_type == RESOURCE_BROKER:
                # ConfigAdminManager.prepareIncrementalConfigs: no broker config this
                # agent applies is a list.
                verb = _LIST_OPS[op].lower()
                return (
                    {},
                    ErrorCode.invalid_config,
                    f"Config value {verb} is not allowed for config key: {config.name}",
                )
            if topic is None:
                continue  # _alter answers UNKNOWN_TOPIC_OR_PARTITION (or the bad resource)
            try:
                current = topic.configs.get(config.name)
                changes[config.name] = apply_list_op(
                    config.name, _LIST_OPS[op], config.value, current
                )
            except ConfigError as e:
                return {}, ErrorCode.invalid_config, str(e)
        else:
            return {}, ErrorCode.invalid_request, f"Unknown operations type {op}"
    return changes, ErrorCode.none, None


async def handle_incremental_alter_configs(ctx: RequestContext, request: Any) -> Any:
    module = response_module(INCREMENTAL_ALTER_CONFIGS, ctx.api_version)
    responses = []
    for resource in request.resources:
        error, message = _alter_denial(ctx, resource)
        if error == ErrorCode.none:
            error, message = _preflight(resource.configs, incremental=True)
        if error == ErrorCode.none:
            changes, error, message = _incremental_changes(ctx, resource)
        if error == ErrorCode.none:
            error, message = await _alter(ctx, resource, changes, request.validate_only)
        responses.append(
            build(
                module.AlterConfigsResourceResponse,
                error_code=error,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
            )
        )
    return build(
        module.IncrementalAlterConfigsResponse,
        throttle_time=_NO_THROTTLE,
        responses=tuple(responses),
    )
