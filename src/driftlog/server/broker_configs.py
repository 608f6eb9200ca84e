"""Dynamic broker configs (KIP-226): validate, apply, describe.

AlterConfigs and IncrementalAlterConfigs on a BROKER resource change the configs in
`topic_config.DYNAMIC_BROKER_CONFIGS`, which agents read live: on the resource of
this agent's node id (that broker's own values) or on the empty name (the
cluster-wide default, what every agent uses where it has no value of its own). Both
are stored in the coordinator database (`broker_configs`), so they survive restarts;
each agent reloads them every heartbeat (`refresh`), so a cluster-wide change
reaches every agent within about a heartbeat, and the agent that took the change
applies it at once. A broker's own value wins over the default, which wins over the
command line (sources DYNAMIC_BROKER_CONFIG, DYNAMIC_DEFAULT_BROKER_CONFIG,
STATIC_BROKER_CONFIG, as Kafka reports them).

Refusals follow Kafka's ConfigAdminManager: INVALID_REQUEST with a message
naming the configs, and the whole resource is refused (nothing is applied).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CoordinatorError
from driftlog.topic_config import (
    BROKER_KAFKA_DEFAULTS,
    BROKER_SYNONYMS,
    DYNAMIC_BROKER_CONFIGS,
    TOPIC_CONFIGS,
    ConfigSource,
    broker_chain,
    static_source,
)

if TYPE_CHECKING:
    from driftlog.server.context import AgentServices

log = logging.getLogger(__name__)

_STATIC_MAX_MESSAGE_BYTES = int(TOPIC_CONFIGS["max.message.bytes"].default)


CLUSTER_DEFAULT = ""  # the resource name of the cluster-wide default


@dataclasses.dataclass(slots=True)
class _State:
    static_max_connections: int
    own: dict[str, str] = dataclasses.field(default_factory=dict)  # this broker's
    cluster: dict[str, str] = dataclasses.field(default_factory=dict)  # the default
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # what applies
    message_max_bytes: int = _STATIC_MAX_MESSAGE_BYTES


# One entry per agent (tests may run several in one process); weak so an
# agent that is gone takes its overrides with it.
_states: weakref.WeakKeyDictionary[AgentServices, _State] = weakref.WeakKeyDictionary()


def _state(agent: AgentServices) -> _State:
    state = _states.get(agent)
    if state is None:
        state = _State(static_max_connections=agent.config.max_connections)
        _states[agent] = state
    return state


def overrides(agent: AgentServices) -> Mapping[str, str]:
    """The dynamic values that apply to this agent (name to value)."""
    state = _states.get(agent)
    return state.overrides if state is not None else {}


def resource_values(agent: AgentServices, name: str) -> dict[str, str]:
    """The dynamic values stored on one resource: this broker's own, or the default."""
    state = _state(agent)
    return dict(state.cluster if name == CLUSTER_DEFAULT else state.own)


def _dynamic_chain(agent: AgentServices, name: str) -> list[tuple[str, ConfigSource]]:
    """A config's dynamic values, highest priority first."""
    state = _states.get(agent)
    if state is None:
        return []
    chain = []
    if name in state.own:
        chain.append((state.own[name], ConfigSource.DYNAMIC_BROKER_CONFIG))
    if name in state.cluster:
        chain.append((state.cluster[name], ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG))
    return chain


def message_max_bytes(agent: AgentServices) -> int:
    """The largest batch a topic without its own max.message.bytes accepts."""
    state = _states.get(agent)
    return state.message_max_bytes if state is not None else _STATIC_MAX_MESSAGE_BYTES


def static_values(agent: AgentServices) -> dict[str, str]:
    """What each dynamic config is without an override (from the command line)."""
    state = _states.get(agent)
    max_connections = state.static_max_connections if state else agent.config.max_connections
    return {
        "message.max.bytes": str(_STATIC_MAX_MESSAGE_BYTES),
        "max.connections": str(max_connections),
    }


BrokerValues = dict[str, list[tuple[str, ConfigSource]]]


