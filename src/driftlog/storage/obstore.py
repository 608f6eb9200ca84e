"""The obstore adapter: memory and S3 (and S3-compatible) stores; `open_store` for all URLs.

Translates obstore's exceptions into the storage seam's. obstore's own retry
policy is turned off so failures surface to the write path as they happen.
`file://` URLs open `storage/local.py` instead: obstore's LocalStore never fsyncs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import MemoryStore, S3Store

from driftlog.storage.api import (
    ObjectAlreadyExists,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreStats,
)
from driftlog.storage.local import LocalObjectStore


def open_store(url: str) -> ObjectStore:
    """Open `file:///dir`, `memory://` or `s3://bucket[/prefix]` (AWS_* variables configure S3)."""
    inner: Any
    if url.startswith("file://"):
        # Objects durable (fsynced) before put_new returns; same layout as obstore's LocalStore.
        return LocalObjectStore(url.removeprefix("file://"))
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
    return ObstoreObjectStore(inner)


class ObstoreObjectStore:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
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
        try:
            await obstore.delete_async(self._inner, key)
        except FileNotFoundError:
            return
        except Exception as e:
            raise ObjectStoreError(f"delete {key}: {e}") from e

    async def close(self) -> None:
        return None
