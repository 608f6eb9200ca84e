"""An agent cut off from PostgreSQL (issue 16): the packets vanish, nothing is closed.

Three agents, each reaching the database through its own `TcpGate` (tests/tcp_gate.py),
with the cluster fixture's short timings (lease 2 s, heartbeat 250 ms, agent timeout
3 s). An idempotent acks=all producer sends numbered records at a steady rate, round
robin over 6 partitions, through every agent; one agent's gate goes silent for three
leases (6 s) and heals. Then:

- safety: every acknowledged record is read back exactly once, at the offset it was
  acknowledged with, offsets dense (read from offset 0 through an agent not cut);
- availability: the longest gap between two acknowledgements of one partition stays
  under lease + agent timeout (5 s here). The measured gaps are printed per partition
  either way (`pytest -s`), with the agents' writer and membership log lines.

Each test runs with two producers' settings: librdkafka's defaults (Metadata refreshed
every 5 minutes, so the client moves only when an agent answers with an error or drops
the connection) and a refresh every second (it also moves when the other agents'
Metadata stop naming the agent cut off).

The writer is found in the lease row (read directly, not through a gate).

The helpers (the paced producer, the gated agents, the read-back check) are also used
by bench/faults.py.
"""

from __future__ import annotations

import datetime
import itertools
import re
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentProcess, Cluster
from tcp_gate import TcpGate

PARTITIONS = 6
LEASE_MS = 2000
HEARTBEAT_MS = 250
AGENT_TIMEOUT_MS = 3000
TIMING_ARGS = (
    "--lease-ms", str(LEASE_MS),
    "--heartbeat-ms", str(HEARTBEAT_MS),
    "--agent-timeout-ms", str(AGENT_TIMEOUT_MS),
)  # fmt: skip
CUT_S = 3 * LEASE_MS / 1000
STALL_BOUND_S = (LEASE_MS + AGENT_TIMEOUT_MS) / 1000
RATE = 300  # records/s, over all partitions
# The producer's periodic Metadata refresh: librdkafka's default (5 minutes: the client
# moves only when a broker answers with an error or drops the connection, as in the
# issue), and every second (test_cluster.py's load: it also moves when another
# agent's Metadata stops naming the one cut off).
CLIENTS = {"librdkafka-defaults": None, "metadata-refresh-1s": 1000}


# -- agents behind gates -----------------------------------------------------------------


def dsn_through(dsn: str, gate: TcpGate) -> str:
    """`dsn` with its host and port replaced by the gate's."""
    parts = urllib.parse.urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{gate.host}:{gate.port}"))


