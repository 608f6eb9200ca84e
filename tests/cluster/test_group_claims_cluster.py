"""Group coordination fenced by the database's group claims, on a real cluster (PostgreSQL,
moto) with a real confluent-kafka consumer.

The claim of a group is taken away from its coordinating agent behind its back, as an
agent whose membership list disagrees would take it: that agent refuses the consumer's
next offset commit with NOT_COORDINATOR and writes nothing, and the consumer recovers
by itself (it looks the coordinator up again, rejoins, and its commits land).
"""

from __future__ import annotations

import logging
import time

import psycopg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import Cluster

from driftlog.cluster.placement import group_coordinator
from driftlog.coordinator.api import AgentInfo

PARTITIONS = 3


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(20)


def committed_in_database(cluster: Cluster, group_id: str) -> dict[int, int]:
    with psycopg.connect(cluster.dsn) as conn:
        rows = conn.execute(
            "SELECT partition, committed_offset FROM group_offsets WHERE group_id = %s",
            (group_id,),
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def claim_in_database(cluster: Cluster, group_id: str) -> tuple[str, int] | None:
    with psycopg.connect(cluster.dsn) as conn:
        row = conn.execute(
            "SELECT agent_id, epoch FROM group_claims WHERE group_id = %s", (group_id,)
        ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


class ClientLog(logging.Handler):
    """librdkafka's log lines (its group debugging: what each OffsetCommit was answered)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def commit_errors(consumer: Consumer) -> set[int]:
    """A synchronous commit of the consumer's positions: the error codes it got."""
    try:
        result = consumer.commit(asynchronous=False)
    except KafkaException as e:
        return {e.args[0].code()}
    return {tp.error.code() for tp in result or [] if tp.error is not None}


def test_a_coordinator_whose_claim_was_taken_refuses_commits_and_the_consumer_recovers(
    cluster: Cluster,
) -> None:
    for zone in ("a", "a"):
        cluster.add(zone)
    cluster.wait_for_members()
    agents = [AgentInfo(f"agent-{i}", i, "", 0, "", "") for i in (1, 2)]
    group = next(
        g for g in (f"claims-{i}" for i in range(100))
        if (c := group_coordinator(g, agents)) is not None and c.agent_id == "agent-2"
    )  # fmt: skip
    coordinating = cluster.agents[1]
    create_topic(cluster.bootstrap, "claims", PARTITIONS)
    producer = Producer({"bootstrap.servers": cluster.bootstrap})

    def produce(prefix: str, count: int) -> None:
        for i in range(count):
            producer.produce("claims", value=f"{prefix}-{i}".encode(), partition=i % PARTITIONS)
        assert producer.flush(20) == 0

    client_log = ClientLog()
    logger = logging.getLogger(f"librdkafka.{group}")
    logger.addHandler(client_log)
    logger.setLevel(logging.DEBUG)
    consumer = Consumer(
        {
            "debug": "cgrp",
            "logger": logger,
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe(["claims"])
    seen: set[bytes] = set()

    def consume_until(wanted: set[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not wanted <= seen and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                seen.add(message.value())

    try:
        first = {f"first-{i}".encode() for i in range(60)}
        produce("first", 60)
        consume_until(first, 60)
        assert first <= seen
        assert commit_errors(consumer) == set()
        assert committed_in_database(cluster, group) == {p: 20 for p in range(PARTITIONS)}
        holder = claim_in_database(cluster, group)
        assert holder is not None and holder[0] == "agent-2"

        # Another agent (one whose membership list says the group is its own) claims the
        # group, as its backend would: the claim moves, the epoch goes up.
        with psycopg.connect(cluster.dsn) as conn:
            conn.execute(
                "UPDATE group_claims SET agent_id = 'agent-9', epoch = epoch + 1"
                " WHERE group_id = %s",
                (group,),
            )
        second = {f"second-{i}".encode() for i in range(30)}
        produce("second", 30)
        consume_until(second, 60)
        assert second <= seen

        # The coordinating agent refuses the next commit, and nothing is written. (The
        # client's answer is NOT_COORDINATOR; librdkafka then looks the coordinator up
        # and sends the commit again, to agent-2 again, which by then has dropped the
        # group: the application sees that second answer, GROUP_ID_NOT_FOUND.)
        assert commit_errors(consumer)
        assert committed_in_database(cluster, group) == {p: 20 for p in range(PARTITIONS)}
        assert "offset commit refused" in coordinating.log_text()

        # The consumer recovers by itself: it looks the coordinator up again (still
        # agent-2, as every agent agrees), whose next request takes the claim back, and
        # rejoins; it is handed its partitions again from the committed offsets, reads
        # the second batch again, and its commits land.
        deadline = time.monotonic() + 90
        done = {p: 30 for p in range(PARTITIONS)}
        next_commit_s = 0.0
        while committed_in_database(cluster, group) != done and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                seen.add(message.value())
            if time.monotonic() >= next_commit_s:  # the application commits every second
                commit_errors(consumer)
                next_commit_s = time.monotonic() + 1
        assert committed_in_database(cluster, group) == done
        refused = [line for line in client_log.lines if "Not coordinator" in line]
        assert refused and "OffsetCommit" in refused[0], refused
        assert first | second <= seen
        holder = claim_in_database(cluster, group)
        assert holder is not None and holder[0] == "agent-2" and holder[1] >= 3
        assert "taken over from agent-9" in coordinating.log_text()
        positions = consumer.committed(
            [TopicPartition("claims", p) for p in range(PARTITIONS)], timeout=10
        )
        assert {tp.partition: tp.offset for tp in positions} == done
    finally:
        consumer.close()
    assert "Traceback" not in "".join(a.log_text() for a in cluster.agents)
