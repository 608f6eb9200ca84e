"""Transactions in a cluster: real PostgreSQL, moto S3, three agents, librdkafka clients.

Each agent has its own zone (agent N in zone `zN`), so a client that says
`driftlog_zone=zN` in its client.id sends all its partition traffic (produce,
fetch, ListOffsets) to agent N. The transaction coordinator of a transactional id
is the rendezvous choice over live agents (`group_coordinator`, as for groups), so
a test picks ids coordinated by the agent it wants. Readers are pinned to one
surviving agent the same way and read until they reach the end computed from the
producer's delivery reports (data, then one marker per partition), so an agent
whose view lags cannot make a check pass early.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentProcess, Cluster

from driftlog.cluster.placement import group_coordinator
from driftlog.coordinator.api import AgentInfo

T = TypeVar("T")
Record = tuple[int, int, bytes]  # partition, offset, value

# librdkafka fails a request in flight on a broker handle it dropped after a
# membership change; these are worth asking again (test_cluster.py's end_offset).
_TRANSIENT = {
    KafkaError._DESTROY_BROKER,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


# Cluster helpers --------------------------------------------------------------------


def zone(agent: AgentProcess) -> str:
    return "z" + agent.extra_args[agent.extra_args.index("--node-id") + 1]


def node_id(agent: AgentProcess) -> int:
    return int(agent.extra_args[agent.extra_args.index("--node-id") + 1])


def lease_row(cluster: Cluster) -> tuple[str, int]:
    with psycopg.connect(cluster.dsn) as conn:
        row = conn.execute("SELECT holder, epoch FROM leases WHERE shard = 0").fetchone()
    assert row is not None
    return str(row[0]).split("/")[0], int(row[1])  # agent id / process


def writer_agent(cluster: Cluster) -> AgentProcess:
    holder, _ = lease_row(cluster)
    return cluster.agents[int(holder.removeprefix("agent-")) - 1]


def start_three(cluster: Cluster) -> tuple[AgentProcess, AgentProcess, AgentProcess]:
    """Three agents, one per zone: (the writer, the other two in node order)."""
    for i in (1, 2, 3):
        cluster.add(f"z{i}")
    cluster.wait_for_members()
    writer = writer_agent(cluster)
    a, b = (agent for agent in cluster.agents if agent is not writer)
    return writer, a, b


def wait_for_new_writer(cluster: Cluster, old: AgentProcess, timeout_s: float = 30) -> None:
    old_id = f"agent-{node_id(old)}"
    deadline = time.monotonic() + timeout_s
    while lease_row(cluster)[0] == old_id and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease_row(cluster)[0] != old_id, "no agent took the writer lease over"


def key_coordinated_by(prefix: str, coordinator: AgentProcess, live: Sequence[AgentProcess]) -> str:
    """A transactional id (or group id) that `coordinator` coordinates while `live` are up."""
    infos = [AgentInfo(f"agent-{node_id(a)}", node_id(a), "", 0, "", "") for a in live]
    for i in range(10_000):
        key = f"{prefix}-{i}"
        chosen = group_coordinator(key, infos)
        if chosen is not None and chosen.node_id == node_id(coordinator):
            return key
    raise AssertionError(f"no key for agent {node_id(coordinator)}")


def create_topic(bootstrap: str, partitions: int) -> str:
    name = "tx-" + uuid.uuid4().hex[:10]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(20)
    return name


def retrying(call: Callable[[], T], timeout_s: float = 60) -> T:
    """`call()` again while librdkafka says the error is transient or retriable."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as e:
            error = e.args[0]
            if time.monotonic() > deadline or not (error.code() in _TRANSIENT or error.retriable()):
                raise
            time.sleep(0.2)


# Transactional producer -------------------------------------------------------------


