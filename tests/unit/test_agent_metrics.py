"""The agent's component metrics, fed by real components (SQLite coordinator, memory
store, write pipeline, cache, lifecycle jobs): the exposition parses, every family is
typed and documented, and its values are the components' own counts after traffic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from batch_builder import build_batch
from kio.schema.errors import ErrorCode
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from driftlog.agent_metrics import (
    GIB,
    LEGACY_STATS_KEYS,
    exit_stats,
    register_agent_metrics,
)
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
from driftlog.records.batch import parse_header
from driftlog.storage.api import ObjectAlreadyExists, ObjectNotFound
from driftlog.storage.faulty import FaultConfig, FaultyObjectStore
from driftlog.storage.metered import MeteredObjectStore
from driftlog.storage.obstore import open_store
from driftlog.write.pipeline import WritePipeline


def _samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type in ("counter", "gauge", "histogram"), family
        assert family.documentation, f"{family.name} has no help"
        out[family.name] = list(family.samples)
    return out


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    family = name.removesuffix("_total")
    for suffix in ("_count", "_sum"):
        if name.endswith(suffix) and family not in samples:
            family = name.removesuffix(suffix)
    (value,) = [s.value for s in samples[family] if s.name == name and s.labels == labels]
    return value


async def _exercise(tmp_path: Path) -> None:
    coordinator = AgentCoordinator(
        SqliteBackend(tmp_path / "c.sqlite3"), SYSTEM_CLOCK, holder="agent-a"
    )
    await coordinator.start(wait_for_writer_s=5)
    store = MeteredObjectStore(open_store("memory://"))
    cache = BatchCache(1 << 20)
    fetcher = BatchFetcher(store, cache)
    pipeline = WritePipeline(store, coordinator, flush_bytes=1, flush_age_ms=1)
    writer = coordinator.writer
    collector = ObjectCollector(coordinator.backend, store, SYSTEM_CLOCK)
    compactor = Compactor(coordinator.backend, store, SYSTEM_CLOCK, writer.relocate)
    key_compactor = KeyCompactor(
        coordinator.backend, coordinator, store, SYSTEM_CLOCK, writer.rewrite_batches
    )
    me = AgentInfo("agent-a", 7, "127.0.0.1", 9092, "zone-x", "")
    membership = Membership(coordinator.backend, SYSTEM_CLOCK, me, shared=False)
    registry = Registry()
    register_agent_metrics(
        registry,
        store=store,
        cache=cache,
        pipeline=pipeline,
        coordinator=coordinator,
        collector=collector,
        compactor=compactor,
        key_compactor=key_compactor,
        membership=membership,
        fetcher=fetcher,
    )
    before = _samples(registry.render())
    assert _value(before, "driftlog_object_store_requests_total", operation="put") == 0
    assert _value(before, "driftlog_object_store_puts_per_gib_written") == 0

    try:
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        batch = build_batch([b"x" * 100])
        header = parse_header(batch)
        for _ in range(3):  # one object each (flush_bytes=1)
            await pipeline.reserve(len(batch))
            outcome = await pipeline.append(topic.topic_id, 0, batch, header)
            assert outcome.error == ErrorCode.none
        with pytest.raises(ObjectNotFound):
            await store.get_ranges("objects/missing", [(0, 1)])
        await store.put_new("objects/taken", [b"x"])
        with pytest.raises(ObjectAlreadyExists):
            await store.put_new("objects/taken", [b"y"])
        cache.put(("k", 0), b"abc")
        assert cache.get(("k", 0)) == b"abc"
        assert cache.get(("k", 1)) is None
        await collector.collect()
        await compactor.compact_once()
        await key_compactor.compact_once()

        text = registry.render()
        after = _samples(text)
        stats = store.stats

        def value(name: str, **labels: str) -> float:
            return _value(after, name, **labels)

        assert value("driftlog_object_store_requests_total", operation="put") == 5
        assert value("driftlog_object_store_requests_total", operation="get") == 1
        assert value("driftlog_object_store_requests_total", operation="list") >= 1  # GC
        assert value("driftlog_object_store_errors_total", operation="get", kind="not_found") == 1
        assert value("driftlog_object_store_errors_total", operation="put", kind="error") == 0
        assert (
            value("driftlog_object_store_errors_total", operation="put", kind="already_exists") == 1
        )
        assert value("driftlog_object_store_request_duration_seconds_count", operation="put") == 5
        assert value("driftlog_object_store_bytes_total", operation="put") == stats.bytes_put
        assert stats.bytes_put > 300
        assert value("driftlog_object_store_puts_per_gib_written") == pytest.approx(
            5 / (stats.bytes_put / GIB)
        )
        assert value("driftlog_object_store_gets_per_gib_read") == 0  # nothing read

        assert value("driftlog_cache_hits_total") == 1
        assert value("driftlog_cache_misses_total") == 1
        assert value("driftlog_cache_entries") == 1
        assert value("driftlog_cache_bytes") == cache.size_bytes > 3

        assert value("driftlog_write_upload_seconds_count") == 3
        assert value("driftlog_write_commit_seconds_count") == 3
        assert value("driftlog_write_ack_seconds_count") == 3
        assert value("driftlog_write_object_bytes_count") == 3
        assert value("driftlog_write_object_bytes_sum") == 3 * len(batch)
        assert value("driftlog_write_pending_bytes") == 0
        assert value("driftlog_write_failed_objects_total", step="upload") == 0

        assert value("driftlog_coordinator_is_writer") == 1
        assert value("driftlog_coordinator_lease_epoch") == writer.lease_epoch >= 1
        assert value("driftlog_coordinator_writer_terms_total") == 1
        assert value("driftlog_coordinator_commits_total") == 3
        rounds = value("driftlog_coordinator_transactions_total")
        assert 1 <= rounds <= 3
        assert value("driftlog_coordinator_commit_seconds_count") == rounds
        assert value("driftlog_coordinator_round_objects_count") == rounds
        assert value("driftlog_coordinator_round_objects_sum") == 3
        assert value("driftlog_coordinator_round_batches_sum") == 3
        assert value("driftlog_coordinator_queue_depth") == 0

        assert value("driftlog_gc_passes_total") == 1
        assert value("driftlog_gc_errors_total") == 0
        assert value("driftlog_gc_last_pass_timestamp_seconds") > 1.7e9
        assert value("driftlog_compaction_runs_total") == 1
        assert value("driftlog_compaction_last_run_timestamp_seconds") > 1.7e9
        assert value("driftlog_key_compaction_runs_total") == 1

        assert value("driftlog_cluster_live_agents") == 1
        assert value("driftlog_agent_info", agent_id="agent-a", node_id="7", zone="zone-x") == 1
        assert value("driftlog_read_missing_objects_total") == 0
        assert value("driftlog_metrics_callback_errors_total") == 0

        # The exit line: the keys the benchmarks read, as integers, next to every series.
        line = json.loads(json.dumps(exit_stats(registry)))
        assert set(LEGACY_STATS_KEYS) <= set(line)
        assert line["object_puts"] == 5 and line["coordinator_commits"] == 3
        assert line["object_bytes_put"] == stats.bytes_put
        assert line['driftlog_object_store_requests_total{operation="put"}'] == 5
        assert line["driftlog_write_ack_seconds_count"] == 3
    finally:
        await coordinator.close()


def test_agent_metrics_follow_the_components(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_exercise(tmp_path), 60))


async def _failing_upload(tmp_path: Path) -> None:
    coordinator = AgentCoordinator(
        SqliteBackend(tmp_path / "c.sqlite3"), SYSTEM_CLOCK, holder="agent-a"
    )
    await coordinator.start(wait_for_writer_s=5)
    try:
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        store = MeteredObjectStore(
            FaultyObjectStore(open_store("memory://"), FaultConfig(put_error=1.0))
        )
        pipeline = WritePipeline(store, coordinator, flush_bytes=1, flush_age_ms=1)
        batch = build_batch([b"x"])
        await pipeline.reserve(len(batch))
        outcome = await pipeline.append(topic.topic_id, 0, batch, parse_header(batch))
        assert outcome.error == ErrorCode.kafka_storage_error
        assert (pipeline.failed_uploads, pipeline.failed_commits) == (1, 0)
        # Every attempt of the upload was a request, and failed.
        assert store.requests["put"] == store.errors[("put", "error")] == 3
        assert pipeline.pending_bytes == 0 and pipeline.uploads_in_flight == 0
    finally:
        await coordinator.close()


def test_a_failed_upload_is_counted(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_failing_upload(tmp_path), 60))
