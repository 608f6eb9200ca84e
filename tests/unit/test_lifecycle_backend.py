"""The object-lifecycle calls of the coordinator backends, on SQLite, PostgreSQL and memory.

An object is dead exactly when its last batch goes (log starts, a dropped
topic, a compaction swap), or at once when it was committed without batches;
`dead_objects` lists the dead ones past a cutoff, oldest first; deleted ones
stay as tombstones (still known, still answering re-sent commits) until
purged, but the newest row never is; compaction finds live, small,
old-enough objects by level, reads their live batches in partition order and swaps
them into a new object, skipping batches deleted or moved meanwhile, into an object one level up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driftlog.coordinator.api import BatchToCommit, Fenced, TopicInfo
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.sequencer import SequencedObject, Sequencer
from driftlog.coordinator.engines.backend import (
    Backend,
    BatchMove,
    Fence,
    LogStart,
    NewObject,
    ObjectBatch,
    ObjectCounts,
    ObjectRef,
)
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.postgres import PostgresBackend
from driftlog.coordinator.engines.sqlite import SqliteBackend

BackendFactory = Callable[[], Backend]
FAR_MS = 10**13
FENCE = Fence(0, 1, FAR_MS)
# Topic ids whose byte order differs from their creation order.
T = TopicInfo("t", uuid.UUID(int=2 << 120), 2, {})
U = TopicInfo("u", uuid.UUID(int=1 << 120), 1, {})
GONE = uuid.UUID(int=99)  # no such topic: its batches are refused


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    if request.param == "sqlite":
        return lambda: SqliteBackend(tmp_path / "c.sqlite3")
    if request.param == "memory":
        database = MemoryDatabase()
        return lambda: MemoryBackend(database)
    dsn: str = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresBackend(dsn)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def batch(
    topic: uuid.UUID, partition: int, count: int, at: int = 0, length: int = 100
) -> BatchToCommit:
    return BatchToCommit(topic, partition, at, length, count, 1_000, 1_000)


@dataclass
class Db:
    """A backend with a writer's lease, two topics and a sequencer over them."""

    backend: Backend
    sequencer: Sequencer

    @classmethod
    async def open(cls, factory: BackendFactory) -> Db:
        backend = factory()
        await backend.open()
        assert await backend.try_acquire_lease(None, LeaseRecord(0, "a", "", 1, FAR_MS))
        await backend.put_topic(FENCE, T, 0)
        await backend.put_topic(FENCE, U, 0)
        return cls(backend, Sequencer(await backend.load_sequencer(0)))

    async def commit(
        self, key: str, batches: Sequence[BatchToCommit], now_ms: int, size: int = 1_000
    ) -> SequencedObject:
        obj = self.sequencer.sequence(key, size, batches, now_ms)
        await self.backend.persist_objects(FENCE, [obj])
        self.sequencer.applied([obj])
        return obj

    async def relocate(
        self, key: str, moves: Sequence[BatchMove], now_ms: int, size: int = 5_000, level: int = 1
    ) -> tuple[NewObject, int]:
        new = NewObject(self.sequencer.take_object_id(), key, size, now_ms, level)
        return new, await self.backend.relocate_batches(FENCE, new, moves, now_ms)

    async def dead(self, before_ms: int = FAR_MS, limit: int = 100) -> list[str]:
        return [o.key for o in await self.backend.dead_objects(before_ms, limit)]

    async def located(self, topic: uuid.UUID, partition: int) -> list[tuple[str, int, int]]:
        found = await self.backend.read_batches(topic, partition, 0, FAR_MS, FAR_MS)
        return [(b.object_key, b.byte_offset, b.base_offset) for b in found]


def moves_of(batches: Sequence[ObjectBatch]) -> list[BatchMove]:
    """Moves into one new object, laid out in the given order."""
    moves, position = [], 0
    for b in batches:
        moves.append(BatchMove(b.topic_id, b.partition, b.last_offset, b.object_id, position))
        position += b.byte_length
    return moves