class TxnProducer:
    """A transactional producer recording where each value was acknowledged."""

    def __init__(self, bootstrap: str, txn_id: str, zone_hint: str | None = None) -> None:
        client_id = "txn" if zone_hint is None else f"txn,driftlog_zone={zone_hint}"
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "transactional.id": txn_id,
                "linger.ms": 5,
                "topic.metadata.refresh.interval.ms": 1000,
                "reconnect.backoff.max.ms": 500,
            }
        )
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.delivery_errors: list[str] = []
        self.end_errors: list[str] = []
        retrying(lambda: self.producer.init_transactions(30))

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.delivery_errors.append(str(error))
        else:
            self.acked[message.value()] = (message.partition(), message.offset())

    def send(self, topic: str, value: bytes, partition: int) -> None:
        self.producer.produce(topic, value=value, partition=partition, on_delivery=self._delivered)

    def produce(self, topic: str, values: Iterable[bytes], partitions: int) -> list[bytes]:
        sent = []
        for i, value in enumerate(values):
            self.send(topic, value, i % partitions)
            sent.append(value)
        return sent

    def flush(self, timeout_s: float = 60) -> None:
        left = self.producer.flush(timeout_s)
        assert left == 0, f"{left} records undelivered; errors {self.delivery_errors[:5]}"

    def finish(self, commit: bool, timeout_s: float = 90) -> bool:
        """Commit (or abort) the open transaction as librdkafka documents it: call again
        on a retriable error, abort when the error requires it. True if it committed."""
        deadline = time.monotonic() + timeout_s
        committing = commit
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"transaction not ended in time; errors {self.end_errors}"
            try:
                if committing:
                    self.producer.commit_transaction(remaining)
                else:
                    self.producer.abort_transaction(remaining)
                return committing
            except KafkaException as e:
                error = e.args[0]
                self.end_errors.append(str(error))
                if error.fatal():
                    raise
                if committing and error.txn_requires_abort():
                    committing = False
                elif not error.retriable():
                    raise

    def first_offsets(self, values: Iterable[bytes]) -> dict[int, int]:
        firsts: dict[int, int] = {}
        for value in values:
            partition, offset = self.acked[value]
            firsts[partition] = min(firsts.get(partition, offset), offset)
        return firsts


# Readers ----------------------------------------------------------------------------


def pinned_consumer(agent: AgentProcess, isolation: str, **extra: Any) -> Consumer:
    """A consumer whose partition traffic goes to `agent` alone (its zone's only agent)."""
    return Consumer(
        {
            "bootstrap.servers": agent.bootstrap,
            "client.id": f"reader,driftlog_zone={zone(agent)}",
            "group.id": "reader-" + uuid.uuid4().hex[:8],
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "topic.metadata.refresh.interval.ms": 1000,
            **extra,
        }
    )


def watermarks(agent: AgentProcess, topic: str, partitions: int, isolation: str) -> list[int]:
    """Each partition's end as `agent` reports it (ListOffsets latest; read_committed:
    the last stable offset)."""
    consumer = pinned_consumer(agent, isolation)

    def high(partition: int) -> int:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1])

    try:
        return [retrying(functools.partial(high, p)) for p in range(partitions)]
    finally:
        consumer.close()


def wait_for_watermarks(
    agent: AgentProcess, topic: str, isolation: str, expected: list[int], timeout_s: float = 30
) -> None:
    """Until `agent` reports `expected` (its view follows the writer's stream)."""
    deadline = time.monotonic() + timeout_s
    seen = watermarks(agent, topic, len(expected), isolation)
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = watermarks(agent, topic, len(expected), isolation)
    assert seen == expected, f"{agent.bootstrap} {isolation}: {seen}, expected {expected}"


