"""Compaction and garbage collection: what they buy on reads, what they cost, and that
they lose nothing.

What it measures
----------------
All real processes and clients: ``driftlog serve`` agents (embedded SQLite coordinator,
local-directory store, one temporary data directory reused by every phase) and
confluent-kafka clients in this process.

1. Produce (compaction off: ``--compaction-interval-ms 0``, ``--flush-ms`` short):
   low traffic that leaves many small objects. ``--rounds`` times, the producer sends
   ``--records-per-round`` records (key ``--key-size`` bytes, random value
   ``--value-size`` bytes, explicit timestamps) to consecutive partitions of a
   ``--partitions``-partition topic and waits for every ack (``flush()``), so each
   round is one small object of one-record batches (acks=all, no compression, not
   idempotent). The agent's PUTs per GiB come from its ``driftlog-stats`` line.
2. Before compaction: live objects and bytes are read from the coordinator file
   (``objects`` with ``dead_since_ms`` unset; ``batches``). The agent is restarted with
   ``--cache-bytes`` (0 by default: every read is a GET), compaction and GC off; its
   resident memory (VmRSS) is read ``--settle-s`` after it accepts connections; then a
   consumer (``assign()`` at the beginning of every partition) reads everything back,
   and the agent's GETs come from its stats line on SIGTERM.
3. Compaction: the agent is restarted with ``--compaction-interval-ms`` (100),
   ``--compaction-min-age-ms 0`` and the other compaction options at their defaults
   (4 MiB small-object limit, 64 MiB target; a run reads at most 2,000 objects and
   writes one), and GC every ``--gc-interval-ms`` (500) with ``--gc-delete-grace-ms``
   (1000); the GC delete rate stays at its default (200 objects/s), so GC time below
   is mostly that limit. Compaction has caught up when no level holds enough small
   live objects to merge (two at level 0, ``FAN_IN`` above) and the live count has
   not moved for ``--settle-s``; its time is from the agent accepting connections to
   the last change of the live count (polled every 50 ms, so up to one compaction
   interval of idle time is included). GC has caught up when the store directory holds
   exactly the live objects. Bytes read and written by compaction are the agent's
   ``object_bytes_got`` / ``object_bytes_put`` for this run (nothing else reads or
   writes then); throughput is bytes read / compaction time.
4. After compaction: the same as 2. The records read back before and after must equal
   what was acknowledged: the same partitions, offsets (dense from 0, up to the high
   watermark) and, per record, key, value and timestamp (a BLAKE2b digest each;
   the table shows a digest over all of them). Any difference fails the run.

"Per GiB" is per GiB (2^30) of stored batch bytes (``sum(byte_length)`` of the live
batches, record overhead included), the same amount before and after, so objects/GiB
and GETs/GiB compare directly; payload (key + value) bytes are printed alongside. RSS
per million batches is the restarted agent's RSS above that of a fresh agent on an
empty data directory, scaled to a million batches; with tens of thousands of batches it
is mostly noise (the coordinator keeps no per-batch index), so the batch count is shown.

Reading the figures: with the local-directory store a GET is a file read, well under a
millisecond, so fewer GETs barely change consume MB/s here (per-batch work in the agent
and the Python client dominate; on S3 every GET costs a request fee and a round trip).
The compactor reads its source objects one after another and swaps all their batches
in one coordinator transaction, so its time grows with the number of objects and
batches rather than bytes: MB/s is low for tiny objects.

Consume MB/s is payload bytes over the window from the first record to the last. The
data set is small (about 10 MB by default), so these rates and the compaction time are
short measurements on a machine whose two cores are shared by the agent, the client
and anything else running: expect ±20% or more between runs. The object and GET
counts are exact for a given run.

How to run
----------
From the repository root::

    .venv/bin/python bench/lifecycle.py                      # 3,000 rounds x 16 records
    .venv/bin/python bench/lifecycle.py --rounds 500 --json lifecycle.json
    .venv/bin/python bench/lifecycle.py --partitions 48 --records-per-round 48 --keep-data

Exit status 0 when every phase completed and the data read back was identical, 1
otherwise (the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but not for mypy

from driftlog.lifecycle.compactor import FAN_IN

HOST = "127.0.0.1"
GIB = 1 << 30
MIB = 1 << 20
MB = 1_000_000
TOPIC = "bench-lifecycle"
BASE_TIMESTAMP_MS = 1_700_000_000_000

# (partition, offset) -> digest of (key, value, timestamp)
Digests = dict[tuple[int, int], bytes]


class BenchError(Exception):
    """A phase failed, timed out, or read back different data."""


# --------------------------------------------------------------------------- the agent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def find_driftlog(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "driftlog"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("driftlog")
    if found is None:
        raise BenchError("driftlog executable not found (pip install -e '.[dev]')")
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Agent:
    """One ``driftlog serve`` process on the shared data directory."""

    def __init__(
        self, binary: str, data_dir: Path, name: str, flags: Sequence[str], workdir: Path
    ) -> None:
        self.name = name
        self.port = free_port()
        self.bootstrap = f"{HOST}:{self.port}"
        self.argv = [
            binary,
            "serve",
            "--listen",
            self.bootstrap,
            "--advertise",
            self.bootstrap,
            "--data-dir",
            str(data_dir),
            *flags,
        ]
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        """Start; seconds until the port accepts connections."""
        # DRIFTLOG_* variables set option defaults; cleared so the shell cannot change
        # what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOG_")}
        with self.stderr_path.open("wb") as err:
            started = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,  # Ctrl-C on the bench does not hit the agent
            )
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name}: agent exited with {self.proc.returncode} during startup:\n"
                    + tail(self.stderr_path)
                )
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise BenchError(f"{self.name}: agent not accepting after {timeout:g}s")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float) -> dict[str, Any]:
        """SIGTERM, wait, and return the ``driftlog-stats`` it printed; SIGKILL is an error."""
        proc = self.proc
        if proc is None:
            raise BenchError(f"{self.name}: never started")
        if proc.poll() is not None:
            raise BenchError(
                f"{self.name}: agent exited by itself with {proc.returncode}:\n"
                + tail(self.stderr_path)
            )
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise BenchError(
                f"{self.name}: no exit within {timeout:g}s of SIGTERM; killed"
            ) from None
        stats = parse_stats(self.stderr_path)
        if stats is None:
            raise BenchError(
                f"{self.name}: no driftlog-stats line (exit {proc.returncode}):\n"
                + tail(self.stderr_path)
            )
        return stats

    def kill(self) -> None:
        """Cleanup after a failure: this process only."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def parse_stats(stderr_path: Path) -> dict[str, Any] | None:
    for line in reversed(stderr_path.read_text(errors="replace").splitlines()):
        if line.startswith("driftlog-stats "):
            try:
                stats = json.loads(line[len("driftlog-stats ") :])
            except json.JSONDecodeError:
                return None
            return stats if isinstance(stats, dict) else None
    return None


