"""Topic configs Driftlog understands: names, defaults, validation. Pure.

Only configs whose meaning Driftlog honours (or that are harmless to store,
such as replication settings that object storage makes moot) are accepted;
anything else is INVALID_CONFIG, so users are not misled into thinking a
setting took effect.
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


TOPIC_CONFIGS: Mapping[str, ConfigSpec] = {
    "cleanup.policy": ConfigSpec("delete", _one_of("delete")),
    "retention.ms": ConfigSpec("604800000", _int_at_least(-1)),
    "retention.bytes": ConfigSpec("-1", _int_at_least(-1)),
    "message.timestamp.type": ConfigSpec("CreateTime", _one_of("CreateTime", "LogAppendTime")),
    "max.message.bytes": ConfigSpec("1048588", _int_at_least(0)),
    "compression.type": ConfigSpec("producer", _one_of("producer")),
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
