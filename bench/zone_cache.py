"""The shared cache per zone on PostgreSQL and moto: object GETs per GiB read per zone.

What it measures
----------------
For 1, 2 and 4 agents per zone (`--agents`), a fresh cluster of agents in zones a and b
(one throwaway PostgreSQL 15, one moto S3 server, a fresh database and bucket each
time), a topic of `--partitions` partitions, and:

1. tail: producers in zone a (confluent-kafka, `driftlog_zone=a`) send `--mib` MiB of
   `--record-bytes` records while one consumer in zone a and one in zone b
   (`driftlog_zone=...`) follow the tail;
2. catch-up: the producers send `--mib` MiB more to a second topic nobody follows;
   then a consumer in each zone reads it from offset 0, both at once (MB/s per zone,
   wall clock to the last record). Zone b has none of it cached: each object is
   fetched from the store then (zone a's owners were warmed by the uploaders).

Printed per phase and zone: object GETs (summed over the zone's agents, from their
object-store metrics) per GiB read, against the objects per GiB written (PUTs per GiB,
the target being at most 1.2 times that, whatever the number of agents); the catch-up
MB/s; and per agent at the end, its block cache (zone cache) bytes, its batch cache
bytes and its RSS. `--compare` runs each size again with `--zone-cache false` (each
agent GETs what it reads: today's per-agent caches).

The agents use their default flush (8 MiB or 250 ms) unless `--flush-ms` /
`--flush-bytes` say otherwise, so objects are what production would write for this
load; every object is smaller than a block (16 MiB) and is one GET. moto keeps its
data in memory: keep `--mib` modest.

How to run
----------
    .venv/bin/python bench/zone_cache.py                       # 1, 2 and 4 agents per zone
    .venv/bin/python bench/zone_cache.py --agents 2 --mib 128 --compare
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster.test_cluster import create_topic
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import AgentProcess, Cluster
from e2e.test_metrics_endpoint import scrape
from services import MotoServer, PostgresServer, free_port

MIB = 1024 * 1024
GIB = 1024**3
GET = 'driftlog_object_store_requests_total{operation="get"}'
PUT = 'driftlog_object_store_requests_total{operation="put"}'
BYTES_PUT = 'driftlog_object_store_bytes_total{operation="put"}'
WARMS_SENT = 'driftlog_zone_cache_warms_total{kind="sent"}'
FALLBACK = 'driftlog_zone_cache_peer_fallbacks_total{{reason="{}"}}'
FALLBACK_REASONS = ("unreachable", "busy", "error")
ZONES = ("a", "b")


@dataclass
class Agent:
    process: AgentProcess
    zone: str
    metrics_port: int

    def scrape(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def rss_mib(self) -> float:
        assert self.process.process is not None
        for line in Path(f"/proc/{self.process.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@dataclass
class Reader:
    """A consumer in one zone reading every partition from `start` to `ends`."""

    bootstrap: str
    zone: str
    topic: str
    partitions: int
    start: str  # "beginning" or "end"
    bytes_read: int = 0
    records: int = 0
    finished_s: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, ends: dict[int, int] | None) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "client.id": f"bench,driftlog_zone={self.zone}",
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if self.start == "beginning" else "latest",
                "fetch.max.bytes": 16 * MIB,
                "max.partition.fetch.bytes": 2 * MIB,
            }
        )
        consumer.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
        positions: dict[int, int] = {}
        while not self.stop.is_set():
            messages = consumer.consume(1000, 0.2)
            for message in messages:
                if message.error() is not None:
                    continue
                self.bytes_read += len(message.value() or b"")
                self.records += 1
                positions[message.partition()] = message.offset() + 1
            if ends is not None and all(positions.get(p, 0) >= e for p, e in ends.items()):
                break
        self.finished_s = time.monotonic()
        consumer.close()
        self.done.set()


def start_cluster(
    pg: PostgresServer, moto: MotoServer, root: Path, per_zone: int, args: argparse.Namespace,
    zone_cache: bool,
) -> tuple[Cluster, list[Agent]]:  # fmt: skip
    name = f"zc{per_zone}{'' if zone_cache else 'off'}_{uuid.uuid4().hex[:6]}"
    dsn = pg.create_database(name)
    bucket = f"zone-cache-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    (root / name).mkdir(parents=True)
    cluster = Cluster(dsn, bucket, moto.env(), root / name)
    agents = []
    for zone in ZONES:
        for _ in range(per_zone):
            port = free_port()
            process = cluster.add(
                zone,
                "--flush-ms", str(args.flush_ms),
                "--flush-bytes", str(args.flush_bytes),
                "--metrics-listen", f"127.0.0.1:{port}",
                "--zone-cache", "true" if zone_cache else "false",
                "--read-ahead-bytes", str(args.read_ahead_bytes),
            )  # fmt: skip
            agents.append(Agent(process, zone, port))
    cluster.wait_for_members()
    time.sleep(1.0)  # every agent's view holds the others' RPC addresses
    return cluster, agents


def zone_sum(agents: list[Agent], samples: list[dict[str, float]], name: str, zone: str) -> float:
    return sum(s.get(name, 0.0) for a, s in zip(agents, samples, strict=True) if a.zone == zone)


def produce(bootstrap: str, topic: str, args: argparse.Namespace) -> int:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "bench-producer,driftlog_zone=a",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "none",
        }
    )
    value = b"v" * args.record_bytes
    total = args.mib * MIB
    sent = 0
    while sent < total:
        try:
            producer.produce(topic, value=value)
            sent += len(value)
        except BufferError:
            producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(120) == 0
    return sent


def ends_of(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), 20)[1]
        for p in range(partitions)
    }
    consumer.close()
    return ends


def run(
    pg: PostgresServer, moto: MotoServer, root: Path, per_zone: int, args: argparse.Namespace,
    zone_cache: bool,
) -> None:  # fmt: skip
    cluster, agents = start_cluster(pg, moto, root, per_zone, args, zone_cache)
    try:
        topic = "bench"
        by_zone = {z: ",".join(a.process.bootstrap for a in agents if a.zone == z) for z in ZONES}
        create_topic(cluster.bootstrap, topic, args.partitions)
        base = [a.scrape() for a in agents]

        # 1. Tail: a consumer per zone follows the producers.
        tails = [Reader(by_zone[z], z, topic, args.partitions, "beginning") for z in ZONES]
        threads = [threading.Thread(target=r.run, args=(None,), daemon=True) for r in tails]
        for t in threads:
            t.start()
        time.sleep(2)
        produced = produce(by_zone["a"], topic, args)
        ends = ends_of(cluster.bootstrap, topic, args.partitions)
        total_records = sum(ends.values())
        deadline = time.monotonic() + 120
        while any(r.records < total_records for r in tails) and time.monotonic() < deadline:
            time.sleep(0.2)
        for r in tails:
            r.stop.set()
        for t in threads:
            t.join(30)
        after_tail = [a.scrape() for a in agents]

        # 2. Catch-up: a second topic nobody followed, read from offset 0 in both zones.
        cold = "bench-cold"
        create_topic(cluster.bootstrap, cold, args.partitions)
        produced += produce(by_zone["a"], cold, args)
        ends = ends_of(cluster.bootstrap, cold, args.partitions)
        before_catchup = [a.scrape() for a in agents]
        catchups = [Reader(by_zone[z], z, cold, args.partitions, "beginning") for z in ZONES]
        started = time.monotonic()
        threads = [threading.Thread(target=r.run, args=(ends,), daemon=True) for r in catchups]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        after_catchup = [a.scrape() for a in agents]

        puts = sum(s.get(PUT, 0) for s in after_catchup) - sum(s.get(PUT, 0) for s in base)
        put_bytes = sum(s.get(BYTES_PUT, 0) for s in after_catchup) - sum(
            s.get(BYTES_PUT, 0) for s in base
        )
        objects_per_gib = puts / (put_bytes / GIB)
        label = "zone cache" if zone_cache else "zone cache OFF (per-agent caches)"
        print(
            f"\n{per_zone} agent(s) per zone, {label}: produced {produced / MIB:.0f} MiB"
            f" (two topics) in"
            f" {puts:.0f} objects ({objects_per_gib:.0f} objects/GiB; target <="
            f" {1.2 * objects_per_gib:.0f} GETs/GiB read per zone)"
        )
        for phase, before, after, readers, written in (
            ("tail", base, after_tail, tails, (base, after_tail)),
            ("catch-up", before_catchup, after_catchup, catchups, (after_tail, before_catchup)),
        ):
            # The objects of the topic this phase reads (its PUTs).
            topic_objects = sum(s.get(PUT, 0) for s in written[1]) - sum(
                s.get(PUT, 0) for s in written[0]
            )
            for zone, reader in zip(ZONES, readers, strict=True):
                gets = zone_sum(agents, after, GET, zone) - zone_sum(agents, before, GET, zone)
                read_gib = reader.bytes_read / GIB
                per_gib = gets / read_gib if read_gib else 0.0
                line = (
                    f"  {phase:8s} zone {zone}: read {reader.bytes_read / MIB:6.0f} MiB,"
                    f" {gets:4.0f} GETs = {per_gib:6.0f} GETs/GiB"
                    f" ({per_gib / objects_per_gib:.2f} x objects/GiB; GETs per object of the"
                    f" topic {gets / max(topic_objects, 1):.2f})"
                )
                if phase == "catch-up":
                    mb_s = reader.bytes_read / 1e6 / max(reader.finished_s - started, 1e-9)
                    line += f", {mb_s:6.1f} MB/s"
                print(line)
        for agent, sample in zip(agents, after_catchup, strict=True):
            print(
                f"  agent {agent.process.bootstrap} zone {agent.zone}: block cache"
                f" {sample.get('driftlog_zone_cache_bytes', 0) / MIB:6.1f} MiB"
                f" ({sample.get('driftlog_zone_cache_blocks', 0):.0f} blocks), batch cache"
                f" {sample.get('driftlog_cache_bytes', 0) / MIB:6.1f} MiB, RSS"
                f" {agent.rss_mib():6.0f} MiB; peer hits"
                f" {sample.get('driftlog_zone_cache_peer_hits_total', 0):.0f}, served"
                f" {sample.get('driftlog_zone_cache_served_total', 0):.0f}, warms sent"
                f" {sample.get(WARMS_SENT, 0):.0f}, fallbacks"
                f" {sum(sample.get(FALLBACK.format(r), 0) for r in FALLBACK_REASONS):.0f},"
                f" handoffs {sample.get('driftlog_zone_cache_handoffs_total', 0):.0f},"
                f" prefetches {sample.get('driftlog_zone_cache_prefetches_total', 0):.0f}"
            )
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,2,4", help="agents per zone, comma-separated")
    parser.add_argument("--mib", type=int, default=128, help="MiB produced per run")
    parser.add_argument("--record-bytes", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--flush-ms", type=int, default=250)
    parser.add_argument("--flush-bytes", type=int, default=8 * MIB)
    parser.add_argument("--read-ahead-bytes", type=int, default=32 * MIB)
    parser.add_argument("--compare", action="store_true", help="also with --zone-cache false")
    args = parser.parse_args()
    print("command: " + " ".join(["bench/zone_cache.py", *sys.argv[1:]]))
    with PostgresServer() as pg, MotoServer() as moto:
        root = Path(f"/tmp/driftlog-bench-zone-cache-{uuid.uuid4().hex[:6]}")
        for per_zone in (int(n) for n in args.agents.split(",")):
            run(pg, moto, root, per_zone, args, zone_cache=True)
            if args.compare:
                run(pg, moto, root, per_zone, args, zone_cache=False)


if __name__ == "__main__":
    main()
