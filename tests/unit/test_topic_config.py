"""The topic config catalogue: Kafka 4's parsing, ranges and messages; APPEND/SUBTRACT; describe.

Expected values and messages are Kafka's (LogConfig, ConfigDef, ConfigurationControlManager),
written out here rather than derived from the catalogue, so a wrong entry fails.
"""

from __future__ import annotations

import pytest

from driftlog.topic_config import (
    BROKER_SYNONYMS,
    SUPPORTED_CLEANUP_POLICIES,
    TOPIC_CONFIGS,
    ConfigError,
    ConfigSource,
    ConfigType,
    apply_list_op,
    defaults,
    describe,
    java_double,
    normalize,
    static_source,
    validate_changes,
)

# Kafka 4.0-4.3's topic configs (LogConfig's CONFIG, internal ones aside).
KAFKA_4_TOPIC_CONFIGS = {
    "cleanup.policy": (ConfigType.LIST, "delete", "log.cleanup.policy"),
    "compression.gzip.level": (ConfigType.INT, "-1", "compression.gzip.level"),
    "compression.lz4.level": (ConfigType.INT, "9", "compression.lz4.level"),
    "compression.type": (ConfigType.STRING, "producer", "compression.type"),
    "compression.zstd.level": (ConfigType.INT, "3", "compression.zstd.level"),
    "delete.retention.ms": (ConfigType.LONG, "86400000", "log.cleaner.delete.retention.ms"),
    "file.delete.delay.ms": (ConfigType.LONG, "60000", "log.segment.delete.delay.ms"),
    "flush.messages": (ConfigType.LONG, "9223372036854775807", "log.flush.interval.messages"),
    "flush.ms": (ConfigType.LONG, "9223372036854775807", "log.flush.interval.ms"),
    "follower.replication.throttled.replicas": (ConfigType.LIST, "", None),
    "index.interval.bytes": (ConfigType.INT, "4096", "log.index.interval.bytes"),
    "leader.replication.throttled.replicas": (ConfigType.LIST, "", None),
    "local.retention.bytes": (ConfigType.LONG, "-2", "log.local.retention.bytes"),
    "local.retention.ms": (ConfigType.LONG, "-2", "log.local.retention.ms"),
    "max.compaction.lag.ms": (
        ConfigType.LONG,
        "9223372036854775807",
        "log.cleaner.max.compaction.lag.ms",
    ),
    "max.message.bytes": (ConfigType.INT, "1048588", "message.max.bytes"),
    "message.downconversion.enable": (
        ConfigType.BOOLEAN,
        "true",
        "log.message.downconversion.enable",
    ),
    # Driftlog keeps no bound by default (Kafka 4's is 3600000, see the catalogue).
    "message.timestamp.after.max.ms": (
        ConfigType.LONG,
        "9223372036854775807",
        "log.message.timestamp.after.max.ms",
    ),
    "message.timestamp.before.max.ms": (
        ConfigType.LONG,
        "9223372036854775807",
        "log.message.timestamp.before.max.ms",
    ),
    "message.timestamp.type": (ConfigType.STRING, "CreateTime", "log.message.timestamp.type"),
    "min.cleanable.dirty.ratio": (ConfigType.DOUBLE, "0.5", "log.cleaner.min.cleanable.ratio"),
    "min.compaction.lag.ms": (ConfigType.LONG, "0", "log.cleaner.min.compaction.lag.ms"),
    "min.insync.replicas": (ConfigType.INT, "1", "min.insync.replicas"),
    "preallocate": (ConfigType.BOOLEAN, "false", "log.preallocate"),
    "remote.log.copy.disable": (ConfigType.BOOLEAN, "false", None),
    "remote.log.delete.on.disable": (ConfigType.BOOLEAN, "false", None),
    "remote.storage.enable": (ConfigType.BOOLEAN, "false", None),
    "retention.bytes": (ConfigType.LONG, "-1", "log.retention.bytes"),
    "retention.ms": (ConfigType.LONG, "604800000", "log.retention.ms"),
    "segment.bytes": (ConfigType.INT, "1073741824", "log.segment.bytes"),
    "segment.index.bytes": (ConfigType.INT, "10485760", "log.index.size.max.bytes"),
    "segment.jitter.ms": (ConfigType.LONG, "0", "log.roll.jitter.ms"),
    "segment.ms": (ConfigType.LONG, "604800000", "log.roll.ms"),
    "unclean.leader.election.enable": (
        ConfigType.BOOLEAN,
        "false",
        "unclean.leader.election.enable",
    ),
}

