"""Real Kafka clients against a real `driftlog serve` process, through real sockets.

Each of confluent-kafka (librdkafka), kafka-python, aiokafka and kcat (a
subprocess; Debian's build links librdkafka 2.0.2) creates a topic with its
admin API where it has one (kcat relies on auto-creation), produces keyed and
unkeyed records to explicit partitions and through its partitioner, with every
compression codec, and consumes them back with `assign()` from offset 0.

Values include all 256 byte values, an empty value and a ~100 KB value; keys
and headers are binary where the client allows it. Every record must come back
byte-identical, in order per partition, with offsets 0, 1, 2, ... and no gaps;
offsets reported by the producer must match the consumed ones, and the high
watermark must equal the record count. Cross-client tests produce with one
client and consume with another. Driftlog stores batches as the producer sent
them, so the object files show whether the codec was really applied on the
wire: plain text of a compressible value must be absent unless the codec is
"none" (for kcat that check is its own test, test_kcat_compresses_on_the_wire).

Every loop is bounded by an explicit deadline and every subprocess by a
timeout, so a broker that misbehaves fails these tests instead of hanging them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiokafka
import aiokafka.admin
import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.admin
import pytest
from aiokafka.structs import TopicPartition as AioTopicPartition
from kafka.structs import TopicPartition as KafkaTopicPartition

PARTITIONS = 3
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
CLIENTS = ("confluent", "kafka-python", "aiokafka", "kcat")
KCAT = shutil.which("kcat") or "/usr/bin/kcat"  # Debian package kcat

PRODUCE_TIMEOUT_S = 30.0
CONSUME_TIMEOUT_S = 30.0
# After every expected record arrived, keep reading this long to catch extras.
DRAIN_S = 0.3
TEST_TIMEOUT_S = 120

ALL_BYTES = bytes(range(256))
BIG = random.Random(0x0D21F7).randbytes(100 * 1024)
COMPRESSIBLE = b"driftlog compressible payload " * 2500
# Multi-byte delimiters for kcat's stdin: binary payloads may hold any single byte.
KCAT_MSG_DELIM = "<<driftlog-end-of-message>>"
KCAT_KEY_DELIM = "<<driftlog-end-of-key>>"
KEYED_KEYS = (b"alpha", b"beta", b"gamma", b"delta", b"epsilon")

Headers = tuple[tuple[str, bytes | None], ...]


class Agent(Protocol):
    """What these tests use of conftest's AgentProcess."""

    @property
    def bootstrap(self) -> str: ...

    data_dir: Path
    log_path: Path | None

    def log_text(self) -> str: ...


@dataclass(frozen=True)
class Rec:
    """A record to produce; `partition=None` leaves the choice to the client's partitioner."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None


@dataclass(frozen=True)
class Got:
    """A consumed record."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class Caps:
    """What a client can send (as producer) or give back exactly (as consumer)."""

    binary_headers: bool = True
    null_header_values: bool = True
    null_values: bool = True
    keyless_empty_value: bool = True


PRODUCER_CAPS: dict[str, Caps] = {
    "confluent": Caps(),
    # KafkaProducer.send() rejects a header whose value is None (TypeError).
    "kafka-python": Caps(null_header_values=False),
    "aiokafka": Caps(),
    # -H takes text from argv; stdin cannot tell a NULL value from an empty one, and
    # kcat skips an input message that is empty (no key and no value).
    "kcat": Caps(binary_headers=False, null_values=False, keyless_empty_value=False),
}
CONSUMER_CAPS: dict[str, Caps] = {
    "confluent": Caps(),
    "kafka-python": Caps(),
    "aiokafka": Caps(),
    # %h prints header values with printf("%.*s"): text only, no ',' or '='.
    "kcat": Caps(binary_headers=False),
}


