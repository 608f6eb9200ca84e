"""Kafka 4's topic configs: the catalogue, Kafka's parsing and validation, describe. Pure.

Every topic config of Apache Kafka 4.0-4.3's LogConfig is accepted, with Kafka's
type, default and validator (storage/.../LogConfig.java, ServerLogConfigs.java,
ConfigDef.java) and Kafka's error messages ("Invalid value X for configuration Y:
..."). Each config is declared once, in TOPIC_CONFIGS: its type, default, validator,
the broker config that supplies its default, and whether Driftlog applies it or
only stores it (with the reason, which DescribeConfigs returns as documentation).

Names Kafka 4 does not know are refused, among them those Kafka 4.0 removed
(message.format.version, message.timestamp.difference.max.ms), and those of Kafka's
main branch that no 4.0-4.3 release has (remote.copy.lag.ms and remote.copy.lag.bytes,
KIP-1241): one entry each adds them. Values are stored in Kafka's rendering of the
parsed value (" 5" is stored as "5", "TRUE" as "true"), so the code that reads them
sees one spelling.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

NO_BOUND_MS = 2**63 - 1  # Long.MAX_VALUE, Kafka's "no limit"
_LONG_MAX = str(NO_BOUND_MS)

SUPPORTED_CLEANUP_POLICIES = frozenset({"delete", "compact"})


class ConfigType(enum.IntEnum):
    """Kafka's ConfigDef types, numbered as DescribeConfigs' config_type (v3+)."""

    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7
    CLASS = 8
    PASSWORD = 9


class ConfigSource(enum.IntEnum):
    """DescribeConfigs config_source values (KIP-226)."""

    DYNAMIC_TOPIC_CONFIG = 1
    DYNAMIC_BROKER_CONFIG = 2
    DYNAMIC_DEFAULT_BROKER_CONFIG = 3
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


class ConfigError(ValueError):
    """An invalid topic config; the message is Kafka's wording, sent back with INVALID_CONFIG."""


Validator = Callable[[str, Any], None]


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    type: ConfigType
    # What applies when neither the topic nor the broker sets it, as Kafka renders it.
    default: str
    validator: Validator | None
    # True: Driftlog acts on the value. False: stored and described back, no effect.
    applied: bool
    # One line: how Driftlog applies it, or why it has no effect.
    note: str
    summary: str
    # The broker config that supplies the default (Kafka's "Server Default Property").
    broker: str | None = None
    # Kafka 4's default, where Driftlog's differs (then the broker default is static).
    kafka_default: str | None = None

    @property
    def documentation(self) -> str:
        status = "Driftlog applies it" if self.applied else "Driftlog stores it without effect"
        return f"{self.summary} {status}: {self.note}."


# ---------------------------------------------------------------- Kafka's validators


def _invalid(name: str, value: object, message: str) -> ConfigError:
    # ConfigException(name, value, message): Java prints lists as [a, b].
    shown = "[" + ", ".join(value) + "]" if isinstance(value, list) else value
    return ConfigError(f"Invalid value {shown} for configuration {name}: {message}")


def _at_least(low: int) -> Validator:
    def check(name: str, value: Any) -> None:
        if value < low:
            raise _invalid(name, value, f"Value must be at least {low}")

    return check


def _between(low: int, high: int) -> Validator:
    def check(name: str, value: Any) -> None:
        # Java compares as doubles: NaN passes both bounds, as it does in Kafka.
        if value < low:
            raise _invalid(name, _shown(value), f"Value must be at least {low}")
        if value > high:
            raise _invalid(name, _shown(value), f"Value must be no more than {high}")

    return check


def _shown(value: Any) -> Any:
    return java_double(value) if isinstance(value, float) else value


def _one_of(*choices: str) -> Validator:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise _invalid(name, value, "String must be one of: " + ", ".join(choices))

    return check


def _valid_list(*choices: str) -> Validator:
    """ConfigDef.ValidList.in as of Kafka 4.2 (KIP-1161): empty allowed, no duplicates."""
    one = _one_of(*choices)

    def check(name: str, value: Any) -> None:
        if len(set(value)) != len(value):
            raise ConfigError(f"Configuration '{name}' values must not be duplicated.")
        for item in value:
            if item == "":
                raise ConfigError(f"Configuration '{name}' values must not be empty.")
            one(name, item)

    return check


