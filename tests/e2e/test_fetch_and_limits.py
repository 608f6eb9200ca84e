"""Fetch semantics over raw sockets (long poll, KIP-74 limits) and per-agent limits."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
from batch_builder import build_batch
from conftest import AgentFactory, AgentProcess
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.static.primitive import Records, i16, i32, i32Timedelta, i64
from raw_client import RawClient

BATCH_VALUES = [b"v" * 1000 for _ in range(3)]


def create(client: RawClient, topic: str) -> None:
    client.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=TopicName(topic), topic_id=None),),
            allow_auto_topic_creation=True,
            include_topic_authorized_operations=False,
        )
    )


def produce(client: RawClient, topic: str, partition: int, batch: bytes, acks: int = -1) -> Any:
    request = ProduceRequest(
        acks=i16(acks),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        topic_data=(
            TopicProduceData(
                name=TopicName(topic),
                partition_data=(
                    PartitionProduceData(index=i32(partition), records=Records(batch)),
                ),
            ),
        ),
    )
    if acks == 0:
        client.send_bytes(client.encode(request))
        return None
    return client.request(request).responses[0].partition_responses[0]


def fetch(
    client: RawClient,
    topic: str,
    offsets: dict[int, int],
    *,
    max_wait_s: float = 0.5,
    min_bytes: int = 1,
    max_bytes: int = 50 << 20,
    partition_max_bytes: int = 1 << 20,
) -> dict[int, Any]:
    request = FetchRequest(
        max_wait=i32Timedelta.parse(datetime.timedelta(seconds=max_wait_s)),
        min_bytes=i32(min_bytes),
        max_bytes=i32(max_bytes),
        topics=(
            FetchTopic(
                topic=TopicName(topic),
                partitions=tuple(
                    FetchPartition(
                        partition=i32(p),
                        fetch_offset=i64(o),
                        partition_max_bytes=i32(partition_max_bytes),
                    )
                    for p, o in offsets.items()
                ),
            ),
        ),
        forgotten_topics_data=(),
    )
    response = client.request(request)
    return {p.partition_index: p for p in response.responses[0].partitions}


@pytest.mark.timeout(30)
def test_long_poll_wakes_on_commit(agent: AgentProcess) -> None:
    """A fetch waiting up to 60 s returns the record once it is committed (else: timeout)."""
    client = RawClient(agent.bootstrap, timeout_s=60)
    create(client, "poll")
    result: dict[int, Any] = {}
    waiter = threading.Thread(
        target=lambda: result.update(fetch(client, "poll", {0: 0}, max_wait_s=60))
    )
    waiter.start()
    producer = RawClient(agent.bootstrap)
    assert produce(producer, "poll", 0, build_batch([b"wake"])).error_code == ErrorCode.none
    waiter.join(25)
    assert not waiter.is_alive(), "the long poll did not wake on the commit"
    assert result[0].high_watermark == 1
    assert b"wake" in bytes(result[0].records)


def test_fetch_size_limits_follow_kip_74(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    create(client, "limits")
    for partition in (0, 1):
        for _ in range(3):
            response = produce(client, "limits", partition, build_batch(BATCH_VALUES))
            assert response.error_code == ErrorCode.none
    one_batch = len(build_batch(BATCH_VALUES))

    # Everything fits.
    parts = fetch(client, "limits", {0: 0, 1: 0})
    assert [len(parts[p].records) for p in (0, 1)] == [3 * one_batch] * 2

    # The response limit is smaller than one batch: the first batch still comes whole.
    parts = fetch(client, "limits", {0: 0, 1: 0}, max_bytes=10)
    assert len(parts[0].records) == one_batch
    assert len(parts[1].records) == 0

    # The partition limit caps each partition, but never below one batch for the first.
    parts = fetch(client, "limits", {0: 0, 1: 0}, partition_max_bytes=one_batch * 2)
    assert len(parts[0].records) == 2 * one_batch
    assert len(parts[1].records) == 2 * one_batch

    # The whole response stays within max_bytes.
    parts = fetch(client, "limits", {0: 0, 1: 0}, max_bytes=one_batch * 4)
    assert len(parts[0].records) + len(parts[1].records) <= one_batch * 4

    # Fetching from the middle of the log starts at the batch holding the offset.
    parts = fetch(client, "limits", {0: 4})
    assert len(parts[0].records) == 2 * one_batch

    # Offsets beyond the end are out of range; at the end there is nothing (yet).
    parts = fetch(client, "limits", {0: 99})
    assert parts[0].error_code == ErrorCode.offset_out_of_range
    parts = fetch(client, "limits", {0: 9}, max_wait_s=0.1)
    assert parts[0].error_code == ErrorCode.none and len(parts[0].records) == 0


def test_acks_zero_and_one(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    create(client, "acks")
    produce(client, "acks", 0, build_batch([b"zero"]), acks=0)
    response = produce(client, "acks", 0, build_batch([b"one"]), acks=1)
    # acks=0 gets no response: the next response on the connection is the acks=1 one.
    assert response.error_code == ErrorCode.none
    assert response.base_offset == 1
    parts = fetch(client, "acks", {0: 0})
    assert bytes(parts[0].records).count(b"zero") == 1


def test_acks_zero_with_a_bad_batch_closes_the_connection(agent: AgentProcess) -> None:
    client = RawClient(agent.bootstrap)
    create(client, "acks0")
    bad = bytearray(build_batch([b"x"]))
    bad[-1] ^= 1
    produce(client, "acks0", 0, bytes(bad), acks=0)
    assert client.is_closed_by_peer()


def test_connection_limit(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--max-connections", "2")
    first, second = RawClient(agent.bootstrap), RawClient(agent.bootstrap)
    create(first, "conn")
    third = RawClient(agent.bootstrap)
    assert third.is_closed_by_peer()
    create(second, "conn")  # the first two keep working
    first.close()
    # Once the agent has seen the close, the slot is free again.
    for _ in range(50):
        fourth = RawClient(agent.bootstrap)
        try:
            create(fourth, "conn")
            break
        except AssertionError:
            time.sleep(0.1)
    else:
        raise AssertionError("the freed connection slot was never reusable")


def test_idle_connections_are_closed(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--idle-timeout-ms", "300")
    idle = RawClient(agent.bootstrap, timeout_s=10)
    create(idle, "idle")  # works while fresh
    time.sleep(1.5)
    assert idle.is_closed_by_peer()
    busy = RawClient(agent.bootstrap)
    create(busy, "idle")  # the agent still serves new connections
