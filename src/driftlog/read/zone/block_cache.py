"""A bounded LRU of blocks, keyed by (object key, block index). Pure.

Holds the blocks this agent owns (fetched or warmed by their uploader) and those it
fetched itself while their owner was unreachable. Counts what an entry costs beyond
its bytes, as `read/cache.py` does, so the bound holds for small blocks too. A block
larger than the whole cache is not kept.
"""

from __future__ import annotations

from collections import OrderedDict

from driftlog.read.zone.blocks import BlockId

ENTRY_OVERHEAD_BYTES = 300


class BlockCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("a cache size cannot be negative")
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[BlockId, memoryview] = OrderedDict()

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def get(self, block: BlockId) -> memoryview | None:
        data = self._entries.get(block)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(block)
        return data

    def peek(self, block: BlockId) -> bool:
        """Whether the block is held, without counting or refreshing it."""
        return block in self._entries

    def put(self, block: BlockId, data: bytes | memoryview) -> None:
        view = memoryview(data).toreadonly()
        cost = len(view) + ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes:
            return
        old = self._entries.pop(block, None)
        if old is not None:
            self.size_bytes -= len(old) + ENTRY_OVERHEAD_BYTES
        self._entries[block] = view
        self.size_bytes += cost
        while self.size_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= len(evicted) + ENTRY_OVERHEAD_BYTES
            self.evictions += 1