def _gzip_level(name: str, value: Any) -> None:
    # CompressionType.GZIP.levelValidator(): Deflater's 1..9, or -1 (its default).
    if value > 9 or (value < 1 and value != -1):
        raise _invalid(name, value, "Value must be between 1 and 9 or equal to -1")


_REPLICA = re.compile(r"([0-9]+:[0-9]+)?\Z")


def _throttled_replicas(name: str, value: Any) -> None:
    # ThrottledReplicaListValidator: "*", or partition:broker pairs.
    items = [item.strip() for item in value]
    if not (all(_REPLICA.match(item) for item in items) or "".join(items) == "*"):
        raise _invalid(
            name,
            value,
            f"{name} must be the literal '*' or a list of replicas in the following format: "
            "[partitionId]:[brokerId],[partitionId]:[brokerId],...",
        )


# ---------------------------------------------------------------- the catalogue

_COMPACTION = "applied by key compaction on topics with cleanup.policy=compact"
_NO_RECOMPRESSION = "batches are stored as the producer compressed them, never recompressed"
_NO_SEGMENTS = "there are no log segments: objects hold batches of many partitions"
_NO_INDEX = "there are no index files: the coordinator database indexes every batch"
_DURABLE = (
    "an acknowledged batch is already in object storage and committed "
    "(the shared buffer flushes per --flush-ms and --flush-bytes)"
)
_NO_REPLICAS = "there are no replicas: any agent serves any partition from object storage"
_NO_LOCAL_TIER = "every byte is already in object storage; there is no local tier"

