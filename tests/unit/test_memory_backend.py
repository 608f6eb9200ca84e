"""The in-memory reference backend answers exactly as SQLite does; the fault wrapper's faults.

The same calls go to a `MemoryBackend` and a `SqliteBackend`, and every answer
(or error type) must be equal: leases and fences, constraint violations that
roll a whole transaction back, batch reads across several pages, the time
index, what a new writer loads, producer ids, group offsets and membership.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from driftlog.coordinator.api import (
    AgentInfo,
    BatchToCommit,
    CommittedOffset,
    CoordinatorUnavailable,
    Fenced,
    TopicInfo,
)
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.sequencer import SequencedObject, Sequencer
from driftlog.coordinator.engines.backend import READ_BATCHES_PAGE, Backend, Fence
from driftlog.coordinator.engines.faulty import BackendFaults, FaultyBackend
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.sqlite import SqliteBackend

T = TypeVar("T")


class Both:
    """Sends each call to both backends and checks the answers agree."""

    def __init__(self, memory: Backend, sqlite: Backend) -> None:
        self.memory = memory
        self.sqlite = sqlite

    async def __call__(self, call: Callable[[Backend], Awaitable[T]]) -> T | type[Exception]:
        answers: list[T | type[Exception]] = []
        for backend in (self.memory, self.sqlite):
            try:
                answers.append(await call(backend))
            except (CoordinatorUnavailable, Fenced) as e:
                answers.append(type(e))
        assert answers[0] == answers[1]
        return answers[0]

    async def ok(self, call: Callable[[Backend], Awaitable[T]]) -> T:
        answer = await self(call)
        assert not isinstance(answer, type), answer
        return answer

    async def same_state(self) -> None:
        await self(lambda b: b.load_sequencer(0))
        await self(lambda b: b.load_topics())
        await self(lambda b: b.load_partition_offsets())


def test_memory_backend_answers_as_sqlite_does(tmp_path: Path) -> None:
    async def scenario() -> None:
        rng = random.Random(11)
        memory, sqlite = MemoryBackend(), SqliteBackend(tmp_path / "c.sqlite3")
        both = Both(memory, sqlite)
        await memory.open()
        await sqlite.open()
        assert await both(lambda b: b.cluster_id("c1")) == "c1"
        assert await both(lambda b: b.cluster_id("c2")) == "c1"

        # Leases: insert-if-absent, compare-and-swap on the epoch, fences.
        first = LeaseRecord(0, "a", "addr-a", 1, 10_000)
        assert await both(lambda b: b.read_lease(0)) is None
        assert await both(lambda b: b.try_acquire_lease(None, first)) is True
        assert await both(lambda b: b.try_acquire_lease(None, first)) is False
        stale = LeaseRecord(0, "b", "", 7, 0)
        taken = LeaseRecord(0, "b", "addr-b", 2, 20_000)
        assert await both(lambda b: b.try_acquire_lease(stale, taken)) is False
        assert await both(lambda b: b.try_acquire_lease(first, taken)) is True
        assert await both(lambda b: b.renew_lease(Fence(0, 1, 99_000))) is Fenced
        await both(lambda b: b.renew_lease(Fence(0, 2, 15_000)))  # never shortens
        await both(lambda b: b.renew_lease(Fence(0, 2, 25_000)))
        assert await both(lambda b: b.read_lease(0)) == LeaseRecord(0, "b", "addr-b", 2, 25_000)
        fence = Fence(0, 2, 30_000)

        # Topics: a name is unique; a failed change changes nothing, fence expiry included.
        t1 = TopicInfo("t1", uuid.UUID(int=1), 2, {"message.timestamp.type": "LogAppendTime"})
        t2 = TopicInfo("t2", uuid.UUID(int=2), 3, {})
        await both(lambda b: b.put_topic(fence, t1, 0))
        await both(lambda b: b.put_topic(fence, t2, 0))
        clash = TopicInfo("t1", uuid.UUID(int=3), 1, {})
        late = Fence(0, 2, 90_000)
        assert await both(lambda b: b.put_topic(late, clash, 0)) is CoordinatorUnavailable
        assert await both(lambda b: b.put_topic(late, t2, 1)) is CoordinatorUnavailable
        assert await both(lambda b: b.read_lease(0)) == LeaseRecord(0, "b", "addr-b", 2, 30_000)
        grown = TopicInfo("renamed?", t2.topic_id, 4, {"a": "b"})  # the name stays
        await both(lambda b: b.put_topic(fence, grown, 3))
        assert await both(lambda b: b.put_topic(Fence(0, 1, 0), t1, 2)) is Fenced
        await both.same_state()

        # Object commits, sequenced once and persisted to both.
        sequencer = Sequencer(await memory.load_sequencer(0))
        partitions = [(t1.topic_id, 0), (t1.topic_id, 1), (t2.topic_id, 0), (t2.topic_id, 3)]
        gone = (uuid.UUID(int=9), 0)  # no such partition: refused
        objects: list[SequencedObject] = []
        for i in range(300):
            batches = []
            for j in range(rng.randint(1, 6)):
                # Most in one partition, so that its reads take several pages.
                topic_id, partition = rng.choice([partitions[0]] * 6 + [*partitions, gone])
                count = rng.randint(1, 4)
                max_ts = 1_000 + i * 10 + rng.randint(-40, 40)  # late batches too
                producer = rng.random() < 0.3
                batches.append(
                    BatchToCommit(
                        topic_id,
                        partition,
                        j * 300,
                        rng.randint(1, 300),
                        count,
                        max_ts - 5,
                        max_ts,
                        *(
                            (7, 0, sequencer_next(sequencer, topic_id, partition))
                            if producer
                            else ()
                        ),
                    )
                )
            objects.append(sequencer.sequence(f"o{i}", 1_000, batches, 5_000 + i))
        for start in range(0, len(objects), 20):
            await both.ok(persist(fence, objects[start : start + 20]))
        await both.same_state()

        # Constraint violations and fencing roll the whole commit back.
        again = sequencer.sequence("o0", 1, [BatchToCommit(t2.topic_id, 0, 0, 1, 1, 0, 0)], 9)
        assert await both(lambda b: b.persist_objects(fence, [again])) is CoordinatorUnavailable
        fresh = sequencer.sequence("new", 1, [BatchToCommit(t2.topic_id, 0, 0, 1, 1, 0, 0)], 9)
        assert await both(lambda b: b.persist_objects(Fence(0, 1, 0), [fresh])) is Fenced
        await both.same_state()
        keys = ["o3", "nope", "o159", "o3", "again"]
        assert len(await both.ok(lambda b: b.committed_outcomes(keys))) == 2

        # Reads.
        offsets = await memory.load_partition_offsets()
        for _ in range(400):
            topic_id, partition = rng.choice([*partitions, gone])
            hwm = offsets[(topic_id, partition)].high_watermark if topic_id != gone[0] else 3
            start = rng.randint(0, hwm + 2)
            end = rng.randint(start, hwm + 2)
            max_bytes = rng.choice([1, 100, 1_000, 50_000, 1 << 30])
            at = rng.randint(900, 4_000)
            await both.ok(reads(topic_id, partition, start, end, max_bytes, at))
        found = await both.ok(lambda b: b.read_batches(t1.topic_id, 0, 0, 1 << 40, 1 << 40))
        assert len(found) > 2 * READ_BATCHES_PAGE  # read in several pages

        # A dropped topic takes its partitions, batches and producer states with it.
        await both(lambda b: b.drop_topic(fence, t1, 5_000))
        await both.same_state()
        assert await both(lambda b: b.read_batches(t1.topic_id, 0, 0, 1 << 40, 1 << 40)) == []

        # Producer ids, group offsets, membership.
        for _ in range(3):
            await both(lambda b: b.allocate_producer_id())
        offsets_a = [CommittedOffset("t", p, 10 * p, -1, None if p else "m") for p in range(3)]
        await both(lambda b: b.put_offsets("g2", offsets_a, None))
        await both(lambda b: b.put_offsets("g1", [CommittedOffset("u", 0, 5, 2, "x")], None))
        await both(lambda b: b.put_offsets("g2", [CommittedOffset("t", 1, 99, 1, "y")], None))
        await both(lambda b: b.fetch_offsets("g2", None))
        await both(lambda b: b.fetch_offsets("g2", [("t", 1), ("t", 7)]))
        assert await both(lambda b: b.groups_with_offsets()) == ["g1", "g2"]
        await both(lambda b: b.delete_group("g2", None))
        assert await both(lambda b: b.fetch_offsets("g2", None)) == []
        for n, beat in [(2, 100), (1, 50), (3, 100)]:
            await both.ok(heartbeat(AgentInfo(f"a{n}", n, "h", 9000 + n, "z", "", beat)))
        assert len(await both.ok(lambda b: b.live_agents(0, 100))) == 2
        await both(lambda b: b.remove_agent("a3"))
        await both(lambda b: b.live_agents(0, 0))
        await sqlite.close()

    asyncio.run(scenario())


def persist(fence: Fence, objects: list[SequencedObject]) -> Callable[[Backend], Awaitable[None]]:
    return lambda backend: backend.persist_objects(fence, objects)


def reads(
    topic_id: uuid.UUID, partition: int, start: int, end: int, max_bytes: int, at: int
) -> Callable[[Backend], Awaitable[tuple[object, ...]]]:
    async def read(backend: Backend) -> tuple[object, ...]:
        return (
            await backend.read_batches(topic_id, partition, start, end, max_bytes),
            await backend.first_batch_at_time(topic_id, partition, at, start, end),
            await backend.last_time_index(topic_id, partition, end),
        )

    return read


def heartbeat(agent: AgentInfo) -> Callable[[Backend], Awaitable[None]]:
    return lambda backend: backend.heartbeat(agent)


def sequencer_next(sequencer: Sequencer, topic_id: uuid.UUID, partition: int) -> int:
    """The next sequence of producer 7 on a partition, from the sequencer's state."""
    state = sequencer.producers.get((7, topic_id, partition))
    return state.batches[-1].last_sequence + 1 if state and state.batches else 0


