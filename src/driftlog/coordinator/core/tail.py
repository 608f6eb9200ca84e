"""A view's state per partition, and the bounded cache of its newest batch coordinates.
Pure: no I/O.

Each partition a view knows is one `PartitionState`: its log start, its high
watermark and its cached tail, so a commit touches a partition through one
object found by one list index (hashing a (uuid, partition) key runs Python code).

Tail readers (consumers near the high watermark, which is nearly all of them)
find their batches in the cached tail without a database query; older
coordinates are looked up in the database by indexed range queries. Each
partition's cache is a contiguous run of batches ending at the high watermark,
so a hit is always complete; a gap (after a reload or an eviction) clears it.

Memory bound: at most `max_batches` cached entries in all (about 250 bytes each:
a named tuple of seven fields, the object key shared per object) and
`max_batches_per_partition` per partition. Past the bound the oldest batches go
first, whichever partition they belong to: the index keeps, in a FIFO, one entry
(the partition's state) per cached batch in the order they were added, so
evicting a batch is popping the FIFO and moving that partition's cache start up
by one. Entries carry no batch, only a count per state: a partition at its own
bound drops its oldest batch and lets that batch's entry stand for the new one.
Batches that left a cache by invalidation (a gap, a resync, moved coordinates)
leave their entries behind, counted per state in `stale` and skipped when popped;
should they pile up past `max_batches` while the cache is not full, the FIFO is
rebuilt without them.
"""

from __future__ import annotations

import bisect
import collections
import uuid

from driftlog.coordinator.api import BatchLocation, PartitionOffsets
from driftlog.coordinator.core.transactions import AbortedTxn

PartitionKey = tuple[uuid.UUID, int]

DEFAULT_MAX_BATCHES = 200_000
DEFAULT_MAX_BATCHES_PER_PARTITION = 2_000


class PartitionState:
    """One partition in a view: offsets plus the cached tail (`TailIndex` manages it)."""

    __slots__ = (
        "aborted", "aborted_below", "aborted_from", "base_offsets", "batches", "head",
        "high_watermark", "key", "log_start_offset", "open_txns", "stale",
    )  # fmt: skip

    def __init__(
        self, key: PartitionKey, log_start_offset: int = 0, high_watermark: int = 0
    ) -> None:
        self.key = key
        self.log_start_offset = log_start_offset
        self.high_watermark = high_watermark
        self.base_offsets: list[int] = []
        self.batches: list[BatchLocation] = []
        self.head = 0  # cached entries before `head` are dropped (compacted lazily)
        self.stale = 0  # this state's entries in the index's FIFO whose batches are gone
        # Transactions: the first offset of each producer's open transaction here (None
        # when there is none: the common case costs nothing), and the aborted
        # transactions whose markers are at or after `aborted_from`, newest last.
        self.open_txns: dict[int, int] | None = None
        self.aborted: list[AbortedTxn] = []
        self.aborted_from = high_watermark
        # The newest aborted marker below `aborted_from` (-1: none): a read starting past
        # it needs only the remembered ones, not the database.
        self.aborted_below = -1
        # Invariant: a non-empty cache ends at high_watermark - 1. Whoever moves the
        # watermark other than by adding batches invalidates the cache.

    @property
    def offsets(self) -> PartitionOffsets:
        return PartitionOffsets(self.log_start_offset, self.high_watermark)

    @property
    def last_stable_offset(self) -> int:
        """No offset at or past the first of an open transaction is stable (KIP-98)."""
        if self.open_txns:
            # Never below the log start (retention or DeleteRecords may pass an open
            # transaction's first offset), as Kafka clamps it.
            first_open = min(self.high_watermark, *self.open_txns.values())
            return max(first_open, self.log_start_offset)
        return self.high_watermark

    def cached(self) -> int:
        return len(self.batches) - self.head

    def _drop_front(self, count: int) -> None:
        self.head += count
        if self.head > 32 and self.head * 2 > len(self.batches):
            self._compact()

    def _compact(self) -> None:
        """Free the dropped entries (done once they outnumber the kept ones)."""
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
        # One entry per batch added, oldest first: the state it was added to.
        self.added: collections.deque[PartitionState] = collections.deque()
        self.size = 0

    def add(self, state: PartitionState, batch: BatchLocation) -> None:
        """Add a newly committed batch at the partition's end (call `trim` after a run
        of adds). It must follow the cached ones: after a gap, `invalidate` first.
        (`CoordinatorView._apply` runs this inline.)"""
        state.base_offsets.append(batch.base_offset)
        state.batches.append(batch)
        if len(state.batches) - state.head > self.max_batches_per_partition:
            state._drop_front(1)  # its oldest batch's entry stands for this one
        else:
            self.added.append(state)
            self.size += 1

    def trim(self) -> None:
        """Back within the bounds, dropping the oldest batches first."""
        added = self.added
        size = self.size
        while size > self.max_batches:
            state = added.popleft()
            if state.stale:
                state.stale -= 1
                continue
            # state._drop_front(1), inline: this runs for every batch of a full cache.
            head = state.head = state.head + 1
            size -= 1
            if head > 32 and head * 2 > len(state.batches):
                state._compact()
        self.size = size
        if len(added) > 2 * self.max_batches:
            self._drop_stale()

    def _drop_stale(self) -> None:
        """Rebuild the FIFO without the entries of invalidated batches (each state's
        `stale` says how many of its entries to skip). Rare: only once `max_batches`
        of them piled up while the cache was not full."""
        kept: collections.deque[PartitionState] = collections.deque()
        for state in self.added:
            if state.stale:
                state.stale -= 1
            else:
                kept.append(state)
        self.added = kept

    def invalidate(self, state: PartitionState) -> None:
        """Drop the partition's cached batches."""
        cached = state.cached()
        if cached:
            self.size -= cached
            state.stale += cached
            state.base_offsets = []
            state.batches = []
            state.head = 0

    def clear(self) -> None:
        for state in set(self.added):
            state.base_offsets = []
            state.batches = []
            state.head = 0
            state.stale = 0
        self.added.clear()
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
