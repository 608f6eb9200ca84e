"""Reads committed batches: cache first, then ranged GETs, then offsets stamped in.

Given batch coordinates from the coordinator, returns the bytes a Fetch
response carries. Adjacent ranges of one object are merged into one range so
a partition's contiguous data costs one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from driftlog.coordinator.api import BatchLocation
from driftlog.read.cache import BatchBytes, BatchCache
from driftlog.records.batch import with_offsets, write_base_offset
from driftlog.storage.api import ObjectStore


class BatchFetcher:
    def __init__(self, store: ObjectStore, cache: BatchCache) -> None:
        self._store = store
        self._cache = cache

    async def read_many(self, groups: Sequence[Sequence[BatchLocation]]) -> list[bytearray]:
        """Each group's batches, in order, with their assigned offsets written in.

        Groups are partitions of one Fetch; what is not cached is read with one
        ranged GET per object for all of them.
        """
        found: dict[tuple[str, int], BatchBytes] = {}
        missing: dict[str, list[BatchLocation]] = {}
        for locations in groups:
            for loc in locations:
                key = (loc.object_key, loc.byte_offset)
                data = self._cache.get(key)
                if data is None:
                    missing.setdefault(loc.object_key, []).append(loc)
                else:
                    found[key] = data
        if missing:
            results = await asyncio.gather(
                *(self._read_object(k, locs) for k, locs in missing.items())
            )
            for part in results:
                found.update(part)
        return [self._assemble(locations, found) for locations in groups]

    @staticmethod
    def _assemble(
        locations: Sequence[BatchLocation], found: dict[tuple[str, int], BatchBytes]
    ) -> bytearray:
        # One copy: each stored batch goes straight into the response buffer and
        # its offset is written there (LogAppendTime batches are rewritten whole).
        out = bytearray(sum(loc.byte_length for loc in locations))
        position = 0
        for loc in locations:
            data = found[(loc.object_key, loc.byte_offset)]
            if loc.log_append_time_ms >= 0:
                data = with_offsets(data, loc.base_offset, loc.log_append_time_ms)
            out[position : position + len(data)] = data
            if loc.log_append_time_ms < 0:
                write_base_offset(out, position, loc.base_offset)
            position += len(data)
        return out

    async def read_raw(self, location: BatchLocation) -> bytes:
        """One batch as stored (no offsets written), for ListOffsets by time."""
        key = (location.object_key, location.byte_offset)
        data = self._cache.get(key)
        if data is None:
            data = (await self._read_object(location.object_key, [location]))[key]
        return bytes(data)

    async def _read_object(
        self, object_key: str, locations: list[BatchLocation]
    ) -> dict[tuple[str, int], BatchBytes]:
        ordered = sorted(locations, key=lambda loc: loc.byte_offset)
        ranges: list[tuple[int, int]] = []
        for loc in ordered:
            end = loc.byte_offset + loc.byte_length
            if ranges and ranges[-1][1] == loc.byte_offset:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((loc.byte_offset, end))
        parts = await self._store.get_ranges(object_key, ranges)
        out: dict[tuple[str, int], BatchBytes] = {}
        index = 0
        for loc in ordered:
            while not ranges[index][0] <= loc.byte_offset < ranges[index][1]:
                index += 1
            start = loc.byte_offset - ranges[index][0]
            data = parts[index][start : start + loc.byte_length]
            self._cache.put((object_key, loc.byte_offset), data)
            out[(object_key, loc.byte_offset)] = data
        return out
