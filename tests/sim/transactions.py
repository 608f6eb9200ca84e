"""A seeded, deterministic simulation of Kafka transactions in the coordinator.

It extends the failover simulation (`sim/failover.py`: agents with a real
`CommitWriter` and `CoordinatorView` each over their own `FaultyBackend` on one
`MemoryDatabase`, a `FakeClock`, crashes, pauses, zombies, lost replies, topic
changes, concurrent steps) with what transactions add. One seed drives the
workload, the faults and the interleavings; `run_seed(seed, steps)` replays it.

The workload, besides the failover simulation's plain and idempotent batches:

- transactional producers (`TxnClient`, one per instance of a transactional
  id) behave as Kafka's clients do: InitProducerId (again with their current id
  and epoch after an abortable error, KIP-360), AddPartitionsToTxn,
  transactional batches (attribute 0x10) inside the objects agents commit,
  AddOffsetsToTxn and TxnOffsetCommit, EndTxn commit or abort. A request whose
  outcome is unknown (the writer failed, moved, or lost its reply) is sent
  again as it was; CONCURRENT_TRANSACTIONS is retried; PRODUCER_FENCED ends the
  instance; an unacknowledged batch is uploaded again with its sequence; a
  refused batch makes the transaction abortable. A second instance of an id
  (a zombie's successor) fences the first, which carries on until it is told;
- the coordinator's own aborts: clock jumps past transaction timeouts, then
  `expire_transactions` (the writer's once-a-second timer);
- followers: every agent's writer streams its events through the real
  `WriterServer` to subscribers (a `Pipe` per follower instead of a socket);
  a follower subscribes to the lease holder, resynchronizes its view, and the
  real `WriterClient._read_stream` applies the frames the simulation delivers
  (in bursts of 1 to 64: followers lag), its view checked after every frame,
  since a fetch may come between any two; read_committed fetches go through
  followers' views as through the writer's.

Real bugs the simulation found in src/ are listed in `KNOWN_BUGS`; until they
are fixed, the workload steps around each (`TxnSimConfig.workarounds`, each
workaround as narrow as the bug) and the tests keep seeds that find each one
without its workaround.

Invariants, after every step (`TxnSim.check`, `check_database`), at the
database's acceptance of each write (`TxnTrackedBackend`), and on each answer:

1. a transaction the client saw commit (EndTxn commit answered NONE) ended as
   a commit in the database, and its acknowledged records are visible to a
   read_committed reader (a fetch through a view: batches up to the last stable
   offset, the aborted transactions of that range, Kafka's consumer filter)
   exactly once; a transaction that aborted (asked, timed out or fenced) has
   none of its records visible; no record is visible twice; an EndTxn retried
   after an unknown outcome is answered NONE if it had ended as asked (unless
   the producer was fenced since);
2. offsets are dense, and every commit (objects or markers) appends exactly at
   the end of its partition's log in the database; every row is a batch the
   workload sent or a marker of a transaction end the database accepted; each
   end writes one marker in each of its (existing) partitions, of its outcome
   and epoch, with the transaction's new state in the same write; no marker
   ends a transaction that was not open (none is written twice); a
   transaction's data in a partition is one range closed by its own marker,
   and none follows it;
3. for every view (each agent's, and one loaded from the database): the last
   stable offset is at most the high watermark, never passes the first offset
   of a transaction that is open at the view's high watermark (its marker not
   below it: Kafka's "unstable"), and is never ahead of the database's; the
   loaded view's, and the writer's right after its own commits, is exactly
   the database's (the high watermark when nothing is open); the database's
   producer states hold exactly the first offsets of the open ranges, and
   every open range belongs to an Ongoing transaction holding that partition;
4. `aborted_transactions(start, end)`, through every view that serves a
   read_committed fetch and through the loaded one, is exactly the aborted
   ranges overlapping [start, end) (marker at or after start, first offset
   before end);
5. offsets committed in a transaction reach the group when (and only when) it
   commits, dropped on abort; the database's pending offsets are exactly the
   accepted ones of open transactions (`pending_offsets` through the backend
   too);

plus everything the failover simulation checks. At the end, with faults off,
every live client finishes its transaction, the clock passes every timeout,
every follower catches up, and every view serves every partition exactly:
last stable offset at the high watermark, every committed record once.

`plant(monkeypatch, name)` breaks the real code in one of `PLANTED_BUGS` ways
(in the test process only), to show that the invariants catch each.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import enum
import functools
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest
from kio.schema.errors import ErrorCode
from sim.failover import (
    BATCH_BYTES,
    SHARD,
    Landing,
    Ledger,
    LogicalBatch,
    Node,
    Producer,
    Sim,
    SimConfig,
    SimFailure,
    SimObject,
    TrackedBackend,
)

from driftlog.coordinator.api import (
    TRANSACTIONAL_ATTRIBUTE,
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    CoordinatorError,
)
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, Sequencer
from driftlog.coordinator.core.transactions import (
    AbortedTxn,
    Decision,
    PendingOffset,
    Transaction,
    TxnEnd,
    TxnLimits,
    TxnState,
)
from driftlog.coordinator.engines.backend import Fence, TxnWrite
from driftlog.coordinator.engines.faulty import FaultyBackend
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase, StoredBatch
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.rpc import WriterClient, WriterServer
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.coordinator.runtime.writer import CommitWriter, Listeners
from driftlog.records.control import is_marker_key, parse_marker_key

GROUPS = ("g0", "g1")
MAX_INSTANCES = 6  # per transactional id

TXN_STEP_WEIGHTS = (
    ("advance", 16),
    ("commit", 16),
    ("tick", 4),
    ("pause", 3),
    ("crash", 3),
    ("topic", 2),
    ("read", 2),
    ("concurrent", 14),
    ("txn", 30),
    ("expire", 3),
    ("follow", 4),
    ("deliver", 18),
    ("txnread", 6),
    ("instance", 2),
)


# Real bugs this simulation found in src/, each avoided by the workload while it is not
# fixed (`TxnSimConfig.workarounds`; the tests keep seeds that find each without it):
KNOWN_BUGS: frozenset[str] = frozenset()
# Found and fixed: a new instance's bump recorded the fenced epoch as `last_epoch`, so the
# fenced instance's KIP-360 InitProducerId passed for a retry and got the new epoch
# ("kip360-bump-after-new-instance"); a deposed writer answered requests whose decision
# writes nothing from its stale state ("answer-from-deposed-writer"); an agent that took
# the lease still applied frames queued from the previous writer's stream
# ("stream-after-takeover"). Their workarounds stay in the model, unused.
# Found and fixed since (083e84b), now run unguarded and kept as regression tests in
# test_transactions_sim.py: a stale txn_closes (a frame older than a follower's resync)
# ended the producer's newer open transaction in its view, letting the last stable offset
# pass it; InitProducerId of an id that vanished between the writer's first look and its
# decision stored producer id -1.


@dataclass(frozen=True, slots=True)
class TxnSimConfig(SimConfig):
    """The failover simulation's settings, with fewer steps and idempotent producers, and
    what transactions add."""

    steps: int = 150
    producers: int = 2  # idempotent, not transactional
    weights: tuple[tuple[str, int], ...] = TXN_STEP_WEIGHTS
    transactional_ids: int = 3
    timeouts_ms: tuple[int, ...] = (2_000, 6_000, 20_000)
    id_expiration_ms: int = 12_000
    workarounds: frozenset[str] = KNOWN_BUGS  # of KNOWN_BUGS, those the workload avoids


# The transactional clients -------------------------------------------------------------


class Phase(enum.Enum):
    INIT = "init"  # InitProducerId next
    READY = "ready"  # between transactions
    OPEN = "open"  # in a transaction
    FENCED = "fenced"  # fatal: another instance, or the coordinator, fenced it


@dataclass(frozen=True, slots=True)
class Request:
    """One transaction request, kept as sent so that a retry sends the same."""

    kind: str  # init, add, offsets, end
    expected: tuple[int, int] = (-1, -1)
    partitions: tuple[PartitionKey, ...] = ()
    groups: tuple[str, ...] = ()
    offsets: tuple[PendingOffset, ...] = ()
    commit: bool = False

    def __str__(self) -> str:
        if self.kind == "init":
            return f"InitProducerId{self.expected if self.expected != (-1, -1) else ''}"
        if self.kind == "add":
            parts = [f"{t.hex[:4]}/{p}" for t, p in self.partitions]
            return f"Add({','.join(parts + list(self.groups))})"
        if self.kind == "offsets":
            return f"TxnOffsetCommit({[(o.group_id, o.topic, o.partition) for o in self.offsets]})"
        return f"EndTxn({'commit' if self.commit else 'abort'})"


@dataclass(frozen=True, slots=True)
class TxnEndRecord:
    """How the database ended a transaction (seen when it accepted the write)."""

    commit: bool
    epoch: int
    step: int
    marker_key: str


@dataclass(slots=True, eq=False, repr=False)
class Txn:
    """One transaction as its client ran it."""

    id: int
    client: TxnClient
    producer_id: int
    epoch: int
    partitions: set[PartitionKey] = field(default_factory=set)  # added (answered NONE)
    groups: set[str] = field(default_factory=set)
    batches: list[LogicalBatch] = field(default_factory=list)
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)  # answered NONE
    sent: bool = False  # an Add was sent: the transaction may be open in the database
    ending: bool = False  # EndTxn chosen: the client produces nothing more in it
    abortable: bool = False
    offset_count: int = 0
    client_outcome: str = ""  # commit / abort (EndTxn answered NONE), fenced, lost, empty
    end: TxnEndRecord | None = None  # from the database

    def __str__(self) -> str:
        return f"txn{self.id}({self.client}, producer {self.producer_id} epoch {self.epoch})"

    __repr__ = __str__


@dataclass(slots=True, eq=False, repr=False)
class TxnClient(Producer):
    """An instance of a transactional producer (what KafkaProducer with a
    transactional.id keeps): its id and epoch come from InitProducerId."""

    transactional_id: str = ""
    instance: int = 0
    timeout_ms: int = 10_000
    phase: Phase = Phase.INIT
    txn: Txn | None = None
    need_bump: bool = False  # KIP-360: the next InitProducerId carries the current id and epoch
    retry: Request | None = None  # a request whose outcome is unknown: sent again next
    busy: bool = False

    def __str__(self) -> str:
        return f"{self.transactional_id}#{self.instance}"

    __repr__ = __str__


# The database's truth, from its rows -----------------------------------------------------


@dataclass(slots=True, eq=False)
class Segment:
    """A producer's transactional data in one partition: from its first offset to its
    marker (Kafka's transaction range; the aborted-transaction index holds aborted ones)."""

    producer_id: int
    first_offset: int
    txn: Txn
    batches: list[LogicalBatch] = field(default_factory=list)
    marker_offset: int = -1
    commit: bool | None = None  # None while open


@dataclass(slots=True)
class PartitionTruth:
    """A partition's log as the database has it, scanned once row by row."""

    rows: int = 0
    last: StoredBatch | None = None
    open: dict[int, Segment] = field(default_factory=dict)  # by producer id
    closed: list[Segment] = field(default_factory=list)  # by marker offset
    closed_markers: list[int] = field(default_factory=list)
    segment_of: dict[int, Segment] = field(default_factory=dict)  # batch id -> segment
    txns: set[int] = field(default_factory=set)  # transactions with data here

    def last_stable_offset(self, high_watermark: int) -> int:
        """Kafka's: the first offset of a transaction open at `high_watermark` (its marker
        at or past it), or the high watermark."""
        stable = high_watermark
        for segment in self.open.values():
            stable = min(stable, segment.first_offset)
        at = bisect.bisect_left(self.closed_markers, high_watermark)
        for segment in self.closed[at:]:
            stable = min(stable, segment.first_offset)
        return stable

    def aborted(self, start_offset: int, end_offset: int) -> list[AbortedTxn]:
        """The aborted ranges overlapping [start_offset, end_offset), by marker offset."""
        at = bisect.bisect_left(self.closed_markers, start_offset)
        return [
            AbortedTxn(s.producer_id, s.first_offset, s.marker_offset)
            for s in self.closed[at:]
            if s.commit is False and s.first_offset < end_offset
        ]


# The database side ---------------------------------------------------------------------


class TxnTrackedBackend(TrackedBackend):
    """Also checks where commits land and tells the simulation every change of
    transaction state the database accepted, with the state it replaced."""

    def __init__(self, database: MemoryDatabase, ledger: Ledger, node: int, sim: TxnSim) -> None:
        super().__init__(database, ledger, node)
        self.sim = sim

    def _persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        db = self.database
        ends: dict[PartitionKey, int] = {}
        for obj in objects:
            for row in obj.rows:
                key = (row.topic_id, row.partition)
                if key not in ends:
                    ends[key] = db.high_watermark(key)
        super()._persist_objects(fence, objects)
        for obj in objects:
            for row in obj.rows:
                key = (row.topic_id, row.partition)
                if row.location.base_offset != ends[key]:
                    self.ledger.violations.append(
                        f"{obj.object_key} stored at {row.location.base_offset} in"
                        f" {key[0].hex[:4]}/{key[1]}, where the log ended at {ends[key]}"
                    )
                ends[key] = row.location.last_offset + 1

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        db = self.database
        before = dict(db.transactions)
        partitions = set(db.partitions)
        await super().persist_transactions(fence, write)
        self._accepted("transaction write", fence.epoch)
        self.sim.on_txn_write(self.node, write, before, partitions)


# Followers -------------------------------------------------------------------------------


class Pipe:
    """A subscriber's connection as `WriterServer` sees it: what it writes waits here
    until the simulation delivers it (or the connection goes)."""

    def __init__(self) -> None:
        self.frames: collections.deque[bytes] = collections.deque()
        self.closed = False

    @property
    def transport(self) -> Pipe:
        return self

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True


@dataclass(slots=True, eq=False)
class Follower:
    leader: Node
    pipe: Pipe
    reader: asyncio.StreamReader
    task: asyncio.Task[None] | None = None
    failed: bool = False
    resyncing: bool = False


# The simulation --------------------------------------------------------------------------


class TxnSim(Sim):
    def __init__(self, seed: int, config: TxnSimConfig) -> None:
        super().__init__(seed, config)
        self.txn_config = config
        self.clients: list[TxnClient] = []
        self.txns: list[Txn] = []
        self.txn_of: dict[int, Txn] = {}  # batch id -> its transaction
        # (transactional id, producer id, epoch) -> the last transaction begun with them
        self.txn_index: dict[tuple[str, int, int], Txn] = {}
        self.epochs_given: dict[tuple[str, int, int], TxnClient] = {}
        self.marker_keys: set[str] = set()  # marker objects the database accepted
        # Offsets of open transactions the database accepted, and what the groups must hold.
        self.pending: dict[tuple[str, str, int, int], int] = {}
        self.group_offsets: dict[tuple[str, str, int], int] = {}
        self.truth: dict[PartitionKey, PartitionTruth] = {}
        self.truth_version = -1
        self.database_version = -1
        self.txn_writes: collections.Counter[int] = collections.Counter()  # accepted, by node
        self.servers: dict[int, WriterServer] = {}
        self.followers: dict[int, Follower] = {}

    def fail(self, what: str) -> SimFailure:
        recent = "\n  ".join(self.trace)
        bug = f" with planted bug {planted!r}" if planted else ""
        return SimFailure(
            f"seed={self.seed} step={self.step}{bug}: {what}\n"
            f"replay: sim.transactions.run_seed({self.seed}, config={self.config})\n"
            f"recent steps:\n  {recent}"
        )

    # Agents ---------------------------------------------------------------------------------
    def tracked_backend(self, node_id: int) -> TrackedBackend:
        return TxnTrackedBackend(self.db, self.ledger, node_id, self)

    def make_writer(
        self, node_id: int, holder: str, backend: FaultyBackend, view: CoordinatorView
    ) -> CommitWriter:
        # As AgentCoordinator wires it: the view, then the RPC server's stream.
        listeners = Listeners(view)
        writer = CommitWriter(
            backend,
            self.clock,
            listeners,
            holder=holder,
            address=f"node{node_id}",
            shard=SHARD,
            lease_ms=self.config.lease_ms,
            txn_limits=TxnLimits(id_expiration_ms=self.txn_config.id_expiration_ms),
        )
        server = WriterServer(writer, "127.0.0.1", secret=b"sim")
        listeners.listeners.append(server)
        self.servers[node_id] = server
        resync = view.resync

        async def resync_tracked() -> None:
            follower = self.followers.get(node_id)
            if follower is not None:
                follower.resyncing = True
            try:
                await resync()
            finally:
                if follower is not None:
                    follower.resyncing = False

        setattr(view, "resync", resync_tracked)  # noqa: B010 (mypy refuses assigning to a method)
        return writer

    async def setup(self) -> None:
        await super().setup()
        for i in range(self.txn_config.transactional_ids):
            self.new_instance(f"txn{i}")

    def new_instance(self, transactional_id: str) -> TxnClient | None:
        count = sum(1 for c in self.clients if c.transactional_id == transactional_id)
        if count >= MAX_INSTANCES:
            return None
        client = TxnClient(
            -1,
            -1,
            transactional_id=transactional_id,
            instance=count,
            timeout_ms=self.rng.choice(self.txn_config.timeouts_ms),
        )
        self.clients.append(client)
        return client

    def pick_node(self) -> Node:
        writers = [n for n in self.nodes if n.is_writer]
        return self.rng.choice(writers if writers and self.rng.random() < 0.75 else self.nodes)

    # Steps ----------------------------------------------------------------------------------
    async def one_step(self) -> None:
        await super().one_step()
        await self.check_database()

    async def do_step(self, choice: str) -> None:
        rng = self.rng
        if choice == "txn":
            for _ in range(rng.randint(1, 3)):
                client = self.pick_client()
                request = None if client is None else client.retry or self.next_request(client)
                if client is None or request is None:
                    continue
                node = self.pick_node()
                if rng.random() >= (0.7 if request.kind in ("init", "end") else 0.3):
                    await self.client_step(client, node, request)
                    continue
                # Other producers' commits are in flight on the writer meanwhile, as under
                # load: a request that ends a transaction must wait for them.
                actions = [self.busy(node), self.client_step(client, node, request)]
                if rng.random() < 0.3:
                    actions.reverse()
                await asyncio.gather(*actions)
        elif choice == "expire":
            await self.expire(self.pick_node())
        elif choice == "follow":
            await self.follow(rng.choice(self.nodes))
        elif choice == "deliver":
            node = rng.choice(self.nodes)
            if node.id not in self.followers:
                await self.follow(node)  # WriterClient reconnects by itself
            await self.deliver(node, rng.choice([1, 2, 4, 16, 64]))
        elif choice == "txnread":
            await self.txn_read()
        elif choice == "instance":
            transactional_id = f"txn{rng.randrange(self.txn_config.transactional_ids)}"
            client = self.new_instance(transactional_id)
            if client is not None:
                self.log(f"new instance {client} of {transactional_id}")
        else:
            await super().do_step(choice)

    async def advance(self) -> None:
        await super().advance()
        # The writers' timers: transactions past their timeout are aborted.
        for node in list(self.nodes):
            if node.is_writer and not node.paused and self.rng.random() < 0.7:
                await self.expire(node)

    async def concurrent(self) -> None:
        """Ticks, rounds, topic changes, transaction requests, timeouts and stream frames
        of several agents at once, interleaved by the seed."""
        rng = self.rng
        actions: list[Awaitable[None]] = []
        names: list[str] = []
        for _ in range(rng.randint(2, 4)):
            node = self.pick_node()
            kind = rng.choices(
                ["tick", "commit", "topic", "txn", "expire", "deliver"], weights=[3, 6, 1, 6, 1, 2]
            )[0]
            if kind == "tick" and not node.paused:
                actions.append(self.tick(node))
            elif kind == "commit":
                actions.append(self.commit_round(node, self.pick_round()))
            elif kind == "topic":
                actions.append(self.one_topic_change(node))
            elif kind == "txn" and (client := self.pick_client()) is not None:
                actions.append(self.client_step(client, node))
                kind = f"txn {client}"
            elif kind == "expire":
                actions.append(self.expire(node))
            elif kind == "deliver":
                actions.append(self.deliver(node, rng.randint(1, 3)))
            else:
                continue
            names.append(f"{kind} {node}")
        self.log(f"concurrently: {', '.join(names)}")
        await asyncio.gather(*actions)

    async def busy(self, node: Node) -> None:
        """One or two rounds of other producers' commits on the node, the first started at
        once (so that it is in flight when what runs beside it reaches the writer)."""
        second = None
        if self.rng.random() < 0.3:
            second = asyncio.ensure_future(self.commit_round(node, self.pick_round()))
        await self.commit_round(node, self.pick_round())
        if second is not None:
            await second

    async def crash(self) -> None:
        await super().crash()
        self.prune_followers()

    async def tick(self, node: Node) -> None:
        await super().tick(node)
        if node.is_writer and "stream-after-takeover" in self.txn_config.workarounds:
            self.unfollow(node.id, "it took the lease (workaround)")

    async def expire(self, node: Node) -> None:
        try:
            aborted = await node.writer.expire_transactions()
        except CoordinatorError as e:
            self.log(f"{node} expire_transactions: {e!r}")
            return
        if aborted:
            self.stats["transactions timed out"] += aborted
            self.log(f"{node} aborted {aborted} transactions past their timeout")

    # The workload: transactional batches in the objects agents commit -------------------
    def new_object(self) -> SimObject:
        return self.make_object(self.pick_batches() + self.txn_batches())

    def txn_batches(self) -> list[LogicalBatch]:
        rng = self.rng
        chosen: list[LogicalBatch] = []
        used: set[tuple[int, PartitionKey]] = set()
        for client in self.clients:
            txn = client.txn
            if (
                txn is None
                or client.phase is not Phase.OPEN
                or client.retry is not None
                or txn.ending
                or txn.abortable
                or not txn.partitions
                or rng.random() < 0.5
            ):
                continue
            pkey = rng.choice(sorted(txn.partitions, key=lambda k: (k[0].int, k[1])))
            if (client.producer_id, pkey) in used:
                continue
            used.add((client.producer_id, pkey))
            chosen.append(self.txn_batch(client, txn, pkey))
        return chosen

    def txn_batch(self, client: TxnClient, txn: Txn, pkey: PartitionKey) -> LogicalBatch:
        in_flight = client.in_flight.get(pkey)
        if in_flight is not None:
            self.stats["transactional re-uploads"] += 1
            return in_flight  # a retry: the same batch, its sequence, in a new object
        acked = [b for b in client.acked.get(pkey, []) if self.txn_of[b.id] is txn]
        if acked and self.rng.random() < 0.1:
            self.stats["transactional late duplicates"] += 1
            return self.rng.choice(acked)
        sequence = client.next_sequence.get(pkey, 0)
        batch = self.new_batch(pkey, (client.producer_id, client.epoch, sequence))
        batch.attributes = TRANSACTIONAL_ATTRIBUTE
        batch.owner = client
        client.next_sequence[pkey] = sequence + batch.count
        client.in_flight[pkey] = batch
        txn.batches.append(batch)
        self.txn_of[batch.id] = txn
        return batch

    def pick_client(self) -> TxnClient | None:
        rng = self.rng
        live = [c for c in self.clients if c.phase is not Phase.FENCED and not c.busy]
        latest: dict[str, TxnClient] = {c.transactional_id: c for c in self.clients}
        restart = [c for c in latest.values() if c.phase is Phase.FENCED]
        if restart and rng.random() < 0.3:
            # The application starts a new instance of a fenced producer.
            client = self.new_instance(rng.choice(restart).transactional_id)
            if client is not None:
                self.log(f"new instance {client} after its predecessor was fenced")
                return client
        return rng.choice(live) if live else None

    # Transaction requests -----------------------------------------------------------------
    def begin(self, client: TxnClient) -> Txn:
        txn = Txn(len(self.txns), client, client.producer_id, client.epoch)
        self.txns.append(txn)
        self.txn_index[(client.transactional_id, client.producer_id, client.epoch)] = txn
        client.txn = txn
        client.phase = Phase.OPEN
        return txn

    def next_request(self, client: TxnClient) -> Request | None:
        rng = self.rng
        if client.phase is Phase.INIT:
            if client.need_bump and client.producer_id >= 0:
                return Request("init", expected=(client.producer_id, client.epoch))
            return Request("init")
        txn = client.txn if client.phase is Phase.OPEN else self.begin(client)
        assert txn is not None
        if txn.abortable or (txn.sent and rng.random() < 0.05):
            return self.end_request(client, txn, False)
        kind = rng.random()
        if kind < 0.3:
            if len(txn.partitions) >= 4:
                return None
            choices = [
                (t.topic_id, p)
                for t in self.alive_topics()
                for p in range(t.partition_count)
                if (t.topic_id, p) not in txn.partitions
            ]
            if not choices:
                return None
            partitions = rng.sample(choices, min(len(choices), rng.randint(1, 2)))
            return Request("add", partitions=tuple(partitions))
        if kind < 0.55 or not (txn.partitions or txn.groups):
            group = rng.choice(GROUPS)
            if group not in txn.groups:
                return Request("add", groups=(group,))
            topics = self.alive_topics()
            if not topics:
                return None
            topic = rng.choice(topics)
            txn.offset_count += 1
            offset = PendingOffset(
                client.producer_id,
                group,
                topic.name,
                rng.randrange(topic.partition_count),
                txn.id * 1000 + txn.offset_count,
                -1,
                None,
            )
            return Request("offsets", offsets=(offset,))
        if kind < 0.72:
            if client.in_flight and rng.random() < 0.7:
                return None  # its batches first (they are uploaded again until answered)
            commit = not client.in_flight and rng.random() < 0.85
            return self.end_request(client, txn, commit)
        return None

    def end_request(self, client: TxnClient, txn: Txn, commit: bool) -> Request | None:
        if not txn.sent:
            # Nothing reached the coordinator: the client ends it alone.
            txn.client_outcome = "empty"
            client.txn = None
            client.phase = Phase.READY
            return None
        txn.ending = True
        return Request("end", commit=commit)

    async def client_step(
        self, client: TxnClient, node: Node, request: Request | None = None
    ) -> None:
        if client.busy or client.phase is Phase.FENCED:
            return
        request = request or client.retry or self.next_request(client)
        if request is None:
            return
        client.busy = True
        try:
            await self.send(client, node, request)
        finally:
            client.busy = False

    async def send(self, client: TxnClient, node: Node, request: Request) -> None:
        writer = node.writer
        txn = client.txn
        txn_id = client.transactional_id
        pid, epoch = client.producer_id, client.epoch
        if request.kind == "add" and txn is not None:
            txn.sent = True
        workarounds = self.txn_config.workarounds
        if (
            request.kind == "init"
            and request.expected != (-1, -1)
            and "kip360-bump-after-new-instance" in workarounds
            and self.newer_instance(client)
        ):
            self.fenced(client, "a newer instance exists (workaround)")
            return
        writes = self.txn_writes[node.id]
        try:
            if request.kind == "init":
                error, pid, epoch = await writer.init_producer_id(
                    txn_id, client.timeout_ms, *request.expected
                )
            elif request.kind == "add":
                error = await writer.add_to_transaction(
                    txn_id, pid, epoch, partitions=request.partitions, groups=request.groups
                )
            elif request.kind == "offsets":
                error = await writer.txn_offset_commit(txn_id, pid, epoch, request.offsets)
            else:
                error = await writer.end_transaction(txn_id, pid, epoch, request.commit)
        except CoordinatorError as e:
            # Unknown outcome: the client sends the same request again.
            client.retry = request
            self.stats["transaction requests retried"] += 1
            self.log(f"{client} {request} on {node}: {type(e).__name__}")
            return
        except Exception as e:
            raise self.fail(f"{client} {request} on {node} raised {e!r}") from e
        if (
            "answer-from-deposed-writer" in workarounds
            and self.deposed(node)
            and self.txn_writes[node.id] == writes
        ):
            client.retry = request
            self.stats["answers of deposed writers dropped"] += 1
            self.log(f"{client} {request} on deposed {node}: {error.name} (workaround: dropped)")
            return
        client.retry = None
        self.log(f"{client} {request} on {node}: {error.name} (producer {pid} epoch {epoch})")
        if error == ErrorCode.concurrent_transactions:
            client.retry = request
            self.stats["CONCURRENT_TRANSACTIONS"] += 1
        elif error == ErrorCode.producer_fenced:
            self.check_fenced(client, request)
            self.fenced(client, f"{request}: PRODUCER_FENCED")
        elif error == ErrorCode.invalid_producer_id_mapping and request.kind != "init":
            self.lost(client, request)
        elif request.kind == "init":
            self.initialized(client, error, pid, epoch)
        elif error != ErrorCode.none:
            raise self.fail(f"{client} {request} on {node}: answered {error!r}")
        elif request.kind == "add":
            assert txn is not None
            txn.partitions.update(request.partitions)
            txn.groups.update(request.groups)
        elif request.kind == "offsets":
            assert txn is not None
            for o in request.offsets:
                txn.offsets[(o.group_id, o.topic, o.partition)] = o.offset
        else:
            assert txn is not None
            self.ended(client, txn, request.commit)

    def newer_instance(self, client: TxnClient) -> bool:
        """Is there a later instance of the client's transactional id (which fences it)?"""
        return any(
            c.transactional_id == client.transactional_id and c.instance > client.instance
            for c in self.clients
        )

    def deposed(self, node: Node) -> bool:
        """Does the node's writer believe it leads, while the lease is another's?"""
        lease = self.db.leases.get(SHARD)
        held = node.writer.lease
        return held is not None and (lease is None or lease.epoch != held.epoch)

    def initialized(self, client: TxnClient, error: ErrorCode, pid: int, epoch: int) -> None:
        if error != ErrorCode.none:
            raise self.fail(f"{client}: InitProducerId answered {error!r}")
        other = self.epochs_given.setdefault((client.transactional_id, pid, epoch), client)
        if other is not client:
            raise self.fail(f"{client} and {other} both got producer {pid} epoch {epoch}")
        if (pid, epoch) != (client.producer_id, client.epoch):
            # A new epoch starts every sequence at 0; batches of the old one are dropped.
            client.next_sequence.clear()
            client.in_flight.clear()
            client.acked.clear()
        client.producer_id, client.epoch = pid, epoch
        client.phase = Phase.READY
        client.need_bump = False

    def ended(self, client: TxnClient, txn: Txn, commit: bool) -> None:
        """EndTxn answered NONE: the database ended it as asked."""
        outcome = "commit" if commit else "abort"
        kind = "committed" if commit else "aborted"
        if txn.end is None or txn.end.commit != commit:
            raise self.fail(f"{client}: EndTxn({outcome}) of {txn} answered NONE, ended {txn.end}")
        txn.client_outcome = outcome
        self.stats[f"transactions {kind} by their client"] += 1
        client.txn = None
        if client.in_flight or txn.abortable:
            client.need_bump = True  # unresolved sequences: a new epoch (KIP-360)
        client.in_flight.clear()
        client.phase = Phase.INIT if client.need_bump else Phase.READY

    def check_fenced(self, client: TxnClient, request: Request) -> None:
        """PRODUCER_FENCED only if the database has moved past the client's epoch; an EndTxn
        retried after its transaction ended as asked is NONE until then."""
        if request.kind == "init":
            return
        current = self.db.transactions.get(client.transactional_id)
        if (
            current is not None
            and current.producer_id == client.producer_id
            and current.epoch == client.epoch
        ):
            raise self.fail(f"{client} {request}: PRODUCER_FENCED, but its epoch is current")

    def fenced(self, client: TxnClient, why: str) -> None:
        txn = client.txn
        if txn is not None and not txn.client_outcome:
            txn.client_outcome = "fenced"
        client.txn = None
        client.in_flight.clear()
        client.retry = None
        client.phase = Phase.FENCED
        self.stats["instances fenced"] += 1
        self.log(f"{client} fenced: {why}")

    def lost(self, client: TxnClient, request: Request) -> None:
        """INVALID_PRODUCER_ID_MAPPING: the id expired (or moved on); start again."""
        current = self.db.transactions.get(client.transactional_id)
        if current is not None and current.producer_id == client.producer_id:
            raise self.fail(f"{client} {request}: INVALID_PRODUCER_ID_MAPPING, but it is {current}")
        txn = client.txn
        if txn is not None and not txn.client_outcome:
            txn.client_outcome = "lost"
        client.txn = None
        client.in_flight.clear()
        client.producer_id = client.epoch = -1
        client.need_bump = False
        client.phase = Phase.INIT
        self.stats["producer id mappings lost"] += 1

    # Answers to transactional batches -----------------------------------------------------
    def acknowledged(self, node: Node, obj: SimObject, outcomes: list[CommitOutcome]) -> None:
        super().acknowledged(node, obj, outcomes)
        for batch, outcome in zip(obj.batches, outcomes, strict=True):
            if not batch.attributes & TRANSACTIONAL_ATTRIBUTE or outcome.error == ErrorCode.none:
                continue
            txn = self.txn_of[batch.id]
            client = txn.client
            if client.txn is not txn:
                continue  # an old upload, sent again by its agent
            if outcome.error == ErrorCode.invalid_producer_epoch:
                self.fenced(client, f"{batch} refused: INVALID_PRODUCER_EPOCH")
            else:
                # The transaction can only abort now, then bump the epoch (KIP-360).
                txn.abortable = True
                client.need_bump = True

    def current_in_database(self, batch: LogicalBatch) -> bool:
        """Is the batch's transaction the open one of its id in the database, with its
        partition and epoch (what the sequencer verifies)?"""
        txn = self.txn_of[batch.id]
        assert batch.producer is not None
        pid, epoch, _ = batch.producer
        record = self.db.transactions.get(txn.client.transactional_id)
        return (
            txn.end is None
            and record is not None
            and record.ongoing
            and record.producer_id == pid
            and record.epoch == epoch
            and batch.key in record.partitions
        )

    def check_refusal(
        self, where: str, batch: LogicalBatch, error: ErrorCode, exists: bool
    ) -> None:
        if not batch.attributes & TRANSACTIONAL_ATTRIBUTE or not exists:
            super().check_refusal(where, batch, error, exists)
        elif error not in (
            ErrorCode.invalid_txn_state,
            ErrorCode.invalid_producer_epoch,
            ErrorCode.out_of_order_sequence_number,
        ):
            self.violation(f"{where}: refused with {error!r}")
        elif self.current_in_database(batch) and batch.stored is None:
            self.violation(f"{where}: refused with {error!r} inside its open transaction")

    def on_landing(self, landing: Landing) -> None:
        super().on_landing(landing)
        obj = self.objects.get(landing.obj.object_key)
        if obj is None:
            return
        stored = {row.location.byte_offset for row in landing.obj.rows}
        for i, batch in enumerate(obj.batches):
            if (
                batch.attributes & TRANSACTIONAL_ATTRIBUTE
                and i * BATCH_BYTES in stored
                and not self.current_in_database(batch)
            ):
                self.violation(f"{landing.obj.object_key} {batch}: stored outside its transaction")

    # The database accepted a change of transactions ---------------------------------------
    def on_txn_write(
        self,
        node_id: int,
        write: TxnWrite,
        before: dict[str, Transaction],
        partitions: set[PartitionKey],
    ) -> None:
        self.txn_writes[node_id] += 1
        where = f"node{node_id} transaction write"
        markers: dict[int, SequencedObject] = {}
        for marker in write.markers:
            parsed = parse_marker_key(marker.object_key)
            if parsed.producer_id in markers:
                self.violation(f"{where}: two markers for producer {parsed.producer_id}")
            markers[parsed.producer_id] = marker
            self.marker_keys.add(marker.object_key)
        open_groups = {
            t.producer_id: t.groups for t in before.values() if t.state is TxnState.ONGOING
        }
        for o in write.pending_offsets:
            if o.group_id not in open_groups.get(o.producer_id, frozenset()):
                self.violation(f"{where}: offset {o} outside an open transaction with its group")
            self.pending[(o.group_id, o.topic, o.partition, o.producer_id)] = o.offset
        settled = set(write.settled)
        for record in write.transactions:
            previous = before.get(record.transactional_id)
            if previous is None or not previous.ongoing or record.ongoing:
                continue
            self.transaction_ended(where, previous, record, markers, partitions, settled)
        for pid, marker in markers.items():
            self.violation(
                f"{where}: marker {marker.object_key} for producer {pid}, which had no"
                " open transaction (a second end?)"
            )
        for txn_id in write.expired:
            previous = before.get(txn_id)
            if previous is None or previous.ongoing:
                self.violation(f"{where}: forgot transactional id {txn_id}, which was {previous}")

    def transaction_ended(
        self,
        where: str,
        previous: Transaction,
        record: Transaction,
        markers: dict[int, SequencedObject],
        partitions: set[PartitionKey],
        settled: set[tuple[int, bool]],
    ) -> None:
        pid = previous.producer_id
        commit = record.state is TxnState.COMPLETE_COMMIT
        where = f"{where}: end of {previous.transactional_id} (producer {pid})"
        if record.state not in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT):
            self.violation(f"{where}: the open transaction became {record.state}")
        if record.producer_id != pid or record.epoch not in (previous.epoch, previous.epoch + 1):
            self.violation(f"{where}: {previous} became {record}")
        marker = markers.pop(pid, None)
        marker_key = ""
        if marker is None:
            self.violation(f"{where}: no marker object")
        else:
            marker_key = marker.object_key
            parsed = parse_marker_key(marker_key)
            if parsed.commit != commit or parsed.producer_epoch != record.epoch:
                self.violation(
                    f"{where}: {record.state.value} at epoch {record.epoch}, marker {marker_key}"
                )
            written = [(r.topic_id, r.partition) for r in marker.rows]
            expected = {p for p in previous.partitions if p in partitions}
            if sorted(written, key=_order) != sorted(expected, key=_order):
                self.violation(
                    f"{where}: markers in {[_name(p) for p in written]}, its partitions are"
                    f" {[_name(p) for p in expected]}"
                )
        if (pid, commit) not in settled:
            self.violation(f"{where}: its group offsets not settled")
        for key in [k for k in self.pending if k[3] == pid]:
            offset = self.pending.pop(key)
            if commit:
                self.group_offsets[key[:3]] = offset
        txn = self.txn_index.get((previous.transactional_id, pid, previous.epoch))
        if txn is None:
            self.violation(f"{where}: no client began it")
        elif txn.end is not None:
            self.violation(f"{where}: {txn} ended twice")
        else:
            txn.end = TxnEndRecord(commit, record.epoch, self.step, marker_key)
            kind = "committed" if commit else "aborted"
            self.stats[f"transactions {kind}"] += 1

    # Followers --------------------------------------------------------------------------
    async def follow(self, node: Node) -> None:
        """What `WriterClient._follow` does: the lease holder's stream, after a resync."""
        if node.paused:
            return
        try:
            lease = await node.faulty.read_lease(SHARD)
        except CoordinatorError:
            return
        leader = None
        if lease is not None and lease.holder != node.holder:
            leader = next((n for n in self.nodes if n.writer.address == lease.address), None)
        current = self.followers.get(node.id)
        if current is not None and (current.failed or current.leader is not leader):
            self.unfollow(node.id, "the lease moved" if not current.failed else "its stream failed")
            current = None
        if current is not None or leader is None or leader is node:
            return
        pipe = Pipe()
        # Subscribed first, then the database read: what commits between is in both.
        self.servers[leader.id]._subscribers.add(cast(asyncio.StreamWriter, pipe))
        follower = Follower(leader, pipe, asyncio.StreamReader())
        self.followers[node.id] = follower
        try:
            await node.view.resync()
        except CoordinatorError as e:
            self.unfollow(node.id, f"resync failed: {e!r}")
            return
        if self.followers.get(node.id) is not follower:
            return
        client = WriterClient(
            node.faulty,
            node.view,
            is_local_writer=lambda: node.writer.is_writer,
            holder=node.holder,
            secret=b"sim",
        )
        task = asyncio.create_task(client._read_stream(follower.reader, ""))
        task.add_done_callback(functools.partial(self.stream_ended, node.id, follower))
        follower.task = task
        self.stats["subscriptions"] += 1
        self.log(f"{node} follows {leader}")

    def stream_ended(self, node_id: int, follower: Follower, task: asyncio.Task[None]) -> None:
        follower.failed = True
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log(f"node{node_id}'s stream from {follower.leader} failed: {error!r}")

    def unfollow(self, node_id: int, why: str) -> None:
        follower = self.followers.pop(node_id, None)
        if follower is None:
            return
        follower.pipe.close()
        self.servers[follower.leader.id]._subscribers.discard(
            cast(asyncio.StreamWriter, follower.pipe)
        )
        if follower.task is not None:
            follower.task.cancel()
        self.log(f"node{node_id} stops following {follower.leader}: {why}")

    def prune_followers(self) -> None:
        alive = {n.id for n in self.nodes}
        for node_id, follower in list(self.followers.items()):
            if node_id not in alive:
                self.unfollow(node_id, "its agent is gone")
            elif follower.leader.id not in alive:
                self.unfollow(node_id, "the writer's agent is gone")

    async def deliver(self, node: Node, count: int) -> None:
        """The next frames of the node's stream reach it, one at a time."""
        follower = self.followers.get(node.id)
        if follower is None or follower.task is None or follower.failed or node.paused:
            return
        delivered: list[str] = []
        for _ in range(count):
            if not follower.pipe.frames or follower.failed:
                break
            frame = follower.pipe.frames.popleft()
            kind = _frame_kind(frame)
            delivered.append(kind)
            follower.reader.feed_data(frame)
            self.stats["frames delivered"] += 1
            self.stats[f"frames delivered: {kind}"] += 1
            await asyncio.sleep(0)  # the reader applies it,
            for _ in range(100):  # and a resync ("reloaded") before the next one arrives
                if not follower.resyncing:
                    break
                await asyncio.sleep(0)
            # A fetch may come before the next frame: the view must be consistent now.
            self.update_truth()
            self.check_stable_offsets(node, exact=False)
        if delivered:
            self.log(f"{node} applies {' '.join(delivered)} from {follower.leader}")

    # Reads ------------------------------------------------------------------------------
    def describe(self, location: BatchLocation) -> tuple[int, bool, bool, bool]:
        """(producer id, transactional, control, commit marker) of a stored batch."""
        if is_marker_key(location.object_key):
            marker = parse_marker_key(location.object_key)
            return marker.producer_id, True, True, marker.commit
        batch = self.logical(location.object_key, location.byte_offset)
        if batch is None:
            raise self.fail(f"read {location}, which the workload never sent")
        pid = batch.producer[0] if batch.producer is not None else -1
        return pid, bool(batch.attributes & TRANSACTIONAL_ATTRIBUTE), False, False

    async def fetch_committed(
        self, node: Node, pkey: PartitionKey, start: int, max_bytes: int
    ) -> tuple[list[LogicalBatch], int] | None:
        """One read_committed fetch through the node's view, as `server/fetch.py` plans it,
        filtered as Kafka's consumer does: the visible batches and the next fetch offset.
        None if the view has nothing to give or the database failed."""
        view = node.view
        offsets = view.partition_offsets(*pkey)
        stable = view.last_stable_offset(*pkey)
        if offsets is None or stable is None or not offsets.log_start_offset <= start < stable:
            return None
        try:
            locations = await view.find_batches(pkey[0], pkey[1], start, max_bytes, stable)
            if not locations:
                return None
            end = locations[-1].last_offset + 1
            aborted = await view.aborted_transactions(pkey[0], pkey[1], start, end)
        except CoordinatorError:
            return None
        self.stats["read_committed fetches"] += 1
        where = f"{node} read_committed {_name(pkey)} from {start} (stable {stable})"
        if locations[-1].last_offset >= stable or locations[0].last_offset < start:
            raise self.fail(f"{where}: returned {locations}")
        self.update_truth()
        truth = self.truth.get(pkey)
        if truth is None:
            return None  # deleted meanwhile
        if aborted != truth.aborted(start, end):
            raise self.fail(
                f"{where}: aborted_transactions({start}, {end}) = {aborted},"
                f" the database's aborted ranges there are {truth.aborted(start, end)}"
            )
        # Kafka's consumer (CompletedFetch.nextFetchedBatch): the aborted ranges by first
        # offset; a producer's transactional batches are skipped from its range's first
        # offset until its abort marker; control batches are never returned.
        pending = sorted(aborted, key=lambda a: a.first_offset)
        skipping: set[int] = set()
        visible: list[LogicalBatch] = []
        expected: list[LogicalBatch] = []
        for location in locations:
            pid, transactional, control, commit = self.describe(location)
            if not control:
                batch = self.logical(location.object_key, location.byte_offset)
                assert batch is not None
                segment = truth.segment_of.get(batch.id) if transactional else None
                if not transactional or (segment is not None and segment.commit is True):
                    expected.append(batch)
            if pid >= 0:
                while pending and pending[0].first_offset <= location.last_offset:
                    skipping.add(pending.pop(0).producer_id)
                if control and not commit:
                    skipping.discard(pid)
                elif transactional and pid in skipping:
                    continue
            if not control:
                batch = self.logical(location.object_key, location.byte_offset)
                assert batch is not None
                visible.append(batch)
        if visible != expected:
            shown = {b.id for b in visible} - {b.id for b in expected}
            hidden = {b.id for b in expected} - {b.id for b in visible}
            raise self.fail(
                f"{where}: visible {[self.txn_name(i) for i in sorted(shown)]} which it must"
                f" not show, hidden {[self.txn_name(i) for i in sorted(hidden)]}"
            )
        return visible, end

    def txn_name(self, batch_id: int) -> str:
        txn = self.txn_of.get(batch_id)
        return f"batch {batch_id}" + (f" of {txn} (ended {txn.end})" if txn else "")

    async def read_all(self, node: Node, pkey: PartitionKey) -> None:
        """A read_committed consumer reads the partition from its start to the last stable
        offset: every committed record once, nothing aborted."""
        view = node.view
        offsets = view.partition_offsets(*pkey)
        if offsets is None:
            return
        position = offsets.log_start_offset
        seen: dict[int, LogicalBatch] = {}
        for _ in range(1_000):
            page = await self.fetch_committed(node, pkey, position, self.rng.choice([150, 1 << 20]))
            if page is None:
                break
            visible, position = page
            for batch in visible:
                if batch.id in seen:
                    raise self.fail(f"{node} read_committed {_name(pkey)}: {batch} twice")
                seen[batch.id] = batch
        stable = view.last_stable_offset(*pkey)
        if stable is None or position < stable:
            return  # the database failed: no verdict on what was not read
        self.stats["read_committed partitions read"] += 1
        for txn in self.txns:
            if txn.client_outcome != "commit":
                continue
            for batch in txn.batches:
                if (
                    batch.key == pkey
                    and batch.acked is not None
                    and batch.acked[1] < stable
                    and batch.id not in seen
                ):
                    raise self.fail(
                        f"{node} read_committed {_name(pkey)} up to {stable}: {batch} of {txn},"
                        f" acknowledged at {batch.acked} and committed, is not visible"
                    )

    async def txn_read(self) -> None:
        rng = self.rng
        node = rng.choice(self.nodes)
        topics = self.alive_topics()
        if node.paused or not topics:
            return
        topic = rng.choice(topics)
        pkey = (topic.topic_id, rng.randrange(topic.partition_count))
        if rng.random() < 0.3:
            await self.read_all(node, pkey)
            return
        offsets = node.view.partition_offsets(*pkey)
        stable = node.view.last_stable_offset(*pkey)
        if offsets is None or stable is None or stable <= offsets.log_start_offset:
            return
        start = rng.randrange(offsets.log_start_offset, stable)
        await self.fetch_committed(node, pkey, start, rng.choice([1, 150, 350, 1 << 20]))

    # Invariants -------------------------------------------------------------------------
    def is_control(self, location: BatchLocation) -> bool:
        return is_marker_key(location.object_key)

    def check(self, full: bool = False) -> None:
        super().check(full)
        self.update_truth()
        if self.ledger.violations:
            raise self.fail("; ".join(self.ledger.violations))
        self.check_open_ranges()
        self.check_group_offsets()
        for node in self.nodes:
            self.check_stable_offsets(node, exact=False)

    def update_truth(self) -> None:
        """Scan the rows stored since the last scan (logs only grow, or go with their topic)."""
        db = self.db
        if db.version == self.truth_version:
            return
        self.truth_version = db.version
        for pkey in [k for k in self.truth if k not in db.partitions]:
            del self.truth[pkey]
        for pkey in db.partitions:
            truth = self.truth.setdefault(pkey, PartitionTruth())
            rows = db.batch_rows(pkey)
            if truth.rows > len(rows) or (truth.rows and rows[truth.rows - 1] is not truth.last):
                raise self.fail(f"{_name(pkey)}: stored batches changed below the end of the log")
            for row in rows[truth.rows :]:
                self.scan_row(pkey, truth, row)
            truth.rows = len(rows)
            truth.last = rows[-1] if rows else None
        if self.ledger.violations:
            raise self.fail("; ".join(self.ledger.violations))

    def scan_row(self, pkey: PartitionKey, truth: PartitionTruth, row: StoredBatch) -> None:
        location = self.db.location(row)
        where = f"{_name(pkey)}@{row.base_offset}"
        if location is None:
            self.violation(f"{where}: a batch row without its object")
            return
        key = location.object_key
        if is_marker_key(key):
            if key not in self.marker_keys or row.base_offset != row.last_offset:
                self.violation(f"{where}: marker {key}, not one a transaction end wrote")
            marker = parse_marker_key(key)
            segment = truth.open.pop(marker.producer_id, None)
            if segment is None:
                return  # the transaction wrote nothing here
            segment.marker_offset = row.base_offset
            segment.commit = marker.commit
            truth.closed.append(segment)
            truth.closed_markers.append(row.base_offset)
            end = segment.txn.end
            if end is None or end.marker_key != key:
                self.violation(f"{where}: {key} closes {segment.txn}, which ended {end}")
            return
        batch = self.logical(key, location.byte_offset)
        if batch is None or not batch.attributes & TRANSACTIONAL_ATTRIBUTE:
            return  # the failover checks say whether the workload sent it
        txn = self.txn_of[batch.id]
        assert batch.producer is not None
        segment = truth.open.get(batch.producer[0])
        if segment is None:
            if txn.id in truth.txns:
                self.violation(f"{where}: {batch} of {txn} after the marker of its transaction")
            segment = truth.open[batch.producer[0]] = Segment(
                batch.producer[0], row.base_offset, txn
            )
            truth.txns.add(txn.id)
        elif segment.txn is not txn:
            self.violation(f"{where}: {batch} of {txn} inside the open range of {segment.txn}")
        segment.batches.append(batch)
        truth.segment_of[batch.id] = segment

    def check_open_ranges(self) -> None:
        """Every open range belongs to an Ongoing transaction holding its partition (else it
        would hang), and the producer states hold exactly the open ranges' first offsets."""
        db = self.db
        by_producer = {t.producer_id: t for t in db.transactions.values()}
        firsts: dict[tuple[int, PartitionKey], int] = {}
        for pkey, truth in self.truth.items():
            for pid, segment in truth.open.items():
                firsts[(pid, pkey)] = segment.first_offset
                record = by_producer.get(pid)
                if segment.txn.end is not None:
                    raise self.fail(
                        f"{_name(pkey)}: {segment.txn} ended ({segment.txn.end}) without a"
                        f" marker after its data at {segment.first_offset}"
                    )
                if record is None or not record.ongoing or pkey not in record.partitions:
                    raise self.fail(
                        f"{_name(pkey)}: data of producer {pid} open from"
                        f" {segment.first_offset}, but its transaction is {record}"
                    )
        stored = {
            (pid, (tid, p)): state.txn_first_offset
            for (pid, tid, p), state in db.producer_states.items()
            if state.txn_first_offset >= 0
        }
        if stored != firsts:
            raise self.fail(
                f"producer states hold open transactions at {_firsts(stored)}, the logs"
                f" at {_firsts(firsts)}"
            )

    def check_group_offsets(self) -> None:
        db = self.db
        pending = {k: o.offset for k, o in db.txn_offsets.items()}
        if pending != self.pending:
            raise self.fail(f"pending offsets {pending}, accepted and unsettled {self.pending}")
        groups = {k: o.offset for k, o in db.group_offsets.items()}
        if groups != self.group_offsets:
            raise self.fail(
                f"group offsets {groups}, committed transactions say {self.group_offsets}"
            )
        for key, offset in groups.items():
            txn = self.txns[offset // 1000]
            if txn.end is None or not txn.end.commit or txn.client_outcome == "abort":
                raise self.fail(f"group offset {key}={offset} of {txn}, which ended {txn.end}")

    def check_stable_offsets(self, node: Node, exact: bool) -> None:
        """The view's last stable offsets against the logs; `exact`: a view in step with
        the database (right after its writer's own commit, loaded, or caught up)."""
        self.check_view_stable(str(node), node.view, exact)

    def check_view_stable(self, name: str, view: CoordinatorView, exact: bool) -> None:
        for pkey, truth in self.truth.items():
            offsets = view.partition_offsets(*pkey)
            stable = view.last_stable_offset(*pkey)
            if offsets is None or stable is None:
                continue
            hwm = offsets.high_watermark
            at_view = truth.last_stable_offset(hwm)
            stored_hwm = self.db.high_watermark(pkey)
            at_database = truth.last_stable_offset(stored_hwm)
            where = f"{name}'s view of {_name(pkey)}: last stable offset {stable}"
            if stable > hwm:
                raise self.fail(f"{where}, past its high watermark {hwm}")
            if stable > at_view:
                open_ = [
                    s for s in [*truth.open.values(), *truth.closed] if s.first_offset == at_view
                ]
                raise self.fail(
                    f"{where}, high watermark {hwm}: passes the first offset {at_view} of"
                    f" {open_[0].txn if open_ else '?'}, whose marker is not below {hwm}"
                )
            if stable > at_database:
                raise self.fail(f"{where}, ahead of the database's {at_database}")
            if exact and (stable != at_database or hwm != stored_hwm):
                raise self.fail(
                    f"{where}, high watermark {hwm}: the database has {at_database}, {stored_hwm}"
                )

    def check_writer_view(self, node: Node) -> None:
        super().check_writer_view(node)
        self.update_truth()
        self.check_stable_offsets(node, exact=True)

    async def check_database(self) -> None:
        """What a view loaded from the database serves now, and the pending offsets the
        backend reports: exact."""
        if self.db.version == self.database_version:
            return
        self.database_version = self.db.version
        self.update_truth()
        backend = MemoryBackend(self.db)
        await backend.open()
        view = CoordinatorView(backend)
        await view.load()
        self.check_view_stable("loaded", view, exact=True)
        for pkey, truth in self.truth.items():
            if not truth.closed:
                continue
            stable = view.last_stable_offset(*pkey)
            assert stable is not None
            start = self.rng.randrange(stable + 1)
            for first, end in ((0, stable), (start, self.rng.randint(start, stable))):
                aborted = await view.aborted_transactions(pkey[0], pkey[1], first, end)
                expected = truth.aborted(first, end) if end > first else []
                if aborted != expected:
                    raise self.fail(
                        f"loaded view: aborted_transactions({_name(pkey)}, {first}, {end}) ="
                        f" {aborted}, the logs say {expected}"
                    )
        for group in GROUPS:
            pending = await backend.pending_offsets(group)
            expected_pending = {(k[1], k[2]) for k in self.pending if k[0] == group}
            if pending != expected_pending:
                raise self.fail(f"pending_offsets({group}) = {pending}, open: {expected_pending}")

    # Healing ----------------------------------------------------------------------------
    async def heal(self) -> None:
        await super().heal()
        self.prune_followers()
        lease = self.db.leases[SHARD]
        owner = self.ledger.acquired[lease.epoch]
        leader = next(n for n in self.nodes if n.id == owner and n.is_writer)
        # Every live client finishes what it started (idle ids past their expiration go
        # first, as the writer's timer would have it).
        await self.expire(leader)
        for client in self.clients:
            for _ in range(20):
                if client.phase is Phase.FENCED or (
                    client.phase is Phase.READY and client.txn is None and client.retry is None
                ):
                    break
                txn = client.txn
                request = client.retry
                if request is None and client.phase is Phase.INIT:
                    request = self.next_request(client)
                if request is None and txn is not None:
                    if client.in_flight and not txn.abortable:
                        batches = list(client.in_flight.values())
                        await self.commit_round(leader, [self.make_object(batches)], alone=True)
                        continue
                    request = self.end_request(client, txn, not txn.abortable)
                if request is not None:
                    await self.send(client, leader, request)
            else:
                raise self.fail(f"{client} could not finish after healing")
        # One more transaction per id, which must commit.
        for i in range(self.txn_config.transactional_ids):
            await self.final_transaction(f"txn{i}", leader)
        # What no client ends (its instance gone), the timeout aborts.
        longest = max(self.txn_config.timeouts_ms)
        for _ in range(longest // (self.config.lease_ms // 3) + 2):
            self.clock.advance(self.config.lease_ms // 3)
            for node in self.nodes:
                await self.tick(node)
            await self.expire(leader)
        still_open = [t for t in self.db.transactions.values() if t.ongoing]
        if still_open:
            raise self.fail(f"transactions still open after healing: {still_open}")
        # Every follower catches up.
        for node in self.nodes:
            await self.follow(node)
            await self.deliver(node, 1_000_000)
        self.check(full=True)
        await self.check_database()
        for node in self.nodes:
            self.check_stable_offsets(node, exact=True)
            for pkey in self.truth:
                await self.read_all(node, pkey)
        for txn in self.txns:
            if txn.client_outcome in ("commit", "abort") and txn.end is None:
                raise self.fail(f"{txn}: its client saw {txn.client_outcome}, never ended")

    async def final_transaction(self, transactional_id: str, leader: Node) -> None:
        """With faults off, a new instance of the id (an application restarted: it fences
        the others) runs a transaction through: a partition and a group, a batch, an
        offset, a commit."""
        instance = sum(1 for c in self.clients if c.transactional_id == transactional_id)
        client = TxnClient(-1, -1, transactional_id=transactional_id, instance=instance)
        self.clients.append(client)
        for _ in range(5):
            if client.phase is not Phase.INIT:
                break
            await self.send(client, leader, client.retry or Request("init"))
        if client.phase is not Phase.READY:
            raise self.fail(f"{client} could not start after healing")
        txn = self.begin(client)
        topic = self.alive_topics()[0]
        pkey = (topic.topic_id, 0)
        await self.send(client, leader, Request("add", partitions=(pkey,), groups=(GROUPS[0],)))
        batch = self.txn_batch(client, txn, pkey)
        await self.commit_round(leader, [self.make_object([batch])], alone=True)
        txn.offset_count += 1
        offset = PendingOffset(
            client.producer_id, GROUPS[0], topic.name, 0, txn.id * 1000 + 1, -1, None
        )
        await self.send(client, leader, Request("offsets", offsets=(offset,)))
        if batch.acked is None or pkey not in txn.partitions or not txn.offsets:
            raise self.fail(f"{client}: {txn} after healing: {batch} {txn.partitions}")
        request = self.end_request(client, txn, True)
        assert request is not None
        await self.send(client, leader, request)
        if txn.client_outcome != "commit":
            raise self.fail(f"{client}: {txn} did not commit after healing")


def _frame_kind(frame: bytes) -> str:
    body = frame[messages.LENGTH.size :]
    if body[:1] == bytes([messages.APPLIED]):
        return "applied"
    return str(messages.decode(body).get("op"))


def _order(key: PartitionKey) -> tuple[int, int]:
    return key[0].int, key[1]


def _name(key: PartitionKey) -> str:
    return f"{key[0].hex[:4]}/{key[1]}"


def _firsts(firsts: dict[tuple[int, PartitionKey], int]) -> list[str]:
    return sorted(f"producer {pid} in {_name(k)} from {o}" for (pid, k), o in firsts.items())


def run_seed(seed: int, steps: int = 150, config: TxnSimConfig | None = None) -> TxnSim:
    """Run one seed (raises `SimFailure`); the same seed and config replay it exactly."""
    sim = TxnSim(seed, config or TxnSimConfig(steps=steps))
    asyncio.run(sim.run())
    return sim


# Planted bugs ----------------------------------------------------------------------------
# Each breaks the real code the way its name says, in this process only (the test's
# monkeypatch undoes it), to show the invariants catch it.

planted = ""


def _closes_before_markers(self: WriterServer, objects: Sequence[SequencedObject]) -> None:
    """WriterServer.on_applied with the transactions' closes sent before the markers: a
    follower's view takes a transaction's end before its marker rows."""
    if self._subscribers:
        opens = [o for obj in objects if obj.txn_opens for o in obj.txn_opens]
        if opens:
            self._broadcast(messages.txn_opens_message(opens))
        closes = [c for obj in objects if obj.txn_closes for c in obj.txn_closes]
        if closes:
            self._broadcast(messages.txn_closes_message(closes))
        self._broadcast_frame(messages.applied_frame(objects, self._raw_batches))
    for o in objects:
        self._raw_batches.pop(o.object_key, None)


def _plant_view_order(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(WriterServer, "on_applied", _closes_before_markers)


def _plant_no_first_offset(mp: pytest.MonkeyPatch) -> None:
    sequence = Sequencer.sequence

    def forgetful(
        self: Sequencer, key: str, size: int, batches: Sequence[BatchToCommit], now_ms: int
    ) -> SequencedObject:
        obj = sequence(self, key, size, batches, now_ms)
        for topic_id, partition, producer_id, _ in obj.txn_opens or ():
            state = self.producers.get((producer_id, topic_id, partition))
            if state is not None:
                state.txn_first_offset = -1
        obj.txn_opens = None
        return obj

    mp.setattr(Sequencer, "sequence", forgetful)


def _plant_commit_markers(mp: pytest.MonkeyPatch) -> None:
    end_transaction = Sequencer.end_transaction

    def committing(self: Sequencer, end: TxnEnd, epoch: int, now_ms: int) -> SequencedObject:
        return end_transaction(self, dataclasses.replace(end, commit=True), epoch, now_ms)

    mp.setattr(Sequencer, "end_transaction", committing)


def _plant_no_settle(mp: pytest.MonkeyPatch) -> None:
    change = CommitWriter._change_transactions

    async def unsettled(
        self: CommitWriter,
        decide: Callable[[Sequencer, int], tuple[Decision, TxnWrite]],
        *,
        may_end: bool,
    ) -> Decision:
        return await change(self, decide, may_end=False)

    mp.setattr(CommitWriter, "_change_transactions", unsettled)


def _plant_offsets_stay(mp: pytest.MonkeyPatch) -> None:
    persist = MemoryBackend.persist_transactions

    async def unsettling(self: MemoryBackend, fence: Fence, write: TxnWrite) -> None:
        await persist(self, fence, dataclasses.replace(write, settled=[]))

    mp.setattr(MemoryBackend, "persist_transactions", unsettling)


PLANTED_BUGS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    # (a) a view takes txn_closes before the marker rows: the writer's stream sends the
    # closes ahead of the markers' applied frame. (The same swap inside
    # CoordinatorView.on_applied cannot be observed, as it runs without yielding: planted
    # there, 50 seeds pass. The order matters across the stream's frames.)
    "closes-before-markers": _plant_view_order,
    # (b) the sequencer does not record txn_first_offset (nor report txn_opens).
    "no-first-offset": _plant_no_first_offset,
    # (c) Sequencer.end_transaction writes commit markers for an abort.
    "commit-markers-for-abort": _plant_commit_markers,
    # (d) the writer's _change_transactions ignores may_end: no settle before markers.
    "no-settle-before-markers": _plant_no_settle,
    # (e) persist_transactions does not move (or drop) the pending offsets.
    "pending-offsets-stay": _plant_offsets_stay,
}


def plant(mp: pytest.MonkeyPatch, bug: str) -> None:
    """Break the real code as `bug` says, until `mp` is undone."""
    PLANTED_BUGS[bug](mp)
    mp.setattr(sys.modules[__name__], "planted", bug)
