"""The storage lifecycle in cluster mode: PostgreSQL and an S3 bucket (moto), two agents.

The writer agent garbage-collects and compacts; the other agent keeps serving
reads of moved batches (its view hears of the move in the writer's stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import Cluster

LIFECYCLE_ARGS = (
    "--gc-interval-ms", "200",
    "--gc-delete-grace-ms", "500",
    "--gc-orphan-grace-ms", "30000",
    "--gc-orphan-scan-ms", "300",
    "--compaction-interval-ms", "300",
    "--compaction-min-age-ms", "0",
    "--compaction-small-object-bytes", "65536",
)  # fmt: skip

Record = tuple[int, bytes | None, bytes | None, tuple[int, int]]


def bucket_keys(cluster: Cluster) -> set[str]:
    import boto3  # slow import, only here

    env = cluster.env
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def referenced_keys(cluster: Cluster) -> set[str]:
    with psycopg.connect(cluster.dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT o.key FROM batches b JOIN objects o ON o.object_id = b.object_id"
        ).fetchall()
    return {key for (key,) in rows}


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting until {what}")


def read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Record]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "lc", "enable.auto.commit": False}
    )
    bounds = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        for p in range(partitions)
    }
    consumer.assign([TopicPartition(topic, p, bounds[p][0]) for p in range(partitions)])
    got: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        len(got[p]) < bounds[p][1] - bounds[p][0] for p in got
    ):
        m = consumer.poll(0.2)
        if m is None:
            continue
        assert not m.error(), m.error()
        got[m.partition()].append((m.offset(), m.key(), m.value(), m.timestamp()))
    consumer.close()
    for p, records in got.items():
        assert [r[0] for r in records] == list(range(*bounds[p])), f"partition {p}"
    return got


@pytest.mark.timeout(240)
def test_gc_and_compaction_on_s3_with_two_agents(cluster: Cluster) -> None:
    a = cluster.add("a", *LIFECYCLE_ARGS)
    b = cluster.add("b", *LIFECYCLE_ARGS)
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for future in admin.create_topics([NewTopic("lc", 2), NewTopic("gone", 1)]).values():
        future.result(10)
    for name, count in (("lc", 2), ("gone", 1)):
        for agent in (a, b):
            producer = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 0})
            for i in range(20):
                value = b"%s-%d" % (agent.bootstrap.encode(), i)
                producer.produce(name, key=b"%d" % i, value=value, partition=i % count)
                producer.flush(10)  # one small object per record
    before = read_all(b.bootstrap, "lc", 2)  # b's view caches the coordinates
    assert sum(len(r) for r in before.values()) == 40

    admin.delete_topics(["gone"])["gone"].result(10)
    trim = TopicPartition("lc", 0, 5)
    assert next(iter(admin.delete_records([trim]).values())).result(20).low_watermark == 5

    wait_until("compaction merged the small objects", lambda: len(referenced_keys(cluster)) <= 2)
    wait_until(
        "the bucket holds only referenced objects",
        lambda: bucket_keys(cluster) == referenced_keys(cluster),
    )
    expected = {0: [r for r in before[0] if r[0] >= 5], 1: before[1]}
    for agent in (a, b):
        assert read_all(agent.bootstrap, "lc", 2) == expected
