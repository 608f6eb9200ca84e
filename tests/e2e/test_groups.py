"""Consumer groups with real clients: exactly-once delivery across members and rebalances.

Members commit each record's offset synchronously before taking the next, so a
clean leave or join must neither lose nor repeat a record.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentProcess

TOPIC = "grp"
PARTITIONS = 6
GROUP = "exactly-once"


class Member:
    """One group member polling in its own thread."""

    def __init__(self, bootstrap: str, name: str, seen: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.assigned: list[int] = []
        self.revocations = 0
        self._seen = seen
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": GROUP,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
                "partition.assignment.strategy": "range",
            }
        )
        self._consumer.subscribe([TOPIC], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned = sorted(p.partition for p in partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.revocations += 1
        self.assigned = []

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error():
                continue
            self._seen.append((self.name, message.value()))
            self._consumer.commit(message=message, asynchronous=False)

    def leave(self) -> None:
        self._stop.set()
        self._thread.join(20)
        self._consumer.close()  # sends LeaveGroup


def produce(bootstrap: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, value in enumerate(values):
        producer.produce(TOPIC, value=value, partition=i % PARTITIONS)
    assert producer.flush(20) == 0


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(180)
def test_three_members_rebalance_and_resume(agent: AgentProcess) -> None:
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS)])[TOPIC].result(10)
    seen: list[tuple[str, bytes]] = []
    first = [b"a-%03d" % i for i in range(300)]
    produce(agent.bootstrap, first)

    members = [Member(agent.bootstrap, f"m{i}", seen) for i in range(3)]
    wait_until(lambda: len(seen) >= 300, 60, "the first 300 records")
    wait_until(
        lambda: (
            sorted(p for m in members for p in m.assigned) == list(range(PARTITIONS))
            and all(len(m.assigned) == 2 for m in members)
        ),
        30,
        "a balanced assignment of 6 partitions over 3 members",
    )

    # One member leaves: its partitions move to the others.
    leaver = members.pop()
    leaver.leave()
    wait_until(
        lambda: sorted(p for m in members for p in m.assigned) == list(range(PARTITIONS)),
        30,
        "the remaining members to take over all partitions",
    )
    second = [b"b-%03d" % i for i in range(300)]
    produce(agent.bootstrap, second)
    wait_until(lambda: len(seen) >= 600, 60, "records produced after the leave")

    # A new member joins and resumes from the committed offsets.
    members.append(Member(agent.bootstrap, "m3", seen))
    wait_until(lambda: len(members[-1].assigned) == 2, 30, "the new member's assignment")
    third = [b"c-%03d" % i for i in range(150)]
    produce(agent.bootstrap, third)
    wait_until(lambda: len(seen) >= 750, 60, "records produced after the join")
    time.sleep(1.0)  # let any duplicate delivery show up
    for member in members:
        member.leave()

    counts = Counter(value for _, value in seen)
    duplicates = [v for v, n in counts.items() if n > 1]
    assert not duplicates, f"delivered twice: {duplicates[:5]}"
    assert set(counts) == set(first + second + third)
    assert any(name == "m3" for name, value in seen if value.startswith(b"c-"))

    # The committed offsets are the ends of the partitions, and they are durable.
    consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": GROUP})
    committed = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], 10)
    assert sum(tp.offset for tp in committed) == 750
    consumer.close()

    # ListGroups and DescribeGroups see the group.
    groups = admin.list_consumer_groups().result(10)
    assert GROUP in {g.group_id for g in groups.valid}
    described = admin.describe_consumer_groups([GROUP])[GROUP].result(10)
    assert described.group_id == GROUP
