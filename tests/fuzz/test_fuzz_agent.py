"""Fuzzing a real agent process with random and mutated request frames over raw sockets.

Known records are produced first with confluent-kafka. Then every valid request of
the corpus (every served API key and version) is sent once, and after it a bounded
number of random and mutated frames, each on a fresh connection. After each frame the
connection must get a well-formed response or be closed by the agent within a few
seconds, as the agent itself would decide for that frame (decode_request is run here
on the same bytes to know which). Requests that may legitimately wait (a Fetch long
poll, a rebalance) and frames left incomplete are not waited for. At the end the agent
is alive, still serves, logged no handler failure, and the known records read back
byte-identical at the same offsets.

The seed is fixed (`fuzzlib.SEED`, printed; override with DRIFTLOG_FUZZ_SEED).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import AgentProcess
from fuzz.fuzzlib import (
    CORPUS,
    DOOMED_TOPIC,
    KNOWN_FRAME_BUFFER_PREALLOCATION,
    KNOWN_KIO_PREALLOCATION_ABORT,
    KNOWN_NULL_IN_NON_NULLABLE_FIELDS,
    KNOWN_RECORD_TIMESTAMPS_UNBOUNDED,
    KNOWN_TOPIC,
    SEED,
    TARGET_TOPIC,
    DecodeWorker,
    decode_response,
    encode_request,
    field_mutated_requests,
    frame,
    mutated_requests,
    null_in_non_nullable_field,
)
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from kio.schema.api_versions.v0.request import ApiVersionsRequest as ApiVersionsV0
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import i32, i32Timedelta, i64
from raw_client import RawClient

from driftlog.protocol.codec import MalformedRequest, Request, UnsupportedRequest, decode_request
from driftlog.records.batch import InvalidBatch, split_batches
from driftlog.server.registry import SUPPORTED_VERSIONS

MAX_FRAME_BYTES = 1 << 20
"""The agent's --max-frame-bytes: small, so an allowed but incomplete frame costs little."""
FUZZ_EXAMPLES = int(os.environ.get("DRIFTLOG_FUZZ_AGENT_FRAMES", "300"))
"""Fuzzed frames after the corpus; raise it locally for a longer hunt."""
FUZZ_TIME_BUDGET_S = float(os.environ.get("DRIFTLOG_FUZZ_AGENT_SECONDS", "30"))
ANSWER_TIMEOUT_S = 5.0
"""How long a response or a close may take: far above the milliseconds they need."""
MAY_WAIT_S = 0.3
"""How long to watch a request that may legitimately wait before moving on."""
PROBE_CORRELATION_ID = 424242

_API_VERSIONS = 18
_PRODUCE, _FETCH, _JOIN_GROUP, _SYNC_GROUP = 0, 1, 11, 14


# Driving one connection ---------------------------------------------------------------


def _recv_frame(sock: socket.socket, timeout_s: float) -> bytes | str | None:
    """A response payload, None when the agent closed the connection, or "timeout"."""
    deadline = time.monotonic() + timeout_s
    data = bytearray()
    need = 4
    while True:
        while len(data) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(need - len(data))
            except TimeoutError:
                return "timeout"
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            data += chunk
        if need == 4:
            need = 4 + struct.unpack(">i", data[:4])[0]
            if need == 4:
                return b""
            continue
        return bytes(data[4:])


