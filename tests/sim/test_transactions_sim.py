"""Kafka transactions under a seeded simulation: transactional and idempotent
producers, zombies, timeouts, writer failover, database faults, followers.

See sim/transactions.py for the model and the invariants. Each seed is one test;
a failure names its seed and replays exactly with `run_seed`. Longer runs:

    DRIFTLOG_SIM_SEEDS=2000 DRIFTLOG_SIM_FIRST_SEED=1000 DRIFTLOG_SIM_STEPS=300 \\
        .venv/bin/pytest -q tests/sim/test_transactions_sim.py -x

Then the simulation against broken variants of the real code (`PLANTED_BUGS`,
monkeypatched here only): each must be caught within `BUG_SEEDS` seeds, by the
invariant meant to catch it. Last, the real bugs the simulation found in src/, all
fixed: the seeds that found each, run with no workaround, and minimal reproductions.
A bug found later goes into `KNOWN_BUGS` (stepped around by the sweep) with its seeds
and a strict-xfail reproduction until it is fixed.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence

import pytest
from kio.schema.errors import ErrorCode
from sim.failover import SimFailure
from sim.transactions import KNOWN_BUGS, PLANTED_BUGS, TxnSimConfig, plant, run_seed

from driftlog.clock import FakeClock
from driftlog.coordinator.api import (
    TRANSACTIONAL_ATTRIBUTE,
    BatchToCommit,
    CommitOutcome,
    CommitRequest,
    CoordinatorError,
    TopicInfo,
)
from driftlog.coordinator.core import transactions as txns
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.core.transactions import Transaction, TxnLimits, TxnState
from driftlog.coordinator.engines.backend import Fence, LogStart, TxnWrite
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.coordinator.runtime.writer import CommitWriter, Listeners

SEEDS = int(os.environ.get("DRIFTLOG_SIM_SEEDS", "100"))
FIRST_SEED = int(os.environ.get("DRIFTLOG_SIM_FIRST_SEED", "0"))
STEPS = int(os.environ.get("DRIFTLOG_SIM_STEPS", "150"))
BUG_SEEDS = 50


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_transactions(seed: int) -> None:
    sim = run_seed(seed, STEPS)
    # The run did something: transactions committed and aborted, reads went through views.
    assert sim.stats["transactions committed"] > 0, sim.stats
    assert sim.stats["transactions aborted"] > 0, sim.stats
    assert sim.stats["read_committed fetches"] > 0, sim.stats


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(7, 100), run_seed(7, 100)
    assert list(first.trace) == list(second.trace)
    assert first.stats == second.stats
    assert first.db == second.db


# Planted bugs ---------------------------------------------------------------------------
# What each must be caught by (the first line of the failure).
CAUGHT_BY = {
    # a follower's view between the two frames: invariant 3
    "closes-before-markers": r"'s view of .*: passes the first offset",
    # the stable offset passes open transactions; the producer states lack them: 1, 3, 4
    "no-first-offset": r"passes the first offset|producer states hold|aborted_transactions",
    # the marker contradicts the transaction's new state (and read_committed shows it): 2
    "commit-markers-for-abort": r"CompleteAbort at epoch \d+, marker txn-markers/commit",
    # a marker committed past a round still in flight: 2
    "no-settle-before-markers": r"where the log ended at",
    # pending offsets of ended transactions stay; the group never gets them: 5
    "pending-offsets-stay": r"pending",
}


def first_line(failure: SimFailure) -> str:
    return str(failure).split("\n", 1)[0]


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_a_planted_bug_is_caught(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plant(monkeypatch, bug)
    for seed in range(BUG_SEEDS):
        try:
            run_seed(seed)
        except SimFailure as failure:
            assert re.search(CAUGHT_BY[bug], first_line(failure)), first_line(failure)
            return
    pytest.fail(f"planted bug {bug!r} not caught in {BUG_SEEDS} seeds")


# Real bugs in src/ the simulation found, fixed ---------------------------------------------
# The seeds that found them (a fenced instance handed its successor's epoch; a deposed
# writer answering from its stale state; a new writer applying its predecessor's stream),
# now run with no workaround.
FIXED_BUG_SEEDS = [47, 326, 209, 253, 7, 23]


@pytest.mark.parametrize("seed", FIXED_BUG_SEEDS)
def test_the_seeds_that_found_real_bugs_pass(seed: int) -> None:
    assert not KNOWN_BUGS
    run_seed(seed, config=TxnSimConfig(workarounds=frozenset()))


def test_a_fenced_instance_never_gets_its_successors_epoch() -> None:
    """KIP-360: an instance that aborted after an error bumps its epoch with its id and
    epoch; if a new instance of the id started meanwhile, it is fenced (Kafka records no
    last epoch for a bump without an expected one)."""
    limits = TxnLimits()
    first = Transaction("app", 5, 3, TxnState.COMPLETE_ABORT)
    successor = txns.init_producer_id(first, "app", 10_000, -1, -1, 99, 1000, limits)
    assert successor.record is not None and successor.record.epoch == 4
    retry = txns.init_producer_id(successor.record, "app", 10_000, 5, 3, 99, 1001, limits)
    assert retry.error == ErrorCode.producer_fenced, retry


async def two_agents(
    first: str, second: str
) -> tuple[MemoryDatabase, FakeClock, list[CommitWriter]]:
    database, clock = MemoryDatabase(), FakeClock()
    writers = []
    for holder in (first, second):
        backend = MemoryBackend(database)
        await backend.open()
        view = CoordinatorView(backend)
        await view.load()
        writers.append(CommitWriter(backend, clock, view, holder=holder, lease_ms=3_000))
    return database, clock, writers


@pytest.mark.parametrize("how", ["lease lapsed", "restart under the same holder"])
def test_a_deposed_writer_never_answers_from_its_stale_state(how: str) -> None:
    """A writer paused past its lease (or the old process of an agent restarted under the
    same holder, which takes over at once) must not answer EndTxn NONE for a transaction
    that the new writer holds open: the client would believe it committed, and the
    timeout would abort it."""

    async def scenario() -> None:
        second_holder = "b" if how == "lease lapsed" else "a"
        database, clock, (old, new) = await two_agents("a", second_holder)
        await old.tick()
        _, topic = await old.create_topic("t", 1, {})
        assert topic is not None
        partitions = [(topic.topic_id, 0)]
        _, pid, epoch = await old.init_producer_id("app", 60_000)
        await old.add_to_transaction("app", pid, epoch, partitions=partitions)
        assert await old.end_transaction("app", pid, epoch, True) == ErrorCode.none
        if how == "lease lapsed":
            clock.advance(3_001)  # the old writer's lease loop is paused
        await new.tick()
        assert new.is_writer and old.is_writer
        await new.add_to_transaction("app", pid, epoch, partitions=partitions)
        try:
            answer: ErrorCode | None = await old.end_transaction("app", pid, epoch, True)
        except CoordinatorError:
            answer = None  # refused: the client asks again, and reaches the writer
        state = database.transactions["app"].state
        assert answer != ErrorCode.none or state is not TxnState.ONGOING, (answer, state)

    asyncio.run(scenario())


class RoundTrip(MemoryBackend):
    """Each change of transactions takes a round trip (other tasks run meanwhile)."""

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        await asyncio.sleep(0)
        await super().persist_transactions(fence, write)


def test_an_id_expiring_during_init_producer_id_gets_a_real_producer_id() -> None:
    """InitProducerId of an id whose expiry is being persisted: the writer looked it up
    before its lock and allocated no producer id; the id is gone by the decision. (Found
    by the simulation, seed 64 then: the id got producer id -1; fixed in 083e84b.)"""

    async def scenario() -> None:
        clock = FakeClock()
        backend = RoundTrip()
        await backend.open()
        view = CoordinatorView(backend)
        await view.load()
        limits = TxnLimits(id_expiration_ms=1_000)
        writer = CommitWriter(backend, clock, view, holder="w", txn_limits=limits)
        await writer.tick()
        assert (await writer.init_producer_id("app", 10_000))[1] >= 0
        clock.advance(2_000)
        expiry = asyncio.create_task(writer.expire_transactions())
        await asyncio.sleep(0)  # the expiry is being persisted
        error, producer_id, _ = await writer.init_producer_id("app", 10_000)
        await expiry
        if error == ErrorCode.concurrent_transactions:  # the client asks again
            error, producer_id, _ = await writer.init_producer_id("app", 10_000)
        assert error == ErrorCode.none and producer_id >= 0, producer_id

    asyncio.run(scenario())


class Recorder:
    """A writer listener that keeps what the writer's stream would carry."""

    def __init__(self) -> None:
        self.applied: list[SequencedObject] = []

    def on_applied(self, objects: Sequence[SequencedObject]) -> None:
        self.applied.extend(objects)

    def on_reloaded(self, snapshot: SequencerSnapshot) -> None: ...
    def on_topic_put(self, topic: TopicInfo) -> None: ...
    def on_topic_dropped(self, topic: TopicInfo) -> None: ...
    def on_log_starts(self, starts: Sequence[LogStart]) -> None: ...
    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None: ...


