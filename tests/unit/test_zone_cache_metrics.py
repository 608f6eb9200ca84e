"""The zone cache's metrics: declared with the agent's families, fed by a real ZoneCache
reading through a real (memory) store and a real SQLite coordinator's components."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from driftlog.agent_metrics import register_agent_metrics
from driftlog.clock import SYSTEM_CLOCK
from driftlog.cluster.membership import Membership
from driftlog.coordinator.api import AgentInfo
from driftlog.coordinator.engines.sqlite import SqliteBackend
from driftlog.coordinator.runtime.service import AgentCoordinator
from driftlog.lifecycle.compactor import Compactor
from driftlog.lifecycle.gc import ObjectCollector
from driftlog.lifecycle.key_compactor import KeyCompactor
from driftlog.metrics.registry import Registry
from driftlog.read.cache import BatchCache
from driftlog.read.fetcher import BatchFetcher
from driftlog.read.zone.cache import ZoneCache
from driftlog.read.zone.ownership import ZoneAgent
from driftlog.storage.metered import MeteredObjectStore
from driftlog.storage.obstore import open_store
from driftlog.write.pipeline import WritePipeline


async def _exercise(tmp_path: Path) -> dict[str, float]:
    coordinator = AgentCoordinator(
        SqliteBackend(tmp_path / "c.sqlite3"), SYSTEM_CLOCK, holder="agent-a"
    )
    await coordinator.start(wait_for_writer_s=5)
    try:
        store = MeteredObjectStore(open_store("memory://"))
        zone = ZoneCache(
            store,
            SYSTEM_CLOCK,
            me="agent-a",
            members=lambda: [ZoneAgent("agent-a", "")],
            transport=None,
            block_bytes=64 * 1024,
            cache_bytes=1 << 20,
        )
        cache = BatchCache(1 << 20)
        fetcher = BatchFetcher(store, cache, zone)
        writer = coordinator.writer
        registry = Registry()
        register_agent_metrics(
            registry,
            store=store,
            cache=cache,
            pipeline=WritePipeline(store, coordinator, flush_bytes=1, flush_age_ms=1),
            coordinator=coordinator,
            collector=ObjectCollector(coordinator.backend, store, SYSTEM_CLOCK),
            compactor=Compactor(coordinator.backend, store, SYSTEM_CLOCK, writer.relocate),
            key_compactor=KeyCompactor(
                coordinator.backend, coordinator, store, SYSTEM_CLOCK, writer.rewrite_batches
            ),
            membership=Membership(
                coordinator.backend,
                SYSTEM_CLOCK,
                AgentInfo("agent-a", 1, "127.0.0.1", 9092, "z", ""),
                shared=False,
            ),
            fetcher=fetcher,
            zone_cache=zone,
        )
        await store.put_new("objects/o", [bytes(100_000)])
        for _ in range(3):
            await zone.read("objects/o", [(0, 10), (70_000, 70_010)])
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(registry.render()):
            assert family.documentation
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return values
    finally:
        await coordinator.close()


def test_zone_cache_metrics_follow_the_cache(tmp_path: Path) -> None:
    values = asyncio.run(asyncio.wait_for(_exercise(tmp_path), 60))
    # Two blocks (0 and 1) fetched once each; the next two reads hit them here.
    assert values["driftlog_zone_cache_blocks_fetched_total"] == 2
    assert values["driftlog_zone_cache_block_bytes_fetched_total"] == 100_000
    assert values["driftlog_zone_cache_local_hits_total"] == 4
    assert values["driftlog_zone_cache_peer_hits_total"] == 0
    assert values["driftlog_zone_cache_peer_fallbacks_total{reason=unreachable}"] == 0
    assert values["driftlog_zone_cache_blocks"] == 2
    assert 100_000 < values["driftlog_zone_cache_bytes"] < 101_000
    assert values["driftlog_zone_cache_max_bytes"] == 1 << 20
    assert values["driftlog_zone_cache_zone_agents"] == 1
    assert values["driftlog_object_store_requests_total{operation=get}"] == 2
