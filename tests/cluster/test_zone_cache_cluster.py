"""The shared cache per zone on a real cluster: PostgreSQL, moto's S3, real agents and
confluent-kafka clients. GETs are counted by each agent's object-store metrics.

- Producers in zone a, consumers in zone b (two agents each): zone b reads everything
  with each object fetched from S3 exactly once, and zone a (whose uploaders warmed
  the blocks' owners) reads it all without fetching any object twice.
- kill -9 of a cache owner in the middle of a read: nothing is lost, the read completes.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import boto3
from cluster.test_cluster import create_topic
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import AgentProcess, Cluster
from e2e.test_metrics_endpoint import scrape
from services import free_port

PARTITIONS = 6
GET = 'driftlog_object_store_requests_total{operation="get"}'


def _add(cluster: Cluster, zone: str) -> tuple[AgentProcess, int]:
    port = free_port()
    agent = cluster.add(zone, "--metrics-listen", f"127.0.0.1:{port}")
    return agent, port


def _objects(cluster: Cluster) -> int:
    s3 = boto3.client("s3", **_boto_args(cluster))
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket, Prefix="objects/")
    return sum(len(page.get("Contents", [])) for page in pages)


def _boto_args(cluster: Cluster) -> dict[str, str]:
    env = cluster.env
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env.get("AWS_REGION", "us-east-1"),
    }


def _produce(bootstrap: str, topic: str, count: int, size: int = 1000) -> set[bytes]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "client.id": "p,driftlog_zone=a", "linger.ms": 5}
    )
    values = set()
    for i in range(count):
        value = f"{topic}-{i:06d}-".encode() + b"x" * size
        values.add(value)
        while True:
            try:
                producer.produce(topic, value=value, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if i % 100 == 99:
            assert producer.flush(60) == 0  # many objects, not a few large ones
    assert producer.flush(60) == 0
    return values


def _consume(
    bootstrap: str, topic: str, zone: str, count: int, config: dict[str, Any] | None = None,
    during: Any = None,
) -> dict[int, list[tuple[int, bytes]]]:  # fmt: skip
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": f"c,driftlog_zone={zone}",
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 1000,
            **(config or {}),
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    records: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    received = 0
    deadline = time.monotonic() + 120
    while received < count and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        records[message.partition()].append((message.offset(), message.value()))
        received += 1
        if during is not None and received == count // 3:
            during()
    consumer.close()
    return records


def _check_all(records: dict[int, list[tuple[int, bytes]]], values: set[bytes]) -> None:
    seen = []
    for partition, entries in records.items():
        offsets = [o for o, _ in entries]
        assert offsets == list(range(len(offsets))), f"partition {partition}: not dense"
        seen += [v for _, v in entries]
    assert len(seen) == len(values) and set(seen) == values


def test_each_zone_fetches_each_object_once(cluster: Cluster) -> None:
    (a1, pa1), (a2, pa2) = _add(cluster, "a"), _add(cluster, "a")
    (b1, pb1), (b2, pb2) = _add(cluster, "b"), _add(cluster, "b")
    cluster.wait_for_members()
    time.sleep(1)  # every agent's view lists the others' RPC addresses
    create_topic(a1.bootstrap, "zc", PARTITIONS)
    values = _produce(f"{a1.bootstrap},{a2.bootstrap}", "zc", 1200)
    objects = _objects(cluster)
    assert objects >= 4  # several flushes (20 ms), from both uploaders
    before = {p: scrape(p)[GET] for p in (pa1, pa2, pb1, pb2)}

    _check_all(_consume(f"{b1.bootstrap},{b2.bootstrap}", "zc", "b", len(values)), values)
    _check_all(_consume(f"{a1.bootstrap},{a2.bootstrap}", "zc", "a", len(values)), values)

    after = {p: scrape(p) for p in (pa1, pa2, pb1, pb2)}
    gets = {p: after[p][GET] - before[p] for p in before}
    zone_a, zone_b = gets[pa1] + gets[pa2], gets[pb1] + gets[pb2]
    # Zone b read every object: each fetched exactly once there (objects are far smaller
    # than a block), by whichever of b1 and b2 owns it, the other asking the owner.
    assert zone_b == objects, (gets, objects)
    peer_hits = sum(after[p]["driftlog_zone_cache_peer_hits_total"] for p in (pb1, pb2))
    assert peer_hits > 0
    # Zone a: its uploaders warmed the owners; at most once per object in any case.
    assert zone_a <= objects, (gets, objects)
    warms = sum(after[p]['driftlog_zone_cache_warms_total{kind="sent"}'] for p in (pa1, pa2))
    assert warms > 0


def test_kill9_of_a_cache_owner_mid_read_loses_nothing(cluster: Cluster) -> None:
    a1, _ = _add(cluster, "a")
    (b1, pb1), (b2, _) = _add(cluster, "b"), _add(cluster, "b")
    cluster.wait_for_members()
    time.sleep(1)
    create_topic(a1.bootstrap, "zk", PARTITIONS)
    values = _produce(a1.bootstrap, "zk", 3000, size=2000)
    killed: list[float] = []

    def kill_owner() -> None:
        b2.kill9()
        killed.append(time.monotonic())

    # Small fetches, little prefetching: the read is still going when b2 dies.
    slow = {
        "message.max.bytes": 65536,
        "fetch.max.bytes": 131072,
        "max.partition.fetch.bytes": 32768,
        "queued.max.messages.kbytes": 128,
    }
    records = _consume(
        f"{b1.bootstrap},{b2.bootstrap}", "zk", "b", len(values), slow, during=kill_owner
    )
    assert killed, "the read ended before the kill"
    _check_all(records, values)
    metrics = scrape(pb1)
    # b1 served what b2 owned from then on: read from its next owner (b1 itself).
    assert metrics[GET] > 0