def test_a_stale_close_never_ends_a_newer_transaction_in_a_follower() -> None:
    """A follower resyncs (after subscribing, or on "reloaded") while the writer goes on:
    the frames queued meanwhile are older than its snapshot. The close of a producer's
    first transaction must not end the producer's second one, open in the snapshot.
    (Found by the simulation, seed 62 then; fixed in 083e84b.)"""

    async def scenario() -> None:
        database = MemoryDatabase()
        backend = MemoryBackend(database)
        await backend.open()
        view = CoordinatorView(backend)
        await view.load()
        recorder = Recorder()
        writer = CommitWriter(
            backend,
            FakeClock(),
            Listeners(view, recorder),
            holder="w",
        )
        await writer.tick()
        _, topic = await writer.create_topic("t", 1, {})
        assert topic is not None
        key = (topic.topic_id, 0)
        _, pid, epoch = await writer.init_producer_id("app", 60_000)

        async def produce(sequence: int) -> None:
            batch = BatchToCommit(*key, 0, 100, 1, 0, 0, pid, epoch, sequence,
                                  TRANSACTIONAL_ATTRIBUTE)  # fmt: skip
            future: asyncio.Future[list[CommitOutcome]] = asyncio.get_running_loop().create_future()
            await writer.commit_round([(CommitRequest(f"o{sequence}", 100, [batch]), future)])

        for sequence in (0, 1):  # the first transaction commits, the second stays open
            await writer.add_to_transaction("app", pid, epoch, partitions=[key])
            await produce(sequence)
            if sequence == 0:
                await writer.end_transaction("app", pid, epoch, True)
        follower_backend = MemoryBackend(database)
        await follower_backend.open()
        follower = CoordinatorView(follower_backend)
        await follower.load()  # its resync: the second transaction is open from offset 2
        assert follower.last_stable_offset(*key) == 2
        for obj in recorder.applied:  # then the frames queued meanwhile, in order
            if obj.txn_opens:
                follower.on_txn_opens(obj.txn_opens)
            follower.on_remote_applied([(r.topic_id, r.partition, r.location) for r in obj.rows])
            if obj.txn_closes:
                follower.on_txn_closes(obj.txn_closes)
                stable = follower.last_stable_offset(*key)
                assert stable is not None and stable <= 2, stable

    asyncio.run(scenario())