def stat_int(stats: dict[str, Any], key: str) -> int:
    value = stats.get(key)
    if not isinstance(value, int):
        raise BenchError(f"driftlog-stats has no integer {key!r}")
    return value


# --------------------------------------------------------------------------- the store


@dataclass
class StoreState:
    live_objects: int
    live_object_bytes: int
    dead_not_deleted: int  # dead objects still in the store per the coordinator
    batches: int
    batch_bytes: int  # sum of the live batches' byte lengths
    live_by_level: dict[int, int]
    small_live_by_level: dict[int, int]  # below the compaction size limit
    store_files: int  # files in DATA_DIR/objects (temporary names excluded)
    store_bytes: int


def store_state(data_dir: Path, small_object_bytes: int) -> StoreState:
    """Counts from the coordinator file (read-only, safe while the agent runs) and the
    store directory."""
    db = sqlite3.connect(f"file:{data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        live, live_bytes, dead = db.execute(
            "SELECT count(*) FILTER (WHERE dead_since_ms IS NULL),"
            " coalesce(sum(size) FILTER (WHERE dead_since_ms IS NULL), 0),"
            " count(*) FILTER (WHERE dead_since_ms IS NOT NULL AND deleted_ms IS NULL)"
            " FROM objects"
        ).fetchone()
        batches, batch_bytes = db.execute(
            "SELECT count(*), coalesce(sum(byte_length), 0) FROM batches"
        ).fetchone()
        by_level: dict[int, int] = {}
        small: dict[int, int] = {}
        for level, count, small_count in db.execute(
            "SELECT level, count(*), count(*) FILTER (WHERE size < ?) FROM objects"
            " WHERE dead_since_ms IS NULL GROUP BY level",
            (small_object_bytes,),
        ):
            by_level[int(level)] = int(count)
            small[int(level)] = int(small_count)
    finally:
        db.close()
    files = 0
    size = 0
    for path in (data_dir / "objects").rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):  # GC may delete it meanwhile
                size += path.stat().st_size
                files += 1
    return StoreState(
        live_objects=int(live),
        live_object_bytes=int(live_bytes),
        dead_not_deleted=int(dead),
        batches=int(batches),
        batch_bytes=int(batch_bytes),
        live_by_level=by_level,
        small_live_by_level=small,
        store_files=files,
        store_bytes=size,
    )


