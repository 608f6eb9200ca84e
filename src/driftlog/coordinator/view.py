"""An agent's read view of the coordinator: topics, watermarks, batch coordinates.

What it serves is never ahead of durability: the high watermark and the tail
cache advance only when the writer reports a committed transaction (in this
process through `WriterListener`; from another process by its notifications),
and database lookups are bounded by the watermark the view reports.

Memory is bounded by the tail cache (`tail.py`) plus a few numbers per
partition; older coordinates are looked up in the database with indexed range
queries, so resident memory stays flat however long the log grows.

Long-polling fetches wait on a future per partition that the next commit to it
resolves; nothing polls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence

from driftlog.coordinator.api import BatchLocation, PartitionOffsets, TopicInfo
from driftlog.coordinator.backend import Backend, LogStart, partition_offsets
from driftlog.coordinator.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.tail import TailIndex


class CoordinatorView:
    def __init__(self, backend: Backend, tail: TailIndex | None = None) -> None:
        self._backend = backend
        self.tail = tail or TailIndex()
        self._topics_by_name: dict[str, TopicInfo] = {}
        self._topics_by_id: dict[uuid.UUID, TopicInfo] = {}
        self._offsets: dict[PartitionKey, PartitionOffsets] = {}
        self._waiters: dict[PartitionKey, set[asyncio.Future[None]]] = {}
        self.database_reads = 0

    async def load(self) -> None:
        # One consistent read: topics and watermarks from the same snapshot.
        snapshot = await self._backend.load_sequencer(0)
        self._set_topics(snapshot.topics)
        self._offsets = partition_offsets(snapshot)
        self.tail.clear()

    def _set_topics(self, topics: Iterable[TopicInfo]) -> None:
        self._topics_by_name = {t.name: t for t in topics}
        self._topics_by_id = {t.topic_id: t for t in self._topics_by_name.values()}

    # Changes reported by the writer ------------------------------------------------
    def on_applied(self, objects: Sequence[SequencedObject]) -> None:
        # Rows straight from the local writer, grouped without copying them.
        by_partition: dict[PartitionKey, list[BatchLocation]] = {}
        for obj in objects:
            for row in obj.rows:
                key = (row[0], row[1])
                locations = by_partition.get(key)
                if locations is None:
                    by_partition[key] = [row[2]]
                else:
                    locations.append(row[2])
        self._apply(by_partition)

    def on_remote_applied(self, batches: Sequence[tuple[uuid.UUID, int, BatchLocation]]) -> None:
        """Committed batches, in commit order (from the local writer or the writer's stream).

        Batches the view already covers are skipped, so a stream that overlaps a
        resynchronization from the database is harmless.
        """
        by_partition: dict[PartitionKey, list[BatchLocation]] = {}
        for topic_id, partition, location in batches:
            key = (topic_id, partition)
            locations = by_partition.get(key)
            if locations is None:
                by_partition[key] = [location]
            else:
                locations.append(location)
        self._apply(by_partition)

    def _apply(self, by_partition: dict[PartitionKey, list[BatchLocation]]) -> None:
        """Each partition's committed batches, in offset order: per partition, one lookup
        of its offsets, one tail append, one store (a key hashes a uuid in Python)."""
        offsets = self._offsets
        append = self.tail.append
        new = tuple.__new__
        for key, locations in by_partition.items():
            current = offsets.get(key)
            if current is None:
                continue
            log_start, hwm = current
            if locations[0].base_offset < hwm:  # already known (a resync overlapped)
                locations = [loc for loc in locations if loc.base_offset >= hwm]
                if not locations:
                    continue
            # A gap (not contiguous with what the view has) clears the partition's cache.
            append(key, locations, locations[0].base_offset != hwm)
            offsets[key] = new(PartitionOffsets, (log_start, locations[-1].last_offset + 1))
        self._wake(by_partition.keys())

    async def resync(self) -> None:
        """Reload topics and watermarks from the database (after missing the writer's stream)."""
        snapshot = await self._backend.load_sequencer(0)
        offsets = partition_offsets(snapshot)
        self._set_topics(snapshot.topics)
        for key, new in offsets.items():
            old = self._offsets.get(key)
            if old is None:
                self._offsets[key] = new
            elif old != new:
                # Never lower a watermark: what the view showed was durable, and a read
                # racing with newer commits may be older than the view.
                self.tail.invalidate(key)
                self._offsets[key] = PartitionOffsets(
                    max(old.log_start_offset, new.log_start_offset),
                    max(old.high_watermark, new.high_watermark),
                )
        for key in set(self._offsets) - set(offsets):
            del self._offsets[key]
            self.tail.invalidate(key)
        self._wake(list(self._waiters))

    def on_reloaded(self, snapshot: SequencerSnapshot) -> None:
        self._set_topics(snapshot.topics)
        offsets = {
            key: PartitionOffsets(p.log_start_offset, p.high_watermark)
            for key, p in snapshot.partitions.items()
        }
        for key, new in offsets.items():
            old = self._offsets.get(key)
            if old is not None and old != new:
                self.tail.invalidate(key)
                if old.high_watermark > new.high_watermark:
                    offsets[key] = PartitionOffsets(new.log_start_offset, old.high_watermark)
        self._offsets = offsets
        self._wake(list(self._waiters))

    def on_topic_put(self, topic: TopicInfo) -> None:
        old = self._topics_by_name.get(topic.name)
        if old is not None and old.topic_id != topic.topic_id:
            self.on_topic_dropped(old)
        self._topics_by_name[topic.name] = topic
        self._topics_by_id[topic.topic_id] = topic
        for partition in range(topic.partition_count):
            self._offsets.setdefault((topic.topic_id, partition), PartitionOffsets(0, 0))

    def on_log_starts(self, starts: Sequence[LogStart]) -> None:
        for topic_id, partition, log_start in starts:
            key = (topic_id, partition)
            current = self._offsets.get(key)
            if current is not None and log_start > current.log_start_offset:
                self._offsets[key] = PartitionOffsets(
                    log_start, max(current.high_watermark, log_start)
                )

    def forget_cached(self, partitions: Iterable[PartitionKey]) -> None:
        """Drop these partitions' cached coordinates: the next read asks the database.

        Called when coordinates moved (compaction) or a read found an object gone.
        """
        for key in partitions:
            self.tail.invalidate(key)

    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None:
        self.forget_cached(partitions)

    def on_topic_dropped(self, topic: TopicInfo) -> None:
        self._topics_by_name.pop(topic.name, None)
        self._topics_by_id.pop(topic.topic_id, None)
        for partition in range(topic.partition_count):
            self._offsets.pop((topic.topic_id, partition), None)
            self.tail.invalidate((topic.topic_id, partition))

    # Topics -------------------------------------------------------------------------
    def topics(self) -> Sequence[TopicInfo]:
        return list(self._topics_by_name.values())

    def topic(self, name: str) -> TopicInfo | None:
        return self._topics_by_name.get(name)

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return self._topics_by_id.get(topic_id)

    # Coordinates ----------------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None:
        return self._offsets.get((topic_id, partition))

    async def find_batches(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, max_bytes: int
    ) -> list[BatchLocation]:
        offsets = self._offsets.get((topic_id, partition))
        if offsets is None or start_offset >= offsets.high_watermark:
            return []
        cached = self.tail.find((topic_id, partition), start_offset, max_bytes)
        if cached is not None:
            return cached
        self.database_reads += 1
        return await self._backend.read_batches(
            topic_id, partition, start_offset, offsets.high_watermark, max_bytes
        )

    async def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        offsets = self._offsets.get((topic_id, partition))
        if offsets is None or offsets.high_watermark == offsets.log_start_offset:
            return None
        self.database_reads += 1
        return await self._backend.first_batch_at_time(
            topic_id,
            partition,
            timestamp_ms,
            offsets.log_start_offset,
            offsets.high_watermark,
        )

    async def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        offsets = self._offsets.get((topic_id, partition))
        if offsets is None or offsets.high_watermark == 0:
            return -1
        self.database_reads += 1
        return await self._backend.last_time_index(topic_id, partition, offsets.high_watermark)

    # Long polling -----------------------------------------------------------------------
    def _wake(self, partitions: Iterable[PartitionKey]) -> None:
        if not self._waiters:
            return
        for key in partitions:
            waiting = self._waiters.pop(key, None)
            for waiter in waiting or ():
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
