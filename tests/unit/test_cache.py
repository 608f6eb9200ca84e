"""The batch-bytes cache counts what entries cost, not only their payload."""

from __future__ import annotations

from driftlog.read.cache import ENTRY_OVERHEAD_BYTES, BatchCache


def test_tiny_batches_count_their_overhead() -> None:
    cache = BatchCache(max_bytes=100 * (90 + ENTRY_OVERHEAD_BYTES))
    for i in range(1000):
        cache.put(("object", i), bytes(90))
    assert len(cache._entries) == 100
    assert cache.size_bytes <= cache.max_bytes
    assert cache.get(("object", 999)) is not None
    assert cache.get(("object", 0)) is None  # evicted, least recently used first


def test_replacing_an_entry_keeps_the_accounting_exact() -> None:
    cache = BatchCache(max_bytes=10_000)
    cache.put(("o", 0), bytes(100))
    cache.put(("o", 0), bytes(50))
    assert cache.size_bytes == 50 + ENTRY_OVERHEAD_BYTES
