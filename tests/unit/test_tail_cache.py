"""The view's bounded cache of recent batch coordinates (`coordinator/core/tail.py`), pure."""

from __future__ import annotations

import random
import uuid

from driftlog.coordinator.api import BatchLocation
from driftlog.coordinator.core.tail import PartitionState, TailIndex


def location(offset: int) -> BatchLocation:
    return BatchLocation("objects/k", offset * 10, 10, offset, offset, 0, -1)


def add(tail: TailIndex, state: PartitionState, offset: int) -> None:
    tail.add(state, location(offset))
    state.high_watermark = offset + 1


def cached_offsets(state: PartitionState) -> list[int]:
    return [b.base_offset for b in state.batches[state.head :]]


def test_a_full_cache_drops_the_oldest_batches_of_every_partition() -> None:
    """Many partitions appended to in turn, more batches than the bound: every partition
    keeps its newest batches (so its tail readers stay off the database), the total
    stays within the bound, and what was dropped does not pile up in memory."""
    tail = TailIndex(max_batches=1_000, max_batches_per_partition=500)
    topic = uuid.uuid4()
    states = [PartitionState((topic, p)) for p in range(50)]
    for offset in range(400):
        for state in states:
            add(tail, state, offset)
        tail.trim()
        assert tail.size <= 1_000
    for state in states:
        kept = cached_offsets(state)
        assert kept == list(range(380, 400))  # 1,000 / 50 each, the newest
        assert len(state.batches) <= 2 * len(kept) + 33
    assert tail.size == sum(state.cached() for state in states) == 1_000


def test_one_partition_is_bounded_on_its_own() -> None:
    tail = TailIndex(max_batches=1_000, max_batches_per_partition=100)
    state = PartitionState((uuid.uuid4(), 0))
    for offset in range(250):
        add(tail, state, offset)
    tail.trim()
    assert state.cached() == tail.size == 100
    assert cached_offsets(state) == list(range(150, 250))


def test_an_invalidated_partition_keeps_what_it_caches_afterwards() -> None:
    """Entries of invalidated batches must not evict newer batches of that partition
    when their turn comes."""
    tail = TailIndex(max_batches=100, max_batches_per_partition=30)
    topic = uuid.uuid4()
    hot, other = PartitionState((topic, 0)), PartitionState((topic, 1))
    for offset in range(60):  # 30 dropped over the partition's bound
        add(tail, hot, offset)
    tail.invalidate(hot)  # the other 30
    assert tail.size == 0
    for offset in range(60, 80):
        add(tail, hot, offset)
    for offset in range(200):
        add(tail, other, offset)
        tail.trim()
    assert cached_offsets(hot) == list(range(60, 80))
    assert cached_offsets(other) == list(range(170, 200))
    assert tail.size == 50


def test_a_partition_at_its_own_bound_does_not_push_others_out() -> None:
    """A busy partition at its per-partition bound keeps adding: a quiet partition's
    few batches stay cached while the cache is far under its bound."""
    tail = TailIndex(max_batches=100, max_batches_per_partition=10)
    topic = uuid.uuid4()
    quiet, busy = PartitionState((topic, 0)), PartitionState((topic, 1))
    for offset in range(5):
        add(tail, quiet, offset)
    for offset in range(10_000):
        add(tail, busy, offset)
        tail.trim()
    assert cached_offsets(quiet) == list(range(5))
    assert cached_offsets(busy) == list(range(9_990, 10_000))
    assert tail.size == 15 and len(tail.added) == 15


def test_invalidated_entries_piling_up_are_dropped_without_evicting() -> None:
    """Invalidations leave entries behind; past twice the bound the FIFO is rebuilt
    without them, and what is cached stays cached."""
    tail = TailIndex(max_batches=100, max_batches_per_partition=100)
    topic = uuid.uuid4()
    quiet, flapping = PartitionState((topic, 0)), PartitionState((topic, 1))
    for offset in range(5):
        add(tail, quiet, offset)
    offset = 0
    for _ in range(100):
        for _ in range(20):
            add(tail, flapping, offset)
            offset += 1
        tail.trim()
        assert len(tail.added) <= 200
        tail.invalidate(flapping)  # e.g. its coordinates moved (compaction)
    assert cached_offsets(quiet) == list(range(5))
    assert tail.size == 5


def test_the_cache_agrees_with_a_model_and_stays_bounded() -> None:
    """Random adds, invalidations and trims against a plain model: each partition
    caches a suffix of what it was given since its last invalidation, the total stays
    within the bound and the FIFO stays bounded."""
    rng = random.Random(7)
    tail = TailIndex(max_batches=200, max_batches_per_partition=40)
    topic = uuid.uuid4()
    states = [PartitionState((topic, p)) for p in range(12)]
    given: dict[int, list[tuple[int, int]]] = {p: [] for p in range(12)}  # (step, offset)
    for step in range(20_000):
        p = rng.randrange(12) if rng.random() < 0.7 else rng.randrange(3)
        state = states[p]
        if rng.random() < 0.01:
            tail.invalidate(state)
            given[p] = []
        else:
            add(tail, state, state.high_watermark)
            given[p].append((step, state.high_watermark - 1))
        if rng.random() < 0.3:
            tail.trim()
            assert tail.size <= 200
            assert len(tail.added) <= 2 * 200
        for q, s in enumerate(states):
            kept = cached_offsets(s)
            assert len(kept) <= 40
            assert kept == [o for _, o in given[q][len(given[q]) - len(kept) :]]
        assert tail.size == sum(s.cached() for s in states)


def test_find_returns_cached_batches_or_a_miss() -> None:
    tail = TailIndex(max_batches=1_000, max_batches_per_partition=100)
    state = PartitionState((uuid.uuid4(), 0))
    for offset in range(150):
        add(tail, state, offset)
    assert tail.find(state, 49, 1_000) is None  # dropped: ask the database
    found = tail.find(state, 120, 100)
    assert found is not None
    assert [b.base_offset for b in found] == list(range(120, 130))
    assert tail.find(state, 150, 1_000) is None


def test_clear_forgets_everything() -> None:
    tail = TailIndex(max_batches=10, max_batches_per_partition=10)
    state = PartitionState((uuid.uuid4(), 0))
    for offset in range(5):
        add(tail, state, offset)
    tail.invalidate(state)
    add(tail, state, 5)
    tail.clear()
    assert tail.size == 0 and state.cached() == 0 and state.stale == 0 and not tail.added
