"""Read your writes (issue 16): once an agent acknowledges a produce, ListOffsets latest on
that agent is at or past it, on an agent that is not the writer (whose view learns
commits from the writer's stream, which can trail the commit's answer), and right after
a writer change."""

from __future__ import annotations

import datetime
import time
import uuid

from batch_builder import build_batch
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentProcess, Cluster
from kio.schema.errors import ErrorCode
from kio.schema.list_offsets.v7.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import Records, i8, i16, i32, i32Timedelta, i64
from raw_client import RawClient

LATEST = -1
ROUNDS = 40


def produce(client: RawClient, topic: str, values: list[bytes]) -> int:
    """The base offset the agent acknowledged."""
    response = client.request(
        ProduceRequest(
            acks=i16(-1),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=30)),
            topic_data=(
                TopicProduceData(
                    name=TopicName(topic),
                    partition_data=(
                        PartitionProduceData(index=i32(0), records=Records(build_batch(values))),
                    ),
                ),
            ),
        )
    )
    partition = response.responses[0].partition_responses[0]
    assert partition.error_code == ErrorCode.none, partition
    return int(partition.base_offset)


def latest_or_none(client: RawClient, topic: str) -> int | None:
    try:
        return latest(client, topic)
    except AssertionError:
        return None


def latest(client: RawClient, topic: str) -> int:
    response = client.request(
        ListOffsetsRequest(
            replica_id=BrokerId(-1),
            isolation_level=i8(0),
            topics=(
                ListOffsetsTopic(
                    name=TopicName(topic),
                    partitions=(
                        ListOffsetsPartition(
                            partition_index=i32(0),
                            current_leader_epoch=i32(-1),
                            timestamp=i64(LATEST),
                        ),
                    ),
                ),
            ),
        )
    )
    partition = response.topics[0].partitions[0]
    assert partition.error_code == ErrorCode.none, partition
    return int(partition.offset)


def writer_of(cluster: Cluster) -> AgentProcess:
    for agent in cluster.agents:
        log = agent.log_text()
        if log.rfind("became writer") > log.rfind("no longer writer"):
            return agent
    raise AssertionError("no writer")


def check_read_your_writes(agent: AgentProcess, topic: str) -> None:
    client = RawClient(agent.bootstrap, timeout_s=60)
    try:
        for i in range(ROUNDS):
            base = produce(client, topic, [f"{i}-a".encode(), f"{i}-b".encode()])
            assert latest(client, topic) >= base + 2, f"round {i}: the ack is not visible"
    finally:
        client.close()


def test_list_offsets_shows_what_this_agent_acknowledged(cluster: Cluster) -> None:
    for zone in ("a", "a", "b"):
        cluster.add(zone)
    cluster.wait_for_members()
    topic = f"ryw-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
    for agent in cluster.agents:  # every agent's view knows the topic
        client = RawClient(agent.bootstrap)
        deadline = time.monotonic() + 20
        while latest_or_none(client, topic) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        client.close()
    writer = writer_of(cluster)
    followers = [a for a in cluster.agents if a is not writer]
    for agent in followers:
        check_read_your_writes(agent, topic)

    # A writer change: the writer goes (SIGKILL), another takes over after the lease.
    writer.kill9()
    survivors = [a for a in cluster.agents if a is not writer]
    for agent in survivors:
        check_read_your_writes(agent, topic)
