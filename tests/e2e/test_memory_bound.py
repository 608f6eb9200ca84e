"""The agent's memory stays flat as the log grows, and a restart does not rebuild a batch index.

The coordinator keeps per-partition and per-producer state plus a bounded tail
cache of batch coordinates (`coordinator/core/tail.py`: 2,000 batches per partition);
older coordinates are read from the database. An index holding every committed
batch costs at least ~150 bytes a batch (a named tuple of seven fields and its
ints, plus a list slot; the index this replaced measured ~270 bytes a batch
here), so it would add PER_BATCH_INDEX_BYTES * N to the agent's RSS for N batches.

How the test tells the two apart without flaking:

- It measures only once every bounded structure is full: the tail cache holds
  PARTITIONS * 2,000 = 32,000 batches and the batch-bytes cache (--cache-bytes
  1 MiB) about 12,000 one-record batches, both far below the first checkpoint
  (25%). Before that, RSS rises legitimately.
- Checkpoints are taken with nothing in flight (every request acknowledged, so
  committed), at the same pipelining depth each time, so transient buffers are
  alike at each point.
- Between the middle and the end it produces HALF = 160,000 batches: a per-batch
  index would add >= 160,000 * 150 B = 22.9 MiB; the bound is 8 MiB (about a
  third of that). The bounded agent grows by well under 1 MiB there.
- Every acknowledgement is checked (partition i of request k is at offset k),
  so the log really reached N batches: a stalled producer cannot pass.
- After a restart, RSS is compared with the same agent's when freshly started:
  rebuilding an index of N batches would add >= 45.8 MiB; the bound is 16 MiB,
  right after the restart and again after reading offset 0 and the tail of
  every partition (a lazily rebuilt index would show there).

Run against the coordinator before the rework (every batch's coordinates in
memory), the growth check fails with ~41 MiB; with the tail cache unbounded, ~40 MiB.

Nothing here asserts on time.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pytest
from batch_builder import build_batch
from confluent_kafka import Consumer, TopicPartition
from conftest import AgentFactory, AgentProcess
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.serial import entity_reader
from kio.static.primitive import Records, i16, i32, i32Timedelta
from raw_client import RawClient

from driftlog.coordinator.core.tail import DEFAULT_MAX_BATCHES, DEFAULT_MAX_BATCHES_PER_PARTITION

TOPIC = "memory-bound"
PARTITIONS = 16
REQUESTS = 20_000  # each carries one one-record batch per partition
BATCHES = REQUESTS * PARTITIONS  # 320,000
WINDOW = 128  # Produce requests in flight on the connection
MiB = 1024 * 1024
PER_BATCH_INDEX_BYTES = 150
HALF = BATCHES // 2
# A third of what a per-batch index would add over the second half of the log.
GROWTH_BOUND = 8 * MiB
# A third of what rebuilding a per-batch index of the whole log would add at start.
RESTART_BOUND = 16 * MiB

assert GROWTH_BOUND * 2 < HALF * PER_BATCH_INDEX_BYTES
assert RESTART_BOUND * 2 < BATCHES * PER_BATCH_INDEX_BYTES
# The tail cache must be full before the first checkpoint, or its legitimate
# filling would count as growth: if its bounds are raised, raise BATCHES too.
assert min(DEFAULT_MAX_BATCHES, PARTITIONS * DEFAULT_MAX_BATCHES_PER_PARTITION) <= BATCHES // 8


def value_of(partition: int, offset: int) -> bytes:
    """The value produced at `offset` of `partition`; fixed width, so batches are alike."""
    return b"%03d-%010d" % (partition, offset)


def rss(agent: AgentProcess) -> int:
    assert agent.process is not None
    for line in Path(f"/proc/{agent.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PipelinedProducer:
    """Produce requests of one batch per partition, WINDOW of them in flight on one socket.

    Request k carries record k of every partition. One connection's requests are
    appended in order, so every acknowledgement must give base offset k.
    Frames are a kio-encoded template with the correlation id and batches
    overwritten (same lengths), so the client keeps up with the agent.
    """

    def __init__(self, bootstrap: str) -> None:
        self.client = RawClient(bootstrap, timeout_s=60)
        self.reader = self.client.sock.makefile("rb")
        self.sent = 0
        self.acked = 0
        self.request = ProduceRequest(
            acks=i16(-1),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=30)),
            topic_data=(
                TopicProduceData(
                    name=TopicName(TOPIC),
                    partition_data=tuple(
                        PartitionProduceData(
                            index=i32(p), records=Records(build_batch([value_of(p, 0)]))
                        )
                        for p in range(PARTITIONS)
                    ),
                ),
            ),
        )
        self.template = self.client.encode(self.request)
        self.positions: list[int] = []
        for p in range(PARTITIONS):
            batch = build_batch([value_of(p, 0)])
            at = self.template.find(batch)
            assert at > 0 and self.template.find(batch, at + 1) < 0
            self.positions.append(at)
        self.batch_length = len(build_batch([value_of(0, 0)]))
        self.schema = load_response_schema(self.request.__api_key__, self.request.__version__)

    def close(self) -> None:
        self.reader.close()
        self.client.close()

    def _frame(self, k: int) -> bytes:
        frame = bytearray(self.template)
        frame[8:12] = (k + 1).to_bytes(4, "big")  # correlation id
        for p, at in enumerate(self.positions):
            batch = build_batch([value_of(p, k)])
            assert len(batch) == self.batch_length
            frame[at : at + self.batch_length] = batch
        return bytes(frame)

    def _receive(self) -> None:
        size = int.from_bytes(self.reader.read(4), "big")
        frame = self.reader.read(size)
        assert len(frame) == size > 0, "the agent closed the connection"
        header, used = entity_reader(self.schema.__header_schema__)(frame, 0)
        k = self.acked
        assert header.correlation_id == k + 1
        body: Any
        body, _ = entity_reader(self.schema)(frame, used)
        [topic] = body.responses
        assert len(topic.partition_responses) == PARTITIONS
        for part in topic.partition_responses:
            assert (part.error_code, part.base_offset) == (ErrorCode.none, k), (k, part)
        self.acked += 1

    def produce_until(self, requests: int) -> None:
        """Send up to `requests` requests in all; return when every one is acknowledged."""
        out = bytearray()
        while self.sent < requests:
            while self.sent < requests and self.sent - self.acked < WINDOW and len(out) < 65536:
                out += self._frame(self.sent)
                self.sent += 1
            self.client.sock.sendall(out)
            out.clear()
            while self.sent - self.acked >= WINDOW:
                self._receive()
        while self.acked < self.sent:
            self._receive()


def create_topic(bootstrap: str) -> None:
    client = RawClient(bootstrap)
    response = client.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=TopicName(TOPIC), topic_id=None),),
            allow_auto_topic_creation=True,
            include_topic_authorized_operations=False,
        )
    )
    client.close()
    [topic] = response.topics
    assert topic.error_code == ErrorCode.none
    assert len(topic.partitions) == PARTITIONS


def read_and_check(bootstrap: str, start: int, count: int) -> None:
    """Read `count` records of every partition from `start` with confluent-kafka; check values."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "memory-bound-reader",
            "enable.auto.commit": False,
            # Small fetches and prefetch: read what is asked, not megabytes of the log.
            "fetch.message.max.bytes": 4096,
            "queued.min.messages": 500,
        }
    )
    consumer.assign([TopicPartition(TOPIC, p, start) for p in range(PARTITIONS)])
    got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(len(r) < count for r in got.values()):
        message = consumer.poll(0.1)
        if message is None or message.error():
            continue
        got[message.partition()].append((message.offset(), message.value()))
    consumer.close()
    for p, records in got.items():
        expected = [(offset, value_of(p, offset)) for offset in range(start, start + count)]
        assert records[:count] == expected, f"partition {p} from offset {start}"


