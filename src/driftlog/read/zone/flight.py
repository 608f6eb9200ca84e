"""Single flight: concurrent loads of one key share one call. No I/O of its own.

The first caller for a key runs the load; callers that come while it runs wait for
its result (or its exception). A caller that is cancelled does not cancel the load
others wait on: the load runs in its own task and ends on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}
        self.loads = 0  # calls made
        self.joined = 0  # callers that shared a call already running

    def running(self, key: K) -> bool:
        return key in self._running

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def do(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        task = self._running.get(key)
        if task is None:
            self.loads += 1
            task = asyncio.ensure_future(load())
            self._running[key] = task
            task.add_done_callback(lambda _: self._forget(key, task))
        else:
            self.joined += 1
        # shield: one caller's cancellation must not cancel the load others share.
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaits is not logged as lost