def read_via(
    agent: AgentProcess, topic: str, ends: Mapping[int, int], isolation: str, timeout_s: float = 30
) -> list[Record]:
    """Every record `agent` serves from offset 0 until each partition's reader stops at
    or past `ends[partition]`."""
    consumer = pinned_consumer(agent, isolation)
    records: list[Record] = []
    reached: dict[int, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + timeout_s
        while (
            any(reached.get(p, -1) < end for p, end in ends.items()) and time.monotonic() < deadline
        ):
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    reached[message.partition()] = message.offset()
                elif error.code() not in _TRANSIENT:
                    raise KafkaException(error)
                continue
            records.append((message.partition(), message.offset(), message.value()))
    finally:
        consumer.close()
    assert all(reached.get(p, -1) >= end for p, end in ends.items()), (
        f"{agent.bootstrap} {isolation}: stopped at {reached}, expected {dict(ends)}"
    )
    return sorted(records)


def ends_after_commit(acked: Iterable[tuple[int, int]], partitions: int) -> list[int]:
    """Each partition's end once the transaction ended: its last record, then its marker."""
    last = [-1] * partitions
    for partition, offset in acked:
        last[partition] = max(last[partition], offset)
    return [offset + 2 if offset >= 0 else 0 for offset in last]


def check_all_or_nothing(
    agent: AgentProcess,
    topic: str,
    producer: TxnProducer,
    committed: bool,
    ends: list[int],
    others: Mapping[bytes, tuple[int, int]] | None = None,
) -> None:
    """Through `agent`: read_uncommitted sees each transaction record once, where it was
    acknowledged; read_committed sees all of them (committed) or none (aborted). The
    records of `others` (non-transactional, acknowledged) are seen by both."""
    others = dict(others or {})
    by_end = dict(enumerate(ends))
    uncommitted = read_via(agent, topic, by_end, "read_uncommitted")
    read_committed = read_via(agent, topic, by_end, "read_committed")
    for name, records in (("read_uncommitted", uncommitted), ("read_committed", read_committed)):
        twice = [v for v, n in Counter(v for _, _, v in records).items() if n > 1]
        assert not twice, f"{agent.bootstrap} {name}: stored twice: {twice}"
    found = {v: (p, o) for p, o, v in uncommitted}
    for value, position in {**producer.acked, **others}.items():
        assert found.get(value) == position, (
            f"{value!r} acked at {position}, found {found.get(value)}"
        )
    if committed:
        # The whole transaction: what was acknowledged is exactly what is there.
        assert len(uncommitted) == len(producer.acked) + len(others)
        assert read_committed == uncommitted, f"{agent.bootstrap}: read_committed differs"
    else:
        assert read_committed == sorted((p, o, v) for v, (p, o) in others.items()), (
            f"{agent.bootstrap}: aborted records visible to read_committed"
        )
    assert watermarks(agent, topic, len(ends), "read_uncommitted") == ends
    assert watermarks(agent, topic, len(ends), "read_committed") == ends


# 1. A follower dies mid-transaction ---------------------------------------------------


@pytest.mark.parametrize("victim", ["leader-and-coordinator", "leader", "coordinator"])
def test_kill9_of_an_agent_the_transaction_uses(cluster: Cluster, victim: str) -> None:
    """The producer's data goes to agent `a`; its transaction coordinator is `a` or `b`.
    Mid-transaction (records acknowledged) the victim, never the writer, dies; more
    records follow and the commit is retried: all of it or none of it is visible."""
    writer, a, b = start_three(cluster)
    coordinator = a if victim == "leader-and-coordinator" else b
    killed = b if victim == "coordinator" else a
    survivors = [agent for agent in cluster.agents if agent is not killed]
    topic = create_topic(cluster.bootstrap, 2)
    txn_id = key_coordinated_by("follower", coordinator, cluster.agents)
    producer = TxnProducer(cluster.bootstrap, txn_id, zone(a))
    producer.producer.begin_transaction()
    producer.produce(topic, (b"before-%d" % i for i in range(10)), 2)
    producer.flush()
    killed.kill9()
    producer.produce(topic, (b"after-%d" % i for i in range(10)), 2)
    producer.flush()
    committed = producer.finish(commit=True)
    print(f"victim {victim}: committed={committed}, end errors {producer.end_errors}")
    assert len(producer.acked) == 20
    ends = ends_after_commit(producer.acked.values(), 2)
    for agent in survivors:
        wait_for_watermarks(agent, topic, "read_committed", ends)
        check_all_or_nothing(agent, topic, producer, committed, ends)
    # Nothing about losing a follower makes the transaction abortable.
    assert committed, f"the commit was turned into an abort: {producer.end_errors}"
    assert writer.process is not None and writer.process.poll() is None


# 2. The writer dies mid-transaction ---------------------------------------------------


@pytest.mark.parametrize("writer_role", ["coordinator-and-leader", "neither"])
def test_kill9_of_the_writer_mid_transaction(cluster: Cluster, writer_role: str) -> None:
    """The writer dies with a transaction open (its records acknowledged). The new
    writer has the transaction open still (survivors hold read_committed back at its
    first offsets), the producer goes on and commits it, and everything is seen once."""
    writer, a, b = start_three(cluster)
    data_agent, coordinator = (writer, writer) if writer_role != "neither" else (a, b)
    topic = create_topic(cluster.bootstrap, 2)
    txn_id = key_coordinated_by("writer", coordinator, cluster.agents)
    producer = TxnProducer(cluster.bootstrap, txn_id, zone(data_agent))
    producer.producer.begin_transaction()
    first_half = producer.produce(topic, (b"before-%d" % i for i in range(10)), 2)
    producer.flush()
    firsts = producer.first_offsets(first_half)
    _, epoch = lease_row(cluster)
    writer.kill9()
    wait_for_new_writer(cluster, writer)
    assert lease_row(cluster)[1] > epoch

    # A plain record after the open transaction, acknowledged by the new writer: once a
    # survivor's view shows it, that view follows the new writer, and the transaction
    # must still hold read_committed back at its first offsets.
    plain = Producer(
        {
            "bootstrap.servers": a.bootstrap,
            "client.id": f"plain,driftlog_zone={zone(a)}",
            "enable.idempotence": True,
        }
    )
    others: dict[bytes, tuple[int, int]] = {}

    def plain_delivered(error: Any, message: Any) -> None:
        assert error is None, error
        others[message.value()] = (message.partition(), message.offset())

    plain.produce(topic, value=b"plain", partition=0, on_delivery=plain_delivered)
    assert plain.flush(60) == 0
    high = [max(o for p, o in [*producer.acked.values(), *others.values()] if p == q) + 1
            for q in (0, 1)]  # fmt: skip
    for agent in (a, b):
        wait_for_watermarks(agent, topic, "read_uncommitted", high)
        assert watermarks(agent, topic, 2, "read_committed") == [firsts[0], firsts[1]], (
            f"{agent.bootstrap}: the open transaction no longer holds read_committed back"
        )

    producer.produce(topic, (b"after-%d" % i for i in range(10)), 2)
    producer.flush()
    committed = producer.finish(commit=True)
    print(f"writer {writer_role}: committed={committed}, end errors {producer.end_errors}")
    assert committed, f"the transaction did not survive the failover: {producer.end_errors}"
    ends = ends_after_commit([*producer.acked.values(), *others.values()], 2)
    for agent in (a, b):
        wait_for_watermarks(agent, topic, "read_committed", ends)
        check_all_or_nothing(agent, topic, producer, True, ends, others)


# 3. The last stable offset travels through the writer's stream ---------------------


def test_an_open_transaction_holds_back_readers_on_another_agent(cluster: Cluster) -> None:
    """Data and transaction go through agent `a`; a read_committed reader and ListOffsets
    on agent `b` see nothing from the open transaction's first offset on, then all of it
    once it commits, and nothing of an aborted one."""
    _, a, b = start_three(cluster)
    topic = create_topic(a.bootstrap, 1)
    plain = Producer({"bootstrap.servers": a.bootstrap, "client.id": f"p,driftlog_zone={zone(a)}"})

    def send_plain(value: bytes) -> None:
        plain.produce(topic, value=value, partition=0)
        assert plain.flush(30) == 0

    send_plain(b"before")  # offset 0
    txn_id = key_coordinated_by("hold", a, cluster.agents)
    producer = TxnProducer(a.bootstrap, txn_id, zone(a))
    producer.producer.begin_transaction()
    producer.produce(topic, (b"in-txn-%d" % i for i in range(3)), 1)  # offsets 1-3
    producer.flush()
    send_plain(b"after")  # offset 4: held back too (KIP-98)
    assert sorted(producer.acked.values()) == [(0, 1), (0, 2), (0, 3)]

    wait_for_watermarks(b, topic, "read_uncommitted", [5])
    assert watermarks(b, topic, 1, "read_committed") == [1]
    assert [r[2] for r in read_via(b, topic, {0: 5}, "read_uncommitted")] == [
        b"before", b"in-txn-0", b"in-txn-1", b"in-txn-2", b"after"
    ]  # fmt: skip

    reader = pinned_consumer(b, "read_committed")
    reader.assign([TopicPartition(topic, 0, 0)])
    seen: list[bytes] = []
    stopped_at: list[int] = []

    def poll_for(timeout_s: float, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:
            message = reader.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is None:
                seen.append(message.value())
            elif error.code() == KafkaError._PARTITION_EOF:
                stopped_at.append(message.offset())
            elif error.code() not in _TRANSIENT:
                raise KafkaException(error)

    try:
        poll_for(3, lambda: False)  # a while of long polls: nothing past offset 1 shows
        assert seen == [b"before"]
        assert stopped_at and stopped_at[-1] == 1, stopped_at

        assert producer.finish(commit=True)
        poll_for(20, lambda: len(seen) >= 5)
        assert seen == [b"before", b"in-txn-0", b"in-txn-1", b"in-txn-2", b"after"]
        wait_for_watermarks(b, topic, "read_committed", [6])  # the commit marker at 5
        assert watermarks(b, topic, 1, "read_uncommitted") == [6]

        # An aborted transaction: b learns its range from the stream and skips it.
        producer.producer.begin_transaction()
        producer.produce(topic, (b"aborted-%d" % i for i in range(2)), 1)  # offsets 6-7
        producer.flush()
        assert not producer.finish(commit=False)  # the abort marker at 8
        send_plain(b"last")  # offset 9
        poll_for(20, lambda: len(seen) >= 6)
        assert seen[5:] == [b"last"]
        wait_for_watermarks(b, topic, "read_committed", [10])
    finally:
        reader.close()


# 4. Consume-transform-produce across agents, the writer killed once ------------------


def test_consume_transform_produce_survives_a_writer_kill(cluster: Cluster) -> None:
    """Copy a topic uppercased, a few records per transaction with the consumer's offsets
    in it. The writer (also the transaction coordinator) dies in the middle of a
    transaction whose records and offsets were sent; the copy is still exactly once."""
    writer, a, b = start_three(cluster)
    count, partitions = 60, 2
    source = create_topic(cluster.bootstrap, partitions)
    sink = create_topic(cluster.bootstrap, partitions)
    loader = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})
    for i in range(count):
        loader.produce(source, value=b"value-%03d" % i, partition=i % partitions)
    assert loader.flush(30) == 0
    # The group is coordinated by an agent that survives, the transaction by the writer.
    group = key_coordinated_by("ctp-group", a, cluster.agents)
    producer = TxnProducer(cluster.bootstrap, key_coordinated_by("ctp", writer, cluster.agents))
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )

    def rewind() -> None:
        """Back to the group's committed offsets: the aborted round is done again."""
        committed = retrying(lambda: consumer.committed(consumer.assignment(), 10))
        for tp in committed:
            consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    consumer.subscribe([source])
    copied = rounds = aborted = 0
    killed = False
    deadline = time.monotonic() + 120
    try:
        while copied < count and time.monotonic() < deadline:
            messages = [m for m in consumer.consume(5, 1.0) if m.error() is None]
            if not messages:
                continue
            rounds += 1
            try:
                producer.producer.begin_transaction()
                for m in messages:
                    producer.send(sink, m.value().upper(), m.partition())
                positions = consumer.position(consumer.assignment())
                send_offsets = producer.producer.send_offsets_to_transaction
                retrying(
                    functools.partial(
                        send_offsets, positions, consumer.consumer_group_metadata(), 30
                    )
                )
                if rounds == 4:
                    producer.flush()  # the round's copies are in the log...
                    writer.kill9()  # ...and its writer dies before the commit
                    killed = True
                committed = producer.finish(commit=True)
            except KafkaException as e:
                if not e.args[0].txn_requires_abort():
                    raise
                producer.end_errors.append(str(e.args[0]))
                committed = producer.finish(commit=False)
            if committed:
                copied += len(messages)
            else:
                aborted += 1
                rewind()
    finally:
        consumer.close()
    print(f"{rounds} rounds, {aborted} aborted; errors {producer.end_errors}")
    assert killed
    assert copied == count, f"copied {copied} of {count} in time"
    wait_for_new_writer(cluster, writer)

    source_ends = [count // partitions] * partitions  # a plain producer: no markers
    checker = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group})
    try:
        offsets = retrying(
            lambda: checker.committed([TopicPartition(source, p) for p in range(partitions)], 10)
        )
    finally:
        checker.close()
    assert [tp.offset for tp in offsets] == source_ends

    # Every source record once in the sink, as read_committed readers on each survivor
    # see it; aborted copies are only in the read_uncommitted log.
    expected = sorted(b"VALUE-%03d" % i for i in range(count))
    least_ends = ends_after_commit(producer.acked.values(), partitions)
    for agent in (a, b):
        deadline = time.monotonic() + 30
        ends = watermarks(agent, sink, partitions, "read_committed")
        while any(e < least for e, least in zip(ends, least_ends, strict=True)):
            assert time.monotonic() < deadline, f"{agent.bootstrap}: ends {ends} < {least_ends}"
            time.sleep(0.1)
            ends = watermarks(agent, sink, partitions, "read_committed")
        assert watermarks(agent, sink, partitions, "read_uncommitted") == ends
        out = read_via(agent, sink, dict(enumerate(ends)), "read_committed")
        assert sorted(v for _, _, v in out) == expected, f"{agent.bootstrap}: not exactly once"
        uncommitted = read_via(agent, sink, dict(enumerate(ends)), "read_uncommitted")
        assert len(uncommitted) >= len(out)
        assert {v for _, _, v in uncommitted} == set(expected)
