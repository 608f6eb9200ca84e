"""Soak checker: nothing acknowledged is lost or duplicated, under crashes and faults.

One agent runs with object-store faults on (`--faults`) and advertises a TCP
proxy run by this checker, which cuts client connections mid-stream (a prefix
of a response or request is forwarded, then both sides are aborted), so
responses are lost and clients retry. Several producers write records with
unique ids (`b"<producer>:<seq>:<padding>"`, `seq` in send order) concurrently
through the proxy:

- `confluent-idem`: confluent-kafka, enable.idempotence=true (lz4)
- `kafka-python-idem`: kafka-python, enable_idempotence=True (gzip)
- `aiokafka-idem`: aiokafka, enable_idempotence=True
- `confluent-plain`: confluent-kafka, not idempotent, acks=all, retries on (zstd);
  its duplicates are allowed and reported separately

Every `--kill-interval` seconds the agent gets SIGKILL and restarts on the same
data directory and port. At the end the producers flush (with a deadline), every
partition is read from offset 0 to the high watermark once through the proxy
(cuts still on), then the agent is killed once more and restarted advertising
itself, and every partition is read again directly from it, with the faults
still on. The direct read is what the table reports; the live read must be a
prefix of it.

Violations (exit status 1): an acknowledged record missing, a duplicate from an
idempotent producer, an offset gap, an idempotent producer's records out of send
order within a partition, a record nobody sent, a record in another partition
than it was sent to, an acknowledgement whose offset holds another record, a
read that did not reach the high watermark, or a live read that disagrees with
the read after the restart.

An idempotent producer's duplicate is classified by the producer id, epoch and
sequence stored with each copy (batch headers, read with raw Fetch requests).
Copies under the same id, epoch and sequence mean the broker failed to
deduplicate a retry. Copies under different epochs mean the client re-sent the
record after bumping its epoch, which librdkafka does after a message timeout or
an OUT_OF_ORDER_SEQUENCE_NUMBER that follows a failed request
(confluentinc/librdkafka#4953): no broker can deduplicate those, so they are a
warning unless `--strict-duplicates`.

    .venv/bin/python tests/soak/checker.py --duration 600 --seed 1
    make soak DURATION=600
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import datetime
import functools
import io
import logging
import os
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaProducer
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v4.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.types import TopicName
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i32, i32Timedelta, i64

REPO = Path(__file__).resolve().parents[2]
DRIFTLOG = [sys.executable, "-m", "driftlog.cli.main"]
DEFAULT_FAULTS = (
    "put_error=0.05,get_error=0.05,put_lost_ack=0.02,timeout=0.01,timeout_ms=1500,delay_ms=30"
)
# name -> (client library, idempotent)
PRODUCER_KINDS: dict[str, tuple[str, bool]] = {
    "confluent-idem": ("confluent", True),
    "kafka-python-idem": ("kafka-python", True),
    "aiokafka-idem": ("aiokafka", True),
    "confluent-plain": ("confluent", False),
}
_COMPRESSION = {"confluent-idem": "lz4", "kafka-python-idem": "gzip", "confluent-plain": "zstd"}

# What each producer knows about one of its records.
NOT_SENT, PENDING, ACKED, FAILED = 0, 1, 2, 3

Emit = Callable[[str], None]


class SoakError(Exception):
    """The checker itself could not do its job (not a verdict on the broker)."""


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass
class SoakConfig:
    """One soak run; `cli_command()` is the equivalent command line."""

    duration_s: float = 600.0
    seed: int = 1
    kill_interval_s: float = 20.0
    cut_rate: float = 1.0  # proxy cuts per second, across all connections
    rate: float = 500.0  # records per second, per producer
    partitions: int = 4
    flush_ms: int = 20
    faults: str = DEFAULT_FAULTS  # without seed=: the checker adds it
    producers: tuple[str, ...] = tuple(PRODUCER_KINDS)
    value_bytes: int = 64
    message_timeout_s: float = 30.0
    flush_timeout_s: float = 30.0
    read_timeout_s: float = 120.0
    topic: str = "soak"
    work_dir: Path | None = None
    progress_every_s: float = 10.0
    librdkafka_debug: str = ""  # e.g. "eos,msg": confluent producers log it to clients.log
    # Fail also on an idempotent producer's duplicates that the client re-sent under a new
    # epoch (see LIBRDKAFKA_EPOCH_BUMP); by default they are a warning.
    strict_duplicates: bool = False

    def faults_for(self, start: int) -> str:
        """Each agent start gets its own fault seed (SEED, SEED+1, ...), so restarts differ."""
        return f"{self.faults},seed={self.seed + start - 1}" if self.faults else ""

    def cli_command(self) -> str:
        args = [
            ".venv/bin/python",
            "tests/soak/checker.py",
            f"--duration={self.duration_s:g}",
            f"--seed={self.seed}",
            f"--kill-interval={self.kill_interval_s:g}",
            f"--cut-rate={self.cut_rate:g}",
            f"--rate={self.rate:g}",
            f"--partitions={self.partitions}",
            f"--value-bytes={self.value_bytes}",
            f"--message-timeout={self.message_timeout_s:g}",
            f"--flush-timeout={self.flush_timeout_s:g}",
            f"--read-timeout={self.read_timeout_s:g}",
            f"--faults={self.faults}",
            f"--producers={','.join(self.producers)}",
        ]
        if self.librdkafka_debug:
            args.append(f"--librdkafka-debug={self.librdkafka_debug}")
        if self.strict_duplicates:
            args.append("--strict-duplicates")
        return shlex.join(args)


# --- the agent process --------------------------------------------------------

# Run the agent through this so it dies with the checker even if the checker is
# SIGKILLed (PR_SET_PDEATHSIG); the agent's own command line is what is printed.
_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except Exception:\n"
    "    pass\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AgentProcess:
    """`driftlog serve` on a fixed port and data directory; logs to agent-PORT-N.log."""

    def __init__(self, data_dir: Path, port: int, extra_args: Sequence[str]) -> None:
        self.data_dir = data_dir
        self.port = port
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.logs: list[Path] = []
        self.commands: list[str] = []
        self.unexpected_exits: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, advertise: str, faults: str) -> None:
        self.starts += 1
        log_path = self.data_dir.parent / f"agent-{self.port}-{self.starts}.log"
        args = [
            "serve",
            "--listen",
            self.address,
            "--advertise",
            advertise,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        if faults:
            args += ["--faults", faults]
        self.commands.append(shlex.join([*DRIFTLOG, *args]))
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WITH_PDEATHSIG, "-m", "driftlog.cli.main", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        self._wait_until_listening(30.0)

    def _wait_until_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise SoakError(
                    f"agent exited with {code} while starting; see {self.logs[-1]}:\n"
                    + _tail(self.logs[-1])
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise SoakError(f"agent not listening on {self.address} after {timeout_s}s")

    def check_alive(self) -> bool:
        """False (and noted) if the agent exited without being told to."""
        if self.process is None or self.process.poll() is None:
            return True
        self.unexpected_exits.append(
            f"agent start #{self.starts} exited by itself with {self.process.returncode} "
            f"(log {self.logs[-1]})"
        )
        self.process = None
        return False

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM (drain); the exit status, or None if it did not exit in time (then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.kill9()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the connection-cutting proxy ---------------------------------------------


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    doomed_at: float | None = None
    doomed_direction: str = "response"

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class ChaosProxy:
    """Loopback TCP proxy to the agent that cuts connections at `cut_rate` per second.

    A cut picks a random live connection and a direction (responses two times in
    three); at the next chunk in that direction it forwards a random prefix, then
    aborts both sides. A connection with no traffic in that direction for 2 s is
    aborted anyway. Runs its own event loop in a thread.
    """

    def __init__(self, upstream_port: int, cut_rate: float, seed: int) -> None:
        self._upstream_port = upstream_port
        self._cut_rate = cut_rate
        self._rng = random.Random(seed)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._error: BaseException | None = None
        self.connections = 0
        self.refused = 0
        self.cuts: collections.Counter[str] = collections.Counter()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise SoakError(f"proxy did not start: {self._error!r}")

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(10)
        self._sock.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:
            self._error = e
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock)
        cutter = asyncio.create_task(self._cut_loop())
        self._ready.set()
        await self._stopping.wait()
        cutter.cancel()
        server.close()
        for link in list(self._links):
            link.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self._upstream_port), 5
                )
            except (OSError, TimeoutError):
                self.refused += 1  # the agent is down (being restarted)
                link.abort()
                return
            link.upstream = up_writer
            await asyncio.gather(
                self._pump(reader, up_writer, link, "request"),
                self._pump(up_reader, writer, link, "response"),
            )
        finally:
            self._links.discard(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        direction: str,
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if link.doomed_at is not None and link.doomed_direction == direction:
                    keep = self._rng.randrange(len(data))
                    if keep:
                        writer.write(data[:keep])
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(writer.drain(), 1)
                    self.cuts[f"{direction} mid-stream"] += 1
                    link.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, TimeoutError):
            link.abort()
            return
        # A clean end of one side ends the connection (Kafka never half-closes).
        for w in (link.client, link.upstream):
            if w is not None:
                w.close()

    async def _cut_loop(self) -> None:
        if self._cut_rate <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._rng.expovariate(self._cut_rate))
            now = loop.time()
            for link in list(self._links):
                if link.doomed_at is not None and now - link.doomed_at > 2.0:
                    self.cuts["idle"] += 1
                    link.abort()
                    self._links.discard(link)
            candidates = [
                link for link in self._links if link.upstream is not None and link.doomed_at is None
            ]
            if candidates:
                link = self._rng.choice(candidates)
                link.doomed_at = now
                link.doomed_direction = self._rng.choice(("response", "response", "request"))


# --- producers ---------------------------------------------------------------


def _value_seq(value: bytes | None) -> tuple[str, int] | None:
    if value is None:
        return None
    parts = value.split(b":", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return parts[0].decode(errors="replace"), int(parts[1])


@dataclass
class ProducerLedger:
    """What one producer sent and what it was told, frozen after it stopped."""

    name: str
    client: str
    idempotent: bool
    status: bytes  # per seq: NOT_SENT, PENDING, ACKED, FAILED
    partitions: bytes  # per seq: the partition it was sent to
    acked_offsets: array.array[int]  # per seq: offset in the ack, or -1
    errors: collections.Counter[str]
    events: collections.Counter[str]
    fatal: list[str]
    instances: int
    crashed: str | None
    hung: bool
    max_stall_s: float


class ProducerWorker:
    """One producer in its own thread, sending `rate` records/s until told to stop."""

    def __init__(
        self,
        name: str,
        config: SoakConfig,
        bootstrap: str,
        stop: threading.Event,
        seed: int,
        client_log: logging.Logger,
    ) -> None:
        self.name = name
        self.client, self.idempotent = PRODUCER_KINDS[name]
        self._config = config
        self._bootstrap = bootstrap
        self._stop = stop
        self._rng = random.Random(seed)
        self._log = client_log.getChild(name)
        self.status = bytearray()
        self.partitions = bytearray()
        self.acked_offsets = array.array("q")
        self._lock = threading.Lock()
        self.errors: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.fatal: list[str] = []
        self.instances = 0
        self.crashed: str | None = None
        self._started = 0.0
        self._last_ack = 0.0
        self.max_stall_s = 0.0
        self.flush_deadline = float("inf")
        self._kafka_python_producer: Any = None
        self._pad = b"x" * max(0, config.value_bytes - len(name) - 12)
        self.thread = threading.Thread(target=self._main, name=f"producer-{name}", daemon=True)

    # bookkeeping, called from whatever thread the client reports on ------------
    def _allocate(self) -> tuple[int, int, bytes, bytes]:
        seq = len(self.status)
        partition = self._rng.randrange(self._config.partitions)
        self.partitions.append(partition)
        self.acked_offsets.append(-1)
        self.status.append(PENDING)
        value = b"%s:%d:%s" % (self.name.encode(), seq, self._pad)
        return seq, partition, b"k%d" % (seq % 1000), value

    def acked(self, seq: int, offset: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self.status[seq] == PENDING:
                self.status[seq] = ACKED
                self.acked_offsets[seq] = offset
            else:
                self.events[f"second answer for one record (was {self.status[seq]})"] += 1
            if not self._stop.is_set():
                self.max_stall_s = max(self.max_stall_s, now - self._last_ack)
            self._last_ack = now

    def failed(self, seq: int, error: str) -> None:
        with self._lock:
            if self.status[seq] == PENDING:
                self.status[seq] = FAILED
            else:
                self.events[f"second answer for one record (was {self.status[seq]})"] += 1
            self.errors[error] += 1

    def refused(self, seq: int, error: str) -> None:
        """The client refused the record outright: it never left the process."""
        with self._lock:
            self.status[seq] = NOT_SENT
            self.errors[f"refused: {error}"] += 1

    def event(self, what: str) -> None:
        with self._lock:
            self.events[what] += 1

    def _due(self) -> int:
        return int((time.monotonic() - self._started) * self._config.rate) - len(self.status)

    def ledger(self, hung: bool) -> ProducerLedger:
        with self._lock:
            return ProducerLedger(
                name=self.name,
                client=self.client,
                idempotent=self.idempotent,
                status=bytes(self.status),
                partitions=bytes(self.partitions),
                acked_offsets=array.array("q", self.acked_offsets),
                errors=collections.Counter(self.errors),
                events=collections.Counter(self.events),
                fatal=list(self.fatal),
                instances=self.instances,
                crashed=self.crashed,
                hung=hung,
                max_stall_s=self.max_stall_s,
            )

    # the thread --------------------------------------------------------------
    def _main(self) -> None:
        self._started = self._last_ack = time.monotonic()
        try:
            if self.client == "confluent":
                self._run_confluent()
            elif self.client == "kafka-python":
                self._run_kafka_python()
            else:
                asyncio.run(self._run_aiokafka())
        except BaseException as e:
            self.crashed = f"{type(e).__name__}: {e}"
            self._log.exception("producer thread crashed")

    def _remaining(self) -> float:
        return max(0.0, self.flush_deadline - time.monotonic())

    # confluent-kafka ------------------------------------------------------------
    def _confluent_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self._bootstrap,
            "client.id": self.name,
            "enable.idempotence": self.idempotent,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": _COMPRESSION.get(self.name, "none"),
            "message.timeout.ms": int(self._config.message_timeout_s * 1000),
            "request.timeout.ms": 10000,
            "retry.backoff.ms": 100,
            "retry.backoff.max.ms": 1000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 1000,
            "max.in.flight.requests.per.connection": 5,
            "logger": self._log,
            "error_cb": self._confluent_error,
        }
        if not self.idempotent:
            config["retries"] = 2_147_483_647
        if self._config.librdkafka_debug:
            config["debug"] = self._config.librdkafka_debug
        return config

    def _confluent_error(self, error: KafkaError) -> None:
        if error.fatal():
            with self._lock:
                self.fatal.append(str(error))
        self.event(f"client error {error.name()}")

    def _confluent_delivery(self, error: KafkaError | None, message: Any) -> None:
        parsed = _value_seq(message.value())
        if parsed is None:
            self.event("delivery report for an unknown value")
            return
        if error is None:
            offset = message.offset()
            if offset is None or offset < 0:
                # librdkafka reports some retries it infers were stored without an offset.
                self.event("acknowledged without an offset")
                if self.events["acknowledged without an offset"] <= 3:
                    self._log.warning("acknowledged without an offset: %s", message.value()[:40])
            self.acked(parsed[1], offset if offset is not None else -1)
        else:
            self.failed(parsed[1], error.name())

    def _run_confluent(self) -> None:
        producer = Producer(self._confluent_config())
        self.instances = 1
        topic = self._config.topic
        while not self._stop.is_set():
            if self.fatal and len(self.fatal) >= self.instances:
                # A fatal error ends a producer instance: fail what it holds, start another.
                producer.flush(5)
                producer = Producer(self._confluent_config())
                self.instances += 1
            for _ in range(max(0, self._due())):
                seq, partition, key, value = self._allocate()
                try:
                    producer.produce(
                        topic,
                        value=value,
                        key=key,
                        partition=partition,
                        on_delivery=self._confluent_delivery,
                    )
                except BufferError:
                    self.refused(seq, "BufferError")
                    producer.poll(0.05)
                except KafkaException as e:
                    self.refused(seq, e.args[0].name() if e.args else repr(e))
            producer.poll(0.005)
        producer.flush(self._remaining())
        if len(producer):
            self.event(f"{len(producer)} records unanswered at the flush deadline (purged)")
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.flush(5)

    # kafka-python ---------------------------------------------------------------
    def _kafka_python_timeouts(self) -> tuple[int, int]:
        """(request, delivery) timeouts in ms; kafka-python wants delivery >= linger + request."""
        delivery_ms = int(self._config.message_timeout_s * 1000)
        return min(10000, delivery_ms - 10), delivery_ms

    def _kafka_python_ok(self, seq: int, metadata: Any) -> None:
        self.acked(seq, metadata.offset if metadata.offset is not None else -1)

    def _kafka_python_error(self, seq: int, error: BaseException) -> None:
        self.failed(seq, type(error).__name__)

    def _run_kafka_python(self) -> None:
        producer: Any = None
        request_timeout_ms, delivery_timeout_ms = self._kafka_python_timeouts()
        while producer is None and not self._stop.is_set():
            try:
                producer = KafkaProducer(
                    bootstrap_servers=[self._bootstrap],
                    client_id=self.name,
                    enable_idempotence=self.idempotent,
                    acks="all",
                    linger_ms=5,
                    compression_type=_COMPRESSION.get(self.name),
                    request_timeout_ms=request_timeout_ms,
                    delivery_timeout_ms=delivery_timeout_ms,
                    retry_backoff_ms=100,
                    reconnect_backoff_max_ms=1000,
                    max_block_ms=5000,
                    max_in_flight_requests_per_connection=5,
                )
                self.instances += 1
            except Exception as e:
                self.event(f"constructor failed: {type(e).__name__}")
                time.sleep(0.5)
        if producer is None:
            return
        topic = self._config.topic
        while not self._stop.is_set():
            for _ in range(max(0, self._due())):
                seq, partition, key, value = self._allocate()
                try:
                    future = producer.send(topic, value=value, key=key, partition=partition)
                except Exception as e:
                    self.refused(seq, type(e).__name__)
                    continue
                future.add_callback(self._kafka_python_ok, seq)
                future.add_errback(self._kafka_python_error, seq)
            time.sleep(0.005)
        try:
            producer.flush(timeout=self._remaining())
        except Exception as e:
            self.event(f"flush: {type(e).__name__}")
        self._kafka_python_producer = producer  # not collected (and re-closed) mid-report
        try:
            producer.close(timeout=5)
        except Exception as e:
            self.event(f"close: {type(e).__name__}")

    # aiokafka --------------------------------------------------------------------
    def _aiokafka_done(self, seq: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self.failed(seq, "cancelled")
        elif future.exception() is not None:
            self.failed(seq, type(future.exception()).__name__)
        else:
            metadata = future.result()
            self.acked(seq, metadata.offset if metadata.offset is not None else -1)

    async def _run_aiokafka(self) -> None:
        producer: Any = None
        while producer is None and not self._stop.is_set():
            candidate = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self.name,
                enable_idempotence=self.idempotent,
                acks="all",
                linger_ms=5,
                request_timeout_ms=10000,
                retry_backoff_ms=100,
            )
            try:
                await asyncio.wait_for(candidate.start(), 15)
                producer = candidate
                self.instances += 1
            except Exception as e:
                self.event(f"start failed: {type(e).__name__}")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(candidate.stop(), 5)
                await asyncio.sleep(0.5)
        if producer is None:
            return
        topic = self._config.topic
        while not self._stop.is_set():
            for _ in range(max(0, self._due())):
                seq, partition, key, value = self._allocate()
                try:
                    future = await producer.send(topic, value=value, key=key, partition=partition)
                except Exception as e:
                    # Not appended (no metadata, or no room within the request timeout).
                    self.refused(seq, type(e).__name__)
                    continue
                future.add_done_callback(functools.partial(self._aiokafka_done, seq))
            await asyncio.sleep(0.005)
        try:
            await asyncio.wait_for(producer.flush(), self._remaining())
        except Exception as e:
            self.event(f"flush: {type(e).__name__}")
        try:
            await asyncio.wait_for(producer.stop(), 10)
        except Exception as e:
            self.event(f"stop: {type(e).__name__}")
        await asyncio.sleep(0)  # let the done callbacks of cancelled sends run


# --- reading back ------------------------------------------------------------


@dataclass
class PartitionRead:
    partition: int
    low: int = -1
    high: int = -1
    values: dict[int, bytes] = field(default_factory=dict)  # offset -> value
    redelivered: int = 0  # the same offset delivered again, same value
    conflicting: int = 0  # the same offset delivered again with another value

    def missing_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        start = None
        for offset in range(max(self.low, 0), self.high):
            if offset not in self.values:
                if start is None:
                    start = offset
            elif start is not None:
                ranges.append((start, offset - 1))
                start = None
        if start is not None:
            ranges.append((start, self.high - 1))
        return ranges

    @property
    def complete(self) -> bool:
        return self.high >= 0 and not self.missing_ranges()


@dataclass
class ReadResult:
    label: str
    bootstrap: str
    partitions: list[PartitionRead]
    timed_out: bool
    seconds: float
    errors: collections.Counter[str]


def read_partitions(
    bootstrap: str,
    topic: str,
    partitions: int,
    timeout_s: float,
    label: str,
    logger: logging.Logger,
) -> ReadResult:
    """Every partition from offset 0 to its high watermark (taken first), within timeout_s."""
    started = time.monotonic()
    deadline = started + timeout_s
    errors: collections.Counter[str] = collections.Counter()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-verify-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "check.crcs": True,
            "reconnect.backoff.max.ms": 1000,
            "logger": logger,
            "error_cb": lambda e: errors.update([f"client error {e.name()}"]),
        }
    )
    reads = [PartitionRead(p) for p in range(partitions)]
    timed_out = False
    try:
        for read in reads:
            while True:
                try:
                    marks = consumer.get_watermark_offsets(
                        TopicPartition(topic, read.partition), timeout=5, cached=False
                    )
                except KafkaException as e:
                    errors[f"watermarks: {e.args[0].name() if e.args else e!r}"] += 1
                    marks = None
                if marks is not None:
                    read.low, read.high = marks
                    break
                if time.monotonic() > deadline:
                    errors[f"no watermarks for partition {read.partition}"] += 1
                    timed_out = True
                    break
                time.sleep(0.3)
        readable = [r for r in reads if r.high >= 0]
        consumer.assign([TopicPartition(topic, r.partition, 0) for r in readable])
        position = {r.partition: max(r.low, 0) for r in readable}
        while any(position[r.partition] < r.high for r in readable):
            if time.monotonic() > deadline:
                timed_out = True
                break
            for message in consumer.consume(2000, 0.2):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        errors[f"fetch: {error.name()}"] += 1
                    continue
                read = reads[message.partition()]
                offset = message.offset()
                if offset >= read.high:
                    continue
                value = message.value() or b""
                previous = read.values.get(offset)
                if previous is None:
                    read.values[offset] = value
                elif previous == value:
                    read.redelivered += 1
                else:
                    read.conflicting += 1
                position[read.partition] = max(position[read.partition], offset + 1)
    finally:
        consumer.close()
    return ReadResult(label, bootstrap, reads, timed_out, time.monotonic() - started, errors)


# --- who wrote a stored record: batch headers over the Kafka protocol -------------

Location = tuple[int, int]  # partition, offset
Origin = tuple[int, int, int]  # producer id, producer epoch, the record's sequence
OriginLookup = Callable[[Sequence[Location]], dict[Location, Origin]]


class _RawKafka:
    """Just enough of a Kafka client to send one request and decode its response."""

    def __init__(self, address: str, timeout_s: float) -> None:
        host, port = address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self._correlation_id = 0

    def close(self) -> None:
        self._sock.close()

    def request(self, request: Any) -> Any:
        self._correlation_id += 1
        header_cls: Any = request.__header_schema__
        buf = io.BytesIO()
        header = header_cls(
            request_api_key=request.__api_key__,
            request_api_version=request.__version__,
            correlation_id=i32(self._correlation_id),
            client_id="soak-checker",
        )
        entity_writer(header_cls)(buf, header)
        entity_writer(type(request))(buf, request)
        payload = buf.getvalue()
        self._sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", self._recv(4))
        frame = self._recv(size)
        schema: Any = load_response_schema(request.__api_key__, request.__version__)
        response_header, used = entity_reader(schema.__header_schema__)(frame, 0)
        if response_header.correlation_id != self._correlation_id:
            raise OSError("response out of order")
        body, _ = entity_reader(schema)(frame, used)
        return body

    def _recv(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise OSError("connection closed")
            data += chunk
        return bytes(data)


def _batch_headers(records: bytes) -> list[tuple[int, int, int, int, int]]:
    """(base offset, last offset, producer id, epoch, base sequence) of each whole batch."""
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        if length < 49 or pos + 12 + length > len(records):
            break
        (last_delta,) = struct.unpack_from(">i", records, pos + 23)
        producer_id, epoch, base_sequence = struct.unpack_from(">qhi", records, pos + 43)
        out.append((base, base + last_delta, producer_id, epoch, base_sequence))
        pos += 12 + length
    return out


def record_origins(
    address: str, topic: str, wanted: Sequence[Location], timeout_s: float
) -> dict[Location, Origin]:
    """Producer id, epoch and sequence of the stored records at `wanted`, read from the
    batch headers of raw Fetch responses (what the broker stored, not what a client says)."""
    deadline = time.monotonic() + timeout_s
    headers: dict[int, list[tuple[int, int, int, int, int]]] = collections.defaultdict(list)
    found: dict[Location, Origin] = {}
    client: _RawKafka | None = None

    def resolve(partition: int, offset: int) -> bool:
        for base, last, producer_id, epoch, base_sequence in headers[partition]:
            if base <= offset <= last:
                sequence = base_sequence + offset - base if base_sequence >= 0 else -1
                found[(partition, offset)] = (producer_id, epoch, sequence)
                return True
        return False

    try:
        for partition, offset in sorted(set(wanted)):
            attempts = 0
            while not resolve(partition, offset) and attempts < 10:
                attempts += 1
                if time.monotonic() > deadline:
                    return found
                try:
                    if client is None:
                        client = _RawKafka(address, 10)
                    response = client.request(
                        FetchRequest(
                            max_wait=i32Timedelta.parse(datetime.timedelta(0)),
                            min_bytes=i32(0),
                            max_bytes=i32(1),  # the first batch only (KIP-74): one GET
                            topics=(
                                FetchTopic(
                                    topic=TopicName(topic),
                                    partitions=(
                                        FetchPartition(
                                            partition=i32(partition),
                                            fetch_offset=i64(offset),
                                            partition_max_bytes=i32(1),
                                        ),
                                    ),
                                ),
                            ),
                        )
                    )
                    data = response.responses[0].partitions[0]
                    if data.error_code == ErrorCode.none and data.records:
                        headers[partition].extend(_batch_headers(bytes(data.records)))
                    else:
                        time.sleep(0.2)  # an injected read fault: try again
                except (OSError, struct.error, ValueError):
                    if client is not None:
                        client.close()
                    client = None
                    time.sleep(0.2)
    finally:
        if client is not None:
            client.close()
    return found


# --- verdict ----------------------------------------------------------------------


@dataclass
class ProducerVerdict:
    name: str
    client: str
    idempotent: bool
    sent: int = 0
    acked: int = 0
    failed: int = 0
    unanswered: int = 0
    refused: int = 0
    read: int = 0  # distinct ids read
    missing: int = 0  # acknowledged, not read
    duplicates: int = 0  # extra copies read
    # Of an idempotent producer's duplicates, by the batch headers of the copies:
    dup_new_epoch: int = 0  # re-sent by the client under a new epoch or producer id
    dup_same_sequence: int = 0  # same producer id, epoch and sequence stored twice (broker)
    dup_unexplained: int = 0  # anything else, or headers not readable
    out_of_order: int = 0
    read_unacked_error: int = 0  # read; the producer saw an error (allowed)
    read_unacked_unanswered: int = 0  # read; the producer never got an answer (allowed)
    read_never_sent: int = 0  # read; the producer never sent it (violation)
    misplaced: int = 0  # read in another partition than it was sent to
    ack_offset_mismatch: int = 0  # the acknowledged offset holds something else
    examples: dict[str, list[str]] = field(default_factory=dict)

    def example(self, kind: str, text: str) -> None:
        items = self.examples.setdefault(kind, [])
        if len(items) < 5:
            items.append(text)


@dataclass
class SoakResult:
    config: SoakConfig
    report: str
    violations: list[str]
    warnings: list[str]
    producers: list[ProducerVerdict]
    kills: int
    work_dir: Path

    @property
    def ok(self) -> bool:
        return not self.violations


MAX_CLASSIFIED_DUPLICATES = 50_000
LIBRDKAFKA_EPOCH_BUMP = (
    "librdkafka bumps an idempotent producer's epoch after a message timeout or an "
    "OUT_OF_ORDER_SEQUENCE_NUMBER that follows a failed request, and re-sends records whose "
    "earlier attempt may have been stored with new sequence numbers; no broker can "
    "deduplicate these (confluentinc/librdkafka#4953)"
)


def analyze(
    ledgers: Sequence[ProducerLedger],
    read: ReadResult,
    origins: OriginLookup | None = None,
    strict_duplicates: bool = False,
) -> tuple[list[ProducerVerdict], list[str], list[str]]:
    """Compare what producers were told with what the log holds.

    Returns the verdicts, the violations and the warnings. An idempotent producer's
    duplicate is classified by the producer id, epoch and sequence stored with each
    copy (`origins`): copies under different epochs (or producer ids) were re-sent by
    the client, a warning unless `strict_duplicates`; anything else is a violation.
    """
    violations: list[str] = []
    warnings: list[str] = []
    by_name = {ledger.name: ledger for ledger in ledgers}
    verdicts = {
        ledger.name: ProducerVerdict(ledger.name, ledger.client, ledger.idempotent)
        for ledger in ledgers
    }
    # seq -> first (partition, offset) it was read at, and the count of copies.
    first_at: dict[str, dict[int, Location]] = {name: {} for name in by_name}
    copies: dict[str, collections.Counter[int]] = {name: collections.Counter() for name in by_name}
    # seq -> every location, for ids read more than once
    duplicated: dict[str, dict[int, list[Location]]] = {name: {} for name in by_name}
    foreign = 0
    for part in read.partitions:
        highest: dict[str, int] = {}
        seen_here: dict[str, set[int]] = collections.defaultdict(set)
        for offset in sorted(part.values):
            value = part.values[offset]
            parsed = _value_seq(value)
            if parsed is None or parsed[0] not in by_name:
                foreign += 1
                if foreign <= 5:
                    violations.append(
                        f"partition {part.partition} offset {offset}: unknown record {value[:40]!r}"
                    )
                continue
            name, seq = parsed
            ledger, verdict = by_name[name], verdicts[name]
            if seq >= len(ledger.status) or ledger.status[seq] == NOT_SENT:
                verdict.read_never_sent += 1
                verdict.example("never sent", f"{name}:{seq} at {part.partition}/{offset}")
                continue
            if ledger.partitions[seq] != part.partition:
                verdict.misplaced += 1
                verdict.example(
                    "misplaced",
                    f"{name}:{seq} sent to {ledger.partitions[seq]}, read at "
                    f"{part.partition}/{offset}",
                )
            copies[name][seq] += 1
            first = first_at[name].setdefault(seq, (part.partition, offset))
            if copies[name][seq] > 1:
                duplicated[name].setdefault(seq, [first]).append((part.partition, offset))
            if seq in seen_here[name]:
                continue  # a duplicate, counted below, not also out of order
            seen_here[name].add(seq)
            if seq < highest.get(name, -1):
                verdict.out_of_order += 1
                verdict.example(
                    "out of order",
                    f"{name}:{seq} at {part.partition}/{offset} after {name}:{highest[name]}",
                )
            highest[name] = max(highest.get(name, -1), seq)

    for name, ledger in by_name.items():
        verdict = verdicts[name]
        status = ledger.status
        verdict.refused = status.count(NOT_SENT)
        verdict.sent = len(status) - verdict.refused
        verdict.acked = status.count(ACKED)
        verdict.failed = status.count(FAILED)
        verdict.unanswered = status.count(PENDING)
        verdict.read = len(copies[name])
        for seq, count in copies[name].items():
            if count > 1:
                verdict.duplicates += count - 1
            if status[seq] == FAILED:
                verdict.read_unacked_error += 1
            elif status[seq] == PENDING:
                verdict.read_unacked_unanswered += 1
        for seq in range(len(status)):
            if status[seq] != ACKED:
                continue
            where = first_at[name].get(seq)
            offset = ledger.acked_offsets[seq]
            if where is None:
                verdict.missing += 1
                verdict.example(
                    "missing",
                    f"{name}:{seq} acked at {ledger.partitions[seq]}/{offset}, not read",
                )
                continue
            if offset >= 0:
                held = read.partitions[ledger.partitions[seq]].values.get(offset)
                if _value_seq(held) != (name, seq):
                    verdict.ack_offset_mismatch += 1
                    verdict.example(
                        "ack offset mismatch",
                        f"{name}:{seq} acked at {ledger.partitions[seq]}/{offset}, which holds "
                        f"{(held or b'')[:30]!r}; first read at {where[0]}/{where[1]}",
                    )

    _classify_duplicates(verdicts, duplicated, by_name, origins)

    for verdict in verdicts.values():
        v = verdict
        if v.missing:
            violations.append(f"{v.name}: {v.missing} acknowledged records missing")
        if v.idempotent and v.dup_same_sequence:
            violations.append(
                f"{v.name}: {v.dup_same_sequence} duplicates stored under the same producer id, "
                "epoch and sequence (the broker did not deduplicate a retry)"
            )
        if v.idempotent and v.dup_unexplained:
            violations.append(
                f"{v.name}: {v.dup_unexplained} duplicates from an idempotent producer not "
                "explained by a client epoch bump"
            )
        if v.idempotent and v.dup_new_epoch:
            text = (
                f"{v.name}: {v.dup_new_epoch} duplicates re-sent by the client under a new "
                f"producer epoch; {LIBRDKAFKA_EPOCH_BUMP}"
            )
            if strict_duplicates:
                violations.append(text)
            else:
                warnings.append(text + " (--strict-duplicates makes this a failure)")
        if v.idempotent and v.out_of_order:
            violations.append(f"{v.name}: {v.out_of_order} records out of send order")
        if v.read_never_sent:
            violations.append(f"{v.name}: {v.read_never_sent} records read that were never sent")
        if v.misplaced:
            violations.append(f"{v.name}: {v.misplaced} records in the wrong partition")
        if v.ack_offset_mismatch:
            violations.append(
                f"{v.name}: {v.ack_offset_mismatch} acknowledgements name an offset "
                "holding another record"
            )
    for part in read.partitions:
        gaps = part.missing_ranges()
        if gaps:
            violations.append(
                f"partition {part.partition}: {sum(b - a + 1 for a, b in gaps)} offsets missing "
                f"between {part.low} and {part.high}: {_ranges(gaps)}"
            )
        if part.conflicting:
            violations.append(
                f"partition {part.partition}: {part.conflicting} offsets read twice with "
                "different records"
            )
    for part in read.partitions:
        if part.high < 0:
            violations.append(
                f"partition {part.partition}: no high watermark from the agent within the read "
                "timeout (ListOffsets not answered)"
            )
    if read.timed_out:
        violations.append(f"{read.label} read did not reach the high watermarks in time")
    return list(verdicts.values()), violations, warnings


def _classify_duplicates(
    verdicts: dict[str, ProducerVerdict],
    duplicated: dict[str, dict[int, list[Location]]],
    ledgers: dict[str, ProducerLedger],
    origins: OriginLookup | None,
) -> None:
    wanted: list[Location] = []
    for name, by_seq in duplicated.items():
        if ledgers[name].idempotent:
            for locations in list(by_seq.values())[:MAX_CLASSIFIED_DUPLICATES]:
                wanted += locations
    found = origins(wanted) if origins is not None and wanted else {}
    for name, by_seq in duplicated.items():
        verdict = verdicts[name]
        for seq, locations in by_seq.items():
            extra = len(locations) - 1
            keys = [found.get(location) for location in locations]
            where = " and ".join(
                f"{p}/{o}" + (f" (pid {k[0]} epoch {k[1]} seq {k[2]})" if k else "")
                for (p, o), k in zip(locations, keys, strict=True)
            )
            if not verdict.idempotent:
                verdict.example("duplicate", f"{name}:{seq} at {where}")
                continue
            known = [k for k in keys if k is not None]
            if len(known) < len(keys):
                verdict.dup_unexplained += extra
                verdict.example("duplicate (headers not read)", f"{name}:{seq} at {where}")
            elif len(set(known)) < len(known):
                verdict.dup_same_sequence += extra
                verdict.example("duplicate (same pid/epoch/seq)", f"{name}:{seq} at {where}")
            elif len({(k[0], k[1]) for k in known}) == len(known):
                verdict.dup_new_epoch += extra
                verdict.example("duplicate (client re-sent, new epoch)", f"{name}:{seq} at {where}")
            else:
                verdict.dup_unexplained += extra
                verdict.example("duplicate (same epoch, new sequence)", f"{name}:{seq} at {where}")


def compare_reads(live: ReadResult, final: ReadResult) -> list[str]:
    """The live read (before the last restart) must be a prefix of the final read."""
    problems: list[str] = []
    for before, after in zip(live.partitions, final.partitions, strict=True):
        if after.high < before.high:
            problems.append(
                f"partition {before.partition}: high watermark went back from {before.high} "
                f"to {after.high} across the final restart"
            )
        differ = [
            offset
            for offset, value in before.values.items()
            if offset in after.values and after.values[offset] != value
        ]
        lost = [
            offset for offset in before.values if offset < after.high and offset not in after.values
        ]
        if differ:
            problems.append(
                f"partition {before.partition}: {len(differ)} offsets hold different records "
                f"before and after the final restart, e.g. {sorted(differ)[:5]}"
            )
        if lost:
            problems.append(
                f"partition {before.partition}: {len(lost)} offsets read live are gone after "
                f"the final restart, e.g. {sorted(lost)[:5]}"
            )
    return problems


def _ranges(ranges: Sequence[tuple[int, int]], limit: int = 6) -> str:
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit])
    return text + (f", ... ({len(ranges)} ranges)" if len(ranges) > limit else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


_LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ([\w.]+): (.*)")


def scan_agent_logs(paths: Sequence[Path]) -> list[str]:
    """Counts of warnings and errors in the agent logs, with the distinct error messages."""
    levels: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[str] = collections.Counter()
    tracebacks = 0
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        tracebacks += text.count("Traceback (most recent call last)")
        for line in text.splitlines():
            match = _LOG_LEVEL.search(line)
            if match:
                levels[match.group(1)] += 1
                shape = re.sub(r"[0-9a-f]{32}|\d+", "N", match.group(3))[:140]
                messages[f"{match.group(1)} {match.group(2)}: {shape}"] += 1
    lines = [
        f"agent logs: {len(paths)} files, {levels['WARNING']} warnings, {levels['ERROR']} errors, "
        f"{levels['CRITICAL']} critical, {tracebacks} tracebacks"
    ]
    for message, count in messages.most_common(12):
        lines.append(f"  {count:6d} x {message}")
    return lines


def render(
    config: SoakConfig,
    verdicts: Sequence[ProducerVerdict],
    ledgers: Sequence[ProducerLedger],
    final: ReadResult,
    live: ReadResult | None,
    header: Sequence[str],
    violations: Sequence[str],
    warnings: Sequence[str],
    extra: Sequence[str],
) -> str:
    lines = [*header, ""]
    lines += _table(
        [
            "producer",
            "idem",
            "sent",
            "acked",
            "failed",
            "no-answer",
            "read",
            "ack-missing",
            "dups",
            "dups: new epoch",
            "out-of-order",
            "read-unacked: error",
            "no answer",
            "never sent (BAD)",
            "misplaced",
            "ack-offset-wrong",
            "max-stall-s",
        ],
        [
            [
                v.name,
                "yes" if v.idempotent else "no",
                v.sent,
                v.acked,
                v.failed,
                v.unanswered,
                v.read,
                v.missing,
                f"{v.duplicates}{'' if v.idempotent else ' (ok)'}",
                v.dup_new_epoch if v.idempotent else "-",
                f"{v.out_of_order}{'' if v.idempotent else ' (ok)'}",
                v.read_unacked_error,
                v.read_unacked_unanswered,
                v.read_never_sent,
                v.misplaced,
                v.ack_offset_mismatch,
                f"{ledger.max_stall_s:.1f}",
            ]
            for v, ledger in zip(verdicts, ledgers, strict=True)
        ],
    )
    lines.append("")
    lines += _table(
        ["partition", "log-start", "high-wm", "read", "gaps", "gap offsets", "re-delivered"],
        [
            [
                p.partition,
                p.low,
                p.high,
                len(p.values),
                sum(b - a + 1 for a, b in p.missing_ranges()),
                _ranges(p.missing_ranges()) or "-",
                p.redelivered,
            ]
            for p in final.partitions
        ],
    )
    lines.append("")
    for read in (r for r in (live, final) if r is not None):
        errors = ", ".join(f"{n} x {e}" for e, n in read.errors.most_common(6)) or "none"
        total = sum(len(p.values) for p in read.partitions)
        lines.append(
            f"{read.label} read from {read.bootstrap}: {total}"
            f" records in {read.seconds:.1f} s{' (TIMED OUT)' if read.timed_out else ''}; "
            f"client errors: {errors}"
        )
    lines.append("producer errors and events:")
    for ledger in ledgers:
        errors = ", ".join(f"{n} x {e}" for e, n in ledger.errors.most_common(8)) or "none"
        events = ", ".join(f"{n} x {e}" for e, n in ledger.events.most_common(8)) or "none"
        lines.append(f"  {ledger.name} ({ledger.instances} instance(s)): errors: {errors}")
        lines.append(f"  {' ' * len(ledger.name)}  events: {events}")
        for fatal in ledger.fatal[:3]:
            lines.append(f"  {' ' * len(ledger.name)}  FATAL: {fatal}")
        if ledger.crashed:
            lines.append(f"  {' ' * len(ledger.name)}  CRASHED: {ledger.crashed}")
    for v in verdicts:
        for kind, items in v.examples.items():
            if kind in ("duplicate", "out of order") and not v.idempotent:
                continue
            lines.append(f"  e.g. {kind}: " + "; ".join(items))
    lines += extra
    lines.append("")
    for warning in warnings:
        lines.append(f"WARNING: {warning}")
    for violation in violations:
        lines.append(f"VIOLATION: {violation}")
    if violations:
        lines.append(f"RESULT: FAIL ({len(violations)} violations), seed {config.seed}")
    else:
        resent = sum(v.dup_new_epoch for v in verdicts if v.idempotent)
        lines.append(
            f"RESULT: PASS, seed {config.seed}: no acknowledged record lost, no offset gap, "
            "no idempotent reordering, no retry stored twice"
            + (f" ({resent} records re-sent by a client under a new epoch)" if resent else "")
        )
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------


@contextlib.contextmanager
def _client_logging(path: Path) -> Iterator[logging.Logger]:
    """Client libraries log to a file in the work directory, not the console."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    soak_logger = logging.getLogger("soak")
    loggers = [logging.getLogger("kafka"), logging.getLogger("aiokafka"), soak_logger]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG if lg is soak_logger else logging.WARNING)
        lg.propagate = False
    try:
        yield soak_logger
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        handler.close()


