"""Topic and dynamic broker configs Driftlog understands: names, defaults, validation. Pure.

Only configs whose meaning Driftlog honours (or that are harmless to store,
such as replication settings that object storage makes moot) are accepted;
anything else is INVALID_CONFIG, so users are not misled into thinking a
setting took effect. The inert ones are listed in the README.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    default: str
    validate: Callable[[str], bool]
    # Accepted and stored but without effect in Driftlog (documented in the README).
    inert: bool = False


def _int_at_least(low: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            return int(value) >= low
        except ValueError:
            return False

    return check


def _one_of(*choices: str) -> Callable[[str], bool]:
    return lambda value: value in choices


NO_BOUND_MS = 2**63 - 1  # Long.MAX_VALUE, Kafka's "no limit"

TOPIC_CONFIGS: Mapping[str, ConfigSpec] = {
    "cleanup.policy": ConfigSpec("delete", _one_of("delete")),
    "retention.ms": ConfigSpec("604800000", _int_at_least(-1)),
    "retention.bytes": ConfigSpec("-1", _int_at_least(-1)),
    "message.timestamp.type": ConfigSpec("CreateTime", _one_of("CreateTime", "LogAppendTime")),
    "max.message.bytes": ConfigSpec("1048588", _int_at_least(0)),
    # Kafka recompresses batches to the topic's codec; Driftlog never decodes
    # batches on the write path, so every codec is stored as the producer sent it
    # and the value is only stored and described back (README, partial features).
    "compression.type": ConfigSpec(
        "producer",
        _one_of("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"),
        inert=True,
    ),
    # KIP-937 (Kafka 3.6): CreateTime records further than this in the past or the
    # future are refused with INVALID_TIMESTAMP. Kafka 3.6's defaults (no bound):
    # only a topic that sets one pays for decoding its batches on produce.
    "message.timestamp.before.max.ms": ConfigSpec(str(NO_BOUND_MS), _int_at_least(0)),
    "message.timestamp.after.max.ms": ConfigSpec(str(NO_BOUND_MS), _int_at_least(0)),
    "min.insync.replicas": ConfigSpec("1", _int_at_least(1), inert=True),
    "segment.bytes": ConfigSpec("1073741824", _int_at_least(14), inert=True),
    "segment.ms": ConfigSpec("604800000", _int_at_least(1), inert=True),
    "unclean.leader.election.enable": ConfigSpec("false", _one_of("true", "false"), inert=True),
}

BROKER_CONFIGS: Mapping[str, str] = {
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "message.max.bytes": "1048588",
    "log.retention.ms": "604800000",
    "log.message.timestamp.type": "CreateTime",
    "offsets.topic.replication.factor": "1",
    "min.insync.replicas": "1",
}


# Dynamic broker configs (KIP-226) this agent applies itself, at once, to itself
# alone, and only until it restarts (server/broker_configs.py). Kafka counts both
# as dynamic. Anything needing the coordinator (retention, timestamp type) is left
# out: every agent would have to agree on it.
DYNAMIC_BROKER_CONFIGS: Mapping[str, Callable[[str], bool]] = {
    # The default max.message.bytes of topics that do not set it (Produce checks it).
    "message.max.bytes": _int_at_least(0),
    # New connections beyond this are refused; 0 would also lock out the admin
    # client that wants to raise it again, so the floor is 1 (Kafka allows 0).
    "max.connections": _int_at_least(1),
}


def invalid_configs(configs: Mapping[str, str | None]) -> str | None:
    """A message naming the first unknown or invalid config, or None when all are valid."""
    for name, value in configs.items():
        spec = TOPIC_CONFIGS.get(name)
        if spec is None:
            return f"unknown or unsupported topic config {name!r}"
        if value is not None and not spec.validate(value):
            return f"invalid value {value!r} for topic config {name!r}"
    return None


def effective(configs: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
    """Every topic config with its value and whether it is the default."""
    return {
        name: (configs[name], False) if name in configs else (spec.default, True)
        for name, spec in TOPIC_CONFIGS.items()
    }
