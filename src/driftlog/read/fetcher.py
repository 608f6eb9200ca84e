"""Reads committed batches: cache first, then ranged GETs, then offsets stamped in.

Given batch coordinates from the coordinator, returns the bytes a Fetch
response carries. Adjacent ranges of one object are merged into one range so
a partition's contiguous data costs one request.

A failed read of one object affects only the groups (partitions) with batches in
it, and each of those still gets its batches up to the first unreadable one: what
the failure means (stale coordinates, a missing object, a transient error) is for
the caller to decide, since only it can look the coordinates up again.

With a zone cache (`read/zone/`), what is not in the batch cache is read through it:
blocks this agent holds or owns, ranges asked of their owner, or a direct GET when the
owner cannot answer. Those bytes are not copied into the batch cache (the block cache
or the owner keeps them), which then holds what this agent uploaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from driftlog.coordinator.api import BatchLocation
from driftlog.read.cache import BatchBytes, BatchCache
from driftlog.read.missing import MissingObjects
from driftlog.read.zone.cache import ZoneCache
from driftlog.read.zone.prefetch import PartitionRead, ReadAhead
from driftlog.records.batch import with_offsets, write_base_offset
from driftlog.records.control import MARKER_KEY_PREFIX, control_batch, parse_marker_key
from driftlog.storage.api import ObjectNotFound, ObjectStore


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """The first batch of a group that could not be read, and why."""

    location: BatchLocation
    error: Exception  # ObjectNotFound, ObjectStoreError, or anything else the read raised

    @property
    def not_found(self) -> bool:
        return isinstance(self.error, ObjectNotFound)


@dataclass(frozen=True, slots=True)
class GroupRead:
    """A group's batches before its first unreadable one (all of them if `failure` is None)."""

    data: bytearray
    failure: ReadFailure | None = None


class BatchFetcher:
    def __init__(
        self, store: ObjectStore, cache: BatchCache, zone: ZoneCache | None = None
    ) -> None:
        self._store = store
        self._cache = cache
        self.zone = zone
        self.read_ahead: ReadAhead | None = None
        self.missing = MissingObjects()

    async def read_many(self, groups: Sequence[Sequence[BatchLocation]]) -> list[GroupRead]:
        """Each group's batches, in order, with their assigned offsets written in.

        Groups are partitions of one Fetch; what is not cached is read with one
        ranged GET per object for all of them, concurrently.
        """
        found: dict[tuple[str, int], BatchBytes] = {}
        missing: dict[str, list[BatchLocation]] = {}
        for locations in groups:
            for loc in locations:
                key = (loc.object_key, loc.byte_offset)
                data = self._cache.get(key)
                if data is None and loc.object_key.startswith(MARKER_KEY_PREFIX):
                    found[key] = _marker(loc)  # a transaction marker is never stored
                elif data is None:
                    missing.setdefault(loc.object_key, []).append(loc)
                else:
                    found[key] = data
        failed: dict[str, Exception] = {}
        if missing:
            object_keys = list(missing)
            results = await asyncio.gather(
                *(self._read_object(k, missing[k]) for k in object_keys), return_exceptions=True
            )
            for object_key, result in zip(object_keys, results, strict=True):
                if isinstance(result, Exception):
                    failed[object_key] = result
                elif isinstance(result, BaseException):
                    raise result  # cancellation and the like are not read failures
                else:
                    found.update(result)
        return [self._assemble(locations, found, failed) for locations in groups]

    def after_reads(self, reads: Iterable[PartitionRead]) -> None:
        """Partitions a Fetch read completely: read-ahead for those read in sequence."""
        if self.read_ahead is not None:
            self.read_ahead.after_reads(reads)

    @staticmethod
    def _assemble(
        locations: Sequence[BatchLocation],
        found: dict[tuple[str, int], BatchBytes],
        failed: dict[str, Exception],
    ) -> GroupRead:
        readable = 0
        failure: ReadFailure | None = None
        for loc in locations:
            if (loc.object_key, loc.byte_offset) not in found:
                failure = ReadFailure(loc, failed[loc.object_key])
                break
            readable += 1
        # One copy: each stored batch goes straight into the response buffer and
        # its offset is written there (LogAppendTime batches are rewritten whole).
        served = locations[:readable]
        out = bytearray(sum(loc.byte_length for loc in served))
        position = 0
        for loc in served:
            data = found[(loc.object_key, loc.byte_offset)]
            if loc.log_append_time_ms >= 0:
                data = with_offsets(data, loc.base_offset, loc.log_append_time_ms)
            out[position : position + len(data)] = data
            if loc.log_append_time_ms < 0:
                write_base_offset(out, position, loc.base_offset)
            position += len(data)
        return GroupRead(out, failure)

    async def read_raw(self, location: BatchLocation) -> bytes:
        """One batch as stored (no offsets written), for ListOffsets by time.

        Raises the store's error (ObjectNotFound, ObjectStoreError) as it is.
        """
        key = (location.object_key, location.byte_offset)
        if location.object_key.startswith(MARKER_KEY_PREFIX):
            return _marker(location)
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
        zone = self.zone
        if zone is not None:
            parts: Sequence[BatchBytes] = await zone.read(object_key, ranges)
        else:
            parts = await self._store.get_ranges(object_key, ranges)
        out: dict[tuple[str, int], BatchBytes] = {}
        index = 0
        for loc in ordered:
            while not ranges[index][0] <= loc.byte_offset < ranges[index][1]:
                index += 1
            start = loc.byte_offset - ranges[index][0]
            data = parts[index][start : start + loc.byte_length]
            if zone is None:
                self._cache.put((object_key, loc.byte_offset), data)
            out[(object_key, loc.byte_offset)] = data
        return out


def _marker(location: BatchLocation) -> bytes:
    """A transaction marker's control batch, built from its coordinates."""
    marker = parse_marker_key(location.object_key)
    return control_batch(marker, location.base_offset, location.max_timestamp_ms)
