"""The cost of the metrics registry on the produce path.

What it measures
----------------
1. Per operation, with timeit: a counter child's ``inc``, a gauge's ``set``, a
   histogram child's ``observe`` (bisect over the 15 default bounds), and the null
   observer components hold when no registry is attached; beside them, a bare
   attribute increment (what the components' own counters cost).
2. What ``MeteredObjectStore`` adds to one store call (against a store that does
   nothing, so only the wrapper is left).
3. The write path inside one process, the part of produce the registry instruments:
   ``--batches`` batches of ``--size`` bytes through a ``WritePipeline`` (flush at
   ``--flush-kb``) into a memory store, committed by the SQLite writer, with
   ``--concurrency`` producers appending at once. Alternating runs without metrics
   (the plain store, null observers) and with them (``MeteredObjectStore`` and
   ``register_agent_metrics``, a scrape every run); the process CPU time of each,
   the best of ``--rounds``. Their difference is mostly noise (round sizes and flush
   timing differ run to run), so the overhead is also priced from the instrumented
   work the metered run did (observations, store calls) times the costs of 1 and 2,
   against the plain run's CPU per batch.

No network, no Kafka client: per request the agent spends far more in decoding and
encoding than here, so the overhead measured here bounds the one on real produce.

    .venv/bin/python bench/metrics_overhead.py --batches 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from batch_builder import build_batch

from driftlog.agent_metrics import register_agent_metrics
from driftlog.clock import SYSTEM_CLOCK
from driftlog.cluster.membership import Membership
from driftlog.coordinator.api import AgentInfo
from driftlog.coordinator.engines.sqlite import SqliteBackend
from driftlog.coordinator.runtime.service import AgentCoordinator
from driftlog.lifecycle.compactor import Compactor
from driftlog.lifecycle.gc import ObjectCollector
from driftlog.lifecycle.key_compactor import KeyCompactor
from driftlog.metrics.registry import NULL_OBSERVER, Registry
from driftlog.read.cache import BatchCache
from driftlog.read.fetcher import BatchFetcher
from driftlog.records.batch import parse_header
from driftlog.storage.api import ObjectInfo, ObjectStore, ObjectStoreStats
from driftlog.storage.metered import MeteredObjectStore
from driftlog.storage.obstore import open_store
from driftlog.write.pipeline import WritePipeline


def per_operation_ns(number: int) -> dict[str, float]:
    registry = Registry()
    counter = registry.counter("b_total", "B.", ["op"]).labels("put")
    gauge = registry.gauge("b_gauge", "B.").labels()
    histogram = registry.histogram("b_seconds", "B.", ["op"]).labels("put")

    class Plain:
        __slots__ = ("n",)

        def __init__(self) -> None:
            self.n = 0

    plain = Plain()
    cases = {
        "attribute += 1": "plain.n += 1",
        "counter.inc()": "counter.inc()",
        "counter.inc(512)": "counter.inc(512)",
        "gauge.set(3)": "gauge.set(3)",
        "histogram.observe(0.003)": "histogram.observe(0.003)",
        "NULL_OBSERVER.observe(0.003)": "null.observe(0.003)",
    }
    names = {
        "plain": plain,
        "counter": counter,
        "gauge": gauge,
        "histogram": histogram,
        "null": NULL_OBSERVER,
    }
    empty = min(timeit.repeat("pass", number=number, repeat=5)) / number
    out = {}
    for label, statement in cases.items():
        best = min(timeit.repeat(statement, globals=names, number=number, repeat=5)) / number
        out[label] = (best - empty) * 1e9
    return out


async def write_path_seconds(
    metered: bool, batches: int, size: int, flush_bytes: int, concurrency: int
) -> tuple[float, dict[str, float]]:
    """CPU seconds of the run, and (metered) how much instrumented work it did."""
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = AgentCoordinator(
            SqliteBackend(Path(tmp) / "c.sqlite3"), SYSTEM_CLOCK, holder="bench"
        )
        await coordinator.start(wait_for_writer_s=5)
        store: ObjectStore = open_store("memory://")
        registry = Registry()
        if metered:
            store = metered_store = MeteredObjectStore(store)
        pipeline = WritePipeline(store, coordinator, flush_bytes=flush_bytes, flush_age_ms=5)
        if metered:
            writer = coordinator.writer
            cache = BatchCache(1 << 20)
            register_agent_metrics(
                registry,
                store=metered_store,
                cache=cache,
                pipeline=pipeline,
                coordinator=coordinator,
                collector=ObjectCollector(coordinator.backend, store, SYSTEM_CLOCK),
                compactor=Compactor(coordinator.backend, store, SYSTEM_CLOCK, writer.relocate),
                key_compactor=KeyCompactor(
                    coordinator.backend, coordinator, store, SYSTEM_CLOCK, writer.rewrite_batches
                ),
                membership=Membership(
                    coordinator.backend,
                    SYSTEM_CLOCK,
                    AgentInfo("bench", 0, "127.0.0.1", 9092, "", ""),
                    shared=False,
                ),
                fetcher=BatchFetcher(store, cache),
            )
        _, topic = await coordinator.create_topic("t", 8, {})
        assert topic is not None
        batch = build_batch([b"v" * size])
        header = parse_header(batch)

        async def producer(index: int) -> None:
            for n in range(index, batches, concurrency):
                await pipeline.reserve(len(batch))
                await pipeline.append(topic.topic_id, n % 8, batch, header)

        # CPU time: the wall clock of this loop is mostly waiting for flush timers and
        # SQLite, which the registry does not touch (the SQLite thread's CPU counts too).
        started = time.process_time()
        await asyncio.gather(*(producer(i) for i in range(concurrency)))
        elapsed = time.process_time() - started
        counts: dict[str, float] = {}
        if metered:
            registry.render()  # a scrape, as Prometheus would do now and then
            snapshot = registry.snapshot()
            counts = {
                "batches": snapshot["driftlog_write_ack_seconds_count"],
                "objects": snapshot["driftlog_write_object_bytes_count"],
                "store_requests": sum(metered_store.requests.values()),
                "rounds": snapshot["driftlog_coordinator_round_objects_count"],
            }
        await coordinator.close()
        return elapsed, counts


class _NoopStore(ObjectStore):
    """A store that does nothing: what is left of a call is the wrapper's own cost."""

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