APPLIED = {
    "cleanup.policy",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "retention.bytes",
    "retention.ms",
}


def _message(name: str, value: str) -> str:
    with pytest.raises(ConfigError) as raised:
        normalize(name, value)
    return str(raised.value)


def test_the_catalogue_is_kafka_4s_with_its_types_defaults_and_broker_synonyms() -> None:
    assert {
        name: (spec.type, spec.default, spec.broker) for name, spec in TOPIC_CONFIGS.items()
    } == KAFKA_4_TOPIC_CONFIGS
    assert {name for name, spec in TOPIC_CONFIGS.items() if spec.applied} == APPLIED
    for name, spec in TOPIC_CONFIGS.items():
        # Each default passes its own validator, and every entry says why it is inert.
        assert normalize(name, spec.default) == spec.default
        assert spec.note and spec.summary


@pytest.mark.parametrize(
    "name",
    [
        "message.format.version",  # removed in Kafka 4.0 (KIP-724)
        "message.timestamp.difference.max.ms",  # removed in Kafka 4.0 (KIP-937)
        "remote.copy.lag.ms",  # not in a 4.0-4.3 release
        "retention.minutes",
        "",
    ],
)
def test_names_kafka_4_does_not_know_are_refused(name: str) -> None:
    assert _message(name, "1") == f"Unknown topic config name: {name}"
    with pytest.raises(ConfigError, match="Unknown topic config name"):
        validate_changes({name: None}, {}, {})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # INT: 32 bits, then the range.
        ("segment.bytes", "1048575", "Value must be at least 1048576"),
        ("max.message.bytes", "2147483648", "Not a number of type INT"),
        ("max.message.bytes", "-1", "Value must be at least 0"),
        ("index.interval.bytes", "4k", "Not a number of type INT"),
        ("segment.index.bytes", "3", "Value must be at least 4"),
        ("min.insync.replicas", "0", "Value must be at least 1"),
        ("compression.lz4.level", "18", "Value must be no more than 17"),
        ("compression.lz4.level", "0", "Value must be at least 1"),
        ("compression.zstd.level", "23", "Value must be no more than 22"),
        ("compression.zstd.level", "-131073", "Value must be at least -131072"),
        ("compression.gzip.level", "0", "Value must be between 1 and 9 or equal to -1"),
        ("compression.gzip.level", "10", "Value must be between 1 and 9 or equal to -1"),
        # LONG: 64 bits, then the range.
        ("retention.ms", "-2", "Value must be at least -1"),
        ("retention.bytes", "9223372036854775808", "Not a number of type LONG"),
        ("segment.ms", "0", "Value must be at least 1"),
        ("segment.jitter.ms", "-1", "Value must be at least 0"),
        ("flush.messages", "0", "Value must be at least 1"),
        ("flush.ms", "-1", "Value must be at least 0"),
        ("delete.retention.ms", "-1", "Value must be at least 0"),
        ("file.delete.delay.ms", "-1", "Value must be at least 0"),
        ("min.compaction.lag.ms", "-1", "Value must be at least 0"),
        ("max.compaction.lag.ms", "0", "Value must be at least 1"),
        ("local.retention.ms", "-3", "Value must be at least -2"),
        ("local.retention.bytes", "-3", "Value must be at least -2"),
        ("message.timestamp.before.max.ms", "-1", "Value must be at least 0"),
        ("message.timestamp.after.max.ms", "1.5", "Not a number of type LONG"),
        # DOUBLE.
        ("min.cleanable.dirty.ratio", "1.5", "Value must be no more than 1"),
        ("min.cleanable.dirty.ratio", "-0.1", "Value must be at least 0"),
        ("min.cleanable.dirty.ratio", "half", "Not a number of type DOUBLE"),
        ("min.cleanable.dirty.ratio", "Infinity", "Value must be no more than 1"),
        # BOOLEAN and STRING.
        ("preallocate", "yes", "Expected value to be either true or false"),
        ("remote.storage.enable", "1", "Expected value to be either true or false"),
        (
            "compression.type",
            "brotli",
            "String must be one of: uncompressed, zstd, lz4, snappy, gzip, producer",
        ),
        (
            "message.timestamp.type",
            "createtime",
            "String must be one of: CreateTime, LogAppendTime",
        ),
    ],
)
def test_kafka_ranges_and_messages(name: str, value: str, message: str) -> None:
    assert _message(name, value) == f"Invalid value {value} for configuration {name}: {message}"


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("segment.bytes", "1048576", "1048576"),  # the 4.0 minimum itself
        ("segment.bytes", " 2097152 ", "2097152"),  # Java trims
        ("retention.ms", "+3600000", "3600000"),
        ("retention.ms", "-1", "-1"),
        ("retention.bytes", "-5", "-5"),  # any long: below 0 means no limit
        ("retention.bytes", "9223372036854775807", "9223372036854775807"),
        ("max.message.bytes", "2147483647", "2147483647"),
        ("compression.gzip.level", "-1", "-1"),
        ("compression.gzip.level", "9", "9"),
        ("compression.zstd.level", "-131072", "-131072"),
        ("local.retention.ms", "-2", "-2"),
        ("min.cleanable.dirty.ratio", "1", "1.0"),
        ("min.cleanable.dirty.ratio", "5e-1", "0.5"),
        ("min.cleanable.dirty.ratio", "0.25d", "0.25"),
        ("min.cleanable.dirty.ratio", "0x1p-2", "0.25"),
        ("min.cleanable.dirty.ratio", "0.00001", "1.0E-5"),
        ("min.cleanable.dirty.ratio", "NaN", "NaN"),  # Kafka's Range lets NaN through too
        ("preallocate", "TRUE", "true"),
        ("unclean.leader.election.enable", " False", "false"),
        ("message.timestamp.type", " LogAppendTime ", "LogAppendTime"),
        ("cleanup.policy", " delete ", "delete"),
        ("leader.replication.throttled.replicas", "0:1 , 1:1", "0:1,1:1"),
        ("leader.replication.throttled.replicas", "*", "*"),
        ("follower.replication.throttled.replicas", "", ""),
    ],
)
def test_valid_values_are_stored_as_kafka_renders_them(name: str, value: str, stored: str) -> None:
    assert normalize(name, value) == stored


