"""Compacted topics (`cleanup.policy=compact`) with real clients: the latest value of every
key survives, tombstones go after `delete.retention.ms`, offsets only increase, unkeyed
records are refused, aborted transactions' records go, a kill -9 during compaction
loses nothing, and a Connect-style config topic read from the beginning yields the
current configuration."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentFactory, AgentProcess

Record = tuple[int, bytes | None, bytes | None]  # offset, key, value

COMPACTED = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "1500",
}


@pytest.fixture
def compacting(agent_factory: AgentFactory) -> Iterator[AgentProcess]:
    yield agent_factory("--flush-ms", "10", "--key-compaction-interval-ms", "200")


def create_topic(bootstrap: str, **configs: str) -> str:
    name = "kc-" + uuid.uuid4().hex[:10]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, config={**COMPACTED, **configs})])[name].result(10)
    return name


def produce_rounds(
    bootstrap: str,
    topic: str,
    rounds: Sequence[Sequence[tuple[bytes, bytes | None]]],
    **extra: str,
) -> None:
    """Each round is flushed on its own, so each lands in its own batch(es)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, **extra})
    for records in rounds:
        for key, value in records:
            producer.produce(topic, key=key, value=value, partition=0)
        assert producer.flush(20) == 0


def read_log(bootstrap: str, topic: str, isolation: str = "read_uncommitted") -> list[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "r-" + uuid.uuid4().hex[:6],
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[Record] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return out
                raise KafkaException(error)
            out.append((message.offset(), message.key(), message.value()))
        raise AssertionError("did not reach the end of the partition")
    finally:
        consumer.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def latest(records: list[Record]) -> dict[bytes | None, bytes | None]:
    state: dict[bytes | None, bytes | None] = {}
    for _, key, value in records:
        state[key] = value
    return state


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_the_latest_value_of_every_key_survives(compacting: AgentProcess, codec: str) -> None:
    b = compacting.bootstrap
    topic = create_topic(b)
    rounds = [[(b"k%d" % k, b"v%d-%d" % (k, r)) for k in range(10)] for r in range(6)]
    rounds.append([(b"last", b"x")])
    produce_rounds(b, topic, rounds, **{"compression.type": codec})
    # (Compaction may already be under way: the log holds 11 to 61 records.)
    assert latest(read_log(b, topic)) == {**{k: v for r in rounds for k, v in r}}
    # Compaction leaves one record per key, except in the newest batch (never cleaned).
    wait_until(lambda: len(read_log(b, topic)) == 11)
    after = read_log(b, topic)
    assert latest(after) == {k: v for r in rounds for k, v in r}
    assert after[:10] == [(50 + k, b"k%d" % k, b"v%d-5" % k) for k in range(10)]
    offsets = [o for o, _, _ in after]
    assert offsets == sorted(set(offsets))  # they only increase; the gaps stay gaps
    assert after[-1] == (60, b"last", b"x")


def test_tombstones_go_after_their_retention(compacting: AgentProcess) -> None:
    b = compacting.bootstrap
    # Long enough to see the tombstone alone however slow the machine, short for a test.
    topic = create_topic(b, **{"delete.retention.ms": "4000"})
    produce_rounds(b, topic, [[(b"keep", b"1"), (b"gone", b"1")], [(b"gone", None)],
                              [(b"keep", b"2")], [(b"tail", b"t")]])  # fmt: skip
    # First the value the tombstone deletes goes; the tombstone stays for a while...
    wait_until(lambda: (2, b"gone", None) in read_log(b, topic) and len(read_log(b, topic)) == 3)
    # ...then, delete.retention.ms after the pass that first cleaned past it, it goes too.
    wait_until(lambda: read_log(b, topic) == [(3, b"keep", b"2"), (4, b"tail", b"t")])


def test_unkeyed_records_are_refused_on_compacted_topics(compacting: AgentProcess) -> None:
    b = compacting.bootstrap
    topic = create_topic(b)
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": b, "retries": 0})
    producer.produce(topic, value=b"no key", partition=0,
                     on_delivery=lambda e, _m: errors.append(e))  # fmt: skip
    producer.flush(20)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError.INVALID_RECORD
    assert read_log(b, topic) == []


def test_a_connect_style_config_topic_reads_back_the_current_configuration(
    compacting: AgentProcess,
) -> None:
    """Kafka Connect keeps connector configs in a compacted topic and rebuilds them by
    reading it from the beginning: updates replace, tombstones delete."""
    b = compacting.bootstrap
    topic = create_topic(b)
    expected: dict[bytes, bytes] = {}
    rounds: list[list[tuple[bytes, bytes | None]]] = []
    for version in range(5):
        round_: list[tuple[bytes, bytes | None]] = []
        for name in ("jdbc-source", "s3-sink", "debezium"):
            key = b"connector-" + name.encode()
            value = json.dumps({"name": name, "tasks.max": version + 1}).encode()
            round_.append((key, value))
            expected[key] = value
        if version == 3:
            round_.append((b"connector-s3-sink", None))  # deleted...
            expected.pop(b"connector-s3-sink")
        rounds.append(round_)
    rounds.append([(b"commit-tail", b"{}")])
    expected[b"commit-tail"] = b"{}"
    # ...and created again in the last version (round 4 re-adds it above).
    produce_rounds(b, topic, rounds)
    expected[b"connector-s3-sink"] = json.dumps({"name": "s3-sink", "tasks.max": 5}).encode()

    def current() -> dict[bytes, bytes]:
        state = latest(read_log(b, topic))
        return {k: v for k, v in state.items() if k is not None and v is not None}

    assert current() == expected
    wait_until(lambda: len(read_log(b, topic)) == len(expected))
    assert current() == expected


def test_aborted_transactions_records_go_and_open_ones_stay(compacting: AgentProcess) -> None:
    b = compacting.bootstrap
    topic = create_topic(b)
    produce_rounds(b, topic, [[(b"k", b"committed")]])
    txn = Producer({"bootstrap.servers": b, "transactional.id": "kc-" + topic})
    txn.init_transactions(20)
    txn.begin_transaction()
    txn.produce(topic, key=b"k", value=b"aborted", partition=0)
    txn.flush(20)
    txn.abort_transaction(20)
    produce_rounds(b, topic, [[(b"other", b"1")], [(b"tail", b"t")]])
    # The aborted record goes (it never shadows the committed one); its marker stays.
    wait_until(lambda: [r for r in read_log(b, topic) if r[2] == b"aborted"] == [])
    assert latest(read_log(b, topic, "read_committed"))[b"k"] == b"committed"
    # An open transaction holds cleaning back at its first offset.
    txn.begin_transaction()
    txn.produce(topic, key=b"other", value=b"open", partition=0)
    txn.flush(20)
    produce_rounds(b, topic, [[(b"other", b"2")], [(b"tail", b"t2")]])
    time.sleep(1.5)  # several passes
    assert (b"other", b"1") in [(k, v) for _, k, v in read_log(b, topic)]
    txn.commit_transaction(20)
    produce_rounds(b, topic, [[(b"tail", b"t3")]])
    wait_until(lambda: (b"other", b"1") not in [(k, v) for _, k, v in read_log(b, topic)])
    assert latest(read_log(b, topic, "read_committed"))[b"other"] == b"2"


def test_kill_9_during_compaction_loses_nothing(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--flush-ms", "5", "--key-compaction-interval-ms", "50")
    b = agent.bootstrap
    topic = create_topic(b)
    expected: dict[bytes, bytes] = {}
    for burst in range(6):
        rounds = []
        for r in range(8):
            values = [(b"key-%03d" % k, b"%d-%d-%d" % (burst, r, k)) for k in range(0, 120, 1 + r)]
            rounds.append(values)
            expected.update(values)
        produce_rounds(b, topic, [*rounds, [(b"tail", b"%d" % burst)]])
        expected[b"tail"] = b"%d" % burst
        time.sleep(0.05 * burst)
        agent.kill9()
        agent.restart()
    state = latest(read_log(b, topic))
    assert state == expected  # nothing lost, nothing older resurrected
    wait_until(lambda: len(read_log(b, topic)) <= len(expected) + 8)
    assert latest(read_log(b, topic)) == expected