def high_watermarks(bootstrap: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "memory-bound-ends"})
    ends = [
        consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1]
        for p in range(PARTITIONS)
    ]
    consumer.close()
    return ends


@pytest.mark.timeout(240)
def test_rss_stays_flat_as_the_log_grows_and_after_restart(agent_factory: AgentFactory) -> None:
    agent = agent_factory(
        "--flush-ms",
        "5",
        "--cache-bytes",
        str(1 * MiB),
        "--default-partitions",
        str(PARTITIONS),
        "--log-level",
        "WARNING",
    )
    fresh = rss(agent)
    create_topic(agent.bootstrap)
    producer = PipelinedProducer(agent.bootstrap)
    checkpoints: dict[float, int] = {}
    for fraction in (0.25, 0.5, 1.0):
        producer.produce_until(int(REQUESTS * fraction))
        checkpoints[fraction] = rss(agent)
    producer.close()
    assert producer.acked * PARTITIONS == BATCHES

    report = {
        "fresh_mib": fresh / MiB,
        **{f"at_{f:.0%}_mib": v / MiB for f, v in checkpoints.items()},
    }
    growth = checkpoints[1.0] - checkpoints[0.5]
    assert growth < GROWTH_BOUND, (
        f"RSS grew {growth / MiB:.1f} MiB over the last {HALF:,} batches (bound"
        f" {GROWTH_BOUND / MiB:.0f} MiB; a per-batch index adds"
        f" >= {HALF * PER_BATCH_INDEX_BYTES / MiB:.1f} MiB): {report}"
    )

    # Before the restart: offset 0 is long out of the tail cache, the tail is in it.
    read_and_check(agent.bootstrap, 0, 50)
    read_and_check(agent.bootstrap, REQUESTS - 50, 50)

    assert agent.terminate() == 0
    agent.restart()
    restarted = rss(agent)
    report["restart_mib"] = restarted / MiB
    assert restarted - fresh < RESTART_BOUND, (
        f"RSS after restart is {(restarted - fresh) / MiB:.1f} MiB above a fresh agent's"
        f" (bound {RESTART_BOUND / MiB:.0f} MiB; an index of {BATCHES:,} batches adds"
        f" >= {BATCHES * PER_BATCH_INDEX_BYTES / MiB:.1f} MiB): {report}"
    )

    # After the restart nothing is cached: both come from the database.
    read_and_check(agent.bootstrap, 0, 50)
    read_and_check(agent.bootstrap, REQUESTS - 50, 50)
    assert high_watermarks(agent.bootstrap) == [REQUESTS] * PARTITIONS
    after_reads = rss(agent)
    report["after_reads_mib"] = after_reads / MiB
    assert after_reads - fresh < RESTART_BOUND, (
        f"RSS after reading old offsets is {(after_reads - fresh) / MiB:.1f} MiB above a fresh"
        f" agent's (bound {RESTART_BOUND / MiB:.0f} MiB): {report}"
    )
    print({k: round(v, 1) for k, v in report.items()})  # shown with -s, or on failure