def mergeable(state: StoreState) -> bool:
    """Whether the compactor still has work: its rule in lifecycle/compactor.py."""
    return any(
        count >= (2 if level == 0 else FAN_IN) for level, count in state.small_live_by_level.items()
    )


# --------------------------------------------------------------------------- clients


def record_digest(key: bytes | None, value: bytes | None, timestamp_ms: int) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (key, value):
        if part is None:
            h.update(b"\xff\xff\xff\xff")
        else:
            h.update(struct.pack(">i", len(part)))
            h.update(part)
    h.update(struct.pack(">q", timestamp_ms))
    return h.digest()


def overall_digest(digests: Digests) -> str:
    h = hashlib.blake2b(digest_size=16)
    for (partition, offset), digest in sorted(digests.items()):
        h.update(struct.pack(">iq", partition, offset))
        h.update(digest)
    return h.hexdigest()


def create_topic(bootstrap: str, partitions: int, timeout: float) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(TOPIC, num_partitions=partitions, replication_factor=1)],
        request_timeout=timeout,
    )
    try:
        futures[TOPIC].result(timeout=timeout)
    except KafkaException as exc:
        raise BenchError(f"create_topics failed: {exc}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tmd = admin.list_topics(topic=TOPIC, timeout=5).topics.get(TOPIC)
        if tmd is not None and tmd.error is None and len(tmd.partitions) == partitions:
            return
        time.sleep(0.1)
    raise BenchError(f"topic {TOPIC} has no leaders after {timeout:g}s")


@dataclass
class Produced:
    records: int
    payload_bytes: int
    seconds: float
    digests: Digests = field(repr=False)


def produce(bootstrap: str, args: argparse.Namespace) -> Produced:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 1,
            "compression.type": "none",
            "message.timeout.ms": int(args.timeout * 1000),
        }
    )
    digests: Digests = {}
    errors: list[str] = []

    def delivered(timestamp_ms: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        digests[(partition, offset)] = record_digest(msg.key(), msg.value(), timestamp_ms)

    values = [os.urandom(args.value_size) for _ in range(64)]
    index = 0
    payload = 0
    deadline = time.monotonic() + args.timeout
    started = time.perf_counter()
    try:
        for round_no in range(args.rounds):
            for _ in range(args.records_per_round):
                key = (b"%0*d" % (args.key_size, index))[-args.key_size :]
                value = values[index % len(values)]
                timestamp_ms = BASE_TIMESTAMP_MS + index
                producer.produce(
                    TOPIC,
                    value=value,
                    key=key,
                    partition=index % args.partitions,
                    timestamp=timestamp_ms,
                    on_delivery=functools.partial(delivered, timestamp_ms),
                )
                payload += len(key) + len(value)
                index += 1
            left = producer.flush(max(0.0, deadline - time.monotonic()))
            if left or errors:
                raise BenchError(
                    f"produce round {round_no}: {left} records unacknowledged,"
                    f" {len(errors)} failed (first: {errors[0] if errors else '-'})"
                )
            if round_no % 500 == 499:
                print(f"  {round_no + 1:,} rounds", file=sys.stderr, flush=True)
    except BaseException:
        producer.purge()
        producer.poll(0)
        raise
    seconds = time.perf_counter() - started
    if len(digests) != index:
        raise BenchError(f"{len(digests)} distinct (partition, offset) acks for {index} records")
    return Produced(index, payload, seconds, digests)


@dataclass
class Consumed:
    records: int
    payload_bytes: int
    seconds: float  # assign() to the last record
    first_record_s: float
    digests: Digests = field(repr=False)

    @property
    def mb_s(self) -> float:
        window = self.seconds - self.first_record_s
        return self.payload_bytes / MB / window if window > 0 else float("nan")


def consume(bootstrap: str, expected: dict[int, int], timeout: float) -> Consumed:
    """Read every partition from the beginning until `expected` records each; check the
    high watermarks so nothing beyond them exists either."""
    total = sum(expected.values())
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-lifecycle-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    digests: Digests = {}
    payload = 0
    first_error: str | None = None
    first_record_s = float("nan")
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in sorted(expected)])
        while len(digests) < total:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"consume timed out after {timeout:g}s: {len(digests)}/{total} records"
                    + (f"; first error: {first_error}" if first_error else "")
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and first_error is None:
                        first_error = str(err)
                    continue
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                if (partition, offset) in digests:
                    raise BenchError(f"partition {partition} offset {offset} read twice")
                key, value = msg.key(), msg.value()
                _, timestamp_ms = msg.timestamp()
                digests[(partition, offset)] = record_digest(key, value, timestamp_ms)
                payload += len(key or b"") + len(value or b"")
                if len(digests) == 1:
                    first_record_s = time.perf_counter() - started
        seconds = time.perf_counter() - started
        # Stop fetching first: a watermark query otherwise queues behind a long poll.
        consumer.unassign()
        for partition, count in expected.items():
            low, high = consumer.get_watermark_offsets(
                TopicPartition(TOPIC, partition), timeout=10, cached=False
            )
            if (low, high) != (0, count):
                raise BenchError(
                    f"partition {partition}: watermarks {low}..{high}, expected 0..{count}"
                )
    finally:
        consumer.close()
    return Consumed(len(digests), payload, seconds, first_record_s, digests)