_CATALOGUE = (
    TopicConfig(
        "cleanup.policy",
        ConfigType.LIST,
        "delete",
        _valid_list("compact", "delete"),
        True,
        "delete: retention.ms and retention.bytes move the log start; compact: the writer "
        "keeps the latest record of every key (see docs/ARCHITECTURE.md, Key compaction)",
        "The retention policy: delete (by time and size) and/or compact (latest record per key).",
        broker="log.cleanup.policy",
    ),
    TopicConfig(
        "compression.gzip.level",
        ConfigType.INT,
        "-1",
        _gzip_level,
        False,
        _NO_RECOMPRESSION,
        "The gzip level Kafka recompresses to when compression.type is gzip.",
        broker="compression.gzip.level",
    ),
    TopicConfig(
        "compression.lz4.level",
        ConfigType.INT,
        "9",
        _between(1, 17),
        False,
        _NO_RECOMPRESSION,
        "The lz4 level Kafka recompresses to when compression.type is lz4.",
        broker="compression.lz4.level",
    ),
    TopicConfig(
        "compression.type",
        ConfigType.STRING,
        "producer",
        _one_of("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"),
        False,
        _NO_RECOMPRESSION + "; consumers read any codec",
        "The codec Kafka recompresses batches to (producer: keep the producer's).",
        broker="compression.type",
    ),
    TopicConfig(
        "compression.zstd.level",
        ConfigType.INT,
        "3",
        _between(-131072, 22),
        False,
        _NO_RECOMPRESSION,
        "The zstd level Kafka recompresses to when compression.type is zstd.",
        broker="compression.zstd.level",
    ),
    TopicConfig(
        "delete.retention.ms",
        ConfigType.LONG,
        "86400000",
        _at_least(0),
        True,
        _COMPACTION,
        "How long tombstones of compacted topics are kept.",
        broker="log.cleaner.delete.retention.ms",
    ),
    TopicConfig(
        "file.delete.delay.ms",
        ConfigType.LONG,
        "60000",
        _at_least(0),
        False,
        "there are no segment files; objects no batch references are deleted after "
        "--gc-delete-grace-ms",
        "How long Kafka waits before deleting a segment file.",
        broker="log.segment.delete.delay.ms",
    ),
    TopicConfig(
        "flush.messages",
        ConfigType.LONG,
        _LONG_MAX,
        _at_least(1),
        False,
        _DURABLE,
        "Kafka fsyncs the log after this many messages.",
        broker="log.flush.interval.messages",
    ),
    TopicConfig(
        "flush.ms",
        ConfigType.LONG,
        _LONG_MAX,
        _at_least(0),
        False,
        _DURABLE,
        "Kafka fsyncs the log after this long.",
        broker="log.flush.interval.ms",
    ),
    TopicConfig(
        "follower.replication.throttled.replicas",
        ConfigType.LIST,
        "",
        _throttled_replicas,
        False,
        _NO_REPLICAS,
        "Replicas whose replication is throttled on the follower side.",
    ),
    TopicConfig(
        "index.interval.bytes",
        ConfigType.INT,
        "4096",
        _at_least(0),
        False,
        _NO_INDEX,
        "How often Kafka adds an entry to the offset index.",
        broker="log.index.interval.bytes",
    ),
    TopicConfig(
        "leader.replication.throttled.replicas",
        ConfigType.LIST,
        "",
        _throttled_replicas,
        False,
        _NO_REPLICAS,
        "Replicas whose replication is throttled on the leader side.",
    ),
    TopicConfig(
        "local.retention.bytes",
        ConfigType.LONG,
        "-2",
        _at_least(-2),
        False,
        _NO_LOCAL_TIER,
        "Tiered storage: bytes kept on local disk (-2: retention.bytes).",
        broker="log.local.retention.bytes",
    ),
    TopicConfig(
        "local.retention.ms",
        ConfigType.LONG,
        "-2",
        _at_least(-2),
        False,
        _NO_LOCAL_TIER,
        "Tiered storage: time data is kept on local disk (-2: retention.ms).",
        broker="log.local.retention.ms",
    ),
    TopicConfig(
        "max.compaction.lag.ms",
        ConfigType.LONG,
        _LONG_MAX,
        _at_least(1),
        True,
        _COMPACTION,
        "The longest a record stays ineligible for compaction.",
        broker="log.cleaner.max.compaction.lag.ms",
    ),
    TopicConfig(
        "max.message.bytes",
        ConfigType.INT,
        "1048588",
        _at_least(0),
        True,
        "Produce refuses larger batches with MESSAGE_TOO_LARGE",
        "The largest record batch accepted (after compression).",
        broker="message.max.bytes",
    ),
    TopicConfig(
        "message.downconversion.enable",
        ConfigType.BOOLEAN,
        "true",
        None,
        False,
        "a no-op in Kafka 4 too (deprecated, no down-conversion); accepted so configs "
        "copied from older clusters still apply",
        "Whether old consumers get down-converted batches.",
        broker="log.message.downconversion.enable",
    ),
    TopicConfig(
        "message.timestamp.after.max.ms",
        ConfigType.LONG,
        _LONG_MAX,
        _at_least(0),
        True,
        "Produce refuses CreateTime records further in the future with INVALID_TIMESTAMP; "
        "the default is no bound, as before KIP-1030 (Kafka 4's is 3600000)",
        "How far in the future a CreateTime record may be.",
        broker="log.message.timestamp.after.max.ms",
        kafka_default="3600000",
    ),
    TopicConfig(
        "message.timestamp.before.max.ms",
        ConfigType.LONG,
        _LONG_MAX,
        _at_least(0),
        True,
        "Produce refuses CreateTime records further in the past with INVALID_TIMESTAMP",
        "How far in the past a CreateTime record may be.",
        broker="log.message.timestamp.before.max.ms",
    ),
    TopicConfig(
        "message.timestamp.type",
        ConfigType.STRING,
        "CreateTime",
        _one_of("CreateTime", "LogAppendTime"),
        True,
        "LogAppendTime stamps each batch with its commit time",
        "Whether record timestamps are the producer's (CreateTime) or the broker's.",
        broker="log.message.timestamp.type",
    ),
    TopicConfig(
        "min.cleanable.dirty.ratio",
        ConfigType.DOUBLE,
        "0.5",
        _between(0, 1),
        True,
        _COMPACTION,
        "How dirty a log must be before it is compacted.",
        broker="log.cleaner.min.cleanable.ratio",
    ),
    TopicConfig(
        "min.compaction.lag.ms",
        ConfigType.LONG,
        "0",
        _at_least(0),
        True,
        _COMPACTION,
        "The shortest a record stays uncompacted.",
        broker="log.cleaner.min.compaction.lag.ms",
    ),
    TopicConfig(
        "min.insync.replicas",
        ConfigType.INT,
        "1",
        _at_least(1),
        False,
        _NO_REPLICAS + "; acks=all means in object storage and committed",
        "Replicas that must have a write for acks=all.",
        broker="min.insync.replicas",
    ),
    TopicConfig(
        "preallocate",
        ConfigType.BOOLEAN,
        "false",
        None,
        False,
        "there are no segment files to preallocate",
        "Whether Kafka preallocates segment files.",
        broker="log.preallocate",
    ),
    TopicConfig(
        "remote.log.copy.disable",
        ConfigType.BOOLEAN,
        "false",
        None,
        False,
        _NO_LOCAL_TIER,
        "Tiered storage: stop copying segments to remote storage.",
    ),
    TopicConfig(
        "remote.log.delete.on.disable",
        ConfigType.BOOLEAN,
        "false",
        None,
        False,
        _NO_LOCAL_TIER,
        "Tiered storage: delete remote data when remote.storage.enable is turned off.",
    ),
    TopicConfig(
        "remote.storage.enable",
        ConfigType.BOOLEAN,
        "false",
        None,
        False,
        _NO_LOCAL_TIER,
        "Tiered storage: copy the topic's segments to remote storage.",
    ),
    TopicConfig(
        "retention.bytes",
        ConfigType.LONG,
        "-1",
        None,  # Kafka takes any long: below 0 means no size limit
        True,
        "the writer moves each partition's log start past the oldest batches beyond it, "
        "every --retention-check-ms",
        "The most bytes a partition keeps (-1: no limit).",
        broker="log.retention.bytes",
    ),
    TopicConfig(
        "retention.ms",
        ConfigType.LONG,
        "604800000",
        _at_least(-1),
        True,
        "the writer moves each partition's log start past older batches, every "
        "--retention-check-ms",
        "How long records are kept (-1: forever).",
        broker="log.retention.ms",
    ),
    TopicConfig(
        "segment.bytes",
        ConfigType.INT,
        "1073741824",
        _at_least(1024 * 1024),  # 1 MiB since Kafka 4.0 (KIP-1030)
        False,
        _NO_SEGMENTS,
        "The size of a log segment file.",
        broker="log.segment.bytes",
    ),
    TopicConfig(
        "segment.index.bytes",
        ConfigType.INT,
        "10485760",
        _at_least(4),
        False,
        _NO_INDEX,
        "The size of a segment's offset index.",
        broker="log.index.size.max.bytes",
    ),
    TopicConfig(
        "segment.jitter.ms",
        ConfigType.LONG,
        "0",
        _at_least(0),
        False,
        _NO_SEGMENTS,
        "Random jitter subtracted from segment.ms.",
        broker="log.roll.jitter.ms",
    ),
    TopicConfig(
        "segment.ms",
        ConfigType.LONG,
        "604800000",
        _at_least(1),
        False,
        _NO_SEGMENTS,
        "How long before Kafka rolls a new segment.",
        broker="log.roll.ms",
    ),
    TopicConfig(
        "unclean.leader.election.enable",
        ConfigType.BOOLEAN,
        "false",
        None,
        False,
        _NO_REPLICAS + ", so there are no leader elections",
        "Whether a replica out of the ISR may become leader.",
        broker="unclean.leader.election.enable",
    ),
)

