"""The obstore adapter's listing and deletes against a real S3 server (moto) and memory://.

Listing is paged (obstore's chunked stream) with S3's plain string prefixes, deletes are
idempotent and bulk (S3 DeleteObjects), and `stats.deletes` counts keys.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from services import MotoServer

from driftlog.storage.api import ObjectNotFound, ObjectStore
from driftlog.storage.obstore import ObstoreObjectStore, open_store

PAGE = 3


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(params=["s3", "memory"])
def store_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    moto: MotoServer = request.getfixturevalue("moto_server")
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    yield f"s3://{bucket}"


async def keys_of(store: ObjectStore, prefix: str) -> list[str]:
    return sorted([info.key async for page in store.list_objects(prefix) for info in page])


def test_listing_is_paged_with_string_prefixes(store_url: str) -> None:
    async def body() -> None:
        store = open_store(store_url, list_page_size=PAGE)
        assert isinstance(store, ObstoreObjectStore)
        keys = [f"objects/{i:02d}" for i in range(8)]
        before_ms = int(time.time() * 1000) - 2_000
        for i, key in enumerate(keys):
            await store.put_new(key, [b"x" * i])
        await store.put_new("other/deep/one", [b"abc"])
        await store.put_new("objectsX", [b"not under objects/"])
        pages = [page async for page in store.list_objects("objects/")]
        assert all(1 <= len(page) <= PAGE for page in pages)
        assert len(pages) >= len(keys) // PAGE
        infos = sorted((info for page in pages for info in page), key=lambda i: i.key)
        assert [i.key for i in infos] == keys
        assert [i.size for i in infos] == list(range(8))
        after_ms = int(time.time() * 1000) + 2_000
        assert all(before_ms <= i.last_modified_ms <= after_ms for i in infos)
        # Prefixes that end inside a segment, as S3's own.
        assert await keys_of(store, "objects/0") == keys
        assert await keys_of(store, "objects") == [*keys, "objectsX"]
        assert await keys_of(store, "ot") == ["other/deep/one"]
        assert await keys_of(store, "other/deep/one") == ["other/deep/one"]
        assert await keys_of(store, "nothing") == []
        assert len(await keys_of(store, "")) == 10
        await store.close()

    run(body())


def test_deletes_are_idempotent_and_bulk(store_url: str) -> None:
    async def body() -> None:
        store = open_store(store_url, list_page_size=PAGE)
        keys = [f"objects/{i:03d}" for i in range(25)]
        for key in keys:
            await store.put_new(key, [b"v"])
        await store.put_new("objects/kept", [b"k"])
        await store.delete_many([])
        assert store.stats.deletes == 0
        await store.delete_many(keys[:5])
        # Deleted before, never existed, and present: one call, no error.
        await store.delete_many([*keys, "objects/never-there"])
        assert store.stats.deletes == 5 + 26
        assert await keys_of(store, "objects/") == ["objects/kept"]
        with pytest.raises(ObjectNotFound):
            await store.get_ranges(keys[7], [(0, 1)])
        await store.delete("objects/kept")
        await store.delete("objects/kept")
        await store.delete("objects/never-there")
        assert await keys_of(store, "") == []
        assert store.stats.deletes == 31 + 3
        await store.close()

    run(body())
