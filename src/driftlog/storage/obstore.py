"""The obstore adapter: memory and S3 (and S3-compatible) stores; `open_store` for all URLs.

Translates obstore's exceptions into the storage seam's. obstore's own retry
policy is turned off so failures surface to the write path as they happen.
`file://` URLs open `storage/local.py` instead: obstore's LocalStore never fsyncs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import MemoryStore, S3Store

from driftlog.storage.api import (
    LIST_PAGE_SIZE,
    ObjectAlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreStats,
)
from driftlog.storage.local import LocalObjectStore


def open_store(url: str, *, list_page_size: int = LIST_PAGE_SIZE) -> ObjectStore:
    """Open `file:///dir`, `memory://` or `s3://bucket[/prefix]` (AWS_* variables configure S3)."""
    inner: Any
    if url.startswith("file://"):
        # Objects durable (fsynced) before put_new returns; same layout as obstore's LocalStore.
        return LocalObjectStore(url.removeprefix("file://"), list_page_size=list_page_size)
    if url.startswith("memory://"):
        inner = MemoryStore()
    elif url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
        client_options: dict[str, Any] = {"timeout": "30s", "connect_timeout": "5s"}
        if endpoint and endpoint.startswith("http://"):
            client_options["allow_http"] = True
        inner = S3Store.from_url(
            url,
            config=config,  # type: ignore[arg-type]
            client_options=client_options,  # type: ignore[arg-type]
            retry_config={"max_retries": 0},
        )
    else:
        raise ValueError(f"unsupported object store URL {url!r} (file://, memory://, s3://)")
    return ObstoreObjectStore(inner, list_page_size=list_page_size)


class ObstoreObjectStore:
    def __init__(self, inner: Any, *, list_page_size: int = LIST_PAGE_SIZE) -> None:
        self._inner = inner
        self._list_page_size = list_page_size
        self.stats = ObjectStoreStats()

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        self.stats.puts += 1
        try:
            await obstore.put_async(self._inner, key, chunks, mode="create", use_multipart=False)
        except AlreadyExistsError as e:
            raise ObjectAlreadyExists(key) from e
        except Exception as e:
            raise ObjectStoreError(f"put {key}: {e}") from e
        self.stats.bytes_put += sum(len(c) for c in chunks)

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        self.stats.gets += 1
        try:
            parts = await obstore.get_ranges_async(
                self._inner,
                key,
                starts=[start for start, _ in ranges],
                ends=[end for _, end in ranges],
            )
        except FileNotFoundError as e:
            raise ObjectNotFound(key) from e
        except Exception as e:
            raise ObjectStoreError(f"get {key}: {e}") from e
        # Views of obstore's buffers: no copy until a response is assembled.
        out = [memoryview(p) for p in parts]
        self.stats.bytes_got += sum(len(p) for p in out)
        return out

    async def delete(self, key: str) -> None:
        self.stats.deletes += 1
        await self._delete_one(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        self.stats.deletes += len(keys)
        try:
            # S3: DeleteObjects, up to 1,000 keys a request; missing keys count as deleted.
            await obstore.delete_async(self._inner, list(keys))
        except FileNotFoundError:
            # Stores that report missing keys stop at the first one (obstore's docs: local,
            # GCP, Azure): which of the others went is unknown, so delete them one by one.
            for key in keys:
                await self._delete_one(key)
        except Exception as e:
            raise ObjectStoreError(f"delete of {len(keys)} objects: {e}") from e

    async def _delete_one(self, key: str) -> None:
        try:
            await obstore.delete_async(self._inner, key)
        except FileNotFoundError:
            return  # idempotent: already gone
        except Exception as e:
            raise ObjectStoreError(f"delete {key}: {e}") from e

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        # obstore matches prefixes by whole path segment ("objects/" but not "obj"); the
        # seam promises S3's plain string prefix, so list from the last "/" and filter.
        directory = prefix[: prefix.rfind("/") + 1]
        stream = obstore.list(self._inner, directory or None, chunk_size=self._list_page_size)
        while True:
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except Exception as e:
                raise ObjectStoreError(f"list {prefix!r}: {e}") from e
            page = [
                ObjectInfo(
                    meta["path"], meta["size"], int(meta["last_modified"].timestamp() * 1000)
                )
                for meta in chunk
                if meta["path"].startswith(prefix)
            ]
            if page:
                yield page

    async def close(self) -> None:
        return None
