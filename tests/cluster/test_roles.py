"""Agent roles and agent groups (issue 15) on a real PostgreSQL and S3 (moto), real clients.

Roles: a writer-only, a jobs-only, a produce-only and a fetch-only agent, all in one
bootstrap list. Clients produce and consume at once; each agent's /metrics shows that
produce went to the produce agent, fetched data came from the fetch agent (librdkafka and
kafka-python follow KIP-392's preferred read replica; aiokafka without `client_rack`
ignores it and is served where it asks), that garbage collection, compaction and key
compaction ran only on the jobs agent (their swaps over the writer RPC), and every record
is read back.

Groups: agents of groups x and y over one database and one bucket; a client of x never
sees y's agents (Metadata, FindCoordinator), and what x's clients wrote is read in y.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer
from batch_builder import build_batch
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentProcess, Cluster
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonPartition
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v3.request import FindCoordinatorRequest
from kio.schema.produce.v10.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.static.primitive import Records, i8, i16, i32, i32Timedelta
from prometheus_client.parser import text_string_to_metric_families
from raw_client import RawClient, metadata_node_ids
from services import free_port

PARTITIONS = 6
RECORDS = 3_000
KEYS = 10
# Jobs every half second on every agent: only the jobs agent may run them.
JOBS_TIMING = (
    "--gc-interval-ms", "500", "--gc-delete-grace-ms", "1000",
    "--compaction-interval-ms", "500", "--compaction-min-age-ms", "0",
    "--key-compaction-interval-ms", "500",
)  # fmt: skip
ZONE_A = "driftlog_zone=a"


class Metered:
    """An agent of the cluster and its metrics endpoint."""

    def __init__(self, cluster: Cluster, zone: str, roles: str, *extra: str) -> None:
        self.metrics_port = free_port()
        self.agent: AgentProcess = cluster.add(
            zone, "--roles", roles, "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            *JOBS_TIMING, *extra,
        )  # fmt: skip
        self.node_id = len(cluster.agents)

    def scrape(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def metric(self, name: str) -> float:
        return self.scrape().get(name, 0.0)

    def readiness(self) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()


def wait_until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_for_brokers(agent: AgentProcess, expected: set[int]) -> None:
    wait_until(lambda: metadata_node_ids(agent.bootstrap) == expected, f"{expected} listed")


def lease_holder(cluster: Cluster) -> str:
    with psycopg.connect(cluster.dsn) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE shard = 0").fetchone()
    assert row is not None
    return str(row[0]).split("/")[0]


class Writer(threading.Thread):
    """An idempotent acks=all producer writing RECORDS values while the test consumes."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": f"roles-producer,{ZONE_A}",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        self.acked = 0
        self.errors: list[str] = []

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.errors.append(str(error))
        else:
            self.acked += 1

    def run(self) -> None:
        for i in range(RECORDS):
            while True:
                try:
                    self.producer.produce(
                        self.topic, value=f"v-{i:05d}".encode(), on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
            if i % 100 == 0:
                self.producer.poll(0.02)  # a trickle: consumers read while it writes
        assert self.producer.flush(60) == 0


def consume_all_confluent(bootstrap: str, topic: str, expected: int) -> Counter[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": f"roles-consumer,{ZONE_A}",
            "group.id": f"roles-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    consumer.subscribe([topic])
    seen: Counter[bytes] = Counter()
    deadline = time.monotonic() + 120
    try:
        while sum(seen.values()) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen[message.value()] += 1
    finally:
        consumer.close()
    return seen


def consume_all_kafka_python(bootstrap: str, topic: str, expected: int) -> Counter[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id=f"roles-kafka-python,{ZONE_A}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.assign([KafkaPythonPartition(topic, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    seen: Counter[bytes] = Counter()
    deadline = time.monotonic() + 120
    try:
        while sum(seen.values()) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    seen[record.value] += 1
    finally:
        consumer.close()
    return seen


def consume_all_aiokafka(
    bootstrap: str, topic: str, expected: int, rack: str | None
) -> Counter[bytes]:
    async def run() -> Counter[bytes]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="roles-aiokafka",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            client_rack=rack,
        )
        await consumer.start()
        seen: Counter[bytes] = Counter()
        try:
            from aiokafka import TopicPartition as AioPartition

            consumer.assign([AioPartition(topic, p) for p in range(PARTITIONS)])
            await consumer.seek_to_beginning()
            deadline = time.monotonic() + 120
            while sum(seen.values()) < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        assert record.value is not None
                        seen[record.value] += 1
        finally:
            await consumer.stop()
        return seen

    return asyncio.run(run())


def produce_keyed(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "client.id": f"keyed,{ZONE_A}"})
    for round_ in range(20):
        for k in range(KEYS):
            producer.produce(topic, key=f"k{k}".encode(), value=f"{round_}".encode())
        assert producer.flush(30) == 0  # one batch per round: many batches per key


def latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": f"keyed-reader,{ZONE_A}",
            "group.id": f"keyed-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                break  # the end of the partition
            values[message.key()] = message.value()
    finally:
        consumer.close()
    return values


def stale_produce_to(agent: AgentProcess, topic: str) -> Any:
    """Produce v10 sent straight to `agent` (a client whose metadata is stale)."""
    client = RawClient(agent.bootstrap)
    try:
        response = client.request(
            ProduceRequest(
                transactional_id=None,
                acks=i16(-1),
                timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
                topic_data=(
                    TopicProduceData(
                        name=TopicName(topic),
                        partition_data=(
                            PartitionProduceData(
                                index=i32(0), records=Records(build_batch([b"stale"]))
                            ),
                        ),
                    ),
                ),
            )
        )
    finally:
        client.close()
    return response


def test_produce_fetch_and_jobs_agents_serve_their_own_work(cluster: Cluster) -> None:
    writer = Metered(cluster, "a", "writer")
    # Alone, the cluster has no jobs agent: the writer says so and is not ready.
    wait_until(lambda: writer.readiness()[0] == 503, "the writer to report no jobs agent")
    assert "jobs role" in writer.readiness()[1]
    jobs = Metered(cluster, "a", "jobs")
    producing = Metered(cluster, "a", "produce")
    fetching = Metered(cluster, "a", "fetch")
    cluster.wait_for_members()
    agents = (writer, jobs, producing, fetching)
    for a in agents:
        wait_until(lambda a=a: a.readiness()[0] == 200, f"agent {a.node_id} ready")
    assert "no live agent has the jobs role" in writer.agent.log_text()
    assert lease_holder(cluster) == "agent-1"
    assert [a.metric("driftlog_agent_runs_jobs") for a in agents] == [0, 1, 0, 0]

    bootstrap = cluster.bootstrap  # every role in one list
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic, keyed = f"events-{uuid.uuid4().hex[:6]}", f"keyed-{uuid.uuid4().hex[:6]}"
    compacted = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"}
    futures = admin.create_topics(
        [NewTopic(topic, PARTITIONS, 1), NewTopic(keyed, 1, 1, config=compacted)]
    )
    for future in futures.values():
        future.result(30)

    # Metadata names the produce agent leader and the fetch agent a replica.
    metadata = admin.list_topics(topic, timeout=20)
    assert {b for b in metadata.brokers} == {1, 2, 3, 4}
    for partition in metadata.topics[topic].partitions.values():
        assert partition.leader == producing.node_id
        assert partition.replicas == [producing.node_id, fetching.node_id]

    # A client sending Produce to the fetch agent is sent to the produce agent (KIP-951).
    stale = stale_produce_to(fetching.agent, topic)
    answer = stale.responses[0].partition_responses[0]
    assert answer.error_code == ErrorCode.not_leader_or_follower
    assert answer.current_leader.leader_id == producing.node_id
    assert [e.node_id for e in stale.node_endpoints] == [producing.node_id]

    # Producing and consuming at once, one bootstrap list naming every agent.
    load = Writer(bootstrap, topic)
    load.start()
    seen = consume_all_confluent(bootstrap, topic, RECORDS)
    load.join(120)
    assert load.errors == [] and load.acked == RECORDS
    assert len(seen) == RECORDS and set(seen.values()) == {1}, "lost or duplicated records"
    produce_keyed(bootstrap, keyed)

    assert producing.metric("driftlog_produce_records_total") == RECORDS + 20 * KEYS
    for other in (writer, jobs, fetching):
        assert other.metric("driftlog_produce_records_total") == 0
    assert fetching.metric("driftlog_fetch_bytes_total") > 0
    assert producing.metric("driftlog_fetch_bytes_total") == 0  # librdkafka moved at once
    assert producing.metric("driftlog_fetch_read_replica_redirects_total") >= 1

    # kafka-python follows the preferred read replica too, and stays (the fetch agent
    # names itself to it: it forgets a replica after an answer that names none).
    fetched_before = fetching.metric("driftlog_fetch_bytes_total")
    sent_before = producing.metric("driftlog_fetch_read_replica_redirects_total")
    seen = consume_all_kafka_python(bootstrap, topic, RECORDS)
    assert len(seen) == RECORDS
    assert fetching.metric("driftlog_fetch_bytes_total") > fetched_before
    assert producing.metric("driftlog_fetch_bytes_total") == 0
    sent = producing.metric("driftlog_fetch_read_replica_redirects_total") - sent_before
    assert 1 <= sent <= 2 * PARTITIONS, f"{sent} partitions sent away: kafka-python went back"
    # aiokafka with a rack follows it; without one it ignores it, and is served anyway.
    seen = consume_all_aiokafka(bootstrap, topic, RECORDS, rack="a")
    assert len(seen) == RECORDS
    assert producing.metric("driftlog_fetch_bytes_total") == 0
    assert producing.metric("driftlog_fetch_read_replica_ignored_total") == 0
    seen = consume_all_aiokafka(bootstrap, topic, RECORDS, rack=None)
    assert len(seen) == RECORDS
    assert producing.metric("driftlog_fetch_read_replica_ignored_total") >= 1
    assert producing.metric("driftlog_fetch_bytes_total") > 0

    # The background jobs ran on the jobs agent only, their swaps at the writer.
    work = (
        "driftlog_compaction_objects_written_total",
        "driftlog_key_compaction_passes_total",
        'driftlog_gc_deleted_objects_total{kind="dead"}',
    )
    done = lambda: all(jobs.metric(counter) > 0 for counter in work)  # noqa: E731
    wait_until(done, f"{work} on the jobs agent: {[jobs.metric(c) for c in work]}", 90)
    for other in (writer, producing, fetching):
        for counter in (
            "driftlog_gc_passes_total",
            "driftlog_compaction_runs_total",
            "driftlog_key_compaction_runs_total",
        ):
            assert other.metric(counter) == 0, (other.node_id, counter)
    assert writer.metric("driftlog_coordinator_writer_terms_total") == 1
    assert jobs.metric("driftlog_coordinator_writer_terms_total") == 0
    assert "this agent runs the background jobs" in jobs.agent.log_text()

    # Every record is still there after compaction and collection; keys keep their latest.
    seen = consume_all_confluent(bootstrap, topic, RECORDS)
    assert len(seen) == RECORDS and set(seen.values()) == {1}
    assert latest_values(bootstrap, keyed) == {f"k{k}".encode(): b"19" for k in range(KEYS)}


def find_coordinator(agent: AgentProcess, group: str) -> int:
    client = RawClient(agent.bootstrap)
    try:
        response = client.request(FindCoordinatorRequest(key=group, key_type=i8(0)))
    finally:
        client.close()
    assert response.error_code == ErrorCode.none
    return int(response.node_id)


def test_a_client_of_one_group_never_sees_another_groups_agents(cluster: Cluster) -> None:
    x1 = cluster.add("a", "--agent-group", "x")
    x2 = cluster.add("b", "--agent-group", "x", "--roles", "produce,fetch")
    y1 = cluster.add("a", "--agent-group", "y", "--roles", "produce,fetch")
    y2 = cluster.add("b", "--agent-group", "y", "--roles", "produce,fetch")
    wait_for_brokers(x1, {1, 2})
    wait_for_brokers(x2, {1, 2})
    wait_for_brokers(y1, {3, 4})
    wait_for_brokers(y2, {3, 4})
    x_bootstrap = f"{x1.bootstrap},{x2.bootstrap}"
    y_bootstrap = f"{y1.bootstrap},{y2.bootstrap}"

    # Consumer-group coordinators are agents of the group asked.
    for n in range(20):
        assert find_coordinator(x2, f"g{n}") in (1, 2)
        assert find_coordinator(y1, f"g{n}") in (3, 4)

    topic = f"shared-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": x_bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": x_bootstrap, "enable.idempotence": True})
    for i in range(500):
        producer.produce(topic, value=f"x-{i}".encode())
    assert producer.flush(30) == 0
    assert {b for b in admin.list_topics(timeout=20).brokers} == {1, 2}
    for partition in admin.list_topics(topic, timeout=20).topics[topic].partitions.values():
        assert set(partition.replicas) <= {1, 2}

    # The same bucket and database: y reads what x wrote, and sees only its own agents.
    y_admin = AdminClient({"bootstrap.servers": y_bootstrap})
    assert {b for b in y_admin.list_topics(timeout=20).brokers} == {3, 4}
    for partition in y_admin.list_topics(topic, timeout=20).topics[topic].partitions.values():
        assert partition.leader in (3, 4) and set(partition.replicas) <= {3, 4}
    seen = consume_all_confluent(y_bootstrap, topic, 500)
    assert sorted(seen) == sorted(f"x-{i}".encode() for i in range(500))
    # Membership logs name each agent's roles and group.
    assert "roles produce,fetch, group 'y'" in x1.log_text()