TOPIC_CONFIGS: Mapping[str, TopicConfig] = {spec.name: spec for spec in _CATALOGUE}
# Broker config name -> the topic config whose default it supplies.
BROKER_SYNONYMS: Mapping[str, TopicConfig] = {
    spec.broker: spec for spec in _CATALOGUE if spec.broker is not None
}


# ---------------------------------------------------------------- parsing (ConfigDef.parseType)

_JAVA_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_JAVA_DECIMAL = re.compile(
    r"[+-]?(NaN|Infinity|([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?)[fFdD]?\Z"
)
_JAVA_HEX = re.compile(
    r"[+-]?0[xX]([0-9a-fA-F]+\.?|[0-9a-fA-F]*\.[0-9a-fA-F]+)[pP][+-]?[0-9]+[fFdD]?\Z"
)
_COMMA = re.compile(r"[ \t\n\x0b\f\r]*,[ \t\n\x0b\f\r]*")  # Java's \s is ASCII only
_JAVA_BLANK = "".join(chr(c) for c in range(33))  # what String.trim() strips


def _parse(spec: TopicConfig, raw: str) -> Any:
    text = raw.strip(_JAVA_BLANK)
    kind = spec.type
    if kind is ConfigType.BOOLEAN:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _invalid(spec.name, raw, "Expected value to be either true or false")
    if kind in (ConfigType.INT, ConfigType.LONG, ConfigType.SHORT):
        bits = {ConfigType.INT: 32, ConfigType.LONG: 64, ConfigType.SHORT: 16}[kind]
        # The length bound keeps int() away from huge digit strings (untrusted input).
        if len(text) <= 24 and _JAVA_INTEGER.match(text):
            number = int(text)
            if -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
                return number
        raise _invalid(spec.name, raw, f"Not a number of type {kind.name}")
    if kind is ConfigType.DOUBLE:
        if _JAVA_DECIMAL.match(text):
            return float(text.rstrip("fFdD").replace("Infinity", "inf"))
        if _JAVA_HEX.match(text):
            try:
                return float.fromhex(text.rstrip("fFdD"))
            except OverflowError:  # Java rounds to infinity
                return math.copysign(math.inf, -1.0 if text.startswith("-") else 1.0)
        raise _invalid(spec.name, raw, "Not a number of type DOUBLE")
    if kind is ConfigType.LIST:
        return [] if text == "" else _COMMA.split(text)
    return text


