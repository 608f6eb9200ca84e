"""Transactions and key compaction's swap through the writer, on every backend (SQLite,
PostgreSQL, the in-memory reference): what is stored, what a new writer reloads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from driftlog.clock import FakeClock
from driftlog.coordinator.api import (
    TRANSACTIONAL_ATTRIBUTE,
    BatchToCommit,
    CommitRequest,
    CommittedOffset,
)
from driftlog.coordinator.core.transactions import AbortedTxn, PendingOffset, TxnState
from driftlog.coordinator.engines.backend import Backend, BatchRemoval, BatchRewrite, KeyCleanState
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.postgres import PostgresBackend
from driftlog.coordinator.engines.sqlite import SqliteBackend
from driftlog.coordinator.runtime.service import LocalCoordinator
from driftlog.records.control import is_marker_key, parse_marker_key

BackendFactory = Callable[[], Backend]


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    if request.param == "sqlite":
        return lambda: SqliteBackend(tmp_path / "c.sqlite3")
    if request.param == "memory":
        database = MemoryDatabase()
        return lambda: MemoryBackend(database)
    dsn: str = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresBackend(dsn)


async def started(backend: Backend, clock: FakeClock, holder: str = "a") -> LocalCoordinator:
    coordinator = LocalCoordinator(backend, clock, holder=holder, lease_ms=2_000,
                                   commit_timeout_s=0)  # fmt: skip
    await coordinator.start(wait_for_writer_s=5.0)
    return coordinator


def txn_batch(tid: uuid.UUID, partition: int, pid: int, epoch: int, seq: int) -> BatchToCommit:
    return BatchToCommit(tid, partition, 0, 100, 2, 1000, 1000, pid, epoch, seq,
                         TRANSACTIONAL_ATTRIBUTE)  # fmt: skip


def test_transactions_are_stored_ended_and_reloaded(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        coordinator = await started(backend_factory(), clock)
        _, topic = await coordinator.create_topic("t", 2, {})
        assert topic is not None
        tid = topic.topic_id
        writer = coordinator.writer
        error, pid, epoch = await writer.init_producer_id("app", 60_000)
        assert (error, epoch) == (ErrorCode.none, 0)
        assert (
            await writer.add_to_transaction(
                "app", pid, epoch, partitions=[(tid, 0), (tid, 1)], groups=["g"]
            )
            == ErrorCode.none
        )
        outcomes = await coordinator.submit_commit(
            CommitRequest("o1", 100, [txn_batch(tid, 0, pid, epoch, 0)])
        )
        assert outcomes[0].error == ErrorCode.none
        assert coordinator.last_stable_offset(tid, 0) == 0  # held at the open first offset
        offset = PendingOffset(pid, "g", "t", 0, 42, -1, "m")
        assert await writer.txn_offset_commit("app", pid, epoch, [offset]) == ErrorCode.none
        assert await coordinator.pending_offsets("g") == {("t", 0)}

        # A new writer (a failover) finds the transaction open and ends it: abort.
        await coordinator.close()
        second = await started(backend_factory(), clock, holder="b")
        [txn] = [t for t in await second.transaction_states() if t.transactional_id == "app"]
        assert txn.state is TxnState.ONGOING and txn.partitions == {(tid, 0), (tid, 1)}
        assert second.last_stable_offset(tid, 0) == 0
        assert await second.writer.end_transaction("app", pid, epoch, False) == ErrorCode.none
        # Markers at real offsets in both partitions; the stable offset moves past them.
        assert second.partition_offsets(tid, 0) == (0, 3)
        assert second.partition_offsets(tid, 1) == (0, 1)
        assert second.last_stable_offset(tid, 0) == 3
        assert await second.aborted_transactions(tid, 0, 0, 3) == [AbortedTxn(pid, 0, 2)]
        markers = await second.find_batches(tid, 0, 2, 1000)
        assert is_marker_key(markers[0].object_key)
        assert not parse_marker_key(markers[0].object_key).commit
        # The aborted transaction's offsets never reach the group.
        assert await second.pending_offsets("g") == set()
        assert await second.fetch_offsets("g", None) == []
        # A retried abort is answered NONE; a commit of it is refused.
        assert await second.writer.end_transaction("app", pid, epoch, False) == ErrorCode.none
        assert await second.writer.end_transaction("app", pid, epoch, True) == (
            ErrorCode.invalid_txn_state
        )

        # The next transaction commits its offsets.
        assert await second.writer.add_to_transaction("app", pid, epoch, groups=["g"]) == (
            ErrorCode.none
        )
        assert await second.writer.txn_offset_commit("app", pid, epoch, [offset]) == (
            ErrorCode.none
        )
        assert await second.writer.end_transaction("app", pid, epoch, True) == ErrorCode.none
        assert await second.fetch_offsets("g", None) == [CommittedOffset("t", 0, 42, -1, "m")]
        await second.close()

        # A third writer reloads the ended state; a timeout aborts an open one with a bump.
        third = await started(backend_factory(), clock, holder="c")
        assert (
            await third.writer.add_to_transaction("app", pid, epoch, partitions=[(tid, 1)])
            == ErrorCode.none
        )
        for _ in range(61):  # a minute, renewing the lease as the writer's loop does
            clock.advance(1_000)
            await third.writer.tick()
        # (The writer's own timeout loop may get there first: the state is what counts.)
        await third.writer.expire_transactions()
        [txn] = [t for t in await third.transaction_states() if t.transactional_id == "app"]
        assert (txn.state, txn.epoch) == (TxnState.COMPLETE_ABORT, epoch + 1)
        assert third.partition_offsets(tid, 1) == (0, 2)
        await third.close()

    asyncio.run(scenario())


def test_key_compaction_swaps_only_rows_still_in_place(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        coordinator = await started(backend_factory(), clock)
        _, topic = await coordinator.create_topic("t", 1, {})
        assert topic is not None
        tid = topic.topic_id
        await coordinator.submit_commit(CommitRequest(
            "objects/1", 300, [BatchToCommit(tid, 0, i * 100, 100, 2, 1000, 1000) for i in range(3)]
        ))  # fmt: skip
        refs = await coordinator.backend.read_batch_refs(tid, 0, 0, 6, 10)
        assert [r.location.base_offset for r in refs] == [0, 2, 4]
        source = refs[0].object_id
        changed = await coordinator.writer.rewrite_batches(
            "objects/2",
            50,
            [BatchRewrite(tid, 0, 1, source, 0, 50), BatchRewrite(tid, 0, 5, source + 99, 50, 1)],
            [BatchRemoval(tid, 0, 3, source)],
            KeyCleanState(tid, 0, 4, ((4, 1000, 0),)),
        )
        # The batch of offsets 4-5 named another object: left alone.
        assert changed == 2
        after = await coordinator.backend.read_batch_refs(tid, 0, 0, 6, 10)
        assert [(r.location.base_offset, r.location.object_key, r.location.byte_length)
                for r in after] == [(0, "objects/2", 50), (4, "objects/1", 100)]  # fmt: skip
        assert await coordinator.backend.key_clean_state(tid, 0) == KeyCleanState(
            tid, 0, 4, ((4, 1000, 0),)
        )
        # Offsets read across the gap go on at the next batch.
        assert [b.base_offset for b in await coordinator.find_batches(tid, 0, 2, 10_000)] == [4]
        await coordinator.close()

    asyncio.run(scenario())
