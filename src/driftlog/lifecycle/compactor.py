"""Compaction: rewrite many small objects into one larger, partition-sorted object.

With low traffic an agent uploads small objects often; reading a partition's
history then costs a GET per object. The compactor takes live objects that
were never compacted, are smaller than `small_object_bytes` and older than
`min_age_ms` (tail readers are done with them), copies their live batches
byte for byte into one new object sorted by (topic, partition, offset), and
asks the writer to swap the coordinates (`CommitWriter.relocate`): one
fenced transaction points every batch that still exists at its new place and
marks the old objects dead. Readers see either the old or the new
coordinates, never a gap or a duplicate: both hold the same bytes, and the
old objects stay readable for the garbage collector's grace period.

Batches deleted while the compactor copies (retention) are simply not
moved; their bytes in the new object are garbage until the whole object dies.
A crash before the swap leaves an orphan, which the garbage collector removes.
Levels bound the rewriting: uploads are level 0, and merging objects of level
n writes one of level n + 1. Two level-0 objects are worth merging; higher
levels wait for `FAN_IN` objects, so each byte is rewritten about
log_FAN_IN(objects) times at most, however slowly data trickles in, and
objects of `small_object_bytes` or more are left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from driftlog.clock import Clock
from driftlog.coordinator.api import CoordinatorError
from driftlog.coordinator.engines.backend import (
    Backend,
    BatchMove,
    NewObject,
    ObjectBatch,
    ObjectRef,
)
from driftlog.storage.api import ObjectNotFound, ObjectStore, ObjectStoreError
from driftlog.storage.keys import new_object_key

log = logging.getLogger(__name__)

# The writer's swap: (key, size, moves, level) -> the stored object and the batches
# moved, or None when the upload is too old to commit.
Relocate = Callable[[str, int, Sequence[BatchMove], int], Awaitable[tuple[NewObject, int] | None]]

# Objects of a level above 0 are merged once this many of them wait.
FAN_IN = 4
# Source objects read at once.
READS_IN_FLIGHT = 16


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    interval_ms: int = 60_000
    min_age_ms: int = 60_000
    small_object_bytes: int = 4 * 1024 * 1024
    target_object_bytes: int = 64 * 1024 * 1024
    max_objects_per_run: int = 2_000

    def __post_init__(self) -> None:
        if min(self.interval_ms, self.small_object_bytes, self.target_object_bytes) <= 0:
            raise ValueError("compaction sizes and intervals must be positive")


@dataclass(slots=True)
class CompactionStats:
    runs: int = 0
    objects_compacted: int = 0  # source objects whose batches all moved
    objects_written: int = 0
    batches_moved: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    missing_objects: int = 0
    errors: int = 0
    last_run_ms: int = 0  # wall clock at the end of the last run that did not fail


class Compactor:
    def __init__(
        self,
        backend: Backend,
        store: ObjectStore,
        clock: Clock,
        relocate: Relocate,
        config: CompactionConfig | None = None,
    ) -> None:
        self._backend = backend
        self._store = store
        self._clock = clock
        self._relocate = relocate
        self.config = config or CompactionConfig()
        self.stats = CompactionStats()

    async def compact_once(self) -> int:
        """One run: at most one new object. Returns how many batches moved."""
        self.stats.runs += 1
        try:
            moved = await self._compact()
            self.stats.last_run_ms = self._clock.wall_ms()
            return moved
        except (CoordinatorError, ObjectStoreError) as e:
            self.stats.errors += 1
            log.warning("compaction run failed (retried next run): %s", e)
            return 0

    async def _compact(self) -> int:
        config = self.config
        now_ms = self._clock.wall_ms()
        candidates = await self._backend.compaction_candidates(
            now_ms - config.min_age_ms, config.small_object_bytes, config.max_objects_per_run
        )
        chosen = _choose(candidates, config.target_object_bytes)
        if not chosen:
            return 0
        level = chosen[0].level + 1
        batches = await self._backend.batches_in_objects([o.object_id for o in chosen])
        chunks, moves = await self._copy(chosen, batches)
        if not moves:
            return 0
        key = new_object_key(self._clock.wall_ms())
        size = sum(len(c) for c in chunks)
        await self._store.put_new(key, chunks)
        self.stats.bytes_written += size
        # If the swap fails, the upload is an orphan: the garbage collector removes it.
        swapped = await self._relocate(key, size, moves, level)
        if swapped is None:
            log.warning("compaction output %s was too old to commit; it is an orphan", key)
            return 0
        _, moved = swapped
        self.stats.objects_written += 1
        self.stats.batches_moved += moved
        self.stats.objects_compacted += len({m.from_object_id for m in moves})
        log.info(
            "compacted %d objects (%d batches, %d bytes) into %s",
            len(chosen),
            moved,
            size,
            key,
        )
        return moved

    async def _copy(
        self, chosen: Sequence[ObjectRef], batches: Sequence[ObjectBatch]
    ) -> tuple[list[bytes], list[BatchMove]]:
        """Read the live batches and lay them out in (topic, partition, offset) order."""
        keys = {o.object_id: o.key for o in chosen}
        by_object: dict[int, list[ObjectBatch]] = {}
        for batch in batches:
            by_object.setdefault(batch.object_id, []).append(batch)
        data: dict[tuple[int, int], bytes] = {}
        # Several GETs at once: on S3 each is a round trip, and small objects are many.
        limit = asyncio.Semaphore(READS_IN_FLIGHT)

        async def read(object_id: int, in_object: list[ObjectBatch]) -> None:
            ranges = [(b.byte_offset, b.byte_offset + b.byte_length) for b in in_object]
            async with limit:
                try:
                    parts = await self._store.get_ranges(keys[object_id], ranges)
                except ObjectNotFound:
                    # Its batches stay where they are; the fetch path reports the loss.
                    self.stats.missing_objects += 1
                    log.error("compaction: object %s is missing from the store", keys[object_id])
                    return
            for batch, part in zip(in_object, parts, strict=True):
                data[(object_id, batch.byte_offset)] = bytes(part)
                self.stats.bytes_read += batch.byte_length

        await asyncio.gather(*(read(oid, in_object) for oid, in_object in by_object.items()))
        chunks: list[bytes] = []
        moves: list[BatchMove] = []
        position = 0
        for batch in batches:  # already in (topic, partition, offset) order
            chunk = data.get((batch.object_id, batch.byte_offset))
            if chunk is None:
                continue
            chunks.append(chunk)
            moves.append(
                BatchMove(
                    batch.topic_id, batch.partition, batch.last_offset, batch.object_id, position
                )
            )
            position += len(chunk)
        return chunks, moves


def _choose(candidates: Sequence[ObjectRef], target_bytes: int) -> list[ObjectRef]:
    """The oldest objects of the lowest level with enough of them to merge, as many as
    fit in one output object; empty when no level has enough."""
    by_level: dict[int, list[ObjectRef]] = {}
    for obj in candidates:
        by_level.setdefault(obj.level, []).append(obj)
    for level in sorted(by_level):
        chosen: list[ObjectRef] = []
        total = 0
        for obj in by_level[level]:
            if chosen and total + obj.size > target_bytes:
                break
            chosen.append(obj)
            total += obj.size
        if len(chosen) >= (2 if level == 0 else FAN_IN):
            return chosen
    return []
