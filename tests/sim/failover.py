"""A seeded, deterministic simulation of coordinator failover (FoundationDB/VOPR style).

One seed drives everything: the workload, the faults and interleavings of every
agent's backend, the clock and the topic ids. Several agents (a `CommitWriter`
and its `CoordinatorView` each, with their own holder id and `FaultyBackend`)
share one `MemoryDatabase` and one `FakeClock`. Nothing runs on a timer: the
simulation calls `writer.tick()` and `writer.commit_round()` itself, so the
interleaving is the seed's.

Steps: advance the clock (then tick the agents that are not paused); commit a
round on one agent (new objects of 1-5 batches over 3 topics x 4 partitions,
idempotent-producer batches re-uploaded until acknowledged, late duplicates of
acknowledged ones, object keys re-sent after a failure or after success); tick
one agent; pause or resume one (a paused agent is not ticked, so its lease
lapses while it still believes it leads, and it may still commit); crash one (a
new instance with the same or a new holder id; sometimes the old one lives on,
paused, as a zombie); delete, re-create or grow a topic; read back through a
view; or run several ticks, commit rounds (on one agent too: the writer
pipelines them) and topic changes concurrently, the backends yielding a seeded
number of times around each call. Every backend call may fail before reaching
the database or lose its reply after the transaction committed.

Invariants (`Sim.on_landing` when the database accepts a commit, the round's
answers after it, `Sim.check` after every step and at the end):

- each epoch is won by one agent instance; every write the database accepted
  carried the current epoch, won by the instance that wrote (so no two writers
  ever had a write accepted for one epoch, and a deposed writer's write is
  never stored); a round answered `Fenced` stored nothing; no exception
  escapes `commit_round` and every answer is given;
- offsets per partition are dense and increasing from the log start; no batch
  is stored twice (idempotent retries included), none is stored for a
  partition that does not exist, every stored batch is one the workload sent;
- a batch refused as unknown is in a partition that does not exist; an
  idempotent duplicate gets its original offset; nothing else is refused;
- every acknowledged batch is stored exactly once, at the offsets it was
  acknowledged with, while its topic exists; every acknowledgement of a batch
  gives the same offsets; an object key sent again gets exactly the outcomes
  stored the first time (also when the first reply was lost);
- a view is never ahead of the database, and a writer's view is exact right
  after its own commits;
- at the end, with faults off, one agent becomes the writer, every object
  commits, every idempotent batch is acknowledged, every partition takes a
  new commit.

A failure raises `SimFailure` naming the seed, the step and the recent steps;
`run_seed(seed, steps)` replays it exactly (real time only bounds a step, to
report a deadlock).

`sim/transactions.py` extends `Sim` through `tracked_backend`, `make_writer`,
`do_step`, `pick_batches`, `check_refusal` and `is_control`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from driftlog.clock import FakeClock
from driftlog.coordinator.api import (
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    CommitRequest,
    CoordinatorError,
    CoordinatorUnavailable,
    Fenced,
    NotWriter,
    TopicInfo,
)
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject
from driftlog.coordinator.engines.backend import Fence
from driftlog.coordinator.engines.faulty import BackendFaults, FaultyBackend
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase, StoredBatch
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.coordinator.runtime.writer import CommitWriter

SHARD = 0
TOPICS = ("t0", "t1", "t2")
PARTITIONS = 4  # per topic when created; topic changes add some, up to MAX_PARTITIONS
MAX_PARTITIONS = 6
BATCH_BYTES = 100
# t2 stamps LogAppendTime: its time index comes from commit times.
TOPIC_CONFIGS = {"t2": {"message.timestamp.type": "LogAppendTime"}}


STEP_WEIGHTS = (
    ("advance", 30),
    ("commit", 30),
    ("tick", 6),
    ("pause", 5),
    ("crash", 5),
    ("topic", 3),
    ("read", 6),
    ("concurrent", 15),
)


class SimFailure(AssertionError):
    pass


@dataclass(frozen=True, slots=True)
class SimConfig:
    steps: int = 300
    agents: int = 3
    lease_ms: int = 3_000
    fail_before: float = 0.04
    lose_reply: float = 0.04
    lossless: frozenset[str] = frozenset()  # backend calls whose replies are never lost
    max_yields: int = 3
    producers: int = 3
    weights: tuple[tuple[str, int], ...] = STEP_WEIGHTS


# The workload's records ---------------------------------------------------------------


@dataclass(slots=True)
class LogicalBatch:
    """One batch as a producer sent it; its re-uploads (retries) share this record."""

    id: int
    topic_id: uuid.UUID
    partition: int
    count: int
    producer: tuple[int, int, int] | None  # producer id, epoch, base sequence
    stored: tuple[int, int] | None = None  # (base, last offset) where the database has it
    acked: tuple[int, int] | None = None  # (base, last offset) acknowledged
    attributes: int = 0  # the batch header's (transactional: sim/transactions.py)
    owner: Producer | None = None  # who sent it, when its producer id is not enough

    @property
    def key(self) -> PartitionKey:
        return (self.topic_id, self.partition)

    def __str__(self) -> str:
        what = "plain" if self.producer is None else "producer {} epoch {} seq {}"
        return f"batch {self.id} ({what.format(*(self.producer or ()))})"


@dataclass(slots=True)
class SimObject:
    key: str
    batches: list[LogicalBatch]
    request: CommitRequest
    acked: list[CommitOutcome] | None = None  # the first outcomes answered
    sent: bool = False
    error: str = ""  # the last failure


@dataclass(slots=True)
class Producer:
    producer_id: int
    epoch: int = 0
    next_sequence: dict[PartitionKey, int] = field(default_factory=dict)
    in_flight: dict[PartitionKey, LogicalBatch] = field(default_factory=dict)
    acked: dict[PartitionKey, list[LogicalBatch]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Landing:
    """An object commit the database accepted, as the tracking backend saw it."""

    node: int
    epoch: int
    step: int
    obj: SequencedObject


# The database side: who did what ------------------------------------------------------


@dataclass(slots=True)
class Ledger:
    """What the database accepted, by agent instance (the database itself knows only epochs)."""

    step: int = 0
    acquired: dict[int, int] = field(default_factory=dict)  # epoch -> node
    landings: dict[str, Landing] = field(default_factory=dict)  # object key -> landing
    log: list[Landing] = field(default_factory=list)
    topic_changes: list[tuple[int, str, uuid.UUID]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    on_landing: Callable[[Landing], None] | None = None


class TrackedBackend(MemoryBackend):
    """A `MemoryBackend` that tells the ledger what it accepted, and checks the epoch rules.

    It sits under the `FaultyBackend`, so it sees what reached the database even
    when the reply is then lost. Violations are recorded, not raised: the writer
    would turn an exception into an ordinary failed commit.
    """

    def __init__(self, database: MemoryDatabase, ledger: Ledger, node: int) -> None:
        super().__init__(database)
        self.ledger = ledger
        self.node = node

    def _accepted(self, what: str, epoch: int) -> None:
        winner = self.ledger.acquired.get(epoch)
        lease = self.database.leases.get(SHARD)
        if winner != self.node:
            self.ledger.violations.append(
                f"{what} accepted from node{self.node} with epoch {epoch}, won by node{winner}"
            )
        if lease is None or lease.epoch != epoch:
            self.ledger.violations.append(
                f"{what} accepted from node{self.node} with epoch {epoch}, current {lease}"
            )

    async def try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        current = self.database.leases.get(new.shard)
        won = await super().try_acquire_lease(expected, new)
        if won:
            if expected is not None and current != expected:
                # The old writer wrote (and extended the expiry) after this candidate
                # read the lease: the takeover fences it all the same.
                self.ledger.events["takeover of a lease extended since read"] += 1
            if new.epoch in self.ledger.acquired:
                self.ledger.violations.append(
                    f"epoch {new.epoch} won by node{self.node} and by"
                    f" node{self.ledger.acquired[new.epoch]}"
                )
            self.ledger.acquired[new.epoch] = self.node
        return won

    async def renew_lease(self, fence: Fence) -> None:
        await super().renew_lease(fence)
        self._accepted("renewal", fence.epoch)

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        await super().persist_objects(fence, objects)
        self._accepted(f"commit of {[o.object_key for o in objects]}", fence.epoch)
        for obj in objects:
            if obj.object_key in self.ledger.landings:
                self.ledger.violations.append(f"object {obj.object_key} stored twice")
            landing = Landing(self.node, fence.epoch, self.ledger.step, obj)
            self.ledger.landings[obj.object_key] = landing
            self.ledger.log.append(landing)
            for row in obj.rows:
                if (row.topic_id, row.partition) not in self.database.partitions:
                    self.ledger.violations.append(
                        f"object {obj.object_key} stored a batch at {row.location.base_offset}"
                        f" in partition {row.topic_id}/{row.partition}, which does not exist"
                    )
            if self.ledger.on_landing is not None:
                self.ledger.on_landing(landing)

    async def put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        await super().put_topic(fence, topic, old_partition_count)
        self._accepted(f"put_topic {topic.name}", fence.epoch)
        self.ledger.topic_changes.append((self.node, f"put {topic.name}", topic.topic_id))

    async def drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        await super().drop_topic(fence, topic, now_ms)
        self._accepted(f"drop_topic {topic.name}", fence.epoch)
        self.ledger.topic_changes.append((self.node, f"drop {topic.name}", topic.topic_id))


@dataclass(slots=True)
class Node:
    """One agent process: a writer candidate and a view over its own handle on the database."""

    id: int
    slot: int
    holder: str
    faulty: FaultyBackend
    view: CoordinatorView
    writer: CommitWriter
    # One topic change at a time, so that the ledger tells which one stored what.
    topic_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    rounds_in_flight: int = 0
    rounds_started: int = 0
    paused: bool = False
    zombie: bool = False

    @property
    def is_writer(self) -> bool:
        return self.writer.is_writer

    def __str__(self) -> str:
        flags = ("W" if self.is_writer else "") + ("P" if self.paused else "")
        flags += "Z" if self.zombie else ""
        return f"node{self.id}({self.holder}{',' + flags if flags else ''})"


@contextlib.contextmanager
def deterministic_uuid4(rng: random.Random) -> Iterator[None]:
    """Topic ids from the seed, so a replay is identical down to the ids."""
    original = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    try:
        yield
    finally:
        uuid.uuid4 = original


class Sim:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.db = MemoryDatabase()
        self.ledger = Ledger(on_landing=self.on_landing)
        self.nodes: list[Node] = []
        self.node_count = 0
        self.generation = [0] * config.agents
        self.producers: list[Producer] = []
        self.objects: dict[str, SimObject] = {}
        self.unacked: list[str] = []  # keys of objects not acknowledged yet, in order
        self.batches: list[LogicalBatch] = []
        self.trace: collections.deque[str] = collections.deque(maxlen=40)
        self.step = 0
        self.checked_version = -1
        self.verified: dict[PartitionKey, tuple[int, StoredBatch]] = {}
        self.stored_at: dict[int, tuple[PartitionKey, int]] = {}
        self.stats: collections.Counter[str] = collections.Counter()

    # Failures -------------------------------------------------------------------------------
    def fail(self, what: str) -> SimFailure:
        recent = "\n  ".join(self.trace)
        return SimFailure(
            f"seed={self.seed} step={self.step}: {what}\n"
            f"replay: run_seed({self.seed}, config={self.config})\n"
            f"recent steps:\n  {recent}"
        )

    def violation(self, what: str) -> None:
        self.ledger.violations.append(what)

    def log(self, line: str) -> None:
        self.trace.append(f"[{self.step}] t+{self.clock.wall_ms() - 1_700_000_000_000} {line}")

    # Agents ---------------------------------------------------------------------------------
    async def spawn(self, slot: int, holder: str) -> Node:
        self.node_count += 1
        node_id = self.node_count
        faults = BackendFaults(
            self.config.fail_before,
            self.config.lose_reply,
            lossless=self.config.lossless,
            max_yields=self.config.max_yields,
        )
        faulty = FaultyBackend(
            self.tracked_backend(node_id),
            faults,
            random.Random(self.rng.getrandbits(64)),
        )
        view = CoordinatorView(faulty)
        writer = self.make_writer(node_id, holder, faulty, view)
        node = Node(node_id, slot, holder, faulty, view, writer)
        # What an agent does at start, minus the writer's timer tasks.
        for _ in range(100):
            try:
                await faulty.open()
                await view.load()
                break
            except CoordinatorUnavailable:
                continue
        else:
            raise self.fail(f"{node} could not start in 100 attempts")
        self.nodes.append(node)
        return node

    def tracked_backend(self, node_id: int) -> TrackedBackend:
        """The agent's handle on the database, under its faults (a subclass tracks more)."""
        return TrackedBackend(self.db, self.ledger, node_id)

    def make_writer(
        self, node_id: int, holder: str, backend: FaultyBackend, view: CoordinatorView
    ) -> CommitWriter:
        """The agent's writer candidate, reporting to its view (a subclass adds listeners)."""
        return CommitWriter(
            backend,
            self.clock,
            view,
            holder=holder,
            address=f"node{node_id}",
            shard=SHARD,
            lease_ms=self.config.lease_ms,
        )

    async def tick(self, node: Node) -> None:
        was = node.is_writer
        await node.writer.tick()
        if was != node.is_writer:
            self.log(f"{node} {'became writer' if node.is_writer else 'stepped down'}")

    async def one_topic_change(self, node: Node) -> None:
        async with node.topic_lock:
            await self.topic_change(node)

    # Setup ----------------------------------------------------------------------------------
    async def setup(self) -> None:
        for slot in range(self.config.agents):
            await self.spawn(slot, f"agent{slot}")
        first = self.nodes[0]
        first.faulty.enabled = False
        while not first.is_writer:
            await self.tick(first)
        for name in TOPICS:
            error, _ = await first.writer.create_topic(
                name, PARTITIONS, TOPIC_CONFIGS.get(name, {})
            )
            assert error == ErrorCode.none
        for _ in range(self.config.producers):
            self.producers.append(Producer(await first.faulty.allocate_producer_id()))
        first.faulty.enabled = True
        self.log(f"setup: {first} writer, topics created")

    # Workload -------------------------------------------------------------------------------
    def alive_topics(self) -> list[TopicInfo]:
        return sorted(self.db.topics.values(), key=lambda t: t.name)

    def new_object(self) -> SimObject:
        return self.make_object(self.pick_batches())

    def pick_batches(self) -> list[LogicalBatch]:
        """1-5 plain and idempotent batches for a new object (sometimes of a deleted topic)."""
        rng = self.rng
        topics = self.alive_topics()
        dead = sorted({b.topic_id for b in self.batches} - set(self.db.topics), key=lambda t: t.int)
        chosen: list[LogicalBatch] = []
        used: set[tuple[int, PartitionKey]] = set()
        for _ in range(rng.randint(1, 5)):
            if dead and rng.random() < 0.05:
                # Stale metadata: a deleted topic.
                pkey = (rng.choice(dead), rng.randrange(MAX_PARTITIONS))
            elif topics:
                topic = rng.choice(topics)
                pkey = (topic.topic_id, rng.randrange(topic.partition_count))
            else:
                continue
            if rng.random() < 0.4 and self.producers:
                producer = rng.choice(self.producers)
                if (producer.producer_id, pkey) in used:
                    continue
                used.add((producer.producer_id, pkey))
                chosen.append(self.idempotent_batch(producer, pkey))
            else:
                chosen.append(self.new_batch(pkey, None))
        return chosen

    def make_object(self, batches: list[LogicalBatch]) -> SimObject:
        """A new object (a new upload under a new key) holding `batches`."""
        key = f"o{len(self.objects)}"
        now = self.clock.wall_ms()
        request = CommitRequest(
            key,
            BATCH_BYTES * len(batches),
            [
                BatchToCommit(
                    b.topic_id,
                    b.partition,
                    i * BATCH_BYTES,
                    BATCH_BYTES,
                    b.count,
                    now - 2_000,
                    now - self.rng.randrange(2_000),
                    *(b.producer or (-1, -1, -1)),
                    b.attributes,
                )
                for i, b in enumerate(batches)
            ],
        )
        obj = self.objects[key] = SimObject(key, batches, request)
        self.unacked.append(key)
        return obj

    def new_batch(self, pkey: PartitionKey, producer: tuple[int, int, int] | None) -> LogicalBatch:
        batch = LogicalBatch(len(self.batches), pkey[0], pkey[1], self.rng.randint(1, 5), producer)
        self.batches.append(batch)
        return batch

    def idempotent_batch(self, producer: Producer, pkey: PartitionKey) -> LogicalBatch:
        in_flight = producer.in_flight.get(pkey)
        if in_flight is not None:
            self.stats["idempotent re-uploads"] += 1
            return in_flight  # a retry: the same batch in a new object
        acked = producer.acked.get(pkey, [])
        if acked and self.rng.random() < 0.15:
            self.stats["idempotent late duplicates"] += 1
            return self.rng.choice(acked[-4:])  # a late retry of an acknowledged batch
        sequence = producer.next_sequence.get(pkey, 0)
        batch = self.new_batch(pkey, (producer.producer_id, producer.epoch, sequence))
        producer.next_sequence[pkey] = sequence + batch.count
        producer.in_flight[pkey] = batch
        return batch

    def producer_of(self, batch: LogicalBatch) -> Producer:
        assert batch.producer is not None
        if batch.owner is not None:
            return batch.owner
        return next(p for p in self.producers if p.producer_id == batch.producer[0])

    def logical(self, key: str, byte_offset: int) -> LogicalBatch | None:
        obj = self.objects.get(key)
        index = byte_offset // BATCH_BYTES
        if obj is None or not 0 <= index < len(obj.batches):
            return None
        return obj.batches[index]

    def pick_round(self) -> list[SimObject]:
        rng = self.rng
        objects: list[SimObject] = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.2 and self.unacked:
                objects.append(self.objects[rng.choice(self.unacked)])  # a re-send
            elif kind < 0.28 and self.objects:
                objects.append(self.objects[rng.choice(list(self.objects))])  # any key again
            elif kind < 0.32 and objects:
                objects.append(objects[-1])  # the same key twice in one round
            else:
                objects.append(self.new_object())
        return objects

    # Steps ----------------------------------------------------------------------------------
    async def run(self) -> None:
        with deterministic_uuid4(random.Random(self.rng.getrandbits(64))):
            await self.setup()
            self.check(full=True)
            for step in range(1, self.config.steps + 1):
                self.step = self.ledger.step = step
                try:
                    # Real time only as a safety net: without I/O, a step that does
                    # not finish is a deadlock.
                    await asyncio.wait_for(self.one_step(), 30)
                except TimeoutError:
                    raise self.fail("the step did not finish (a deadlock?)") from None
                self.check(full=step % 50 == 0)
            await self.heal()

    async def one_step(self) -> None:
        rng = self.rng
        names, weights = zip(*self.config.weights, strict=True)
        choice = rng.choices(names, weights)[0]
        self.stats[choice] += 1
        await self.do_step(choice)

    async def do_step(self, choice: str) -> None:
        rng = self.rng
        if choice == "advance":
            await self.advance()
        elif choice == "commit":
            writers = [n for n in self.nodes if n.is_writer]
            node = rng.choice(writers if writers and rng.random() < 0.75 else self.nodes)
            await self.commit_round(node, self.pick_round(), alone=True)
        elif choice == "tick":
            node = rng.choice(self.nodes)
            if not node.paused:
                await self.tick(node)
        elif choice == "pause":
            node = rng.choice(self.nodes)
            node.paused = not node.paused
            self.log(f"{node} {'paused' if node.paused else 'resumed'}")
        elif choice == "crash":
            await self.crash()
        elif choice == "topic":
            await self.one_topic_change(rng.choice(self.nodes))
        elif choice == "read":
            await self.read()
        else:
            await self.concurrent()

    async def advance(self) -> None:
        rng = self.rng
        lease = self.config.lease_ms
        kind = rng.random()
        if kind < 0.6:
            ms = rng.randint(1, lease // 3)
        elif kind < 0.9:
            ms = rng.randint(lease // 3, lease)
        else:
            ms = rng.randint(lease, 3 * lease)
        self.clock.advance(ms)
        self.log(f"advance {ms} ms")
        # Every lease loop that is not paused wakes up (now and then one oversleeps),
        # one after the other, or all at once while writers (paused ones too: their
        # write loops may still run) commit.
        awake = [n for n in self.nodes if not n.paused and rng.random() < 0.9]
        rng.shuffle(awake)
        if rng.random() < 0.5:
            for node in awake:
                await self.tick(node)
            return
        actions = [self.tick(node) for node in awake]
        for node in self.nodes:
            # A writer whose lease loop is paused may be deposed by these ticks.
            if node.is_writer and rng.random() < (0.7 if node.paused else 0.3):
                actions.append(self.commit_round(node, self.pick_round()))
        rng.shuffle(actions)
        await asyncio.gather(*actions)

    async def concurrent(self) -> None:
        """Ticks, rounds and topic changes of several agents at once, interleaved by the seed."""
        rng = self.rng
        actions: list[Awaitable[None]] = []
        names: list[str] = []
        for _ in range(rng.randint(2, 4)):
            node = rng.choice(self.nodes)
            kind = rng.choices(["tick", "commit", "topic"], weights=[4, 5, 1])[0]
            if kind == "tick" and not node.paused:
                actions.append(self.tick(node))
            elif kind == "commit":
                actions.append(self.commit_round(node, self.pick_round()))
            elif kind == "topic":
                actions.append(self.one_topic_change(node))
            else:
                continue
            names.append(f"{kind} {node}")
        self.log(f"concurrently: {', '.join(names)}")
        await asyncio.gather(*actions)

    async def crash(self) -> None:
        rng = self.rng
        old = rng.choice(self.nodes)
        keep_zombie = (
            not old.zombie and rng.random() < 0.2 and not any(n.zombie for n in self.nodes)
        )
        if keep_zombie:
            old.zombie = old.paused = True  # still alive somewhere, stuck
        else:
            self.nodes.remove(old)
        if rng.random() < 0.6:
            holder = old.holder  # a restart: same agent id
        else:
            self.generation[old.slot] += 1
            holder = f"agent{old.slot}.{self.generation[old.slot]}"
        new = await self.spawn(old.slot, holder)
        self.log(f"crash {old}{' (lives on as a zombie)' if keep_zombie else ''}, start {new}")

    async def commit_round(self, node: Node, objects: list[SimObject], alone: bool = False) -> None:
        """One round on `node`'s writer, as its write loop runs it; then check the answers.

        Rounds on one node may overlap (the writer pipelines them); `alone`: nothing
        else runs, so the writer's view must match the database afterwards.
        """
        loop = asyncio.get_running_loop()
        pending: list[tuple[CommitRequest, asyncio.Future[list[CommitOutcome]]]] = []
        for obj in objects:
            # A first send skips the committed-key check; re-sends ask for it.
            request = dataclasses.replace(obj.request, retry=True) if obj.sent else obj.request
            obj.sent = True
            pending.append((request, loop.create_future()))
        logged = len(self.ledger.log)
        overlapped = node.rounds_in_flight > 0
        node.rounds_in_flight += 1
        node.rounds_started += 1
        started = node.rounds_started
        try:
            await self.run_round(node, pending)
        finally:
            node.rounds_in_flight -= 1
        overlapped = overlapped or node.rounds_started != started
        keys = [obj.key for obj in objects]
        landed = [
            x.obj.object_key
            for x in self.ledger.log[logged:]
            if x.node == node.id and x.obj.object_key in keys
        ]
        answers: list[str] = []
        for obj, (_, future) in zip(objects, pending, strict=True):
            if not future.done():
                raise self.fail(f"{node}: round {keys} left {obj.key} unanswered")
            error = future.exception()
            if error is None:
                self.acknowledged(node, obj, future.result())
                answers.append("ok")
                continue
            answers.append(type(error).__name__)
            obj.error = repr(error)
            if not isinstance(error, NotWriter | CoordinatorUnavailable):
                raise self.fail(f"{node}: {obj.key} failed with {error!r}")
            if isinstance(error, Fenced) and landed and not overlapped:
                raise self.fail(f"{node}: round {keys} answered Fenced but stored {landed}")
        self.stats["objects stored"] += len(landed)
        self.log(f"{node} commits {','.join(keys)}: {' '.join(answers)}; stored {landed or '-'}")
        if alone and landed and all(a == "ok" for a in answers):
            self.check_writer_view(node)

    async def run_round(
        self, node: Node, pending: list[tuple[CommitRequest, asyncio.Future[list[CommitOutcome]]]]
    ) -> None:
        writer = node.writer
        if writer.is_writer:  # what submit() checks before queueing
            try:
                await writer.commit_round(pending)
            except Exception as e:
                # The write loop would fail the round (whose transaction may have
                # committed) and log it: a bug all the same.
                raise self.fail(f"{node}: commit_round raised {e!r}") from e
        else:
            for _, future in pending:
                future.set_exception(NotWriter("not the writer"))

    def on_landing(self, landing: Landing) -> None:
        """The database just accepted this object: check its outcomes against the database."""
        key = landing.obj.object_key
        obj = self.objects.get(key)
        if obj is None:
            self.violation(f"object {key} stored, but the workload never sent it")
            return
        outcomes = landing.obj.outcomes
        if len(outcomes) != len(obj.batches):
            self.violation(f"{key}: {len(outcomes)} outcomes for {len(obj.batches)} batches")
            return
        rows = {row.location.byte_offset: row for row in landing.obj.rows}
        for i, (batch, outcome) in enumerate(zip(obj.batches, outcomes, strict=True)):
            where = f"{key} {batch}"
            row = rows.get(i * BATCH_BYTES)
            exists = batch.key in self.db.partitions
            if outcome.error != ErrorCode.none:
                if row is not None:
                    self.violation(f"{where}: refused with {outcome.error!r}, but stored")
                else:
                    self.check_refusal(where, batch, outcome.error, exists)
                continue
            span = (outcome.base_offset, outcome.base_offset + batch.count - 1)
            if not exists:
                self.violation(f"{where}: accepted at {span} in a partition that does not exist")
            if row is None:
                if batch.producer is None or batch.stored != span:
                    self.violation(f"{where}: a duplicate of {batch.stored}, answered {span}")
            elif (row.location.base_offset, row.location.last_offset) != span:
                self.violation(f"{where}: answered {span}, stored {row.location}")
            elif batch.stored is not None:
                self.violation(f"{where}: stored at {span}, and before at {batch.stored}")
            else:
                batch.stored = span

    def check_refusal(
        self, where: str, batch: LogicalBatch, error: ErrorCode, exists: bool
    ) -> None:
        """A batch the commit refused: only for a missing partition or an old retry."""
        if error == ErrorCode.unknown_topic_or_partition:
            if exists:
                self.violation(f"{where}: refused as unknown, but its partition exists")
        elif error != ErrorCode.out_of_order_sequence_number:
            self.violation(f"{where}: refused with {error!r}")
        elif batch.stored is None:
            # Only a retry of a stored batch from beyond the five remembered.
            self.violation(f"{where}: refused as out of order")

    def acknowledged(self, node: Node, obj: SimObject, outcomes: list[CommitOutcome]) -> None:
        where = f"{node}: {obj.key}"
        landing = self.ledger.landings.get(obj.key)
        if landing is None:
            raise self.fail(f"{where}: acknowledged but never stored")
        if outcomes != landing.obj.outcomes:
            raise self.fail(
                f"{where}: answered {outcomes}, the commit stored {landing.obj.outcomes}"
            )
        if obj.acked is not None and outcomes != obj.acked:
            raise self.fail(f"{where}: answered {outcomes}, earlier {obj.acked}")
        obj.acked = outcomes
        if obj.key in self.unacked:
            self.unacked.remove(obj.key)
        for batch, outcome in zip(obj.batches, outcomes, strict=True):
            producer = self.producer_of(batch) if batch.producer is not None else None
            if outcome.error != ErrorCode.none:
                if producer is not None and producer.in_flight.get(batch.key) is batch:
                    del producer.in_flight[batch.key]  # the client gives up on it
                continue
            span = (outcome.base_offset, outcome.base_offset + batch.count - 1)
            if batch.stored != span:
                raise self.fail(f"{where} {batch}: acknowledged at {span}, stored {batch.stored}")
            if batch.acked is not None:
                if batch.acked != span:
                    raise self.fail(
                        f"{where} {batch}: acknowledged at {span}, before {batch.acked}"
                    )
                self.stats["duplicates acknowledged again"] += 1
                continue
            batch.acked = span
            self.stats["batches acknowledged"] += 1
            if batch.key in self.db.partitions:
                self.check_stored(f"{where} {batch}", batch, span)
            if producer is not None:
                if producer.in_flight.get(batch.key) is batch:
                    del producer.in_flight[batch.key]
                producer.acked.setdefault(batch.key, []).append(batch)

    def check_stored(self, where: str, batch: LogicalBatch, span: tuple[int, int]) -> None:
        rows = self.db.batch_rows(batch.key)
        found = [r for r in rows if r.base_offset == span[0]]
        if len(found) != 1 or found[0].last_offset != span[1]:
            raise self.fail(f"{where}: acknowledged at {span}, stored {found}")
        location = self.db.location(found[0])
        if location is None or self.logical(location.object_key, location.byte_offset) is not batch:
            raise self.fail(f"{where}: acknowledged at {span}, where {location} is stored")

    async def topic_change(self, node: Node) -> None:
        """Delete a topic, create a deleted one again, or add a partition to one."""
        rng = self.rng
        alive = {t.name: t for t in self.db.topics.values()}
        missing = [name for name in TOPICS if name not in alive]
        growable = sorted(n for n, t in alive.items() if t.partition_count < MAX_PARTITIONS)
        changes = len(self.ledger.topic_changes)
        kind = rng.random()
        try:
            if missing and (len(alive) < 2 or kind < 0.6):
                name = rng.choice(missing)
                error, topic = await node.writer.create_topic(
                    name, PARTITIONS, TOPIC_CONFIGS.get(name, {})
                )
                topic_id = topic.topic_id if topic is not None else None
                expected = [(f"put {name}", topic_id)] if error == ErrorCode.none else []
            elif growable and kind < 0.8:
                name = rng.choice(growable)
                count = alive[name].partition_count + 1
                error = await node.writer.create_partitions(name, count)
                topic_id = alive[name].topic_id
                expected = [(f"put {name}", topic_id)] if error == ErrorCode.none else []
            elif len(alive) >= 2:
                name = rng.choice(sorted(alive))
                error = await node.writer.delete_topic(name)
                topic_id = alive[name].topic_id
                expected = [(f"drop {name}", topic_id)] if error == ErrorCode.none else []
            else:
                return
        except (NotWriter, CoordinatorUnavailable) as e:
            self.log(f"{node} topic change: {e!r}")
            return
        made = [c for c in self.ledger.topic_changes[changes:] if c[0] == node.id]
        self.log(f"{node} {made or 'no change'}: {error.name}")
        if [(c[1], c[2]) for c in made] != expected:
            raise self.fail(f"{node}: answered {error!r}, stored {made}")

    async def read(self) -> None:
        """Read back through a view: what it returns is what is stored, within the limits."""
        rng = self.rng
        node = rng.choice(self.nodes)
        topics = self.alive_topics()
        if not topics:
            return
        topic = rng.choice(topics)
        pkey = (topic.topic_id, rng.randrange(topic.partition_count))
        offsets = node.view.partition_offsets(*pkey)
        if offsets is None or offsets.high_watermark == 0:
            return
        start = rng.randrange(offsets.high_watermark)
        max_bytes = rng.choice([1, 150, 350, 1 << 20])
        try:
            found = await node.view.find_batches(pkey[0], pkey[1], start, max_bytes)
        except CoordinatorError:
            return
        self.stats["reads"] += 1
        expected: list[BatchLocation | None] = []
        total = 0
        for row in self.db.batch_rows(pkey):
            if row.last_offset < start or row.base_offset >= offsets.high_watermark:
                continue
            if expected and total + row.byte_length > max_bytes:
                break
            expected.append(self.db.location(row))
            total += row.byte_length
            if total >= max_bytes:
                break
        if found != expected:
            raise self.fail(
                f"{node} find_batches({pkey}, {start}, {max_bytes}) = {found}, stored {expected}"
            )

    # Healing --------------------------------------------------------------------------------
    async def heal(self) -> None:
        """Faults off, zombies gone, everyone resumed: the system must make progress again."""
        self.step += 1
        self.ledger.step = self.step
        self.log("heal: faults off, zombies dropped, all resumed")
        for node in list(self.nodes):
            if node.zombie:
                self.nodes.remove(node)
            node.paused = False
            node.faulty.enabled = False
        leader: Node | None = None
        for _ in range(20):
            self.clock.advance(self.config.lease_ms // 3)
            for node in self.nodes:
                await self.tick(node)
            lease = self.db.leases.get(SHARD)
            owner = self.ledger.acquired.get(lease.epoch) if lease is not None else None
            leader = next((n for n in self.nodes if n.is_writer and n.id == owner), None)
            if leader is not None:
                break
        if leader is None:
            raise self.fail("no agent became the writer after healing")
        # Everything not acknowledged is sent again; idempotent batches still in
        # flight go again in new objects until acknowledged.
        for key in list(self.unacked):
            obj = self.objects[key]
            await self.commit_round(leader, [obj], alone=True)
            if obj.acked is None:
                raise self.fail(f"{key} not committed after healing: {obj.error}")
        for producer in self.producers:
            for _ in range(3):
                if producer.in_flight:
                    in_flight = list(producer.in_flight.values())
                    await self.commit_round(leader, [self.make_object(in_flight)], alone=True)
        if self.unacked:
            raise self.fail(f"not committed after healing: {self.unacked}")
        stuck = [p.producer_id for p in self.producers if p.in_flight]
        if stuck:
            raise self.fail(f"idempotent batches still in flight after healing: {stuck}")
        for topic in self.alive_topics():
            for partition in range(topic.partition_count):
                obj = self.make_object([self.new_batch((topic.topic_id, partition), None)])
                await self.commit_round(leader, [obj], alone=True)
                if obj.acked is None or obj.acked[0].error != ErrorCode.none:
                    raise self.fail(f"{topic.name}/{partition} takes no commit after healing")
        self.check(full=True)
        self.check_writer_view(leader)

    # Invariants -----------------------------------------------------------------------------
    def check(self, full: bool = False) -> None:
        """The database against the workload and its acknowledgements.

        Stored rows are only ever appended to a partition's log (or the whole
        partition dropped), so after a step only the new rows are checked, and
        the part checked before is checked to be unchanged; `full` checks all.
        """
        if self.ledger.violations:
            raise self.fail("; ".join(self.ledger.violations))
        self.check_views()
        if self.db.version == self.checked_version and not full:
            return
        self.checked_version = self.db.version
        db = self.db
        if full:
            self.verified.clear()
            self.stored_at.clear()
        for pkey in [k for k in self.verified if k not in db.partitions]:
            del self.verified[pkey]  # dropped with its topic
            for batch_id in [i for i, (k, _) in self.stored_at.items() if k == pkey]:
                del self.stored_at[batch_id]
        for pkey, part in db.batches.items():
            if pkey not in db.partitions and part.rows:
                raise self.fail(f"{len(part.rows)} batches stored for missing partition {pkey}")
        for pkey, log_start in db.partitions.items():
            rows = db.batch_rows(pkey)
            count, last = self.verified.get(pkey, (0, None))
            if count > len(rows) or (count and rows[count - 1] is not last):
                raise self.fail(f"{pkey}: stored batches changed below the end of the log")
            expected_base = rows[count - 1].last_offset + 1 if count else log_start
            for row in rows[count:]:
                if row.base_offset != expected_base or row.last_offset < row.base_offset:
                    raise self.fail(
                        f"{pkey}: batch {row.base_offset}-{row.last_offset} after offset"
                        f" {expected_base - 1}: offsets not dense"
                    )
                expected_base = row.last_offset + 1
                location = db.location(row)
                if location is not None and self.is_control(location):
                    continue  # not a batch of the workload: checked by a subclass
                batch = None
                if location is not None:
                    batch = self.logical(location.object_key, location.byte_offset)
                if (
                    batch is None
                    or batch.key != pkey
                    or batch.count != row.last_offset - row.base_offset + 1
                ):
                    raise self.fail(f"{pkey}: stored {location}, which the workload never sent")
                if batch.id in self.stored_at:
                    raise self.fail(
                        f"{batch} stored twice: at {self.stored_at[batch.id]}"
                        f" and {pkey}@{row.base_offset}"
                    )
                self.stored_at[batch.id] = (pkey, row.base_offset)
            if rows:
                self.verified[pkey] = (len(rows), rows[-1])
        if full:
            for batch in self.batches:
                stored_at = self.stored_at.get(batch.id)
                alive = batch.key in db.partitions
                if batch.acked is not None and alive and stored_at != (batch.key, batch.acked[0]):
                    raise self.fail(f"{batch} acknowledged at {batch.acked}, stored at {stored_at}")

    def is_control(self, location: BatchLocation) -> bool:
        """A stored row that is not an uploaded batch (a transaction marker)."""
        return False

    def check_views(self) -> None:
        """No view is ahead of the database."""
        for node in self.nodes:
            for pkey in self.db.partitions:
                offsets = node.view.partition_offsets(*pkey)
                stored = self.db.high_watermark(pkey)
                if offsets is not None and offsets.high_watermark > stored:
                    raise self.fail(
                        f"{node}'s view has high watermark {offsets.high_watermark} for {pkey},"
                        f" the database {stored}"
                    )

    def check_writer_view(self, node: Node) -> None:
        """Right after the writer's own commit, its view is exactly the database."""
        stored_topics = {t.name: t.topic_id for t in self.db.topics.values()}
        viewed_topics = {t.name: t.topic_id for t in node.view.topics()}
        if stored_topics != viewed_topics:
            raise self.fail(f"{node}'s view has topics {viewed_topics}, stored {stored_topics}")
        for pkey in self.db.partitions:
            offsets = node.view.partition_offsets(*pkey)
            stored = self.db.high_watermark(pkey)
            if offsets is None or offsets.high_watermark != stored:
                raise self.fail(f"{node}'s view has {offsets} for {pkey}, the database {stored}")


def run_seed(seed: int, steps: int = 300, config: SimConfig | None = None) -> Sim:
    """Run one seed (raises `SimFailure`); the same seed and config replay it exactly."""
    sim = Sim(seed, config or SimConfig(steps=steps))
    asyncio.run(sim.run())
    return sim
