"""The fault injector's listing and delete faults, over a real local store.

The garbage collector is tested against this wrapper, so its faults must look like
the store's own: a listing that fails after some pages, a bulk delete that fails
part-way (some keys gone, the rest still there), the same seed giving the same faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from driftlog.storage.api import ObjectStoreError
from driftlog.storage.faulty import FaultConfig, FaultyObjectStore
from driftlog.storage.local import LocalObjectStore

KEYS = [f"objects/{i:02d}" for i in range(12)]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def filled(root: Path, page_size: int = 3) -> LocalObjectStore:
    store = LocalObjectStore(root, list_page_size=page_size)
    for key in KEYS:
        await store.put_new(key, [b"x"])
    return store


async def remaining(store: LocalObjectStore) -> list[str]:
    return sorted(info.key for page in [p async for p in store.list_objects("")] for info in page)


def test_parse_knows_the_new_kinds() -> None:
    config = FaultConfig.parse("list_error=0.25,delete_error=0.5,seed=3")
    assert (config.list_error, config.delete_error, config.seed) == (0.25, 0.5, 3)
    with pytest.raises(ValueError, match="list_error"):
        FaultConfig.parse("list_eror=1")


def test_listing_fails_at_any_page_and_the_seed_decides(tmp_path: Path) -> None:
    async def pages_before_failure(seed: int) -> int | None:
        """How many pages a listing delivered before failing (None: it completed)."""
        faulty = FaultyObjectStore(inner, FaultConfig(list_error=0.3, seed=seed))
        delivered = 0
        try:
            async for _ in faulty.list_objects("objects/"):
                delivered += 1
        except ObjectStoreError as e:
            assert "injected error on list" in str(e)
            return delivered
        return None

    async def body() -> list[int | None]:
        outcomes = [await pages_before_failure(seed) for seed in range(30)]
        assert outcomes == [await pages_before_failure(seed) for seed in range(30)]
        return outcomes

    inner = run(filled(tmp_path))
    outcomes = run(body())
    assert None in outcomes  # some listings complete (4 pages of 3)
    assert 0 in outcomes  # some fail on the first page
    assert any(o is not None and o > 0 for o in outcomes)  # some fail after delivering pages

    always = FaultyObjectStore(inner, FaultConfig(list_error=1.0))

    async def fails() -> None:
        with pytest.raises(ObjectStoreError, match="injected"):
            async for _ in always.list_objects(""):
                pass

    run(fails())


def test_failed_bulk_delete_may_leave_part_done_and_a_retry_finishes(tmp_path: Path) -> None:
    async def body() -> set[int]:
        deleted_counts: set[int] = set()
        for seed in range(20):
            root = tmp_path / str(seed)
            inner = await filled(root)
            faulty = FaultyObjectStore(inner, FaultConfig(delete_error=1.0, seed=seed))
            with pytest.raises(ObjectStoreError, match="injected error on delete of 12 objects"):
                await faulty.delete_many(KEYS)
            left = await remaining(inner)
            assert left == KEYS[len(KEYS) - len(left) :]  # a leading part went, the rest stays
            deleted_counts.add(len(KEYS) - len(left))
            # The retry (here without faults) is the same call; deleted keys are fine.
            await FaultyObjectStore(inner, FaultConfig()).delete_many(KEYS)
            assert await remaining(inner) == []
            await inner.close()
        return deleted_counts

    counts = run(body())
    assert any(0 < c < len(KEYS) for c in counts)  # part-way failures happen


def test_single_delete_faults(tmp_path: Path) -> None:
    async def body() -> None:
        inner = await filled(tmp_path)
        faulty = FaultyObjectStore(inner, FaultConfig(delete_error=1.0))
        with pytest.raises(ObjectStoreError, match="injected error on delete objects/00"):
            await faulty.delete("objects/00")
        assert "objects/00" in await remaining(inner)
        healthy = FaultyObjectStore(inner, FaultConfig())
        await healthy.delete("objects/00")
        await healthy.delete("objects/00")  # idempotent through the wrapper too
        await healthy.delete_many([])
        assert "objects/00" not in await remaining(inner)
        await inner.close()

    run(body())
