"""The agent's storage, write-path, coordinator, cache and lifecycle metrics, declared once.

Owns the names, help and buckets of these families and how each is fed; the
components own the counts. Counts a component already keeps are read at scrape
time (nothing added to its hot path); the durations and sizes nothing kept are
histograms whose children are attached to the component's observers here (the
object store's latency, the write pipeline's stages, the writer's rounds).
Request, connection and consumer-lag metrics belong to the agent and its handlers.

`exit_stats` is the agent's exit line: a view of the registry that keeps the keys
the benchmarks read (`object_puts`, ...) next to every series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from driftlog.cluster.membership import Membership
from driftlog.coordinator.runtime.service import AgentCoordinator
from driftlog.lifecycle.compactor import Compactor
from driftlog.lifecycle.gc import ObjectCollector
from driftlog.lifecycle.key_compactor import KeyCompactor
from driftlog.metrics.registry import DEFAULT_BUCKETS_S, Registry
from driftlog.read.cache import BatchCache
from driftlog.read.fetcher import BatchFetcher
from driftlog.read.zone.cache import FALLBACK_REASONS, ZoneCache
from driftlog.storage.metered import OPERATIONS, MeteredObjectStore
from driftlog.write.pipeline import WritePipeline

_K = TypeVar("_K")

GIB = 1024**3
# Objects flushed: from a lone small batch to the largest flush sizes.
OBJECT_BYTES_BUCKETS = tuple(float(4**n * 1024) for n in range(1, 11))  # 4 KiB .. 1 GiB
ROUND_OBJECTS_BUCKETS = tuple(float(2**n) for n in range(9))  # 1 .. 256 (the round cap)
ROUND_BATCHES_BUCKETS = tuple(float(4**n) for n in range(9))  # 1 .. 65,536
# The failures each operation can have (a GET finds no object; a create-only PUT a key).
STORE_ERROR_KINDS = {
    "put": ("already_exists", "error"),
    "get": ("not_found", "error"),
    "delete": ("error",),
    "list": ("error",),
}

# Exit-line keys from before the registry (bench/ reads them), and the series they show.
LEGACY_STATS_KEYS = {
    "object_puts": 'driftlog_object_store_requests_total{operation="put"}',
    "object_gets": 'driftlog_object_store_requests_total{operation="get"}',
    "object_bytes_put": 'driftlog_object_store_bytes_total{operation="put"}',
    "object_bytes_got": 'driftlog_object_store_bytes_total{operation="get"}',
    "object_deletes": "driftlog_object_store_deleted_keys_total",
    "missing_objects": "driftlog_read_missing_objects_total",
    "gc_dead_objects_deleted": 'driftlog_gc_deleted_objects_total{kind="dead"}',
    "gc_orphans_deleted": 'driftlog_gc_deleted_objects_total{kind="orphan"}',
    "compaction_objects_written": "driftlog_compaction_objects_written_total",
    "compaction_objects_compacted": "driftlog_compaction_source_objects_total",
    "compaction_batches_moved": "driftlog_compaction_batches_moved_total",
    "key_compaction_passes": "driftlog_key_compaction_passes_total",
    "key_compaction_records_removed": "driftlog_key_compaction_records_removed_total",
    "key_compaction_bytes_read": 'driftlog_key_compaction_bytes_total{direction="read"}',
    "key_compaction_bytes_written": 'driftlog_key_compaction_bytes_total{direction="written"}',
    "coordinator_commits": "driftlog_coordinator_commits_total",
    "coordinator_transactions": "driftlog_coordinator_transactions_total",
    "cache_hits": "driftlog_cache_hits_total",
    "cache_misses": "driftlog_cache_misses_total",
}


def register_agent_metrics(
    registry: Registry,
    *,
    store: MeteredObjectStore,
    cache: BatchCache,
    pipeline: WritePipeline,
    coordinator: AgentCoordinator,
    collector: ObjectCollector,
    compactor: Compactor,
    key_compactor: KeyCompactor,
    membership: Membership,
    fetcher: BatchFetcher,
    zone_cache: ZoneCache | None = None,
) -> None:
    """Declare the families these components feed, and attach their observers."""
    _object_store(registry, store)
    _cache(registry, cache)
    _write_pipeline(registry, pipeline)
    _coordinator(registry, coordinator)
    _lifecycle(registry, collector, compactor, key_compactor)
    _agent(registry, membership, fetcher)
    if zone_cache is not None:
        _zone_cache(registry, zone_cache)


def exit_stats(registry: Registry) -> dict[str, float]:
    """The exit line's values: the legacy keys first, then every series of the registry."""
    snapshot = registry.snapshot()
    legacy = {key: snapshot[name] for key, name in LEGACY_STATS_KEYS.items() if name in snapshot}
    return legacy | snapshot