def caps_for(producer: str, consumer: str) -> Caps:
    p, c = PRODUCER_CAPS[producer], CONSUMER_CAPS[consumer]
    return Caps(
        binary_headers=p.binary_headers and c.binary_headers,
        null_header_values=p.null_header_values and c.null_header_values,
        null_values=p.null_values and c.null_values,
        keyless_empty_value=p.keyless_empty_value and c.keyless_empty_value,
    )


def dataset(caps: Caps) -> list[Rec]:
    """The records every test sends, in send order."""
    text_headers: Headers = (("trace-id", b"abc-123"), ("empty", b""))
    first_headers: Headers = (*text_headers, ("dup", b"1"), ("dup", b"2"))
    if caps.binary_headers:
        first_headers += (("bin", ALL_BYTES), ("bin-short", b"\x00\xff"), ("", b"x"))
    if caps.null_header_values:
        first_headers += (("nullable", None),)
    recs = [
        Rec(b"k0", ALL_BYTES, first_headers, 0),
        Rec(b"k0-big", BIG, (("size", b"102400"),), 0),
    ]
    if caps.keyless_empty_value:
        recs.append(Rec(None, b"", (), 0))
    recs += [
        Rec(ALL_BYTES[::-1], b"\x00", (), 1),
        Rec(b"k1-compressible", COMPRESSIBLE, text_headers, 1),
        Rec(b"k1-empty", b"", text_headers, 1),
        Rec(b"", b"empty key", text_headers, 1),
    ]
    recs += [Rec(b"k2-%d" % i, b"small value %d" % i, (), 2) for i in range(5)]
    if caps.null_values:
        recs.append(Rec(b"tombstone", None, (), 2))
    recs += [Rec(None, ALL_BYTES[i::7], (), 2) for i in range(3)]
    for round_ in range(3):
        headers: Headers = (("round", str(round_).encode()),)
        recs += [Rec(k, k + b"-%d" % round_, headers, None) for k in KEYED_KEYS]
    return recs


def summary(key: bytes | None, value: bytes | None, headers: Headers) -> str:
    """A short description of a record for assertion messages (values can be 100 KB)."""

    def short(b: bytes | None) -> str:
        if b is None:
            return "NULL"
        if len(b) <= 24:
            return repr(b)
        return f"<{len(b)} bytes sha256:{hashlib.sha256(b).hexdigest()[:12]}>"

    hdrs = ", ".join(f"{k}={short(v)}" for k, v in headers)
    return f"key={short(key)} value={short(value)} headers=[{hdrs}]"


def verify(
    expected: Sequence[Rec],
    got: Sequence[Got],
    delivered: Sequence[tuple[int, int]] | None = None,
    high_watermarks: dict[int, int] | None = None,
) -> None:
    """Byte-identical records, in order per partition, offsets 0..n-1 without gaps."""
    by_partition: dict[int, list[Got]] = {p: [] for p in range(PARTITIONS)}
    for g in got:
        assert g.partition in by_partition, f"record from unknown partition {g.partition}"
        by_partition[g.partition].append(g)
    for p, items in by_partition.items():
        offsets = [g.offset for g in items]
        assert offsets == list(range(len(items))), f"partition {p} offsets {offsets}"

    # Records sent without a partition: every record of a key lands in one partition.
    key_partition: dict[bytes, int] = {}
    unpinned_keys = {r.key for r in expected if r.partition is None}
    for g in got:
        if g.key in unpinned_keys and g.key is not None:
            first = key_partition.setdefault(g.key, g.partition)
            assert first == g.partition, f"key {g.key!r} in partitions {first} and {g.partition}"

    def partition_of(r: Rec) -> int:
        if r.partition is not None:
            return r.partition
        assert r.key is not None
        assert r.key in key_partition, f"no record with key {r.key!r} was consumed"
        return key_partition[r.key]

    for p in range(PARTITIONS):
        want = [summary(r.key, r.value, r.headers) for r in expected if partition_of(r) == p]
        have = [summary(g.key, g.value, g.headers) for g in by_partition[p]]
        assert have == want, f"partition {p} differs"
        # summary() hashes long values; compare the raw bytes too.
        want_raw = [(r.key, r.value, r.headers) for r in expected if partition_of(r) == p]
        have_raw = [(g.key, g.value, g.headers) for g in by_partition[p]]
        assert have_raw == want_raw, f"partition {p} differs in raw bytes"
    assert len(got) == len(expected)

    if delivered is not None:
        assert len(delivered) == len(expected)
        for r, (p, offset) in zip(expected, delivered, strict=True):
            assert 0 <= offset < len(by_partition[p]), f"reported {p}/{offset} not consumed"
            g = by_partition[p][offset]
            assert (g.key, g.value, g.headers) == (r.key, r.value, r.headers), (
                f"producer reported {summary(r.key, r.value, r.headers)} at {p}/{offset}, "
                f"consumed {summary(g.key, g.value, g.headers)}"
            )
    if high_watermarks is not None:
        counts = {p: len(items) for p, items in by_partition.items()}
        assert high_watermarks == counts


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def headers_of(raw: Any) -> Headers:
    """Normalise a client's headers (None, list or tuple of pairs) to a tuple."""
    if not raw:
        return ()
    return tuple((str(k), None if v is None else bytes(v)) for k, v in raw)


