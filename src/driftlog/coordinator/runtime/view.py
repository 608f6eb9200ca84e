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
import itertools
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from driftlog.coordinator.api import BatchLocation, PartitionOffsets, TopicInfo
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.core.tail import PartitionState, TailIndex
from driftlog.coordinator.core.transactions import AbortedTxn, TxnClose, TxnOpen
from driftlog.coordinator.engines.backend import Backend, LogStart, partition_offsets

# Aborted transactions a view remembers per partition; reads from further back ask the
# database (they are rare: a read_committed consumer catching up past many aborts).
MAX_ABORTED_PER_PARTITION = 1_000


class CoordinatorView:
    def __init__(self, backend: Backend, tail: TailIndex | None = None) -> None:
        self._backend = backend
        self._tail = tail or TailIndex()
        self._topics_by_name: dict[str, TopicInfo] = {}
        self._topics_by_id: dict[uuid.UUID, TopicInfo] = {}
        # Every partition's state, by key and (for the commit path, which sees runs of
        # one topic) by topic and partition number: the same objects.
        self._partitions: dict[PartitionKey, PartitionState] = {}
        self._by_topic: dict[uuid.UUID, list[PartitionState | None]] = {}
        self._waiters: dict[PartitionKey, set[asyncio.Future[None]]] = {}
        # The end offset of what this agent acknowledged, per partition: a commit's answer
        # can reach a follower before the writer's stream applies it here.
        self._acknowledged: dict[PartitionKey, int] = {}
        self.database_reads = 0

    @property
    def tail(self) -> TailIndex:
        return self._tail

    @tail.setter
    def tail(self, tail: TailIndex) -> None:
        self._tail.clear()
        self._tail = tail

    async def load(self) -> None:
        # One consistent read: topics and watermarks from the same snapshot.
        snapshot = await self._backend.load_sequencer(0)
        self._set_topics(snapshot.topics)
        self._tail.clear()
        self._partitions = {}
        self._by_topic = {}
        for key, offsets in partition_offsets(snapshot).items():
            self._add(key, *offsets)
        self._set_open_transactions(snapshot)

    def _set_open_transactions(self, snapshot: SequencerSnapshot) -> None:
        """Open transactions as the database has them (after a load or a reload); the
        aborted transactions remembered start again at each high watermark."""
        opens: dict[PartitionKey, dict[int, int]] = {}
        for (producer_id, topic_id, partition), producer in snapshot.producers.items():
            if producer.txn_first_offset >= 0:
                first_offset = producer.txn_first_offset
                opens.setdefault((topic_id, partition), {})[producer_id] = first_offset
        for key, state in self._partitions.items():
            state.open_txns = opens.get(key)
            state.aborted = []
            state.aborted_from = state.high_watermark
            state.aborted_below = snapshot.aborted_ends.get(key, -1)

    def _set_topics(self, topics: Iterable[TopicInfo]) -> None:
        self._topics_by_name = {t.name: t for t in topics}
        self._topics_by_id = {t.topic_id: t for t in self._topics_by_name.values()}

    def _add(self, key: PartitionKey, log_start_offset: int, high_watermark: int) -> None:
        topic_id, partition = key
        state = self._partitions[key] = PartitionState(key, log_start_offset, high_watermark)
        parts = self._by_topic.setdefault(topic_id, [])
        if len(parts) <= partition:
            parts.extend([None] * (partition + 1 - len(parts)))
        parts[partition] = state

    def _remove(self, key: PartitionKey) -> None:
        state = self._partitions.pop(key, None)
        if state is None:
            return
        self._tail.invalidate(state)
        parts = self._by_topic.get(key[0])
        if parts is not None and parts[key[1]] is state:
            parts[key[1]] = None

    # Changes reported by the writer ------------------------------------------------
    def on_applied(self, objects: Sequence[SequencedObject]) -> None:
        # Rows straight from the local writer: (topic id, partition, location, ...).
        # A transaction's first offset holds the stable offset back before its data is
        # visible; its markers are visible before it lets go.
        for obj in objects:
            if obj.txn_opens:
                self.on_txn_opens(obj.txn_opens)
        self._apply(itertools.chain.from_iterable([obj.rows for obj in objects]))
        for obj in objects:
            if obj.txn_closes:
                self.on_txn_closes(obj.txn_closes)

    def on_txn_opens(self, opens: Iterable[TxnOpen]) -> None:
        for topic_id, partition, producer_id, first_offset in opens:
            state = self._partitions.get((topic_id, partition))
            if state is None:
                continue
            if state.open_txns is None:
                state.open_txns = {}
            state.open_txns.setdefault(producer_id, first_offset)

    def on_txn_closes(self, closes: Iterable[TxnClose]) -> None:
        touched = []
        for close in closes:
            state = self._partitions.get((close.topic_id, close.partition))
            if state is None:
                continue
            opens = state.open_txns
            # Only the transaction this marker ends: after a resync the producer's next
            # transaction (first offset past the marker) may already be open.
            if opens is not None and opens.get(close.producer_id, -1) < close.marker_offset:
                opens.pop(close.producer_id, None)
                if not opens:
                    state.open_txns = None
            if not close.commit and close.first_offset >= 0:
                if close.marker_offset >= state.aborted_from:
                    state.aborted.append(
                        AbortedTxn(close.producer_id, close.first_offset, close.marker_offset)
                    )
                if len(state.aborted) > MAX_ABORTED_PER_PARTITION:
                    dropped = state.aborted.pop(0)
                    state.aborted_from = dropped.last_offset + 1
                    state.aborted_below = max(state.aborted_below, dropped.last_offset)
            touched.append(state.key)
        # read_committed long polls wait for the stable offset to move.
        self._wake(touched)

    def on_remote_applied(self, batches: Sequence[tuple[uuid.UUID, int, BatchLocation]]) -> None:
        """Committed batches from the writer's stream, in commit order."""
        self._apply(batches)

    def _apply(self, batches: Iterable[tuple[Any, ...]]) -> None:
        """Each committed batch: one tail add and one watermark store.

        Batches the view already covers are skipped, so a stream that overlaps a
        resynchronization from the database is harmless. The hot path of every
        agent: a list index per batch finds its partition (batches come in runs of
        a topic), nothing hashes a (uuid, partition) key.
        """
        tail = self._tail
        added = tail.added
        per_partition = tail.max_batches_per_partition
        count = 0
        by_topic = self._by_topic
        last_topic: uuid.UUID | None = None
        parts: list[PartitionState | None] = []
        touched: list[PartitionState] | None = [] if self._waiters else None
        try:
            for batch in batches:
                topic_id = batch[0]
                if topic_id is not last_topic:
                    last_topic = topic_id
                    parts = by_topic.get(topic_id) or []
                partition = batch[1]
                state = parts[partition] if 0 <= partition < len(parts) else None
                if state is None:
                    continue
                location = batch[2]
                base_offset = location[3]
                if base_offset != state.high_watermark:
                    if base_offset < state.high_watermark:
                        continue  # already known (a resync overlapped)
                    tail.invalidate(state)  # a gap: a cache is a contiguous run
                # TailIndex.add, inline: this loop runs for every batch on every agent.
                state.base_offsets.append(base_offset)
                cached = state.batches
                cached.append(location)
                if len(cached) - state.head > per_partition:
                    state._drop_front(1)  # its oldest batch's entry stands for this one
                else:
                    added.append(state)
                    count += 1
                state.high_watermark = location[4] + 1
                if touched is not None:
                    touched.append(state)
        finally:
            tail.size += count
            tail.trim()
        if touched:
            self._wake([state.key for state in touched])

    async def resync(self) -> None:
        """Reload topics and watermarks from the database (after missing the writer's stream)."""
        snapshot = await self._backend.load_sequencer(0)
        offsets = partition_offsets(snapshot)
        self._set_topics(snapshot.topics)
        for key, (log_start, hwm) in offsets.items():
            state = self._partitions.get(key)
            if state is None:
                self._add(key, log_start, hwm)
            elif state.log_start_offset != log_start or state.high_watermark != hwm:
                # Never lower a watermark: what the view showed was durable, and a read
                # racing with newer commits may be older than the view.
                self._tail.invalidate(state)
                state.log_start_offset = max(state.log_start_offset, log_start)
                state.high_watermark = max(state.high_watermark, hwm)
        for key in set(self._partitions) - set(offsets):
            self._remove(key)
        self._set_open_transactions(snapshot)
        self._wake(list(self._waiters))

    def on_reloaded(self, snapshot: SequencerSnapshot) -> None:
        self._set_topics(snapshot.topics)
        for key, p in snapshot.partitions.items():
            state = self._partitions.get(key)
            if state is None:
                self._add(key, p.log_start_offset, p.high_watermark)
            elif (
                state.log_start_offset != p.log_start_offset
                or state.high_watermark != p.high_watermark
            ):
                self._tail.invalidate(state)
                state.log_start_offset = p.log_start_offset
                state.high_watermark = max(state.high_watermark, p.high_watermark)
        for key in set(self._partitions) - set(snapshot.partitions):
            self._remove(key)
        self._set_open_transactions(snapshot)
        self._wake(list(self._waiters))

    def on_topic_put(self, topic: TopicInfo) -> None:
        old = self._topics_by_name.get(topic.name)
        if old is not None and old.topic_id != topic.topic_id:
            self.on_topic_dropped(old)
        self._topics_by_name[topic.name] = topic
        self._topics_by_id[topic.topic_id] = topic
        for partition in range(topic.partition_count):
            if (topic.topic_id, partition) not in self._partitions:
                self._add((topic.topic_id, partition), 0, 0)

    def on_log_starts(self, starts: Sequence[LogStart]) -> None:
        for topic_id, partition, log_start in starts:
            state = self._partitions.get((topic_id, partition))
            if state is not None and log_start > state.log_start_offset:
                state.log_start_offset = log_start
                if log_start > state.high_watermark:
                    # The cache ends at the watermark (`_apply` relies on it).
                    self._tail.invalidate(state)
                    state.high_watermark = log_start

    def forget_cached(self, partitions: Iterable[PartitionKey]) -> None:
        """Drop these partitions' cached coordinates: the next read asks the database.

        Called when coordinates moved (compaction) or a read found an object gone.
        """
        for key in partitions:
            state = self._partitions.get(key)
            if state is not None:
                self._tail.invalidate(state)

    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None:
        self.forget_cached(partitions)

    def on_topic_dropped(self, topic: TopicInfo) -> None:
        self._topics_by_name.pop(topic.name, None)
        self._topics_by_id.pop(topic.topic_id, None)
        for partition in range(topic.partition_count):
            self._remove((topic.topic_id, partition))
        self._by_topic.pop(topic.topic_id, None)

    # Topics -------------------------------------------------------------------------
    def topics(self) -> Sequence[TopicInfo]:
        return list(self._topics_by_name.values())

    def topic(self, name: str) -> TopicInfo | None:
        return self._topics_by_name.get(name)

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return self._topics_by_id.get(topic_id)

    # Coordinates ----------------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None:
        state = self._partitions.get((topic_id, partition))
        return None if state is None else state.offsets

    def note_acknowledged(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> None:
        key = (topic_id, partition)
        if end_offset > self._acknowledged.get(key, -1):
            self._acknowledged[key] = end_offset

    async def caught_up(self, topic_id: uuid.UUID, partition: int, timeout_s: float) -> None:
        """Until this view shows everything this agent acknowledged of the partition (read
        your writes), at most `timeout_s`."""
        key = (topic_id, partition)
        acknowledged = self._acknowledged.get(key)
        if acknowledged is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            offsets = self.partition_offsets(topic_id, partition)
            if offsets is None or offsets.high_watermark >= acknowledged:
                del self._acknowledged[key]  # caught up: nothing to wait for until the next
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self.wait_for_commit([key], remaining)

    def last_stable_offset(self, topic_id: uuid.UUID, partition: int) -> int | None:
        state = self._partitions.get((topic_id, partition))
        return None if state is None else state.last_stable_offset

    async def aborted_transactions(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        """Aborted transactions overlapping [start_offset, end_offset): what a read_committed
        fetch of that range returns with its data."""
        state = self._partitions.get((topic_id, partition))
        if state is None or end_offset <= start_offset:
            return []
        if start_offset >= state.aborted_from or start_offset > state.aborted_below:
            return [
                a
                for a in state.aborted
                if a.last_offset >= start_offset and a.first_offset < end_offset
            ]
        self.database_reads += 1
        return await self._backend.read_aborted(topic_id, partition, start_offset, end_offset)

    async def find_batches(
        self,
        topic_id: uuid.UUID,
        partition: int,
        start_offset: int,
        max_bytes: int,
        end_offset: int | None = None,
    ) -> list[BatchLocation]:
        """Batches from `start_offset` up to the high watermark (or `end_offset`, the last
        stable offset for read_committed: no batch that ends at or past it)."""
        state = self._partitions.get((topic_id, partition))
        if state is None or start_offset >= state.high_watermark:
            return []
        if end_offset is not None and end_offset < state.high_watermark:
            if start_offset >= end_offset:
                return []
            found = await self.find_batches(topic_id, partition, start_offset, max_bytes)
            return [b for b in found if b.last_offset < end_offset]
        cached = self._tail.find(state, start_offset, max_bytes)
        if cached is not None:
            return cached
        self.database_reads += 1
        return await self._backend.read_batches(
            topic_id, partition, start_offset, state.high_watermark, max_bytes
        )

    async def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        offsets = self.partition_offsets(topic_id, partition)
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
        offsets = self.partition_offsets(topic_id, partition)
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
