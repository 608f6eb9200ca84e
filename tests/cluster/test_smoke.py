"""Cluster smoke: produce through one agent, consume through another."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from conftest import Cluster


def test_produce_on_one_consume_on_another(cluster: Cluster) -> None:
    a = cluster.add("a")
    b = cluster.add("b")
    producer = Producer({"bootstrap.servers": a.bootstrap, "client.id": "p,driftlog_zone=a"})
    for i in range(100):
        producer.produce("smoke", value=f"v{i}".encode(), partition=i % 3)
    assert producer.flush(20) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": "g",
            "auto.offset.reset": "earliest",
            "client.id": "c,driftlog_zone=b",
        }
    )
    consumer.subscribe(["smoke"])
    seen: list[bytes] = []
    deadline = time.monotonic() + 90  # a group join under load takes a few seconds
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            seen.append(message.value())
        if len(seen) == 100:
            break
    consumer.close()
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(100))
