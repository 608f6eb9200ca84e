"""Coordinator memory as the log grows, and restart cost, with many one-record batches.

What it measures
----------------
Starts one ``driftlog serve`` process (embedded SQLite coordinator, local-directory
store in a temporary data directory) and produces ``--batches`` one-record batches
over ``--partitions`` partitions through a raw Kafka socket: every Produce request
(v9, acks=all) carries exactly one batch per partition, and ``--window`` requests are
pipelined on one connection. Every response is decoded and checked (no error, and each
partition's base offset is the request's index, so offsets are dense and in order).

At each checkpoint (``--checkpoints``, fractions of ``--batches``) it stops sending,
waits for every request in flight to be acknowledged (so everything produced is
committed), and reads the agent's resident memory (VmRSS from /proc/PID/status).

Then it stops the agent with SIGTERM (drain, exit 0) and starts it again on the same
data directory, and reports:

* the time from starting the process to the port accepting connections, and the
  same for a fresh agent on an empty data directory (the Python start-up part);
* RSS right after the restart, and after the reads below;
* the latency of raw Fetch requests (v12, max_wait 0, one partition) at offset 0 (the
  first one cold: nothing is cached after a restart) and at the tail, and that the
  record at each of those offsets is the one produced there;
* the time from a confluent-kafka consumer's ``assign()`` at offset 0 to its first
  message (librdkafka's own start-up included).

The agent runs with ``--cache-bytes`` small (8 MiB by default), so the cache of stored
batch bytes fills early (by about 100,000 batches) and what grows after that is the
coordinator's. The cache counts payload bytes only: with one-record batches of about
90 bytes each entry costs some 300 bytes more, so 8 MiB of cache is about 40 MiB
resident. ``--cache-bytes 1048576`` takes most of the cache out of the figures.

How to run
----------
From the repository root::

    .venv/bin/python bench/coordinator_memory.py                    # 1M batches
    .venv/bin/python bench/coordinator_memory.py --batches 200000 --json out.json

The client and the agent share the machine's cores. The agent's CPU time is shown
at each checkpoint: on a 2-core machine the agent uses about one core and produces
about 11,000 one-record batches/s, so 1M batches take about 95 s.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import crc32c
from confluent_kafka import Consumer, TopicPartition
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import BrokerId, TopicName
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import Records, i16, i32, i32Timedelta, i64

MiB = 1024 * 1024
TOPIC = "memory"
TIMESTAMP_MS = 1_700_000_000_000


def value_of(partition: int, index: int) -> bytes:
    """The record value at offset `index` of `partition` (fixed width: batches are alike)."""
    return b"%03d-%010d" % (partition, index)


# Record batches --------------------------------------------------------------------


def _varint(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while raw > 0x7F:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = raw = 0
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7


def one_record_batch(value: bytes) -> bytes:
    """A magic-2 batch of one uncompressed record without key or headers."""
    body = b"\x00" + _varint(0) + _varint(0) + _varint(-1) + _varint(len(value)) + value
    record = _varint(len(body) + 1) + body + _varint(0)
    after_crc = struct.pack(">hiqqqhii", 0, 0, TIMESTAMP_MS, TIMESTAMP_MS, -1, -1, -1, 1) + record
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", 0, batch_length, -1, 2, crc32c.crc32c(after_crc)) + after_crc


def first_record(records: bytes) -> tuple[int, bytes]:
    """(offset, value) of the first record of the first batch in `records`."""
    (base_offset,) = struct.unpack_from(">q", records, 0)
    pos = 61
    _, pos = _read_varint(records, pos)  # record length
    pos += 1  # attributes
    _, pos = _read_varint(records, pos)  # timestamp delta
    offset_delta, pos = _read_varint(records, pos)
    key_length, pos = _read_varint(records, pos)
    pos += max(key_length, 0)
    value_length, pos = _read_varint(records, pos)
    return base_offset + offset_delta, records[pos : pos + value_length]


# The wire ---------------------------------------------------------------------------


class Connection:
    """One socket speaking request header v2 (flexible requests) to the agent."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.correlation_id = 0

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def encode(self, request: Any) -> bytes:
        self.correlation_id += 1
        header_cls = request.__header_schema__
        buf = io.BytesIO()
        header = header_cls(
            request_api_key=request.__api_key__,
            request_api_version=request.__version__,
            correlation_id=self.correlation_id,
            client_id="coordinator-memory",
        )
        entity_writer(header_cls)(buf, header)
        entity_writer(type(request))(buf, request)
        payload = buf.getvalue()
        return struct.pack(">i", len(payload)) + payload

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self._read(4))
        return self._read(size)

    def _read(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) != n:
            raise ConnectionError("the agent closed the connection")
        return data

    def decode(self, request: Any, frame: bytes) -> Any:
        schema = load_response_schema(request.__api_key__, request.__version__)
        _, used = entity_reader(schema.__header_schema__)(frame, 0)
        body, _ = entity_reader(schema)(frame, used)
        return body

    def request(self, request: Any) -> Any:
        self.sock.sendall(self.encode(request))
        return self.decode(request, self.recv_frame())


