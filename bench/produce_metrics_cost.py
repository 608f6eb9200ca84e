"""The metrics registry's share of the agent's CPU per Produce request.

What it measures
----------------
1. A real run: one Driftlog agent (``python -m driftlog.cli.main serve``, embedded
   defaults, ``--metrics-listen``) and, ``--rounds`` times on a fresh topic of
   ``--partitions`` partitions, a confluent-kafka Producer (acks=all, linger.ms 5
   or ``--linger-ms``, ``--records`` records of ``--size`` random bytes, partitions
   round-robin; the producer of bench/security.py) until ``flush()`` returns, after
   an untimed warm-up of ``--warmup-records`` records. The agent's CPU seconds
   over the phase (user + system, all threads, from ``/proc/PID/stat``) divided by
   the Produce requests it answered (``driftlog_requests_total{api="produce"}`` from
   ``/metrics``, scraped before and after, outside the CPU window) is the agent's CPU
   per Produce request, everything included (decoding, validation, the write
   buffer, uploads, the writer's commits, responses, the event loop). The same
   scrapes give what the metered code ran per request: batches appended, objects
   flushed and uploaded, writer rounds.
2. With timeit, against the objects of a real ``Agent`` (built in this process from
   an ``AgentConfig``, not started: its ``RequestMetrics``, its write pipeline's
   observers, its ``MeteredObjectStore`` and its writer's histograms, all attached
   to its registry), the statements the agent runs for metrics on the produce path,
   as written in the source:

   - per request (``Agent._handle``): two ``time.perf_counter()`` reads, the
     ``getattr`` of the response's error code and ``RequestMetrics.observe``
     (a counter and a latency histogram); in the produce handler, the lookup of
     ``services.request_metrics``;
   - per batch accepted: the check and the two counter increments of the produce
     handler (``produced_bytes``, ``produced_records``), and the write pipeline's
     ack-latency observation;
   - per object: the four observations of the write pipeline (object size, upload,
     order wait, commit) and what ``MeteredObjectStore`` adds to a PUT (timed as an
     awaited call against a store that does nothing, minus the same call unwrapped);
   - per writer round: the commit latency (with its clock read), round objects and
     round batches (the sum over the round's objects) observations.

   Each statement is timed in a loop (median of ``--repeat`` timings of
   ``--number`` executions, the empty loop's time subtracted). A tight loop keeps
   the caches hot: inside the agent, between other work, the same statements can
   cost more, so read the share as a close estimate, not a bound.

Metrics CPU per request = the per-request cost + the costs per batch, object and
round times how many of each the run had per request. Printed per round and as
the median: agent CPU per Produce request, metrics CPU per request, and their
ratio (the issue's target: under 3%). A scrape's cost (``--scrapes`` scrapes of
``/metrics`` in a row, the agent's CPU over them) is printed apart: it happens once
per scrape interval, not per request.

    .venv/bin/python bench/produce_metrics_cost.py                # 300k x 1 KiB, 3 rounds
    .venv/bin/python bench/produce_metrics_cost.py --size 100 --linger-ms 0  # small requests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from batch_builder import build_batch
from kio.schema.errors import ErrorCode
from produce_consume import (
    HOST,
    BenchError,
    Broker,
    free_port,
    tail,
    wait_ready_and_create_topic,
)
from security import clean_env, driftlog_cli, process_cpu_seconds, produce

from driftlog.agent import Agent
from driftlog.clock import SYSTEM_CLOCK
from driftlog.config import AgentConfig
from driftlog.protocol.codec import EncodedBody
from driftlog.records.batch import parse_header
from driftlog.storage.api import ObjectInfo, ObjectStore, ObjectStoreStats
from driftlog.storage.metered import MeteredObjectStore

PRODUCE = 0
SERIES = {
    "requests": 'driftlog_requests_total{api="produce"}',
    "batches": "driftlog_write_ack_seconds_count",
    "objects": "driftlog_write_object_bytes_count",
    "puts": 'driftlog_object_store_requests_total{operation="put"}',
    "rounds": "driftlog_coordinator_round_objects_count",
    "records": "driftlog_produce_records_total",
}


# --------------------------------------------------------------------------- real run


def scrape(port: int) -> dict[str, float]:
    """The agent's /metrics as {series: value} (series as written, labels included)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