def topic_defaults(agent: AgentServices) -> BrokerValues:
    """The broker configs that supply topic config defaults, set on this agent.

    Each maps to its values and sources, highest priority first: a dynamic value,
    then the static one. The agent cannot tell an explicit --log-retention-ms from
    the default, so a value equal to Kafka's default counts as Kafka's default
    (DEFAULT_CONFIG) and any other as set on the command line (STATIC_BROKER_CONFIG).
    Broker configs not listed here have their topic config's catalogue default.
    """
    config = agent.config
    static = {
        "log.retention.ms": str(config.log_retention_ms),
        "log.retention.bytes": str(config.log_retention_bytes),
        "message.max.bytes": str(_STATIC_MAX_MESSAGE_BYTES),
    }
    values = {name: [(value, static_source(name, value))] for name, value in static.items()}
    values["message.max.bytes"][:0] = _dynamic_chain(agent, "message.max.bytes")
    return values


def broker_values(agent: AgentServices) -> BrokerValues:
    """Every broker config DescribeConfigs lists for this agent, as in `topic_defaults`."""
    config = agent.config
    static = {
        "auto.create.topics.enable": str(config.auto_create_topics).lower(),
        "num.partitions": str(config.default_partitions),
        "default.replication.factor": "1",
        # Kafka's default is 3; here object storage keeps the copies.
        "offsets.topic.replication.factor": "1",
        "max.connections": static_values(agent)["max.connections"],
    }
    values: BrokerValues = {}
    for name, value in static.items():
        source = (
            ConfigSource.DEFAULT_CONFIG
            if value == BROKER_KAFKA_DEFAULTS[name]
            else ConfigSource.STATIC_BROKER_CONFIG
        )
        values[name] = [(value, source)]
    values["max.connections"][:0] = _dynamic_chain(agent, "max.connections")
    from_topics = topic_defaults(agent)
    for name, spec in BROKER_SYNONYMS.items():
        values[name] = [(s.value, s.source) for s in broker_chain(spec, from_topics)]
    return values


def check_resource(agent: AgentServices, name: str) -> tuple[ErrorCode, str | None]:
    """Whether a BROKER resource name may be altered here (Kafka's wording)."""
    if name == CLUSTER_DEFAULT:
        return ErrorCode.none, None
    try:
        node_id = int(name)
    except ValueError:
        return ErrorCode.invalid_request, f"Node id must be an integer, but it is: {name}"
    if node_id != agent.node_id:
        return (
            ErrorCode.invalid_request,
            f"Unexpected broker id, expected {agent.node_id}, but received {name}",
        )
    return ErrorCode.none, None


def validate(changes: Mapping[str, str | None]) -> tuple[ErrorCode, str | None]:
    """Refuse configs this agent cannot change at runtime, and invalid values."""
    refused = sorted(name for name in changes if name not in DYNAMIC_BROKER_CONFIGS)
    if refused:
        return (
            ErrorCode.invalid_request,
            f"Cannot update these configs dynamically: {', '.join(refused)} "
            f"(this agent applies only {', '.join(sorted(DYNAMIC_BROKER_CONFIGS))})",
        )
    for name, value in changes.items():
        if value is not None and not DYNAMIC_BROKER_CONFIGS[name](value):
            return ErrorCode.invalid_request, f"Invalid value {value} for configuration {name}"
    return ErrorCode.none, None


def apply(agent: AgentServices, own: Mapping[str, str], cluster: Mapping[str, str]) -> None:
    """Make these the agent's dynamic values (its own and the cluster-wide default),
    effective at once."""
    state = _state(agent)
    state.own, state.cluster = dict(own), dict(cluster)
    new_overrides = {**cluster, **own}
    state.overrides = new_overrides
    state.message_max_bytes = int(new_overrides.get("message.max.bytes", _STATIC_MAX_MESSAGE_BYTES))
    max_connections = int(new_overrides.get("max.connections", state.static_max_connections))
    if max_connections != agent.config.max_connections:
        # The agent reads config.max_connections on every accept; the config is a
        # frozen value, so the change is a new value.
        agent.config = dataclasses.replace(agent.config, max_connections=max_connections)


def apply_stored(agent: AgentServices, stored: Mapping[str, Mapping[str, str]]) -> None:
    """Apply what the coordinator database holds (every resource's values)."""
    apply(agent, stored.get(str(agent.node_id), {}), stored.get(CLUSTER_DEFAULT, {}))


async def refresh(agent: AgentServices) -> None:
    """Reload the stored dynamic broker configs and apply them (every heartbeat). While the
    database is unreachable the last values stay (the heartbeat's own log says so)."""
    try:
        stored = await agent.coordinator.backend.load_broker_configs()
    except CoordinatorError as e:
        log.debug("dynamic broker configs not reloaded: %s", e)
        return
    apply_stored(agent, stored)
