"""The single-writer coordinator: in-memory sequencing with group commit to a database.

Object commits queue up while the previous database transaction runs; the
writer then sequences everything queued and persists it in one transaction, so
the database sees one transaction per round, not one per object (the seed's
warning about per-partition row locks convoying does not apply: nothing else
writes these rows). Producers waiting on a commit are released only after the
transaction committed.

Database calls run on one dedicated thread; the event loop never blocks on them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    CommittedOffset,
    PartitionOffsets,
    TopicInfo,
)
from driftlog.coordinator.state import CoordinatorState, SequencedObject, topic_with_configs

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bounds one group-commit round so a burst cannot build an unbounded transaction.
MAX_OBJECTS_PER_TRANSACTION = 256
# How long close() lets the round in progress finish.
CLOSE_ROUND_S = 10.0


def _fail(round_: Sequence[_PendingCommit], error: Exception) -> None:
    for *_, future in round_:
        if not future.done():
            future.set_exception(ConnectionError(f"coordinator commit failed: {error!r}"))


class Persistence(Protocol):
    def load(self) -> CoordinatorState: ...
    def persist_objects(self, objects: Sequence[SequencedObject]) -> None: ...
    def put_topic(self, topic: TopicInfo, old_partition_count: int = 0) -> None: ...
    def drop_topic(self, topic: TopicInfo) -> None: ...
    def put_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None: ...
    def delete_group(self, group_id: str) -> None: ...
    def allocate_producer_id(self) -> int: ...
    def close(self) -> None: ...


_PendingCommit = tuple[str, int, Sequence[BatchToCommit], "asyncio.Future[list[CommitOutcome]]"]


class SingleWriterCoordinator:
    def __init__(self, persistence: Persistence, now_ms: Callable[[], int] | None = None) -> None:
        self._persistence = persistence
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coordinator")
        self._state = CoordinatorState()
        self._pending: list[_PendingCommit] = []
        self._wakeup = asyncio.Event()
        # Long-polling fetches waiting for data on a partition (topic id, partition).
        self._waiters: dict[tuple[uuid.UUID, int], set[asyncio.Future[None]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._metadata_lock = asyncio.Lock()
        self.commits_persisted = 0
        self.transactions = 0
        self._closing = False

    async def start(self) -> None:
        self._state = await self._db(self._persistence.load)
        self._writer = asyncio.create_task(self._write_loop(), name="coordinator-writer")

    async def close(self) -> None:
        """Finish the round in progress, fail what is still queued, close the database."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_ROUND_S)
            except TimeoutError:
                self._writer.cancel()
        for *_, future in self._pending:
            if not future.done():
                future.set_exception(ConnectionError("coordinator closed"))
        self._pending.clear()
        await self._db(self._persistence.close)
        self._thread.shutdown(wait=True)

    async def _db(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    # Topics -----------------------------------------------------------------
    def topics(self) -> Sequence[TopicInfo]:
        return list(self._state.topics_by_name.values())

    def topic(self, name: str) -> TopicInfo | None:
        return self._state.topics_by_name.get(name)

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return self._state.topics_by_id.get(topic_id)

    async def create_topic(
        self, name: str, partition_count: int, configs: Mapping[str, str]
    ) -> tuple[ErrorCode, TopicInfo | None]:
        async with self._metadata_lock:
            existing = self.topic(name)
            if existing is not None:
                return ErrorCode.topic_already_exists, existing
            topic = TopicInfo(name, uuid.uuid4(), partition_count, dict(configs))
            await self._db(self._persistence.put_topic, topic)
            self._state.put_topic(topic)
            return ErrorCode.none, topic

    async def delete_topic(self, name: str) -> ErrorCode:
        async with self._metadata_lock:
            topic = self.topic(name)
            if topic is None:
                return ErrorCode.unknown_topic_or_partition
            await self._db(self._persistence.drop_topic, topic)
            self._state.drop_topic(name)
            return ErrorCode.none

    async def create_partitions(self, name: str, new_total: int) -> ErrorCode:
        async with self._metadata_lock:
            topic = self.topic(name)
            if topic is None:
                return ErrorCode.unknown_topic_or_partition
            if new_total <= topic.partition_count:
                return ErrorCode.invalid_partitions
            grown = TopicInfo(topic.name, topic.topic_id, new_total, topic.configs)
            await self._db(self._persistence.put_topic, grown, topic.partition_count)
            self._state.put_topic(grown)
            return ErrorCode.none

    async def alter_topic_configs(self, name: str, configs: Mapping[str, str | None]) -> ErrorCode:
        async with self._metadata_lock:
            topic = self.topic(name)
            if topic is None:
                return ErrorCode.unknown_topic_or_partition
            changed = topic_with_configs(topic, configs)
            await self._db(self._persistence.put_topic, changed, topic.partition_count)
            self._state.put_topic(changed)
            return ErrorCode.none

    async def allocate_producer_id(self) -> int:
        """A producer id never handed out before (KIP-98), durable before it is returned."""
        return await self._db(self._persistence.allocate_producer_id)

    # Write path -------------------------------------------------------------
    def submit_commit(
        self, object_key: str, object_size: int, batches: Sequence[BatchToCommit]
    ) -> asyncio.Future[list[CommitOutcome]]:
        future: asyncio.Future[list[CommitOutcome]] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(ConnectionError("coordinator closing"))
            return future
        self._pending.append((object_key, object_size, batches, future))
        self._wakeup.set()
        return future

    async def commit_object(
        self, object_key: str, object_size: int, batches: Sequence[BatchToCommit]
    ) -> list[CommitOutcome]:
        return await asyncio.shield(self.submit_commit(object_key, object_size, batches))

    async def _write_loop(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                round_ = self._pending[:MAX_OBJECTS_PER_TRANSACTION]
                del self._pending[: len(round_)]
                try:
                    await self._commit_round(round_)
                except Exception as e:
                    # Never let one bad round stop the writer: everyone behind it would hang.
                    log.exception("coordinator round failed")
                    _fail(round_, e)

    async def _commit_round(self, round_: list[_PendingCommit]) -> None:
        now_ms = self._now_ms()
        sequenced: list[SequencedObject] = []
        try:
            for key, size, batches, _ in round_:
                sequenced.append(self._state.sequence(key, size, batches, now_ms))
            await self._db(self._persistence.persist_objects, sequenced)
        except Exception as e:
            log.error("coordinator commit of %d objects failed: %r", len(round_), e)
            # The outcome is ambiguous (a COMMIT can fail after reaching disk):
            # reload what the database holds rather than guess.
            await self._reload_after_failure(sequenced)
            _fail(round_, e)
            return
        self._state.apply(sequenced)
        self.transactions += 1
        self.commits_persisted += len(round_)
        for obj, (*_, future) in zip(sequenced, round_, strict=True):
            if not future.done():
                future.set_result(obj.outcomes)
        self._wake({(row.topic_id, row.partition) for obj in sequenced for row in obj.rows})

    async def _reload_after_failure(self, sequenced: list[SequencedObject]) -> None:
        async with self._metadata_lock:
            try:
                self._state = await self._db(self._persistence.load)
            except Exception as e:
                log.error("coordinator reload failed (%r); rolling back in memory", e)
                self._state.rollback(sequenced)
                return
        self._wake(set(self._waiters))

    def _wake(self, partitions: set[tuple[uuid.UUID, int]]) -> None:
        for key in partitions & self._waiters.keys():
            for waiter in self._waiters.pop(key):
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_for_commit(
        self, partitions: Sequence[tuple[uuid.UUID, int]], timeout_s: float
    ) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in partitions:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            for key in partitions:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[key]

    # Read path --------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None:
        return self._state.partition_offsets(topic_id, partition)

    def find_batches(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, max_bytes: int
    ) -> list[BatchLocation]:
        return self._state.find_batches(topic_id, partition, start_offset, max_bytes)

    def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        return self._state.batch_at_timestamp(topic_id, partition, timestamp_ms)

    def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        return self._state.max_timestamp(topic_id, partition)

    # Consumer-group offsets ---------------------------------------------------
    async def commit_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None:
        await self._db(self._persistence.put_offsets, group_id, offsets)
        self._state.put_offsets(group_id, offsets)

    def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        return self._state.fetch_offsets(group_id, partitions)

    async def delete_group_offsets(self, group_id: str) -> None:
        await self._db(self._persistence.delete_group, group_id)
        self._state.group_offsets.pop(group_id, None)

    def groups_with_offsets(self) -> list[str]:
        return [g for g, offsets in self._state.group_offsets.items() if offsets]