def compare(name: str, got: Digests, want: Digests) -> None:
    """Fail loudly, naming the first few differences."""
    if got == want:
        return
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    changed = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    raise BenchError(
        f"{name}: data read back differs from what was acknowledged:"
        f" {len(missing)} missing (first {missing[:5]}), {len(extra)} unexpected"
        f" (first {extra[:5]}), {len(changed)} with other key/value/timestamp"
        f" (first {changed[:5]})"
    )


# --------------------------------------------------------------------------- phases


@dataclass
class ReadRun:
    """A restarted agent: its memory, and a consumer reading everything."""

    state: StoreState
    restart_s: float
    rss_mib: float
    rss_after_consume_mib: float
    records: int
    payload_bytes: int
    consume_s: float
    first_record_s: float
    consume_mb_s: float
    gets: int
    bytes_got: int
    cache_hits: int
    digest: str

    @property
    def objects_per_gib(self) -> float:
        return self.state.live_objects / (self.state.batch_bytes / GIB)

    @property
    def gets_per_gib(self) -> float:
        return self.gets / (self.state.batch_bytes / GIB)


@dataclass
class CompactionRun:
    seconds: float  # agent accepting -> last change of the live object count
    gc_seconds: float  # agent accepting -> store holds only live objects
    bytes_read: int
    bytes_written: int
    objects_written: int
    objects_compacted: int
    batches_moved: int
    dead_deleted: int
    orphans_deleted: int
    puts: int
    gets: int
    deletes: int

    @property
    def mb_s(self) -> float:
        return self.bytes_read / MB / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Report:
    config: dict[str, Any]
    produce_records: int = 0
    produce_payload_bytes: int = 0
    produce_s: float = 0.0
    produce_puts: int = 0
    produce_bytes_put: int = 0
    empty_agent_rss_mib: float = 0.0
    before: ReadRun | None = None
    compaction: CompactionRun | None = None
    after: ReadRun | None = None
    digest: str = ""
    error: str | None = None


