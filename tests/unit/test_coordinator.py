"""The coordinator on each real backend: dense offsets, group commit, failures, reload,
idempotent commits by object key, the tail cache, leases and fencing.

Every test runs against SQLite, against a real PostgreSQL (started by the
`postgres_dsn` fixture). Time is a `FakeClock`, so lease expiry is exact.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from kio.schema.errors import ErrorCode

from driftlog.clock import FakeClock
from driftlog.coordinator.api import (
    BatchToCommit,
    CommitOutcome,
    CommitRequest,
    CommittedOffset,
    CoordinatorUnavailable,
    Fenced,
    NotWriter,
)
from driftlog.coordinator.core.sequencer import SequencedObject, Sequencer
from driftlog.coordinator.core.tail import TailIndex
from driftlog.coordinator.engines.backend import Backend, Fence
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.postgres import PostgresBackend
from driftlog.coordinator.engines.sqlite import SqliteBackend
from driftlog.coordinator.runtime.service import LocalCoordinator
from driftlog.coordinator.runtime.writer import CommitWriter, Listeners

LEASE_MS = 5_000
BackendFactory = Callable[[], Backend]


def batch(topic_id: uuid.UUID, partition: int, count: int, max_ts: int = 0) -> BatchToCommit:
    return BatchToCommit(topic_id, partition, 0, 100, count, 1000, max_ts or 1000 + count)


class FlakyBackend:
    """Delegates to a real backend; fails the next `failures` group commits.

    With `lose_reply`, the commit reaches the database and only the answer is
    lost (a COMMIT whose acknowledgement never arrived).
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.failures = 0
        self.lose_reply = False

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        if self.failures:
            self.failures -= 1
            if self.lose_reply:
                await self.inner.persist_objects(fence, objects)
            raise CoordinatorUnavailable("injected failure")
        await self.inner.persist_objects(fence, objects)

    def __getattr__(self, name: str) -> Any:
        if name == "persist_objects_overlapping":
            raise AttributeError(name)  # every commit goes through the failures above
        return getattr(self.inner, name)


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    if request.param == "sqlite":
        return lambda: SqliteBackend(tmp_path / "c.sqlite3")
    if request.param == "memory":
        database = MemoryDatabase()  # shared by every backend of the test, like one server
        return lambda: MemoryBackend(database)
    dsn: str = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresBackend(dsn)


async def started(
    backend: Backend,
    clock: FakeClock,
    holder: str = "a",
    wait: bool = True,
    commit_timeout_s: float | None = None,
) -> LocalCoordinator:
    coordinator = LocalCoordinator(
        backend, clock, holder=holder, lease_ms=LEASE_MS, commit_timeout_s=commit_timeout_s
    )
    await coordinator.start(wait_for_writer_s=5.0 if wait else 0.0)
    return coordinator


async def postgres_writer(
    dsn: str, clock: FakeClock, partitions: int
) -> tuple[PostgresBackend, LocalCoordinator, uuid.UUID, int]:
    """A writer on PostgreSQL holding the lease (its epoch), with topic "t"."""
    backend = PostgresBackend(dsn)
    coordinator = await started(backend, clock, commit_timeout_s=0)
    _, topic = await coordinator.create_topic("t", partitions, {})
    assert topic is not None and coordinator.writer.lease is not None
    return backend, coordinator, topic.topic_id, coordinator.writer.lease.epoch