def _probe() -> bytes:
    return frame(encode_request(ApiVersionsV0(), correlation_id=PROBE_CORRELATION_ID))


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What the agent must do with the first frame of what we send."""

    # "response", "closed", "response-or-closed", "may-wait", "nothing", or "probe": an
    # acks=0 produce, followed by an ApiVersions that must be answered unless the
    # produce failed and the agent closed the connection (as Kafka does).
    kind: str
    api_key: int = -1
    api_version: int = -1
    correlation_id: int = -1
    why: str = ""


def _split(stream: bytes) -> tuple[list[bytes], str | None]:
    """The complete frames the agent will see in `stream`, and why it stops reading, if so."""
    frames: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 4:
        (size,) = struct.unpack_from(">i", stream, pos)
        if size < 0:
            return frames, "negative size"
        if size > MAX_FRAME_BYTES:
            return frames, "frame too large"
        if len(stream) - pos - 4 < size:
            break
        frames.append(stream[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return frames, None


def _may_wait(request: Request) -> str | None:
    """Why this valid request may legitimately take longer than ANSWER_TIMEOUT_S."""
    body = request.body
    if request.api_key == _FETCH:
        wait = body.max_wait.total_seconds()
        if wait > 0.5:  # with too little data whatever min_bytes says
            return f"fetch long poll of {wait:.1f}s"
    if request.api_key in (_JOIN_GROUP, _SYNC_GROUP):
        return "waits for a rebalance"
    return None


def _null_in_non_nullable_field(payload: bytes) -> bool:
    try:
        request = decode_request(memoryview(payload).toreadonly(), SUPPORTED_VERSIONS)
    except (MalformedRequest, UnsupportedRequest):
        return False
    return null_in_non_nullable_field(request.body) is not None


def _stores_a_huge_record_count(payload: bytes) -> bool:
    """A Produce the agent would store with a recordsCount ListOffsets could loop over."""
    try:
        request = decode_request(memoryview(payload).toreadonly(), SUPPORTED_VERSIONS)
    except (MalformedRequest, UnsupportedRequest):
        return False
    if request.api_key != _PRODUCE:
        return False
    for topic in request.body.topic_data or ():
        for partition in topic.partition_data or ():
            try:
                if any(h.record_count > 10_000 for _, h in split_batches(partition.records or b"")):
                    return True
            except InvalidBatch:
                pass
    return False


def _expect(first: bytes, alone: bool, more_follow: bool) -> Expectation:
    """What the agent must answer to the complete frame `first` (decoded as it does).

    `alone`: nothing follows it; `more_follow`: a frame or a bad size prefix follows.
    """
    try:
        request = decode_request(memoryview(first).toreadonly(), SUPPORTED_VERSIONS)
    except UnsupportedRequest as e:
        if e.api_key == _API_VERSIONS:
            return Expectation("response", _API_VERSIONS, 0, e.correlation_id, "KIP-511")
        return Expectation("closed", why="unsupported")
    except MalformedRequest:
        return Expectation("closed", why="malformed")
    if request.api_key == _PRODUCE and request.body.acks == 0:
        return Expectation("probe" if alone else "nothing", why="acks=0")
    reason = _may_wait(request)
    if reason is not None:
        return Expectation("may-wait", why=reason)
    kind = "response-or-closed" if more_follow else "response"
    return Expectation(kind, request.api_key, request.api_version, request.correlation_id)


_DESCRIBE_TRANSACTIONS = 65


def _check_response(expectation: Expectation, answer: bytes) -> str | None:
    """None if `answer` is the well-formed response expected, else what is wrong."""
    try:
        correlation_id, _ = decode_response(expectation.api_key, expectation.api_version, answer)
    except Exception as e:
        if expectation.api_key == _DESCRIBE_TRANSACTIONS and "negative timestamp" in str(e):
            # Kafka answers a transaction start time of -1 when none is open (the Java
            # admin client reads it as "no start time"); kio refuses negative times.
            return None
        return f"malformed response ({e!r}): {answer[:64].hex()}"
    if correlation_id != expectation.correlation_id:
        return f"correlation id {correlation_id}, expected {expectation.correlation_id}"
    return None


def _exchange(agent: AgentProcess, stream: bytes, expectation: Expectation) -> str | None:
    """Send `stream` on a fresh connection; None if the agent behaved, else what it did."""
    host, port = agent.bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT_S) as sock:
        if expectation.kind == "probe":
            stream += _probe()
        try:
            sock.sendall(stream)
        except (ConnectionResetError, BrokenPipeError):
            # The agent may close before reading everything (e.g. a bad size prefix).
            return None if expectation.kind in ("closed", "response-or-closed") else "reset"
        if expectation.kind == "nothing":
            return None
        timeout = MAY_WAIT_S if expectation.kind == "may-wait" else ANSWER_TIMEOUT_S
        answer = _recv_frame(sock, timeout)
    if expectation.kind == "may-wait":
        return None
    if answer == "timeout":
        return f"no answer and no close in {timeout}s (expected {expectation.kind})"
    if expectation.kind == "closed":
        return None if answer is None else "answered a frame that must close the connection"
    if expectation.kind == "probe":
        if answer is None:
            return None  # acks=0 has no response to carry an error: Kafka closes instead
        assert isinstance(answer, bytes)
        probe = Expectation("response", _API_VERSIONS, 0, PROBE_CORRELATION_ID)
        return _check_response(probe, answer)
    if answer is None:
        if expectation.kind == "response-or-closed":
            return None
        return "closed the connection instead of answering a valid request"
    assert isinstance(answer, bytes)
    return _check_response(expectation, answer)


# What to send -------------------------------------------------------------------------


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, bytes]:
    """(description, bytes to send): mutated, random, or with a wrong size prefix."""
    choice = draw(st.sampled_from(["fields"] * 5 + ["mutated"] * 4 + ["random", "prefix", "pair"]))
    if choice == "random":
        payload = draw(st.binary(max_size=120))
        return f"random body {payload.hex()}", frame(payload)
    if choice == "fields":
        corpus_seed, payload = draw(field_mutated_requests())
        return f"{corpus_seed.label} with field values {payload.hex()}", frame(payload)
    corpus_seed, payload = draw(mutated_requests())
    label = f"{corpus_seed.label} mutated to {payload.hex()}"
    if choice == "prefix":
        size = draw(
            st.sampled_from(
                [
                    0,
                    -1,
                    -(2**31),
                    2**31 - 1,
                    MAX_FRAME_BYTES + 1,
                    max(len(payload) - 1, 0),
                    len(payload) + 1,
                    len(payload) + 100,
                    len(payload) // 2,
                ]
            )
        )
        return f"size prefix {size}, {label}", struct.pack(">i", size) + payload
    if choice == "pair":
        other = draw(st.sampled_from(CORPUS))
        return f"{label} then {other.label}", frame(payload) + frame(other.payload)
    return label, frame(payload)


@dataclasses.dataclass
class Tally:
    sent: int = 0
    skipped_known_abort: int = 0
    skipped_known_null: int = 0
    skipped_known_loop: int = 0
    by_expectation: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)


def _send_case(
    agent: AgentProcess, worker: DecodeWorker, tally: Tally, label: str, data: bytes
) -> None:
    frames, stop = _split(data)
    for f in frames:
        # Never send what would abort a process: the agent decodes the same bytes.
        verdict = worker.check(f)
        if verdict.aborted or verdict.hung:
            if KNOWN_KIO_PREALLOCATION_ABORT and verdict.is_known_kio_abort:
                tally.skipped_known_abort += 1
                return
            pytest.fail(f"decoding would kill or hang the agent ({verdict.detail}): {label}")
        if KNOWN_NULL_IN_NON_NULLABLE_FIELDS and _null_in_non_nullable_field(f):
            tally.skipped_known_null += 1
            return
        if KNOWN_RECORD_TIMESTAMPS_UNBOUNDED and _stores_a_huge_record_count(f):
            tally.skipped_known_loop += 1
            return
    if frames:
        alone = len(data) == 4 + len(frames[0])
        more_follow = len(frames) > 1 or stop is not None
        expectation = _expect(frames[0], alone, more_follow)
    elif stop is not None:
        expectation = Expectation("closed", why=stop)
    else:
        expectation = Expectation("nothing", why="incomplete frame")
    tally.sent += 1
    tally.by_expectation[expectation.kind] = tally.by_expectation.get(expectation.kind, 0) + 1
    problem = _exchange(agent, data, expectation)
    if problem is not None:
        tally.problems.append(f"{problem} [{expectation.why}] for {label}")
    assert agent.process is not None
    if agent.process.poll() is not None:
        pytest.fail(f"the agent exited ({agent.process.returncode}) after: {label}")


# Known records and checks -------------------------------------------------------------


def _produce_known(bootstrap: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(30):
        producer.produce(
            KNOWN_TOPIC,
            key=b"k%d" % i,
            value=b"known-%d" % i * (i + 1),
            partition=i % 2,
            headers=[("h", b"%d" % i)],
        )
        if i % 10 == 9:
            assert producer.flush(20) == 0  # several batches
    assert producer.flush(20) == 0
    # Data for the fuzzed requests to find, compressed with every codec.
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        compressed = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": codec}
        )
        for i in range(5):
            compressed.produce(
                TARGET_TOPIC, value=b"target-%s-%d" % (codec.encode(), i), partition=0
            )
        compressed.produce(DOOMED_TOPIC, value=b"doomed", partition=0)
        assert compressed.flush(20) == 0


def _raw_partition(bootstrap: str, partition: int) -> tuple[int, bytes]:
    """(high watermark, the record bytes a Fetch returns from offset 0)."""
    client = RawClient(bootstrap)
    request = FetchRequest(
        replica_id=BrokerId(-1),
        max_wait=i32Timedelta.parse(datetime.timedelta(0)),
        min_bytes=i32(0),
        max_bytes=i32(16 << 20),
        topics=(
            FetchTopic(
                topic=TopicName(KNOWN_TOPIC),
                partitions=(
                    FetchPartition(
                        partition=i32(partition),
                        fetch_offset=i64(0),
                        partition_max_bytes=i32(16 << 20),
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
    )
    response = client.request(request)
    client.close()
    data = response.responses[0].partitions[0]
    assert data.error_code == ErrorCode.none
    return int(data.high_watermark), bytes(data.records or b"")


def _consumed(bootstrap: str, partition: int, count: int) -> list[tuple[Any, ...]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fuzz-reader"})
    consumer.assign([TopicPartition(KNOWN_TOPIC, partition, 0)])
    out: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 20
    while len(out) < count and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            out.append(
                (
                    message.offset(),
                    message.key(),
                    message.value(),
                    message.headers(),
                    message.timestamp(),
                )
            )
    consumer.close()
    return out


def _snapshot(bootstrap: str) -> list[tuple[int, bytes, list[tuple[Any, ...]]]]:
    snapshot = []
    for partition in (0, 1):
        high, raw = _raw_partition(bootstrap, partition)
        snapshot.append((high, raw, _consumed(bootstrap, partition, high)))
    return snapshot


def _assert_serves(bootstrap: str) -> None:
    client = RawClient(bootstrap)
    versions = client.request(
        ApiVersionsRequest(client_software_name="fuzz", client_software_version="1")
    )
    assert versions.error_code == ErrorCode.none
    metadata = client.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=TopicName(KNOWN_TOPIC), topic_id=None),),
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        )
    )
    client.close()
    [topic] = metadata.topics
    assert topic.error_code == ErrorCode.none
    assert len(topic.partitions) == 3


@pytest.fixture
def worker() -> Iterator[DecodeWorker]:
    w = DecodeWorker()
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def small_frames_agent(agent_factory: Any) -> AgentProcess:
    agent: AgentProcess = agent_factory(
        "--flush-ms", "20", "--default-partitions", "3", "--max-frame-bytes", str(MAX_FRAME_BYTES)
    )
    return agent


def test_agent_survives_fuzzed_frames(
    small_frames_agent: AgentProcess, worker: DecodeWorker
) -> None:
    agent = small_frames_agent
    print(f"\nfuzz seed {SEED} (set DRIFTLOG_FUZZ_SEED to change)")
    _produce_known(agent.bootstrap)
    before = _snapshot(agent.bootstrap)
    assert [len(consumed) for _, _, consumed in before] == [15, 15]

    tally = Tally()
    # Every valid request of the corpus, unmutated: each gets a well-formed response.
    for corpus_seed in CORPUS:
        _send_case(agent, worker, tally, f"valid {corpus_seed.label}", frame(corpus_seed.payload))

    corpus_sent = tally.sent
    started = time.monotonic()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the agent keeps state
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(_cases())
    def fuzz_one(case: tuple[str, bytes]) -> None:
        if time.monotonic() - started > FUZZ_TIME_BUDGET_S:
            return  # bounded time whatever the machine
        _send_case(agent, worker, tally, *case)

    fuzz_one()
    print(
        f"sent {corpus_sent} corpus requests, then {tally.sent - corpus_sent} fuzzed frames "
        f"in {time.monotonic() - started:.1f}s; skipped {tally.skipped_known_abort} that abort "
        f"kio, {tally.skipped_known_null} with null in non-nullable fields and "
        f"{tally.skipped_known_loop} storing huge record counts (known bugs); "
        f"expected outcomes {tally.by_expectation}"
    )

    assert agent.process is not None and agent.process.poll() is None
    failures = [
        line for line in agent.log_text().splitlines() if "Traceback" in line or "failed;" in line
    ]
    assert not tally.problems and not failures, "\n".join(
        [*tally.problems[:30], *failures[:10], f"agent log: {agent.log_path}"]
    )
    _assert_serves(agent.bootstrap)
    assert _snapshot(agent.bootstrap) == before


# Reproducers of known bugs (see fuzzlib); strict: they fail once the bug is fixed ------


@pytest.mark.xfail(
    KNOWN_NULL_IN_NON_NULLABLE_FIELDS,
    strict=True,
    reason="known bug: a null non-nullable array reaches the handler, which raises TypeError",
)
def test_null_non_nullable_array_is_a_clean_disconnect(agent: AgentProcess) -> None:
    # ListOffsets v1: header (api key 2, version 1, correlation id 5, null client id),
    # replica_id -1, then `topics` as a null array (length -1): not nullable in any version.
    payload = struct.pack(">hhih", 2, 1, 5, -1) + struct.pack(">ii", -1, -1)
    expectation = Expectation("response-or-closed", 2, 1, 5)
    assert _exchange(agent, frame(payload), expectation) is None
    assert "Traceback" not in agent.log_text()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
@pytest.mark.xfail(
    KNOWN_FRAME_BUFFER_PREALLOCATION,
    strict=True,
    reason="known bug: 4 bytes of size prefix make the agent allocate the whole frame",
)
def test_size_prefixes_alone_do_not_cost_frame_sized_memory(agent_factory: Any) -> None:
    limit = 32 << 20
    agent: AgentProcess = agent_factory("--max-frame-bytes", str(limit))
    assert agent.process is not None
    before = _rss_bytes(agent.process.pid)
    host, port = agent.bootstrap.rsplit(":", 1)
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        for sock in sockets:
            sock.sendall(struct.pack(">i", limit))  # allowed, and nothing of it follows
        time.sleep(1.0)
        grown = _rss_bytes(agent.process.pid) - before
    finally:
        for sock in sockets:
            sock.close()
    assert grown < 64 << 20, f"8 four-byte prefixes grew the agent by {grown >> 20} MiB"
