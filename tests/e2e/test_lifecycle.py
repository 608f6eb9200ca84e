"""Agent lifecycle: SIGTERM drains buffered batches and answers producers before exiting 0."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from conftest import AgentFactory


@pytest.mark.timeout(90)
def test_sigterm_flushes_buffer_and_acknowledges(agent_factory: AgentFactory) -> None:
    # A flush interval far longer than the test: only the drain can flush.
    agent = agent_factory("--flush-ms", "60000", "--default-partitions", "1")
    delivered: list[int] = []
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            offset = message.offset()
            assert offset is not None
            delivered.append(offset)

    producer = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 1})
    for i in range(100):
        producer.produce("drain", value=b"d%03d" % i, partition=0, on_delivery=on_delivery)
    producer.poll(0.5)
    assert delivered == [], "nothing may be acknowledged before a flush"

    exit_code: list[int] = []
    stopper = threading.Thread(target=lambda: exit_code.append(agent.terminate()))
    stopper.start()
    deadline = time.monotonic() + 30
    while len(delivered) < 100 and time.monotonic() < deadline:
        producer.poll(0.1)
    stopper.join(30)
    assert exit_code == [0]
    assert sorted(delivered) == list(range(100))
    assert not errors
    assert "driftlog-stats" in agent.log_text()

    agent.restart()
    consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "drain"})
    consumer.assign([TopicPartition("drain", 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(values) < 100 and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is not None and not message.error():
            value = message.value()
            assert value is not None
            values.append(value)
    consumer.close()
    assert values == [b"d%03d" % i for i in range(100)]
