"""The write pipeline: buffer, upload, commit in order, then acknowledge. No wire encoding.

1. `reserve` waits for buffer room (first-in first-out), then `append` puts a
   validated batch in the shared buffer and returns a future.
2. The buffer becomes an object when full or when its oldest batch is
   `flush_age_ms` old. Objects upload concurrently (up to `max_uploads`).
3. Objects are submitted to the coordinator strictly in flush order, so a
   partition's offsets follow arrival order even when a later upload finishes
   first. Submission does not wait for the previous commit, so consecutive
   objects can share one database transaction (group commit).
4. Each batch's future resolves with the coordinator's outcome. A failed upload
   or commit resolves it with a retriable error; nothing is acknowledged that is
   not in object storage and committed. An uploaded, uncommitted object is an
   orphan for garbage collection.

Memory is bounded: buffered plus in-flight bytes above `max_pending_bytes`
make `reserve` wait (back-pressure on producers).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Callable

from kio.schema.errors import ErrorCode

from driftlog.clock import SYSTEM_CLOCK, Clock
from driftlog.coordinator.api import CommitOutcome, CommitRequest, Coordinator
from driftlog.metrics.registry import NULL_OBSERVER, Observer
from driftlog.records.batch import BatchHeader
from driftlog.storage.api import ObjectAlreadyExists, ObjectStore, ObjectStoreError
from driftlog.storage.keys import new_object_key
from driftlog.write.buffer import PendingBatch, WriteBuffer
from driftlog.write.layout import ObjectLayout, lay_out

log = logging.getLogger(__name__)

CommitHook = Callable[[str, ObjectLayout], None]

UPLOAD_ATTEMPTS = 3
UPLOAD_RETRY_BACKOFF_S = 0.05


class PipelineTimings:
    """Per-object durations: the recent ones (benchmarks' percentiles), and histograms
    of all of them once the metrics registry attaches its observers (in seconds)."""

    SAMPLES = 10_000

    def __init__(self) -> None:
        self.upload_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        self.order_wait_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        self.commit_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        # Per batch: from append to the outcome (what a producer waits inside the agent).
        self.ack_ms: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)
        self.upload_seconds: Observer = NULL_OBSERVER
        self.order_wait_seconds: Observer = NULL_OBSERVER
        self.commit_seconds: Observer = NULL_OBSERVER
        self.ack_seconds: Observer = NULL_OBSERVER
        # Bytes per object flushed (how full objects get before their age flushes them).
        self.object_bytes: Observer = NULL_OBSERVER

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("upload_ms", "order_wait_ms", "commit_ms", "ack_ms"):
            samples = sorted(getattr(self, name))
            if samples:
                out[f"{name}_p50"] = round(samples[len(samples) // 2], 2)
                out[f"{name}_p99"] = round(samples[int(len(samples) * 0.99)], 2)
        return out


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
        on_committed: CommitHook | None = None,
        clock: Clock = SYSTEM_CLOCK,
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
        self._on_committed = on_committed
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._previous_turn: asyncio.Future[None] | None = None
        # Objects flushed and not yet answered (uploading, waiting their turn, committing).
        self._in_flight: dict[int, ObjectLayout] = {}  # by id(): layouts hold lists
        self._flushes: set[asyncio.Task[None]] = set()
        self.timings = PipelineTimings()
        self.uploads_in_flight = 0
        # Objects whose batches were answered with an error, by the step that failed.
        self.failed_uploads = 0
        self.failed_commits = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes reserved, buffered or in flight (producers wait past `max_pending_bytes`)."""
        return self._pending_bytes

    async def reserve(self, size: int) -> None:
        """Wait until `size` more bytes may be buffered, then hold them for `append`.

        A Produce request reserves all its batches at once and then appends them
        without awaiting, so requests reach the buffer whole and in arrival order
        (first-in first-out: a later request never overtakes a waiting one).
        """
        if not self._space_waiters and self._has_room(size):
            self._pending_bytes += size
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._space_waiters.append(entry)
        try:
            await turn  # the room is reserved for us when this resolves
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pending_bytes -= size
            elif entry in self._space_waiters:
                self._space_waiters.remove(entry)
            self._admit_waiters()
            raise

    def release(self, size: int) -> None:
        """Give back reserved bytes that will not be appended."""
        self._pending_bytes -= size
        self._admit_waiters()

    def append(
        self, topic_id: uuid.UUID, partition: int, data: bytes, header: BatchHeader
    ) -> asyncio.Future[CommitOutcome]:
        """Buffer one batch whose bytes were reserved; the future resolves once committed."""
        waiter: asyncio.Future[CommitOutcome] = asyncio.get_running_loop().create_future()
        self._buffer.add(PendingBatch(topic_id, partition, data, header, waiter), self._now_ms())
        if self._buffer.is_full():
            self.flush()
        elif self._timer is None:
            delay_s = max(self._buffer.flush_age_ms, 0) / 1000
            self._timer = asyncio.get_running_loop().call_later(delay_s, self.flush)
        return waiter

    def _now_ms(self) -> int:
        return int(self._clock.monotonic_s() * 1000)

    def _has_room(self, size: int) -> bool:
        return self._pending_bytes + size <= self._max_pending_bytes or not self._pending_bytes

    def _admit_waiters(self) -> None:
        # Reserve room for each admitted waiter now, so the next one sees it taken.
        while self._space_waiters:
            size, turn = self._space_waiters[0]
            if turn.done():  # cancelled while waiting: nothing to reserve
                self._space_waiters.popleft()
                continue
            if not self._has_room(size):
                return
            self._space_waiters.popleft()
            self._pending_bytes += size
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
        self._in_flight[id(layout)] = layout
        self.timings.object_bytes.observe(layout.size)
        previous = self._previous_turn
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._previous_turn = turn
        task = asyncio.create_task(self._upload_and_commit(layout, previous, turn))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def answer_waiting(self, outcome: CommitOutcome) -> int:
        """Answer every batch still waiting for its commit with `outcome` now (an agent
        stepping aside: its producers retry elsewhere instead of waiting on a database it
        cannot reach). The objects go on and may still commit: an idempotent producer's
        retry of the same batch is then recognized by its sequence numbers. Returns how
        many batches were answered."""
        answered = 0
        waiting = [b for layout in self._in_flight.values() for b in layout.batches]
        for batch in [*waiting, *self._buffer.batches]:
            if not batch.waiter.done():
                batch.waiter.set_result(outcome)
                answered += 1
        return answered

    @property
    def is_idle(self) -> bool:
        return not (self._flushes or self._buffer.batches or self._space_waiters)

    async def drain(self) -> None:
        """Flush until nothing is buffered, waiting or in flight (call with intake stopped)."""
        while not self.is_idle:
            self.flush()
            if self._flushes:
                await asyncio.gather(*self._flushes, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)  # admitted producers are appending

    async def _put_with_retries(self, key: str, layout: ObjectLayout) -> None:
        """Upload, retrying transient failures before producers see an error.

        Every storage error a producer sees makes idempotent clients bump their
        epoch (librdkafka does), so a few quick retries here are worth it. The
        key is unique and the put create-only: if a retry finds the key taken,
        an earlier attempt stored it and only its answer was lost.
        """
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                await self._store.put_new(key, layout.chunks)
                return
            except ObjectAlreadyExists:
                if attempt == 0:
                    raise  # nobody else writes this key: a real conflict
                return
            except ObjectStoreError as e:
                if attempt == UPLOAD_ATTEMPTS - 1:
                    raise
                log.info("upload of %s failed (attempt %d): %s; retrying", key, attempt + 1, e)
                await asyncio.sleep(UPLOAD_RETRY_BACKOFF_S * (attempt + 1))

    async def _upload_and_commit(
        self,
        layout: ObjectLayout,
        previous: asyncio.Future[None] | None,
        turn: asyncio.Future[None],
    ) -> None:
        key = new_object_key(self._clock.wall_ms())
        commit: asyncio.Future[list[CommitOutcome]] | None = None
        timings = self.timings
        try:
            started = self._clock.monotonic_s()
            async with self._uploads:
                self.uploads_in_flight += 1
                try:
                    await self._put_with_retries(key, layout)
                finally:
                    self.uploads_in_flight -= 1
            uploaded = self._clock.monotonic_s()
            timings.upload_ms.append((uploaded - started) * 1000)
            timings.upload_seconds.observe(uploaded - started)
            if previous is not None:
                await asyncio.shield(previous)
            order_wait_s = self._clock.monotonic_s() - uploaded
            timings.order_wait_ms.append(order_wait_s * 1000)
            timings.order_wait_seconds.observe(order_wait_s)
            # Submitting is synchronous and the coordinator commits in submission
            # order, so the next object may submit right away (and share a transaction).
            commit = self._coordinator.submit_commit(
                CommitRequest(key, layout.size, layout.coordinates)
            )
        except Exception as e:
            self.failed_uploads += 1
            log.warning("object %s not uploaded (%d batches): %r", key, len(layout.batches), e)
        finally:
            if commit is None and previous is not None:
                # A failed object still waits its turn: later objects must not
                # commit before earlier ones, or a partition's order would break.
                await asyncio.shield(previous)
            turn.set_result(None)
        outcomes = [CommitOutcome(ErrorCode.kafka_storage_error)] * len(layout.batches)
        if commit is not None:
            submitted = self._clock.monotonic_s()
            try:
                outcomes = await asyncio.shield(commit)
                commit_s = self._clock.monotonic_s() - submitted
                timings.commit_ms.append(commit_s * 1000)
                timings.commit_seconds.observe(commit_s)
                if self._on_committed is not None:
                    self._on_committed(key, layout)
            except Exception as e:
                self.failed_commits += 1
                log.warning("object %s not committed: %r", key, e)
        self._in_flight.pop(id(layout), None)
        self._pending_bytes -= layout.size
        self._admit_waiters()
        now_ms = self._now_ms()
        observe_ack_s = timings.ack_seconds.observe
        for batch, outcome in zip(layout.batches, outcomes, strict=True):
            timings.ack_ms.append(now_ms - batch.appended_ms)
            observe_ack_s((now_ms - batch.appended_ms) / 1000)
            if not batch.waiter.done():
                batch.waiter.set_result(outcome)
