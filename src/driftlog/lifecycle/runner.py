"""Runs the garbage collector and the compactors in the background, on the jobs agent.

The agent decides which jobs run where (`enabled`): one live agent of the cluster with
the `jobs` role (cluster/placement.py, `jobs_agent`), whose swaps go to the writer, over
the writer RPC when it is another agent. One agent doing the work is enough and keeps the
store's list and delete requests to one stream; the jobs are nonetheless safe on several
agents at once (see `gc.py`, `compactor.py`, `key_compactor.py`), which matters while
agents disagree on membership for a heartbeat or two. Real time here: the jobs
themselves take the core's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PeriodicJob:
    """Calls `step` every `interval_ms` while `enabled()` says so; never overlaps itself."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval_ms: int,
        enabled: Callable[[], bool],
    ) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_ms / 1000
        self._enabled = enabled
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._enabled():
                continue
            try:
                await self._step()
            except Exception:
                log.exception("%s failed", self.name)  # the next interval tries again

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
