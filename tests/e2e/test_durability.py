"""Kill -9 in the middle of a produce stream: every acknowledged record survives a restart.

Non-idempotent retries may legitimately duplicate a record whose ack was lost
in the crash, so this test checks loss and offset density, not duplicates.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentFactory

PARTITIONS = 4


def consume_all(bootstrap: str, topic: str, ends: dict[int, int]) -> dict[int, list[Message]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "verify", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: dict[int, list[Message]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(len(got[p]) < ends[p] for p in got):
        message = consumer.poll(0.2)
        if message is None or message.error():
            continue
        got[message.partition()].append(message)
    consumer.close()
    return got


@pytest.mark.timeout(180)
def test_kill9_mid_stream_loses_no_acknowledged_record(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--flush-ms", "30")
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("crash", PARTITIONS)])["crash"].result(10)

    acked: set[bytes] = set()
    failed: set[bytes] = set()
    lock = threading.Lock()

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        with lock:
            (failed if error else acked).add(message.value())

    producer = Producer(
        {
            "bootstrap.servers": agent.bootstrap,
            "linger.ms": 2,
            "message.timeout.ms": 20000,
            "retry.backoff.ms": 100,
            "reconnect.backoff.max.ms": 500,
        }
    )
    stop = threading.Event()
    sent = 0

    def produce_stream() -> None:
        nonlocal sent
        while not stop.is_set() and sent < 200_000:
            try:
                producer.produce(
                    "crash",
                    value=b"rec-%08d" % sent,
                    partition=sent % PARTITIONS,
                    on_delivery=on_delivery,
                )
                sent += 1
            except BufferError:
                producer.poll(0.01)
            if sent % 100 == 0:
                producer.poll(0.001)
                time.sleep(0.002)

    thread = threading.Thread(target=produce_stream)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 3000 and time.monotonic() < deadline:
        producer.poll(0.05)
    assert len(acked) >= 3000, "producer never got going"
    agent.kill9()
    acked_at_kill = len(acked)
    time.sleep(0.5)
    agent.restart()
    time.sleep(1.0)
    stop.set()
    thread.join(30)
    producer.flush(30)
    assert len(acked) >= acked_at_kill

    # Offsets continue after the restart: a new record gets the next offset.
    producer2 = Producer({"bootstrap.servers": agent.bootstrap})
    marker: list[int] = []
    producer2.produce(
        "crash",
        value=b"after-restart",
        partition=0,
        on_delivery=lambda e, m: marker.append(m.offset()),
    )
    producer2.flush(20)

    consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "ends"})
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition("crash", p), timeout=10)[1]
        for p in range(PARTITIONS)
    }
    consumer.close()
    got = consume_all(agent.bootstrap, "crash", ends)
    stored: set[bytes] = set()
    for p, messages in got.items():
        assert [m.offset() for m in messages] == list(range(ends[p])), f"gap in partition {p}"
        stored.update(m.value() for m in messages)
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    assert marker == [ends[0] - 1]
    assert got[0][-1].value() == b"after-restart"
