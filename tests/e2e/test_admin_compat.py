"""Admin APIs that real tools use, through a real agent and confluent-kafka (librdkafka).

compression.type values, manual replica assignments, dynamic broker configs,
DescribeCluster, KIP-467 per-record produce errors, and Kafka 4's whole topic config
catalogue (with a raw client where the exact response fields matter: librdkafka's
DescribeConfigs has no config_type or documentation).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from batch_builder import build_batch
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclOperation,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)
from conftest import AgentProcess, Cluster
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.create_topics.v7.request import (
    CreatableTopic,
    CreatableTopicConfig,
    CreateTopicsRequest,
)
from kio.schema.describe_configs.v4.request import DescribeConfigsRequest, DescribeConfigsResource
from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs.v1.request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from kio.schema.produce.v11.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.static.primitive import Records, i8, i16, i32, i32Timedelta
from raw_client import RawClient, metadata_node_ids

CODECS = ["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]
HOUR_MS = 3_600_000


def _error_name(future: Any) -> str:
    with pytest.raises(KafkaException) as raised:
        future.result(10)
    error: KafkaError = raised.value.args[0]
    return str(error.name())


def _error(future: Any) -> KafkaError:
    with pytest.raises(KafkaException) as raised:
        future.result(10)
    error: KafkaError = raised.value.args[0]
    return error


def _topic_config(admin: AdminClient, topic: str) -> dict[str, Any]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs: dict[str, Any] = admin.describe_configs([resource])[resource].result(10)
    return configs


def _broker_config(admin: AdminClient, node_id: int = 0) -> dict[str, Any]:
    resource = ConfigResource(ConfigResource.Type.BROKER, str(node_id))
    configs: dict[str, Any] = admin.describe_configs([resource])[resource].result(10)
    return configs


def _consume(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(values) < n and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            values.append(message.value())
    consumer.close()
    return values


def _high_watermark(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    return int(high)


# AlterConfigs is deprecated in the client, but tools still send it.
@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_every_compression_type_is_accepted_stored_and_described(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    # CreateTopics takes each of Kafka's values and DescribeConfigs gives it back.
    for codec in CODECS:
        admin.create_topics([NewTopic(f"c-{codec}", 1, config={"compression.type": codec})])[
            f"c-{codec}"
        ].result(10)
        entry = _topic_config(admin, f"c-{codec}")["compression.type"]
        assert entry.value == codec
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert (
        _error_name(
            admin.create_topics([NewTopic("c-bad", 1, config={"compression.type": "brotli"})])[
                "c-bad"
            ]
        )
        == "INVALID_CONFIG"
    )

    # IncrementalAlterConfigs: set each value in turn, then delete back to the default.
    for codec in CODECS:
        change = ConfigResource(
            ConfigResource.Type.TOPIC,
            "c-producer",
            incremental_configs=[
                ConfigEntry("compression.type", codec, incremental_operation=AlterConfigOpType.SET)
            ],
        )
        admin.incremental_alter_configs([change])[change].result(10)
        assert _topic_config(admin, "c-producer")["compression.type"].value == codec
    delete = ConfigResource(
        ConfigResource.Type.TOPIC,
        "c-producer",
        incremental_configs=[
            ConfigEntry("compression.type", None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    admin.incremental_alter_configs([delete])[delete].result(10)
    entry = _topic_config(admin, "c-producer")["compression.type"]
    assert (entry.value, entry.is_default) == ("producer", True)

    # AlterConfigs (legacy, replaces the whole set).
    legacy = ConfigResource(
        ConfigResource.Type.TOPIC, "c-gzip", set_config={"compression.type": "lz4"}
    )
    admin.alter_configs([legacy])[legacy].result(10)
    assert _topic_config(admin, "c-gzip")["compression.type"].value == "lz4"
    bad = ConfigResource(ConfigResource.Type.TOPIC, "c-gzip", set_config={"compression.type": "x"})
    assert _error_name(admin.alter_configs([bad])[bad]) == "INVALID_CONFIG"
    assert _topic_config(admin, "c-gzip")["compression.type"].value == "lz4"

    # Batches are stored as the producer compressed them (no recompression):
    # a snappy producer on a gzip topic is read back intact by any consumer.
    producer = Producer({"bootstrap.servers": agent.bootstrap, "compression.type": "snappy"})
    for i in range(20):
        producer.produce("c-lz4", value=b"record-%d" % i, partition=0)
    assert producer.flush(20) == 0
    assert _consume(agent.bootstrap, "c-lz4", 20) == [b"record-%d" % i for i in range(20)]


def test_replica_assignments_naming_live_brokers(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    [broker] = admin.list_topics(timeout=10).brokers.values()
    node = broker.id  # as Metadata reports it

    admin.create_topics([NewTopic("ra", 3, replica_assignment=[[node], [node], [node]])])[
        "ra"
    ].result(10)
    assert len(admin.list_topics(timeout=10).topics["ra"].partitions) == 3
    # validate_only checks without creating.
    admin.create_topics([NewTopic("ra-dry", 1, replica_assignment=[[node]])], validate_only=True)[
        "ra-dry"
    ].result(10)
    assert "ra-dry" not in admin.list_topics(timeout=10).topics

    unknown = _error(
        admin.create_topics([NewTopic("ra-x", 1, replica_assignment=[[node + 7]])])["ra-x"]
    )
    assert unknown.name() == "INVALID_REPLICA_ASSIGNMENT"
    assert f"broker {node + 7}" in unknown.str()
    twice = _error(
        admin.create_topics([NewTopic("ra-y", 1, replica_assignment=[[node, node]])])["ra-y"]
    )
    assert twice.name() == "INVALID_REPLICA_ASSIGNMENT"
    assert "more than once" in twice.str()
    assert "ra-x" not in admin.list_topics(timeout=10).topics

    # CreatePartitions: one replica list per new partition.
    admin.create_partitions([NewPartitions("ra", 5, replica_assignment=[[node], [node]])])[
        "ra"
    ].result(10)
    assert len(admin.list_topics(timeout=10).topics["ra"].partitions) == 5
    short = _error(
        admin.create_partitions([NewPartitions("ra", 8, replica_assignment=[[node]])])["ra"]
    )
    assert short.name() == "INVALID_REPLICA_ASSIGNMENT"
    assert "3 additional partition(s), but only 1 assignment(s)" in short.str()
    ghost = _error(
        admin.create_partitions([NewPartitions("ra", 6, replica_assignment=[[node + 1]])])["ra"]
    )
    assert ghost.name() == "INVALID_REPLICA_ASSIGNMENT"
    assert len(admin.list_topics(timeout=10).topics["ra"].partitions) == 5

    # The partitions work like any others.
    producer = Producer({"bootstrap.servers": agent.bootstrap})
    producer.produce("ra", value=b"v", partition=4)
    assert producer.flush(20) == 0


def test_replica_assignments_across_a_cluster(cluster: Cluster) -> None:
    agents = [cluster.add("a"), cluster.add("b")]
    for agent in agents:  # until each agent's own Metadata lists both
        deadline = time.monotonic() + 30
        nodes: set[int] = set()
        while nodes != {1, 2} and time.monotonic() < deadline:
            nodes = metadata_node_ids(agent.bootstrap)
            time.sleep(0.2)
        assert nodes == {1, 2}
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})

    admin.create_topics([NewTopic("spread", 2, replica_assignment=[[1, 2], [2, 1]])])[
        "spread"
    ].result(10)
    assert len(admin.list_topics(timeout=10).topics["spread"].partitions) == 2
    uneven = _error(
        admin.create_topics([NewTopic("uneven", 2, replica_assignment=[[1, 2], [2]])])["uneven"]
    )
    assert uneven.name() == "INVALID_REPLICA_ASSIGNMENT"
    assert "not consistent with previous partitions" in uneven.str()
    admin.create_partitions([NewPartitions("spread", 3, replica_assignment=[[2, 1]])])[
        "spread"
    ].result(10)
    assert len(admin.list_topics(timeout=10).topics["spread"].partitions) == 3


def _broker_change(node: int, *entries: ConfigEntry) -> ConfigResource:
    return ConfigResource(ConfigResource.Type.BROKER, str(node), incremental_configs=list(entries))


def _set(name: str, value: str) -> ConfigEntry:
    return ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)


def _connection_refused(bootstrap: str) -> bool:
    """Whether a new connection is closed without an answer to ApiVersions."""
    client = RawClient(bootstrap)
    try:
        request = ApiVersionsRequest(client_software_name="t", client_software_version="1")
        client.send_bytes(client.encode(request))
        return client.recv_frame() is None
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        return True
    finally:
        client.close()


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_dynamic_broker_configs(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics(
        [NewTopic("dyn", 1), NewTopic("dyn-own", 1, config={"max.message.bytes": "100000"})]
    )["dyn"].result(10)
    time.sleep(0.5)
    before = _broker_config(admin)
    assert before["message.max.bytes"].value == "1048588"
    assert not before["message.max.bytes"].is_read_only
    # Kafka's own default, which no command-line option changes.
    assert before["message.max.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert before["max.connections"].value == "10000"
    assert before["auto.create.topics.enable"].is_read_only

    # message.max.bytes: the default batch limit of topics without their own.
    change = _broker_change(0, _set("message.max.bytes", "2000"))
    admin.incremental_alter_configs([change])[change].result(10)
    after = _broker_config(admin)
    assert after["message.max.bytes"].value == "2000"
    assert after["message.max.bytes"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    topic_entry = _topic_config(admin, "dyn")["max.message.bytes"]
    assert topic_entry.value == "2000"
    assert topic_entry.source == ConfigSource.DYNAMIC_BROKER_CONFIG.value

    failures: list[str] = []
    producer = Producer({"bootstrap.servers": agent.bootstrap, "compression.type": "none"})

    def report(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.name())

    producer.produce("dyn", value=b"x" * 5000, partition=0, on_delivery=report)
    producer.produce("dyn-own", value=b"x" * 5000, partition=0, on_delivery=report)
    producer.flush(20)
    assert failures == ["MSG_SIZE_TOO_LARGE"]  # dyn-own keeps its own 100000

    # max.connections: new connections beyond it are refused; the admin's stay.
    change = _broker_change(0, _set("max.connections", "1"))
    admin.incremental_alter_configs([change])[change].result(10)
    assert _connection_refused(agent.bootstrap)
    assert _broker_config(admin)["max.connections"].value == "1"

    # DELETE returns to the value the agent was started with, at once.
    delete = _broker_change(
        0,
        ConfigEntry("max.connections", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("message.max.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    )
    admin.incremental_alter_configs([delete])[delete].result(10)
    assert not _connection_refused(agent.bootstrap)
    restored = _broker_config(admin)
    assert restored["max.connections"].value == "10000"
    assert restored["message.max.bytes"].value == "1048588"
    assert restored["message.max.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    producer.produce("dyn", value=b"x" * 5000, partition=0, on_delivery=report)
    assert producer.flush(20) == 0
    assert failures == ["MSG_SIZE_TOO_LARGE"]

    # Refusals: per resource, INVALID_REQUEST with the configs named; nothing applied.
    mixed = _broker_change(
        0, _set("message.max.bytes", "3000"), _set("auto.create.topics.enable", "false")
    )
    refused = _error(admin.incremental_alter_configs([mixed])[mixed])
    assert refused.name() == "INVALID_REQUEST"
    assert "Cannot update these configs dynamically: auto.create.topics.enable" in refused.str()
    assert _broker_config(admin)["message.max.bytes"].value == "1048588"
    bad_value = _broker_change(0, _set("max.connections", "none"))
    refused = _error(admin.incremental_alter_configs([bad_value])[bad_value])
    assert refused.name() == "INVALID_REQUEST"
    assert "Invalid value none for configuration max.connections" in refused.str()
    # Resource names this agent refuses: another broker's id (Kafka's wording).
    client = RawClient(agent.bootstrap)
    for name, expected in [
        ("5", "Unexpected broker id, expected 0, but received 5"),
        ("x", "Node id must be an integer, but it is: x"),
    ]:
        response = client.request(
            IncrementalAlterConfigsRequest(
                resources=(
                    AlterConfigsResource(
                        resource_type=i8(4),
                        resource_name=name,
                        configs=(
                            AlterableConfig(
                                name="message.max.bytes", config_operation=i8(0), value="3000"
                            ),
                        ),
                    ),
                ),
                validate_only=False,
            )
        )
        [result] = response.responses
        assert result.error_code == ErrorCode.invalid_request
        assert expected in (result.error_message or "")
    client.close()
    assert _broker_config(admin)["message.max.bytes"].value == "1048588"

    # AlterConfigs (legacy) replaces the agent's whole dynamic set.
    legacy = ConfigResource(
        ConfigResource.Type.BROKER, "0", set_config={"message.max.bytes": "4000"}
    )
    admin.alter_configs([legacy])[legacy].result(10)
    assert _broker_config(admin)["message.max.bytes"].value == "4000"
    legacy = ConfigResource(ConfigResource.Type.BROKER, "0", set_config={"max.connections": "500"})
    admin.alter_configs([legacy])[legacy].result(10)
    configs = _broker_config(admin)
    assert configs["max.connections"].value == "500"
    assert configs["message.max.bytes"].value == "1048588"  # not in the set: back to static
    legacy = ConfigResource(ConfigResource.Type.BROKER, "0", set_config={"num.partitions": "4"})
    assert _error_name(admin.alter_configs([legacy])[legacy]) == "INVALID_REQUEST"

    # The cluster-wide default (the empty resource name, which confluent-kafka will not
    # send; Kafka's tools do): below the broker's own value.
    client = RawClient(agent.bootstrap)
    response = client.request(
        IncrementalAlterConfigsRequest(
            resources=(
                AlterConfigsResource(
                    resource_type=i8(4),
                    resource_name="",
                    configs=(
                        AlterableConfig(
                            name="message.max.bytes", config_operation=i8(0), value="6000"
                        ),
                    ),
                ),
            ),
            validate_only=False,
        )
    )
    client.close()
    assert response.responses[0].error_code == ErrorCode.none
    configs = _broker_config(admin)
    assert configs["message.max.bytes"].value == "6000"
    assert configs["message.max.bytes"].source == (ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    assert configs["max.connections"].value == "500"  # the broker's own, untouched

    # Stored in the coordinator: a restart keeps both.
    agent.terminate()
    agent.restart()
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    configs = _broker_config(admin)
    assert configs["max.connections"].value == "500"
    assert configs["max.connections"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert configs["message.max.bytes"].value == "6000"
    assert _topic_config(admin, "dyn")["max.message.bytes"].value == "6000"


def test_describe_cluster(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    plain = admin.describe_cluster(request_timeout=10).result(10)
    assert plain.cluster_id
    assert plain.controller is not None and plain.controller.id == 0
    assert [(n.id, n.host, n.port) for n in plain.nodes] == [(0, "127.0.0.1", agent.port)]
    assert plain.authorized_operations is None

    full = admin.describe_cluster(include_authorized_operations=True, request_timeout=10).result(10)
    assert full.cluster_id == plain.cluster_id
    # No ACLs: every operation a Kafka cluster resource supports, as Kafka without
    # an authorizer reports.
    assert set(full.authorized_operations) == {
        AclOperation.CREATE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.CLUSTER_ACTION,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
        AclOperation.IDEMPOTENT_WRITE,
    }

    # Metadata's topic flag (librdkafka's DescribeTopics) likewise.
    admin.create_topics([NewTopic("described", 2)])["described"].result(10)
    [topic] = admin.describe_topics(
        TopicCollection(["described"]), include_authorized_operations=True
    ).values()
    description = topic.result(10)
    assert len(description.partitions) == 2
    assert set(description.authorized_operations) == {
        AclOperation.READ,
        AclOperation.WRITE,
        AclOperation.CREATE,
        AclOperation.DELETE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
    }


def _produce(topic: str, batch: bytes) -> Any:
    return ProduceRequest(
        transactional_id=None,
        acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        topic_data=(
            TopicProduceData(
                name=TopicName(topic),
                partition_data=(PartitionProduceData(index=i32(0), records=Records(batch)),),
            ),
        ),
    )


def test_invalid_records_get_record_errors_and_nothing_is_stored(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    bounded = {
        "message.timestamp.before.max.ms": str(HOUR_MS),
        "message.timestamp.after.max.ms": str(HOUR_MS),
    }
    admin.create_topics(
        [
            NewTopic("bounded", 1, config=bounded),
            NewTopic("appended", 1, config={"message.timestamp.type": "LogAppendTime"}),
        ]
    )["bounded"].result(10)
    time.sleep(0.5)
    assert _topic_config(admin, "bounded")["message.timestamp.before.max.ms"].value == str(HOUR_MS)

    # A real producer: an old record is refused with INVALID_TIMESTAMP, a current one stored.
    failures: list[str] = []

    def report(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.name())

    now_ms = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": agent.bootstrap, "compression.type": "lz4"})
    producer.produce("bounded", value=b"old", partition=0, timestamp=now_ms - 2 * HOUR_MS,
                     on_delivery=report)  # fmt: skip
    producer.flush(20)
    assert failures == ["INVALID_TIMESTAMP"]
    producer.produce("bounded", value=b"now", partition=0, on_delivery=report)
    assert producer.flush(20) == 0
    assert failures == ["INVALID_TIMESTAMP"]
    assert _high_watermark(agent.bootstrap, "bounded") == 1

    # The exact response: records 1 and 2 (two and four hours old) are named; the
    # whole batch is refused, so record 0 is not stored either.
    client = RawClient(agent.bootstrap)
    now_ms = int(time.time() * 1000)
    batch = build_batch([b"a", b"b", b"c"], base_timestamp_ms=now_ms,
                        timestamp_step_ms=-2 * HOUR_MS)  # fmt: skip
    response = client.request(_produce("bounded", batch))
    [part] = response.responses[0].partition_responses
    assert part.error_code == ErrorCode.invalid_timestamp
    assert part.error_message == "One or more records have been rejected due to invalid timestamp"
    assert [e.batch_index for e in part.record_errors] == [1, 2]
    assert "is out of range" in (part.record_errors[0].batch_index_error_message or "")
    assert part.base_offset == -1
    # Future records too (after.max.ms).
    batch = build_batch([b"a", b"b"], base_timestamp_ms=now_ms + 2 * HOUR_MS)
    [part] = client.request(_produce("bounded", batch)).responses[0].partition_responses
    assert part.error_code == ErrorCode.invalid_timestamp
    assert [e.batch_index for e in part.record_errors] == [0, 1]
    # A batch inside the bounds is stored after the refused ones.
    batch = build_batch([b"a", b"b"], base_timestamp_ms=now_ms)
    [part] = client.request(_produce("bounded", batch)).responses[0].partition_responses
    assert (part.error_code, part.base_offset, part.record_errors) == (ErrorCode.none, 1, ())
    assert _high_watermark(agent.bootstrap, "bounded") == 3

    # A LogAppendTime topic refuses producer batches that claim LogAppendTime.
    batch = build_batch([b"a", b"b", b"c"], attributes=0x08)
    [part] = client.request(_produce("appended", batch)).responses[0].partition_responses
    assert part.error_code == ErrorCode.invalid_timestamp
    assert [e.batch_index for e in part.record_errors] == [0, 1, 2]
    assert "LogAppendTime" in (part.record_errors[0].batch_index_error_message or "")
    assert _high_watermark(agent.bootstrap, "appended") == 0
    client.close()

    # Topics without bounds are not checked: an old timestamp is stored as sent.
    admin.create_topics([NewTopic("unbounded", 1)])["unbounded"].result(10)
    producer.produce("unbounded", value=b"old", partition=0, timestamp=1000, on_delivery=report)
    assert producer.flush(20) == 0
    assert failures == ["INVALID_TIMESTAMP"]


# ------------------------------------------------------------------ Kafka 4's topic configs

# Every topic config of Kafka 4 with two valid values: one set at create time, one by an
# alter. Together they satisfy Kafka's rules across configs (tiered storage on, then off).
ROUND_TRIP = {
    "cleanup.policy": ("delete", "delete"),  # the only policy Driftlog applies
    "compression.gzip.level": ("5", "9"),
    "compression.lz4.level": ("12", "17"),
    "compression.type": ("zstd", "lz4"),
    "compression.zstd.level": ("-5", "22"),
    "delete.retention.ms": ("3600000", "0"),
    "file.delete.delay.ms": ("1000", "0"),
    "flush.messages": ("1000", "1"),
    "flush.ms": ("5000", "0"),
    "follower.replication.throttled.replicas": ("*", "0:0"),
    "index.interval.bytes": ("8192", "0"),
    "leader.replication.throttled.replicas": ("0:1,1:1", "*"),
    "local.retention.bytes": ("1073741824", "-1"),
    "local.retention.ms": ("86400000", "-1"),
    "max.compaction.lag.ms": ("86400000", "120000"),
    "max.message.bytes": ("2097152", "1000"),
    "message.downconversion.enable": ("false", "true"),
    "message.timestamp.after.max.ms": ("7200000", "0"),
    "message.timestamp.before.max.ms": ("86400000", "0"),
    "message.timestamp.type": ("LogAppendTime", "CreateTime"),
    "min.cleanable.dirty.ratio": ("0.25", "0.75"),
    "min.compaction.lag.ms": ("60000", "120000"),
    "min.insync.replicas": ("2", "3"),
    "preallocate": ("true", "false"),
    "remote.log.copy.disable": ("true", "false"),
    "remote.log.delete.on.disable": ("true", "true"),
    "remote.storage.enable": ("true", "false"),
    "retention.bytes": ("1073741824", "-1"),
    "retention.ms": ("86400000", "-1"),
    "segment.bytes": ("2097152", "1048576"),
    "segment.index.bytes": ("4096", "2048"),
    "segment.jitter.ms": ("100", "0"),
    "segment.ms": ("3600000", "1"),
    "unclean.leader.election.enable": ("true", "false"),
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


def _topic_values(admin: AdminClient, topic: str) -> dict[str, tuple[str, int]]:
    return {
        name: (entry.value, entry.source) for name, entry in _topic_config(admin, topic).items()
    }


def _incremental(topic: str, op: AlterConfigOpType, **configs: str) -> ConfigResource:
    entries = [
        ConfigEntry(name.replace("_", "."), value, incremental_operation=op)
        for name, value in configs.items()
    ]
    return ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_every_topic_config_round_trips(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    topic_source = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    created = {name: values[0] for name, values in ROUND_TRIP.items()}
    admin.create_topics([NewTopic("all", 1, config=created)])["all"].result(10)
    assert _topic_values(admin, "all") == {n: (v, topic_source) for n, v in created.items()}

    # IncrementalAlterConfigs SET, all at once.
    altered = {name: values[1] for name, values in ROUND_TRIP.items()}
    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        "all",
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in altered.items()
        ],
    )
    admin.incremental_alter_configs([change])[change].result(10)
    assert _topic_values(admin, "all") == {n: (v, topic_source) for n, v in altered.items()}

    # AlterConfigs (legacy) puts the create-time set back.
    legacy = ConfigResource(ConfigResource.Type.TOPIC, "all", set_config=created)
    admin.alter_configs([legacy])[legacy].result(10)
    assert _topic_values(admin, "all") == {n: (v, topic_source) for n, v in created.items()}

    # Values are stored as Kafka renders them.
    spelled = _incremental("all", AlterConfigOpType.SET, segment_ms=" +60000 ", preallocate="FALSE")
    admin.incremental_alter_configs([spelled])[spelled].result(10)
    values = _topic_values(admin, "all")
    assert (values["segment.ms"][0], values["preallocate"][0]) == ("60000", "false")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("segment.bytes", "1048575", "Value must be at least 1048576"),  # int
        ("max.message.bytes", "2147483648", "Not a number of type INT"),  # int overflow
        ("retention.ms", "-2", "Value must be at least -1"),  # long
        ("retention.bytes", "9223372036854775808", "Not a number of type LONG"),
        ("min.cleanable.dirty.ratio", "1.5", "Value must be no more than 1"),  # double
        ("compression.zstd.level", "23", "Value must be no more than 22"),
        ("compression.gzip.level", "0", "Value must be between 1 and 9 or equal to -1"),
        ("preallocate", "maybe", "Expected value to be either true or false"),  # boolean
        ("compression.type", "brotli", "String must be one of: uncompressed, zstd, lz4"),
    ],
)
@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_out_of_range_values_get_invalid_config(
    agent: AgentProcess, name: str, value: str, message: str
) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    expected = f"Invalid value {value} for configuration {name}: {message}"
    error = _error(admin.create_topics([NewTopic("bad", 1, config={name: value})])["bad"])
    assert (error.name(), expected in error.str()) == ("INVALID_CONFIG", True)
    assert "bad" not in admin.list_topics(timeout=10).topics

    admin.create_topics([NewTopic("good", 1)])["good"].result(10)
    before = _topic_values(admin, "good")[name]
    change = _incremental("good", AlterConfigOpType.SET, **{name.replace(".", "_"): value})
    error = _error(admin.incremental_alter_configs([change])[change])
    assert (error.name(), expected in error.str()) == ("INVALID_CONFIG", True)
    legacy = ConfigResource(ConfigResource.Type.TOPIC, "good", set_config={name: value})
    assert _error(admin.alter_configs([legacy])[legacy]).name() == "INVALID_CONFIG"
    assert _topic_values(admin, "good")[name] == before


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_unknown_and_refused_names(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("named", 1)])["named"].result(10)
    # message.format.version: removed in Kafka 4.0, so refused as Kafka 4 does.
    for name in ("no.such.config", "message.format.version", "retention.minutes"):
        error = _error(admin.create_topics([NewTopic("x", 1, config={name: "1"})])["x"])
        assert (error.name(), error.str()) == (
            "INVALID_CONFIG",
            f"Unknown topic config name: {name}",
        )
        for op in (AlterConfigOpType.SET, AlterConfigOpType.DELETE):
            entry = ConfigEntry(name, "1" if op == AlterConfigOpType.SET else None,
                                incremental_operation=op)  # fmt: skip
            change = ConfigResource(ConfigResource.Type.TOPIC, "named", incremental_configs=[entry])
            assert _error(admin.incremental_alter_configs([change])[change]).name() == (
                "INVALID_CONFIG"
            )
    # An empty cleanup.policy is Kafka 4.2's "keep everything": retention always applies here.
    error = _error(admin.create_topics([NewTopic("x", 1, config={"cleanup.policy": ""})])["x"])
    assert error.name() == "INVALID_CONFIG" and "empty cleanup.policy" in error.str()
    assert "x" not in admin.list_topics(timeout=10).topics


def test_append_and_subtract_on_list_configs(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("lists", 1)])["lists"].result(10)
    leader = "leader_replication_throttled_replicas"

    def value(name: str) -> tuple[str, int]:
        return _topic_values(admin, "lists")[name.replace("_", ".")]

    def alter(op: AlterConfigOpType, **configs: str) -> None:
        change = _incremental("lists", op, **configs)
        admin.incremental_alter_configs([change])[change].result(10)

    def refused(op: AlterConfigOpType, **configs: str) -> KafkaError:
        change = _incremental("lists", op, **configs)
        return _error(admin.incremental_alter_configs([change])[change])

    alter(AlterConfigOpType.APPEND, **{leader: "0:1,1:1"})  # from the empty default
    assert value(leader) == ("0:1,1:1", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    alter(AlterConfigOpType.APPEND, **{leader: "1:1,2:1"})  # 1:1 is there already
    assert value(leader)[0] == "0:1,1:1,2:1"
    alter(AlterConfigOpType.SUBTRACT, **{leader: "0:1,9:9"})
    assert value(leader)[0] == "1:1,2:1"
    alter(AlterConfigOpType.SUBTRACT, **{leader: "1:1,2:1"})
    assert value(leader)[0] == ""
    alter(AlterConfigOpType.APPEND, follower_replication_throttled_replicas="*")
    assert value("follower_replication_throttled_replicas")[0] == "*"
    # The result is validated like a SET: "*" cannot be mixed with pairs.
    error = refused(AlterConfigOpType.APPEND, follower_replication_throttled_replicas="0:1")
    assert error.name() == "INVALID_CONFIG"
    assert "must be the literal '*'" in error.str()
    assert value("follower_replication_throttled_replicas")[0] == "*"

    # cleanup.policy starts from its default, delete.
    alter(AlterConfigOpType.APPEND, cleanup_policy="delete")
    assert value("cleanup_policy") == ("delete", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    alter(AlterConfigOpType.APPEND, cleanup_policy="compact")
    assert value("cleanup_policy")[0] == "delete,compact"
    alter(AlterConfigOpType.SUBTRACT, cleanup_policy="delete")
    assert value("cleanup_policy")[0] == "compact"
    error = refused(AlterConfigOpType.SUBTRACT, cleanup_policy="compact")
    assert (error.name(), "empty cleanup.policy" in error.str()) == ("INVALID_CONFIG", True)
    assert value("cleanup_policy")[0] == "compact"

    # Not a list: Kafka's controller answers INVALID_CONFIG.
    for op, verb in (
        (AlterConfigOpType.APPEND, "APPEND"),
        (AlterConfigOpType.SUBTRACT, "SUBTRACT"),
    ):
        error = refused(op, retention_ms="5")
        assert (error.name(), error.str()) == (
            "INVALID_CONFIG",
            f"Can't {verb} to key retention.ms because its type is not LIST.",
        )
    # ... and Kafka's broker, for a broker config.
    change = _broker_change(
        0, ConfigEntry("message.max.bytes", "5", incremental_operation=AlterConfigOpType.APPEND)
    )
    error = _error(admin.incremental_alter_configs([change])[change])
    assert (error.name(), error.str()) == (
        "INVALID_CONFIG",
        "Config value append is not allowed for config key: message.max.bytes",
    )

    # SET and DELETE still work alongside.
    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        "lists",
        incremental_configs=[
            ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry(
                "leader.replication.throttled.replicas",
                "3:1",
                incremental_operation=AlterConfigOpType.APPEND,
            ),
        ],
    )
    admin.incremental_alter_configs([change])[change].result(10)
    assert (value("retention_ms")[0], value(leader)[0]) == ("60000", "3:1")
    alter(AlterConfigOpType.DELETE, **{leader: ""})
    assert value(leader) == ("", ConfigSource.DEFAULT_CONFIG.value)


def test_untouched_topic_lists_every_config_with_its_default(
    agent: AgentProcess, agent_factory: Any
) -> None:
    default_source = ConfigSource.DEFAULT_CONFIG.value
    static_source = ConfigSource.STATIC_BROKER_CONFIG.value
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("plain", 1)])["plain"].result(10)
    configs = _topic_config(admin, "plain")
    assert set(configs) == set(ROUND_TRIP)
    sources = {name: entry.source for name, entry in configs.items()}
    # Driftlog's default there (no bound) is not Kafka 4's (one hour): a static broker value.
    assert sources.pop("message.timestamp.after.max.ms") == static_source
    assert set(sources.values()) == {default_source}
    assert configs["retention.ms"].value == "604800000"
    assert configs["segment.bytes"].value == "1073741824"
    assert configs["leader.replication.throttled.replicas"].value == ""
    assert all(not entry.is_read_only and not entry.is_sensitive for entry in configs.values())

    # Broker defaults from the command line are static broker configs.
    tuned = agent_factory("--log-retention-ms", "3600000", "--log-retention-bytes", "5000000")
    admin = AdminClient({"bootstrap.servers": tuned.bootstrap})
    admin.create_topics([NewTopic("tuned", 1)])["tuned"].result(10)
    configs = _topic_config(admin, "tuned")
    retention = configs["retention.ms"]
    assert (retention.value, retention.source) == ("3600000", static_source)
    assert [(s.name, s.value, s.source) for s in retention.synonyms.values()] == [
        ("log.retention.ms", "3600000", static_source)
    ]
    assert (configs["retention.bytes"].value, configs["retention.bytes"].source) == (
        "5000000",
        static_source,
    )
    assert configs["segment.ms"].source == default_source
    broker = _broker_config(admin)
    assert (broker["log.retention.ms"].value, broker["log.retention.ms"].source) == (
        "3600000",
        static_source,
    )
    assert broker["log.retention.ms"].is_read_only

    # Set on the topic: the topic's value first, then the broker default it replaces.
    change = _incremental("tuned", AlterConfigOpType.SET, retention_ms="60000")
    admin.incremental_alter_configs([change])[change].result(10)
    retention = _topic_config(admin, "tuned")["retention.ms"]
    assert [(s.name, s.value, s.source) for s in retention.synonyms.values()] == [
        ("retention.ms", "60000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
        ("log.retention.ms", "3600000", static_source),
    ]


def _describe_v4(client: RawClient, topic: str, *, extras: bool) -> dict[str, Any]:
    request = DescribeConfigsRequest(
        resources=(
            DescribeConfigsResource(
                resource_type=i8(2), resource_name=topic, configuration_keys=None
            ),
        ),
        include_synonyms=extras,
        include_documentation=extras,
    )
    [result] = client.request(request).results
    assert result.error_code == ErrorCode.none
    return {entry.name: entry for entry in result.configs}


def test_describe_v4_types_documentation_and_synonyms(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("doc", 1, config={"flush.ms": "1000"})])["doc"].result(10)
    client = RawClient(agent.bootstrap)
    entries = _describe_v4(client, "doc", extras=True)
    assert set(entries) == set(ROUND_TRIP)
    # DescribeConfigs' config_type: BOOLEAN 1, STRING 2, INT 3, LONG 5, DOUBLE 6, LIST 7.
    expected_types = {
        "cleanup.policy": 7,
        "compression.type": 2,
        "message.timestamp.type": 2,
        "max.message.bytes": 3,
        "segment.bytes": 3,
        "compression.gzip.level": 3,
        "retention.ms": 5,
        "flush.messages": 5,
        "min.cleanable.dirty.ratio": 6,
        "preallocate": 1,
        "remote.storage.enable": 1,
        "leader.replication.throttled.replicas": 7,
    }
    assert {name: entries[name].config_type for name in expected_types} == expected_types
    assert all(entry.config_type != 0 for entry in entries.values())
    for name, entry in entries.items():
        documentation = entry.documentation or ""
        if name in APPLIED:
            assert "Driftlog applies it" in documentation, name
        else:
            assert "Driftlog stores it without effect" in documentation, name
    assert "no log segments" in (entries["segment.bytes"].documentation or "")

    flush = entries["flush.ms"]
    assert [(s.name, s.value, s.source) for s in flush.synonyms] == [
        ("flush.ms", "1000", 1),
        ("log.flush.interval.ms", "9223372036854775807", 5),
    ]
    assert entries["remote.storage.enable"].synonyms == ()  # no broker default in Kafka

    # Without asking: no documentation, no synonyms (as Kafka answers).
    plain = _describe_v4(client, "doc", extras=False)
    assert all(e.documentation is None and e.synonyms == () for e in plain.values())
    assert plain["flush.ms"].config_type == 5
    client.close()


def test_create_topics_answers_every_config_as_stored(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    request = CreateTopicsRequest(
        topics=(
            CreatableTopic(
                name=TopicName("answered"),
                num_partitions=i32(1),
                replication_factor=i16(-1),
                assignments=(),
                configs=(CreatableTopicConfig(name="segment.bytes", value=" 2097152 "),),
            ),
        ),
        validate_only=False,
    )
    [topic] = client.request(request).topics
    client.close()
    assert topic.error_code == ErrorCode.none
    configs = {c.name: (c.value, c.config_source) for c in topic.configs}
    assert set(configs) == set(ROUND_TRIP)
    assert configs["segment.bytes"] == ("2097152", 1)
    assert configs["retention.ms"] == ("604800000", 5)