@pytest.mark.parametrize("value", ["0:x", "*,0:1", "0-1", "**"])
def test_throttled_replica_lists(value: str) -> None:
    items = ", ".join(part.strip() for part in value.split(","))
    assert _message("leader.replication.throttled.replicas", value) == (
        f"Invalid value [{items}] for configuration leader.replication.throttled.replicas: "
        "leader.replication.throttled.replicas must be the literal '*' or a list of replicas "
        "in the following format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."
    )


def test_cleanup_policy_kafka_rules_then_driftlogs() -> None:
    # Kafka's own validator (ValidList.in, Kafka 4.2 rules).
    assert _message("cleanup.policy", "Delete") == (
        "Invalid value Delete for configuration cleanup.policy: "
        "String must be one of: compact, delete"
    )
    assert _message("cleanup.policy", "delete,delete") == (
        "Configuration 'cleanup.policy' values must not be duplicated."
    )
    assert _message("cleanup.policy", "delete,,compact") == (
        "Configuration 'cleanup.policy' values must not be empty."
    )
    # Both policies and their combinations are applied.
    assert {"compact", "delete"} == SUPPORTED_CLEANUP_POLICIES
    for value in ("compact", "delete,compact", "compact,delete"):
        assert normalize("cleanup.policy", value) == value
    # Valid in Kafka 4.2, refused here: retention always applies.
    assert "empty cleanup.policy" in _message("cleanup.policy", "")


