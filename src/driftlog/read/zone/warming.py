"""The write path's object store: each object it uploads warms its blocks' owners at once.

Wraps the store the write pipeline puts objects with. After a PUT succeeds, before the
object's commit, the uploader sends each block to its owner in this zone (or keeps
it, `ZoneCache.warm_object`), so the warm frame is ahead of any reader: readers learn
of an object only from its commit, which takes at least a round trip to the writer
and a database transaction more. Warming an object not yet committed is safe: the
cache is only ever looked up through committed coordinates, and a block of an object
that never commits (an orphan) just ages out of the owner's LRU. Everything else is
passed through untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from driftlog.read.zone.cache import ZoneCache
from driftlog.storage.api import ObjectInfo, ObjectStore, ObjectStoreStats


class WarmingStore(ObjectStore):
    def __init__(self, inner: ObjectStore, zone: ZoneCache) -> None:
        self._inner = inner
        self._zone = zone

    @property
    def stats(self) -> ObjectStoreStats:
        return self._inner.stats

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        await self._inner.put_new(key, chunks)
        self._zone.warm_object(key, chunks, sum(len(c) for c in chunks))

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        return await self._inner.get_ranges(key, ranges)

    async def delete(self, key: str) -> None:
        await self._inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._inner.delete_many(keys)

    def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        return self._inner.list_objects(prefix)

    async def close(self) -> None:
        await self._inner.close()
