"""A view's state per partition, and the bounded cache of its newest batch coordinates.
Pure: no I/O.

Each partition a view knows is one `PartitionState`: its log start, its high
watermark and its cached tail, so a commit round touches a partition through one
object found by one lookup (hashing a (uuid, partition) key runs Python code).

Tail readers (consumers near the high watermark, which is nearly all of them)
find their batches in the cached tail without a database query; older
coordinates are looked up in the database by indexed range queries. Each
partition's cache is a contiguous run of batches ending at the high watermark,
so a hit is always complete; a gap (after a reload or an eviction) clears it.

Memory bound: at most `max_batches` cached entries in all (about 250 bytes each:
a named tuple of seven fields, the object key shared per object) and
`max_batches_per_partition` per partition; past the bound, the partitions least
recently appended to lose their oldest batches first. `TailIndex` keeps that
order, keyed by the states themselves (hashed by identity).
"""

from __future__ import annotations

import bisect
import collections
import uuid
from collections.abc import Sequence

from driftlog.coordinator.api import BatchLocation, PartitionOffsets

PartitionKey = tuple[uuid.UUID, int]

DEFAULT_MAX_BATCHES = 200_000
DEFAULT_MAX_BATCHES_PER_PARTITION = 2_000


class PartitionState:
    """One partition in a view: offsets plus the cached tail (`TailIndex` manages it)."""

    __slots__ = ("base_offsets", "batches", "head", "high_watermark", "key", "log_start_offset")

    def __init__(
        self, key: PartitionKey, log_start_offset: int = 0, high_watermark: int = 0
    ) -> None:
        self.key = key
        self.log_start_offset = log_start_offset
        self.high_watermark = high_watermark
        self.base_offsets: list[int] = []
        self.batches: list[BatchLocation] = []
        self.head = 0  # cached entries before `head` are dropped (compacted lazily)

    @property
    def offsets(self) -> PartitionOffsets:
        return PartitionOffsets(self.log_start_offset, self.high_watermark)

    def cached(self) -> int:
        return len(self.batches) - self.head

    def _drop_front(self, count: int) -> None:
        self.head += count
        if self.head > 32 and self.head * 2 > len(
            self.batches
        ):  # dropped ones: at most as many as kept
            del self.base_offsets[: self.head]
            del self.batches[: self.head]
            self.head = 0

    def _empty(self) -> None:
        self.base_offsets = []
        self.batches = []
        self.head = 0


class TailIndex:
    def __init__(
        self,
        max_batches: int = DEFAULT_MAX_BATCHES,
        max_batches_per_partition: int = DEFAULT_MAX_BATCHES_PER_PARTITION,
    ) -> None:
        self.max_batches = max_batches
        self.max_batches_per_partition = max_batches_per_partition
        # The states holding cached batches, least recently appended first.
        self._lru: collections.OrderedDict[PartitionState, None] = collections.OrderedDict()
        self.size = 0

    def append(
        self, state: PartitionState, batches: Sequence[BatchLocation], restart: bool = False
    ) -> None:
        """Add newly committed batches (in offset order) at the partition's end; with
        `restart`, or when they do not follow what is cached, they replace it."""
        if not batches:
            return
        lru = self._lru
        try:
            lru.move_to_end(state)
        except KeyError:
            state._empty()  # anything it holds is not counted here (another index's)
            lru[state] = None
        else:
            cached = state.batches
            if restart or (
                len(cached) > state.head and cached[-1].last_offset + 1 != batches[0].base_offset
            ):
                self.size -= len(cached) - state.head  # not contiguous: start again
                state._empty()
        if len(batches) == 1:
            state.base_offsets.append(batches[0].base_offset)
            state.batches.append(batches[0])
        else:
            state.base_offsets.extend([batch.base_offset for batch in batches])
            state.batches.extend(batches)
        self.size += len(batches)
        excess = len(state.batches) - state.head - self.max_batches_per_partition
        if excess > 0:
            state._drop_front(excess)
            self.size -= excess
        # Over the bound: the partitions least recently appended to lose their oldest
        # batches, only as many as needed. Dropping whole partitions instead made
        # a busy cache of many partitions drop and rebuild one with every append,
        # and tail readers of the dropped ones go to the database.
        while self.size > self.max_batches and len(lru) > 1:
            oldest = next(iter(lru))
            if oldest is state:
                break
            excess = self.size - self.max_batches
            if oldest.cached() <= excess:
                self.invalidate(oldest)
            else:
                oldest._drop_front(excess)
                self.size -= excess

    def invalidate(self, state: PartitionState) -> None:
        """Drop the partition's cached batches."""
        if self._lru.pop(state, 0) is None:
            self.size -= state.cached()
            state._empty()

    def clear(self) -> None:
        for state in self._lru:
            state._empty()
        self._lru.clear()
        self.size = 0

    def find(
        self, state: PartitionState, start_offset: int, max_bytes: int
    ) -> list[BatchLocation] | None:
        """The cached batches from `start_offset`, up to about `max_bytes`; None on a miss.

        The first batch is always included. A miss means the cache does not reach
        back to `start_offset`: ask the database.
        """
        batches = state.batches
        head = state.head
        if (
            len(batches) <= head
            or start_offset < state.base_offsets[head]
            or start_offset > batches[-1].last_offset
            or state not in self._lru
        ):
            return None
        index = bisect.bisect_right(state.base_offsets, start_offset, lo=head) - 1
        out: list[BatchLocation] = []
        total = 0
        for i in range(index, len(batches)):
            location = batches[i]
            if location.last_offset < start_offset:
                continue
            if out and total + location.byte_length > max_bytes:
                break
            out.append(location)
            total += location.byte_length
            if total >= max_bytes:
                break
        return out