def read_run(
    binary: str,
    data_dir: Path,
    workdir: Path,
    name: str,
    produced: Produced,
    args: argparse.Namespace,
    agents: list[Agent],
) -> ReadRun:
    state = store_state(data_dir, args.compaction_small_object_bytes)
    flags = [
        "--compaction-interval-ms",
        "0",
        "--gc-interval-ms",
        "0",
        "--cache-bytes",
        str(args.cache_bytes),
        *args.driftlog_arg,
    ]
    agent = Agent(binary, data_dir, name, flags, workdir)
    agents.append(agent)
    restart_s = agent.start(args.startup_timeout)
    time.sleep(args.settle_s)
    rss = agent.rss()
    print(
        f"[{name}] restarted in {restart_s:.2f}s, RSS {rss / MIB:.1f} MiB; consuming",
        file=sys.stderr,
        flush=True,
    )
    expected: dict[int, int] = {}
    for partition, _ in produced.digests:
        expected[partition] = expected.get(partition, 0) + 1
    consumed = consume(agent.bootstrap, expected, args.timeout)
    rss_after = agent.rss()
    stats = agent.stop(args.stop_timeout)
    if stats.get("missing_objects"):
        raise BenchError(f"{name}: the agent reported missing objects: {stats['missing_objects']}")
    compare(name, consumed.digests, produced.digests)
    return ReadRun(
        state=state,
        restart_s=restart_s,
        rss_mib=rss / MIB,
        rss_after_consume_mib=rss_after / MIB,
        records=consumed.records,
        payload_bytes=consumed.payload_bytes,
        consume_s=consumed.seconds,
        first_record_s=consumed.first_record_s,
        consume_mb_s=consumed.mb_s,
        gets=stat_int(stats, "object_gets"),
        bytes_got=stat_int(stats, "object_bytes_got"),
        cache_hits=stat_int(stats, "cache_hits"),
        digest=overall_digest(consumed.digests),
    )