def test_rules_across_configs() -> None:
    with pytest.raises(ConfigError) as raised:
        validate_changes({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"}, {}, {})
    assert str(raised.value) == (
        "conflict topic config setting min.compaction.lag.ms (10) > max.compaction.lag.ms (5)"
    )
    # Against what the topic already has.
    with pytest.raises(ConfigError, match="conflict topic config"):
        validate_changes({"min.compaction.lag.ms": "10"}, {"max.compaction.lag.ms": "5"}, {})
    validate_changes({"min.compaction.lag.ms": "5", "max.compaction.lag.ms": "5"}, {}, {})

    # Tiered storage rules: local retention within retention (the broker default counts).
    remote = {"remote.storage.enable": "true"}
    with pytest.raises(ConfigError) as raised:
        validate_changes(
            {**remote, "local.retention.ms": "7200000"}, {}, {"retention.ms": "3600000"}
        )
    assert str(raised.value) == (
        "Invalid value 7200000 for configuration local.retention.ms: "
        "Value must not be more than retention.ms property value: 3600000"
    )
    with pytest.raises(ConfigError, match=r"Value must not be -1 as retention\.bytes value is set"):
        validate_changes(
            {**remote, "retention.bytes": "100", "local.retention.bytes": "-1"}, {}, {}
        )
    validate_changes({**remote, "local.retention.ms": "3600000"}, {}, {"retention.ms": "3600000"})
    with pytest.raises(ConfigError, match=r"`remote\.log\.copy\.disable` is set to true"):
        validate_changes(
            {**remote, "remote.log.copy.disable": "true", "local.retention.ms": "1000"}, {}, {}
        )
    # Turning it off needs remote.log.delete.on.disable, now or already set.
    with pytest.raises(ConfigError, match="invalid to disable remote storage"):
        validate_changes({"remote.storage.enable": "false"}, remote, {})
    with pytest.raises(ConfigError, match="invalid to disable remote storage"):
        validate_changes({"remote.storage.enable": None}, remote, {})
    validate_changes(
        {"remote.storage.enable": "false", "remote.log.delete.on.disable": "true"}, remote, {}
    )


def test_validate_changes_normalizes_and_keeps_deletes() -> None:
    assert validate_changes({"retention.ms": " 60000", "preallocate": None}, {}, {}) == {
        "retention.ms": "60000",
        "preallocate": None,
    }
    # A value stored under older, looser rules does not block other changes.
    assert validate_changes({"retention.ms": "1"}, {"segment.bytes": "100"}, {}) == {
        "retention.ms": "1"
    }


def test_append_and_subtract_follow_kafkas_controller() -> None:
    name = "leader.replication.throttled.replicas"
    assert apply_list_op(name, "APPEND", "0:1,1:1", None) == "0:1,1:1"
    assert apply_list_op(name, "APPEND", "1:1,2:1", "0:1,1:1") == "0:1,1:1,2:1"
    assert apply_list_op(name, "SUBTRACT", "0:1,9:9", "0:1,1:1,2:1") == "1:1,2:1"
    assert apply_list_op(name, "SUBTRACT", "1:1", "1:1") == ""
    # An unset config starts from its default.
    assert apply_list_op("cleanup.policy", "APPEND", "compact", None) == "delete,compact"
    assert apply_list_op("cleanup.policy", "SUBTRACT", "delete", None) == ""
    assert apply_list_op("cleanup.policy", "APPEND", "delete", None) == "delete"
    with pytest.raises(ConfigError) as raised:
        apply_list_op("retention.ms", "APPEND", "5", None)
    assert str(raised.value) == "Can't APPEND to key retention.ms because its type is not LIST."
    with pytest.raises(ConfigError, match="Can't SUBTRACT to key preallocate"):
        apply_list_op("preallocate", "SUBTRACT", "true", "true")
    with pytest.raises(ConfigError, match="Unknown topic config name: nope"):
        apply_list_op("nope", "APPEND", "x", None)


def test_describe_untouched_set_and_broker_defaults() -> None:
    broker = {
        "log.retention.ms": [("3600000", ConfigSource.STATIC_BROKER_CONFIG)],
        "message.max.bytes": [
            ("2000", ConfigSource.DYNAMIC_BROKER_CONFIG),
            ("1048588", ConfigSource.DEFAULT_CONFIG),
        ],
    }
    described = {d.name: d for d in describe({"segment.ms": "60000"}, broker)}
    assert set(described) == set(KAFKA_4_TOPIC_CONFIGS)

    retention = described["retention.ms"]
    assert (retention.value, retention.source, retention.type) == (
        "3600000",
        ConfigSource.STATIC_BROKER_CONFIG,
        ConfigType.LONG,
    )
    assert [(s.name, s.value) for s in retention.synonyms] == [("log.retention.ms", "3600000")]

    segment = described["segment.ms"]
    assert (segment.value, segment.source) == ("60000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert [(s.name, s.value, s.source) for s in segment.synonyms] == [
        ("segment.ms", "60000", ConfigSource.DYNAMIC_TOPIC_CONFIG),
        ("log.roll.ms", "604800000", ConfigSource.DEFAULT_CONFIG),
    ]

    size = described["max.message.bytes"]
    assert (size.value, size.source) == ("2000", ConfigSource.DYNAMIC_BROKER_CONFIG)
    assert [s.source for s in size.synonyms] == [
        ConfigSource.DYNAMIC_BROKER_CONFIG,
        ConfigSource.DEFAULT_CONFIG,
    ]

    throttled = described["leader.replication.throttled.replicas"]
    assert (throttled.value, throttled.source, throttled.synonyms) == (
        "",
        ConfigSource.DEFAULT_CONFIG,
        (),
    )
    # Driftlog's no-bound default is not Kafka 4's 3600000: a static broker value.
    assert described["message.timestamp.after.max.ms"].source == ConfigSource.STATIC_BROKER_CONFIG

    assert described["retention.ms"].documentation.startswith("How long records are kept")
    assert "Driftlog applies it" in described["retention.ms"].documentation
    assert "Driftlog stores it without effect" in described["segment.ms"].documentation
    for entry in described.values():
        applies = "Driftlog applies it" in entry.documentation
        assert applies == (entry.name in APPLIED)

    assert defaults(broker)["retention.ms"] == "3600000"
    assert defaults(broker)["max.message.bytes"] == "2000"
    assert defaults(broker)["segment.ms"] == "604800000"


def test_static_source_compares_with_kafkas_default() -> None:
    assert static_source("log.retention.ms", "604800000") == ConfigSource.DEFAULT_CONFIG
    assert static_source("log.retention.ms", "3600000") == ConfigSource.STATIC_BROKER_CONFIG
    assert static_source("log.retention.bytes", "-1") == ConfigSource.DEFAULT_CONFIG
    assert set(BROKER_SYNONYMS) == {b for _, _, b in KAFKA_4_TOPIC_CONFIGS.values() if b}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.5"),
        (1.0, "1.0"),
        (0.0, "0.0"),
        (0.001, "0.001"),
        (0.0001, "1.0E-4"),
        (1.25e-5, "1.25E-5"),
        (1234567.0, "1234567.0"),
        (1e7, "1.0E7"),
        (-2.5e10, "-2.5E10"),
    ],
)
def test_java_double_rendering(value: float, text: str) -> None:
    assert java_double(value) == text
