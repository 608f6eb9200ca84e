"""Cluster smoke: produce through one agent, consume through another."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from conftest import Cluster


def test_produce_on_one_consume_on_another(cluster: Cluster) -> None:
    a = cluster.add("a")
    b = cluster.add("b")
    cluster.wait_for_members()
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
    errors: list[str] = []
    deadline = time.monotonic() + 90  # a group join under load takes a few seconds
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            seen.append(message.value())
        elif message is not None:
            errors.append(str(message.error()))
        if len(seen) == 100:
            break
    consumer.close()
    # A rare failure (nothing consumed in 90 s) has not been reproduced: keep the evidence.
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(100)), (
        f"saw {len(seen)}; consumer errors {errors[:10]}\n--- agent a ---\n"
        f"{a.log_text()[-4000:]}\n--- agent b ---\n{b.log_text()[-4000:]}"
    )
