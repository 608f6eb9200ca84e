"""Transactions with real clients: commit and abort visibility under both isolation
levels (confluent-kafka, aiokafka, kafka-python), fencing, consume-transform-produce
exactly once, open transactions holding
read_committed readers back, timeouts, and a kill -9 in the middle of a transaction."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentFactory, AgentProcess
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition

Record = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value


def create_topic(bootstrap: str, partitions: int = 2) -> str:
    name = "tx-" + uuid.uuid4().hex[:10]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions)])[name].result(10)
    return name


def txn_producer(bootstrap: str, txn_id: str, **extra: object) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5, **extra}
    )
    producer.init_transactions(20)
    return producer


def read_all(
    bootstrap: str, topic: str, partitions: int, isolation: str, timeout_s: float = 15
) -> list[Record]:
    """Every record from the beginning up to the partitions' ends as `isolation` sees them."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader-" + uuid.uuid4().hex[:6],
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        records: list[Record] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < partitions and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                raise KafkaException(error)
            at_end.discard(message.partition())
            records.append((message.partition(), message.offset(), message.key(), message.value()))
        assert len(at_end) == partitions, f"did not reach the end: {at_end}"
        return sorted(records)
    finally:
        consumer.close()


def ends(bootstrap: str, topic: str, partitions: int, isolation: str) -> list[int]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "ends", "isolation.level": isolation}
    )
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def test_commit_and_abort_visibility_under_both_isolation_levels(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b)
    producer = txn_producer(b, "vis-" + topic)
    producer.begin_transaction()
    for i in range(6):
        producer.produce(topic, key=b"c%d" % i, value=b"committed-%d" % i, partition=i % 2)
    producer.commit_transaction(20)
    producer.begin_transaction()
    for i in range(4):
        producer.produce(topic, key=b"a%d" % i, value=b"aborted-%d" % i, partition=i % 2)
    producer.flush(20)
    producer.abort_transaction(20)
    producer.begin_transaction()
    producer.produce(topic, key=b"late", value=b"committed-late", partition=0)
    producer.commit_transaction(20)

    committed = read_all(b, topic, 2, "read_committed")
    # Offsets count the markers: partition 0 has c0 c2 c4 (0-2), a commit marker (3),
    # a0 a2 (4-5), an abort marker (6), the late record (7) and its marker (8).
    assert committed == [
        (0, 0, b"c0", b"committed-0"), (0, 1, b"c2", b"committed-2"),
        (0, 2, b"c4", b"committed-4"), (0, 7, b"late", b"committed-late"),
        (1, 0, b"c1", b"committed-1"), (1, 1, b"c3", b"committed-3"),
        (1, 2, b"c5", b"committed-5"),
    ]  # fmt: skip
    uncommitted = read_all(b, topic, 2, "read_uncommitted")
    assert [r for r in uncommitted if r[3] and r[3].startswith(b"aborted")] == [
        (0, 4, b"a0", b"aborted-0"), (0, 5, b"a2", b"aborted-2"),
        (1, 4, b"a1", b"aborted-1"), (1, 5, b"a3", b"aborted-3"),
    ]  # fmt: skip
    assert len(uncommitted) == len(committed) + 4
    # Nothing is open: the last stable offset is the high watermark (markers included).
    assert ends(b, topic, 2, "read_committed") == ends(b, topic, 2, "read_uncommitted") == [9, 7]


def test_an_open_transaction_holds_read_committed_readers_back(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b, 1)
    plain = Producer({"bootstrap.servers": b})
    plain.produce(topic, value=b"before", partition=0)
    plain.flush(10)
    producer = txn_producer(b, "hold-" + topic)
    producer.begin_transaction()
    producer.produce(topic, value=b"in-txn", partition=0)
    producer.flush(20)
    # Non-transactional data after the open transaction is held back too (KIP-98).
    plain.produce(topic, value=b"after", partition=0)
    plain.flush(10)
    assert ends(b, topic, 1, "read_uncommitted") == [3]
    assert ends(b, topic, 1, "read_committed") == [1]  # the open transaction's first offset
    assert [r[3] for r in read_all(b, topic, 1, "read_committed")] == [b"before"]

    consumer = Consumer(
        {"bootstrap.servers": b, "group.id": "waiter", "isolation.level": "read_committed"}
    )
    consumer.assign([TopicPartition(topic, 0, 1)])
    assert consumer.poll(1.0) is None  # waits: nothing stable past offset 1
    producer.commit_transaction(20)
    seen: list[bytes | None] = []
    deadline = time.monotonic() + 15
    while len(seen) < 2 and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            seen.append(message.value())
    consumer.close()
    assert seen == [b"in-txn", b"after"]
    assert ends(b, topic, 1, "read_committed") == [4]