async def metered_call_ns(number: int) -> float:
    """What MeteredObjectStore adds to one put (a counter, two clock reads, an observe)."""
    plain: ObjectStore = _NoopStore()
    metered = MeteredObjectStore(_NoopStore())
    metered.latency["put"] = Registry().histogram("p_seconds", "P.").labels()
    chunks = [b"x"]
    best = {}
    for label, store in (("plain", plain), ("metered", metered)):
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(number):
                await store.put_new("k", chunks)
            runs.append((time.perf_counter() - started) / number)
        best[label] = min(runs)
    return (best["metered"] - best["plain"]) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per record value")
    parser.add_argument("--flush-kb", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeit-number", type=int, default=1_000_000)
    args = parser.parse_args()

    print("per operation (ns, loop overhead subtracted):")
    costs = per_operation_ns(args.timeit_number)
    costs["MeteredObjectStore call"] = asyncio.run(metered_call_ns(args.timeit_number // 10))
    for label, ns in costs.items():
        print(f"  {label:30s} {ns:7.1f}")

    best = {False: float("inf"), True: float("inf")}
    counts: dict[str, float] = {}
    for _ in range(args.rounds):
        for metered in (False, True):
            seconds, run_counts = asyncio.run(
                write_path_seconds(
                    metered, args.batches, args.size, args.flush_kb * 1024, args.concurrency
                )
            )
            best[metered] = min(best[metered], seconds)
            counts = run_counts or counts
    print(f"write path, {args.batches} batches of {args.size} B, CPU, best of {args.rounds}:")
    for metered, label in ((False, "without metrics"), (True, "with metrics")):
        per_batch_us = best[metered] / args.batches * 1e6
        print(f"  {label:16s} {best[metered]:.3f} s  {per_batch_us:.2f} us/batch")
    print(f"  measured difference: {(best[True] / best[False] - 1) * 100:+.2f}% (timing noise)")
    # The instrumentation's own work in the metered run, priced per operation: a
    # histogram observation per batch (ack) and per object (object size, upload, order
    # wait, commit), a metered store call per request, three per writer round.
    observe_ns = costs["histogram.observe(0.003)"]
    added_ns = (
        counts["batches"] * observe_ns
        + counts["objects"] * (4 * observe_ns + 3 * costs["counter.inc()"])
        + counts["store_requests"] * costs["MeteredObjectStore call"]
        + counts["rounds"] * 3 * observe_ns
    )
    share = added_ns / 1e9 / best[False]
    print(
        f"  instrumentation work: {counts['objects']:.0f} objects, {counts['rounds']:.0f}"
        f" rounds; {added_ns / args.batches:.0f} ns/batch = {share * 100:.2f}% of the"
        " write path's CPU"
    )


if __name__ == "__main__":
    main()
