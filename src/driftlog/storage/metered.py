"""Counts and times every request to an object store, by operation, as the caller sees it.

Wraps any `ObjectStore` (the outermost one, so injected faults and delays count as the
store's): `requests` and `errors` are plain counts the metrics registry reads at scrape
time, and `latency` holds one observer per operation (a histogram child once
`agent_metrics.py` attaches one; nothing before). Bytes stay in the inner
store's `stats`. Adds no retries and changes no outcome.

Operations: `put` (put_new), `get` (get_ranges: one call, however many ranges),
`delete` (delete and delete_many: one call each, however many keys; the inner
`stats.deletes` counts keys), `list` (one per page delivered or failed).
Errors, by kind: `already_exists` (a create-only put found its key taken; the write
path's retry counts it as its own), `not_found` (a GET of a missing object), `error`
(anything else: the store failed). A call its caller cancelled is not timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from driftlog.clock import SYSTEM_CLOCK, Clock
from driftlog.metrics.registry import NULL_OBSERVER, Observer
from driftlog.storage.api import (
    ObjectAlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreStats,
)

OPERATIONS = ("put", "get", "delete", "list")
ERROR_KINDS = ("already_exists", "not_found", "error")


def _error_kind(error: BaseException) -> str:
    if isinstance(error, ObjectAlreadyExists):
        return "already_exists"
    if isinstance(error, ObjectNotFound):
        return "not_found"
    return "error"


class MeteredObjectStore(ObjectStore):
    def __init__(self, inner: ObjectStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self._inner = inner
        self._clock = clock
        self.requests: dict[str, int] = dict.fromkeys(OPERATIONS, 0)
        self.errors: dict[tuple[str, str], int] = {
            (op, kind): 0 for op in OPERATIONS for kind in ERROR_KINDS
        }
        # Seconds per request, by operation.
        self.latency: dict[str, Observer] = dict.fromkeys(OPERATIONS, NULL_OBSERVER)

    @property
    def inner(self) -> ObjectStore:
        return self._inner

    @property
    def stats(self) -> ObjectStoreStats:
        return self._inner.stats

    def _finish(self, operation: str, started_s: float, error: BaseException | None) -> None:
        if isinstance(error, asyncio.CancelledError):
            return  # how long the caller waited, not how long the store took
        self.latency[operation].observe(self._clock.monotonic_s() - started_s)
        if error is not None:
            self.errors[(operation, _error_kind(error))] += 1

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        self.requests["put"] += 1
        started_s = self._clock.monotonic_s()
        try:
            await self._inner.put_new(key, chunks)
        except BaseException as e:
            self._finish("put", started_s, e)
            raise
        self._finish("put", started_s, None)

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        self.requests["get"] += 1
        started_s = self._clock.monotonic_s()
        try:
            parts = await self._inner.get_ranges(key, ranges)
        except BaseException as e:
            self._finish("get", started_s, e)
            raise
        self._finish("get", started_s, None)
        return parts

    async def delete(self, key: str) -> None:
        self.requests["delete"] += 1
        started_s = self._clock.monotonic_s()
        try:
            await self._inner.delete(key)
        except BaseException as e:
            self._finish("delete", started_s, e)
            raise
        self._finish("delete", started_s, None)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return  # no request is made
        self.requests["delete"] += 1
        started_s = self._clock.monotonic_s()
        try:
            await self._inner.delete_many(keys)
        except BaseException as e:
            self._finish("delete", started_s, e)
            raise
        self._finish("delete", started_s, None)

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        pages = self._inner.list_objects(prefix)
        try:
            while True:
                started_s = self._clock.monotonic_s()
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    return
                except BaseException as e:
                    self.requests["list"] += 1
                    self._finish("list", started_s, e)
                    raise
                self.requests["list"] += 1
                self._finish("list", started_s, None)
                yield page
        finally:
            if isinstance(pages, AsyncGenerator):
                await pages.aclose()

    async def close(self) -> None:
        await self._inner.close()