def test_a_newer_instance_fences_the_zombie(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b, 1)
    txn_id = "zombie-" + topic
    zombie = txn_producer(b, txn_id)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie", partition=0)
    zombie.flush(20)
    # A new instance aborts the zombie's open transaction and bumps the epoch.
    fresh = txn_producer(b, txn_id)
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(20)
    error = raised.value.args[0]
    assert error.fatal() or error.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ), error
    fresh.begin_transaction()
    fresh.produce(topic, value=b"fresh", partition=0)
    fresh.commit_transaction(20)
    assert [r[3] for r in read_all(b, topic, 1, "read_committed")] == [b"fresh"]
    assert [r[3] for r in read_all(b, topic, 1, "read_uncommitted")] == [b"zombie", b"fresh"]


def test_a_transaction_past_its_timeout_is_aborted(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b, 1)
    producer = txn_producer(b, "slow-" + topic, **{"transaction.timeout.ms": 2000})
    producer.begin_transaction()
    producer.produce(topic, value=b"too-slow", partition=0)
    producer.flush(20)
    # The coordinator aborts it (checked every second) and fences the producer's epoch.
    deadline = time.monotonic() + 20
    while ends(b, topic, 1, "read_committed") != [2] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ends(b, topic, 1, "read_committed") == [2]  # the data and the abort marker
    with pytest.raises(KafkaException):
        producer.commit_transaction(20)
    assert read_all(b, topic, 1, "read_committed") == []
    assert [r[3] for r in read_all(b, topic, 1, "read_uncommitted")] == [b"too-slow"]


