"""The write pipeline: buffer, upload, commit in order, then acknowledge. No wire encoding.

1. `append` puts a validated batch in the shared buffer and returns a future.
2. The buffer becomes an object when full or when its oldest batch is
   `flush_age_ms` old. Objects upload concurrently (up to `max_uploads`).
3. Objects commit to the coordinator strictly in flush order, so a partition's
   offsets follow arrival order even when a later upload finishes first.
4. Each batch's future resolves with the coordinator's outcome. A failed upload
   or commit resolves it with a retriable error; nothing is acknowledged that is
   not in object storage and committed. An uploaded, uncommitted object is an
   orphan for garbage collection.

Memory is bounded: buffered plus in-flight bytes above `max_pending_bytes`
make `append` wait (back-pressure on producers).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CommitOutcome, Coordinator
from driftlog.records.batch import BatchHeader
from driftlog.storage.api import ObjectStore
from driftlog.write.buffer import PendingBatch, WriteBuffer
from driftlog.write.layout import ObjectLayout, lay_out

log = logging.getLogger(__name__)

UploadHook = Callable[[str, ObjectLayout], None]


class PipelineTimings:
    """Recent per-object durations, for the stats line and benchmarks."""

    SAMPLES = 10_000

    def __init__(self) -> None:
        self.upload_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        self.order_wait_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        self.commit_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        # Per batch: from append to the outcome (what a producer waits inside the agent).
        self.ack_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("upload_ms", "order_wait_ms", "commit_ms", "ack_ms"):
            samples = sorted(getattr(self, name))
            if samples:
                out[f"{name}_p50"] = round(samples[len(samples) // 2], 2)
                out[f"{name}_p99"] = round(samples[int(len(samples) * 0.99)], 2)
        return out


def new_object_key(now_ms: int) -> str:
    # Time first so listings sort by age (useful for GC); uuid for uniqueness across agents.
    return f"objects/{now_ms:013d}-{uuid.uuid4().hex}"


class WritePipeline:
    def __init__(
        self,
        store: ObjectStore,
        coordinator: Coordinator,
        *,
        flush_bytes: int,
        flush_age_ms: int,
        max_uploads: int = 4,
        max_pending_bytes: int = 256 * 1024 * 1024,
        on_uploaded: UploadHook | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._buffer = WriteBuffer(flush_bytes=flush_bytes, flush_age_ms=flush_age_ms)
        self._uploads = asyncio.Semaphore(max_uploads)
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._space_waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._on_uploaded = on_uploaded
        self._now_ms = now_ms or (lambda: int(time.monotonic() * 1000))
        self._timer: asyncio.TimerHandle | None = None
        self._previous_commit: asyncio.Future[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self.timings = PipelineTimings()

    async def append(
        self, topic_id: uuid.UUID, partition: int, data: bytes, header: BatchHeader
    ) -> asyncio.Future[CommitOutcome]:
        """Queue one batch; the returned future resolves once it is committed (or failed)."""
        size = len(data)
        if self._space_waiters or not self._has_room(size):
            # FIFO: a later batch never overtakes an earlier one that is waiting,
            # so partitions keep arrival order (idempotent sequences depend on it).
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (size, turn)
            self._space_waiters.append(entry)
            try:
                await turn  # room is reserved for us when this resolves
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._pending_bytes -= size
                    self._admit_waiters()
                elif entry in self._space_waiters:
                    self._space_waiters.remove(entry)
                raise
        else:
            self._pending_bytes += size
        waiter: asyncio.Future[CommitOutcome] = asyncio.get_running_loop().create_future()
        self._buffer.add(PendingBatch(topic_id, partition, data, header, waiter), self._now_ms())
        if self._buffer.is_full():
            self.flush()
        elif self._timer is None:
            delay_s = max(self._buffer.flush_age_ms, 0) / 1000
            self._timer = asyncio.get_running_loop().call_later(delay_s, self.flush)
        return waiter

    def _has_room(self, size: int) -> bool:
        return self._pending_bytes + size <= self._max_pending_bytes or not self._pending_bytes

    def _admit_waiters(self) -> None:
        # Reserve room for each admitted waiter now, so the next one sees it taken.
        while self._space_waiters and self._has_room(self._space_waiters[0][0]):
            size, turn = self._space_waiters.popleft()
            self._pending_bytes += size
            if not turn.done():
                turn.set_result(None)

    def flush(self) -> None:
        """Turn the buffer into an object now (no-op when empty)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batches = self._buffer.take()
        if not batches:
            return
        layout = lay_out(batches)
        previous = self._previous_commit
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._previous_commit = turn
        task = asyncio.create_task(self._upload_and_commit(layout, previous, turn))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def drain(self) -> None:
        """Flush what is buffered and wait until every object is committed or failed."""
        self.flush()
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _upload_and_commit(
        self,
        layout: ObjectLayout,
        previous: asyncio.Future[None] | None,
        turn: asyncio.Future[None],
    ) -> None:
        key = new_object_key(int(time.time() * 1000))
        try:
            outcomes = await self._upload_then_commit(key, layout, previous)
        except Exception as e:
            log.warning("object %s not committed (%d batches): %r", key, len(layout.batches), e)
            outcomes = [CommitOutcome(ErrorCode.kafka_storage_error)] * len(layout.batches)
        finally:
            if previous is not None:
                # A failed object still waits its turn: later objects must not
                # commit before earlier ones, or a partition's order would break.
                await asyncio.shield(previous)
            if not turn.done():
                turn.set_result(None)
            self._pending_bytes -= layout.size
            self._admit_waiters()
        now_ms = self._now_ms()
        for batch, outcome in zip(layout.batches, outcomes, strict=True):
            self.timings.ack_ms.append(now_ms - batch.appended_ms)
            if not batch.waiter.done():
                batch.waiter.set_result(outcome)

    async def _upload_then_commit(
        self, key: str, layout: ObjectLayout, previous: asyncio.Future[None] | None
    ) -> list[CommitOutcome]:
        started = time.monotonic()
        async with self._uploads:
            await self._store.put_new(key, layout.chunks)
        uploaded = time.monotonic()
        self.timings.upload_ms.append((uploaded - started) * 1000)
        if self._on_uploaded is not None:
            self._on_uploaded(key, layout)
        if previous is not None:
            # Commit in flush order; the earlier object's failure does not block this one.
            await previous
        waited = time.monotonic()
        outcomes = await self._coordinator.commit_object(key, layout.size, layout.coordinates)
        self.timings.order_wait_ms.append((waited - uploaded) * 1000)
        self.timings.commit_ms.append((time.monotonic() - waited) * 1000)
        return outcomes
