"""A cluster of agents on a real PostgreSQL and a real S3 server (moto), with real clients.

Each test starts its own agents (`cluster` fixture) with short timings (lease
2 s, agents time out after 3 s of silence), kills some of them, and checks
that every acknowledged record is read back exactly once with dense offsets.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentProcess, Cluster
from services import MotoServer, PostgresServer

from driftlog.cluster.placement import group_coordinator
from driftlog.coordinator.api import AgentInfo

PARTITIONS = 6


def lease_holder(cluster: Cluster) -> str:
    with psycopg.connect(cluster.dsn) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE shard = 0").fetchone()
    assert row is not None
    return str(row[0]).split("/")[0]  # agent id / process


def lease_epoch(cluster: Cluster) -> int:
    with psycopg.connect(cluster.dsn) as conn:
        row = conn.execute("SELECT epoch FROM leases WHERE shard = 0").fetchone()
    assert row is not None
    return int(row[0])


def agent_named(cluster: Cluster, agent_id: str) -> AgentProcess:
    return cluster.agents[int(agent_id.removeprefix("agent-")) - 1]


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1)])
    futures[name].result(20)


class Load:
    """An idempotent acks=all producer on its own thread, recording what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, client_id: str = "load") -> None:
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
                "topic.metadata.refresh.interval.ms": 1000,
                "reconnect.backoff.max.ms": 500,
            }
        )
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.errors: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.errors.append(str(error))
        else:
            self.acked[message.value()] = (message.partition(), message.offset())

    def _run(self) -> None:
        while not self._stop.is_set():
            value = f"{self.topic}-{self.sent:07d}".encode()
            try:
                self.producer.produce(self.topic, value=value, on_delivery=self._delivered)
                self.sent += 1
            except BufferError:
                pass
            self.producer.poll(0.002 if self.sent % 20 else 0.01)

    def start(self) -> Load:
        self._thread.start()
        return self

    def wait_acked(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, f"only {len(self.acked)} acked; errors {self.errors[:5]}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.producer.flush(120) == 0, "records still undelivered after 120 s"


def read_all(
    bootstrap: str, topic: str, partitions: int = PARTITIONS, at_least: Load | None = None
) -> dict[int, list[Any]]:
    """Every record of the topic, per partition, from offset 0 to the end: the end the
    agent reports, or past every record `at_least` acknowledged if that is further.

    An agent's view follows the writer's stream, so right after the writer changed
    (until it follows the new one) it may report an end that is not the latest."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    consumer.list_topics(topic, timeout=20)  # the client's metadata, before asking per partition
    ends = {p: end_offset(consumer, TopicPartition(topic, p)) for p in range(partitions)}
    if at_least is not None:
        for partition, offset in at_least.acked.values():
            ends[partition] = max(ends[partition], offset + 1)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: dict[int, list[Any]] = defaultdict(list)
    deadline = time.monotonic() + 60
    while any(len(records[p]) < ends[p] for p in range(partitions)) and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        records[message.partition()].append((message.offset(), message.value()))
    consumer.close()
    return records


def end_offset(consumer: Consumer, partition: TopicPartition) -> int:
    """The partition's end, asked again if the broker handle went away under the
    request: after a membership change (an agent killed, or one that joined) the
    client drops brokers no longer listed, failing what was in flight on them."""
    for attempt in range(5):
        try:
            return int(consumer.get_watermark_offsets(partition, 20)[1])
        except KafkaException as e:
            if attempt == 4 or e.args[0].code() != KafkaError._DESTROY_BROKER:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def check_exactly_once(load: Load, records: dict[int, list[Any]]) -> None:
    seen: dict[bytes, tuple[int, int]] = {}
    for partition, entries in records.items():
        offsets = [offset for offset, _ in entries]
        assert offsets == list(range(len(offsets))), f"partition {partition}: offsets not dense"
        for offset, value in entries:
            assert value not in seen, f"{value!r} stored twice: {seen[value]} and {offset}"
            seen[value] = (partition, offset)
    for value, position in load.acked.items():
        assert seen.get(value) == position, f"acknowledged {value!r} at {position}, found " + str(
            seen.get(value)
        )
    # The idempotent producer retries until delivered: nothing it sent is missing.
    assert len(seen) == len(load.acked) == load.sent


def test_produce_through_one_agent_consume_through_another(cluster: Cluster) -> None:
    a = cluster.add("a")
    b = cluster.add("b")
    cluster.wait_for_members()
    create_topic(a.bootstrap, "t")
    producer = Producer({"bootstrap.servers": a.bootstrap, "client.id": "p,driftlog_zone=a"})
    for i in range(300):
        producer.produce("t", value=f"v{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(20) == 0
    # b learns of the commits from the writer's stream: a long poll on b wakes.
    records = read_all(b.bootstrap, "t")
    assert sum(len(r) for r in records.values()) == 300
    assert sorted(v for r in records.values() for _, v in r) == sorted(
        f"v{i}".encode() for i in range(300)
    )


def test_metadata_honours_zone_hints(cluster: Cluster) -> None:
    a1, a2, b1 = cluster.add("a"), cluster.add("a"), cluster.add("b")
    create_topic(a1.bootstrap, "z", 12)
    cluster.wait_for_members()

    def leaders(client_id: str, bootstrap: str) -> set[int]:
        metadata = AdminClient(
            {"bootstrap.servers": bootstrap, "client.id": client_id}
        ).list_topics("z", timeout=10)
        assert {b.id for b in metadata.brokers.values()} == {1, 2, 3}
        return {p.leader for p in metadata.topics["z"].partitions.values()}

    assert leaders("app,driftlog_zone=a", b1.bootstrap) == {1, 2}  # spread within zone a
    assert leaders("driftlog_zone=b", a1.bootstrap) == {3}
    assert leaders("driftlog_zone=c", a2.bootstrap) == {1, 2, 3}  # no agent in c: all
    assert leaders("plain", a2.bootstrap) == {1, 2, 3}  # no hint: spread over all


def test_kill9_an_agent_under_load(cluster: Cluster) -> None:
    writer = cluster.add("a")
    victim = cluster.add("a")
    cluster.add("b")
    cluster.wait_for_members()
    create_topic(writer.bootstrap, "k")
    load = Load(cluster.bootstrap, "k", "load,driftlog_zone=a").start()
    load.wait_acked(2000)
    victim.kill9()  # leads about half of zone a's partitions for this producer
    acked_at_kill = len(load.acked)
    load.wait_acked(acked_at_kill + 3000)
    load.stop()
    check_exactly_once(load, read_all(writer.bootstrap, "k", at_least=load))


def test_kill9_the_writer_under_load(cluster: Cluster) -> None:
    first = cluster.add("a")
    cluster.add("a")
    cluster.add("b")
    cluster.wait_for_members()
    assert lease_holder(cluster) == "agent-1"
    create_topic(first.bootstrap, "w")
    load = Load(cluster.bootstrap, "w", "load,driftlog_zone=a").start()
    load.wait_acked(2000)
    epoch = lease_epoch(cluster)
    first.kill9()
    killed_at = time.monotonic()
    acked_at_kill = len(load.acked)
    while lease_holder(cluster) == "agent-1" and time.monotonic() < killed_at + 30:
        time.sleep(0.05)
    print(f"writer replaced {time.monotonic() - killed_at:.2f} s after kill -9 (lease 2 s)")
    load.wait_acked(acked_at_kill + 3000)
    assert lease_holder(cluster) in ("agent-2", "agent-3")
    assert lease_epoch(cluster) > epoch
    load.stop()
    check_exactly_once(load, read_all(cluster.agents[1].bootstrap, "w", at_least=load))


def test_a_paused_writer_is_fenced_when_it_comes_back(cluster: Cluster) -> None:
    first = cluster.add("a")
    second = cluster.add("b")
    create_topic(first.bootstrap, "f")
    load = Load(cluster.bootstrap, "f").start()
    load.wait_acked(1000)
    assert first.process is not None
    first.process.send_signal(signal.SIGSTOP)  # a GC pause, a frozen VM: it still "leads"
    try:
        deadline = time.monotonic() + 20
        while lease_holder(cluster) != "agent-2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lease_holder(cluster) == "agent-2"
        # The client's requests in flight to the frozen agent must time out before its
        # idempotent producer moves on (about a minute in librdkafka): allow for that.
        load.wait_acked(len(load.acked) + 1000, timeout_s=150)
    finally:
        first.process.send_signal(signal.SIGCONT)
    # The old writer wakes up believing it leads: its next write is refused, it steps
    # down and follows agent-2; produce through it keeps working.
    deadline = time.monotonic() + 20
    while "no longer writer" not in first.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "no longer writer" in first.log_text()
    producer = Producer({"bootstrap.servers": first.bootstrap, "enable.idempotence": True})
    producer.produce("f", value=b"after-resume", partition=0)
    assert producer.flush(30) == 0
    load.stop()
    records = read_all(second.bootstrap, "f")
    values = [v for r in records.values() for _, v in r]
    assert values.count(b"after-resume") == 1
    load.acked[b"after-resume"] = next(
        (p, o) for p, r in records.items() for o, v in r if v == b"after-resume"
    )
    load.sent += 1
    check_exactly_once(load, records)


def test_consumer_group_survives_its_coordinator(cluster: Cluster) -> None:
    for zone in ("a", "a", "b"):
        cluster.add(zone)
    cluster.wait_for_members()
    agents = [AgentInfo(f"agent-{i}", i, "", 0, "", "") for i in (1, 2, 3)]
    # A group coordinated by an agent that is not the writer, so only the group moves.
    group = next(
        g for g in (f"group-{i}" for i in range(100))
        if group_coordinator(g, agents) and group_coordinator(g, agents).node_id != 1  # type: ignore[union-attr]
    )  # fmt: skip
    coordinating = group_coordinator(group, agents)
    assert coordinating is not None
    create_topic(cluster.bootstrap, "g", 3)
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 200,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe(["g"])
    seen: set[bytes] = set()

    def consume_until(count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(seen) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                seen.add(message.value())
            elif message is not None and message.error().code() != KafkaError._PARTITION_EOF:
                pass  # transient errors while the coordinator moves

    for i in range(200):
        producer.produce("g", value=f"before-{i}".encode(), partition=i % 3)
    assert producer.flush(20) == 0
    consume_until(200, 60)
    assert len(seen) == 200
    cluster.agents[coordinating.node_id - 1].kill9()
    for i in range(200):
        producer.produce("g", value=f"after-{i}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    consume_until(400, 90)
    consumer.close()
    assert seen == {f"before-{i}".encode() for i in range(200)} | {
        f"after-{i}".encode() for i in range(200)
    }


def test_postgresql_restart_under_load(moto_server: MotoServer, tmp_path: Path) -> None:
    with PostgresServer() as pg:
        bucket = f"pg-restart-{uuid.uuid4().hex[:8]}"
        moto_server.create_bucket(bucket)
        cluster = Cluster(pg.dsn, bucket, moto_server.env(), tmp_path)
        try:
            first = cluster.add("a")
            cluster.add("b")
            create_topic(first.bootstrap, "pg")
            load = Load(cluster.bootstrap, "pg").start()
            load.wait_acked(1000)
            pg.stop(mode="immediate")  # as if the database host lost power
            time.sleep(4)  # longer than the lease: the writer steps down
            stalled_at = len(load.acked)
            pg.start()
            load.wait_acked(stalled_at + 2000, timeout_s=90)
            load.stop()
            check_exactly_once(load, read_all(first.bootstrap, "pg", at_least=load))
            logs = "".join(a.log_text() for a in cluster.agents)
            # While it was down the agents said so, and recovered by themselves.
            assert "postgresql" in logs
            assert "Traceback" not in logs
        finally:
            cluster.stop()


def test_database_down_gives_retriable_errors_not_dropped_connections(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """With PostgreSQL down, requests that need it are answered with retriable Kafka
    errors (the agent stays up and keeps answering), and work again once it is back."""
    with PostgresServer() as pg:
        bucket = f"pg-down-{uuid.uuid4().hex[:8]}"
        moto_server.create_bucket(bucket)
        cluster = Cluster(pg.dsn, bucket, moto_server.env(), tmp_path)
        cluster.timing_args = ("--lease-ms", "1000", "--heartbeat-ms", "250")
        try:
            agent = cluster.add("a")
            create_topic(agent.bootstrap, "up")
            pg.stop(mode="immediate")
            admin = AdminClient({"bootstrap.servers": agent.bootstrap})
            future = admin.create_topics([NewTopic("down", 1, 1)], request_timeout=60)["down"]
            with pytest.raises(KafkaException) as raised:
                future.result(60)
            error = raised.value.args[0]
            assert error.code() == KafkaError.REQUEST_TIMED_OUT, error  # our answer, no drop
            # Still serving what needs no database.
            assert "up" in admin.list_topics(timeout=10).topics
            pg.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    admin.create_topics([NewTopic("down", 1, 1)])["down"].result(30)
                    break
                except KafkaException:
                    time.sleep(0.5)
            assert "down" in admin.list_topics(timeout=10).topics
            assert agent.process is not None and agent.process.poll() is None
        finally:
            cluster.stop()


def test_delete_records_through_a_follower(cluster: Cluster) -> None:
    a = cluster.add("a")
    b = cluster.add("b")
    cluster.wait_for_members()
    create_topic(a.bootstrap, "dr", 1)
    producer = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 0})
    for i in range(10):
        producer.produce("dr", value=f"v{i}".encode(), partition=0)
        producer.flush(10)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})  # b sends it to the writer
    futures = admin.delete_records([TopicPartition("dr", 0, 7)])
    assert next(iter(futures.values())).result(20).low_watermark == 7
    for agent in (a, b):
        consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "w"})
        assert consumer.get_watermark_offsets(TopicPartition("dr", 0), timeout=10) == (7, 10)
        consumer.close()