def _consume_transform_produce(b: str, source: str, sink: str, group: str, count: int) -> None:
    """Copy `source` to `sink` uppercased, in transactions of a few records with the
    consumer's offsets in them; every third transaction is aborted and its records
    consumed again."""
    consumer = Consumer(
        {
            "bootstrap.servers": b,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = txn_producer(b, "ctp-" + group)
    consumer.subscribe([source])
    copied = rounds = 0
    deadline = time.monotonic() + 60
    try:
        while copied < count and time.monotonic() < deadline:
            messages = [m for m in consumer.consume(5, 1.0) if not m.error()]
            if not messages:
                continue
            producer.begin_transaction()
            for m in messages:
                producer.produce(sink, key=m.key(), value=(m.value() or b"").upper(),
                                 partition=m.partition())  # fmt: skip
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
            rounds += 1
            if rounds % 3 == 0:
                producer.flush(20)  # the aborted copies reach the log before the abort
                producer.abort_transaction(20)
                # Start again from the committed offsets: the aborted round is redone.
                committed = consumer.committed(consumer.assignment(), 10)
                for tp in committed:
                    consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
                continue
            producer.commit_transaction(20)
            copied += len(messages)
    finally:
        consumer.close()
    assert copied == count


def test_consume_transform_produce_is_exactly_once_with_aborted_rounds(
    agent: AgentProcess,
) -> None:
    b = agent.bootstrap
    source, sink = create_topic(b, 2), create_topic(b, 2)
    plain = Producer({"bootstrap.servers": b})
    for i in range(40):
        plain.produce(source, key=b"%d" % i, value=b"value-%d" % i, partition=i % 2)
    plain.flush(10)
    group = "ctp-" + source
    _consume_transform_produce(b, source, sink, group, 40)
    out = read_all(b, sink, 2, "read_committed")
    assert sorted(r[3] for r in out if r[3]) == sorted(b"VALUE-%d" % i for i in range(40))
    # The group's committed offsets are past every source record (markers included).
    checker = Consumer({"bootstrap.servers": b, "group.id": group})
    committed = checker.committed([TopicPartition(source, p) for p in range(2)], 10)
    checker.close()
    assert [tp.offset for tp in committed] == [20, 20]
    # The aborted rounds' copies are in the log, invisible to read_committed readers.
    assert len(read_all(b, sink, 2, "read_uncommitted")) > len(out)


def test_aiokafka_transactions_commit_and_abort(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b, 1)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=b, transactional_id="aio-" + topic)
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"kept", partition=0)
            with pytest.raises(RuntimeError):
                async with producer.transaction():
                    await producer.send_and_wait(topic, b"dropped", partition=0)
                    raise RuntimeError("abort this one")
            async with producer.transaction():
                await producer.send_and_wait(topic, b"kept-too", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=b,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            deadline = time.monotonic() + 15
            while len(values) < 2 and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                values += [m.value for ms in batches.values() for m in ms if m.value]
        finally:
            await consumer.stop()
        return values

    assert asyncio.run(run()) == [b"kept", b"kept-too"]
    assert [r[3] for r in read_all(b, topic, 1, "read_uncommitted")] == [
        b"kept", b"dropped", b"kept-too"
    ]  # fmt: skip


def test_aiokafka_fenced_producer(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b, 1)

    async def run() -> None:
        first = AIOKafkaProducer(bootstrap_servers=b, transactional_id="aio-fence-" + topic)
        second = AIOKafkaProducer(bootstrap_servers=b, transactional_id="aio-fence-" + topic)
        await first.start()
        try:
            await first.begin_transaction()
            await first.send_and_wait(topic, b"zombie", partition=0)
            await second.start()
            with pytest.raises(AIOKafkaError):
                await first.commit_transaction()
        finally:
            await first.stop()
            await second.stop()

    asyncio.run(run())
    assert read_all(b, topic, 1, "read_committed") == []


@pytest.fixture
def durable_agent(agent_factory: AgentFactory) -> Iterator[AgentProcess]:
    yield agent_factory("--flush-ms", "20")


def test_kill_9_mid_transaction_keeps_it_all_or_nothing(durable_agent: AgentProcess) -> None:
    """The agent dies with a transaction open; after the restart the producer commits it
    (its state and data were durable) and readers see all of it exactly once."""
    b = durable_agent.bootstrap
    topic = create_topic(b, 2)
    producer = txn_producer(b, "kill-" + topic, **{"message.timeout.ms": 60_000})
    producer.begin_transaction()
    for i in range(20):
        producer.produce(topic, value=b"v%d" % i, partition=i % 2)
    producer.flush(20)
    durable_agent.kill9()
    durable_agent.restart()
    producer.commit_transaction(60)
    values = [r[3] or b"" for r in read_all(b, topic, 2, "read_committed")]
    assert sorted(values) == sorted(b"v%d" % i for i in range(20))
    # A second transaction after the restart, aborted this time, leaves nothing visible.
    producer.begin_transaction()
    producer.produce(topic, value=b"gone", partition=0)
    producer.flush(20)
    durable_agent.kill9()
    durable_agent.restart()
    producer.abort_transaction(60)
    assert sorted(r[3] or b"" for r in read_all(b, topic, 2, "read_committed")) == sorted(values)


def test_kafka_python_transactions_commit_and_abort(agent: AgentProcess) -> None:
    b = agent.bootstrap
    topic = create_topic(b, 1)
    producer = KafkaProducer(bootstrap_servers=b, transactional_id="kp-" + topic)
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"kept", partition=0)
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic, b"dropped", partition=0).get(timeout=20)
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"kept-too", partition=0)
    producer.commit_transaction()
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=b,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    consumer.assign([KafkaTopicPartition(topic, 0)])
    values = [m.value for m in consumer]
    consumer.close()
    assert values == [b"kept", b"kept-too"]
    assert [r[3] for r in read_all(b, topic, 1, "read_uncommitted")] == [
        b"kept", b"dropped", b"kept-too"
    ]  # fmt: skip
