"""Waiting at most so long for a call that may hang, without waiting for it to stop.

`asyncio.timeout` cancels the call and then waits for it to unwind; a database
driver may take many seconds to do that (psycopg sends a cancel request and waits
for the query to end: 11 s measured through a silent network). Where what matters
is to act on time (a writer stepping down at its lease's expiry, a heartbeat that
declares this agent cut off), `within` stops waiting at the deadline and leaves
the cancelled call to unwind on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def within(timeout_s: float, awaitable: Awaitable[T]) -> T:
    """The call's result, or TimeoutError at the deadline (the call is cancelled and
    left to finish unwinding in the background; its outcome is only logged)."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    except asyncio.CancelledError:
        task.cancel()  # the caller gave up: so does the call
        task.add_done_callback(_forget)
        raise
    if task in done:
        return task.result()
    task.cancel()
    task.add_done_callback(_forget)
    raise TimeoutError(f"no answer within {timeout_s:.1f} s")


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("an abandoned call failed: %r", task.exception())