# --------------------------------------------------------------------------- confluent-kafka


def confluent_create_topic(bootstrap: str, topic: str) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    new = confluent_kafka.admin.NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)
    futures = admin.create_topics([new], operation_timeout=10, request_timeout=15)
    assert set(futures) == {topic}
    futures[topic].result(timeout=15)
    metadata = admin.list_topics(topic, timeout=10)
    assert metadata.topics[topic].error is None
    assert sorted(metadata.topics[topic].partitions) == list(range(PARTITIONS))


def confluent_produce(
    bootstrap: str, topic: str, codec: str, recs: Sequence[Rec]
) -> list[tuple[int, int]]:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 5}
    )
    reports: list[tuple[Any, Any] | None] = [None] * len(recs)

    def on_delivery(index: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            reports[index] = (err, msg)

        return cb

    for i, r in enumerate(recs):
        producer.produce(
            topic,
            value=r.value,
            key=r.key,
            partition=-1 if r.partition is None else r.partition,
            headers=list(r.headers) or None,
            on_delivery=on_delivery(i),
        )
        producer.poll(0)
    remaining = producer.flush(PRODUCE_TIMEOUT_S)
    assert remaining == 0, f"{remaining} messages not delivered within {PRODUCE_TIMEOUT_S}s"
    delivered: list[tuple[int, int]] = []
    for i, report in enumerate(reports):
        assert report is not None, f"no delivery report for record {i}"
        err, msg = report
        assert err is None, f"record {i}: {err}"
        delivered.append((msg.partition(), msg.offset()))
    return delivered


def confluent_consume(bootstrap: str, topic: str, count: int) -> tuple[list[Got], dict[int, int]]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": 100,
        }
    )
    got: list[Got] = []
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        drain_until: float | None = None
        while time.monotonic() < (drain_until or deadline):
            msg = consumer.poll(0.1)
            if msg is None:
                pass
            elif msg.error() is not None:
                raise AssertionError(f"confluent consumer error: {msg.error()}")
            else:
                got.append(
                    Got(
                        msg.partition(),
                        msg.offset(),
                        msg.key(),
                        msg.value(),
                        headers_of(msg.headers()),
                    )
                )
            if drain_until is None and len(got) >= count:
                drain_until = time.monotonic() + DRAIN_S
        watermarks = {
            p: consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, p), timeout=10, cached=False
            )[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()
    return got, watermarks


# --------------------------------------------------------------------------- kafka-python


def kafka_python_create_topic(bootstrap: str, topic: str) -> None:
    admin = kafka.admin.KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        admin.create_topics(
            [kafka.admin.NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
            timeout_ms=10000,
        )
        described = admin.describe_topics([topic])
        assert len(described) == 1
        assert described[0]["error_code"] == 0
        partitions = sorted(p["partition_index"] for p in described[0]["partitions"])
        assert partitions == list(range(PARTITIONS))
    finally:
        admin.close()


def kafka_python_produce(
    bootstrap: str, topic: str, codec: str, recs: Sequence[Rec], **config: Any
) -> list[tuple[int, int]]:
    # kafka-python 3 turns idempotence on by default, which needs InitProducerId; that
    # default is covered by test_kafka_python_default_producer, the matrix opts out.
    config.setdefault("enable_idempotence", False)
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=None if codec == "none" else codec,
        linger_ms=5,
        request_timeout_ms=15000,
        **config,
    )
    try:
        futures = [
            producer.send(
                topic,
                value=r.value,
                key=r.key,
                partition=r.partition,
                headers=list(r.headers),
            )
            for r in recs
        ]
        producer.flush(timeout=PRODUCE_TIMEOUT_S)
        delivered = []
        for f in futures:
            metadata = f.get(timeout=PRODUCE_TIMEOUT_S)
            delivered.append((metadata.partition, metadata.offset))
    finally:
        producer.close(timeout=10)
    return delivered


def kafka_python_consume(
    bootstrap: str, topic: str, count: int
) -> tuple[list[Got], dict[int, int]]:
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=15000,
    )
    got: list[Got] = []
    try:
        tps = [KafkaTopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        drain_until: float | None = None
        while time.monotonic() < (drain_until or deadline):
            for tp, records in consumer.poll(timeout_ms=100).items():
                for m in records:
                    assert m.partition == tp.partition
                    got.append(Got(m.partition, m.offset, m.key, m.value, headers_of(m.headers)))
            if drain_until is None and len(got) >= count:
                drain_until = time.monotonic() + DRAIN_S
        ends = consumer.end_offsets(tps)
        watermarks = {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()
    return got, watermarks


# --------------------------------------------------------------------------- aiokafka


async def _aiokafka_create_topic(bootstrap: str, topic: str) -> None:
    admin = aiokafka.admin.AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15000
    )
    await admin.start()
    try:
        await admin.create_topics(
            [aiokafka.admin.NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
            timeout_ms=10000,
        )
        described = await admin.describe_topics([topic])
        assert len(described) == 1
        assert described[0]["error_code"] == 0
        partitions = sorted(p["partition"] for p in described[0]["partitions"])
        assert partitions == list(range(PARTITIONS))
    finally:
        await admin.close()


def aiokafka_create_topic(bootstrap: str, topic: str) -> None:
    asyncio.run(asyncio.wait_for(_aiokafka_create_topic(bootstrap, topic), 30))


async def _aiokafka_produce(
    bootstrap: str, topic: str, codec: str, recs: Sequence[Rec]
) -> list[tuple[int, int]]:
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=None if codec == "none" else codec,
        linger_ms=5,
        request_timeout_ms=15000,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value=r.value,
                key=r.key,
                partition=r.partition,
                headers=list(r.headers),
            )
            for r in recs
        ]
        results = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in results]