def _object_store(registry: Registry, store: MeteredObjectStore) -> None:
    requests = registry.counter(
        "driftlog_object_store_requests_total",
        "Object store requests issued, by operation (a bulk delete counts once, a listing"
        " once per page).",
        ["operation"],
    )
    errors = registry.counter(
        "driftlog_object_store_errors_total",
        "Object store requests that failed, by operation and kind (error: the store failed;"
        " not_found, already_exists: the object was missing, the key taken).",
        ["operation", "kind"],
    )
    latency = registry.histogram(
        "driftlog_object_store_request_duration_seconds",
        "Object store request latency as the agent saw it, failures included.",
        ["operation"],
        DEFAULT_BUCKETS_S,
    )
    for operation in OPERATIONS:
        requests.labels(operation).set_function(_item(store.requests, operation))
        for kind in STORE_ERROR_KINDS[operation]:
            errors.labels(operation, kind).set_function(_item(store.errors, (operation, kind)))
        store.latency[operation] = latency.labels(operation)
    stats = store.stats
    bytes_total = registry.counter(
        "driftlog_object_store_bytes_total",
        "Bytes written by successful PUTs and read by successful GETs.",
        ["operation"],
    )
    bytes_total.labels("put").set_function(lambda: stats.bytes_put)
    bytes_total.labels("get").set_function(lambda: stats.bytes_got)
    registry.counter(
        "driftlog_object_store_deleted_keys_total", "Object keys asked to be deleted."
    ).labels().set_function(lambda: stats.deletes)
    registry.gauge(
        "driftlog_object_store_puts_per_gib_written",
        "PUT requests per GiB written since the agent started (0 before any write).",
    ).labels().set_function(lambda: _per_gib(store.requests["put"], stats.bytes_put))
    registry.gauge(
        "driftlog_object_store_gets_per_gib_read",
        "GET requests per GiB read since the agent started (0 before any read).",
    ).labels().set_function(lambda: _per_gib(store.requests["get"], stats.bytes_got))


def _item(counts: Mapping[_K, int], key: _K) -> Callable[[], float]:
    """Reads one entry of a dict of counts the component keeps updating."""
    return lambda: counts[key]


def _per_gib(requests: int, byte_count: int) -> float:
    return requests / (byte_count / GIB) if byte_count else 0.0


