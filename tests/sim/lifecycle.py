"""A seeded, deterministic simulation of the storage lifecycle: GC, compaction, retention.

One seed drives everything: the workload, the clock, the interleavings and the
faults of the object store and of every backend handle. Writers
(`CommitWriter` over `FaultyBackend` handles on one `MemoryDatabase`), two
`ObjectCollector`s and two `Compactor`s (whose swap is the current writer's
`relocate`) share one `FakeClock` and one `SimStore` (in memory, its
`last_modified_ms` from the fake clock) behind the seeded `FaultyObjectStore`
(failures before a PUT, lost PUT acknowledgements, GET and list-page errors,
bulk deletes that fail part way). Every component reads its own skewed
wall clock (writers, collectors, compactors, the uploading agent, the
store's modification times), any two at most `max_skew_ms` apart. Nothing
runs on a timer: each step calls the real code directly, and calls in one
step may run concurrently, the backends and the store yielding a seeded
number of times around each call.

Steps: produce (upload an object of a few batches over a few partitions under
`keys.new_object_key`, then commit it; or crash between upload and commit, an
orphan; or park it and commit later, when it may be too old; a commit whose
reply was lost is re-sent with `retry=True`); re-send parked or failed
commits; fetch (coordinates from `read_batches`, held for a random time below
`delete_grace_ms` before the GETs); compaction (sometimes stalled between its
upload and its swap while a collector scans for orphans); retention
(DeleteRecords and `enforce_retention`); delete or create a topic; a GC pass;
advance the clock (sometimes exactly to the last millisecond a held fetch may
still read, then collect); writer failover; and several of these at once
(two collectors, two compactors, commits, retention, fetches).

Invariants (`Sim.check` after every step; the store's delete hook and the
tracking backend at the moment things happen):

1. every batch row names a live object that is in the store; a deleted key
   was unreferenced and dead for more than `delete_grace_ms`, or unknown to
   the coordinator and older than `orphan_grace_ms`; an object the writer
   stores (a commit or a compaction swap) is in the store and not older
   than the commit age; keys Driftlog did not make are never deleted;
2. offsets are dense from the log start; every stored batch reads back, at
   its current coordinates, exactly the bytes sent with it; every
   acknowledged batch at or above its partition's log start is stored once,
   at the offsets it was acknowledged with; refusals are only for unknown
   partitions or uploads older than the commit age;
3. a fetch holding coordinates read less than `delete_grace_ms` ago reads
   them (and a deletion of an object such a fetch holds is reported when it
   happens);
4. at the end (faults off, the clock past every grace period, collectors run
   until nothing is left to do), the store holds exactly the objects some
   batch references, and the objects table only those plus at most the newest
   tombstone.

Times in these checks are true times, loosened by `max_skew_ms` where two
clocks meet (a fetch is promised `delete_grace_ms - max_skew_ms`). With skew
beyond half the orphan grace period the simulation finds what `keys.py`
warns of: an orphan deleted, then committed.

A failure raises `SimFailure` naming the seed and the recent steps;
`run_seed(seed, steps)` replays it exactly.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode
from sim.failover import deterministic_uuid4

from driftlog.clock import FakeClock
from driftlog.coordinator.api import (
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    CommitRequest,
    CoordinatorError,
    NotWriter,
    TopicInfo,
)
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.engines.backend import BatchMove, Fence, LogStart, NewObject
from driftlog.coordinator.engines.faulty import BackendFaults, FaultyBackend
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime.writer import CommitWriter
from driftlog.lifecycle.compactor import CompactionConfig, Compactor
from driftlog.lifecycle.gc import GcConfig, ObjectCollector
from driftlog.records.control import is_marker_key
from driftlog.storage.api import (
    ObjectAlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreStats,
)
from driftlog.storage.faulty import FaultConfig, FaultyObjectStore
from driftlog.storage.keys import key_time_ms, max_commit_age_ms, new_object_key

SHARD = 0
# name -> (partitions, configs); t2 has a time retention the writer enforces.
TOPICS: dict[str, tuple[int, dict[str, str]]] = {
    "t0": (3, {}),
    "t1": (2, {}),
    "t2": (2, {"retention.ms": "40000"}),
}

STEP_WEIGHTS = (
    ("produce", 28),
    ("resend", 6),
    ("fetch", 12),
    ("compact", 8),
    ("retention", 6),
    ("topic", 3),
    ("gc", 12),
    ("advance", 18),
    ("failover", 2),
    ("concurrent", 10),
)


class SimFailure(AssertionError):
    pass


@dataclass(frozen=True, slots=True)
class SimConfig:
    steps: int = 300
    writers: int = 2
    lease_ms: int = 3_000
    delete_grace_ms: int = 20_000
    orphan_grace_ms: int = 120_000  # the writer's commit age is half of it
    orphan_scan_interval_ms: int = 10_000
    gc_deletes_per_pass: int = 6  # small, so passes stop part way
    list_page_size: int = 8
    small_object_bytes: int = 700
    target_object_bytes: int = 2_500
    compaction_min_age_ms: int = 4_000
    # Backend handles: fail before the call, or lose the reply after it.
    fail_before: float = 0.03
    lose_reply: float = 0.03
    max_yields: int = 3
    # Object store.
    put_error: float = 0.05
    put_lost_ack: float = 0.05
    get_error: float = 0.03
    list_error: float = 0.05
    delete_error: float = 0.1
    # Every component's wall clock is off by up to half this, either way (so any two
    # disagree by at most this); the invariants allow exactly that much.
    max_skew_ms: int = 2_000
    weights: tuple[tuple[str, int], ...] = STEP_WEIGHTS

    @property
    def max_commit_age_ms(self) -> int:
        return max_commit_age_ms(self.orphan_grace_ms)

    @property
    def fetch_grace_ms(self) -> int:
        """How long a fetch may hold coordinates, in true time, whatever the clocks say."""
        return self.delete_grace_ms - self.max_skew_ms


class SkewedClock:
    """One component's clock: the simulation's true time plus a fixed offset."""

    def __init__(self, base: FakeClock, offset_ms: int) -> None:
        self.base = base
        self.offset_ms = offset_ms

    def wall_ms(self) -> int:
        return self.base.wall_ms() + self.offset_ms

    def monotonic_s(self) -> float:
        return self.base.monotonic_s()


# The object store --------------------------------------------------------------------------


class SimStore:
    """An in-memory `ObjectStore` on the simulation's clock.

    Listings are paged by key like S3's (each page starts after the last key of
    the one before, so they are not snapshots); bulk deletes remove one key at
    a time, yielding in between, so concurrent collectors interleave.
    `on_delete` is told of every key removed, at the moment it goes.
    """

    def __init__(
        self, clock: SkewedClock, rng: random.Random, max_yields: int, page_size: int
    ) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}  # key -> (data, last modified ms)
        self.on_delete: Callable[[str], None] | None = None
        self._clock = clock
        self._rng = rng
        self._max_yields = max_yields
        self._page_size = page_size
        self._stats = ObjectStoreStats()

    @property
    def stats(self) -> ObjectStoreStats:
        return self._stats

    async def _yield(self) -> None:
        for _ in range(self._rng.randint(0, self._max_yields)):
            await asyncio.sleep(0)

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        await self._yield()
        if key in self.objects:
            raise ObjectAlreadyExists(key)
        data = b"".join(chunks)
        self.objects[key] = (data, self._clock.wall_ms())
        self._stats.puts += 1
        self._stats.bytes_put += len(data)

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        await self._yield()
        stored = self.objects.get(key)
        if stored is None:
            raise ObjectNotFound(key)
        data = memoryview(stored[0])
        for start, end in ranges:
            if not 0 <= start <= end <= len(data):
                raise ObjectStoreError(f"range {start}-{end} outside {key} ({len(data)} bytes)")
        self._stats.gets += 1
        return [data[start:end] for start, end in ranges]

    def _remove(self, key: str) -> None:
        if key in self.objects:
            if self.on_delete is not None:
                self.on_delete(key)
            del self.objects[key]
            self._stats.deletes += 1

    async def delete(self, key: str) -> None:
        await self._yield()
        self._remove(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self._yield()
            self._remove(key)

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        after = ""
        while True:
            await self._yield()
            keys = sorted(k for k in self.objects if k.startswith(prefix) and k > after)
            page = [
                ObjectInfo(k, len(self.objects[k][0]), self.objects[k][1])
                for k in keys[: self._page_size]
            ]
            if not page:
                return
            yield page
            after = page[-1].key

    async def close(self) -> None:
        pass


def _is_store(store: SimStore) -> ObjectStore:
    return store  # mypy checks that SimStore implements the protocol


# The workload's records ---------------------------------------------------------------------


@dataclass(slots=True)
class Upload:
    """One object an agent uploaded (or tried to), and what became of its commit."""

    key: str
    data: bytes
    batches: list[BatchToCommit]
    sent: bool = False  # a commit was sent (later sends are re-sends)
    answered: list[CommitOutcome] | None = None

    @property
    def uploaded_ms(self) -> int:
        uploaded = key_time_ms(self.key)
        assert uploaded is not None
        return uploaded


@dataclass(slots=True)
class HeldFetch:
    """Coordinates a fetch read at `read_ms`, to be read from the store at `due_ms`."""

    id: int
    pkey: PartitionKey
    locations: list[BatchLocation]
    read_ms: int
    due_ms: int


class NullListener:
    """The writer's listener: the simulation reads the database itself."""

    def on_applied(self, objects: Sequence[SequencedObject]) -> None:
        pass

    def on_reloaded(self, snapshot: SequencerSnapshot) -> None:
        pass

    def on_topic_put(self, topic: TopicInfo) -> None:
        pass

    def on_topic_dropped(self, topic: TopicInfo) -> None:
        pass

    def on_log_starts(self, starts: Sequence[LogStart]) -> None:
        pass

    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None:
        pass