def test_an_object_dies_exactly_when_its_last_batch_goes(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        db = await Db.open(backend_factory)
        backend = db.backend
        # a: two batches of t/0 (offsets 0-1, 2-4); b: t/0 (5-5) and t/1 (0-0); c: u/0
        # (0-3); m: u/0 (4-4) and t/1 (1-1).
        a = await db.commit("a", [batch(T.topic_id, 0, 2), batch(T.topic_id, 0, 3, 100)], 1_000)
        b = await db.commit("b", [batch(T.topic_id, 0, 1), batch(T.topic_id, 1, 1, 100)], 2_000)
        await db.commit("c", [batch(U.topic_id, 0, 4)], 3_000)
        await db.commit("m", [batch(U.topic_id, 0, 1), batch(T.topic_id, 1, 1, 100)], 3_500)
        # Every batch refused: nothing references it, so it is dead from its commit.
        await db.commit("z", [batch(GONE, 0, 1)], 4_000)
        assert await db.dead() == ["z"]
        assert await db.dead(4_000) == []  # dead since 4,000: not before it
        assert await backend.object_counts() == ObjectCounts(4, 4_000, 1, 0)

        # A log start inside a's second batch: its first batch goes, a lives on.
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 0, 3)], 5_000)
        assert await db.dead() == ["z"]
        # Past it: a's last batch goes. b lives on in t/1 although its t/0 batch went.
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 0, 6)], 6_000)
        assert await db.dead() == ["z", "a"]
        assert await db.located(T.topic_id, 0) == []
        assert await db.located(T.topic_id, 1) == [("b", 100, 0), ("m", 100, 1)]
        # A log start that removes nothing more changes nothing (a keeps its time of death).
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 0, 6)], 6_500)
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 1, 0)], 6_500)
        assert await db.dead(6_001) == ["z", "a"]

        # A dropped topic: c dies with it; m lives on in t/1.
        await backend.drop_topic(FENCE, U, 7_000)
        assert await db.dead() == ["z", "a", "c"]
        assert await db.located(T.topic_id, 1) == [("b", 100, 0), ("m", 100, 1)]

        # A compaction swap moves b's last batch away: b dies, the new object lives.
        moved = await backend.batches_in_objects([b.object_id])
        assert [(m.topic_id, m.partition, m.last_offset) for m in moved] == [(T.topic_id, 1, 0)]
        _, count = await db.relocate("n", moves_of(moved), 8_000)
        assert count == 1
        assert await db.located(T.topic_id, 1) == [("n", 0, 0), ("m", 100, 1)]

        # The cutoff and the order: oldest death first, then the limit.
        assert await db.dead() == ["z", "a", "c", "b"]
        assert await db.dead(6_000) == ["z"]
        assert await db.dead(6_001) == ["z", "a"]
        assert await db.dead(8_000) == ["z", "a", "c"]
        assert await db.dead(FAR_MS, limit=2) == ["z", "a"]
        refs = await backend.dead_objects(6_001, 10)
        assert refs == [ObjectRef(5, "z", 1_000), ObjectRef(a.object_id, "a", 1_000)]
        assert await backend.object_counts() == ObjectCounts(2, 6_000, 4, 0)

    run(scenario)