def aiokafka_produce(
    bootstrap: str, topic: str, codec: str, recs: Sequence[Rec]
) -> list[tuple[int, int]]:
    return asyncio.run(
        asyncio.wait_for(_aiokafka_produce(bootstrap, topic, codec, recs), PRODUCE_TIMEOUT_S)
    )


async def _aiokafka_consume(
    bootstrap: str, topic: str, count: int
) -> tuple[list[Got], dict[int, int]]:
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=15000,
    )
    await consumer.start()
    got: list[Got] = []
    try:
        tps = [AioTopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        drain_until: float | None = None
        while time.monotonic() < (drain_until or deadline):
            batches = await consumer.getmany(*tps, timeout_ms=100)
            for tp, records in batches.items():
                for m in records:
                    assert m.partition == tp.partition
                    got.append(Got(m.partition, m.offset, m.key, m.value, headers_of(m.headers)))
            if drain_until is None and len(got) >= count:
                drain_until = time.monotonic() + DRAIN_S
        ends = await consumer.end_offsets(tps)
        watermarks = {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()
    return got, watermarks


def aiokafka_consume(bootstrap: str, topic: str, count: int) -> tuple[list[Got], dict[int, int]]:
    return asyncio.run(
        asyncio.wait_for(_aiokafka_consume(bootstrap, topic, count), CONSUME_TIMEOUT_S + 15)
    )


# --------------------------------------------------------------------------- kcat


def _kcat(args: Sequence[str], stdin: bytes = b"") -> bytes:
    proc = subprocess.run(
        [KCAT, *args], input=stdin, capture_output=True, timeout=PRODUCE_TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, (
        f"kcat {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    )
    return proc.stdout


def _runs(recs: Sequence[Rec]) -> Iterator[list[Rec]]:
    """Consecutive records sharing partition and headers: one kcat invocation each."""
    run: list[Rec] = []
    for r in recs:
        if run and (run[0].partition, run[0].headers) != (r.partition, r.headers):
            yield run
            run = []
        run.append(r)
    if run:
        yield run


def kcat_produce(bootstrap: str, topic: str, codec: str, recs: Sequence[Rec]) -> None:
    """`kcat -P` with -K/-D delimiters so binary keys and values survive stdin, -H headers."""
    for run in _runs(recs):
        args = ["-P", "-b", bootstrap, "-t", topic, "-z", codec, "-K", KCAT_KEY_DELIM]
        args += ["-D", KCAT_MSG_DELIM, "-X", "message.max.bytes=1000000", "-m", "10"]
        args += ["-p", str(-1 if run[0].partition is None else run[0].partition)]
        for name, value in run[0].headers:
            # "-H name" (no '=') sends a NULL header value.
            args += ["-H", name if value is None else f"{name}={value.decode()}"]
        messages = []
        for r in run:
            assert r.value is not None, "kcat cannot send NULL values alongside empty ones"
            for part in (r.key or b"", r.value):
                assert KCAT_MSG_DELIM.encode() not in part
                assert KCAT_KEY_DELIM.encode() not in part
            key = b"" if r.key is None else r.key + KCAT_KEY_DELIM.encode()
            messages.append(key + r.value + KCAT_MSG_DELIM.encode())
        _kcat(args, b"".join(messages))


def _parse_kcat_headers(text: bytes) -> Headers:
    if not text:
        return ()
    headers: list[tuple[str, bytes | None]] = []
    for item in text.split(b","):
        name, sep, value = item.partition(b"=")
        assert sep, f"unparseable kcat header output {text!r}"
        headers.append((name.decode(), None if value == b"NULL" else value))
    return tuple(headers)


def kcat_consume(bootstrap: str, topic: str) -> list[Got]:
    """`kcat -C -o beginning -e` with lengths in the format so binary output parses exactly.

    -e stops once every partition is read to its end, so no count is needed.
    """
    fmt = "%p %o %K %S %h\\n%k%s\\n"
    out = _kcat(["-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", fmt])
    got: list[Got] = []
    pos = 0
    while pos < len(out):
        eol = out.index(b"\n", pos)
        fields = out[pos:eol].split(b" ", 4)
        partition, offset, key_len, value_len = (int(f) for f in fields[:4])
        pos = eol + 1
        key = None if key_len < 0 else out[pos : pos + key_len]
        pos += max(key_len, 0)
        value = None if value_len < 0 else out[pos : pos + value_len]
        pos += max(value_len, 0)
        assert out[pos : pos + 1] == b"\n", f"kcat output misparsed at byte {pos}"
        pos += 1
        got.append(Got(partition, offset, key, value, _parse_kcat_headers(fields[4])))
    return got


# --------------------------------------------------------------------------- dispatch


def create_topic(client: str, bootstrap: str, topic: str) -> None:
    if client == "confluent":
        confluent_create_topic(bootstrap, topic)
    elif client == "kafka-python":
        kafka_python_create_topic(bootstrap, topic)
    elif client == "aiokafka":
        aiokafka_create_topic(bootstrap, topic)
    else:
        assert client == "kcat"  # no admin API: the first produce auto-creates the topic


def produce(
    client: str, bootstrap: str, topic: str, codec: str, recs: Sequence[Rec]
) -> list[tuple[int, int]] | None:
    """Produce `recs` in order; returns the (partition, offset) the client reported, if any."""
    if client == "confluent":
        return confluent_produce(bootstrap, topic, codec, recs)
    if client == "kafka-python":
        return kafka_python_produce(bootstrap, topic, codec, recs)
    if client == "aiokafka":
        return aiokafka_produce(bootstrap, topic, codec, recs)
    assert client == "kcat"
    kcat_produce(bootstrap, topic, codec, recs)
    return None


def consume(
    client: str, bootstrap: str, topic: str, count: int
) -> tuple[list[Got], dict[int, int] | None]:
    """Read every partition from offset 0; also the high watermarks where the client tells them."""
    if client == "confluent":
        return confluent_consume(bootstrap, topic, count)
    if client == "kafka-python":
        return kafka_python_consume(bootstrap, topic, count)
    if client == "aiokafka":
        return aiokafka_consume(bootstrap, topic, count)
    assert client == "kcat"
    return kcat_consume(bootstrap, topic), None


def round_trip(agent: Agent, producer: str, consumer: str, codec: str, admin: str) -> None:
    print(f"agent log: {agent.log_path}")
    topic = unique_topic(f"{producer}-to-{consumer}-{codec}")
    create_topic(admin, agent.bootstrap, topic)
    recs = dataset(caps_for(producer, consumer))
    delivered = produce(producer, agent.bootstrap, topic, codec, recs)
    got, watermarks = consume(consumer, agent.bootstrap, topic, len(recs))
    verify(recs, got, delivered, watermarks)
    if producer != "kcat":  # kcat's codecs: test_kcat_compresses_on_the_wire
        assert_stored_with_codec(agent, codec)


def assert_stored_with_codec(agent: Agent, codec: str) -> None:
    """The broker keeps batches as sent: the compressible value is plain only with "none".

    This proves the client really compressed (and the broker decoded nothing on the way).
    Relies on the default object store, a file:// store under DATA_DIR/objects.
    """
    objects = [p for p in (agent.data_dir / "objects").rglob("*") if p.is_file()]
    assert objects, f"no object files under {agent.data_dir / 'objects'}"
    stored = b"".join(p.read_bytes() for p in objects)
    plain = COMPRESSIBLE[:3000]
    if codec == "none":
        assert plain in stored, (
            "uncompressed value not found in the stored objects (layout changed?)"
        )
    else:
        assert plain not in stored, (
            f"the producer was set to {codec} but the batch arrived uncompressed. "
            "librdkafka before 2.8 (kcat here links 2.0.2) only compresses gzip/snappy/lz4 "
            "when ApiVersions advertises Produce v0; Apache Kafka 4 advertises Produce v0-v2 "
            "(and rejects them) for exactly this reason: KAFKA-18659, librdkafka#4956"
        )


@pytest.fixture
def broker(agent: Agent) -> Iterator[Agent]:
    """The `agent` fixture; its log's tail shows in the report of a failing test."""
    yield agent
    lines = agent.log_text().splitlines()
    print(f"--- last lines of {agent.log_path} ---")
    print("\n".join(lines[-60:]))


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", CLIENTS)
def test_round_trip_same_client(broker: Agent, client: str, codec: str) -> None:
    """One client creates, produces and consumes with one codec."""
    round_trip(broker, client, client, codec, admin=client)


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize(
    ("producer", "consumer", "codec", "admin"),
    [
        ("kcat", "kafka-python", "snappy", "kafka-python"),
        ("aiokafka", "confluent", "lz4", "confluent"),
        ("confluent", "aiokafka", "zstd", "aiokafka"),
        ("kafka-python", "kcat", "gzip", "kafka-python"),
        ("kafka-python", "confluent", "snappy", "aiokafka"),
        ("confluent", "kcat", "lz4", "confluent"),
        ("kcat", "aiokafka", "zstd", "kcat"),
        ("aiokafka", "kafka-python", "gzip", "aiokafka"),
        ("aiokafka", "kcat", "snappy", "confluent"),
    ],
)
def test_round_trip_cross_client(
    broker: Agent, producer: str, consumer: str, codec: str, admin: str
) -> None:
    """Records written by one client read back byte-identical by another."""
    round_trip(broker, producer, consumer, codec, admin)


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("codec", [c for c in CODECS if c != "none"])
def test_kcat_compresses_on_the_wire(broker: Agent, codec: str) -> None:
    """`kcat -z CODEC` (librdkafka 2.0.2) really sends compressed batches to Driftlog."""
    print(f"agent log: {broker.log_path}")
    topic = unique_topic(f"kcat-wire-{codec}")
    recs = [Rec(b"compressible", COMPRESSIBLE, (), 0), Rec(b"small", b"v", (), 0)]
    kcat_produce(broker.bootstrap, topic, codec, recs)
    verify(recs, kcat_consume(broker.bootstrap, topic))
    assert_stored_with_codec(broker, codec)


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_kafka_python_default_producer(broker: Agent) -> None:
    """KafkaProducer with its defaults (idempotence on since kafka-python 3, KIP-679) works."""
    print(f"agent log: {broker.log_path}")
    topic = unique_topic("kafka-python-defaults")
    kafka_python_create_topic(broker.bootstrap, topic)
    recs = [Rec(b"k%d" % i, ALL_BYTES[i:], (("i", b"%d" % i),), i % PARTITIONS) for i in range(9)]
    producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        futures = [
            producer.send(
                topic, value=r.value, key=r.key, partition=r.partition, headers=list(r.headers)
            )
            for r in recs
        ]
        producer.flush(timeout=PRODUCE_TIMEOUT_S)
        metadata = [f.get(timeout=PRODUCE_TIMEOUT_S) for f in futures]
    finally:
        producer.close(timeout=10)
    delivered = [(m.partition, m.offset) for m in metadata]
    got, watermarks = kafka_python_consume(broker.bootstrap, topic, len(recs))
    verify(recs, got, delivered, watermarks)


def test_verify_detects_corruption() -> None:
    """The checker itself fails on a changed byte, a gap, a reorder and a missing record."""
    recs = [Rec(b"a", b"1", (), 0), Rec(b"b", ALL_BYTES, (("h", b"v"),), 0)]
    good = [Got(0, 0, b"a", b"1", ()), Got(0, 1, b"b", ALL_BYTES, (("h", b"v"),))]
    verify(recs, good, [(0, 0), (0, 1)], {0: 2, 1: 0, 2: 0})
    flipped = ALL_BYTES[:-1] + b"\x00"
    bad_cases = [
        [good[0], Got(0, 1, b"b", flipped, (("h", b"v"),))],
        [good[0], Got(0, 2, b"b", ALL_BYTES, (("h", b"v"),))],
        [Got(0, 0, b"b", ALL_BYTES, (("h", b"v"),)), Got(0, 1, b"a", b"1", ())],
        [good[0]],
        [good[0], Got(0, 1, b"b", ALL_BYTES, (("h", b"w"),))],
    ]
    for bad in bad_cases:
        with pytest.raises(AssertionError):
            verify(recs, bad)
    with pytest.raises(AssertionError):
        verify(recs, good, [(0, 1), (0, 0)])
    with pytest.raises(AssertionError):
        verify(recs, good, None, {0: 3, 1: 0, 2: 0})
