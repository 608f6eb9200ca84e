"""Idempotent producers: duplicates acknowledged once, gaps and fenced epochs refused.

The raw-socket test sends exact retries, as a client does when a response is
lost; the client tests run each library's idempotent producer for real.
"""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from aiokafka import AIOKafkaProducer
from batch_builder import build_batch
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import AgentProcess
from kafka import KafkaProducer
from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import ProducerId, TopicName
from kio.static.primitive import Records, i16, i32, i32Timedelta
from raw_client import RawClient


def produce(client: RawClient, topic: str, batch: bytes) -> tuple[ErrorCode, int]:
    request = ProduceRequest(
        acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        topic_data=(
            TopicProduceData(
                name=TopicName(topic),
                partition_data=(PartitionProduceData(index=i32(0), records=Records(batch)),),
            ),
        ),
    )
    response = client.request(request)
    partition = response.responses[0].partition_responses[0]
    return partition.error_code, partition.base_offset


def read_values(bootstrap: str, topic: str, partitions: int, timeout_s: float = 20) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check"})
    ends = [
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(partitions)
    ]
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < sum(ends) and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is not None and not message.error():
            values.append(message.value())
    consumer.close()
    return values


def init_producer_id(client: RawClient) -> tuple[int, int]:
    response = client.request(
        InitProducerIdRequest(
            transactional_id=None,
            transaction_timeout=i32Timedelta.parse(datetime.timedelta(seconds=60)),
            producer_id=ProducerId(-1),
            producer_epoch=i16(-1),
        )
    )
    assert response.error_code == ErrorCode.none
    return int(response.producer_id), int(response.producer_epoch)


def test_retries_duplicates_gaps_and_epochs_survive_restart(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    pid, epoch = init_producer_id(client)
    other_pid, _ = init_producer_id(client)
    assert other_pid != pid

    def batch(seq: int, n: int, epoch_: int = epoch) -> bytes:
        return build_batch(
            [b"s%d" % (seq + i) for i in range(n)],
            producer_id=pid,
            producer_epoch=epoch_,
            base_sequence=seq,
        )

    client.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=TopicName("idem"), topic_id=None),),
            allow_auto_topic_creation=True,
            include_topic_authorized_operations=False,
        )
    )
    assert produce(client, "idem", batch(0, 3)) == (ErrorCode.none, 0)
    assert produce(client, "idem", batch(3, 2)) == (ErrorCode.none, 3)
    # The response was "lost": the client sends the same batch again.
    assert produce(client, "idem", batch(3, 2)) == (ErrorCode.none, 3)
    assert produce(client, "idem", batch(0, 3)) == (ErrorCode.none, 0)
    error, _ = produce(client, "idem", batch(9, 1))
    assert error == ErrorCode.out_of_order_sequence_number
    client.close()

    # Producer state survives a crash and restart.
    agent.kill9()
    agent.restart()
    client = RawClient(agent.bootstrap)
    assert produce(client, "idem", batch(3, 2)) == (ErrorCode.none, 3)
    assert produce(client, "idem", batch(5, 1)) == (ErrorCode.none, 5)
    # A new epoch starts at sequence 0 and fences the old one.
    assert produce(client, "idem", batch(0, 1, epoch + 1)) == (ErrorCode.none, 6)
    error, _ = produce(client, "idem", batch(6, 1))
    assert error == ErrorCode.invalid_producer_epoch
    client.close()
    values = read_values(agent.bootstrap, "idem", 1)
    assert values == [b"s0", b"s1", b"s2", b"s3", b"s4", b"s5", b"s0"]


@pytest.mark.timeout(120)
def test_confluent_idempotent_producer(agent: AgentProcess) -> None:
    producer = Producer(
        {"bootstrap.servers": agent.bootstrap, "enable.idempotence": True, "linger.ms": 2}
    )
    errors: list[object] = []
    for i in range(3000):
        producer.produce(
            "idem-rdkafka",
            value=b"r%05d" % i,
            partition=i % 3,
            on_delivery=lambda e, m: errors.append(e) if e else None,
        )
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors
    values = read_values(agent.bootstrap, "idem-rdkafka", 3)
    assert sorted(values) == sorted(b"r%05d" % i for i in range(3000))


@pytest.mark.timeout(120)
def test_kafka_python_idempotent_producer(agent: AgentProcess) -> None:
    producer = KafkaProducer(
        bootstrap_servers=agent.bootstrap, enable_idempotence=True, acks="all", linger_ms=2
    )
    futures = [producer.send("idem-kp", value=b"k%05d" % i, partition=i % 3) for i in range(2000)]
    producer.flush(30)
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close(10)
    assert len(offsets) == 2000
    values = read_values(agent.bootstrap, "idem-kp", 3)
    assert sorted(values) == sorted(b"k%05d" % i for i in range(2000))


@pytest.mark.timeout(120)
def test_aiokafka_idempotent_producer(agent: AgentProcess) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=agent.bootstrap, enable_idempotence=True, linger_ms=2
        )
        await producer.start()
        try:
            batch = [
                await producer.send("idem-aio", value=b"a%05d" % i, partition=i % 3)
                for i in range(2000)
            ]
            metadata = await asyncio.gather(*batch)
            assert len(metadata) == 2000
        finally:
            await producer.stop()

    asyncio.run(run())
    values = read_values(agent.bootstrap, "idem-aio", 3)
    assert sorted(values) == sorted(b"a%05d" % i for i in range(2000))