def test_deleted_objects_stay_as_tombstones_until_purged(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        db = await Db.open(backend_factory)
        backend = db.backend
        objects = [
            await db.commit(f"o{i}", [batch(T.topic_id, 0, 1)], 1_000 * (i + 1)) for i in range(4)
        ]
        # o0-o2 die with their batches; o3 stays live.
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 0, 3)], 10_000)
        assert await db.dead() == ["o0", "o1", "o2"]

        # Deleted: no longer listed as dead, still known; a live object is never marked.
        ids = [o.object_id for o in objects]
        await backend.mark_objects_deleted([ids[0], ids[1], ids[3]], 11_000)
        assert await db.dead() == ["o2"]
        assert await backend.object_counts() == ObjectCounts(1, 1_000, 1, 2)
        assert await backend.known_keys(["o0", "o1", "o2", "o3", "x"]) == {"o0", "o1", "o2", "o3"}
        # A re-sent commit of a tombstone still gets its outcomes.
        assert (await backend.committed_outcomes(["o0"]))["o0"] == objects[0].outcomes
        # Marking again is harmless (two collectors at once).
        await backend.mark_objects_deleted([ids[0]], 12_000)
        assert await backend.object_counts() == ObjectCounts(1, 1_000, 1, 2)

        # Purged by commit time and limit; the dead-but-not-deleted o2 stays.
        assert await backend.purge_tombstones(1_000, 10) == 0  # o0 committed at 1,000
        assert await backend.purge_tombstones(FAR_MS, 1) == 1
        assert await backend.purge_tombstones(FAR_MS, 10) == 1
        assert await backend.purge_tombstones(FAR_MS, 10) == 0
        assert await backend.known_keys(["o0", "o1", "o2", "o3"]) == {"o2", "o3"}
        assert await backend.committed_outcomes(["o0", "o1"]) == {}
        assert await backend.object_counts() == ObjectCounts(1, 1_000, 1, 0)

        # The newest row is never purged, so a new writer never reuses its id.
        newest = await db.commit("last", [batch(GONE, 0, 1)], 20_000)  # dead at commit
        assert await db.dead() == ["o2", "last"]
        await backend.mark_objects_deleted([ids[2], newest.object_id], 21_000)
        assert await backend.purge_tombstones(FAR_MS, 10) == 1  # o2 only
        assert await backend.known_keys(["o2", "last"]) == {"last"}
        assert (await backend.load_sequencer(0)).next_object_id == newest.object_id + 1
        assert await backend.object_counts() == ObjectCounts(1, 1_000, 0, 1)

    run(scenario)


def test_compaction_candidates(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        db = await Db.open(backend_factory)
        backend = db.backend
        for i, size in enumerate([100, 5_000, 200, 300, 400]):
            await db.commit(f"o{i}", [batch(T.topic_id, i % 2, 1)], 1_000 * (i + 1), size)

        async def candidates(before_ms: int, smaller_than: int, limit: int = 100) -> list[str]:
            found = await backend.compaction_candidates(before_ms, smaller_than, limit)
            return [o.key for o in found]

        # Small and old enough, oldest first, at most `limit`.
        assert await candidates(FAR_MS, 1_000) == ["o0", "o2", "o3", "o4"]
        assert await candidates(FAR_MS, 300) == ["o0", "o2"]  # strictly smaller
        assert await candidates(3_000, 1_000) == ["o0"]  # committed strictly before
        assert await candidates(FAR_MS, 1_000, 2) == ["o0", "o2"]
        found = await backend.compaction_candidates(FAR_MS, 150, 10)
        assert found == [ObjectRef(1, "o0", 100)]

        # Dead objects are not candidates (o0: offset 0 of t/0).
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 0, 1)], 9_000)
        assert await candidates(FAR_MS, 1_000) == ["o2", "o3", "o4"]
        # A compaction output is one level up: listed after every object of a lower level.
        moved = await backend.batches_in_objects([3, 4])  # o2, o3
        _, count = await db.relocate("n", moves_of(moved), 10_000, size=10)
        assert count == 2
        found = await backend.compaction_candidates(FAR_MS, 1_000, 10)
        assert found == [ObjectRef(5, "o4", 400, 0), ObjectRef(6, "n", 10, 1)]
        assert await candidates(10_000, 1_000) == ["o4"]  # n committed at 10,000
        moved = await backend.batches_in_objects([6])
        _, count = await db.relocate("n2", moves_of(moved), 11_000, size=20, level=2)
        assert count == 2
        found = await backend.compaction_candidates(FAR_MS, 1_000, 10)
        assert found == [ObjectRef(5, "o4", 400, 0), ObjectRef(7, "n2", 20, 2)]
        assert await candidates(FAR_MS, 1_000, 1) == ["o4"]

    run(scenario)


