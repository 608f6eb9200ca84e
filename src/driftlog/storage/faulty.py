"""A fault-injecting object store for tests: seeded errors, delays and timeouts.

Never on by default; turned on with `--faults` / `DRIFTLOG_FAULTS`, e.g.
`put_error=0.1,get_error=0.05,put_lost_ack=0.02,timeout=0.01,timeout_ms=2000,delay_ms=20,seed=7`.

- `put_error`, `get_error`: fraction of calls that fail before touching the store.
- `list_error`: fraction of listing pages that fail (each page is a request of its own,
  so a listing can fail after some pages were delivered).
- `delete_error`: fraction of deletes that fail; a failed `delete_many` first deletes a
  random leading part of its keys, as a bulk delete that fails part-way does.
- `put_lost_ack`: fraction of PUTs that succeed in the store but report failure,
  as when a response is lost on the network (the object becomes an orphan).
- `timeout`: fraction of calls that hang for `timeout_ms`, then fail.
- `delay_ms`: extra latency, uniformly random up to this, on every call.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, fields

from driftlog.storage.api import ObjectInfo, ObjectStore, ObjectStoreError, ObjectStoreStats


@dataclass(frozen=True, slots=True)
class FaultConfig:
    put_error: float = 0.0
    get_error: float = 0.0
    put_lost_ack: float = 0.0
    list_error: float = 0.0
    delete_error: float = 0.0
    timeout: float = 0.0
    timeout_ms: int = 2000
    delay_ms: int = 0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> FaultConfig:
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, raw = item.partition("=")
            if not sep or name not in known:
                raise ValueError(f"unknown fault setting {item!r}; known: {', '.join(known)}")
            values[name] = int(raw) if name in ("timeout_ms", "delay_ms", "seed") else float(raw)
        return cls(**values)  # type: ignore[arg-type]


class FaultyObjectStore:
    def __init__(self, inner: ObjectStore, config: FaultConfig) -> None:
        self._inner = inner
        self._config = config
        self._rng = random.Random(config.seed)
        self.injected = 0

    @property
    def stats(self) -> ObjectStoreStats:
        return self._inner.stats

    async def _before(self, error_rate: float, what: str) -> None:
        config = self._config
        if config.delay_ms:
            await asyncio.sleep(self._rng.uniform(0, config.delay_ms) / 1000)
        if self._rng.random() < config.timeout:
            self.injected += 1
            await asyncio.sleep(config.timeout_ms / 1000)
            raise ObjectStoreError(f"injected timeout on {what}")
        if self._rng.random() < error_rate:
            self.injected += 1
            raise ObjectStoreError(f"injected error on {what}")

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        await self._before(self._config.put_error, f"put {key}")
        await self._inner.put_new(key, chunks)
        if self._rng.random() < self._config.put_lost_ack:
            self.injected += 1
            raise ObjectStoreError(f"injected lost acknowledgement of put {key}")

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        await self._before(self._config.get_error, f"get {key}")
        return await self._inner.get_ranges(key, ranges)

    async def delete(self, key: str) -> None:
        await self._before(self._config.delete_error, f"delete {key}")
        await self._inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        try:
            await self._before(self._config.delete_error, f"delete of {len(keys)} objects")
        except ObjectStoreError:
            done = self._rng.randrange(len(keys) + 1) if keys else 0
            if done:
                await self._inner.delete_many(keys[:done])
            raise
        await self._inner.delete_many(keys)

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        pages = self._inner.list_objects(prefix)
        try:
            while True:
                await self._before(self._config.list_error, f"list {prefix!r}")
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    return
                yield page
        finally:
            if isinstance(pages, AsyncGenerator):
                await pages.aclose()

    async def close(self) -> None:
        await self._inner.close()
