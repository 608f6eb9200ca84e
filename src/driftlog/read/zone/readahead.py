"""Read-ahead for catch-up consumers: what a sequential reader of a partition wants next. Pure.

A partition read where the previous read of it ended, `min_streak` times in a row,
and still behind its high watermark, is a catch-up read: the planner asks for the
coordinates of the next `window_bytes` past what was read (or past what was already
prefetched), and the blocks holding them are loaded by their owners before the
reader asks. It asks again when the reader has consumed half of what was prefetched,
so one lookup serves several fetches and the prefetched bytes stay within about one
window per partition. Tail readers (at the high watermark) never trigger it: what
they read was just uploaded and is cached by its uploader and the zone's owners.

Partitions are tracked in an LRU of `max_partitions`; the adapter bounds the bytes
being prefetched at once. Takes offsets and sizes; reads no clock, does no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from driftlog.coordinator.api import BatchLocation

DEFAULT_MIN_STREAK = 2
DEFAULT_MAX_PARTITIONS = 10_000


@dataclass(slots=True)
class _Reader:
    expected_offset: int  # where the next sequential read starts
    streak: int  # sequential reads in a row
    prefetched_to: int  # coordinates up to here were prefetched (exclusive)
    refill_at: int  # look further once the reader passes this offset
    lookup_pending: bool = False


@dataclass(frozen=True, slots=True)
class Lookup:
    """Look up the coordinates of up to `max_bytes` from `from_offset`, then prefetch them."""

    partition: Hashable
    from_offset: int
    max_bytes: int


class ReadAheadPlanner:
    def __init__(
        self,
        window_bytes: int,
        *,
        min_streak: int = DEFAULT_MIN_STREAK,
        max_partitions: int = DEFAULT_MAX_PARTITIONS,
    ) -> None:
        self.window_bytes = window_bytes
        self.min_streak = min_streak
        self.max_partitions = max_partitions
        self._readers: OrderedDict[Hashable, _Reader] = OrderedDict()
        self.lookups = 0

    @property
    def tracked(self) -> int:
        return len(self._readers)

    def read(
        self, partition: Hashable, fetch_offset: int, next_offset: int, high_watermark: int
    ) -> Lookup | None:
        """A read of [fetch_offset, next_offset) of `partition` happened; what to look up."""
        if self.window_bytes <= 0 or next_offset <= fetch_offset:
            return None
        reader = self._readers.get(partition)
        if reader is None:
            reader = _Reader(next_offset, 0, next_offset, next_offset)
            self._readers[partition] = reader
            while len(self._readers) > self.max_partitions:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(partition)
            if fetch_offset == reader.expected_offset:
                reader.streak += 1
            else:  # a seek: start over from here
                reader.streak = 0
                reader.prefetched_to = reader.refill_at = next_offset
            reader.expected_offset = next_offset
        if (
            reader.streak < self.min_streak
            or reader.lookup_pending
            or next_offset >= high_watermark  # at the tail: nothing ahead to prefetch
            or next_offset < reader.refill_at
        ):
            return None
        reader.lookup_pending = True
        self.lookups += 1
        return Lookup(partition, max(next_offset, reader.prefetched_to), self.window_bytes)

    def found(self, lookup: Lookup, locations: Sequence[BatchLocation]) -> None:
        """The lookup's answer (the caller prefetches these): where to look next."""
        reader = self._readers.get(lookup.partition)
        if reader is None:
            return
        reader.lookup_pending = False
        if not locations:
            reader.refill_at = reader.expected_offset + 1  # nothing yet; ask on the next read
            return
        reader.prefetched_to = locations[-1].last_offset + 1
        half = sum(loc.byte_length for loc in locations) // 2
        seen = 0
        for loc in locations:
            seen += loc.byte_length
            if seen > half:
                reader.refill_at = loc.base_offset
                break

    def failed(self, lookup: Lookup) -> None:
        reader = self._readers.get(lookup.partition)
        if reader is not None:
            reader.lookup_pending = False