def compaction_run(
    binary: str, data_dir: Path, workdir: Path, args: argparse.Namespace, agents: list[Agent]
) -> CompactionRun:
    flags = [
        "--compaction-interval-ms",
        str(args.compaction_interval_ms),
        "--compaction-min-age-ms",
        "0",
        "--compaction-small-object-bytes",
        str(args.compaction_small_object_bytes),
        "--gc-interval-ms",
        str(args.gc_interval_ms),
        "--gc-delete-grace-ms",
        str(args.gc_delete_grace_ms),
        *args.driftlog_arg,
    ]
    agent = Agent(binary, data_dir, "compaction", flags, workdir)
    agents.append(agent)
    agent.start(args.startup_timeout)
    started = time.monotonic()
    deadline = started + args.timeout
    state = store_state(data_dir, args.compaction_small_object_bytes)
    last_count = state.live_objects
    last_change = started
    compacted_at: float | None = None
    gc_at: float | None = None
    next_report = started + 5
    while compacted_at is None or gc_at is None:
        now = time.monotonic()
        if now > deadline:
            raise BenchError(
                f"compaction/GC not caught up after {args.timeout:g}s: {state.live_objects}"
                f" live objects (by level {state.live_by_level}), {state.store_files} in the store"
            )
        time.sleep(0.05)
        state = store_state(data_dir, args.compaction_small_object_bytes)
        now = time.monotonic()
        if state.live_objects != last_count:
            last_count, last_change = state.live_objects, now
            compacted_at = None
        if compacted_at is None and not mergeable(state) and now - last_change >= args.settle_s:
            compacted_at = last_change
        if (
            compacted_at is not None
            and state.store_files == state.live_objects
            and state.dead_not_deleted == 0
        ):
            gc_at = now
        if now >= next_report:
            next_report = now + 5
            print(
                f"[compaction] {state.live_objects:,} live objects {state.live_by_level},"
                f" {state.store_files:,} files in the store",
                file=sys.stderr,
                flush=True,
            )
    stats = agent.stop(args.stop_timeout)
    return CompactionRun(
        seconds=compacted_at - started,
        gc_seconds=gc_at - started,
        bytes_read=stat_int(stats, "object_bytes_got"),
        bytes_written=stat_int(stats, "object_bytes_put"),
        objects_written=stat_int(stats, "compaction_objects_written"),
        objects_compacted=stat_int(stats, "compaction_objects_compacted"),
        batches_moved=stat_int(stats, "compaction_batches_moved"),
        dead_deleted=stat_int(stats, "gc_dead_objects_deleted"),
        orphans_deleted=stat_int(stats, "gc_orphans_deleted"),
        puts=stat_int(stats, "object_puts"),
        gets=stat_int(stats, "object_gets"),
        deletes=stat_int(stats, "object_deletes"),
    )


