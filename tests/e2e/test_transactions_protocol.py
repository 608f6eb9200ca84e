"""Transaction requests sent byte for byte: what each version answers, offsets committed
in a transaction (require_stable), KIP-890 verification of transactional batches, and
the admin requests (DescribeTransactions, ListTransactions, DescribeProducers)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from batch_builder import build_batch
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentFactory, AgentProcess
from kio.schema.add_offsets_to_txn.v0.request import AddOffsetsToTxnRequest
from kio.schema.add_partitions_to_txn.v3.request import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnTopic,
)
from kio.schema.describe_producers.v0.request import DescribeProducersRequest, TopicRequest
from kio.schema.describe_transactions.v0.request import DescribeTransactionsRequest
from kio.schema.end_txn.v0.request import EndTxnRequest as EndTxnV0
from kio.schema.end_txn.v2.request import EndTxnRequest as EndTxnV2
from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.list_transactions.v1.request import ListTransactionsRequest
from kio.schema.offset_fetch.v7.request import OffsetFetchRequest, OffsetFetchRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData as PartitionV9
from kio.schema.produce.v9.request import ProduceRequest as ProduceV9
from kio.schema.produce.v9.request import TopicProduceData as TopicV9
from kio.schema.produce.v11.request import PartitionProduceData as PartitionV11
from kio.schema.produce.v11.request import ProduceRequest as ProduceV11
from kio.schema.produce.v11.request import TopicProduceData as TopicV11
from kio.schema.txn_offset_commit.v3.request import (
    TxnOffsetCommitRequest,
    TxnOffsetCommitRequestPartition,
    TxnOffsetCommitRequestTopic,
)
from kio.schema.types import GroupId, ProducerId, TopicName, TransactionalId
from kio.schema.write_txn_markers.v1.request import (
    WritableTxnMarker,
    WritableTxnMarkerTopic,
    WriteTxnMarkersRequest,
)
from kio.static.primitive import Records, i16, i32, i32Timedelta, i64
from raw_client import RawClient

TRANSACTIONAL = 0x10


def create_topic(bootstrap: str, partitions: int) -> str:
    name = "txp-" + uuid.uuid4().hex[:10]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions)])[name].result(10)
    return name


def init(client: RawClient, txn_id: str, timeout_ms: int = 30_000) -> tuple[ErrorCode, int, int]:
    response = client.request(
        InitProducerIdRequest(
            transactional_id=TransactionalId(txn_id),
            transaction_timeout=i32Timedelta.parse(datetime.timedelta(milliseconds=timeout_ms)),
            producer_id=ProducerId(-1),
            producer_epoch=i16(-1),
        )
    )
    return response.error_code, response.producer_id, response.producer_epoch


def add_partitions(
    client: RawClient, txn_id: str, pid: int, epoch: int, topic: str, partitions: list[int]
) -> list[tuple[int, ErrorCode]]:
    response = client.request(
        AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=TransactionalId(txn_id),
            v3_and_below_producer_id=ProducerId(pid),
            v3_and_below_producer_epoch=i16(epoch),
            v3_and_below_topics=(
                AddPartitionsToTxnTopic(
                    name=TopicName(topic), partitions=tuple(i32(p) for p in partitions)
                ),
            ),
        )
    )
    return [
        (r.partition_index, r.partition_error_code)
        for t in response.results_by_topic_v3_and_below
        for r in t.results_by_partition
    ]


def add_offsets(client: RawClient, txn_id: str, pid: int, epoch: int, group: str) -> ErrorCode:
    response = client.request(
        AddOffsetsToTxnRequest(
            transactional_id=TransactionalId(txn_id),
            producer_id=ProducerId(pid),
            producer_epoch=i16(epoch),
            group_id=GroupId(group),
        )
    )
    return ErrorCode(response.error_code)


def txn_offset_commit(
    client: RawClient,
    txn_id: str,
    pid: int,
    epoch: int,
    group: str,
    topic: str,
    offset: int,
    generation: int = -1,
) -> ErrorCode:
    response = client.request(
        TxnOffsetCommitRequest(
            transactional_id=TransactionalId(txn_id),
            group_id=GroupId(group),
            producer_id=ProducerId(pid),
            producer_epoch=i16(epoch),
            generation_id=i32(generation),
            member_id="" if generation < 0 else "someone",
            group_instance_id=None,
            topics=(
                TxnOffsetCommitRequestTopic(
                    name=TopicName(topic),
                    partitions=(
                        TxnOffsetCommitRequestPartition(
                            partition_index=i32(0),
                            committed_offset=i64(offset),
                            committed_leader_epoch=i32(-1),
                            committed_metadata="meta",
                        ),
                    ),
                ),
            ),
        )
    )
    return ErrorCode(response.topics[0].partitions[0].error_code)


def end_txn(client: RawClient, request_cls: Any, txn_id: str, pid: int, epoch: int,
            commit: bool) -> ErrorCode:  # fmt: skip
    response = client.request(
        request_cls(
            transactional_id=TransactionalId(txn_id),
            producer_id=ProducerId(pid),
            producer_epoch=i16(epoch),
            committed=commit,
        )
    )
    return ErrorCode(response.error_code)


def fetch_offset(client: RawClient, group: str, topic: str, stable: bool) -> tuple[int, ErrorCode]:
    response = client.request(
        OffsetFetchRequest(
            group_id=GroupId(group),
            topics=(OffsetFetchRequestTopic(name=TopicName(topic), partition_indexes=(i32(0),)),),
            require_stable=stable,
        )
    )
    partition = response.topics[0].partitions[0]
    return partition.committed_offset, ErrorCode(partition.error_code)


def test_offsets_committed_in_a_transaction_are_unstable_until_it_ends(
    agent: AgentProcess,
) -> None:
    topic = create_topic(agent.bootstrap, 1)
    group = "g-" + topic
    client = RawClient(agent.bootstrap)
    try:
        for commit, expected in ((False, -1), (True, 42)):
            txn_id = f"offsets-{commit}-{topic}"
            error, pid, epoch = init(client, txn_id)
            assert error == ErrorCode.none
            # The group must be in the transaction first.
            assert txn_offset_commit(client, txn_id, pid, epoch, group, topic, 42) == (
                ErrorCode.invalid_txn_state
            )
            assert add_offsets(client, txn_id, pid, epoch, group) == ErrorCode.none
            assert txn_offset_commit(client, txn_id, pid, epoch, group, topic, 42) == (
                ErrorCode.none
            )
            # KIP-447: read_committed consumers ask for stable offsets and wait.
            assert fetch_offset(client, group, topic, stable=True) == (
                -1,
                ErrorCode.unstable_offset_commit,
            )
            # Others see the group's offsets as they were before the transaction.
            assert fetch_offset(client, group, topic, stable=False) == (-1, ErrorCode.none)
            assert end_txn(client, EndTxnV2, txn_id, pid, epoch, commit) == ErrorCode.none
            assert fetch_offset(client, group, topic, stable=True) == (expected, ErrorCode.none)
    finally:
        client.close()


def test_txn_offset_commit_checks_the_generation(agent: AgentProcess) -> None:
    topic = create_topic(agent.bootstrap, 1)
    client = RawClient(agent.bootstrap)
    try:
        txn_id = "gen-" + topic
        _, pid, epoch = init(client, txn_id)
        assert add_offsets(client, txn_id, pid, epoch, "nogroup") == ErrorCode.none
        # A member of a generation the coordinator does not know is refused (KIP-447).
        error = txn_offset_commit(client, txn_id, pid, epoch, "nogroup", topic, 7, generation=3)
        assert error == ErrorCode.illegal_generation
    finally:
        client.close()


def test_errors_follow_the_request_version(agent: AgentProcess) -> None:
    topic = create_topic(agent.bootstrap, 1)
    client = RawClient(agent.bootstrap)
    try:
        txn_id = "versions-" + topic
        assert init(client, txn_id, timeout_ms=900_001)[0] == ErrorCode.invalid_transaction_timeout
        _, pid, epoch = init(client, txn_id)
        _, pid2, epoch2 = init(client, txn_id)  # a second instance bumps the epoch
        assert (pid2, epoch2) == (pid, epoch + 1)
        # The first instance is fenced: PRODUCER_FENCED for clients that know it, the old
        # code for older versions (what aiokafka and old librdkafka treat as fenced).
        assert end_txn(client, EndTxnV0, txn_id, pid, epoch, True) == (
            ErrorCode.invalid_producer_epoch
        )
        assert end_txn(client, EndTxnV2, txn_id, pid, epoch, True) == ErrorCode.producer_fenced
        # Another producer id is not this transactional id's.
        assert end_txn(client, EndTxnV2, txn_id, pid + 100, epoch2, True) == (
            ErrorCode.invalid_producer_id_mapping
        )
        # Ending a transaction that never began.
        assert end_txn(client, EndTxnV2, txn_id, pid2, epoch2, True) == (
            ErrorCode.invalid_txn_state
        )
        # Unknown topics: nothing is added, the known partitions are not attempted.
        results = add_partitions(client, txn_id, pid2, epoch2, "no-such-topic", [0])
        assert results == [(0, ErrorCode.unknown_topic_or_partition)]
    finally:
        client.close()


def _produce(client: RawClient, version: int, topic: str, batch: bytes) -> ErrorCode:
    timeout = i32Timedelta.parse(datetime.timedelta(seconds=10))
    request: ProduceV9 | ProduceV11
    if version == 9:
        data = PartitionV9(index=i32(0), records=Records(batch))
        topic_data = TopicV9(name=TopicName(topic), partition_data=(data,))
        request = ProduceV9(transactional_id=None, acks=i16(-1), timeout=timeout,
                            topic_data=(topic_data,))  # fmt: skip
    else:
        data11 = PartitionV11(index=i32(0), records=Records(batch))
        topic_data11 = TopicV11(name=TopicName(topic), partition_data=(data11,))
        request = ProduceV11(transactional_id=None, acks=i16(-1), timeout=timeout,
                             topic_data=(topic_data11,))  # fmt: skip
    response = client.request(request)
    return ErrorCode(response.responses[0].partition_responses[0].error_code)


def test_transactional_batches_need_their_partition_in_the_transaction(
    agent: AgentProcess,
) -> None:
    topic = create_topic(agent.bootstrap, 1)
    client = RawClient(agent.bootstrap)
    try:
        txn_id = "verify-" + topic
        _, pid, epoch = init(client, txn_id)

        def batch(sequence: int) -> bytes:
            return build_batch([b"x"], producer_id=pid, producer_epoch=epoch,
                               base_sequence=sequence, attributes=TRANSACTIONAL)  # fmt: skip

        # KIP-890 part 1: INVALID_TXN_STATE up to Produce v10, TRANSACTION_ABORTABLE after.
        assert _produce(client, 9, topic, batch(0)) == ErrorCode.invalid_txn_state
        assert _produce(client, 11, topic, batch(0)) == ErrorCode.transaction_abortable
        assert add_partitions(client, txn_id, pid, epoch, topic, [0]) == [(0, ErrorCode.none)]
        assert _produce(client, 9, topic, batch(0)) == ErrorCode.none
        # Control batches are the coordinator's to write.
        control = build_batch([b"x"], attributes=0x30, producer_id=pid, producer_epoch=epoch)
        assert _produce(client, 9, topic, control) == ErrorCode.invalid_record

        response = client.request(
            DescribeProducersRequest(
                topics=(TopicRequest(name=TopicName(topic), partition_indexes=(i32(0),)),)
            )
        )
        [producer] = response.topics[0].partitions[0].active_producers
        assert (producer.producer_id, producer.producer_epoch) == (pid, epoch)
        assert producer.current_txn_start_offset == 0  # the open transaction's first offset

        described = client.request(
            DescribeTransactionsRequest(
                transactional_ids=(TransactionalId(txn_id), TransactionalId("unknown"))
            )
        ).transaction_states
        assert described[0].transaction_state == "Ongoing"
        assert (described[0].producer_id, described[0].producer_epoch) == (pid, epoch)
        assert [(t.topic, list(t.partitions)) for t in described[0].topics] == [(topic, [0])]
        assert described[1].error_code == ErrorCode.transactional_id_not_found

        listed = client.request(
            ListTransactionsRequest(
                state_filters=("Ongoing",), producer_id_filters=(), duration_filter=i64(-1)
            )
        ).transaction_states
        assert (txn_id, pid, "Ongoing") in [
            (t.transactional_id, t.producer_id, t.transaction_state) for t in listed
        ]
        assert end_txn(client, EndTxnV2, txn_id, pid, epoch, True) == ErrorCode.none
        listed = client.request(
            ListTransactionsRequest(
                state_filters=("Ongoing",), producer_id_filters=(), duration_filter=i64(-1)
            )
        ).transaction_states
        assert txn_id not in [t.transactional_id for t in listed]
    finally:
        client.close()


def write_markers(client: RawClient, pid: int, epoch: int, topic: str, commit: bool) -> ErrorCode:
    response = client.request(
        WriteTxnMarkersRequest(
            markers=(
                WritableTxnMarker(
                    producer_id=ProducerId(pid),
                    producer_epoch=i16(epoch),
                    transaction_result=commit,
                    topics=(
                        WritableTxnMarkerTopic(name=TopicName(topic), partition_indexes=(i32(0),)),
                    ),
                    coordinator_epoch=i32(0),
                ),
            )
        )
    )
    return ErrorCode(response.markers[0].topics[0].partitions[0].error_code)


def test_write_txn_markers_aborts_a_hanging_transaction(agent: AgentProcess) -> None:
    """`kafka-transactions.sh abort`: an abort marker for a producer's open data in a
    partition lets read_committed readers past it; a marker of an older epoch is refused."""
    topic = create_topic(agent.bootstrap, 1)
    client = RawClient(agent.bootstrap)
    try:
        txn_id = "hanging-" + topic
        _, pid, epoch = init(client, txn_id)
        assert add_partitions(client, txn_id, pid, epoch, topic, [0]) == [(0, ErrorCode.none)]
        batch = build_batch([b"hanging"], producer_id=pid, producer_epoch=epoch,
                            base_sequence=0, attributes=TRANSACTIONAL)  # fmt: skip
        assert _produce(client, 9, topic, batch) == ErrorCode.none
        consumer = Consumer(
            {"bootstrap.servers": agent.bootstrap, "group.id": "markers",
             "isolation.level": "read_committed"}
        )  # fmt: skip
        try:
            end = TopicPartition(topic, 0)
            assert consumer.get_watermark_offsets(end, timeout=10) == (0, 0)
            assert (
                write_markers(client, pid, epoch - 1, topic, False)
                == (ErrorCode.invalid_producer_epoch)
                or epoch == 0
            )
            assert write_markers(client, pid, epoch, topic, False) == ErrorCode.none
            # The data (offset 0) and its abort marker (offset 1) are stable now.
            assert consumer.get_watermark_offsets(end, timeout=10) == (0, 2)
        finally:
            consumer.close()
    finally:
        client.close()


def test_the_transaction_timeout_limit_is_the_agents(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--transaction-max-timeout-ms", "5000")
    client = RawClient(agent.bootstrap)
    try:
        assert init(client, "limited", timeout_ms=5001)[0] == ErrorCode.invalid_transaction_timeout
        assert init(client, "limited", timeout_ms=5000)[0] == ErrorCode.none
    finally:
        client.close()