def _cache(registry: Registry, cache: BatchCache) -> None:
    _read_counter(
        registry, "driftlog_cache_hits_total", "Batch reads served from the cache.",
        lambda: cache.hits,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_cache_misses_total", "Batch reads the cache could not serve.",
        lambda: cache.misses,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_cache_evictions_total", "Cache entries dropped to make room.",
        lambda: cache.evictions,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_cache_bytes", "Bytes the cache holds (entries' overhead included).",
        lambda: cache.size_bytes,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_cache_max_bytes", "The cache's size limit.", lambda: cache.max_bytes
    )
    _read_gauge(
        registry, "driftlog_cache_entries", "Batches the cache holds.", lambda: cache.entry_count
    )


def _zone_cache(registry: Registry, zone: ZoneCache) -> None:
    stats, blocks = zone.stats, zone.blocks
    _read_counter(
        registry, "driftlog_zone_cache_blocks_fetched_total",
        "Blocks this agent fetched from the store (one GET each): blocks it owns, or whose"
        " owner could not answer.",
        lambda: stats.blocks_fetched,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_zone_cache_block_bytes_fetched_total",
        "Bytes of the blocks this agent fetched from the store.",
        lambda: stats.bytes_fetched,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_zone_cache_local_hits_total",
        "Block reads answered by this agent's block cache.",
        lambda: stats.local_hits,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_zone_cache_peer_hits_total",
        "Block reads answered by the block's owner in this zone.",
        lambda: stats.peer_hits,
    )  # fmt: skip
    fallbacks = registry.counter(
        "driftlog_zone_cache_peer_fallbacks_total",
        "Block reads the owner did not answer, read from the store instead, by reason"
        " (unreachable: refused, reset or no answer within the timeout; busy; error).",
        ["reason"],
    )
    for reason in FALLBACK_REASONS:
        fallbacks.labels(reason).set_function(_item(stats.fallbacks, reason))
    _read_counter(
        registry, "driftlog_zone_cache_served_total",
        "Block reads this agent answered for the zone's other agents.",
        lambda: stats.served,
    )  # fmt: skip
    warms = registry.counter(
        "driftlog_zone_cache_warms_total",
        "Blocks of uploaded objects sent to their owner (sent), or kept here (kept: warmed"
        " by a peer, or uploaded and owned here).",
        ["kind"],
    )
    warms.labels("sent").set_function(lambda: stats.warms_sent)
    warms.labels("kept").set_function(lambda: stats.warms_kept)
    _read_counter(
        registry, "driftlog_zone_cache_handoffs_total",
        "Blocks a miss here got from the agent that held them (no GET).",
        lambda: stats.handoffs,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_zone_cache_prefetches_total",
        "Blocks read ahead for sequential readers.",
        lambda: stats.prefetches,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_zone_cache_bytes",
        "Bytes the block cache holds (entries' overhead included).",
        lambda: blocks.size_bytes,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_zone_cache_max_bytes", "The block cache's size limit.",
        lambda: blocks.max_bytes,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_zone_cache_blocks", "Blocks the block cache holds.",
        lambda: blocks.entry_count,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_zone_cache_zone_agents",
        "Agents of this zone the cache divides blocks among (itself included).",
        lambda: len(zone.ring().agents),
    )  # fmt: skip


def _write_pipeline(registry: Registry, pipeline: WritePipeline) -> None:
    timings = pipeline.timings
    timings.upload_seconds = registry.histogram(
        "driftlog_write_upload_seconds", "Seconds to upload an object (retries included)."
    ).labels()
    timings.order_wait_seconds = registry.histogram(
        "driftlog_write_order_wait_seconds",
        "Seconds an uploaded object waited for the objects flushed before it.",
    ).labels()
    timings.commit_seconds = registry.histogram(
        "driftlog_write_commit_seconds",
        "Seconds from submitting an object's commit to its outcome (the writer may be remote).",
    ).labels()
    timings.ack_seconds = registry.histogram(
        "driftlog_write_ack_seconds",
        "Seconds from a batch's arrival in the write buffer to its outcome.",
    ).labels()
    timings.object_bytes = registry.histogram(
        "driftlog_write_object_bytes",
        "Bytes per object flushed by the write path.",
        buckets=OBJECT_BYTES_BUCKETS,
    ).labels()
    registry.gauge(
        "driftlog_write_pending_bytes",
        "Bytes reserved, buffered or in flight in the write path (producers wait past the limit).",
    ).labels().set_function(lambda: pipeline.pending_bytes)
    registry.gauge(
        "driftlog_write_uploads_in_flight", "Objects being uploaded now."
    ).labels().set_function(lambda: pipeline.uploads_in_flight)
    failed = registry.counter(
        "driftlog_write_failed_objects_total",
        "Objects whose batches were answered with an error, by the step that failed.",
        ["step"],
    )
    failed.labels("upload").set_function(lambda: pipeline.failed_uploads)
    failed.labels("commit").set_function(lambda: pipeline.failed_commits)


def _coordinator(registry: Registry, coordinator: AgentCoordinator) -> None:
    writer = coordinator.writer
    registry.gauge(
        "driftlog_coordinator_is_writer", "1 while this agent holds the writer lease."
    ).labels().set_function(lambda: int(writer.is_writer))
    registry.gauge(
        "driftlog_coordinator_lease_epoch",
        "The writer lease's epoch: held by this agent, else the newest it read.",
    ).labels().set_function(lambda: writer.lease_epoch)
    registry.counter(
        "driftlog_coordinator_writer_terms_total", "Times this agent took the writer lease."
    ).labels().set_function(lambda: writer.terms)
    registry.counter(
        "driftlog_coordinator_commits_total", "Objects this agent committed as the writer."
    ).labels().set_function(lambda: writer.commits_persisted)
    registry.counter(
        "driftlog_coordinator_transactions_total",
        "Database transactions that committed objects (one per round).",
    ).labels().set_function(lambda: writer.transactions)
    writer.commit_seconds = registry.histogram(
        "driftlog_coordinator_commit_seconds",
        "Seconds from sequencing a round of commits to its transaction being durable.",
    ).labels()
    writer.round_objects = registry.histogram(
        "driftlog_coordinator_round_objects",
        "Objects committed per round (group commit).",
        buckets=ROUND_OBJECTS_BUCKETS,
    ).labels()
    writer.round_batches = registry.histogram(
        "driftlog_coordinator_round_batches",
        "Batches committed per round.",
        buckets=ROUND_BATCHES_BUCKETS,
    ).labels()
    registry.gauge(
        "driftlog_coordinator_queue_depth", "Commits queued at the writer for the next rounds."
    ).labels().set_function(lambda: writer.queue_depth)
    registry.gauge(
        "driftlog_coordinator_rounds_in_flight", "Rounds being persisted now."
    ).labels().set_function(lambda: writer.rounds_in_flight)


def _lifecycle(
    registry: Registry, collector: ObjectCollector, compactor: Compactor, key: KeyCompactor
) -> None:
    gc, comp, keyc = collector.stats, compactor.stats, key.stats
    _read_counter(
        registry, "driftlog_gc_passes_total", "Garbage collection passes.", lambda: gc.passes
    )
    deleted = registry.counter(
        "driftlog_gc_deleted_objects_total",
        "Objects garbage collection deleted from the store, by kind.",
        ["kind"],
    )
    deleted.labels("dead").set_function(lambda: gc.dead_deleted)
    deleted.labels("orphan").set_function(lambda: gc.orphans_deleted)
    _read_counter(
        registry, "driftlog_gc_tombstones_purged_total", "Rows of deleted objects dropped.",
        lambda: gc.tombstones_purged,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_gc_orphan_scans_total", "Listings of the store for orphans.",
        lambda: gc.orphan_scans,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_gc_errors_total", "Garbage collection passes that failed.",
        lambda: gc.errors,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_gc_last_pass_timestamp_seconds",
        "Unix time the last garbage collection pass that did not fail ended (0: none yet).",
        lambda: gc.last_pass_ms / 1000,
    )  # fmt: skip

    _read_counter(registry, "driftlog_compaction_runs_total", "Compaction runs.", lambda: comp.runs)
    _read_counter(
        registry, "driftlog_compaction_source_objects_total",
        "Small objects whose batches compaction moved into larger ones.",
        lambda: comp.objects_compacted,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_compaction_objects_written_total", "Objects compaction wrote.",
        lambda: comp.objects_written,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_compaction_batches_moved_total", "Batches compaction moved.",
        lambda: comp.batches_moved,
    )  # fmt: skip
    compaction_bytes = registry.counter(
        "driftlog_compaction_bytes_total", "Bytes compaction read and wrote.", ["direction"]
    )
    compaction_bytes.labels("read").set_function(lambda: comp.bytes_read)
    compaction_bytes.labels("written").set_function(lambda: comp.bytes_written)
    _read_counter(
        registry, "driftlog_compaction_missing_objects_total",
        "Source objects compaction found missing from the store.",
        lambda: comp.missing_objects,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_compaction_errors_total", "Compaction runs that failed.",
        lambda: comp.errors,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_compaction_last_run_timestamp_seconds",
        "Unix time the last compaction run that did not fail ended (0: none yet).",
        lambda: comp.last_run_ms / 1000,
    )  # fmt: skip

    _read_counter(
        registry, "driftlog_key_compaction_runs_total",
        "Key compaction runs (each looks at every compacted partition).",
        lambda: keyc.runs,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_key_compaction_passes_total", "Partitions key compaction cleaned.",
        lambda: keyc.passes,
    )  # fmt: skip
    batches = registry.counter(
        "driftlog_key_compaction_batches_total",
        "Batches key compaction rewrote (some records dropped) or removed (all dropped).",
        ["action"],
    )
    batches.labels("rewritten").set_function(lambda: keyc.batches_rewritten)
    batches.labels("removed").set_function(lambda: keyc.batches_removed)
    _read_counter(
        registry, "driftlog_key_compaction_records_removed_total",
        "Records key compaction removed (superseded, aborted, expired tombstones).",
        lambda: keyc.records_removed,
    )  # fmt: skip
    key_bytes = registry.counter(
        "driftlog_key_compaction_bytes_total", "Bytes key compaction read and wrote.",
        ["direction"],
    )  # fmt: skip
    key_bytes.labels("read").set_function(lambda: keyc.bytes_read)
    key_bytes.labels("written").set_function(lambda: keyc.bytes_written)
    _read_counter(
        registry, "driftlog_key_compaction_unreadable_batches_total",
        "Batches key compaction could not open and left as they were.",
        lambda: keyc.unreadable_batches,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_key_compaction_errors_total", "Partition passes that failed.",
        lambda: keyc.errors,
    )  # fmt: skip
    _read_gauge(
        registry, "driftlog_key_compaction_last_run_timestamp_seconds",
        "Unix time the last key compaction run ended (0: none yet).",
        lambda: keyc.last_run_ms / 1000,
    )  # fmt: skip


def _agent(registry: Registry, membership: Membership, fetcher: BatchFetcher) -> None:
    _read_gauge(
        registry, "driftlog_cluster_live_agents", "Agents this agent sees alive (itself too).",
        lambda: len(membership.live),
    )  # fmt: skip
    info = registry.gauge(
        "driftlog_agent_info", "This agent's identity (always 1).", ["agent_id", "node_id", "zone"]
    )

    def refresh_info() -> None:
        # The node id can be assigned after start: one series, with the current labels.
        me = membership.me
        info.clear()
        info.labels(me.agent_id, str(me.node_id), me.zone).set(1)

    registry.add_collector(refresh_info)
    _read_counter(
        registry, "driftlog_read_missing_objects_total",
        "Reads that found an object with committed data missing from the store.",
        lambda: fetcher.missing.count,
    )  # fmt: skip
    _read_counter(
        registry, "driftlog_metrics_callback_errors_total",
        "Scrape-time reads of a metric that failed (their series were left out).",
        lambda: registry.callback_errors,
    )  # fmt: skip


def _read_counter(registry: Registry, name: str, help_text: str, read: Callable[[], float]) -> None:
    """An unlabelled counter whose value a component keeps (read at scrape time)."""
    registry.counter(name, help_text).labels().set_function(read)


def _read_gauge(registry: Registry, name: str, help_text: str, read: Callable[[], float]) -> None:
    registry.gauge(name, help_text).labels().set_function(read)
