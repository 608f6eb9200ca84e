"""A bounded LRU cache of stored batch bytes, keyed by (object key, byte offset).

Entries are only ever looked up through committed coordinates, so the cache
cannot serve uncommitted data even though the write path fills it right after
upload (a tail consumer then reads without a GET).
"""

from __future__ import annotations

from collections import OrderedDict

# Stored batch bytes: bytes from the write path, or views of a ranged GET's buffer.
BatchBytes = bytes | memoryview

# What an entry costs beyond its payload (dict node, key tuple, object headers),
# measured at about 300 bytes: without it a cache of tiny batches holds several
# times its configured size.
ENTRY_OVERHEAD_BYTES = 300


class BatchCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries dropped for room (a replaced entry is not one)
        self._entries: OrderedDict[tuple[str, int], BatchBytes] = OrderedDict()

    def get(self, key: tuple[str, int]) -> BatchBytes | None:
        data = self._entries.get(key)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return data

    def peek(self, key: tuple[str, int]) -> bool:
        """Whether the batch is held, without counting or refreshing it."""
        return key in self._entries

    @property
    def entry_count(self) -> int:
        # Not __len__: an empty cache would then be falsy where `cache or ...` is written.
        return len(self._entries)

    def put(self, key: tuple[str, int], data: BatchBytes) -> None:
        cost = len(data) + ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size_bytes -= len(old) + ENTRY_OVERHEAD_BYTES
        self._entries[key] = data
        self.size_bytes += cost
        while self.size_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= len(evicted) + ENTRY_OVERHEAD_BYTES
            self.evictions += 1