def database_address(dsn: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(dsn)
    assert parts.hostname and parts.port, f"a TCP DSN is needed for the gates: {dsn}"
    return parts.hostname, parts.port


def add_gated_agents(cluster: Cluster, count: int, zone: str = "a") -> list[TcpGate]:
    """`count` agents, each with `--coordinator` through its own new gate (gates[i] is
    cluster.agents[i]'s). The caller closes the gates, after stopping the agents."""
    host, port = database_address(cluster.dsn)
    gates: list[TcpGate] = []
    for _ in range(count):
        gate = TcpGate(host, port)
        gates.append(gate)
        # argparse keeps the last --coordinator: the gate's, not the cluster's own DSN.
        cluster.add(zone, "--coordinator", dsn_through(cluster.dsn, gate))
    return gates


def lease_row(dsn: str) -> tuple[str, int]:
    """(holder's agent id, epoch) of the writer lease, read directly."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT holder, epoch FROM leases WHERE shard = 0").fetchone()
    assert row is not None, "no writer lease yet"
    return str(row[0]).split("/")[0], int(row[1])


def writer_index(cluster: Cluster, timeout_s: float = 20) -> int:
    """Index in cluster.agents of the agent holding the writer lease (ids `agent-N`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            holder, _ = lease_row(cluster.dsn)
            return int(holder.removeprefix("agent-")) - 1
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(20)


# -- a steady producer that times its acknowledgements -----------------------------------


class PacedLoad:
    """An idempotent acks=all producer on its own thread sending `rate` numbered
    records/s, record n to partition n % partitions, noting when each was acknowledged."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        rate: float = RATE,
        partitions: int = PARTITIONS,
        client_id: str = "paced-load",
        metadata_refresh_ms: int | None = 1000,
    ) -> None:
        self.topic = topic
        self.rate = rate
        self.partitions = partitions
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
            "reconnect.backoff.max.ms": 500,
        }
        if metadata_refresh_ms is not None:  # None: librdkafka's default (5 minutes)
            config["topic.metadata.refresh.interval.ms"] = metadata_refresh_ms
        self.producer = Producer(config)
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.ack_times: dict[int, list[float]] = {p: [] for p in range(partitions)}
        self.errors: list[str] = []
        self.sent = 0
        self.started_at = 0.0
        self.stopped_at = 0.0  # when sending stopped (before the final flush)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{topic}", daemon=True)

    def _delivered(self, error: Any, message: Any) -> None:
        now = time.monotonic()
        if error is not None:
            self.errors.append(str(error))
            return
        self.acked[message.value()] = (message.partition(), message.offset())
        self.ack_times[message.partition()].append(now)

    def _run(self) -> None:
        while not self._stop.is_set():
            due = int((time.monotonic() - self.started_at) * self.rate)
            while self.sent < due and not self._stop.is_set():
                n = self.sent
                try:
                    self.producer.produce(
                        self.topic,
                        value=f"{self.topic}-{n:08d}".encode(),
                        partition=n % self.partitions,
                        on_delivery=self._delivered,
                    )
                except BufferError:
                    break  # the client's queue is full: try again after a poll
                self.sent += 1
            self.producer.poll(0.002)

    def start(self) -> PacedLoad:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def wait_acked(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, f"only {len(self.acked)} acked; errors {self.errors[:5]}"

    def stop(self, flush_s: float = 120) -> int:
        """Stop sending, wait for what is in flight; returns how many are still undelivered."""
        self._stop.set()
        self._thread.join(10)
        self.stopped_at = time.monotonic()
        return int(self.producer.flush(flush_s))

    # What was measured -------------------------------------------------------------------

    def stalls(self, since: float | None = None, until: float | None = None) -> dict[int, float]:
        """Per partition, the longest time between two acknowledgements (in [since,
        until], default: from the start to when sending stopped); a partition whose last
        acknowledgement came before `until` counts the time from it to `until`."""
        since = self.started_at if since is None else since
        until = (self.stopped_at or time.monotonic()) if until is None else until
        out: dict[int, float] = {}
        for partition, times in self.ack_times.items():
            inside = [t for t in times if since <= t <= until]
            before = [t for t in times if t < since]
            points = ([before[-1]] if before else [since]) + inside + [until]
            out[partition] = max(b - a for a, b in itertools.pairwise(points))
        return out

    def stall_windows(self, since: float | None = None) -> dict[int, tuple[float, float]]:
        """Per partition, the (start, end) of its longest gap between acknowledgements."""
        since = self.started_at if since is None else since
        out: dict[int, tuple[float, float]] = {}
        for partition, times in self.ack_times.items():
            points = [t for t in times if t >= since]
            if len(points) < 2:
                continue
            out[partition] = max(itertools.pairwise(points), key=lambda w: w[1] - w[0])
        return out

    def acks_between(self, start: float, end: float) -> int:
        return sum(1 for times in self.ack_times.values() for t in times if start <= t < end)

    def throughput(self, start: float, end: float) -> float:
        """Acknowledged records/s in [start, end)."""
        return self.acks_between(start, end) / max(end - start, 1e-9)


# -- reading back ------------------------------------------------------------------------


def end_offset(consumer: Consumer, partition: TopicPartition) -> int:
    for attempt in range(5):
        try:
            return int(consumer.get_watermark_offsets(partition, 20)[1])
        except KafkaException as e:
            if attempt == 4 or e.args[0].code() != KafkaError._DESTROY_BROKER:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def read_back(
    bootstrap: str, topic: str, load: PacedLoad, partitions: int = PARTITIONS
) -> dict[int, list[tuple[int, bytes]]]:
    """Every record of `topic` per partition from offset 0, to past the last one `load`
    acknowledged or the end the agent reports, whichever is further."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "read-back", "enable.auto.commit": False}
    )
    consumer.list_topics(topic, timeout=20)
    ends = {p: end_offset(consumer, TopicPartition(topic, p)) for p in range(partitions)}
    for partition, offset in load.acked.values():
        ends[partition] = max(ends[partition], offset + 1)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    deadline = time.monotonic() + 90
    while any(len(records[p]) < ends[p] for p in range(partitions)) and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        records[message.partition()].append((message.offset(), message.value()))
    consumer.close()
    return records


@dataclass
class Verdict:
    lost: int  # acknowledged, not found where acknowledged
    duplicated: int  # stored more than once
    gaps: int  # partitions whose offsets are not 0, 1, 2, ...
    unacknowledged_stored: int  # sent, stored, never acknowledged (a timed-out producer)
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(load: PacedLoad, records: dict[int, list[tuple[int, bytes]]]) -> Verdict:
    problems: list[str] = []
    seen: dict[bytes, tuple[int, int]] = {}
    duplicated = gaps = 0
    for partition, entries in sorted(records.items()):
        offsets = [offset for offset, _ in entries]
        if offsets != list(range(len(offsets))):
            gaps += 1
            missing = sorted(set(range(max(offsets, default=-1) + 1)) - set(offsets))
            problems.append(f"partition {partition}: offsets not dense, missing {missing[:10]}")
        for offset, value in entries:
            if value in seen:
                duplicated += 1
                problems.append(f"{value!r} stored twice: {seen[value]} and {(partition, offset)}")
            else:
                seen[value] = (partition, offset)
    lost = 0
    for value, position in load.acked.items():
        if seen.get(value) != position:
            lost += 1
            if lost <= 10:
                problems.append(f"acknowledged {value!r} at {position}, found {seen.get(value)}")
    unacknowledged = len(set(seen) - set(load.acked))
    if len(load.acked) != load.sent:
        problems.append(
            f"{load.sent} sent, {len(load.acked)} acknowledged; errors {load.errors[:5]}"
        )
    return Verdict(lost, duplicated, gaps, unacknowledged, problems)


# -- what the agents said ----------------------------------------------------------------

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_NOTEWORTHY = re.compile(
    r"writer|lease|membership|joined|left|database|postgres|coordinator|timed out|unavailable"
    r"|cancel",
    re.IGNORECASE,
)


def timeline(agents: list[AgentProcess], origin_wall_s: float, limit: int = 60) -> str:
    """The agents' log lines about the writer, the lease, membership and the database,
    stamped in seconds from `origin_wall_s` (time.time() of the fault). A message an
    agent repeats (a reconnection every 200 ms) is shown once, with its count."""
    entries: list[list[Any]] = []  # [first at, agent, message, count, last at]
    for index, agent in enumerate(agents):
        previous: list[Any] | None = None
        for line in agent.log_text().splitlines():
            match = _LOG_TIME.match(line)
            if match is None or not _NOTEWORTHY.search(line):
                continue
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            at = stamp.timestamp() - origin_wall_s
            message = line[24:][:200]
            if at <= -1:
                continue
            if previous is not None and previous[2] == message:
                previous[3] += 1
                previous[4] = at
                continue
            previous = [at, index + 1, message, 1, at]
            entries.append(previous)
    entries.sort(key=lambda entry: float(entry[0]))
    shown = [
        f"{at:+7.2f}s agent-{agent}: {message}"
        + (f" (x{count}, until {last:+.2f}s)" if count > 1 else "")
        for at, agent, message, count, last in entries
    ]
    if len(shown) > limit:
        shown = [*shown[: limit // 2], f"... {len(shown) - limit} more ...", *shown[-limit // 2 :]]
    return "\n".join(shown)


def format_stalls(stalls: dict[int, float]) -> str:
    return ", ".join(f"p{p} {s:.2f}s" for p, s in sorted(stalls.items()))


# -- the tests ---------------------------------------------------------------------------


@pytest.fixture
def gated(cluster: Cluster) -> Iterator[tuple[Cluster, list[TcpGate]]]:
    """Three agents (zone a), each reaching PostgreSQL through its own gate."""
    cluster.timing_args = TIMING_ARGS
    gates: list[TcpGate] = []
    try:
        gates = add_gated_agents(cluster, 3)
        cluster.wait_for_members()
        yield cluster, gates
    finally:
        for gate in gates:
            gate.heal()  # so the agents drain and stop cleanly
        cluster.stop()
        for gate in gates:
            gate.close()


def silence_under_load(
    cluster: Cluster, gate: TcpGate, *, what: str, topic: str, reader: int, client: str
) -> str:
    """Run the paced load, silence `gate` for CUT_S, heal it, keep producing 4 s; check
    that nothing acknowledged was lost or duplicated and that no partition stalled past
    STALL_BOUND_S. Returns the report (printed too), for further checks."""
    writer = writer_index(cluster)
    _, epoch_before = lease_row(cluster.dsn)
    create_topic(cluster.agents[reader].bootstrap, topic)
    load = PacedLoad(cluster.bootstrap, topic, metadata_refresh_ms=CLIENTS[client]).start()
    load.wait_acked(2 * RATE)  # a couple of seconds of steady acknowledgements
    time.sleep(1)

    cut_at, cut_wall = time.monotonic(), time.time()
    gate.silence()
    time.sleep(CUT_S)
    gate.heal()
    healed_at = time.monotonic()
    time.sleep(4)  # keep producing after the cut
    undelivered = load.stop()

    holder_after, epoch_after = lease_row(cluster.dsn)
    stalls = load.stalls()
    windows = load.stall_windows()
    worst = max(stalls.values())
    gaps = ", ".join(
        f"p{p} {a - cut_at:+.2f}..{b - cut_at:+.2f}s" for p, (a, b) in sorted(windows.items())
    )
    during = load.throughput(cut_at, healed_at)
    after = load.throughput(healed_at, load.stopped_at)
    tracebacks = sum(a.log_text().count("Traceback") for a in cluster.agents)
    report = (
        f"{what} for {CUT_S:.0f} s "
        f"(lease {LEASE_MS} ms, agent timeout {AGENT_TIMEOUT_MS} ms, {RATE} records/s, "
        f"client {client}):\n"
        f"  writer before agent-{writer + 1} (epoch {epoch_before}), after {holder_after} "
        f"(epoch {epoch_after})\n"
        f"  longest gap between acks per partition: {format_stalls(stalls)}; max {worst:.2f} s "
        f"(bound {STALL_BOUND_S:.1f} s)\n"
        f"  longest gaps, in seconds from the cut: {gaps}\n"
        f"  healed at +{healed_at - cut_at:.2f}s; acks/s during the cut {during:.0f}, "
        f"after {after:.0f}; {len(load.acked)} acked of {load.sent}, {undelivered} "
        f"undelivered at the end; {tracebacks} tracebacks in the agents' logs\n"
        f"--- agents' log, seconds from the cut ---\n{timeline(cluster.agents, cut_wall)}"
    )
    print(report)
    assert undelivered == 0, f"records still undelivered after 120 s\n{report}"
    verdict = verify(load, read_back(cluster.agents[reader].bootstrap, topic, load))
    assert verdict.ok, "\n".join(verdict.problems[:20]) + "\n" + report
    assert worst < STALL_BOUND_S, f"a partition stalled {worst:.2f} s\n{report}"
    return report


def cut_under_load(
    cluster: Cluster, gates: list[TcpGate], *, cut_writer: bool, client: str
) -> None:
    writer = writer_index(cluster)
    victim = writer if cut_writer else (writer + 1) % len(cluster.agents)
    reader = next(i for i in range(len(cluster.agents)) if i not in (victim, writer))
    role = "writer" if cut_writer else "non-writer"
    silence_under_load(
        cluster,
        gates[victim],
        what=f"database cut of the {role} agent-{victim + 1}",
        topic="cut-writer" if cut_writer else "cut-other",
        reader=reader,
        client=client,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", CLIENTS)
def test_cut_the_writer_off_from_the_database(
    gated: tuple[Cluster, list[TcpGate]], client: str
) -> None:
    cluster, gates = gated
    cut_under_load(cluster, gates, cut_writer=True, client=client)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", CLIENTS)
def test_cut_another_agent_off_from_the_database(
    gated: tuple[Cluster, list[TcpGate]], client: str
) -> None:
    cluster, gates = gated
    cut_under_load(cluster, gates, cut_writer=False, client=client)
