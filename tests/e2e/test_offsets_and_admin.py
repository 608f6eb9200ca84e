"""ListOffsets (earliest, latest, by timestamp) and topic administration with real clients."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)
from conftest import AgentProcess

BASE_TS = 1_700_000_000_000


def test_list_offsets_by_timestamp_inside_and_across_batches(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("times", 1)])["times"].result(10)
    # A long linger puts many records in one batch, so lookups must look inside batches.
    producer = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 200})
    timestamps = [BASE_TS + 10 * i for i in range(50)]
    for ts in timestamps[:25]:
        producer.produce("times", value=b"%d" % ts, partition=0, timestamp=ts)
    assert producer.flush(20) == 0
    for ts in timestamps[25:]:
        producer.produce("times", value=b"%d" % ts, partition=0, timestamp=ts)
    assert producer.flush(20) == 0

    consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "t"})
    # The latest offset is visible as soon as produce was acknowledged.
    assert consumer.get_watermark_offsets(TopicPartition("times", 0), timeout=10) == (0, 50)
    cases = {
        BASE_TS - 1: 0,
        BASE_TS: 0,
        BASE_TS + 1: 1,
        BASE_TS + 125: 13,
        BASE_TS + 240: 24,
        BASE_TS + 241: 25,
        BASE_TS + 490: 49,
    }
    for asked, expected in cases.items():
        [found] = consumer.offsets_for_times([TopicPartition("times", 0, asked)], timeout=10)
        assert found.offset == expected, (asked, found)
    [beyond] = consumer.offsets_for_times([TopicPartition("times", 0, BASE_TS + 491)], timeout=10)
    assert beyond.offset in (-1, 50)  # librdkafka maps "no such offset" to the end
    consumer.close()


def test_topic_administration(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    created = admin.create_topics(
        [NewTopic("adm", 2, config={"retention.ms": "3600000"})], request_timeout=10
    )
    created["adm"].result(10)

    with pytest.raises(KafkaException) as exists:
        admin.create_topics([NewTopic("adm", 2)])["adm"].result(10)
    assert exists.value.args[0].name() == "TOPIC_ALREADY_EXISTS"

    with pytest.raises(KafkaException) as invalid:
        admin.create_topics([NewTopic("bad-cfg", 1, config={"retention.ms": "soon"})])[
            "bad-cfg"
        ].result(10)
    assert invalid.value.args[0].name() == "INVALID_CONFIG"
    with pytest.raises(KafkaException):
        admin.create_topics([NewTopic("bad-cfg2", 1, config={"no.such.config": "1"})])[
            "bad-cfg2"
        ].result(10)
    assert "bad-cfg" not in admin.list_topics(timeout=10).topics

    admin.create_partitions([NewPartitions("adm", 5)])["adm"].result(10)
    assert len(admin.list_topics(timeout=10).topics["adm"].partitions) == 5
    with pytest.raises(KafkaException) as shrink:
        admin.create_partitions([NewPartitions("adm", 3)])["adm"].result(10)
    assert shrink.value.args[0].name() == "INVALID_PARTITIONS"
    with pytest.raises(KafkaException) as missing:
        admin.create_partitions([NewPartitions("ghost", 3)])["ghost"].result(10)
    assert missing.value.args[0].name() == "UNKNOWN_TOPIC_OR_PART"

    resource = ConfigResource(ConfigResource.Type.TOPIC, "adm")
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert not configs["retention.ms"].is_default
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].is_default

    ghost = ConfigResource(ConfigResource.Type.TOPIC, "ghost")
    with pytest.raises(KafkaException):
        admin.describe_configs([ghost])[ghost].result(10)

    broker = ConfigResource(ConfigResource.Type.BROKER, "0")
    broker_configs = admin.describe_configs([broker])[broker].result(10)
    assert broker_configs["auto.create.topics.enable"].value == "true"

    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        "adm",
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.type",
                "LogAppendTime",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    admin.incremental_alter_configs([change])[change].result(10)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["message.timestamp.type"].value == "LogAppendTime"
    assert configs["retention.ms"].value == "3600000"

    admin.delete_topics(["adm"])["adm"].result(10)
    assert "adm" not in admin.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as gone:
        admin.delete_topics(["adm"])["adm"].result(10)
    assert gone.value.args[0].name() == "UNKNOWN_TOPIC_OR_PART"


def test_log_append_time_topic(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("lat", 1, config={"message.timestamp.type": "LogAppendTime"})])[
        "lat"
    ].result(10)
    producer = Producer({"bootstrap.servers": agent.bootstrap})
    producer.produce("lat", value=b"v", partition=0, timestamp=1000)
    assert producer.flush(20) == 0
    consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "lat"})
    consumer.assign([TopicPartition("lat", 0, 0)])
    message = None
    for _ in range(100):
        message = consumer.poll(0.1)
        if message is not None and not message.error():
            break
    assert message is not None and message.value() == b"v"
    kind, ts = message.timestamp()
    assert kind == 2  # TIMESTAMP_LOG_APPEND_TIME: the CRC was recomputed, the client accepted it
    assert ts > 1_600_000_000_000
    consumer.close()