def run(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    binary = find_driftlog(args.driftlog_bin)
    data_dir = workdir / "data"
    agents: list[Agent] = []
    try:
        # 1. Produce, compaction off.
        flags = ["--flush-ms", str(args.flush_ms), "--compaction-interval-ms", "0"]
        agent = Agent(binary, data_dir, "produce", [*flags, *args.driftlog_arg], workdir)
        agents.append(agent)
        agent.start(args.startup_timeout)
        time.sleep(args.settle_s)
        report.empty_agent_rss_mib = agent.rss() / MIB
        create_topic(agent.bootstrap, args.partitions, args.timeout)
        print(
            f"[produce] {args.rounds:,} rounds x {args.records_per_round} records"
            f" over {args.partitions} partitions",
            file=sys.stderr,
            flush=True,
        )
        produced = produce(agent.bootstrap, args)
        stats = agent.stop(args.stop_timeout)
        report.produce_records = produced.records
        report.produce_payload_bytes = produced.payload_bytes
        report.produce_s = produced.seconds
        report.produce_puts = stat_int(stats, "object_puts")
        report.produce_bytes_put = stat_int(stats, "object_bytes_put")
        report.digest = overall_digest(produced.digests)
        print(f"[produce] done in {produced.seconds:.1f}s", file=sys.stderr, flush=True)

        # 2. Before compaction.
        report.before = read_run(binary, data_dir, workdir, "before", produced, args, agents)

        # 3. Compaction and GC.
        print("[compaction] restarting with compaction and GC on", file=sys.stderr, flush=True)
        report.compaction = compaction_run(binary, data_dir, workdir, args, agents)

        # 4. After compaction.
        report.after = read_run(binary, data_dir, workdir, "after", produced, args, agents)
        if report.after.state.store_files != report.after.state.live_objects:
            raise BenchError(
                f"after GC the store holds {report.after.state.store_files} files for"
                f" {report.after.state.live_objects} live objects"
            )
        if report.after.state.batches != report.before.state.batches:
            raise BenchError(
                f"{report.before.state.batches} batches before compaction,"
                f" {report.after.state.batches} after"
            )
    finally:
        for agent in agents:
            agent.kill()


# --------------------------------------------------------------------------- output


def summary(report: Report) -> dict[str, Any]:
    """The figures the table shows, for ``--json``."""
    before, after, comp = report.before, report.after, report.compaction
    assert before is not None and after is not None and comp is not None
    batches = before.state.batches
    out: dict[str, Any] = {
        "batches": batches,
        "stored_batch_bytes": before.state.batch_bytes,
        "payload_bytes": report.produce_payload_bytes,
        "produce_puts_per_gib": report.produce_puts / (before.state.batch_bytes / GIB),
        "empty_agent_rss_mib": report.empty_agent_rss_mib,
        "compaction_s": comp.seconds,
        "compaction_read_mb_s": comp.mb_s,
        "compaction_bytes_read": comp.bytes_read,
        "compaction_bytes_written": comp.bytes_written,
        "gc_done_s": comp.gc_seconds,
        "digest": report.digest,
    }
    for name, run_ in (("before", before), ("after", after)):
        above = run_.rss_mib - report.empty_agent_rss_mib
        out[name] = {
            "live_objects": run_.state.live_objects,
            "objects_per_gib": run_.objects_per_gib,
            "gets": run_.gets,
            "gets_per_gib": run_.gets_per_gib,
            "consume_mb_s": run_.consume_mb_s,
            "consume_s": run_.consume_s,
            "rss_mib": run_.rss_mib,
            "rss_above_empty_mib": above,
            "rss_above_empty_per_million_batches_mib": above / (batches / 1e6),
            "rss_after_consume_mib": run_.rss_after_consume_mib,
        }
    return out


def render(report: Report) -> str:
    before, after, comp = report.before, report.after, report.compaction
    assert before is not None and after is not None and comp is not None
    cfg = report.config
    fig = summary(report)
    b, a = fig["before"], fig["after"]
    batches = fig["batches"]
    rows: list[tuple[str, str, str]] = [
        ("live objects", f"{b['live_objects']:,}", f"{a['live_objects']:,}"),
        ("objects per GiB", f"{b['objects_per_gib']:,.0f}", f"{a['objects_per_gib']:,.0f}"),
        ("GETs to read everything", f"{b['gets']:,}", f"{a['gets']:,}"),
        ("GETs per GiB read", f"{b['gets_per_gib']:,.0f}", f"{a['gets_per_gib']:,.0f}"),
        ("consume MB/s (payload)", f"{b['consume_mb_s']:.1f}", f"{a['consume_mb_s']:.1f}"),
        ("consume s, assign to last record", f"{b['consume_s']:.2f}", f"{a['consume_s']:.2f}"),
        ("RSS after restart, MiB", f"{b['rss_mib']:.1f}", f"{a['rss_mib']:.1f}"),
        (
            "  above an empty agent, MiB",
            f"{b['rss_above_empty_mib']:+.1f}",
            f"{a['rss_above_empty_mib']:+.1f}",
        ),
        (
            f"  that per 1M batches ({batches:,} here)",
            f"{b['rss_above_empty_per_million_batches_mib']:+.0f}",
            f"{a['rss_above_empty_per_million_batches_mib']:+.0f}",
        ),
        (
            "RSS after consuming, MiB",
            f"{b['rss_after_consume_mib']:.1f}",
            f"{a['rss_after_consume_mib']:.1f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    w1 = max(len("before"), *(len(r[1]) for r in rows))
    w2 = max(len("after"), *(len(r[2]) for r in rows))
    lines = [
        f"{report.produce_records:,} records ({cfg['key_size']} B key + {cfg['value_size']} B"
        f" value) in {cfg['rounds']:,} rounds of {cfg['records_per_round']} over"
        f" {cfg['partitions']} partitions, flush-ms {cfg['flush_ms']};"
        f" reads with cache-bytes {cfg['cache_bytes']}",
        f"{batches:,} batches, {before.state.batch_bytes / MIB:.1f} MiB stored"
        f" ({report.produce_payload_bytes / MIB:.1f} MiB payload);"
        " per GiB = per GiB of stored batches",
        "",
        f"{'':<{width}}  {'before':>{w1}}  {'after':>{w2}}",
        f"{'-' * width}  {'-' * w1}  {'-' * w2}",
    ]
    lines += [f"{x:<{width}}  {y:>{w1}}  {z:>{w2}}" for x, y, z in rows]
    lines += [
        "",
        f"produce: {report.produce_s:.1f} s, {report.produce_puts:,} PUTs ="
        f" {fig['produce_puts_per_gib']:,.0f} PUTs per GiB written"
        f" ({report.produce_bytes_put / report.produce_puts / 1024:.1f} KiB per object)",
        f"compaction: caught up {comp.seconds:.2f} s after the restart; read"
        f" {comp.bytes_read / MB:.1f} MB, wrote {comp.bytes_written / MB:.1f} MB"
        f" = {comp.mb_s:.1f} MB/s read; {comp.objects_compacted:,} objects into"
        f" {comp.objects_written:,} ({comp.gets:,} GETs, {comp.puts:,} PUTs),"
        f" {comp.batches_moved:,} batches moved",
        f"GC: store held only live objects {comp.gc_seconds:.2f} s after the restart;"
        f" {comp.dead_deleted:,} dead objects deleted, {comp.orphans_deleted} orphans"
        f" (delete grace {cfg['gc_delete_grace_ms']} ms, at most 200 deletes/s)",
        f"empty agent RSS {report.empty_agent_rss_mib:.1f} MiB; store after GC:"
        f" {after.state.store_files:,} files, {after.state.store_bytes / MIB:.1f} MiB",
        f"read back identical to what was acknowledged, before and after:"
        f" {before.records:,} records, digest {report.digest}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Compaction and GC of many small objects: reads, memory, cost, integrity.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=3000, help="produce rounds (~ objects)")
    ap.add_argument("--records-per-round", type=int, default=16, help="records per round")
    ap.add_argument("--partitions", type=int, default=32, help="partitions of the topic")
    ap.add_argument("--key-size", type=int, default=16, help="record key bytes")
    ap.add_argument("--value-size", type=int, default=200, help="record value bytes")
    ap.add_argument("--flush-ms", type=int, default=5, help="agent --flush-ms while producing")
    ap.add_argument(
        "--cache-bytes", type=int, default=0, help="agent --cache-bytes for the read restarts"
    )
    ap.add_argument("--compaction-interval-ms", type=int, default=100)
    ap.add_argument(
        "--compaction-small-object-bytes",
        type=int,
        default=4 * MIB,
        help="agent option (its default)",
    )
    ap.add_argument("--gc-interval-ms", type=int, default=500)
    ap.add_argument("--gc-delete-grace-ms", type=int, default=1000)
    ap.add_argument(
        "--settle-s",
        type=float,
        default=2.0,
        help="wait before reading RSS; live count unchanged this long = compaction done",
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per phase")
    ap.add_argument("--startup-timeout", type=float, default=60)
    ap.add_argument("--stop-timeout", type=float, default=60)
    ap.add_argument("--driftlog-bin", help="driftlog executable (default: beside python)")
    ap.add_argument(
        "--driftlog-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every driftlog serve, repeatable",
    )
    ap.add_argument("--keep-data", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if min(args.rounds, args.records_per_round, args.partitions, args.key_size) <= 0:
        ap.error("--rounds, --records-per-round, --partitions and --key-size must be positive")
    if args.value_size < 0 or args.cache_bytes < 0 or args.compaction_interval_ms <= 0:
        ap.error("--value-size and --cache-bytes must be >= 0, --compaction-interval-ms > 0")
    if args.gc_interval_ms <= 0 or args.gc_delete_grace_ms <= 0:
        ap.error("--gc-interval-ms and --gc-delete-grace-ms must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(config={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    workdir = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    try:
        run(args, workdir, report)
    except BenchError as exc:
        report.error = str(exc)
    except KeyboardInterrupt:
        report.error = "interrupted"
    finally:
        if args.keep_data:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        out = {"summary": summary(report) if report.error is None else None, **asdict(report)}
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    if report.error is not None:
        print(f"FAILED: {report.error}")
        return 1
    print()
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
