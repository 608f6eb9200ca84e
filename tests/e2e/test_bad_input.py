"""Bad input gets a Kafka error or a clean disconnect of that client only; nothing is lost."""

from __future__ import annotations

import datetime
import os
import struct

from batch_builder import build_batch
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import AgentFactory, AgentProcess
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.static.primitive import Records, i16, i32, i32Timedelta
from raw_client import RawClient


def produce_and_read_back(bootstrap: str, topic: str, n: int = 20) -> list[bytes]:
    """Produce n records and read the partition back from offset 0."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, value=b"keep-%d" % i, partition=0)
    assert producer.flush(20) == 0
    return read_partition(bootstrap, topic, n)


def read_partition(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    for _ in range(200):
        if len(values) >= n:
            break
        message = consumer.poll(0.1)
        if message is not None and not message.error():
            values.append(message.value())
    consumer.close()
    return values


def produce_request(topic: str, records: bytes) -> ProduceRequest:
    return ProduceRequest(
        acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        topic_data=(
            TopicProduceData(
                name=TopicName(topic),
                partition_data=(PartitionProduceData(index=i32(0), records=Records(records)),),
            ),
        ),
    )


def assert_agent_serves(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    response = client.request(
        ApiVersionsRequest(client_software_name="t", client_software_version="1")
    )
    assert response.error_code == ErrorCode.none
    client.close()


def test_garbage_truncated_and_oversized_frames_disconnect_only_that_client(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory("--flush-ms", "10", "--max-frame-bytes", "200000")
    before = produce_and_read_back(agent.bootstrap, "kept")
    assert len(before) == 20

    garbage = RawClient(agent.bootstrap)
    garbage.send_bytes(struct.pack(">i", 64) + os.urandom(64))
    assert garbage.is_closed_by_peer()

    oversized = RawClient(agent.bootstrap)
    oversized.send_bytes(struct.pack(">i", 200_001))
    assert oversized.is_closed_by_peer()

    negative = RawClient(agent.bootstrap)
    negative.send_bytes(struct.pack(">i", -3))
    assert negative.is_closed_by_peer()

    truncated = RawClient(agent.bootstrap)
    truncated.send_bytes(struct.pack(">i", 1000) + b"\x00\x03" * 10)
    truncated.close()

    # A body cut short inside a field is malformed even though the frame is whole.
    cut = RawClient(agent.bootstrap)
    frame = cut.encode(produce_request("kept", build_batch([b"x"])))
    cut.send_bytes(struct.pack(">i", len(frame) - 4 - 30) + frame[4:-30])
    assert cut.is_closed_by_peer()

    assert_agent_serves(agent)
    assert read_partition(agent.bootstrap, "kept", 20) == before


def test_bad_crc_is_corrupt_message_and_stores_nothing(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    client.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=TopicName("crc"), topic_id=None),),
            allow_auto_topic_creation=True,
            include_topic_authorized_operations=False,
        )
    )
    good = build_batch([b"good"])
    bad = bytearray(build_batch([b"evil"]))
    bad[-1] ^= 0x01
    response = client.request(produce_request("crc", bytes(bad)))
    partition = response.responses[0].partition_responses[0]
    assert partition.error_code == ErrorCode.corrupt_message
    ok = client.request(produce_request("crc", good))
    assert ok.responses[0].partition_responses[0].error_code == ErrorCode.none
    assert ok.responses[0].partition_responses[0].base_offset == 0
    assert read_partition(agent.bootstrap, "crc", 1) == [b"good"]
    client.close()


def test_unknown_topic_without_auto_create(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--auto-create-topics", "false")
    client = RawClient(agent.bootstrap)
    metadata = client.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=TopicName("nope"), topic_id=None),),
            allow_auto_topic_creation=True,
            include_topic_authorized_operations=False,
        )
    )
    assert metadata.topics[0].error_code == ErrorCode.unknown_topic_or_partition
    produced = client.request(produce_request("nope", build_batch([b"x"])))
    assert produced.responses[0].partition_responses[0].error_code == (
        ErrorCode.unknown_topic_or_partition
    )
    client.close()


def test_unsupported_version_and_unknown_api(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    # ApiVersions with a version from the future: a v0 answer with UNSUPPORTED_VERSION (KIP-511).
    frame = client.encode(ApiVersionsRequest(client_software_name="t", client_software_version="1"))
    patched = bytearray(frame)
    struct.pack_into(">h", patched, 6, 99)
    client.send_bytes(bytes(patched))
    raw = client.recv_frame()
    assert raw is not None
    correlation_id, error_code = struct.unpack_from(">ih", raw, 0)
    assert correlation_id == client.correlation_id
    assert error_code == ErrorCode.unsupported_version
    client.close()

    unknown = RawClient(agent.bootstrap)
    unknown.send_bytes(struct.pack(">ihhi", 10, 9999, 0, 1) + b"\x00\x00")
    assert unknown.is_closed_by_peer()

    old = RawClient(agent.bootstrap)
    frame = old.encode(produce_request("x", build_batch([b"x"])))
    patched = bytearray(frame)
    struct.pack_into(">h", patched, 6, 1)  # Produce v1: magic 0/1 era, not served
    old.send_bytes(bytes(patched))
    assert old.is_closed_by_peer()
    assert_agent_serves(agent)