@dataclass
class Round:
    agent_cpu_s: float
    seconds: float
    counts: dict[str, float]  # the run's increments of SERIES

    def per_request(self, name: str) -> float:
        return self.counts[name] / self.counts["requests"]


def real_rounds(args: argparse.Namespace, workdir: Path) -> tuple[list[Round], float]:
    """Produce phases on one agent; and the agent's CPU seconds per scrape."""
    port, metrics_port = free_port(), free_port()
    data_dir = workdir / "data"
    data_dir.mkdir()
    argv = driftlog_cli("serve", "--listen", f"{HOST}:{port}", "--data-dir", str(data_dir))
    argv += ["--metrics-listen", f"{HOST}:{metrics_port}", *args.driftlog_arg]
    broker = Broker("driftlog", argv, port, workdir, clean_env())
    print(f"starting: {' '.join(argv)}", file=sys.stderr, flush=True)
    rounds: list[Round] = []
    try:
        broker.start(args.startup_timeout)
        assert broker.proc is not None
        pid = broker.proc.pid
        conf = {"bootstrap.servers": broker.bootstrap}
        if args.warmup_records:
            # First requests of a kind cost more (imports, caches, encoders): not counted.
            topic = f"bench-metrics-cost-warmup-{uuid.uuid4().hex[:8]}"
            wait_ready_and_create_topic(broker.bootstrap, topic, args.partitions, args.timeout)
            produce(conf, topic, args.warmup_records, args.size, args.partitions, args.timeout, pid)
        for n in range(1, args.rounds + 1):
            topic = f"bench-metrics-cost-{uuid.uuid4().hex[:8]}"
            wait_ready_and_create_topic(broker.bootstrap, topic, args.partitions, args.timeout)
            before = scrape(metrics_port)
            phase = produce(
                conf,
                topic,
                args.records,
                args.size,
                args.partitions,
                args.timeout,
                pid,
                linger_ms=args.linger_ms,
            )
            after = scrape(metrics_port)
            counts = {k: after.get(s, 0.0) - before.get(s, 0.0) for k, s in SERIES.items()}
            if counts["records"] != args.records or counts["requests"] <= 0:
                raise BenchError(f"round {n}: the agent counted {counts}")
            rounds.append(Round(phase.agent_cpu_s, phase.seconds, counts))
            print(
                f"[round {n}] {phase.mb_s:.1f} MB/s, {counts['requests']:,.0f} produce requests,"
                f" agent CPU {phase.agent_cpu_s:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        started = process_cpu_seconds(pid)
        for _ in range(args.scrapes):
            scrape(metrics_port)
        per_scrape = (process_cpu_seconds(pid) - started) / args.scrapes
    except BenchError:
        print(tail(broker.stderr_path), file=sys.stderr)
        raise
    finally:
        broker.stop(args.stop_timeout)
    return rounds, per_scrape


# --------------------------------------------------------------------------- timeit


class _NoopStore(ObjectStore):
    """Does nothing: what is left of a metered call is the wrapper's own work."""

    def __init__(self) -> None:
        self._stats = ObjectStoreStats()

    @property
    def stats(self) -> ObjectStoreStats:
        return self._stats

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        return None

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        return []

    async def delete(self, key: str) -> None:
        return None

    async def delete_many(self, keys: Sequence[str]) -> None:
        return None

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        return
        yield []

    async def close(self) -> None:
        return None


def timed_ns(stmt: str, names: dict[str, Any], number: int, repeat: int) -> float:
    """Median ns per execution of ``stmt``, the empty loop's time subtracted."""
    empty = statistics.median(timeit.repeat("pass", number=number, repeat=repeat)) / number
    runs = timeit.repeat(stmt, globals=names, number=number, repeat=repeat)
    return max(0.0, (statistics.median(runs) / number - empty) * 1e9)


async def _metered_put_ns(agent: Agent, number: int, repeat: int) -> float:
    """What MeteredObjectStore adds to an awaited put_new (the agent's latency observers)."""
    plain: ObjectStore = _NoopStore()
    metered = MeteredObjectStore(_NoopStore())
    metered.latency = agent.store.latency
    chunks = [b"x"]
    medians = {}
    for label, store in (("plain", plain), ("metered", metered)):
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(number):
                await store.put_new("k", chunks)
            runs.append((time.perf_counter() - started) / number)
        medians[label] = statistics.median(runs)
    return max(0.0, (medians["metered"] - medians["plain"]) * 1e9)


def metrics_costs_ns(
    number: int, repeat: int, objects_per_round: int, batches_per_object: int, size: int
) -> dict[str, float]:
    """ns per request, batch, object and round of the agent's metrics statements."""
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(AgentConfig(data_dir=Path(tmp)))
        data = build_batch([os.urandom(size)])
        timings = agent.pipeline.timings
        names: dict[str, Any] = {
            "perf_counter": time.perf_counter,
            "self": agent,
            "services": agent,
            "PRODUCE": PRODUCE,
            "response": EncodedBody(b"\0" * 64),  # the fast path's answer (no error_code)
            "ErrorCode": ErrorCode,
            "r": SimpleNamespace(batch=(data, parse_header(data))),
            "outcome": SimpleNamespace(error=ErrorCode.none),
            "batch": SimpleNamespace(appended_ms=1_000),
            "now_ms": 1_012,
            "timings": timings,
            "layout": SimpleNamespace(size=8 << 20),
            "uploaded": 1.012,
            "started": 1.0,
            "order_wait_s": 0.0005,
            "commit_s": 0.004,
            "w": agent.coordinator.writer,
            "clock": SYSTEM_CLOCK,
            "started_s": 1.0,
            "sequenced": [
                SimpleNamespace(rows=[None] * batches_per_object) for _ in range(objects_per_round)
            ],
        }
        names["metrics"] = agent.request_metrics
        names["observe_ack_s"] = timings.ack_seconds.observe
        statements = {
            # Agent._handle around the handler, and the produce handler's lookup.
            "request": "started = perf_counter()\n"
            "self.request_metrics.observe(PRODUCE, getattr(response, 'error_code', None),"
            " perf_counter() - started)\n"
            "metrics = services.request_metrics",
            # The produce handler, per partition answered without error.
            "batch: produce counters": (
                "if outcome.error == ErrorCode.none and r.batch is not None:\n"
                "    metrics.produced_bytes.inc(len(r.batch[0]))\n"
                "    metrics.produced_records.inc(r.batch[1].record_count)"
            ),
            # WritePipeline._upload_and_commit, per batch of the object.
            "batch: ack latency": "observe_ack_s((now_ms - batch.appended_ms) / 1000)",
            # WritePipeline.flush and _upload_and_commit, per object.
            "object: pipeline": "timings.object_bytes.observe(layout.size)\n"
            "timings.upload_seconds.observe(uploaded - started)\n"
            "timings.order_wait_seconds.observe(order_wait_s)\n"
            "timings.commit_seconds.observe(commit_s)\n"
            "observe_ack_s = timings.ack_seconds.observe",
            # Writer._persist, per round.
            "round": "w.commit_seconds.observe(clock.monotonic_s() - started_s)\n"
            "w.round_objects.observe(len(sequenced))\n"
            "w.round_batches.observe(sum(len(obj.rows) for obj in sequenced))",
        }
        costs = {label: timed_ns(s, names, number, repeat) for label, s in statements.items()}
        costs["object: store PUT"] = asyncio.run(_metered_put_ns(agent, number // 5, repeat))
        if agent.request_metrics.produced_records.value <= 0:
            raise BenchError("the timed statements did not reach the agent's counters")
    return costs


# --------------------------------------------------------------------------- driver


def metrics_ns_per_request(costs: dict[str, float], run: Round) -> float:
    per_batch = costs["batch: produce counters"] + costs["batch: ack latency"]
    return (
        costs["request"]
        + run.per_request("batches") * per_batch
        + run.per_request("objects") * costs["object: pipeline"]
        + run.per_request("puts") * costs["object: store PUT"]
        + run.per_request("rounds") * costs["round"]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="The metrics registry's share of the agent's CPU per Produce request.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--records", type=int, default=300_000, help="records per round")
    ap.add_argument("--size", type=int, default=1024, help="record value size in bytes")
    ap.add_argument("--partitions", type=int, default=6, help="partitions of each topic")
    ap.add_argument(
        "--linger-ms", type=int, default=5, help="producer linger.ms (0: smaller requests)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="produce phases (fresh topic each)")
    ap.add_argument(
        "--warmup-records", type=int, default=20_000, help="untimed records produced first"
    )
    ap.add_argument("--scrapes", type=int, default=200, help="scrapes timed after the rounds")
    ap.add_argument("--number", type=int, default=200_000, help="timeit executions per timing")
    ap.add_argument("--repeat", type=int, default=7, help="timings per statement (median)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per phase")
    ap.add_argument("--startup-timeout", type=float, default=60, help="seconds to accept")
    ap.add_argument("--stop-timeout", type=float, default=30, help="SIGTERM grace seconds")
    ap.add_argument(
        "--driftlog-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for driftlog serve, repeatable (e.g. --driftlog-arg=--flush-ms=20)",
    )
    args = ap.parse_args(argv)
    if min(args.records, args.size, args.partitions, args.rounds, args.scrapes) <= 0 or (
        args.warmup_records < 0
    ):
        ap.error("--records, --size, --partitions, --rounds and --scrapes must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="bench-metrics-cost-"))
    try:
        runs, per_scrape_s = real_rounds(args, workdir)
    except BenchError as e:
        print(f"FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # The writer's rounds as the run had them, for the per-round statement.
    total = {k: sum(r.counts[k] for r in runs) for k in SERIES}
    objects_per_round = max(1, round(total["objects"] / max(total["rounds"], 1)))
    batches_per_object = max(1, round(total["batches"] / max(total["objects"], 1)))
    costs = metrics_costs_ns(
        args.number, args.repeat, objects_per_round, batches_per_object, args.size
    )

    print()
    print(
        f"{args.records:,} records x {args.size} B per round, {args.partitions} partitions,"
        f" acks=all linger.ms={args.linger_ms}; load average at start {load}"
    )
    print("metrics statements on the produce path, ns (median, empty loop subtracted):")
    for label, ns in costs.items():
        print(f"  {label:26s} {ns:7.1f}")
    print(f"  (round: {objects_per_round} objects of {batches_per_object} batches, as in the run)")
    print()
    header = (
        f"{'round':>5}  {'MB/s':>6}  {'requests':>9}  {'batches/req':>11}  {'objects/req':>11}"
        f"  {'agent CPU s':>11}  {'CPU us/req':>10}  {'metrics ns/req':>14}  {'share':>6}"
    )
    print(header)
    print("-" * len(header))
    shares = []
    for n, run in enumerate(runs, 1):
        cpu_ns = run.agent_cpu_s / run.counts["requests"] * 1e9
        metrics_ns = metrics_ns_per_request(costs, run)
        shares.append(metrics_ns / cpu_ns)
        mb_s = run.counts["records"] * args.size / 1e6 / run.seconds
        print(
            f"{n:>5}  {mb_s:6.1f}  {run.counts['requests']:9,.0f}"
            f"  {run.per_request('batches'):11.2f}  {run.per_request('objects'):11.4f}"
            f"  {run.agent_cpu_s:11.2f}  {cpu_ns / 1e3:10.1f}  {metrics_ns:14.0f}"
            f"  {metrics_ns / cpu_ns * 100:5.2f}%"
        )
    print()
    median = statistics.median(shares) * 100
    print(
        f"metrics CPU / agent CPU per Produce request: median {median:.2f}%"
        f" (rounds {', '.join(f'{s * 100:.2f}%' for s in shares)}; target: under 3%)"
    )
    print(
        f"a scrape of /metrics: {per_scrape_s * 1e3:.2f} ms of agent CPU"
        f" (mean of {args.scrapes}); at one per 15 s, {per_scrape_s / 15 * 100:.3f}% of a core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
