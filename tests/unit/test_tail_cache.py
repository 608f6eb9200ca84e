"""The view's bounded cache of recent batch coordinates (`coordinator/tail.py`), pure."""

from __future__ import annotations

import uuid

from driftlog.coordinator.api import BatchLocation
from driftlog.coordinator.tail import PartitionState, TailIndex


def location(offset: int) -> BatchLocation:
    return BatchLocation("objects/k", offset * 10, 10, offset, offset, 0, -1)


def test_a_full_cache_trims_the_oldest_batches_instead_of_dropping_partitions() -> None:
    """Many partitions appended to in turn, more batches than the bound: every partition
    keeps its newest batches (so its tail readers stay off the database), the total
    stays within the bound, and what was trimmed does not pile up in memory."""
    tail = TailIndex(max_batches=1_000, max_batches_per_partition=500)
    topic = uuid.uuid4()
    states = [PartitionState((topic, p)) for p in range(50)]
    for offset in range(400):
        for state in states:
            tail.append(state, [location(offset)])
            state.high_watermark = offset + 1
        assert tail.size <= 1_000
    for state in states:
        kept = state.batches[state.head :]
        assert len(kept) >= 15  # about 1,000 / 50 each
        assert [b.base_offset for b in kept] == list(range(400 - len(kept), 400))
        assert len(state.batches) <= 2 * len(kept) + 33
    assert tail.size == sum(state.cached() for state in states) == 1_000


def test_one_partition_is_bounded_on_its_own() -> None:
    tail = TailIndex(max_batches=1_000, max_batches_per_partition=100)
    state = PartitionState((uuid.uuid4(), 0))
    tail.append(state, [location(offset) for offset in range(250)])
    assert state.cached() == tail.size == 100
    assert state.batches[state.head].base_offset == 150