def _render(spec: TopicConfig, value: Any) -> str:
    """ConfigDef.convertToString: how Kafka shows a parsed value."""
    if spec.type is ConfigType.BOOLEAN:
        return "true" if value else "false"
    if spec.type is ConfigType.DOUBLE:
        return java_double(value)
    if spec.type is ConfigType.LIST:
        return ",".join(value)
    return str(value)


def java_double(value: float) -> str:
    """Java's Double.toString (shortest digits, as Java 19+), e.g. 0.5, 1.0E-5, 1.0E7."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e7:
        text = repr(magnitude)  # Python's repr is fixed-point in this range
        return sign + (text if "." in text else text + ".0")
    _, digits, exponent = Decimal(repr(magnitude)).as_tuple()
    assert isinstance(exponent, int)
    shown = "".join(map(str, digits)).rstrip("0") or "0"
    point = exponent + len(digits) - 1
    return f"{sign}{shown[0]}.{shown[1:] or '0'}E{point}"


def parse(name: str, raw: str) -> Any:
    """The parsed value of a topic config, after Kafka's checks and Driftlog's own."""
    spec = TOPIC_CONFIGS.get(name)
    if spec is None:
        raise ConfigError(f"Unknown topic config name: {name}")
    value = _parse(spec, raw)
    if spec.validator is not None:
        spec.validator(name, value)
    if name == "cleanup.policy":
        _check_cleanup_policy(value)
    return value


def _check_cleanup_policy(policies: list[str]) -> None:
    # Kafka would accept these; Driftlog refuses what it cannot honour rather than
    # store a value that would mislead.
    if not policies:
        raise ConfigError(
            "Invalid value  for configuration cleanup.policy: an empty cleanup.policy "
            "(keep everything, Kafka 4.2) is not supported; Driftlog always applies "
            "retention.ms and retention.bytes"
        )
    for policy in policies:
        if policy not in SUPPORTED_CLEANUP_POLICIES:
            raise ConfigError(
                f"Invalid value {policy} for configuration cleanup.policy: Driftlog accepts "
                + ", ".join(sorted(SUPPORTED_CLEANUP_POLICIES))
            )


def normalize(name: str, raw: str) -> str:
    """A valid value as Kafka renders it (" 5" -> "5"); ConfigError when invalid."""
    value = parse(name, raw)
    return _render(TOPIC_CONFIGS[name], value)


# ---------------------------------------------------------------- whole-topic validation


def validate_changes(
    changes: Mapping[str, str | None],
    current: Mapping[str, str],
    defaults: Mapping[str, str],
) -> dict[str, str | None]:
    """Validate a topic's config changes (None: back to the default), normalized.

    `current` is what the topic stores now (empty for a new topic) and `defaults`
    the broker defaults of configs it does not set (topic config name to value).
    Raises ConfigError with Kafka's message for the first problem.
    """
    normalized: dict[str, str | None] = {}
    for name, value in changes.items():
        if name not in TOPIC_CONFIGS:
            raise ConfigError(f"Unknown topic config name: {name}")
        normalized[name] = None if value is None else normalize(name, value)
    merged = {name: spec.default for name, spec in TOPIC_CONFIGS.items()}
    merged.update(defaults)
    merged.update((k, v) for k, v in current.items() if k in TOPIC_CONFIGS)
    for name, new in normalized.items():
        if new is None:
            merged[name] = defaults.get(name, TOPIC_CONFIGS[name].default)
        else:
            merged[name] = new
    _check_together(merged, current)
    return normalized


def _check_together(configs: Mapping[str, str], current: Mapping[str, str]) -> None:
    """LogConfig.validateValues and validateTopicLogConfigValues: rules across configs."""
    value = {name: _parse_or_default(name, raw) for name, raw in configs.items()}
    if value["min.compaction.lag.ms"] > value["max.compaction.lag.ms"]:
        raise ConfigError(
            "conflict topic config setting min.compaction.lag.ms "
            f"({value['min.compaction.lag.ms']}) > max.compaction.lag.ms "
            f"({value['max.compaction.lag.ms']})"
        )
    # Driftlog counts as a cluster with tiered storage on (everything is in object
    # storage), so Kafka's rules for remote.storage.enable=true topics apply.
    if value["remote.storage.enable"]:
        policies = value["cleanup.policy"]
        if policies and policies != ["delete"]:
            raise ConfigError(
                "Remote log storage only supports topics with cleanup.policy=delete or "
                "cleanup.policy being an empty list."
            )
        for kind in ("bytes", "ms"):
            _check_local_retention(value, kind)
        if value["remote.log.copy.disable"]:
            for kind in ("bytes", "ms"):
                local, total = value[f"local.retention.{kind}"], value[f"retention.{kind}"]
                if local not in (-2, total):
                    raise ConfigError(
                        f"When `remote.log.copy.disable` is set to true, the "
                        f"`local.retention.{kind}` and `retention.{kind}` must be set to the "
                        "identical value because there will be no more logs copied to the "
                        "remote storage."
                    )
    elif (
        current.get("remote.storage.enable") == "true" and not value["remote.log.delete.on.disable"]
    ):
        raise ConfigError(
            "It is invalid to disable remote storage without deleting remote data. If you want "
            "to keep the remote data and turn to read only, please set "
            "`remote.storage.enable=true,remote.log.copy.disable=true`. If you want to disable "
            "remote storage and delete all remote data, please set "
            "`remote.storage.enable=false,remote.log.delete.on.disable=true`."
        )


def _parse_or_default(name: str, raw: str) -> Any:
    # A value stored before a rule tightened may not parse; it must not block changes
    # to other configs.
    spec = TOPIC_CONFIGS[name]
    try:
        return _parse(spec, raw)
    except ConfigError:
        return _parse(spec, spec.default)


def _check_local_retention(value: Mapping[str, Any], kind: str) -> None:
    total, local = value[f"retention.{kind}"], value[f"local.retention.{kind}"]
    name = f"local.retention.{kind}"
    limited = total > -1 if kind == "bytes" else total != -1
    if limited and local != -2:
        if local == -1:
            raise _invalid(
                name, local, f"Value must not be -1 as retention.{kind} value is set as {total}."
            )
        if local > total:
            raise _invalid(
                name, local, f"Value must not be more than retention.{kind} property value: {total}"
            )


# ---------------------------------------------------------------- APPEND and SUBTRACT


def _java_split(text: str) -> list[str]:
    """String.split(","): trailing empty strings dropped, but "" gives [""]."""
    parts = text.split(",")
    if len(parts) == 1:
        return parts
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def apply_list_op(name: str, op: str, value: str, current: str | None) -> str:
    """IncrementalAlterConfigs APPEND or SUBTRACT on a list config (Kafka's controller).

    APPEND adds the values not yet present, SUBTRACT removes one occurrence of each;
    an unset config starts from its default. The result is then validated as a SET.
    """
    spec = TOPIC_CONFIGS.get(name)
    if spec is None:
        raise ConfigError(f"Unknown topic config name: {name}")
    if spec.type is not ConfigType.LIST:
        raise ConfigError(f"Can't {op} to key {name} because its type is not LIST.")
    base = spec.default if current is None else current
    values = [part for part in base.split(",") if part]
    for item in _java_split(value):
        if op == "APPEND":
            if item not in values:
                values.append(item)
        elif item in values:
            values.remove(item)
    return ",".join(values)


# ---------------------------------------------------------------- DescribeConfigs


@dataclass(frozen=True, slots=True)
class Synonym:
    name: str
    value: str
    source: ConfigSource


@dataclass(frozen=True, slots=True)
class Described:
    name: str
    value: str
    source: ConfigSource
    type: ConfigType
    documentation: str
    # The topic's own value (when set), then the broker config it falls back to.
    synonyms: tuple[Synonym, ...]


def static_source(broker_name: str, value: str) -> ConfigSource:
    """A broker default's source: static when it is not Kafka's own default."""
    spec = BROKER_SYNONYMS[broker_name]
    kafka_default = spec.kafka_default if spec.kafka_default is not None else spec.default
    if value == kafka_default:
        return ConfigSource.DEFAULT_CONFIG
    return ConfigSource.STATIC_BROKER_CONFIG


def broker_chain(
    spec: TopicConfig, broker_values: Mapping[str, Sequence[tuple[str, ConfigSource]]]
) -> tuple[Synonym, ...]:
    """The broker configs a topic config falls back to, highest priority first."""
    if spec.broker is None:
        return ()
    chain = broker_values.get(spec.broker)
    if chain is None:
        chain = [(spec.default, static_source(spec.broker, spec.default))]
    return tuple(Synonym(spec.broker, value, source) for value, source in chain)


def describe(
    stored: Mapping[str, str],
    broker_values: Mapping[str, Sequence[tuple[str, ConfigSource]]],
) -> list[Described]:
    """Every topic config with its value, source and synonyms (Kafka's ConfigHelper).

    `broker_values` maps broker config names to their values and sources,
    highest priority first (a dynamic value, then the static one); broker configs
    not in it have the catalogue default.
    """
    described = []
    for name in sorted(TOPIC_CONFIGS):
        spec = TOPIC_CONFIGS[name]
        synonyms = broker_chain(spec, broker_values)
        if name in stored:
            synonyms = (Synonym(name, stored[name], ConfigSource.DYNAMIC_TOPIC_CONFIG), *synonyms)
        if synonyms:
            value, source = synonyms[0].value, synonyms[0].source
        else:
            value, source = spec.default, ConfigSource.DEFAULT_CONFIG
        described.append(Described(name, value, source, spec.type, spec.documentation, synonyms))
    return described


def defaults(broker_values: Mapping[str, Sequence[tuple[str, ConfigSource]]]) -> dict[str, str]:
    """What each topic config is when the topic does not set it (its broker default)."""
    out = {}
    for name, spec in TOPIC_CONFIGS.items():
        chain = broker_chain(spec, broker_values)
        out[name] = chain[0].value if chain else spec.default
    return out


# ---------------------------------------------------------------- dynamic broker configs

# Dynamic broker configs (KIP-226) this agent applies itself, at once, to itself
# alone, and only until it restarts (server/broker_configs.py). Kafka counts both
# as dynamic. Anything needing the coordinator (retention, timestamp type) is left
# out: every agent would have to agree on it.


def _int_at_least(low: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            return int(value) >= low
        except ValueError:
            return False

    return check


DYNAMIC_BROKER_CONFIGS: Mapping[str, Callable[[str], bool]] = {
    # The default max.message.bytes of topics that do not set it (Produce checks it).
    "message.max.bytes": _int_at_least(0),
    # New connections beyond this are refused; 0 would also lock out the admin
    # client that wants to raise it again, so the floor is 1 (Kafka allows 0).
    "max.connections": _int_at_least(1),
}

# Broker configs described on the BROKER resource besides the topic configs' broker
# synonyms, with Kafka 4's defaults (a value that differs is a static broker config).
BROKER_KAFKA_DEFAULTS: Mapping[str, str] = {
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "offsets.topic.replication.factor": "3",
    "max.connections": "2147483647",
}