class PipelinedProducer:
    """Sends Produce requests of one batch per partition, `window` of them in flight.

    Request i carries record i of every partition, so with one connection (requests
    are appended in order) record i lands at offset i: each response is checked for it.
    """

    def __init__(self, address: tuple[str, int], partitions: int, window: int) -> None:
        self.conn = Connection(address)
        self.partitions = partitions
        self.window = window
        self.sent = 0  # requests sent
        self.acked = 0  # requests acknowledged
        template = self._request([one_record_batch(value_of(p, 0)) for p in range(partitions)])
        self._template = template
        frame = self.conn.encode(template)
        self.conn.correlation_id = 0
        self._frame = frame
        self._positions: list[tuple[int, int]] = []
        for p in range(partitions):
            batch = one_record_batch(value_of(p, 0))
            at = frame.find(batch)
            assert at > 0 and frame.find(batch, at + 1) < 0, "batch not found once in template"
            self._positions.append((at, at + len(batch)))

    def _request(self, batches: Sequence[bytes]) -> ProduceRequest:
        return ProduceRequest(
            acks=i16(-1),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=30)),
            topic_data=(
                TopicProduceData(
                    name=TopicName(TOPIC),
                    partition_data=tuple(
                        PartitionProduceData(index=i32(p), records=Records(batch))
                        for p, batch in enumerate(batches)
                    ),
                ),
            ),
        )

    def _frame_for(self, index: int) -> bytes:
        frame = bytearray(self._frame)
        struct.pack_into(">i", frame, 8, index + 1)  # correlation id
        for p, (start, end) in enumerate(self._positions):
            batch = one_record_batch(value_of(p, index))
            assert len(batch) == end - start
            frame[start:end] = batch
        return bytes(frame)

    def _receive_one(self) -> None:
        response = self.conn.decode(self._template, self.conn.recv_frame())
        index = self.acked
        [topic] = response.responses
        for part in topic.partition_responses:
            if part.error_code != ErrorCode.none or part.base_offset != index:
                raise RuntimeError(
                    f"request {index} partition {part.index}: error {part.error_code!r},"
                    f" base offset {part.base_offset} (expected {index})"
                )
        self.acked += 1

    def produce_until(self, requests: int) -> None:
        """Send until `requests` requests in all were sent, then wait for every ack."""
        out = bytearray()
        while self.sent < requests:
            while self.sent < requests and self.sent - self.acked < self.window:
                out += self._frame_for(self.sent)
                self.sent += 1
                if len(out) > 64 * 1024:
                    break
            if out:
                self.conn.sock.sendall(out)
                out.clear()
            if self.sent - self.acked >= self.window:
                self._receive_one()
        while self.acked < self.sent:
            self._receive_one()