def test_batches_in_objects_and_relocation(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        db = await Db.open(backend_factory)
        backend = db.backend
        # Batches spread over objects, partitions and topics (U sorts before T by bytes).
        a = await db.commit(
            "a",
            [batch(T.topic_id, 1, 2, 0, 10), batch(U.topic_id, 0, 1, 10, 20)],
            1_000,
        )
        b = await db.commit(
            "b",
            [batch(T.topic_id, 0, 3, 0, 30), batch(T.topic_id, 1, 1, 30, 40)],
            2_000,
        )
        c = await db.commit("c", [batch(T.topic_id, 0, 1, 0, 50)], 3_000)
        d = await db.commit("d", [batch(T.topic_id, 0, 1, 0, 60)], 4_000)
        ids = [a.object_id, b.object_id, c.object_id]
        live = await backend.batches_in_objects(ids)
        assert live == [
            ObjectBatch(U.topic_id, 0, 0, a.object_id, 10, 20),
            ObjectBatch(T.topic_id, 0, 2, b.object_id, 0, 30),
            ObjectBatch(T.topic_id, 0, 3, c.object_id, 0, 50),
            ObjectBatch(T.topic_id, 1, 1, a.object_id, 0, 10),
            ObjectBatch(T.topic_id, 1, 2, b.object_id, 30, 40),
        ]
        assert await backend.batches_in_objects([]) == []
        moves = moves_of(live)

        # Meanwhile: retention deletes b's t/0 batch (offsets 0-2), and another
        # compaction moved c's batch (so the move's source no longer matches).
        await backend.set_log_starts(FENCE, [LogStart(T.topic_id, 0, 3)], 5_000)
        [c_batch] = await backend.batches_in_objects([c.object_id])
        other, count = await db.relocate("other", moves_of([c_batch]), 5_500)
        assert count == 1
        assert await db.dead() == ["c"]
        # A fenced swap changes nothing.
        stale = NewObject(db.sequencer.next_object_id, "stale", 1, 5_600)
        with pytest.raises(Fenced):
            await backend.relocate_batches(Fence(0, 0, FAR_MS), stale, moves, 5_600)
        assert await backend.known_keys(["stale"]) == set()

        # The output is laid out for all five; the two that went leave garbage bytes in it.
        new, count = await db.relocate("new", moves, 6_000)
        assert count == 3  # a's two batches and b's t/1 batch
        assert await db.located(U.topic_id, 0) == [("new", 0, 0)]
        assert await db.located(T.topic_id, 0) == [("other", 0, 3), ("d", 0, 4)]
        assert await db.located(T.topic_id, 1) == [("new", 100, 0), ("new", 110, 2)]
        # a and b lost their last batches to the swap; the output is live, one level up.
        assert await db.dead() == ["c", "a", "b"]
        assert await backend.batches_in_objects([new.object_id]) == [
            ObjectBatch(U.topic_id, 0, 0, new.object_id, 0, 20),
            ObjectBatch(T.topic_id, 1, 1, new.object_id, 100, 10),
            ObjectBatch(T.topic_id, 1, 2, new.object_id, 110, 40),
        ]
        assert await backend.known_keys(["new", "other"]) == {"new", "other"}
        assert await backend.compaction_candidates(FAR_MS, 1 << 30, 10) == [
            ObjectRef(d.object_id, "d", 1_000, 0),
            ObjectRef(other.object_id, "other", 5_000, 1),
            ObjectRef(new.object_id, "new", 5_000, 1),
        ]

        # A swap whose batches all went meanwhile moves nothing: its output is dead at once.
        empty, count = await db.relocate("empty", moves, 7_000)
        assert count == 0
        assert await db.dead() == ["c", "a", "b", "empty"]
        assert other.object_id < new.object_id < empty.object_id
        assert d.object_id < other.object_id
        assert await backend.object_counts() == ObjectCounts(3, 5_000 * 2 + 1_000, 4, 0)

    run(scenario)
