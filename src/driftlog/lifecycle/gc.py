"""Garbage collection of objects: dead objects, orphans and old tombstones.

Three kinds of garbage, each with its own rule:

- **Dead objects**: committed objects no batch references any more (retention,
  DeleteRecords, a deleted topic, compaction moved their batches away). The
  coordinator stamps `dead_since_ms` in the transaction that removed the last
  reference, and references are never added to an existing object, so a dead
  object stays dead. It is deleted `delete_grace_ms` after it died: a fetch
  that looked its coordinates up just before it died (on any agent, from the
  database or a view's cache) has that long to read it. Its row stays as a
  tombstone, so a commit re-sent after a lost reply still finds its outcome.
- **Orphans**: objects in the store that the coordinator never heard of (a
  failed or refused commit, a deduplicated retry, a crash between upload and
  commit, a compaction output whose swap failed). An orphan is deleted once
  its key and the store both say it is older than `orphan_grace_ms`; the
  writer refuses to commit objects older than half that (`storage/keys.py`), so an
  object taken for an orphan can never become referenced.
- **Tombstones**: rows of deleted objects, dropped once no commit of theirs
  can be re-sent (older than the orphan grace period).

Every step is idempotent and decided by the database, so collectors on several
agents at once (or a collector killed half way) delete nothing twice that
matters and nothing referenced ever. Each pass deletes at most
`max_deletes_per_s` times the interval, which bounds the rate. The clock is
passed in, so a simulation drives it with a fake one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from driftlog.clock import Clock
from driftlog.coordinator.api import CoordinatorError
from driftlog.coordinator.engines.backend import Backend
from driftlog.records.control import is_marker_key
from driftlog.storage.api import ObjectStore, ObjectStoreError
from driftlog.storage.keys import PREFIX, key_time_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcConfig:
    interval_ms: int = 30_000
    # Covers a fetch between reading coordinates and its GETs (and a view's cache).
    delete_grace_ms: int = 60_000
    # Covers any commit: the writer refuses objects older than half of it.
    orphan_grace_ms: int = 3_600_000
    # Listing the whole store is the expensive part: not every pass.
    orphan_scan_interval_ms: int = 600_000
    max_deletes_per_s: float = 200.0

    def __post_init__(self) -> None:
        if min(self.interval_ms, self.delete_grace_ms, self.orphan_grace_ms) <= 0:
            raise ValueError("GC intervals and grace periods must be positive")


@dataclass(slots=True)
class GcStats:
    passes: int = 0
    dead_deleted: int = 0
    orphans_deleted: int = 0
    tombstones_purged: int = 0
    errors: int = 0
    orphan_scans: int = 0
    last_pass_ms: int = 0  # wall clock at the end of the last pass that did not fail


class ObjectCollector:
    def __init__(
        self, backend: Backend, store: ObjectStore, clock: Clock, config: GcConfig | None = None
    ) -> None:
        self._backend = backend
        self._store = store
        self._clock = clock
        self.config = config or GcConfig()
        self.stats = GcStats()
        self._last_orphan_scan_ms: int | None = None

    @property
    def budget_per_pass(self) -> int:
        return max(1, int(self.config.max_deletes_per_s * self.config.interval_ms / 1000))

    async def collect(self, *, scan_orphans: bool | None = None) -> int:
        """One pass: dead objects, then (when due) orphans, then tombstones. Returns how
        many objects were deleted from the store. Failures are counted and logged; the
        next pass retries."""
        self.stats.passes += 1
        budget = self.budget_per_pass
        deleted = 0
        try:
            deleted += await self.collect_dead(budget)
            now_ms = self._clock.wall_ms()
            if scan_orphans is None:
                last = self._last_orphan_scan_ms
                scan_orphans = last is None or now_ms - last >= self.config.orphan_scan_interval_ms
            if scan_orphans and deleted < budget:
                self._last_orphan_scan_ms = now_ms
                deleted += await self.collect_orphans(budget - deleted)
            self.stats.tombstones_purged += await self._backend.purge_tombstones(
                now_ms - self.config.orphan_grace_ms, budget
            )
            self.stats.last_pass_ms = self._clock.wall_ms()
        except (CoordinatorError, ObjectStoreError) as e:
            self.stats.errors += 1
            log.warning("garbage collection pass failed (retried next pass): %s", e)
        return deleted

    async def collect_dead(self, budget: int) -> int:
        now_ms = self._clock.wall_ms()
        dead = await self._backend.dead_objects(now_ms - self.config.delete_grace_ms, budget)
        if not dead:
            return 0
        # Transaction markers have coordinates but no bytes in the store.
        keys = [o.key for o in dead if not is_marker_key(o.key)]
        if keys:
            await self._store.delete_many(keys)
        # Only after the store confirmed: a crash in between deletes again next time.
        await self._backend.mark_objects_deleted([o.object_id for o in dead], now_ms)
        self.stats.dead_deleted += len(dead)
        log.info("deleted %d dead objects (%d bytes)", len(dead), sum(o.size for o in dead))
        return len(dead)

    async def collect_orphans(self, budget: int) -> int:
        """List the store and delete objects old enough that no commit can name them,
        and that the coordinator does not know."""
        self.stats.orphan_scans += 1
        cutoff_ms = self._clock.wall_ms() - self.config.orphan_grace_ms
        deleted = 0
        async for page in self._store.list_objects(PREFIX):
            old = [
                info.key
                for info in page
                if info.last_modified_ms < cutoff_ms
                and (uploaded := key_time_ms(info.key)) is not None
                and uploaded < cutoff_ms
            ]
            if not old:
                continue
            known = await self._backend.known_keys(old)
            orphans = [key for key in old if key not in known][: budget - deleted]
            if orphans:
                await self._store.delete_many(orphans)
                deleted += len(orphans)
                self.stats.orphans_deleted += len(orphans)
                log.info("deleted %d orphaned objects", len(orphans))
            if deleted >= budget:
                break
        return deleted
