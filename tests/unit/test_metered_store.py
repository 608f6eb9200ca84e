"""The metered object store: counts requests and failures by operation and times them on
the clock it is given, without changing any outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from driftlog.clock import FakeClock
from driftlog.metrics.registry import Registry
from driftlog.storage.api import (
    ObjectAlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreStats,
)
from driftlog.storage.faulty import FaultConfig, FaultyObjectStore
from driftlog.storage.metered import MeteredObjectStore
from driftlog.storage.obstore import open_store


class _SlowStore(ObjectStore):
    """Passes calls on, moving a fake clock by `took_ms` during each one."""

    def __init__(self, inner: ObjectStore, clock: FakeClock, took_ms: int) -> None:
        self._inner = inner
        self._clock = clock
        self.took_ms = took_ms
        self.hang = asyncio.Event()

    @property
    def stats(self) -> ObjectStoreStats:
        return self._inner.stats

    def _took(self) -> None:
        self._clock.advance(self.took_ms)

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        self._took()
        await self._inner.put_new(key, chunks)

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        self._took()
        if key == "hangs":
            await self.hang.wait()
        return await self._inner.get_ranges(key, ranges)

    async def delete(self, key: str) -> None:
        self._took()
        await self._inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._took()
        await self._inner.delete_many(keys)

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        async for page in self._inner.list_objects(prefix):
            self._took()
            yield page

    async def close(self) -> None:
        await self._inner.close()


def test_requests_errors_and_latency_by_operation() -> None:
    async def main() -> None:
        clock = FakeClock()
        slow = _SlowStore(open_store("memory://", list_page_size=2), clock, took_ms=30)
        store = MeteredObjectStore(slow, clock)
        registry = Registry()
        latency = registry.histogram("t_seconds", "Latency.", ["op"], buckets=(0.01, 0.1, 1.0))
        for operation in ("put", "get", "delete", "list"):
            store.latency[operation] = latency.labels(operation)

        for n in range(5):
            await store.put_new(f"objects/{n}", [b"abc", b"de"])
        with pytest.raises(ObjectAlreadyExists):
            await store.put_new("objects/0", [b"again"])
        assert [bytes(p) for p in await store.get_ranges("objects/1", [(0, 2), (3, 5)])] == [
            b"ab",
            b"de",
        ]
        slow.took_ms = 300
        with pytest.raises(ObjectNotFound):
            await store.get_ranges("objects/missing", [(0, 1)])
        pages = [page async for page in store.list_objects("objects/")]
        assert sorted(info.key for page in pages for info in page) == [
            f"objects/{n}" for n in range(5)
        ]
        await store.delete("objects/0")
        await store.delete_many(["objects/1", "objects/2"])
        await store.delete_many([])  # no request at all

        assert store.requests == {"put": 6, "get": 2, "delete": 2, "list": 3}
        assert {k: v for k, v in store.errors.items() if v} == {
            ("put", "already_exists"): 1,
            ("get", "not_found"): 1,
        }
        # Bytes and deleted keys stay the inner store's.
        assert store.stats.bytes_put == 25 and store.stats.deletes == 3
        counts = {op: latency.labels(op).bucket_counts for op in ("put", "get", "delete", "list")}
        assert counts["put"] == [0, 6, 0, 0]  # 30 ms each
        assert counts["get"] == [0, 1, 1, 0]  # 30 ms, then the missing one at 300 ms
        assert counts["list"] == [0, 0, 3, 0]
        assert counts["delete"] == [0, 0, 2, 0]
        assert latency.labels("get").sum == pytest.approx(0.33)

    asyncio.run(main())


def test_store_failures_are_counted_and_raised_unchanged() -> None:
    async def main() -> None:
        faulty = FaultyObjectStore(
            open_store("memory://"),
            FaultConfig(put_error=1.0, get_error=1.0, list_error=1.0, delete_error=1.0),
        )
        store = MeteredObjectStore(faulty, FakeClock())
        with pytest.raises(ObjectStoreError, match="injected"):
            await store.put_new("k", [b"x"])
        with pytest.raises(ObjectStoreError):
            await store.get_ranges("k", [(0, 1)])
        with pytest.raises(ObjectStoreError):
            await store.delete_many(["k"])
        with pytest.raises(ObjectStoreError):
            async for _ in store.list_objects(""):
                pass
        assert {k: v for k, v in store.errors.items() if v} == {
            ("put", "error"): 1,
            ("get", "error"): 1,
            ("delete", "error"): 1,
            ("list", "error"): 1,
        }
        assert store.requests == {"put": 1, "get": 1, "delete": 1, "list": 1}

    asyncio.run(main())


def test_a_cancelled_request_is_counted_but_not_timed() -> None:
    async def main() -> None:
        clock = FakeClock()
        slow = _SlowStore(open_store("memory://"), clock, took_ms=5)
        store = MeteredObjectStore(slow, clock)
        registry = Registry()
        get_latency = registry.histogram("t_seconds", "Latency.").labels()
        store.latency["get"] = get_latency
        task = asyncio.create_task(store.get_ranges("hangs", [(0, 1)]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.requests["get"] == 1
        assert get_latency.count == 0
        assert not any(store.errors.values())

    asyncio.run(main())