class TrackedBackend(MemoryBackend):
    """A writer's handle that reports what the database accepted (under its `FaultyBackend`,
    so it sees commits whose replies are then lost)."""

    def __init__(self, database: MemoryDatabase, sim: Sim) -> None:
        super().__init__(database)
        self.sim = sim

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        await super().persist_objects(fence, objects)
        self.sim.on_persisted(objects)

    async def relocate_batches(
        self, fence: Fence, new_object: NewObject, moves: Sequence[BatchMove], now_ms: int
    ) -> int:
        moved = await super().relocate_batches(fence, new_object, moves, now_ms)
        self.sim.on_relocated(new_object, moves, moved)
        return moved


@dataclass(slots=True)
class WriterSlot:
    name: str
    faulty: FaultyBackend
    writer: CommitWriter


@dataclass(slots=True)
class Stats:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def max(self, name: str, n: int) -> None:
        self.counts[name] = max(self.counts[name], n)


# The simulation -----------------------------------------------------------------------------


class Sim:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.db = MemoryDatabase()
        self.store = SimStore(
            self.skewed(),
            random.Random(self.rng.getrandbits(64)),
            config.max_yields,
            config.list_page_size,
        )
        self.store.on_delete = self.on_store_delete
        self.faulty_store = FaultyObjectStore(
            self.store,
            FaultConfig(
                put_error=config.put_error,
                get_error=config.get_error,
                put_lost_ack=config.put_lost_ack,
                list_error=config.list_error,
                delete_error=config.delete_error,
                seed=self.rng.getrandbits(32),
            ),
        )
        self.gc_config = GcConfig(
            interval_ms=1_000,
            delete_grace_ms=config.delete_grace_ms,
            orphan_grace_ms=config.orphan_grace_ms,
            orphan_scan_interval_ms=config.orphan_scan_interval_ms,
            max_deletes_per_s=float(config.gc_deletes_per_pass),
        )
        self.compaction_config = CompactionConfig(
            interval_ms=1_000,
            min_age_ms=config.compaction_min_age_ms,
            small_object_bytes=config.small_object_bytes,
            target_object_bytes=config.target_object_bytes,
        )
        self.writers: list[WriterSlot] = []
        self.writer_count = 0
        self.handles: list[FaultyBackend] = []  # every faulty backend handle
        self.collectors: list[ObjectCollector] = []
        self.compactors: list[Compactor] = []
        self.reader: FaultyBackend | None = None
        # The workload.
        self.uploads: dict[str, Upload] = {}
        self.unanswered: list[str] = []  # uploaded keys whose commit is not answered yet
        self.dropped_topics: list[uuid.UUID] = []
        self.held: list[HeldFetch] = []
        self.fetches = 0
        # What the database stored: (partition, base offset) -> (last offset, bytes sent).
        self.landed: dict[tuple[PartitionKey, int], tuple[int, bytes]] = {}
        # Acknowledged batches: partition -> base offset -> (last offset, bytes).
        self.acked: dict[PartitionKey, dict[int, tuple[int, bytes]]] = {}
        self.violations: list[str] = []
        self.trace: collections.deque[str] = collections.deque(maxlen=60)
        self.step = 0
        self.stats = Stats()
        self.stall_allowed = False
        self.agent_clock = self.skewed()  # the uploading agents' (keys carry its time)
        # Keys Driftlog did not make: never touched.
        self.foreign = ["objects/foreign", "objects/12345-short", "other/objects/1-x"]
        for key in self.foreign:
            self.store.objects[key] = (b"not ours", 0)

    # Failures -------------------------------------------------------------------------------
    def fail(self, what: str) -> SimFailure:
        recent = "\n  ".join(self.trace)
        return SimFailure(
            f"seed={self.seed} step={self.step}: {what}\n"
            f"replay: run_seed({self.seed}, config={self.config})\n"
            f"recent steps:\n  {recent}"
        )

    def violation(self, what: str) -> None:
        self.violations.append(f"[step {self.step}] {what}")

    def log(self, line: str) -> None:
        self.trace.append(f"[{self.step}] t+{self.clock.wall_ms() - 1_700_000_000_000} {line}")

    def now(self) -> int:
        """True time (every component's clock is off it by its skew)."""
        return self.clock.wall_ms()

    def skewed(self) -> SkewedClock:
        half = self.config.max_skew_ms // 2
        return SkewedClock(self.clock, self.rng.randint(-half, half))

    # Wiring -----------------------------------------------------------------------------------
    def handle(self, inner: MemoryBackend) -> FaultyBackend:
        faults = BackendFaults(
            self.config.fail_before, self.config.lose_reply, max_yields=self.config.max_yields
        )
        faulty = FaultyBackend(inner, faults, random.Random(self.rng.getrandbits(64)))
        self.handles.append(faulty)
        return faulty

    async def spawn_writer(self) -> WriterSlot:
        self.writer_count += 1
        name = f"w{self.writer_count}"
        faulty = self.handle(TrackedBackend(self.db, self))
        await self.open(faulty)
        writer = CommitWriter(
            faulty,
            self.skewed(),
            NullListener(),
            holder=name,
            shard=SHARD,
            lease_ms=self.config.lease_ms,
            max_commit_age_ms=self.config.max_commit_age_ms,
        )
        slot = WriterSlot(name, faulty, writer)
        self.writers.append(slot)
        return slot

    async def open(self, faulty: FaultyBackend) -> None:
        enabled, faulty.enabled = faulty.enabled, False
        await faulty.open()
        faulty.enabled = enabled

    def pick_writer(self) -> WriterSlot:
        """Mostly the writer that believes it leads; now and then any (a stale route)."""
        leading = [w for w in self.writers if w.writer.is_writer]
        if leading and self.rng.random() < 0.85:
            return self.rng.choice(leading)
        return self.rng.choice(self.writers)

    async def relocate(
        self, key: str, size: int, moves: Sequence[BatchMove], level: int
    ) -> tuple[NewObject, int] | None:
        """The compactors' swap: the current writer's `relocate`.

        When the compaction runs alone it is sometimes stalled between its upload
        and its swap, long enough for its output to pass the commit age (and the
        orphan grace period) while a collector scans the store."""
        if self.stall_allowed and self.rng.random() < 0.15:
            stall_ms = self.rng.randint(1, self.config.orphan_grace_ms * 5 // 4)
            self.clock.advance(stall_ms)
            self.log(f"compactor stalls {stall_ms} ms before swapping {key}")
            await self.collectors[0].collect(scan_orphans=True)
        slot = self.pick_writer()
        return await slot.writer.relocate(key, size, moves, level)

    async def setup(self) -> None:
        for _ in range(self.config.writers):
            await self.spawn_writer()
        first = self.writers[0]
        first.faulty.enabled = False
        while not first.writer.is_writer:
            await first.writer.tick()
        for name, (partitions, configs) in TOPICS.items():
            error, _ = await first.writer.create_topic(name, partitions, configs)
            assert error == ErrorCode.none
        first.faulty.enabled = True
        for _ in range(2):
            faulty = self.handle(MemoryBackend(self.db))
            await self.open(faulty)
            self.collectors.append(
                ObjectCollector(faulty, self.faulty_store, self.skewed(), self.gc_config)
            )
        for _ in range(2):
            faulty = self.handle(MemoryBackend(self.db))
            await self.open(faulty)
            self.compactors.append(
                Compactor(
                    faulty,
                    self.faulty_store,
                    self.skewed(),
                    self.relocate,
                    self.compaction_config,
                )
            )
        self.reader = self.handle(MemoryBackend(self.db))
        await self.open(self.reader)
        self.log(f"setup: {first.name} writer, topics {sorted(TOPICS)}")

    # Hooks: what the database and the store did, as it happens ------------------------------
    def on_persisted(self, objects: Sequence[SequencedObject]) -> None:
        now = self.now()
        for obj in objects:
            upload = self.uploads.get(obj.object_key)
            if upload is None:
                self.violation(f"stored {obj.object_key}, which nobody uploaded")
                continue
            if obj.object_key not in self.store.objects:
                self.violation(f"stored a commit of {obj.object_key}, which is not in the store")
            if now - upload.uploaded_ms > self.config.max_commit_age_ms + self.config.max_skew_ms:
                self.violation(
                    f"stored a commit of {obj.object_key} uploaded {now - upload.uploaded_ms} ms"
                    f" ago (commit age {self.config.max_commit_age_ms} ms)"
                )
            for row in obj.rows:
                loc = row.location
                at = ((row.topic_id, row.partition), loc.base_offset)
                if at in self.landed:
                    self.violation(f"offset {at} stored twice")
                data = upload.data[loc.byte_offset : loc.byte_offset + loc.byte_length]
                self.landed[at] = (loc.last_offset, data)
            self.stats.add("objects committed")
            if not obj.rows:
                self.stats.add("objects committed without batches")

    def on_relocated(self, new_object: NewObject, moves: Sequence[BatchMove], moved: int) -> None:
        levels = {self.db.objects[m.from_object_id].level for m in moves}
        if levels != {new_object.level - 1}:
            self.violation(f"compaction merged levels {levels} into level {new_object.level}")
        self.stats.max("highest level", new_object.level)
        if new_object.key not in self.store.objects:
            self.violation(f"compaction swapped in {new_object.key}, which is not in the store")
        uploaded = key_time_ms(new_object.key)
        age = self.now() - (uploaded if uploaded is not None else 0)
        if age > self.config.max_commit_age_ms + self.config.max_skew_ms:
            self.violation(f"compaction swapped in {new_object.key} uploaded {age} ms ago")
        self.stats.add("compactions swapped")
        self.stats.add("batches relocated", moved)

    def on_store_delete(self, key: str) -> None:
        """Invariants 1 and 3 at the moment a key leaves the store."""
        db = self.db
        config = self.config
        now = self.now()
        object_id = db.object_ids_by_key.get(key)
        if object_id is None:
            uploaded = key_time_ms(key)
            if uploaded is None or uploaded >= now - config.orphan_grace_ms + config.max_skew_ms:
                self.violation(f"deleted {key}, unknown to the coordinator but not an old orphan")
            self.stats.add("orphans deleted")
        else:
            obj = db.objects[object_id]
            if db.references.get(object_id, 0) > 0 or obj.dead_since_ms is None:
                self.violation(f"deleted {key}, which is live ({obj})")
            elif obj.dead_since_ms >= now - config.delete_grace_ms + config.max_skew_ms:
                self.violation(
                    f"deleted {key} {now - obj.dead_since_ms} ms after it died"
                    f" (grace {config.delete_grace_ms} ms)"
                )
            self.stats.add("dead objects deleted")
        for fetch in self.held:
            if now - fetch.read_ms < config.fetch_grace_ms and any(
                loc.object_key == key for loc in fetch.locations
            ):
                self.violation(
                    f"deleted {key}, which fetch {fetch.id} read {now - fetch.read_ms} ms ago"
                )

    # Workload ---------------------------------------------------------------------------------
    def alive_topics(self) -> list[TopicInfo]:
        return sorted(self.db.topics.values(), key=lambda t: t.name)

    def new_upload(self) -> Upload:
        rng = self.rng
        topics = self.alive_topics()
        chunks: list[bytes] = []
        batches: list[BatchToCommit] = []
        position = 0
        now = self.now()
        for _ in range(rng.randint(1, 4)):
            if self.dropped_topics and (not topics or rng.random() < 0.08):
                # Stale metadata: a deleted topic (refused as unknown).
                pkey = (rng.choice(self.dropped_topics), rng.randrange(3))
            elif topics:
                topic = rng.choice(topics)
                pkey = (topic.topic_id, rng.randrange(topic.partition_count))
            else:
                continue
            data = rng.randbytes(rng.randint(20, 160))
            timestamp = now - rng.randrange(1_000)
            batches.append(
                BatchToCommit(
                    pkey[0], pkey[1], position, len(data), rng.randint(1, 5), timestamp, timestamp
                )
            )
            chunks.append(data)
            position += len(data)
        upload = Upload(new_object_key(self.agent_clock.wall_ms()), b"".join(chunks), batches)
        self.uploads[upload.key] = upload
        return upload

    async def put(self, upload: Upload) -> bool:
        """Upload as the write path does: a failed PUT is retried twice; a retry that
        finds the key taken means an earlier attempt landed."""
        for _ in range(3):
            try:
                await self.faulty_store.put_new(upload.key, [upload.data])
                return True
            except ObjectAlreadyExists:
                return True
            except ObjectStoreError:
                continue
        return False

    async def produce(self) -> None:
        upload = self.new_upload()
        if not upload.batches:
            return
        if not await self.put(upload):
            self.stats.add("uploads failed")
            self.log(f"upload {upload.key} failed (maybe an orphan)")
            return
        kind = self.rng.random()
        if kind < 0.08:
            self.stats.add("crashed before commit")
            self.log(f"uploaded {upload.key}, crashed before committing it (an orphan)")
            return
        self.unanswered.append(upload.key)
        if kind < 0.16:
            self.log(f"uploaded {upload.key}, commit delayed")
            return
        uploads = [upload]
        if self.unanswered[:-1] and self.rng.random() < 0.2:
            uploads.insert(0, self.uploads[self.rng.choice(self.unanswered[:-1])])
        await self.commit(uploads)
        if upload.answered is None and self.rng.random() < 0.5:
            await self.commit([upload])  # re-sent at once, as the agent does after a failure

    async def resend(self) -> None:
        if not self.unanswered:
            return
        keys = self.rng.sample(self.unanswered, min(len(self.unanswered), self.rng.randint(1, 3)))
        await self.commit([self.uploads[k] for k in keys])

    async def commit(self, uploads: list[Upload]) -> None:
        """One commit round on a writer, as its write loop runs it; check the answers."""
        slot = self.pick_writer()
        loop = asyncio.get_running_loop()
        pending: list[tuple[CommitRequest, asyncio.Future[list[CommitOutcome]]]] = []
        for upload in uploads:
            request = CommitRequest(upload.key, len(upload.data), upload.batches, upload.sent)
            upload.sent = True
            pending.append((request, loop.create_future()))
        if slot.writer.is_writer:
            try:
                await slot.writer.commit_round(pending)
            except Exception as e:
                raise self.fail(f"{slot.name}: commit_round raised {e!r}") from e
        else:
            for _, future in pending:
                future.set_exception(NotWriter("not the writer"))
        answers: list[str] = []
        for upload, (request, future) in zip(uploads, pending, strict=True):
            if not future.done():
                raise self.fail(f"{slot.name}: {upload.key} left unanswered")
            error = future.exception()
            if error is not None:
                if not isinstance(error, CoordinatorError):
                    raise self.fail(f"{slot.name}: {upload.key} failed with {error!r}")
                answers.append(type(error).__name__)
                continue
            self.answered(upload, future.result())
            answers.append("retry ok" if request.retry else "ok")
        self.log(f"{slot.name} commits {[u.key[-6:] for u in uploads]}: {answers}")

    def answered(self, upload: Upload, outcomes: list[CommitOutcome]) -> None:
        where = f"commit of {upload.key}"
        if upload.answered is not None and outcomes != upload.answered:
            raise self.fail(f"{where}: answered {outcomes}, before {upload.answered}")
        if len(outcomes) != len(upload.batches):
            raise self.fail(f"{where}: {len(outcomes)} outcomes for {len(upload.batches)} batches")
        upload.answered = outcomes
        if upload.key in self.unanswered:
            self.unanswered.remove(upload.key)
        too_old = (
            self.now() - upload.uploaded_ms
            > self.config.max_commit_age_ms - self.config.max_skew_ms
        )
        for batch, outcome in zip(upload.batches, outcomes, strict=True):
            pkey = (batch.topic_id, batch.partition)
            if outcome.error == ErrorCode.request_timed_out:
                if not too_old:
                    raise self.fail(f"{where}: refused as too old, uploaded at {upload.key}")
                self.stats.add("batches refused as too old")
                continue
            if outcome.error == ErrorCode.unknown_topic_or_partition:
                if pkey in self.db.partitions:
                    raise self.fail(f"{where}: refused as unknown, but {pkey} exists")
                continue
            if outcome.error != ErrorCode.none:
                raise self.fail(f"{where}: refused with {outcome.error!r}")
            span = (outcome.base_offset, outcome.base_offset + batch.record_count - 1)
            data = upload.data[batch.byte_offset : batch.byte_offset + batch.byte_length]
            if self.landed.get((pkey, span[0])) != (span[1], data):
                raise self.fail(f"{where}: acknowledged at {span}, which does not hold it")
            acked = self.acked.setdefault(pkey, {})
            if acked.get(span[0], (span[1], data)) != (span[1], data):
                raise self.fail(f"{where}: acknowledged at {span}, another batch was too")
            acked[span[0]] = (span[1], data)
            self.stats.add("batches acknowledged")

    async def fetch(self) -> None:
        """Look coordinates up; read them now or hold them for less than the delete grace."""
        rng = self.rng
        topics = self.alive_topics()
        if not topics or self.reader is None:
            return
        topic = rng.choice(topics)
        pkey = (topic.topic_id, rng.randrange(topic.partition_count))
        log_start, end = self.db.partitions.get(pkey, 0), self.db.high_watermark(pkey)
        if end <= log_start:
            return
        start = rng.randint(log_start, end - 1)
        max_bytes = rng.choice([1, 300, 1 << 20])
        try:
            locations = await self.reader.read_batches(pkey[0], pkey[1], start, end, max_bytes)
        except CoordinatorError:
            return
        now = self.now()
        hold = 0 if rng.random() < 0.3 else rng.randint(1, self.config.delete_grace_ms - 1)
        self.fetches += 1
        fetch = HeldFetch(self.fetches, pkey, locations, now, now + hold)
        self.held.append(fetch)
        self.log(f"fetch {fetch.id} {topic.name}/{pkey[1]}@{start}: {len(locations)} batches")
        if hold == 0:
            await self.finish_fetch(fetch)

    async def finish_fetch(self, fetch: HeldFetch) -> None:
        """Read a held fetch's coordinates from the store (invariant 3)."""
        self.held.remove(fetch)
        age = self.now() - fetch.read_ms
        in_grace = age < self.config.fetch_grace_ms
        for loc in fetch.locations:
            expected = self.landed.get((fetch.pkey, loc.base_offset))
            if expected is None or expected[0] != loc.last_offset:
                raise self.fail(f"fetch {fetch.id}: {loc} is not a batch that was stored")
            for _ in range(50):
                try:
                    [data] = await self.faulty_store.get_ranges(
                        loc.object_key, [(loc.byte_offset, loc.byte_offset + loc.byte_length)]
                    )
                    break
                except ObjectNotFound:
                    if in_grace:
                        raise self.fail(
                            f"fetch {fetch.id}: {loc.object_key} is gone {age} ms after the"
                            f" coordinates were read (grace {self.config.fetch_grace_ms} ms)"
                        ) from None
                    self.stats.add("late fetches missing")
                    self.log(f"fetch {fetch.id}: read {age} ms late, object gone (allowed)")
                    return
                except ObjectStoreError:
                    continue
            else:
                raise self.fail(f"fetch {fetch.id}: 50 GETs of {loc.object_key} failed")
            if bytes(data) != expected[1]:
                raise self.fail(f"fetch {fetch.id}: {loc} read other bytes than were sent")
        self.stats.add("fetches read in grace" if in_grace else "late fetches read")
        if in_grace and age > self.config.fetch_grace_ms * 3 // 4:
            self.stats.add("fetches read near the end of the grace")

    async def finish_due_fetches(self) -> None:
        now = self.now()
        for fetch in [f for f in self.held if f.due_ms <= now]:
            await self.finish_fetch(fetch)

    async def compact(self, compactor: Compactor) -> None:
        # A target that changes from run to run (as after a configuration change):
        # small merges make small level-1 objects, which larger runs merge by FAN_IN.
        target = self.rng.choice([400, 900, self.config.target_object_bytes])
        compactor.config = dataclasses.replace(self.compaction_config, target_object_bytes=target)
        moved = await compactor.compact_once()
        self.log(f"compaction {self.compactors.index(compactor)}: {moved} batches moved")

    async def collect(self, collector: ObjectCollector) -> None:
        scan = self.rng.choice([None, True, False])
        deleted = await collector.collect(scan_orphans=scan)
        self.log(f"gc {self.collectors.index(collector)} (scan {scan}): deleted {deleted}")

    async def retention(self) -> None:
        rng = self.rng
        slot = self.pick_writer()
        try:
            if rng.random() < 0.35:
                moved = await slot.writer.enforce_retention()
                self.log(f"{slot.name} retention: {moved} partitions")
                return
            topics = self.alive_topics()
            if not topics:
                return
            topic = rng.choice(topics)
            pkey = (topic.topic_id, rng.randrange(topic.partition_count))
            log_start, end = self.db.partitions.get(pkey, 0), self.db.high_watermark(pkey)
            offset = -1 if rng.random() < 0.1 else rng.randint(log_start, end)
            [(error, start)] = await slot.writer.advance_log_starts([(pkey[0], pkey[1], offset)])
            self.log(f"{slot.name} delete records {topic.name}/{pkey[1]} to {offset}: {error.name}")
            if error == ErrorCode.none and self.db.partitions.get(pkey, -1) < start:
                raise self.fail(f"delete records answered log start {start}, stored lower")
        except CoordinatorError as e:
            self.log(f"{slot.name} retention: {e!r}")

    async def topic_change(self) -> None:
        rng = self.rng
        slot = self.pick_writer()
        alive = {t.name: t for t in self.alive_topics()}
        missing = sorted(set(TOPICS) - set(alive))
        try:
            if missing and (len(alive) < 2 or rng.random() < 0.6):
                name = rng.choice(missing)
                partitions, configs = TOPICS[name]
                error, _ = await slot.writer.create_topic(name, partitions, configs)
                self.log(f"{slot.name} create {name}: {error.name}")
            elif len(alive) >= 2:
                name = rng.choice(sorted(alive))
                error = await slot.writer.delete_topic(name)
                if alive[name].topic_id not in self.dropped_topics:
                    self.dropped_topics.append(alive[name].topic_id)
                self.log(f"{slot.name} delete {name}: {error.name}")
        except CoordinatorError as e:
            self.log(f"{slot.name} topic change: {e!r}")

    async def tick_all(self) -> None:
        order = list(self.writers)
        self.rng.shuffle(order)
        for slot in order:
            was = slot.writer.is_writer
            await slot.writer.tick()
            if was != slot.writer.is_writer:
                became = "became writer" if slot.writer.is_writer else "stepped down"
                self.log(f"{slot.name} {became}")

    async def advance(self) -> None:
        rng = self.rng
        config = self.config
        kind = rng.random()
        edges = [f.read_ms + config.fetch_grace_ms - 1 for f in self.held]
        if edges and min(edges) > self.now() and kind < 0.25:
            # The last millisecond a held fetch may still read: collect, then read it.
            edge = min(edges)
            self.clock.advance(edge - self.now())
            self.log(f"advance to the edge of a held fetch's grace ({edge})")
            await self.collect(rng.choice(self.collectors))
            for fetch in [f for f in self.held if f.read_ms + config.fetch_grace_ms - 1 == edge]:
                await self.finish_fetch(fetch)
            await self.tick_all()
            return
        if kind < 0.7:
            ms = rng.randint(1, config.lease_ms // 2)
        elif kind < 0.92:
            ms = rng.randint(config.lease_ms // 2, config.delete_grace_ms)
        else:
            ms = rng.randint(config.delete_grace_ms, config.max_commit_age_ms)
        self.clock.advance(ms)
        self.log(f"advance {ms} ms")
        await self.tick_all()

    async def failover(self) -> None:
        """The writer crashes; a new process (new holder) starts; the lease runs out."""
        leading = [w for w in self.writers if w.writer.is_writer]
        victim = self.rng.choice(leading or self.writers)
        self.writers.remove(victim)
        slot = await self.spawn_writer()
        self.clock.advance(self.config.lease_ms + 1)
        self.log(f"crash {victim.name}, start {slot.name}, advance past the lease")
        for _ in range(5):
            await self.tick_all()
            if any(w.writer.is_writer for w in self.writers):
                break

    async def concurrent(self) -> None:
        rng = self.rng
        actions: list[Awaitable[None]] = []
        names: list[str] = []
        collectors = list(self.collectors)
        compactors = list(self.compactors)
        for _ in range(rng.randint(2, 4)):
            kind = rng.choices(
                ["gc", "compact", "produce", "resend", "retention", "fetch"], [5, 3, 4, 1, 2, 2]
            )[0]
            if kind == "gc" and collectors:
                actions.append(self.collect(collectors.pop(rng.randrange(len(collectors)))))
            elif kind == "compact" and compactors:
                actions.append(self.compact(compactors.pop(rng.randrange(len(compactors)))))
            elif kind == "produce":
                actions.append(self.produce())
            elif kind == "resend":
                actions.append(self.resend())
            elif kind == "retention":
                actions.append(self.retention())
            elif kind == "fetch":
                actions.append(self.fetch())
            else:
                continue
            names.append(kind)
        self.log(f"concurrently: {', '.join(names)}")
        await asyncio.gather(*actions)

    # Steps ------------------------------------------------------------------------------------
    async def run(self) -> None:
        with deterministic_uuid4(random.Random(self.rng.getrandbits(64))):
            await self.setup()
            self.check()
            for step in range(1, self.config.steps + 1):
                self.step = step
                try:
                    await asyncio.wait_for(self.one_step(), 30)
                except TimeoutError:
                    raise self.fail("the step did not finish (a deadlock?)") from None
                self.check()
            await self.heal()

    async def one_step(self) -> None:
        await self.finish_due_fetches()
        names, weights = zip(*self.config.weights, strict=True)
        choice = self.rng.choices(names, weights)[0]
        self.stats.add(f"step {choice}")
        if choice == "produce":
            await self.produce()
        elif choice == "resend":
            await self.resend()
        elif choice == "fetch":
            await self.fetch()
        elif choice == "compact":
            self.stall_allowed = True
            try:
                await self.compact(self.rng.choice(self.compactors))
            finally:
                self.stall_allowed = False
        elif choice == "retention":
            await self.retention()
        elif choice == "topic":
            await self.topic_change()
        elif choice == "gc":
            await self.collect(self.rng.choice(self.collectors))
        elif choice == "advance":
            await self.advance()
        elif choice == "failover":
            await self.failover()
        else:
            await self.concurrent()

    async def heal(self) -> None:
        """Faults off; past every grace period; collect until nothing is left (invariant 4)."""
        self.step += 1
        self.log("heal: faults off, past every grace period, collect until done")
        for fetch in list(self.held):
            await self.finish_fetch(fetch)
        for handle in self.handles:
            handle.enabled = False
        await self.collect_all()

    async def collect_all(self) -> None:
        """Past every grace period, collect until nothing is left; then the store holds
        exactly the referenced objects (markers have none) and the table nothing else."""
        config = self.config
        self.clock.advance(
            config.orphan_grace_ms + config.delete_grace_ms + config.lease_ms + config.max_skew_ms
        )
        backend = MemoryBackend(self.db)
        await backend.open()
        collector = ObjectCollector(backend, self.store, self.skewed(), self.gc_config)
        for _ in range(1_000):
            before = (collector.stats.tombstones_purged, collector.stats.errors)
            deleted = await collector.collect(scan_orphans=True)
            if (
                deleted == 0
                and (collector.stats.tombstones_purged, collector.stats.errors) == before
            ):
                break
        else:
            raise self.fail("garbage collection did not finish in 1,000 passes")
        if collector.stats.errors:
            raise self.fail(f"garbage collection failed without faults: {collector.stats}")
        self.check()
        db = self.db
        referenced = {
            db.objects[row.object_id].key for part in db.batches.values() for row in part.rows
        }
        stored = set(self.store.objects) - set(self.foreign)
        if any(key not in self.store.objects for key in self.foreign):
            raise self.fail("a key Driftlog did not make was deleted")
        in_store = {key for key in referenced if not is_marker_key(key)}
        if stored != in_store:
            extra = sorted(stored - in_store)
            missing = sorted(in_store - stored)
            kinds = [
                "orphan"
                if k not in db.object_ids_by_key
                else str(db.objects[db.object_ids_by_key[k]])
                for k in extra[:5]
            ]
            raise self.fail(
                f"after healing the store holds {len(extra)} unreferenced objects {extra[:5]}"
                f" ({kinds}) and misses {len(missing)} referenced ones {missing[:5]}"
            )
        newest = max(db.objects, default=0)
        left = [
            o
            for o in db.objects.values()
            if o.key not in referenced and not (o.object_id == newest and o.deleted_ms is not None)
        ]
        if left:
            raise self.fail(f"after healing the objects table still holds {left[:5]}")
        self.stats.add("objects at the end", len(stored))

    # Invariants -------------------------------------------------------------------------------
    def check(self) -> None:
        if self.violations:
            raise self.fail("; ".join(self.violations))
        db = self.db
        store = self.store.objects
        counted: collections.Counter[int] = collections.Counter()
        for pkey, part in db.batches.items():
            if not part.rows:
                continue
            if pkey not in db.partitions:
                raise self.fail(f"{len(part.rows)} batches stored for missing partition {pkey}")
            log_start = db.partitions[pkey]
            first = part.rows[0]
            if not first.base_offset <= log_start <= first.last_offset:
                raise self.fail(
                    f"{pkey}: log start {log_start}, first batch"
                    f" {first.base_offset}-{first.last_offset}"
                )
            expected_base = first.base_offset
            for row in part.rows:
                where = f"{pkey}@{row.base_offset}-{row.last_offset}"
                if row.base_offset != expected_base:
                    raise self.fail(f"{where}: offsets not dense (expected {expected_base})")
                expected_base = row.last_offset + 1
                counted[row.object_id] += 1
                obj = db.objects.get(row.object_id)
                if obj is None or obj.dead_since_ms is not None or obj.deleted_ms is not None:
                    raise self.fail(f"{where}: names object {row.object_id}, which is {obj}")
                stored = store.get(obj.key)
                if stored is None:
                    raise self.fail(f"{where}: names {obj.key}, which is not in the store")
                data = stored[0][row.byte_offset : row.byte_offset + row.byte_length]
                if self.landed.get((pkey, row.base_offset)) != (row.last_offset, data):
                    raise self.fail(f"{where}: {obj.key} holds other bytes than were sent")
        for object_id, obj in db.objects.items():
            references = db.references.get(object_id, 0)
            if references != counted[object_id]:
                raise self.fail(
                    f"object {obj} counts {references} references, has {counted[object_id]}"
                )
            if references == 0 and obj.dead_since_ms is None:
                raise self.fail(f"object {obj} has no batches but is not dead")
        for pkey, acked in self.acked.items():
            if pkey not in db.partitions:
                continue  # its topic was deleted
            log_start = db.partitions[pkey]
            rows = db.batch_rows(pkey)
            if not rows:
                if any(last >= log_start for last, _ in acked.values()):
                    raise self.fail(f"{pkey}: acknowledged batches past {log_start} are gone")
                continue
            for base, (last, data) in acked.items():
                if last < log_start:
                    continue
                index = bisect.bisect_left(rows, base, key=lambda r: r.base_offset)
                if index == len(rows) or (rows[index].base_offset, rows[index].last_offset) != (
                    base,
                    last,
                ):
                    raise self.fail(f"{pkey}: acknowledged {base}-{last} is not stored")
                if self.landed[(pkey, base)][1] != data:
                    raise self.fail(f"{pkey}: acknowledged {base}-{last} stored other bytes")

    def summary(self) -> dict[str, int]:
        out = dict(self.stats.counts)
        for name in ("dead_deleted", "orphans_deleted", "tombstones_purged", "errors"):
            out[f"gc {name}"] = sum(getattr(c.stats, name) for c in self.collectors)
        out["compaction batches moved"] = sum(c.stats.batches_moved for c in self.compactors)
        out["compaction errors"] = sum(c.stats.errors for c in self.compactors)
        out["store faults"] = self.faulty_store.injected
        out["backend faults"] = sum(len(h.injected) for h in self.handles)
        return out


def run_seed(seed: int, steps: int = 300, config: SimConfig | None = None) -> Sim:
    """Run one seed (raises `SimFailure`); the same seed and config replay it exactly."""
    sim = Sim(seed, config or SimConfig(steps=steps))
    asyncio.run(sim.run())
    return sim