# The agent process -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class AgentRun:
    data_dir: Path
    port: int
    flags: list[str]
    log_path: Path
    agent_src: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout_s: float = 120.0) -> float:
        """Start the agent; seconds from spawning the process to the port accepting."""
        args = [
            sys.executable,
            "-m",
            "driftlog.cli.main",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            *self.flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOG_")}
        if self.agent_src is not None:
            env["PYTHONPATH"] = str(self.agent_src.resolve())
        with self.log_path.open("ab") as log:
            started = time.monotonic()
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"agent exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                with socket.create_connection(self.address, timeout=1):
                    return time.monotonic() - started
            except OSError:
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"agent not listening after {timeout_s}s") from None
                time.sleep(0.002)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu_s(self) -> float:
        """User plus system CPU seconds the agent has used."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise
        return self.process.returncode


def create_topic(address: tuple[str, int]) -> None:
    """Metadata with auto-creation: the agent makes it with --default-partitions."""
    conn = Connection(address)
    try:
        for _ in range(50):
            response = conn.request(
                MetadataRequest(
                    topics=(MetadataRequestTopic(name=TopicName(TOPIC), topic_id=None),),
                    allow_auto_topic_creation=True,
                    include_topic_authorized_operations=False,
                )
            )
            if response.topics[0].error_code == ErrorCode.none:
                return
            time.sleep(0.1)
        raise RuntimeError(f"topic not created: {response.topics[0].error_code!r}")
    finally:
        conn.close()


def fetch_first(
    conn: Connection, partition: int, offset: int, max_bytes: int
) -> tuple[float, int, bytes]:
    """(seconds, offset, value) of the first record a Fetch at `offset` returns.

    `max_bytes` is the request's and the partition's limit; 1 returns exactly one
    batch (the first batch is always returned whole, KIP-74).
    """
    request = FetchRequest(
        replica_id=BrokerId(-1),
        max_wait=i32Timedelta.parse(datetime.timedelta(0)),
        min_bytes=i32(0),
        max_bytes=i32(max_bytes),
        topics=(
            FetchTopic(
                topic=TopicName(TOPIC),
                partitions=(
                    FetchPartition(
                        partition=i32(partition),
                        fetch_offset=i64(offset),
                        partition_max_bytes=i32(max_bytes),
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
    )
    started = time.perf_counter()
    response = conn.request(request)
    elapsed = time.perf_counter() - started
    data = response.responses[0].partitions[0]
    if data.error_code != ErrorCode.none or not data.records:
        raise RuntimeError(f"fetch at {partition}/{offset}: {data.error_code!r}, no records")
    got_offset, value = first_record(bytes(data.records))
    return elapsed, got_offset, value


def consumer_first_message_s(bootstrap: str, partition: int) -> tuple[float, bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "memory-bench", "enable.auto.commit": False}
    )
    try:
        started = time.monotonic()
        consumer.assign([TopicPartition(TOPIC, partition, 0)])
        while time.monotonic() - started < 60:
            message = consumer.poll(0.05)
            if message is not None and not message.error():
                value: bytes = message.value()
                if message.offset() != 0:
                    raise RuntimeError(f"first message at offset {message.offset()}")
                return time.monotonic() - started, value
        raise TimeoutError("no message from offset 0 within 60 s")
    finally:
        consumer.close()


# The run -----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    batches: int
    rss_mib: float
    elapsed_s: float
    agent_cpu_s: float


@dataclass
class Report:
    batches: int = 0
    partitions: int = 0
    fresh_start_s: float = 0.0
    fresh_rss_mib: float = 0.0
    checkpoints: list[Checkpoint] = field(default_factory=list)
    produce_s: float = 0.0
    stop_exit_code: int = 0
    restart_s: float = 0.0
    restart_rss_mib: float = 0.0
    fetch_offset0_first_ms: float = 0.0  # one batch, the first fetch after the restart
    fetch_offset0_median_ms: float = 0.0  # one batch
    fetch_offset0_1mib_median_ms: float = 0.0  # up to 1 MiB
    fetch_tail_median_ms: float = 0.0  # one batch
    rss_after_reads_mib: float = 0.0
    consumer_first_message_s: float = 0.0
    data_dir_mib: float = 0.0


def _mib(n: int) -> float:
    return round(n / MiB, 1)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args: argparse.Namespace, workdir: Path) -> Report:
    partitions: int = args.partitions
    requests = -(-args.batches // partitions)
    report = Report(batches=requests * partitions, partitions=partitions)
    flags = [
        "--flush-ms",
        str(args.flush_ms),
        "--cache-bytes",
        str(args.cache_bytes),
        "--default-partitions",
        str(partitions),
        "--log-level",
        "WARNING",
    ]
    agent = AgentRun(workdir / "data", free_port(), flags, workdir / "agent.log", args.agent_src)
    report.fresh_start_s = agent.start()
    report.fresh_rss_mib = _mib(agent.rss())
    print(
        f"fresh agent: listening after {report.fresh_start_s:.2f} s,"
        f" RSS {report.fresh_rss_mib} MiB",
        flush=True,
    )
    try:
        create_topic(agent.address)
        producer = PipelinedProducer(agent.address, partitions, args.window)
        started = time.monotonic()
        for fraction in sorted(float(f) for f in args.checkpoints.split(",")):
            producer.produce_until(max(1, round(requests * fraction)))
            point = Checkpoint(
                producer.acked * partitions,
                _mib(agent.rss()),
                round(time.monotonic() - started, 2),
                round(agent.cpu_s(), 2),
            )
            report.checkpoints.append(point)
            print(
                f"  {point.batches:>9,} batches: RSS {point.rss_mib:7.1f} MiB"
                f"  ({point.batches / point.elapsed_s:,.0f} batches/s so far,"
                f" agent CPU {point.agent_cpu_s:.1f} s)",
                flush=True,
            )
        report.produce_s = time.monotonic() - started
        producer.conn.close()
        report.stop_exit_code = agent.stop()
        report.data_dir_mib = _mib(_dir_bytes(agent.data_dir))

        report.restart_s = agent.start()
        report.restart_rss_mib = _mib(agent.rss())
        print(
            f"restart: listening after {report.restart_s:.2f} s, RSS {report.restart_rss_mib} MiB",
            flush=True,
        )
        conn = Connection(agent.address)
        last = requests - 1
        timings: dict[tuple[int, int], list[float]] = {}
        for p in range(partitions):
            for offset, max_bytes in ((0, 1), (last, 1), (0, MiB)):
                seconds, got, value = fetch_first(conn, p, offset, max_bytes)
                if (got, value) != (offset, value_of(p, offset)):
                    raise RuntimeError(f"partition {p} offset {offset} holds {got}: {value!r}")
                timings.setdefault((offset, max_bytes), []).append(seconds)
        conn.close()

        def median_ms(key: tuple[int, int]) -> float:
            return round(statistics.median(timings[key]) * 1000, 2)

        report.fetch_offset0_first_ms = round(timings[(0, 1)][0] * 1000, 2)
        report.fetch_offset0_median_ms = median_ms((0, 1))
        report.fetch_offset0_1mib_median_ms = median_ms((0, MiB))
        report.fetch_tail_median_ms = median_ms((last, 1))
        seconds, value = consumer_first_message_s(f"127.0.0.1:{agent.port}", partitions - 1)
        if value != value_of(partitions - 1, 0):
            raise RuntimeError(f"consumer read {value!r} at offset 0")
        report.consumer_first_message_s = round(seconds, 3)
        report.rss_after_reads_mib = _mib(agent.rss())
    finally:
        agent.stop()
    return report


def render(report: Report, command: str) -> str:
    lines = [
        f"command: {command}",
        f"{report.batches:,} one-record batches over {report.partitions} partitions"
        f" in {report.produce_s:.1f} s ({report.batches / report.produce_s:,.0f} batches/s)",
        f"fresh agent (empty data dir): listening after {report.fresh_start_s:.2f} s,"
        f" RSS {report.fresh_rss_mib} MiB",
        "RSS while producing:",
    ]
    lines += [f"  {c.batches:>11,} batches  {c.rss_mib:7.1f} MiB" for c in report.checkpoints]
    lines += [
        f"SIGTERM exit code {report.stop_exit_code}; data dir {report.data_dir_mib} MiB",
        f"restart: listening after {report.restart_s:.2f} s, RSS {report.restart_rss_mib} MiB",
        "raw Fetch (v12, one partition, medians over partitions):",
        f"  offset 0, one batch: {report.fetch_offset0_median_ms} ms"
        f" (first fetch after the restart: {report.fetch_offset0_first_ms} ms)",
        f"  offset 0, up to 1 MiB: {report.fetch_offset0_1mib_median_ms} ms",
        f"  last offset, one batch: {report.fetch_tail_median_ms} ms",
        f"confluent-kafka consumer, assign at offset 0 to first message:"
        f" {report.consumer_first_message_s} s",
        f"RSS after those reads: {report.rss_after_reads_mib} MiB",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=1_000_000, help="one-record batches")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--window", type=int, default=128, help="Produce requests in flight")
    parser.add_argument("--flush-ms", type=int, default=5)
    parser.add_argument("--cache-bytes", type=int, default=8 * MiB)
    parser.add_argument("--checkpoints", default="0.1,0.25,0.5,0.75,1.0")
    parser.add_argument(
        "--agent-src",
        type=Path,
        help="run the agent from this source tree (its PYTHONPATH), e.g. an export of another"
        " commit's src/; default: the driftlog the interpreter imports",
    )
    parser.add_argument("--workdir", type=Path, help="keep the data directory and log here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, args.workdir)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="driftlog-memory-"))
        try:
            report = run(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report, command))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