def _create_topic(bootstrap: str, config: SoakConfig, logger: logging.Logger) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": logger})
    deadline = time.monotonic() + 60
    while True:
        future = admin.create_topics([NewTopic(config.topic, config.partitions, 1)])[config.topic]
        try:
            future.result(10)
            return
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if time.monotonic() > deadline:
                raise SoakError(f"could not create topic {config.topic}: {e}") from e
            time.sleep(0.5)


def run_soak(config: SoakConfig, emit: Emit = _print) -> SoakResult:
    """Run one soak; never raises for broker misbehaviour (that goes in the result)."""
    work_dir = config.work_dir or Path(tempfile.mkdtemp(prefix="driftlog-soak-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = work_dir / "data"
    agent = AgentProcess(
        data_dir,
        free_port(),
        ["--flush-ms", str(config.flush_ms), "--default-partitions", str(config.partitions)],
    )
    proxy = ChaosProxy(agent.port, config.cut_rate, config.seed)
    stop = threading.Event()
    workers: list[ProducerWorker] = []
    kills = 0
    warnings: list[str] = []
    kill_rng = random.Random(config.seed * 7919 + 1)
    with _client_logging(work_dir / "clients.log") as client_log:
        try:
            proxy.start()
            agent.start(proxy.address, config.faults_for(1))
            emit(
                f"soak: seed {config.seed}, {config.duration_s:g} s, agent {agent.address} "
                f"behind proxy {proxy.address}, work dir {work_dir}"
            )
            _create_topic(proxy.address, config, client_log)
            for n, name in enumerate(config.producers):
                worker = ProducerWorker(
                    name, config, proxy.address, stop, config.seed * 1000 + n, client_log
                )
                workers.append(worker)
                worker.thread.start()

            started = time.monotonic()
            end = started + config.duration_s

            def next_kill_after(t: float) -> float:
                jitter = kill_rng.uniform(-0.1, 0.1) * config.kill_interval_s
                return t + config.kill_interval_s + jitter

            next_kill = next_kill_after(started) if config.kill_interval_s > 0 else float("inf")
            next_progress = started + config.progress_every_s
            while (now := time.monotonic()) < end:
                time.sleep(max(0.0, min(next_kill, next_progress, end) - now))
                now = time.monotonic()
                if not agent.check_alive():
                    emit(f"soak: {agent.unexpected_exits[-1]}; restarting it")
                    agent.start(proxy.address, config.faults_for(agent.starts + 1))
                if now >= next_kill and now < end - 1:
                    agent.kill9()
                    kills += 1
                    time.sleep(kill_rng.uniform(0.05, 1.0))
                    agent.start(proxy.address, config.faults_for(agent.starts + 1))
                    emit(f"soak: [{now - started:5.0f}s] kill -9 #{kills}, agent restarted")
                    next_kill = next_kill_after(now)
                if now >= next_progress:
                    acked = ", ".join(
                        f"{w.name} {w.status.count(ACKED)}/{len(w.status)}" for w in workers
                    )
                    emit(
                        f"soak: [{now - started:5.0f}s] kills {kills}, cuts "
                        f"{sum(proxy.cuts.values())}, acked {acked}"
                    )
                    next_progress += config.progress_every_s

            # Stop producing; each producer flushes until the shared deadline.
            deadline = time.monotonic() + config.flush_timeout_s
            for worker in workers:
                worker.flush_deadline = deadline
            stop.set()
            hung: set[str] = set()
            for worker in workers:
                worker.thread.join(max(0.0, deadline - time.monotonic()) + 20)
                if worker.thread.is_alive():
                    hung.add(worker.name)
                    warnings.append(
                        f"producer {worker.name} did not stop within the flush deadline + 20 s"
                    )
            ledgers = [w.ledger(w.name in hung) for w in workers]
            for ledger in ledgers:
                if ledger.crashed:
                    warnings.append(f"producer {ledger.name} crashed: {ledger.crashed}")
                if ledger.instances == 0:
                    warnings.append(f"producer {ledger.name} never started: {dict(ledger.events)}")
                if ledger.fatal:
                    warnings.append(f"producer {ledger.name} had fatal errors: {ledger.fatal[:2]}")
            emit("soak: producers stopped; reading back through the proxy (cuts still on)")

            if not agent.check_alive():
                agent.start(proxy.address, config.faults_for(agent.starts + 1))
            live = read_partitions(
                proxy.address,
                config.topic,
                config.partitions,
                config.read_timeout_s,
                "live",
                client_log,
            )
            emit("soak: final kill -9, restart advertising the agent itself, reading directly")
            agent.kill9()
            agent.start(agent.address, config.faults_for(agent.starts + 1))
            final = read_partitions(
                agent.address,
                config.topic,
                config.partitions,
                config.read_timeout_s,
                "direct",
                client_log,
            )
            # Classify duplicates by the batch headers the agent stored (it is still up).
            verdicts, violations, dup_warnings = analyze(
                ledgers,
                final,
                lambda wanted: record_origins(agent.address, config.topic, wanted, 60),
                config.strict_duplicates,
            )
            violations += compare_reads(live, final)
            exit_code = agent.terminate(30)
            if exit_code != 0:
                warnings.append(
                    "agent did not drain and exit 0 on SIGTERM within 30 s "
                    f"(exit status {exit_code}); log {agent.logs[-1]}"
                )
            warnings += agent.unexpected_exits
            if live.timed_out:
                warnings.append("live read through the proxy did not reach the high watermarks")
            stalled = [ledg for ledg in ledgers if ledg.max_stall_s > 30]
            for ledger in stalled:
                warnings.append(
                    f"producer {ledger.name} went {ledger.max_stall_s:.0f} s without an ack"
                )
            warnings += dup_warnings
            header = [
                f"Driftlog soak, seed {config.seed}: {config.duration_s:g} s, {kills} kill -9, "
                f"{sum(proxy.cuts.values())} proxy cuts "
                f"({', '.join(f'{n} {k}' for k, n in proxy.cuts.most_common()) or 'none'}), "
                f"{proxy.connections} proxied connections ({proxy.refused} refused while down)",
                f"checker: {config.cli_command()}",
                *(f"agent #{i + 1}: {cmd}" for i, cmd in enumerate(agent.commands)),
                f"agent logs: {agent.logs[0].parent}/agent-{agent.port}-N.log; "
                f"client logs: {work_dir / 'clients.log'}",
            ]
            final_stats = [
                line for line in _tail(agent.logs[-1], 5).splitlines() if "driftlog-stats" in line
            ]
            report = render(
                config,
                verdicts,
                ledgers,
                final,
                live,
                header,
                violations,
                warnings,
                [*scan_agent_logs(agent.logs), *(s[:400] for s in final_stats)],
            )
            return SoakResult(config, report, violations, warnings, verdicts, kills, work_dir)
        finally:
            stop.set()
            for worker in workers:
                worker.flush_deadline = min(worker.flush_deadline, time.monotonic())
            for worker in workers:
                worker.thread.join(5)
            agent.cleanup()
            proxy.stop()


# --- command line ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(
        description="Soak Driftlog with crashes, object-store faults and cut connections; "
        "check that nothing acknowledged is lost or duplicated.",
    )
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--kill-interval",
        type=float,
        default=defaults.kill_interval_s,
        help="seconds between kill -9 of the agent (0: never)",
    )
    parser.add_argument(
        "--cut-rate",
        type=float,
        default=defaults.cut_rate,
        help="proxy connection cuts per second (0: never)",
    )
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="records per second per producer"
    )
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument(
        "--faults",
        default=defaults.faults,
        help="agent --faults spec without seed= (the checker adds seed=SEED+restart)",
    )
    parser.add_argument(
        "--producers",
        default=",".join(defaults.producers),
        help=f"comma-separated, from {', '.join(PRODUCER_KINDS)}",
    )
    parser.add_argument("--value-bytes", type=int, default=defaults.value_bytes)
    parser.add_argument(
        "--message-timeout",
        type=float,
        default=defaults.message_timeout_s,
        help="seconds a producer keeps retrying one record before it reports an error",
    )
    parser.add_argument(
        "--librdkafka-debug",
        default="",
        help="librdkafka debug contexts for the confluent producers (e.g. eos), to clients.log",
    )
    parser.add_argument(
        "--strict-duplicates",
        action="store_true",
        help="also fail on idempotent duplicates the client re-sent under a new producer epoch",
    )
    parser.add_argument("--flush-timeout", type=float, default=defaults.flush_timeout_s)
    parser.add_argument("--read-timeout", type=float, default=defaults.read_timeout_s)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="default: a new directory under /tmp (kept)"
    )
    args = parser.parse_args(argv)
    producers = tuple(p.strip() for p in args.producers.split(",") if p.strip())
    unknown = [p for p in producers if p not in PRODUCER_KINDS]
    if unknown or not producers:
        parser.error(f"unknown producers {unknown}; known: {', '.join(PRODUCER_KINDS)}")
    if "seed=" in args.faults:
        parser.error("--faults takes no seed=: the agent's fault seed is derived from --seed")
    config = SoakConfig(
        duration_s=args.duration,
        seed=args.seed,
        kill_interval_s=args.kill_interval,
        cut_rate=args.cut_rate,
        rate=args.rate,
        partitions=args.partitions,
        faults=args.faults,
        producers=producers,
        value_bytes=args.value_bytes,
        message_timeout_s=args.message_timeout,
        librdkafka_debug=args.librdkafka_debug,
        strict_duplicates=args.strict_duplicates,
        flush_timeout_s=args.flush_timeout,
        read_timeout_s=args.read_timeout,
        work_dir=args.work_dir,
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    _print(f"soak: {shlex.join([sys.executable, *sys.argv])}")
    try:
        result = run_soak(config)
    except KeyboardInterrupt:
        _print("soak: interrupted; processes stopped")
        return 130
    except SoakError as e:
        _print(f"soak: checker error: {e}")
        return 2
    _print(result.report)
    return 0 if result.ok else 1


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
