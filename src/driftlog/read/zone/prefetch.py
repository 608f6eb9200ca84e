"""Read-ahead: runs the planner's lookups (`readahead.py`) and has the blocks they find
loaded by their owners. The adapter between the planner, the coordinator's lookups and
the zone cache.

Bounded: at most `MAX_LOOKUPS_IN_FLIGHT` lookups (each with its prefetches) at once;
a read that would start another is skipped (the next read of the partition asks again).
Transaction markers and batches this agent uploaded (in its batch cache) need no
prefetch. Failures are ignored: the read itself meets them and does what it must.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

from driftlog.coordinator.api import BatchLocation
from driftlog.read.cache import BatchCache
from driftlog.read.zone.blocks import Range
from driftlog.read.zone.cache import ZoneCache
from driftlog.read.zone.readahead import Lookup, ReadAheadPlanner
from driftlog.records.control import MARKER_KEY_PREFIX

log = logging.getLogger(__name__)

MAX_LOOKUPS_IN_FLIGHT = 8

# (topic id, partition, from offset, max bytes) -> the committed batches from there.
FindBatches = Callable[[uuid.UUID, int, int, int], Awaitable[list[BatchLocation]]]
# (topic id, partition, fetch offset, next offset, high watermark) of a read that completed.
PartitionRead = tuple[uuid.UUID, int, int, int, int]


class ReadAhead:
    def __init__(
        self,
        planner: ReadAheadPlanner,
        find_batches: FindBatches,
        zone: ZoneCache,
        uploaded: BatchCache,
    ) -> None:
        self.planner = planner
        self._find_batches = find_batches
        self._zone = zone
        self._uploaded = uploaded
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped = 0  # lookups not started: too many in flight

    def after_reads(self, reads: Iterable[PartitionRead]) -> None:
        for topic_id, partition, fetch_offset, next_offset, high_watermark in reads:
            lookup = self.planner.read(
                (topic_id, partition), fetch_offset, next_offset, high_watermark
            )
            if lookup is None:
                continue
            if len(self._tasks) >= MAX_LOOKUPS_IN_FLIGHT:
                self.planner.failed(lookup)
                self.skipped += 1
                continue
            task = asyncio.create_task(self._run(lookup, topic_id, partition))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, lookup: Lookup, topic_id: uuid.UUID, partition: int) -> None:
        try:
            locations = await self._find_batches(
                topic_id, partition, lookup.from_offset, lookup.max_bytes
            )
        except Exception as e:
            log.debug("read-ahead lookup failed: %r", e)
            self.planner.failed(lookup)
            return
        self.planner.found(lookup, locations)
        by_object: dict[str, list[Range]] = {}
        for loc in locations:
            if loc.object_key.startswith(MARKER_KEY_PREFIX):
                continue
            if self._uploaded.peek((loc.object_key, loc.byte_offset)):
                continue
            by_object.setdefault(loc.object_key, []).append(
                (loc.byte_offset, loc.byte_offset + loc.byte_length)
            )
        for key, ranges in by_object.items():
            await self._zone.prefetch(key, ranges)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
