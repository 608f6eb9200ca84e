"""DeleteRecords and retention through real clients: the log start moves, ListOffsets
earliest follows it, and fetching below it is OFFSET_OUT_OF_RANGE, as in Kafka."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from conftest import AgentFactory

HOUR_MS = 3_600_000


def produce(bootstrap: str, topic: str, values: list[bytes], timestamps_ms: list[int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for value, ts in zip(values, timestamps_ms, strict=True):
        producer.produce(topic, value=value, partition=0, timestamp=ts)
        producer.flush(10)  # one batch per record, so retention can cut between them
    assert producer.flush(10) == 0


def set_configs(admin: AdminClient, topic: str, configs: dict[str, str]) -> None:
    resource = ConfigResource(
        "topic",
        topic,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in configs.items()
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(10)


def watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "w"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(low), int(high)
    finally:
        consumer.close()


def first_from(bootstrap: str, topic: str, offset: int) -> tuple[int, bytes] | KafkaError:
    """The first record at or after `offset`, or the error a consumer gets."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "r", "auto.offset.reset": "error"}
    )
    consumer.assign([TopicPartition(topic, 0, offset)])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                error: KafkaError = message.error()
                return error
            return message.offset(), message.value()
        raise AssertionError("nothing consumed")
    finally:
        consumer.close()


def test_delete_records(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--flush-ms", "5")
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("dr", 1, 1)])["dr"].result(10)
    now = int(time.time() * 1000)
    produce(agent.bootstrap, "dr", [f"v{i}".encode() for i in range(10)], [now] * 10)
    result = admin.delete_records([TopicPartition("dr", 0, 4)])
    deleted = next(iter(result.values())).result(10)
    assert deleted.low_watermark == 4
    assert watermarks(agent.bootstrap, "dr") == (4, 10)
    assert first_from(agent.bootstrap, "dr", 4) == (4, b"v4")
    below = first_from(agent.bootstrap, "dr", 1)
    assert isinstance(below, KafkaError) and below.code() == KafkaError._AUTO_OFFSET_RESET
    # Beyond the end is refused; -1 deletes everything up to the high watermark.
    beyond = next(iter(admin.delete_records([TopicPartition("dr", 0, 11)]).values()))
    with pytest.raises(KafkaException) as raised:
        beyond.result(10)
    assert raised.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    everything = next(iter(admin.delete_records([TopicPartition("dr", 0, -1)]).values()))
    assert everything.result(10).low_watermark == 10
    assert watermarks(agent.bootstrap, "dr") == (10, 10)
    # Survives a restart, and new records go on from the end.
    agent.terminate()
    agent.restart()
    assert watermarks(agent.bootstrap, "dr") == (10, 10)
    produce(agent.bootstrap, "dr", [b"after"], [now])
    assert first_from(agent.bootstrap, "dr", 10) == (10, b"after")


def test_retention_by_time_and_size(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--flush-ms", "5", "--retention-check-ms", "200")
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("ret", 1, 1)])["ret"].result(10)
    now = int(time.time() * 1000)
    # Three records from days ago, then five recent ones.
    ages = [72, 48, 30, 1, 1, 1, 1, 1]
    produce(
        agent.bootstrap,
        "ret",
        [f"r{i}".encode() for i in range(8)],
        [now - age * HOUR_MS for age in ages],
    )
    assert watermarks(agent.bootstrap, "ret") == (0, 8)
    set_configs(admin, "ret", {"retention.ms": str(24 * HOUR_MS)})
    deadline = time.monotonic() + 20
    while watermarks(agent.bootstrap, "ret")[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert watermarks(agent.bootstrap, "ret") == (3, 8)  # the three old records expired
    expired = first_from(agent.bootstrap, "ret", 0)
    assert isinstance(expired, KafkaError) and expired.code() == KafkaError._AUTO_OFFSET_RESET
    assert first_from(agent.bootstrap, "ret", 3) == (3, b"r3")
    # By size: each record is one stored batch of the same size; keep about two.
    size = 2 * 80
    set_configs(admin, "ret", {"retention.ms": "-1", "retention.bytes": str(size)})
    deadline = time.monotonic() + 20
    while watermarks(agent.bootstrap, "ret")[0] == 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    low, high = watermarks(agent.bootstrap, "ret")
    assert high == 8 and 5 <= low <= 7, (low, high)
    assert first_from(agent.bootstrap, "ret", low) == (low, f"r{low}".encode())