async def commit(
    coordinator: LocalCoordinator, key: str, batches: list[BatchToCommit]
) -> list[CommitOutcome]:
    return await coordinator.submit_commit(CommitRequest(key, 100, batches))


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_dense_offsets_group_commit_failures_and_reload(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        flaky = FlakyBackend(backend_factory())
        # No time for retries: a failed commit fails (retries have their own test).
        coordinator = await started(cast(Backend, flaky), clock, commit_timeout_s=0)
        error, topic = await coordinator.create_topic("t", 2, {})
        assert error == ErrorCode.none and topic is not None
        tid = topic.topic_id

        # Many concurrent commits: offsets dense per partition, in submission order.
        results = await asyncio.gather(
            *(commit(coordinator, f"o{i}", [batch(tid, i % 2, 3)]) for i in range(20))
        )
        offsets = [r[0].base_offset for r in results]
        assert offsets[0::2] == list(range(0, 30, 3))
        assert offsets[1::2] == list(range(0, 30, 3))
        assert coordinator.transactions < 20  # group commit batched them

        # A failed commit is an error and leaves no gap.
        flaky.failures = 1
        with pytest.raises(CoordinatorUnavailable):
            await commit(coordinator, "bad", [batch(tid, 0, 5)])
        [outcome] = await commit(coordinator, "good", [batch(tid, 0, 2)])
        assert outcome.base_offset == 30
        p0 = coordinator.partition_offsets(tid, 0)
        assert p0 is not None and p0.high_watermark == 32

        # Unknown partitions are refused without affecting the others.
        mixed = await commit(coordinator, "m", [batch(tid, 5, 1), batch(tid, 1, 1)])
        assert mixed[0].error == ErrorCode.unknown_topic_or_partition
        assert mixed[1].base_offset == 30

        # An idempotent batch whose commit failed is not remembered as a duplicate.
        idempotent = BatchToCommit(
            tid, 1, 0, 10, 2, 1000, 1001, producer_id=9, producer_epoch=0, base_sequence=0
        )
        flaky.failures = 1
        with pytest.raises(CoordinatorUnavailable):
            await commit(coordinator, "bad2", [idempotent])
        [first_try] = await commit(coordinator, "retry", [idempotent])
        [duplicate] = await commit(coordinator, "retry-dup", [idempotent])
        assert first_try.base_offset == duplicate.base_offset == 31
        p1 = coordinator.partition_offsets(tid, 1)
        assert p1 is not None and p1.high_watermark == 33

        claim = await coordinator.claim_group("g", "a")
        await coordinator.commit_offsets("g", [CommittedOffset("t", 0, 17, 3, "meta")], claim)
        await coordinator.close()

        # Everything is back after a restart; coordinates now come from the database.
        reloaded = await started(backend_factory(), clock)
        again = reloaded.topic("t")
        assert again is not None and again.topic_id == tid
        p0 = reloaded.partition_offsets(tid, 0)
        assert p0 is not None and p0.high_watermark == 32
        found = await reloaded.find_batches(tid, 0, 4, 1 << 30)
        assert [b.base_offset for b in found] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
        assert reloaded.view.database_reads == 1
        assert await reloaded.fetch_offsets("g", None) == [CommittedOffset("t", 0, 17, 3, "meta")]
        [outcome] = await commit(reloaded, "after", [batch(tid, 0, 1)])
        assert outcome.base_offset == 32
        # Producer state survived: the retry is still a duplicate, the next sequence goes on.
        [dup] = await commit(reloaded, "retry-again", [idempotent])
        assert dup.base_offset == 31
        await reloaded.close()

    run(scenario)


def test_commit_is_idempotent_by_object_key(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        flaky = FlakyBackend(backend_factory())
        coordinator = await started(cast(Backend, flaky), clock)
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        tid = topic.topic_id
        [first] = await commit(coordinator, "k1", [batch(tid, 0, 4)])
        # The same object sent again (a reply lost in an RPC): the stored outcome, no copy.
        [again] = await commit(coordinator, "k1", [batch(tid, 0, 4)])
        assert again == first
        # The commit lands but its reply is lost: the writer reloads, the agent re-sends,
        # and the re-sent commit gets the outcome stored the first time (no second write).
        flaky.failures, flaky.lose_reply = 1, True
        [resent] = await commit(coordinator, "k2", [batch(tid, 0, 3)])
        assert resent.base_offset == 4
        # Failures that do not land are retried too, invisibly to the producer.
        flaky.failures, flaky.lose_reply = 3, False
        [retried] = await commit(coordinator, "k2b", [batch(tid, 0, 1)])
        assert retried.base_offset == 7 and flaky.failures == 0
        [after] = await commit(coordinator, "k3", [batch(tid, 0, 1)])
        assert after.base_offset == 8
        found = await coordinator.find_batches(tid, 0, 0, 1 << 30)
        assert [(b.object_key, b.base_offset, b.last_offset) for b in found] == [
            ("k1", 0, 3),
            ("k2", 4, 6),
            ("k2b", 7, 7),
            ("k3", 8, 8),
        ]
        await coordinator.close()

    run(scenario)


def test_tail_cache_is_bounded_and_older_reads_use_the_database(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        coordinator = await started(backend_factory(), FakeClock())
        coordinator.view.tail = TailIndex(max_batches=50, max_batches_per_partition=20)
        _, topic = await coordinator.create_topic("t", 4, {})
        assert topic is not None
        tid = topic.topic_id
        for i in range(40):
            await commit(coordinator, f"o{i}", [batch(tid, p, 2) for p in range(4)])
        assert coordinator.view.tail.size <= 50
        reads = coordinator.view.database_reads
        tail = await coordinator.find_batches(tid, 3, 78, 1 << 30)
        assert [b.base_offset for b in tail] == [78]
        assert coordinator.view.database_reads == reads  # served from the tail
        old = await coordinator.find_batches(tid, 0, 1, 250)
        assert [b.base_offset for b in old] == [0, 2]  # 100 bytes each, 250 asked
        assert coordinator.view.database_reads == reads + 1
        await coordinator.close()

    run(scenario)


def test_time_index(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        coordinator = await started(backend_factory(), FakeClock())
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        tid = topic.topic_id
        # max timestamps 1005, 1002 (late), 1010
        for count, max_ts in [(5, 1005), (2, 1002), (10, 1010)]:
            await commit(coordinator, f"o{max_ts}", [batch(tid, 0, count, max_ts)])
        at = await coordinator.batch_at_timestamp(tid, 0, 1003)
        assert at is not None and at.base_offset == 0
        at = await coordinator.batch_at_timestamp(tid, 0, 1006)
        assert at is not None and at.base_offset == 7
        assert await coordinator.batch_at_timestamp(tid, 0, 1011) is None
        assert await coordinator.max_timestamp(tid, 0) == 1010
        await coordinator.close()

    run(scenario)


def test_lookup_by_time_matches_a_scan_of_every_batch(backend_factory: BackendFactory) -> None:
    """The first batch whose time index reaches a timestamp, for every timestamp, before
    and after the log start moves: PostgreSQL finds it by binary search over offsets,
    so compare it with a scan of every batch (late timestamps included)."""

    async def scenario() -> None:
        rng = random.Random(7)
        coordinator = await started(backend_factory(), FakeClock())
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        tid = topic.topic_id
        committed: list[tuple[int, int, int]] = []  # base offset, last offset, time index
        next_offset, time_index = 0, -1
        for i in range(70):
            count, max_ts = rng.randint(1, 9), rng.randint(1000, 1400)
            await commit(coordinator, f"o{i}", [batch(tid, 0, count, max_ts)])
            time_index = max(time_index, max_ts)
            committed.append((next_offset, next_offset + count - 1, time_index))
            next_offset += count

        async def check(log_start: int) -> None:
            for ts in range(990, 1410, 3):
                expected = next(
                    (b for b, last, t in committed if last >= log_start and t >= ts), None
                )
                found = await coordinator.batch_at_timestamp(tid, 0, ts)
                assert (found and found.base_offset) == expected, (ts, log_start)

        await check(0)
        middle = committed[len(committed) // 2][0] + 1  # inside a batch
        assert await coordinator.delete_records([(tid, 0, middle)]) == [(ErrorCode.none, middle)]
        await check(middle)
        await coordinator.close()

    run(scenario)


def test_lease_takeover_and_fencing(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        a = await started(backend_factory(), clock, holder="a", commit_timeout_s=0)
        _, topic = await a.create_topic("t", 1, {})
        assert topic is not None
        tid = topic.topic_id
        [first] = await commit(a, "a1", [batch(tid, 0, 3)])
        assert first.base_offset == 0

        # Another agent cannot take a live lease.
        b = await started(backend_factory(), clock, holder="b", wait=False, commit_timeout_s=0)
        await b.writer.tick()
        assert not b.writer.is_writer
        with pytest.raises(NotWriter):
            await commit(b, "b0", [batch(tid, 0, 1)])

        # `a` stops renewing (a pause, a partition); its lease expires and `b` takes over.
        clock.advance(LEASE_MS + 1)
        await b.writer.tick()
        assert b.writer.is_writer
        [taken_over] = await commit(b, "b1", [batch(tid, 0, 2)])
        assert taken_over.base_offset == 3  # continues from what `a` made durable

        # The deposed writer still believes it leads: the database refuses its write.
        assert a.writer.is_writer
        with pytest.raises(Fenced):
            await commit(a, "a2", [batch(tid, 0, 5)])
        assert not a.writer.is_writer
        with pytest.raises(NotWriter):
            await a.writer.create_topic("u", 1, {})
        found = await b.find_batches(tid, 0, 0, 1 << 30)
        assert [(x.object_key, x.base_offset) for x in found] == [("a1", 0), ("b1", 3)]

        # A live lease held by `b` keeps a restarted `a` out...
        a2 = await started(backend_factory(), clock, holder="a", wait=False, commit_timeout_s=0)
        await a2.writer.tick()
        assert not a2.writer.is_writer
        # ...but a restarted `b` (same agent id) takes its lease back at once, fencing
        # the old process should it still be alive.
        b2 = await started(backend_factory(), clock, holder="b", commit_timeout_s=0)
        assert b2.writer.is_writer
        [back] = await commit(b2, "b2", [batch(tid, 0, 1)])
        assert back.base_offset == 5
        with pytest.raises(Fenced):
            await commit(b, "b3", [batch(tid, 0, 1)])
        for c in (a, b, a2, b2):
            await c.close()

    run(scenario)


def test_writer_steps_down_when_it_cannot_renew(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        a = await started(backend_factory(), clock, holder="a", commit_timeout_s=0)
        assert a.writer.is_writer
        clock.advance(LEASE_MS)  # no renewal for a whole lease (the loop sleeps in real time)
        await a.writer.tick()
        assert not a.writer.is_writer
        with pytest.raises(NotWriter):
            await commit(a, "x", [])
        await a.close()

    run(scenario)


def test_a_round_that_breaks_while_sequencing_leaves_no_gap() -> None:
    """A malformed batch fails its round midway: the writer reloads, and neither a gap
    nor an acknowledgement of offsets that were never stored follows."""

    async def scenario() -> None:
        coordinator = await started(MemoryBackend(MemoryDatabase()), FakeClock())
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        tid = topic.topic_id
        good = batch(tid, 0, 5)
        broken = good._replace(record_count="5")  # type: ignore[arg-type]
        round_: list[Any] = []
        loop = asyncio.get_running_loop()
        for key, batches in (("good", [good]), ("broken", [broken])):
            round_.append((CommitRequest(key, 1, batches), loop.create_future()))
        await coordinator.writer.commit_round(round_)
        assert all(isinstance(f.exception(), CoordinatorUnavailable) for _, f in round_)
        [resent] = await commit(coordinator, "good", [good])
        [after] = await commit(coordinator, "after", [batch(tid, 0, 1)])
        found = await coordinator.find_batches(tid, 0, 0, 1 << 30)
        assert [(b.object_key, b.base_offset) for b in found] == [
            ("good", resent.base_offset),
            ("after", after.base_offset),
        ]
        assert (resent.base_offset, after.base_offset) == (0, 5)
        await coordinator.close()

    run(scenario)


def test_delete_records_and_retention(backend_factory: BackendFactory) -> None:
    """Log starts move forward (DeleteRecords, retention by time and size) and stay moved."""

    async def scenario() -> None:
        clock = FakeClock()
        coordinator = await started(backend_factory(), clock)
        writer = coordinator.writer
        _, topic = await coordinator.create_topic("t", 2, {"retention.ms": "-1"})
        assert topic is not None
        tid = topic.topic_id
        now = clock.wall_ms()
        # Partition 0: five batches of 4 records, 100 bytes each, timestamps an hour apart.
        for i in range(5):
            await commit(coordinator, f"p0-{i}", [batch(tid, 0, 4, now - (5 - i) * 3_600_000)])
        # DeleteRecords: inside a batch, then beyond the end, then backwards (no change).
        answers = await coordinator.delete_records([(tid, 0, 6), (tid, 1, 3), (tid, 0, 99)])
        assert answers[0] == (ErrorCode.none, 6)
        assert answers[1][0] == ErrorCode.offset_out_of_range  # partition 1 is empty
        assert answers[2][0] == ErrorCode.offset_out_of_range
        assert await coordinator.delete_records([(tid, 0, 2)]) == [(ErrorCode.none, 6)]
        offsets = coordinator.partition_offsets(tid, 0)
        assert offsets is not None and offsets.log_start_offset == 6
        found = await coordinator.find_batches(tid, 0, 6, 1 << 30)
        assert [b.base_offset for b in found][:1] == [4]  # the batch holding offset 6

        # Retention by time: three hours keep the two newest batches.
        await coordinator.alter_topic_configs("t", {"retention.ms": str(3 * 3_600_000 - 1)})
        assert await writer.enforce_retention() == 1
        offsets = coordinator.partition_offsets(tid, 0)
        assert offsets is not None and offsets.log_start_offset == 12
        # Retention by size: 150 bytes keep one whole batch.
        await coordinator.alter_topic_configs("t", {"retention.ms": "-1", "retention.bytes": "150"})
        assert await writer.enforce_retention() == 1
        offsets = coordinator.partition_offsets(tid, 0)
        assert offsets is not None and (offsets.log_start_offset, offsets.high_watermark) == (
            16,
            20,
        )
        assert await writer.enforce_retention() == 0  # nothing more to do
        # -1 empties the partition; offsets go on from the high watermark.
        assert await coordinator.delete_records([(tid, 0, -1)]) == [(ErrorCode.none, 20)]
        [after] = await commit(coordinator, "p0-after", [batch(tid, 0, 1)])
        assert after.base_offset == 20
        await coordinator.close()

        # All of it is durable: a new writer sees the same log starts, and the batches
        # before them are gone from the index.
        again = await started(backend_factory(), clock)
        offsets = again.partition_offsets(tid, 0)
        assert offsets is not None and (offsets.log_start_offset, offsets.high_watermark) == (
            20,
            21,
        )
        assert [b.base_offset for b in await again.find_batches(tid, 0, 20, 1 << 30)] == [20]
        assert (
            await again.batch_at_timestamp(tid, 0, 0)
            == (await again.find_batches(tid, 0, 20, 1 << 30))[0]
        )
        await again.close()

    run(scenario)


def test_a_writer_stopped_mid_transaction_does_not_block_its_successor(
    postgres_dsn: str,
) -> None:
    """A deposed writer's round still open in the server (here: its rows inserted, it
    waits for a previous round that never ends) holds unique-index entries for the
    object ids and offsets its successor will use; the successor ends that
    transaction when it takes the lease instead of waiting on it."""

    async def scenario() -> None:
        clock = FakeClock()
        # Server-side timeouts far longer than the test: only the successor can end it.
        stuck_backend = PostgresBackend(postgres_dsn, writer_idle_ms=60_000)
        a = await started(stuck_backend, clock, holder="a", commit_timeout_s=0)
        _, topic = await a.create_topic("t", 1, {})
        assert topic is not None and a.writer.lease is not None
        tid = topic.topic_id
        await commit(a, "a1", [batch(tid, 0, 3)])

        # The previous round that never ends: its lock, held in an open transaction.
        previous_round = 424_242
        blocker = await psycopg.AsyncConnection.connect(postgres_dsn)
        await blocker.execute("SELECT pg_advisory_xact_lock(1685219956, %s)", (previous_round,))
        sequencer = Sequencer(await stuck_backend.load_sequencer(0))
        stuck_round = sequencer.sequence("stuck", 100, [batch(tid, 0, 2)], clock.wall_ms())
        fence = Fence(0, a.writer.lease.epoch, clock.wall_ms() + LEASE_MS)
        never: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        stuck = asyncio.create_task(
            stuck_backend.persist_objects_overlapping(fence, [stuck_round], never, previous_round)
        )
        await asyncio.sleep(0.5)  # its rows are inserted; it waits for the previous round

        clock.advance(LEASE_MS + 1)
        b = await started(PostgresBackend(postgres_dsn), clock, holder="b", commit_timeout_s=0)
        await b.writer.tick()
        assert b.writer.is_writer
        [taken_over] = await asyncio.wait_for(commit(b, "b1", [batch(tid, 0, 2)]), 5)
        assert taken_over.base_offset == 3  # the same offsets the stuck round held

        with pytest.raises(CoordinatorUnavailable):  # its session is gone, nothing commits
            await stuck
        never.set_result(True)
        await blocker.close()
        found = await b.find_batches(tid, 0, 0, 1 << 30)
        assert [(x.object_key, x.base_offset) for x in found] == [("a1", 0), ("b1", 3)]
        for c in (a, b):
            await c.close()

    run(scenario)


@pytest.mark.parametrize("previous_commits", [True, False])
def test_overlapping_rounds_commit_in_order_and_never_after_a_failed_one(
    postgres_dsn: str, previous_commits: bool
) -> None:
    """On PostgreSQL the next round is sent while the previous one is still open in the
    server; the server makes it wait for that round and commit only if it did."""

    async def scenario() -> None:
        clock = FakeClock()
        backend, coordinator, tid, epoch = await postgres_writer(postgres_dsn, clock, 1)
        await commit(coordinator, "first", [batch(tid, 0, 3)])
        [(committed_id,)] = await backend._fetch("SELECT max(object_id) FROM objects")

        # Round A waits in the server for a round before it (a lock held here); that
        # round "committed" if its last object exists, else it failed.
        blocking_round = committed_id if previous_commits else 424_242
        blocker = await psycopg.AsyncConnection.connect(postgres_dsn)
        await blocker.execute("SELECT pg_advisory_xact_lock(1685219956, %s)", (blocking_round,))
        sequencer = Sequencer(await backend.load_sequencer(0))
        a = sequencer.sequence("a", 100, [batch(tid, 0, 2)], clock.wall_ms())
        b = sequencer.sequence("b", 100, [batch(tid, 0, 4)], clock.wall_ms())
        fence = Fence(0, epoch, clock.wall_ms() + LEASE_MS)
        never: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        round_a = asyncio.create_task(
            backend.persist_objects_overlapping(fence, [a], never, blocking_round)
        )
        a_done = asyncio.get_running_loop().create_future()
        round_a.add_done_callback(lambda t: a_done.set_result(t.exception() is None))
        round_b = asyncio.create_task(
            backend.persist_objects_overlapping(fence, [b], a_done, a.object_id)
        )
        await asyncio.sleep(0.5)
        assert not round_a.done() and not round_b.done()  # B waits for A in the server
        [(open_rounds,)] = await backend._fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%driftlog_commit_round%%'"
            " AND state = 'active' AND pid <> pg_backend_pid()"
        )
        assert open_rounds == 2

        await blocker.close()  # the round before A ends
        if previous_commits:
            await round_a
            await round_b
            expected = [("first", 0), ("a", 3), ("b", 5)]
        else:
            with pytest.raises(CoordinatorUnavailable):
                await round_a
            with pytest.raises(CoordinatorUnavailable):
                await round_b
            expected = [("first", 0)]
        never.set_result(True)
        found = await backend.read_batches(tid, 0, 0, 100, 1 << 30)
        assert [(x.object_key, x.base_offset) for x in found] == expected
        await coordinator.close()

    run(scenario)


def test_overlapping_rounds_of_one_producer_both_commit(postgres_dsn: str) -> None:
    """Consecutive rounds that update the same idempotent producer's state: the later
    one, sent while the earlier one still inserts its rows, must not take that row
    first (each would wait for the other until the server broke the deadlock). On a
    database whose defaults would break the wait for the earlier round (a snapshot
    per transaction, a lock timeout), which the writer's sessions override."""

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            name = (await (await conn.execute("SELECT current_database()")).fetchone() or [""])[0]
            await conn.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_isolation = "repeatable read"'
            )
            await conn.execute(f'ALTER DATABASE "{name}" SET lock_timeout = "1ms"')
        clock = FakeClock()
        backend, coordinator, tid, epoch = await postgres_writer(postgres_dsn, clock, 2)
        sequencer = Sequencer(await backend.load_sequencer(0))
        now = clock.wall_ms()
        many = [BatchToCommit(tid, 1, i * 10, 10, 1, 1000, 1000) for i in range(2_000)]
        first = sequencer.sequence(
            "first", 100, [*many, BatchToCommit(tid, 0, 0, 10, 1, 1000, 1000, 7, 0, 0)], now
        )
        second = sequencer.sequence(
            "second", 100, [BatchToCommit(tid, 0, 0, 10, 1, 1000, 1000, 7, 0, 1)], now
        )
        fence = Fence(0, epoch, now + LEASE_MS)
        loop = asyncio.get_running_loop()
        none_before: asyncio.Future[bool] = loop.create_future()
        none_before.set_result(True)
        round_a = asyncio.create_task(
            backend.persist_objects_overlapping(fence, [first], none_before, None)
        )
        a_done: asyncio.Future[bool] = loop.create_future()
        round_a.add_done_callback(lambda t: a_done.set_result(t.exception() is None))
        round_b = asyncio.create_task(
            backend.persist_objects_overlapping(fence, [second], a_done, first.object_id)
        )
        await asyncio.gather(round_a, round_b)
        found = await backend.read_batches(tid, 0, 0, 100, 1 << 30)
        assert [(x.object_key, x.base_offset) for x in found] == [("first", 0), ("second", 1)]
        await coordinator.close()

    run(scenario)


def test_object_keys_with_quotes_and_backslashes_are_stored_as_sent(
    backend_factory: BackendFactory,
) -> None:
    # PostgreSQL stores a round's objects through array literals: keys are quoted there.
    async def scenario() -> None:
        coordinator = await started(backend_factory(), FakeClock())
        _, topic = await coordinator.create_topic("t", 2, {})
        assert topic is not None
        keys = ['a"b', "c\\d", "{e,f}", "NULL", "", 'g h\\"', "ünï"]
        for key in keys:
            await commit(coordinator, key, [batch(topic.topic_id, 0, 1)])
        found = await coordinator.backend.committed_outcomes(keys)
        assert {k: [o.base_offset for o in v] for k, v in found.items()} == {
            k: [n] for n, k in enumerate(keys)
        }
        await coordinator.close()

    run(scenario)


class StallingBackend:
    """Delegates to a real backend; group commits wait until `flowing` is set."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        await self.flowing.wait()
        await self.inner.persist_objects(fence, objects)

    def __getattr__(self, name: str) -> Any:
        if name == "persist_objects_overlapping":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_a_stalled_database_does_not_grow_the_writer_queue_without_end() -> None:
    """Agents re-send commits whose answers are late; while the database stalls, a
    re-send of a queued commit waits on the queued one, and past a bound new commits
    are refused as retriable instead of queued."""

    async def scenario() -> None:
        backend = StallingBackend(MemoryBackend(MemoryDatabase()))
        await backend.inner.open()
        writer = CommitWriter(
            cast(Backend, backend), FakeClock(), Listeners(), holder="a", lease_ms=LEASE_MS
        )
        await writer.start()
        _, topic = await writer.create_topic("t", 1, {})
        assert topic is not None

        def request(key: str, retry: bool = False) -> CommitRequest:
            return CommitRequest(key, 100, [batch(topic.topic_id, 0, 1)], retry)

        backend.flowing.clear()  # the database stalls
        first = writer.submit(request("k0"))
        await asyncio.sleep(0.05)  # k0's round is stuck in the database
        writer.max_pending = 3
        queued = [writer.submit(request(f"k{i}")) for i in (1, 2, 3)]
        resent = [writer.submit(request("k1", retry=True)) for _ in range(5)]
        refused = writer.submit(request("k4"))
        with pytest.raises(CoordinatorUnavailable):
            await asyncio.wait_for(refused, 1)
        backend.flowing.set()
        [zero, one, two, three] = await asyncio.gather(first, *queued)
        assert [o[0].base_offset for o in (zero, one, two, three)] == [0, 1, 2, 3]
        assert [await r for r in resent] == [one] * 5
        await writer.close()

    run(scenario)