def test_backends_share_one_database() -> None:
    async def scenario() -> None:
        database = MemoryDatabase()
        a, b = MemoryBackend(database), MemoryBackend(database)
        await a.open()
        await b.open()
        assert await a.try_acquire_lease(None, LeaseRecord(0, "a", "", 1, 100))
        assert await b.read_lease(0) == LeaseRecord(0, "a", "", 1, 100)
        await b.close()
        with pytest.raises(RuntimeError):
            await b.read_lease(0)
        assert await a.read_lease(0) is not None  # closing a handle keeps the data

    asyncio.run(scenario())


def test_faulty_backend_is_seeded_and_lost_replies_land() -> None:
    async def run(seed: int) -> tuple[list[tuple[int, str, str]], int, int]:
        database = MemoryDatabase()
        faults = BackendFaults(fail_before=0.2, lose_reply=0.2, max_yields=2)
        inner = MemoryBackend(database)
        await inner.open()
        faulty = FaultyBackend(inner, faults, seed)
        answered = 0
        for _ in range(200):
            try:
                await faulty.allocate_producer_id()
                answered += 1
            except CoordinatorUnavailable:
                pass
        return faulty.injected, answered, database.next_producer_id

    async def scenario() -> None:
        injected, answered, allocated = await run(3)
        assert (injected, answered, allocated) == await run(3)  # the seed decides
        assert injected != (await run(4))[0]
        lost = sum(1 for _, _, kind in injected if kind == "lost")
        before = sum(1 for _, _, kind in injected if kind == "before")
        assert 20 < lost < 70 and 20 < before < 70
        # A lost reply's call landed; a failure before the call did not.
        assert allocated == answered + lost
        assert before + lost + answered == 200

        # Faults apply only to the methods named, never lose `lossless` replies, stop when
        # disabled.
        database = MemoryDatabase()
        faults = BackendFaults(
            lose_reply=1.0,
            methods=frozenset({"allocate_producer_id", "heartbeat"}),
            lossless=frozenset({"heartbeat"}),
        )
        faulty = FaultyBackend(MemoryBackend(database), faults, 0)
        await faulty.open()
        with pytest.raises(CoordinatorUnavailable):
            await faulty.allocate_producer_id()
        assert database.next_producer_id == 1
        await faulty.heartbeat(AgentInfo("a", 1, "h", 1, "z", ""))
        assert await faulty.groups_with_offsets() == []
        faulty.enabled = False
        assert await faulty.allocate_producer_id() == 1

    asyncio.run(scenario())


def test_faulty_backend_refuses_impossible_settings() -> None:
    with pytest.raises(ValueError):
        BackendFaults(fail_before=0.7, lose_reply=0.7)
    with pytest.raises(ValueError):
        BackendFaults(max_yields=-1)
