"""A permanently missing object does not wedge consumers (real agent, real clients).

An object file is deleted from the local store under a running agent while the
coordinator still points at it. The consumer must hear about it as an error on that
partition within seconds (librdkafka surfaces CORRUPT_MESSAGE to the application
instead of retrying it silently, as it would KAFKA_STORAGE_ERROR), while the other
partitions of the same fetches keep delivering. The agent logs the object once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentFactory

TOPIC = "lost"


def object_files(data_dir: Path) -> set[Path]:
    return {p for p in (data_dir / "objects").rglob("*") if p.is_file() and p.name[0] != "."}


def produce(producer: Producer, partition: int, values: list[bytes], ts_ms: int) -> None:
    for value in values:
        producer.produce(TOPIC, value=value, partition=partition, timestamp=ts_ms)
    assert producer.flush(10) == 0


def test_missing_object_is_an_error_for_its_partition_only(agent_factory: AgentFactory) -> None:
    # No batch cache: every read goes to the store, as it would once the cache evicted.
    agent = agent_factory("--flush-ms", "20", "--cache-bytes", "0")
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic(TOPIC, 2, 1)])[TOPIC].result(10)
    producer = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 0})
    ts_ms = int(time.time() * 1000)

    produce(producer, 0, [b"p0-a", b"p0-b"], ts_ms)
    lost_files = object_files(agent.data_dir)
    assert lost_files
    produce(producer, 1, [b"p1-a", b"p1-b"], ts_ms)
    for path in lost_files:  # partition 0's data only: partition 1 went into later objects
        path.unlink()

    consumer = Consumer(
        {
            "bootstrap.servers": agent.bootstrap,
            "group.id": "lost-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(TOPIC, 0, 0), TopicPartition(TOPIC, 1, 0)])
    started = time.monotonic()
    errors: list[tuple[int, KafkaError]] = []
    delivered: dict[int, list[bytes]] = {0: [], 1: []}
    produced_more = False
    try:
        deadline = started + 20
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                pass
            elif message.error() is not None:
                errors.append((message.partition(), message.error()))
                if len(errors) == 1:
                    first_error_s = time.monotonic() - started
            else:
                delivered[message.partition()].append(message.value())
            if errors and not produced_more:
                # Later fetches still carry partition 0's error: partition 1 must go on.
                produce(producer, 1, [b"p1-c"], ts_ms)
                produced_more = True
            if produced_more and len(delivered[1]) == 3 and time.monotonic() - started > 4:
                break  # a few seconds of retries by the consumer, to see the log stay quiet
    finally:
        consumer.close()

    assert errors, "no error surfaced for the partition whose object is gone"
    assert first_error_s < 10
    assert {partition for partition, _ in errors} == {0}
    assert {e.code() for _, e in errors} == {KafkaError.INVALID_MSG}  # Kafka's CORRUPT_MESSAGE
    assert delivered == {0: [], 1: [b"p1-a", b"p1-b", b"p1-c"]}

    # ListOffsets by time needs that partition's batch too: an error, not a hang
    # (librdkafka fails the whole offsets_for_times call with it).
    probe = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "probe"})
    try:
        [answer] = probe.offsets_for_times([TopicPartition(TOPIC, 1, ts_ms)], timeout=10)
        assert answer.error is None and answer.offset == 0
        with pytest.raises(KafkaException) as raised:
            probe.offsets_for_times([TopicPartition(TOPIC, 0, ts_ms)], timeout=10)
        assert raised.value.args[0].code() == KafkaError.INVALID_MSG
    finally:
        probe.close()

    # Logged once per object, however often the consumer retried.
    lines = [line for line in agent.log_text().splitlines() if "is missing from the store" in line]
    assert len(lines) == len(lost_files), lines
    assert all(f"topic {TOPIC} partition 0" in line for line in lines)
    keys = {path.relative_to(agent.data_dir / "objects").as_posix() for path in lost_files}
    assert {next(k for k in keys if k in line) for line in lines} == keys
