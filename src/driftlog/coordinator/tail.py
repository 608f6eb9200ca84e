"""A bounded cache of the newest batch coordinates per partition. Pure: no I/O.

Tail readers (consumers near the high watermark, which is nearly all of them)
find their batches here without a database query; older coordinates are looked
up in the database by indexed range queries. Each partition's cache is a
contiguous run of batches ending at the high watermark, so a hit is always
complete; a gap (after a reload or an eviction) clears it.

Memory bound: at most `max_batches` entries in all (about 250 bytes each:
a named tuple of seven fields, the object key shared per object) and
`max_batches_per_partition` per partition; the least recently appended
partitions are dropped first.
"""

from __future__ import annotations

import bisect
import collections
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from driftlog.coordinator.api import BatchLocation

PartitionKey = tuple[uuid.UUID, int]

DEFAULT_MAX_BATCHES = 200_000
DEFAULT_MAX_BATCHES_PER_PARTITION = 2_000


@dataclass(slots=True)
class _PartitionTail:
    base_offsets: list[int] = field(default_factory=list)
    batches: list[BatchLocation] = field(default_factory=list)
    head: int = 0  # entries before `head` are dropped (compacted lazily)

    def __len__(self) -> int:
        return len(self.batches) - self.head

    def drop_front(self, count: int) -> None:
        self.head += count
        if self.head > 1024 and self.head * 2 > len(self.batches):
            del self.base_offsets[: self.head]
            del self.batches[: self.head]
            self.head = 0


class TailIndex:
    def __init__(
        self,
        max_batches: int = DEFAULT_MAX_BATCHES,
        max_batches_per_partition: int = DEFAULT_MAX_BATCHES_PER_PARTITION,
    ) -> None:
        self.max_batches = max_batches
        self.max_batches_per_partition = max_batches_per_partition
        # Least recently appended first.
        self._tails: collections.OrderedDict[PartitionKey, _PartitionTail] = (
            collections.OrderedDict()
        )
        self.size = 0

    def append(
        self, key: PartitionKey, batches: Sequence[BatchLocation], restart: bool = False
    ) -> None:
        """Add newly committed batches (in offset order) at the partition's end; with
        `restart`, or when they do not follow what is cached, they replace it."""
        if not batches:
            return
        tails = self._tails
        tail = tails.get(key)
        if tail is None:
            tail = tails[key] = _PartitionTail()
        else:
            tails.move_to_end(key)
            cached = tail.batches
            if restart or (
                len(cached) > tail.head and cached[-1].last_offset + 1 != batches[0].base_offset
            ):
                self._clear(key)  # not contiguous: start again from here
                tail = tails[key] = _PartitionTail()
        if len(batches) == 1:
            tail.base_offsets.append(batches[0].base_offset)
            tail.batches.append(batches[0])
        else:
            tail.base_offsets.extend([batch.base_offset for batch in batches])
            tail.batches.extend(batches)
        self.size += len(batches)
        excess = len(tail.batches) - tail.head - self.max_batches_per_partition
        if excess > 0:
            tail.drop_front(excess)
            self.size -= excess
        while self.size > self.max_batches and len(tails) > 1:
            oldest = next(iter(tails))
            if oldest == key:
                break
            self._clear(oldest)

    def invalidate(self, key: PartitionKey) -> None:
        if key in self._tails:
            self._clear(key)

    def clear(self) -> None:
        self._tails.clear()
        self.size = 0

    def _clear(self, key: PartitionKey) -> None:
        self.size -= len(self._tails.pop(key))

    def find(
        self, key: PartitionKey, start_offset: int, max_bytes: int
    ) -> list[BatchLocation] | None:
        """The cached batches from `start_offset`, up to about `max_bytes`; None on a miss.

        The first batch is always included. A miss means the cache does not reach
        back to `start_offset`: ask the database.
        """
        tail = self._tails.get(key)
        if (
            tail is None
            or not len(tail)
            or start_offset < tail.base_offsets[tail.head]
            or start_offset > tail.batches[-1].last_offset
        ):
            return None
        index = bisect.bisect_right(tail.base_offsets, start_offset, lo=tail.head) - 1
        out: list[BatchLocation] = []
        total = 0
        batches = tail.batches
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
