"""A seeded, deterministic simulation of key compaction (`cleanup.policy=compact`).

It extends the lifecycle simulation (`sim/lifecycle.py`: writers over faulty backend
handles on one `MemoryDatabase`, the seeded `FaultyObjectStore` over an in-memory store,
skewed clocks, object compaction, garbage collection, failover) with what key compaction
needs. One seed drives the workload, the faults and the interleavings; `run_seed(seed,
steps)` replays it exactly.

The workload:

- producers write real record batches of keyed records, some of them tombstones (null
  values), with every codec (snappy raw and xerial-framed), record headers, and producer
  ids, epochs and sequences in the header, to `kc` (cleanup.policy=compact, a tiny
  min.cleanable.dirty.ratio, delete.retention.ms and min.compaction.lag.ms of seconds),
  `kd` (compact,delete, a time retention, max.compaction.lag.ms) and `plain` (never to be
  touched by key compaction); the lifecycle simulation's produce flow (lost
  acknowledgements, crashes before the commit, delayed commits and re-sends);
- transactional producers (`TxnClient`): InitProducerId, AddPartitionsToTxn,
  transactional batches, EndTxn commit or abort; after any error or unknown outcome a new
  InitProducerId (which aborts what is open and bumps the epoch); the writer's timeouts
  (`expire_transactions`) after clock jumps. So the last stable offset holds cleaning
  back and aborted records lie in the log;
- key compaction passes (`KeyCompactor.compact_once`, or `clean_partition` per
  partition) with a key map of a few entries (passes end part way) and small chunks (a
  pass is several swaps), swapping through the writer of the compactor's agent
  (`CommitWriter.rewrite_batches`) and reading an agent's view (a `CoordinatorView` the
  writers feed, as in an agent);
- between a pass's reads and any of its swaps (the final stamp included), now and then:
  object compaction (`Compactor`), DeleteRecords or time retention, a produce, a
  transaction step, garbage collection, a read, a clock jump, a writer failover, or a
  stall past the delete grace period (object compaction, then garbage collection);
- crashes: a pass cancelled after a seeded number of event-loop turns, then a fresh
  `KeyCompactor` (other clock skew, map and chunk sizes); now and then the compactor of
  a deposed writer (a zombie agent) runs a pass;
- reads through the agents' view, whose cached tail may name batches a swap replaced
  (a missing object makes the read look its coordinates up again, as Fetch does).

The model is what the database accepted, seen by hooks under the faulty handles (so
writes whose replies were lost count): every committed batch and its records, every
transaction marker, every record a swap removed (and when), every cleaning pass stored.

Invariants. At each swap the database accepts (`KeyTrackedBackend.rewrite_batches`):

A. a rewritten batch is in the store at its new place, has a valid CRC, the header of
   the batch it replaces (base offset, last offset delta, base timestamp, leader epoch,
   attributes, producer id and epoch, base sequence), a max timestamp matching its
   records, and a subset of its records, byte for byte; the rows changed are the ones
   the call reports; no batch of a topic that is not compacted, and never a partition's
   newest batch, is touched;
B. a removed record was aborted, or has a later committed record of its key below the
   last stable offset in a batch older than min.compaction.lag.ms (clock skew allowed
   for), or is a tombstone removed no earlier than delete.retention.ms after the first
   stored pass that passed it (on the compactors' clocks) with no older committed record
   of its key left behind (it would come back). A record of an open transaction is never
   removed.

After every step (`check`, `read_checks`), per compacted partition, a read_committed read
from the log start to the last stable offset through a view loaded from the database
(`find_batches`, `aborted_transactions`), the store (`BatchFetcher`, offsets stamped as a
Fetch serves them) and `decode_records`, with Kafka's consumer filter:

1. each key's latest committed record is what the read shows as its latest: a value
   exactly (never lost), a tombstone either itself or nothing;
2. the read never shows an older record of a key as its latest (no resurrection, also
   after a tombstone went), nor a record of an aborted or open transaction, nor a record
   that was not committed at that offset;
3. offsets only increase; every batch has a valid CRC, its assigned base offset and last
   offset, and the header fields of the batch that was produced (checks as in A); the
   records stored are exactly those committed and not removed by a swap;
4. tombstones go only as B says, so a key deleted by a tombstone never comes back;
5. below the partition's stored cleaned offset (from the log start) each key has at
   most one record and no aborted record is left (the promise the next pass relies on);
6. the view's last stable offset is the model's; the high watermark the database derives
   from its rows is the last committed offset + 1; rows name live objects in the store,
   and reference counts are exact; a `cleanup.policy=compact` topic's log start moves by
   DeleteRecords, or past no key's latest committed record (checked when the database
   accepts it).

Reads through the agents' view (a `fetch` step; a slow one lets compaction and GC run
between its lookup and its GETs) must meet 1 to 3 (a stale cached coordinate may show
records a swap removed since) up to their own last stable offset, never past the model's.

At the end (`heal`): faults off, every transaction ended, the clock past every lag; a
pass over every compacted partition leaves at most one record per key below its newest
batch (but for a batch the log start cuts: never counted dirty, it waits for more data);
delete.retention.ms later another leaves no tombstone there; garbage collection then
leaves exactly the objects rows name.

Real bugs found are in `KNOWN_BUGS`; the workload steps around each until it is fixed.
A failure raises `SimFailure` naming the seed and the recent steps.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cramjam
import crc32c
from kio.schema.errors import ErrorCode
from sim.lifecycle import (
    SHARD,
    Sim,
    SimConfig,
    SimFailure,
    SkewedClock,
    TrackedBackend,
    Upload,
    WriterSlot,
)

from driftlog.coordinator.api import BatchLocation, BatchToCommit, CommitOutcome, CoordinatorError
from driftlog.coordinator.core.retention import RetentionPolicy
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject
from driftlog.coordinator.core.transactions import AbortedTxn
from driftlog.coordinator.engines.backend import (
    BatchRemoval,
    BatchRewrite,
    Fence,
    KeyCleanState,
    LogStart,
    NewObject,
    TxnWrite,
)
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase, StoredBatch
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.coordinator.runtime.writer import CommitWriter
from driftlog.lifecycle.compactor import Compactor
from driftlog.lifecycle.gc import ObjectCollector
from driftlog.lifecycle.key_cleaning import KEY_MAP_ENTRY_BYTES, KeyCompactionPolicy, policy_for
from driftlog.lifecycle.key_compactor import KeyCompactionConfig, KeyCompactor, Rewrite
from driftlog.read.cache import BatchCache
from driftlog.read.fetcher import BatchFetcher, ReadFailure
from driftlog.records.batch import InvalidBatch, parse_header
from driftlog.records.control import is_marker_key
from driftlog.records.recordset import Record, decode_records
from driftlog.storage.api import ObjectNotFound, ObjectStore, ObjectStoreError
from driftlog.storage.keys import new_object_key

__all__ = ["KNOWN_BUGS", "KeySim", "KeySimConfig", "SimFailure", "run_seed"]

# name -> (partitions, configs)
KEY_TOPICS: dict[str, tuple[int, dict[str, str]]] = {
    "kc": (
        2,
        {
            "cleanup.policy": "compact",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "15000",
            "min.compaction.lag.ms": "3000",
        },
    ),
    "kd": (
        1,
        {
            "cleanup.policy": "compact,delete",
            "retention.ms": "400000",
            "min.cleanable.dirty.ratio": "0.3",
            "max.compaction.lag.ms": "20000",
            "delete.retention.ms": "6000",
        },
    ),
    "plain": (1, {}),
}
TOPIC_WEIGHTS = {"kc": 6, "kd": 3, "plain": 1}

KEY_STEP_WEIGHTS = (
    ("produce", 24),
    ("txn", 12),
    ("resend", 4),
    ("key compaction", 16),
    ("compact", 6),
    ("delete records", 4),
    ("gc", 7),
    ("advance", 14),
    ("failover", 2),
    ("fetch", 5),
    ("concurrent", 8),
)

# Real bugs this simulation found in src/. Until they are fixed the workload steps around
# each (`KeySimConfig.workarounds`, each as narrow as the bug); the tests keep seeds that
# find each one without its workaround.
KNOWN_BUGS: dict[str, str] = {}
# Found and fixed (their workarounds stay in the model, unused; the seeds that found them
# run as regression tests): "missing object stops key compaction" (ObjectNotFound ended
# the whole run), "unopenable batch" (a batch that could not be opened was left unfiltered
# but its range stamped clean, so a superseded value outlived its tombstone: cleaning now
# stops before it), "retention on compact topics" (retention.ms deleted compact-only
# topics' records; retention now also leaves a compacted log's head gap alone).

_HEADER = struct.Struct(">qiibIhiqqqhii")
# Header fields a rewrite keeps (by index in _HEADER), and their names.
_KEPT_FIELDS = {
    2: "partition leader epoch",
    3: "magic",
    5: "attributes",
    6: "last offset delta",
    7: "base timestamp",
    9: "producer id",
    10: "producer epoch",
    11: "base sequence",
}
_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
COMMITTED, ABORTED, OPEN = "committed", "aborted", "open"


@dataclass(frozen=True, slots=True)
class KeySimConfig(SimConfig):
    steps: int = 150
    keys: int = 8  # distinct keys per partition
    tombstone_rate: float = 0.2
    map_entries: tuple[int, int] = (2, 12)  # key map size of each compactor, drawn
    chunk_bytes: tuple[int, ...] = (150, 500, 2_000, 1 << 20)
    interleave: float = 0.3  # chance of an action before each swap of a lone pass
    crash: float = 0.2  # chance that a pass is cancelled part way
    zombie: float = 0.1  # chance that a deposed writer's compactor runs the pass
    txn_timeout_ms: int = 45_000
    key_weights: tuple[tuple[str, int], ...] = KEY_STEP_WEIGHTS
    workarounds: frozenset[str] = frozenset(KNOWN_BUGS)

    @property
    def broker_retention_ms(self) -> int:
        """The writers' --log-retention-ms: Kafka's default, or less than a run lasts."""
        if "retention on compact topics" in self.workarounds:
            return 7 * 24 * 3600 * 1000
        return 60_000


# Record batches -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        out.append(byte | (0x80 if raw else 0))
        if not raw:
            return bytes(out)


def encode_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    body = b"\x00" + _varint(timestamp_delta) + _varint(offset_delta)
    body += _varint(len(key)) + key
    body += _varint(-1) if value is None else _varint(len(value)) + value
    body += _varint(len(headers))
    for name, data in headers:
        body += _varint(len(name)) + name + _varint(len(data)) + data
    return _varint(len(body)) + body


def compress(codec: int, data: bytes, *, xerial: bool) -> bytes:
    """The codecs as producers use them (independently of records/recordset.py)."""
    if codec == 1:
        return bytes(cramjam.gzip.compress(data))
    if codec == 2 and xerial:
        block = bytes(cramjam.snappy.compress_raw(data))
        return _XERIAL_HEADER + struct.pack(">i", len(block)) + block
    if codec == 2:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.compress(data))
    if codec == 4:
        return bytes(cramjam.zstd.compress(data))
    return data


def build_batch(
    records: Sequence[bytes],
    timestamp_deltas: Sequence[int],
    base_timestamp_ms: int,
    *,
    codec: int,
    xerial: bool,
    transactional: bool,
    producer: tuple[int, int, int],
    leader_epoch: int,
) -> bytes:
    """A magic-2 batch of encoded records (offset deltas 0..n-1), base offset 0 as sent."""
    body = compress(codec, b"".join(records), xerial=xerial)
    out = bytearray(61)
    _HEADER.pack_into(
        out, 0, 0, 61 + len(body) - 12, leader_epoch, 2, 0,
        codec | (0x10 if transactional else 0), len(records) - 1, base_timestamp_ms,
        base_timestamp_ms + max(timestamp_deltas), *producer, len(records),
    )  # fmt: skip
    out += body
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


# The model: what the database accepted ------------------------------------------------------


class Rec(NamedTuple):
    offset: int
    key: bytes
    tombstone: bool
    raw: bytes
    batch_base: int
    producer_id: int  # -1: not transactional
    max_timestamp_ms: int  # of its batch, as committed


class Original(NamedTuple):
    """A batch as it was produced (base offset 0) and committed."""

    last_offset: int
    data: bytes


@dataclass(slots=True)
class PartitionModel:
    name: str
    policy: KeyCompactionPolicy
    compact_only: bool
    records: dict[int, Rec] = field(default_factory=dict)
    by_key: dict[bytes, list[int]] = field(default_factory=dict)  # offsets, ascending
    originals: dict[int, Original] = field(default_factory=dict)  # by base offset
    txn_bases: dict[int, list[int]] = field(default_factory=dict)  # producer -> bases
    marker_offsets: dict[int, list[int]] = field(default_factory=dict)  # producer -> offsets
    marker_commits: dict[int, list[bool]] = field(default_factory=dict)
    markers: dict[int, tuple[int, bool]] = field(default_factory=dict)  # offset -> (pid, commit)
    next_offset: int = 0
    removed: dict[int, int] = field(default_factory=dict)  # offset -> true time removed
    passes: set[tuple[int, int]] = field(default_factory=set)  # (end offset, at ms) stored
    deletable_to: int = 0  # the highest log start DeleteRecords asked for

    def add_batch(self, location: BatchLocation, data: bytes) -> None:
        header, records = decode_records(data)
        base = location.base_offset
        pid = header.producer_id if header.is_transactional else -1
        self.originals[base] = Original(location.last_offset, data)
        for r in records:
            assert r.key is not None
            offset = base + r.offset_delta
            self.records[offset] = Rec(
                offset, r.key, r.is_tombstone, r.raw, base, pid, location.max_timestamp_ms
            )
            bisect.insort(self.by_key.setdefault(r.key, []), offset)
        if pid >= 0:
            bisect.insort(self.txn_bases.setdefault(pid, []), base)
        self.next_offset = max(self.next_offset, location.last_offset + 1)

    def add_marker(self, producer_id: int, offset: int, commit: bool) -> None:
        offsets = self.marker_offsets.setdefault(producer_id, [])
        at = bisect.bisect_left(offsets, offset)
        offsets.insert(at, offset)
        self.marker_commits.setdefault(producer_id, []).insert(at, commit)
        self.markers[offset] = (producer_id, commit)
        self.next_offset = max(self.next_offset, offset + 1)

    def status(self, rec: Rec) -> str:
        if rec.producer_id < 0:
            return COMMITTED
        offsets = self.marker_offsets.get(rec.producer_id, [])
        at = bisect.bisect_right(offsets, rec.batch_base)
        if at == len(offsets):
            return OPEN
        return COMMITTED if self.marker_commits[rec.producer_id][at] else ABORTED

    def last_stable(self, log_start: int) -> int:
        stable = self.next_offset
        for pid, bases in self.txn_bases.items():
            offsets = self.marker_offsets.get(pid)
            at = bisect.bisect_right(bases, offsets[-1]) if offsets else 0
            if at < len(bases):
                stable = min(stable, bases[at])
        return max(stable, log_start)

    def first_pass_ms(self, offset: int) -> int | None:
        times = [at for end, at in self.passes if end > offset]
        return min(times) if times else None

    def present(self, offset: int, log_start: int) -> bool:
        return offset >= log_start and offset not in self.removed


class PartitionRead(NamedTuple):
    start: int
    end: int  # the last stable offset the view gave
    stored: dict[int, Record]  # every record of the batches read, from `start`
    shown: dict[int, Record]  # what a read_committed consumer gets


# The workload's actors ----------------------------------------------------------------------


@dataclass(slots=True)
class TxnClient:
    """A transactional producer, as Kafka's clients behave (simplified: any trouble
    makes it start over with InitProducerId, which aborts what is open)."""

    transactional_id: str
    producer_id: int = -1
    epoch: int = -1
    ready: bool = False
    ongoing: bool = False
    batches: int = 0
    partitions: set[PartitionKey] = field(default_factory=set)
    next_sequence: dict[PartitionKey, int] = field(default_factory=dict)


@dataclass(slots=True)
class KeyCompactorSlot:
    name: str
    writer: WriterSlot  # the writer of its agent: its swaps go there
    compactor: KeyCompactor


class KeyTrackedBackend(TrackedBackend):
    """A writer's handle that also reports transaction markers and key compaction's swaps
    as the database accepts them."""

    def __init__(self, database: MemoryDatabase, sim: KeySim) -> None:
        super().__init__(database, sim)
        self.key_sim = sim

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        await super().persist_transactions(fence, write)
        self.key_sim.on_markers(write.markers)

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        before = {
            (s.topic_id, s.partition): self.database.partitions.get((s.topic_id, s.partition), 0)
            for s in starts
        }
        await super().set_log_starts(fence, starts, now_ms)
        self.key_sim.on_log_starts(before)

    async def rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        before = self.key_sim.rows_before([*rewrites, *removals])
        changed = await super().rewrite_batches(
            fence, new_object, rewrites, removals, state, now_ms
        )
        self.key_sim.on_rewritten(new_object, rewrites, removals, state, before, changed)
        return changed


# The simulation -------------------------------------------------------------------------------


class KeySim(Sim):
    def __init__(self, seed: int, config: KeySimConfig) -> None:
        super().__init__(seed, config)
        self.kconfig = config
        # The agents' view (the writers feed it) and one loaded from the database for checks.
        self.view_handle = self.handle(MemoryBackend(self.db))
        self.view = CoordinatorView(self.view_handle)
        self.check_backend = MemoryBackend(self.db)
        self.check_view = CoordinatorView(self.check_backend)
        self.models: dict[PartitionKey, PartitionModel] = {}
        self.clients = [TxnClient(f"txn-{i}") for i in range(2)]
        self.txn_uploads: dict[str, TxnClient] = {}
        self.key_compactors: list[KeyCompactorSlot] = []
        self.key_compactors_made = 0
        self.interleaving = False
        self.key_compaction_running = 0
        self.concurrently = False  # a `concurrent` step runs

    # Wiring -----------------------------------------------------------------------------------
    async def spawn_writer(self) -> WriterSlot:
        self.writer_count += 1
        name = f"w{self.writer_count}"
        faulty = self.handle(KeyTrackedBackend(self.db, self))
        await self.open(faulty)
        writer = CommitWriter(
            faulty,
            self.skewed(),
            self.view,
            holder=name,
            shard=SHARD,
            lease_ms=self.config.lease_ms,
            retention=RetentionPolicy(retention_ms=self.kconfig.broker_retention_ms),
            max_commit_age_ms=self.config.max_commit_age_ms,
        )
        slot = WriterSlot(name, faulty, writer)
        self.writers.append(slot)
        return slot

    async def setup(self) -> None:
        await self.open(self.view_handle)
        await self.check_backend.open()
        for _ in range(self.config.writers):
            await self.spawn_writer()
        first = self.writers[0]
        first.faulty.enabled = False
        while not first.writer.is_writer:
            await first.writer.tick()
        for name, (partitions, configs) in KEY_TOPICS.items():
            error, topic = await first.writer.create_topic(name, partitions, configs)
            assert error == ErrorCode.none and topic is not None
            policy = policy_for(configs)
            if policy is None:
                continue
            compact_only = "delete" not in configs["cleanup.policy"].split(",")
            for partition in range(partitions):
                self.models[(topic.topic_id, partition)] = PartitionModel(
                    f"{name}/{partition}", policy, compact_only
                )
        first.faulty.enabled = True
        for _ in range(2):
            faulty = self.handle(MemoryBackend(self.db))
            await self.open(faulty)
            self.collectors.append(
                ObjectCollector(faulty, self.faulty_store, self.skewed(), self.gc_config)
            )
            faulty = self.handle(MemoryBackend(self.db))
            await self.open(faulty)
            self.compactors.append(
                Compactor(
                    faulty, self.faulty_store, self.skewed(), self.relocate,
                    self.compaction_config,
                )
            )  # fmt: skip
        self.view_handle.enabled = False
        await self.view.load()
        self.view_handle.enabled = True
        await self.check_view.load()
        await self.new_key_compactor()
        self.log(f"setup: {first.name} writer, topics {sorted(KEY_TOPICS)}")

    async def new_key_compactor(self, writer: WriterSlot | None = None) -> KeyCompactorSlot:
        rng = self.rng
        if writer is None:
            leading = [w for w in self.writers if w.writer.is_writer]
            writer = rng.choice(leading or self.writers)
        self.key_compactors_made += 1
        faulty = self.handle(MemoryBackend(self.db))
        await self.open(faulty)
        config = KeyCompactionConfig(
            interval_ms=1_000,
            map_bytes=KEY_MAP_ENTRY_BYTES * rng.randint(*self.kconfig.map_entries),
            chunk_bytes=rng.choice(self.kconfig.chunk_bytes),
        )
        compactor = KeyCompactor(
            faulty, self.view, self.faulty_store, self.skewed(), self.swap_through(writer), config
        )
        slot = KeyCompactorSlot(f"kc{self.key_compactors_made}@{writer.name}", writer, compactor)
        self.key_compactors.append(slot)
        return slot

    def swap_through(self, writer: WriterSlot) -> Rewrite:
        """The compactor's swap: its agent's writer, sometimes after an interleaved action."""

        async def rewrite(
            key: str | None,
            size: int,
            rewrites: Sequence[BatchRewrite],
            removals: Sequence[BatchRemoval],
            state: KeyCleanState | None,
        ) -> int | None:
            if self.interleaving and self.rng.random() < self.kconfig.interleave:
                await self.interleave()
            return await writer.writer.rewrite_batches(key, size, rewrites, removals, state)

        return rewrite

    # Hooks: what the database accepted, as it happens -----------------------------------------
    def on_persisted(self, objects: Sequence[SequencedObject]) -> None:
        super().on_persisted(objects)
        for obj in objects:
            upload = self.uploads.get(obj.object_key)
            if upload is None:
                continue
            for row in obj.rows:
                model = self.models.get((row.topic_id, row.partition))
                if model is None:
                    continue
                loc = row.location
                if loc.base_offset in model.originals:
                    continue  # reported by the lifecycle check ("stored twice")
                model.add_batch(
                    loc, upload.data[loc.byte_offset : loc.byte_offset + loc.byte_length]
                )

    def on_markers(self, markers: Sequence[SequencedObject]) -> None:
        for obj in markers:
            for close in obj.txn_closes or ():
                model = self.models.get((close.topic_id, close.partition))
                if model is not None:
                    model.add_marker(close.producer_id, close.marker_offset, close.commit)

    def on_log_starts(self, before: dict[PartitionKey, int]) -> None:
        """Invariant 6: a compact-only topic's log start moves by DeleteRecords, or past no
        key's latest committed record (over a gap key compaction left, say)."""
        for pkey, old in before.items():
            model = self.models.get(pkey)
            new = self.db.partitions.get(pkey, 0)
            if model is None or not model.compact_only or new <= max(old, model.deletable_to):
                continue
            lost = []
            for offset in range(max(old, model.deletable_to), new):
                rec = model.records.get(offset)
                if rec is None or not model.present(offset, old) or model.status(rec) != COMMITTED:
                    continue
                later = model.by_key[rec.key]
                if not any(
                    model.status(model.records[o]) == COMMITTED
                    for o in later[bisect.bisect_left(later, new) :]
                ):
                    lost.append(f"{rec.key!r}@{offset}")  # its key's latest committed record
            if lost:
                self.violation(
                    f"{model.name}: the log start of a cleanup.policy=compact topic moved from"
                    f" {old} to {new} (DeleteRecords asked for {model.deletable_to} at most),"
                    f" past {lost[:5]}"
                )
            self.stats.add("compact log starts moved over a gap")

    def rows_before(
        self, changes: Sequence[BatchRewrite | BatchRemoval]
    ) -> dict[tuple[PartitionKey, int], tuple[StoredBatch, bool]]:
        """The rows a swap may change (those still in the object they were read from), and
        whether each is its partition's newest."""
        out: dict[tuple[PartitionKey, int], tuple[StoredBatch, bool]] = {}
        for change in changes:
            pkey = (change.topic_id, change.partition)
            part = self.db.batches.get(pkey)
            if part is None:
                continue
            at = part.from_last_offset(change.last_offset)
            if at == len(part.rows) or part.last_offsets[at] != change.last_offset:
                continue
            if part.rows[at].object_id == change.from_object_id:
                out[(pkey, change.last_offset)] = (part.rows[at], at == len(part.rows) - 1)
        return out

    def row_now(self, pkey: PartitionKey, last_offset: int) -> StoredBatch | None:
        part = self.db.batches.get(pkey)
        if part is None:
            return None
        at = part.from_last_offset(last_offset)
        if at == len(part.rows) or part.last_offsets[at] != last_offset:
            return None
        return part.rows[at]

    def stored_bytes(self, key: str, offset: int, length: int) -> bytes | None:
        stored = self.store.objects.get(key)
        return None if stored is None else stored[0][offset : offset + length]

    def on_rewritten(
        self,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        before: dict[tuple[PartitionKey, int], tuple[StoredBatch, bool]],
        changed: int,
    ) -> None:
        """Invariants A and B, at the moment the database accepted a swap."""
        db = self.db
        now = self.now()
        done = 0
        removed: list[tuple[PartitionModel, PartitionKey, Rec]] = []
        if rewrites and (new_object is None or new_object.key not in self.store.objects):
            self.violation(f"a swap points batches at {new_object}, which is not in the store")
            return
        changes: list[BatchRewrite | BatchRemoval] = [*rewrites, *removals]
        for change in changes:
            pkey = (change.topic_id, change.partition)
            found = before.get((pkey, change.last_offset))
            if found is None:
                continue  # moved or deleted meanwhile: left alone
            row, newest = found
            model = self.models.get(pkey)
            where = f"{model.name if model else pkey}@{row.base_offset}-{row.last_offset}"
            if model is None:
                self.violation(f"key compaction changed {where}, of a topic not compacted")
                continue
            if newest:
                self.violation(f"key compaction changed {where}, the partition's newest batch")
            old_object = db.objects.get(row.object_id)
            old = (
                None
                if old_object is None
                else self.stored_bytes(old_object.key, row.byte_offset, row.byte_length)
            )
            if old is None:
                self.violation(f"{where} was swapped out of {old_object}, not in the store")
                continue
            now_row = self.row_now(pkey, change.last_offset)
            kept: set[int] = set()
            if isinstance(change, BatchRewrite):
                assert new_object is not None
                if now_row is None or now_row.object_id != new_object.object_id:
                    self.violation(f"{where} was not rewritten though still in its object")
                    continue
                new = self.stored_bytes(new_object.key, change.byte_offset, change.byte_length)
                if new is None or len(new) != change.byte_length:
                    self.violation(f"{where} rewritten outside {new_object.key}")
                    continue
                try:
                    kept = {r.offset_delta for r in self.same_batch(where, old, new)}
                except SimFailure as e:
                    self.violation(str(e))
                    continue
            elif now_row is not None:
                self.violation(f"{where} was not removed though still in its object")
                continue
            done += 1
            for r in decode_records(old)[1]:
                if r.offset_delta not in kept:
                    offset = row.base_offset + r.offset_delta
                    model.removed[offset] = now
                    removed.append((model, pkey, model.records[offset]))
        if done != changed:
            self.violation(f"a swap changed {done} rows and reported {changed}")
        for model, pkey, rec in removed:
            self.justify_removal(model, rec, now, db.partitions.get(pkey, 0))
        self.stats.add("key compaction swaps")
        if state is not None:
            model = self.models.get((state.topic_id, state.partition))
            if model is not None:
                model.passes.update((p[0], p[1]) for p in state.passes)
                self.stats.add("key compaction passes stored")

    def justify_removal(self, model: PartitionModel, rec: Rec, now: int, log_start: int) -> None:
        """Invariant B for one removed record."""
        what = f"{model.name}: removed {rec.key!r}@{rec.offset}"
        status = model.status(rec)
        if status == ABORTED:
            self.stats.add("aborted records removed")
            return
        if status == OPEN:
            self.violation(f"{what}, a record of an open transaction")
            return
        stable = model.last_stable(log_start)
        old_enough = now + self.config.max_skew_ms // 2 - model.policy.min_lag_ms
        offsets = model.by_key[rec.key]
        reasons = []
        for later in offsets[bisect.bisect_right(offsets, rec.offset) :]:
            other = model.records[later]
            other_status = model.status(other)
            if later >= stable:
                reasons.append(f"{later} is past the last stable offset {stable}")
                break
            if other_status != COMMITTED:
                reasons.append(f"{later} is {other_status}")
            elif other.max_timestamp_ms > old_enough:
                reasons.append(
                    f"{later} is younger than min.compaction.lag.ms"
                    f" ({now - other.max_timestamp_ms} ms old)"
                )
            else:
                self.stats.add("superseded records removed")
                return
        if not rec.tombstone:
            self.violation(
                f"{what}, the latest committed value of its key (later records: {reasons})"
            )
            return
        first = model.first_pass_ms(rec.offset)
        retention = model.policy.delete_retention_ms
        if first is None:
            self.violation(f"{what}, a tombstone no stored pass had passed ({reasons})")
        elif now + self.config.max_skew_ms // 2 < first + retention:
            self.violation(
                f"{what}, a tombstone, {now - first} ms after the first pass that passed it"
                f" (delete.retention.ms {retention}; skew up to {self.config.max_skew_ms})"
            )
        else:
            left = [
                o
                for o in offsets[: bisect.bisect_left(offsets, rec.offset)]
                if model.present(o, log_start) and model.status(model.records[o]) == COMMITTED
            ]
            if left:
                self.violation(
                    f"{what}, a tombstone, while older records of its key are still at {left}"
                    " (the key comes back)"
                )
            self.stats.add("tombstones removed after their retention")

    def same_batch(self, where: str, old: bytes, new: bytes) -> list[Record]:
        """Check that `new` is `old` (as stored or produced) with some of its records: a
        valid CRC, the kept header fields, records a subset of the old ones byte for byte,
        a max timestamp that fits them. Returns the new batch's records."""
        try:
            header = parse_header(new, stored=True)
            _, records = decode_records(new)
        except (InvalidBatch, ValueError) as e:
            raise self.fail(f"{where}: {e}") from None
        if header.size != len(new):
            raise self.fail(f"{where}: {len(new)} bytes, the header says {header.size}")
        fields, old_fields = _HEADER.unpack_from(new), _HEADER.unpack_from(old)
        for index, name in _KEPT_FIELDS.items():
            if fields[index] != old_fields[index]:
                raise self.fail(f"{where}: {name} {fields[index]}, was {old_fields[index]}")
        old_records = {r.offset_delta: r.raw for r in decode_records(old)[1]}
        if len(records) == len(old_records):
            if new[8:] != old[8:]:
                raise self.fail(f"{where}: all records kept, other bytes")
            return records
        previous = -1
        for r in records:
            if r.offset_delta <= previous or old_records.get(r.offset_delta) != r.raw:
                raise self.fail(f"{where}: record at delta {r.offset_delta} is not the one sent")
            previous = r.offset_delta
        if fields[8] != fields[7] + max(r.timestamp_delta for r in records):
            raise self.fail(f"{where}: max timestamp {fields[8]} does not fit its records")
        return records

    # The workload -----------------------------------------------------------------------------
    def keyed_batch(
        self, transactional: tuple[int, int, int] | None = None
    ) -> tuple[bytes, int, int, int, int]:
        """A batch of keyed records: (bytes, records, base timestamp, max timestamp,
        attributes); a transactional one with (producer id, epoch, base sequence)."""
        rng = self.rng
        count = rng.randint(1, 5)
        time_deltas = [rng.randrange(40) for _ in range(count)]
        base_ts = self.now() - rng.randrange(1_500)
        records: list[bytes] = []
        spec: list[tuple[int, bytes, bool]] = []
        for offset_delta, time_delta in enumerate(time_deltas):
            key = b"key-%d" % rng.randrange(self.kconfig.keys)
            value = (
                None
                if rng.random() < self.kconfig.tombstone_rate
                else rng.randbytes(rng.randint(0, 20))
            )
            headers = [(b"h", rng.randbytes(3))] if rng.random() < 0.2 else []
            records.append(encode_record(offset_delta, time_delta, key, value, headers))
            spec.append((offset_delta, key, value is None))
        codec = rng.choice([0, 0, 1, 2, 3, 4])
        producer = transactional or (-1, -1, -1)
        if transactional is None and rng.random() < 0.5:  # an idempotent producer's
            producer = (rng.randrange(1_000), rng.randrange(5), rng.randrange(1_000))
        data = build_batch(
            records, time_deltas, base_ts, codec=codec, xerial=codec == 2 and rng.random() < 0.5,
            transactional=transactional is not None, producer=producer,
            leader_epoch=rng.randrange(-1, 3),
        )  # fmt: skip
        header, decoded = decode_records(data)
        if [(r.offset_delta, r.key, r.is_tombstone) for r in decoded] != spec:
            raise self.fail("decode_records does not read a batch back as it was built")
        return data, count, base_ts, base_ts + max(time_deltas), header.attributes

    def new_upload(self) -> Upload:
        """The lifecycle workload's upload, of keyed batches (non-transactional)."""
        rng = self.rng
        topics = self.alive_topics()
        chunks: list[bytes] = []
        batches: list[BatchToCommit] = []
        position = 0
        for _ in range(rng.randint(1, 3)):
            topic = rng.choices(topics, [TOPIC_WEIGHTS[t.name] for t in topics])[0]
            partition = rng.randrange(topic.partition_count)
            data, count, base_ts, max_ts, attributes = self.keyed_batch()
            batches.append(
                BatchToCommit(
                    topic.topic_id, partition, position, len(data), count, base_ts, max_ts,
                    attributes=attributes,
                )
            )  # fmt: skip
            chunks.append(data)
            position += len(data)
        upload = Upload(self.new_key(), b"".join(chunks), batches)
        self.uploads[upload.key] = upload
        return upload

    def new_key(self) -> str:
        return new_object_key(self.agent_clock.wall_ms())

    def answered(self, upload: Upload, outcomes: list[CommitOutcome]) -> None:
        if upload.key not in self.txn_uploads or all(o.error == ErrorCode.none for o in outcomes):
            super().answered(upload, outcomes)
            return
        # A transactional batch refused: its transaction is over or its epoch fenced.
        if upload.answered is not None and outcomes != upload.answered:
            raise self.fail(
                f"commit of {upload.key}: answered {outcomes}, before {upload.answered}"
            )
        upload.answered = outcomes
        if upload.key in self.unanswered:
            self.unanswered.remove(upload.key)
        allowed = {
            ErrorCode.invalid_txn_state,
            ErrorCode.invalid_producer_epoch,
            ErrorCode.out_of_order_sequence_number,
            ErrorCode.request_timed_out,
        }
        for outcome in outcomes:
            if outcome.error not in allowed:
                raise self.fail(f"transactional {upload.key} refused with {outcome.error!r}")
        self.stats.add("transactional batches refused")

    async def txn_step(self) -> None:
        rng = self.rng
        client = rng.choice(self.clients)
        slot = self.pick_writer()
        name = f"{slot.name} {client.transactional_id}"
        try:
            if not client.ready:
                error, pid, epoch = await slot.writer.init_producer_id(
                    client.transactional_id, self.kconfig.txn_timeout_ms
                )
                self.log(f"{name} init producer id: {error.name} ({pid}, {epoch})")
                if error == ErrorCode.none:
                    client.producer_id, client.epoch, client.ready = pid, epoch, True
                    client.ongoing, client.batches = False, 0
                    client.partitions.clear()
                    client.next_sequence.clear()
                return
            if client.ongoing and (client.batches >= 4 or rng.random() < 0.35):
                commit = rng.random() < 0.6
                error = await slot.writer.end_transaction(
                    client.transactional_id, client.producer_id, client.epoch, commit
                )
                self.log(f"{name} {'commit' if commit else 'abort'}: {error.name}")
                if error == ErrorCode.none:
                    client.ongoing, client.batches = False, 0
                    client.partitions.clear()
                    self.stats.add("transactions committed" if commit else "transactions aborted")
                else:
                    client.ready = False
                return
            await self.txn_produce(client, slot)
        except CoordinatorError as e:
            client.ready = False
            self.log(f"{name}: {e!r}")

    async def txn_produce(self, client: TxnClient, slot: WriterSlot) -> None:
        rng = self.rng
        pkey = rng.choice(sorted(self.models, key=lambda k: self.models[k].name))
        if pkey not in client.partitions:
            error = await slot.writer.add_to_transaction(
                client.transactional_id, client.producer_id, client.epoch, partitions=[pkey]
            )
            if error != ErrorCode.none:
                self.log(f"{client.transactional_id} add {self.models[pkey].name}: {error.name}")
                client.ready = False
                return
            client.partitions.add(pkey)
            client.ongoing = True
        sequence = client.next_sequence.get(pkey, 0)
        data, count, base_ts, max_ts, attributes = self.keyed_batch(
            (client.producer_id, client.epoch, sequence)
        )
        batch = BatchToCommit(
            pkey[0], pkey[1], 0, len(data), count, base_ts, max_ts, client.producer_id,
            client.epoch, sequence, attributes,
        )  # fmt: skip
        upload = Upload(self.new_key(), data, [batch])
        self.uploads[upload.key] = upload
        self.txn_uploads[upload.key] = client
        if not await self.put(upload):
            self.log(f"{client.transactional_id}: upload {upload.key} failed")
            return
        self.unanswered.append(upload.key)
        await self.commit([upload])
        if upload.answered is None or upload.answered[0].error != ErrorCode.none:
            client.ready = False
            return
        client.next_sequence[pkey] = sequence + count
        client.batches += 1

    async def delete_records(self) -> None:
        rng = self.rng
        slot = self.pick_writer()
        try:
            if rng.random() < 0.3:
                moved = await slot.writer.enforce_retention()
                self.log(f"{slot.name} retention: {moved} partitions")
                return
            pkey = rng.choice(sorted(self.models, key=lambda k: self.models[k].name))
            model = self.models[pkey]
            log_start, end = self.db.partitions.get(pkey, 0), self.db.high_watermark(pkey)
            kind = rng.random()
            if kind < 0.05:
                offset = -1
            elif kind < 0.4:
                offset = rng.randint(log_start, end)
            else:
                offset = min(end, log_start + rng.randint(0, max(1, (end - log_start) // 6)))
            model.deletable_to = max(model.deletable_to, 2**62 if offset < 0 else offset)
            [(error, start)] = await slot.writer.advance_log_starts([(pkey[0], pkey[1], offset)])
            self.log(f"{slot.name} delete records {model.name} to {offset}: {error.name} {start}")
        except CoordinatorError as e:
            self.log(f"{slot.name} retention: {e!r}")

    async def advance_clock(self) -> None:
        await self.advance()
        if self.rng.random() < 0.5:
            slot = self.pick_writer()
            try:
                aborted = await slot.writer.expire_transactions()
                if aborted:
                    self.log(f"{slot.name} aborted {aborted} transactions past their timeout")
                    self.stats.add("transactions timed out", aborted)
            except CoordinatorError as e:
                self.log(f"{slot.name} transaction timeouts: {e!r}")

    async def current_key_compactor(self) -> KeyCompactorSlot:
        """The compactor of the agent that leads (a new one if none), or a zombie's."""
        zombies = [k for k in self.key_compactors if k.writer not in self.writers]
        if zombies and self.rng.random() < self.kconfig.zombie:
            return self.rng.choice(zombies)
        for slot in reversed(self.key_compactors):
            if slot.writer.writer.is_writer and slot.writer in self.writers:
                return slot
        return await self.new_key_compactor()

    async def run_key_compactor(self, slot: KeyCompactorSlot) -> None:
        try:
            await self._run_key_compactor(slot)
        except ObjectNotFound as e:
            if "missing object stops key compaction" not in self.kconfig.workarounds:
                raise
            # KNOWN_BUGS: the run ends here, as the agent's periodic job would log it.
            self.stats.add("key compaction runs stopped by a missing object")
            self.log(f"{slot.name}: run stopped by {e!r}")

    async def _run_key_compactor(self, slot: KeyCompactorSlot) -> None:
        compactor = slot.compactor
        if self.rng.random() < 0.5:
            cleaned = await compactor.compact_once()
            self.log(f"{slot.name}: {cleaned} partitions cleaned ({compactor.stats})")
            return
        for topic in list(self.view.topics()):
            policy = policy_for(topic.configs)
            if policy is None:
                continue
            for partition in range(topic.partition_count):
                try:
                    cleaned = await compactor.clean_partition(topic.topic_id, partition, policy)
                    self.log(f"{slot.name}: {topic.name}/{partition} cleaned: {cleaned}")
                except (CoordinatorError, ObjectStoreError, ObjectNotFound, ValueError) as e:
                    # What compact_once catches per partition (the periodic job logs it).
                    self.log(f"{slot.name}: {topic.name}/{partition} failed: {e!r}")

    async def key_compaction(self, *, interleave: bool) -> None:
        if self.key_compaction_running:
            return  # one pass at a time, as the writer agent's job runs them
        self.key_compaction_running += 1
        try:
            await self._key_compaction(interleave)
        finally:
            self.key_compaction_running -= 1

    async def _key_compaction(self, interleave: bool) -> None:
        rng = self.rng
        slot = await self.current_key_compactor()
        if rng.random() < self.kconfig.crash:
            task = asyncio.ensure_future(self.run_key_compactor(slot))
            turns = rng.randint(0, 150)
            for _ in range(turns):
                if task.done():
                    break
                await asyncio.sleep(0)
            if task.done():
                await task
                return
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.key_compactors.remove(slot)
            fresh = await self.new_key_compactor(slot.writer)
            self.stats.add("key compactors crashed")
            self.log(f"{slot.name} crashed after {turns} turns; {fresh.name} starts")
            return
        self.interleaving = interleave
        try:
            await self.run_key_compactor(slot)
        finally:
            self.interleaving = False

    async def interleave(self) -> None:
        """An action between a pass's reads and one of its swaps."""
        rng = self.rng
        kind = rng.choice(
            ["compact", "compact", "delete records", "produce", "txn", "gc", "fetch", "advance"]
            + ["stall"]
            + ["failover"] * (rng.random() < 0.1)
        )
        self.stats.add(f"interleaved {kind}")
        self.log(f"before a key compaction swap: {kind}")
        self.interleaving = False
        try:
            if kind == "compact":
                await self.compact(rng.choice(self.compactors))
            elif kind == "delete records":
                await self.delete_records()
            elif kind == "produce":
                await self.produce()
            elif kind == "txn":
                await self.txn_step()
            elif kind == "gc":
                await self.collect(rng.choice(self.collectors))
            elif kind == "fetch":
                await self.agent_fetch()
            elif kind == "failover":
                await self.failover()
            elif kind == "stall":  # a pass slower than the delete grace period
                await self.compact(rng.choice(self.compactors))
                ms = rng.randint(self.config.delete_grace_ms, 2 * self.config.delete_grace_ms)
                self.log(f"advance {ms} ms, the writers renewing their leases")
                for _ in range(0, ms, 1_000):
                    self.clock.advance(1_000)
                    await self.tick_all()
                await self.collect(rng.choice(self.collectors))
                await self.collect(rng.choice(self.collectors))
            else:
                ms = rng.randint(1, 20_000)
                self.clock.advance(ms)
                self.log(f"advance {ms} ms")
        finally:
            self.interleaving = True

    async def concurrent_steps(self) -> None:
        rng = self.rng
        actions: list[Awaitable[None]] = []
        names: list[str] = []
        collectors = list(self.collectors)
        compactors = list(self.compactors)
        for _ in range(rng.randint(2, 4)):
            kind = rng.choices(
                ["key compaction", "gc", "compact", "produce", "txn", "delete records", "fetch"],
                [5, 3, 3, 4, 3, 2, 2],
            )[0]
            if kind == "key compaction" and kind not in names:
                actions.append(self.key_compaction(interleave=False))
            elif kind == "gc" and collectors:
                actions.append(self.collect(collectors.pop(rng.randrange(len(collectors)))))
            elif kind == "compact" and compactors:
                actions.append(self.compact(compactors.pop(rng.randrange(len(compactors)))))
            elif kind == "produce":
                actions.append(self.produce())
            elif kind == "txn" and kind not in names:
                actions.append(self.txn_step())
            elif kind == "delete records":
                actions.append(self.delete_records())
            elif kind == "fetch":
                actions.append(self.agent_fetch())
            else:
                continue
            names.append(kind)
        self.log(f"concurrently: {', '.join(names)}")
        self.concurrently = True
        try:
            await asyncio.gather(*actions)
        finally:
            self.concurrently = False

    async def one_step(self) -> None:
        names, weights = zip(*self.kconfig.key_weights, strict=True)
        choice = self.rng.choices(names, weights)[0]
        self.stats.add(f"step {choice}")
        try:
            if choice == "produce":
                await self.produce()
            elif choice == "txn":
                await self.txn_step()
            elif choice == "resend":
                await self.resend()
            elif choice == "key compaction":
                await self.key_compaction(interleave=True)
            elif choice == "compact":
                await self.compact(self.rng.choice(self.compactors))
            elif choice == "delete records":
                await self.delete_records()
            elif choice == "gc":
                await self.collect(self.rng.choice(self.collectors))
            elif choice == "advance":
                await self.advance_clock()
            elif choice == "failover":
                await self.failover()
            elif choice == "fetch":
                await self.agent_fetch()
            else:
                await self.concurrent_steps()
            await self.read_checks()
        except SimFailure:
            raise
        except Exception as e:
            raise self.fail(f"step {choice} raised {e!r}") from e

    # Reads ------------------------------------------------------------------------------------
    async def read_partition(
        self,
        view: CoordinatorView,
        store: ObjectStore,
        pkey: PartitionKey,
        *,
        fresh: bool,
        pause: Callable[[], Awaitable[None]] | None = None,
    ) -> PartitionRead | None:
        """A read_committed read of the partition from its log start to the view's last
        stable offset, as Fetch does it; None if it failed (only reads through the agents'
        view may: their store has faults, their cached coordinates may be stale). `pause`
        runs between the first lookup and its GETs (a slow fetch)."""
        topic_id, partition = pkey
        offsets = view.partition_offsets(topic_id, partition)
        end = view.last_stable_offset(topic_id, partition)
        if offsets is None or end is None:
            if fresh:
                raise self.fail(f"{self.models[pkey].name}: not in the view")
            return None
        start = max(offsets.log_start_offset, self.db.partitions.get(pkey, 0))
        end = max(start, end)
        fetcher = BatchFetcher(store, BatchCache(1 << 24))
        for _ in range(4):
            read = await self.read_range(view, fetcher, pkey, start, end, pause)
            pause = None
            if not isinstance(read, ReadFailure):
                break
            if fresh:
                raise self.fail(
                    f"{self.models[pkey].name}: reading {read.location} failed: {read.error!r}"
                )
            if read.not_found:
                view.forget_cached([pkey])  # as Fetch does with a missing object
                self.stats.add("reads looked up again after a missing object")
        else:
            return None
        aborted = await view.aborted_transactions(topic_id, partition, start, end)
        return self.decode_read(pkey, start, end, read, aborted)

    async def read_range(
        self,
        view: CoordinatorView,
        fetcher: BatchFetcher,
        pkey: PartitionKey,
        start: int,
        end: int,
        pause: Callable[[], Awaitable[None]] | None,
    ) -> list[tuple[BatchLocation, bytes]] | ReadFailure:
        out: list[tuple[BatchLocation, bytes]] = []
        position = start
        while position < end:
            locations = await view.find_batches(pkey[0], pkey[1], position, 1 << 16, end)
            if not locations:
                break
            if pause is not None:
                await pause()
                pause = None
            [group] = await fetcher.read_many([locations])
            if group.failure is not None:
                return group.failure
            at = 0
            for loc in locations:
                out.append((loc, bytes(group.data[at : at + loc.byte_length])))
                at += loc.byte_length
            position = locations[-1].last_offset + 1
        return out

    def decode_read(
        self,
        pkey: PartitionKey,
        start: int,
        end: int,
        batches: Sequence[tuple[BatchLocation, bytes]],
        aborted: Sequence[AbortedTxn],
    ) -> PartitionRead:
        """Invariant 3 on each batch, then Kafka's read_committed consumer filter."""
        model = self.models[pkey]
        stored: dict[int, Record] = {}
        shown: dict[int, Record] = {}
        pending = sorted(aborted, key=lambda a: a.first_offset)
        next_aborted = 0
        aborting: set[int] = set()
        previous = -1
        for loc, data in batches:
            where = f"read {model.name}@{loc.base_offset}-{loc.last_offset}"
            try:
                header = parse_header(data, stored=True)
            except InvalidBatch as e:
                raise self.fail(f"{where}: {e.reason}") from None
            fields = _HEADER.unpack_from(data)
            if header.size != len(data) or (fields[0], fields[0] + fields[6]) != (
                loc.base_offset,
                loc.last_offset,
            ):
                raise self.fail(
                    f"{where}: header says {fields[0]}+{fields[6]}, {header.size} bytes"
                )
            if loc.base_offset <= previous:
                raise self.fail(f"{where}: after a batch ending at {previous}")
            previous = loc.last_offset
            while (
                next_aborted < len(pending)
                and pending[next_aborted].first_offset <= loc.last_offset
            ):
                aborting.add(pending[next_aborted].producer_id)
                next_aborted += 1
            if header.is_control:
                marker = model.markers.get(loc.base_offset)
                _, [record] = decode_records(data)
                commit = _marker_commit(record)
                if marker != (header.producer_id, commit):
                    raise self.fail(f"{where}: a marker {header.producer_id, commit}, was {marker}")
                if not commit:
                    aborting.discard(header.producer_id)
                continue
            original = model.originals.get(loc.base_offset)
            if original is None or original.last_offset != loc.last_offset:
                raise self.fail(f"{where}: not a batch that was committed")
            records = self.same_batch(where, original.data, data)
            skip = header.is_transactional and header.producer_id in aborting
            for r in records:
                offset = loc.base_offset + r.offset_delta
                if offset >= start:
                    stored[offset] = r
                    if not skip:
                        shown[offset] = r
        return PartitionRead(start, end, stored, shown)

    def compare(self, pkey: PartitionKey, read: PartitionRead, *, strict: bool) -> None:
        """Invariants 1-5 (strict: a read through a view loaded from the database)."""
        model = self.models[pkey]
        log_start = self.db.partitions.get(pkey, 0)
        stable = model.last_stable(log_start)
        name = model.name
        if read.end > stable or (strict and read.end != stable):
            raise self.fail(
                f"{name}: the view's last stable offset {read.end}, the model's {stable}"
            )
        for offset, r in read.stored.items():
            rec = model.records.get(offset)
            if rec is None or rec.raw != r.raw:
                raise self.fail(f"{name}: read a record at {offset} that was not committed there")
            if strict and offset in model.removed:
                raise self.fail(f"{name}: {rec.key!r}@{offset} is still stored, removed by a swap")
        # A read running beside DeleteRecords may miss (or show) what went below the log start.
        start = max(read.start, log_start)
        expected: dict[bytes, Rec] = {}
        for offset, rec in sorted(model.records.items()):
            if not start <= offset < read.end:
                continue
            status = model.status(rec)
            if strict and offset not in model.removed and offset not in read.stored:
                raise self.fail(
                    f"{name}: {rec.key!r}@{offset} ({status}) is gone, no swap removed it"
                )
            if status == OPEN:
                raise self.fail(f"{name}: {rec.key!r}@{offset} is open below the stable offset")
            if status == COMMITTED:
                expected[rec.key] = rec
        latest: dict[bytes, int] = {}
        for offset in sorted(read.shown):
            if offset < start:
                continue
            rec = model.records[offset]
            if model.status(rec) != COMMITTED:
                raise self.fail(f"{name}: the read shows {rec.key!r}@{offset}, {model.status(rec)}")
            latest[rec.key] = offset
        for key in sorted(expected.keys() | latest.keys()):
            want, got = expected.get(key), latest.get(key)
            if want is None:
                raise self.fail(f"{name}: the read shows {key!r}@{got}, never committed")
            if got == want.offset:
                continue
            if got is None and want.tombstone:
                continue  # the tombstone went (invariant B checked when)
            if got is None:
                raise self.fail(f"{name}: {key!r} is lost: its latest value is at {want.offset}")
            raise self.fail(
                f"{name}: {key!r} reads as {got} (removed: {model.removed.get(got)}), its latest"
                f" is {'a tombstone' if want.tombstone else 'a value'} at {want.offset}"
                f" (removed at {model.removed.get(want.offset)}): an older record came back"
            )
        if not strict:
            return
        state = self.db.key_compaction.get(pkey)
        if state is None:
            return
        seen: dict[bytes, int] = {}
        for offset in sorted(read.stored):
            if offset >= state.cleaned_offset:
                break
            rec = model.records[offset]
            if model.status(rec) == ABORTED:
                raise self.fail(
                    f"{name}: an aborted record {rec.key!r}@{offset} below the cleaned offset"
                    f" {state.cleaned_offset}"
                )
            if rec.key in seen:
                raise self.fail(
                    f"{name}: {rec.key!r} at {seen[rec.key]} and {offset}, below the cleaned"
                    f" offset {state.cleaned_offset} (passes {state.passes})"
                )
            seen[rec.key] = offset

    async def read_checks(self) -> None:
        if self.violations:
            raise self.fail("; ".join(self.violations))
        await self.check_view.resync()
        for pkey in self.models:
            read = await self.read_partition(self.check_view, self.store, pkey, fresh=True)
            assert read is not None
            self.compare(pkey, read, strict=True)

    async def agent_fetch(self) -> None:
        """A read through the agents' view (stale cached coordinates and all)."""
        rng = self.rng
        pkey = rng.choice(sorted(self.models, key=lambda k: self.models[k].name))

        async def slow() -> None:
            """Compaction moves what the fetch looked up, then past the delete grace period
            GC deletes the old objects."""
            await self.key_compaction(interleave=False)
            await self.compact(rng.choice(self.compactors))
            ms = rng.randint(self.config.delete_grace_ms, 2 * self.config.delete_grace_ms)
            self.clock.advance(ms)
            self.log(f"a slow fetch: advance {ms} ms")
            await self.tick_all()
            await self.collect(rng.choice(self.collectors))
            await self.collect(rng.choice(self.collectors))

        # The clock jumps only when nothing else runs (a commit in flight would be slowed
        # past what the commit age allows for).
        pause = slow if not self.concurrently and rng.random() < 0.3 else None
        try:
            read = await self.read_partition(
                self.view, self.faulty_store, pkey, fresh=False, pause=pause
            )
        except (CoordinatorError, ObjectStoreError) as e:
            self.log(f"fetch {self.models[pkey].name}: {e!r}")
            return
        if read is None:
            self.log(f"fetch {self.models[pkey].name}: failed")
            return
        self.compare(pkey, read, strict=False)
        self.stats.add("fetches through the agents' view")
        self.log(
            f"fetch {self.models[pkey].name} {read.start}-{read.end}: {len(read.shown)} records"
        )

    # Invariants -------------------------------------------------------------------------------
    def check(self) -> None:
        """Invariant 6 (the reads are `read_checks`, after each step)."""
        if self.violations:
            raise self.fail("; ".join(self.violations))
        db = self.db
        counted: dict[int, int] = {}
        for pkey, part in db.batches.items():
            previous = -1
            for row in part.rows:
                where = f"{pkey}@{row.base_offset}-{row.last_offset}"
                if row.base_offset <= previous:
                    raise self.fail(f"{where}: after a row ending at {previous}")
                previous = row.last_offset
                counted[row.object_id] = counted.get(row.object_id, 0) + 1
                obj = db.objects.get(row.object_id)
                if obj is None or obj.dead_since_ms is not None or obj.deleted_ms is not None:
                    raise self.fail(f"{where}: names object {row.object_id}, which is {obj}")
                if not is_marker_key(obj.key) and obj.key not in self.store.objects:
                    raise self.fail(f"{where}: names {obj.key}, which is not in the store")
        for object_id, obj in db.objects.items():
            references = db.references.get(object_id, 0)
            if references != counted.get(object_id, 0):
                raise self.fail(
                    f"object {obj} counts {references} references, has {counted.get(object_id, 0)}"
                )
            if references == 0 and obj.dead_since_ms is None:
                raise self.fail(f"object {obj} has no batches but is not dead")
        for pkey, model in self.models.items():
            log_start = db.partitions.get(pkey, 0)
            hwm = db.high_watermark(pkey)
            if hwm != max(model.next_offset, log_start):
                raise self.fail(
                    f"{model.name}: the rows give a high watermark of {hwm}, offsets up to"
                    f" {model.next_offset - 1} were committed"
                )

    # The end ----------------------------------------------------------------------------------
    async def ensure_writer(self) -> WriterSlot:
        """The writer holding the database's lease (the clock moves on until one does)."""
        for _ in range(10):
            await self.tick_all()
            lease = self.db.leases.get(SHARD)
            for slot in self.writers:
                held = slot.writer.lease
                if lease is not None and held is not None and held.epoch == lease.epoch:
                    return slot
            self.clock.advance(self.config.lease_ms + 1)
        raise self.fail("no writer after healing")

    async def heal_passes(self, clock: SkewedClock) -> None:
        """Passes over every compacted partition until none is needed (any dirt at all)."""
        backend = MemoryBackend(self.db)
        await backend.open()
        for _ in range(5):
            leader = await self.ensure_writer()
            await self.view.resync()
            compactor = KeyCompactor(
                backend, self.view, self.store, clock, leader.writer.rewrite_batches,
                KeyCompactionConfig(map_bytes=1 << 24),
            )  # fmt: skip
            try:
                for pkey, model in self.models.items():
                    policy = dataclasses.replace(model.policy, dirty_ratio=0.0)
                    for _ in range(5):
                        if not await compactor.clean_partition(pkey[0], pkey[1], policy):
                            break
                return
            except CoordinatorError as e:
                self.log(f"heal: key compaction {e!r}")
        raise self.fail("key compaction failed five times without faults")

    async def heal(self) -> None:
        """Faults off, transactions ended, past every lag: compaction finishes; then GC."""
        try:
            await self._heal()
        except SimFailure:
            raise
        except Exception as e:
            raise self.fail(f"healing raised {e!r}") from e

    async def _heal(self) -> None:
        self.step += 1
        self.log("heal: faults off, transactions ended, compact to the end, collect")
        config = self.kconfig
        for handle in self.handles:
            handle.enabled = False
        for client in self.clients:  # a new epoch aborts what is open
            for _ in range(5):
                leader = await self.ensure_writer()
                try:
                    error, _, _ = await leader.writer.init_producer_id(
                        client.transactional_id, config.txn_timeout_ms
                    )
                except CoordinatorError as e:
                    self.log(f"heal: init producer id {e!r}")
                    continue
                if error == ErrorCode.none:
                    break
        lag = max(m.policy.min_lag_ms for m in self.models.values())
        retention = max(m.policy.delete_retention_ms for m in self.models.values())
        self.clock.advance(lag + config.max_skew_ms + 1)
        clock = self.skewed()
        await self.heal_passes(clock)
        self.check()
        await self.read_checks()
        self.clock.advance(retention + config.max_skew_ms + 1)
        await self.heal_passes(clock)
        self.check()
        await self.read_checks()
        for pkey, model in self.models.items():
            log_start = self.db.partitions.get(pkey, 0)
            rows = self.db.batch_rows(pkey)
            newest = rows[-1].base_offset if rows else log_start
            # A batch the log start cuts never counts as dirty (its base is below the log
            # start): with nothing dirty after it, no pass cleans it. Liveness only.
            cut = rows[0].last_offset if rows and rows[0].base_offset < log_start else -1
            seen: dict[bytes, int] = {}
            for offset, rec in sorted(model.records.items()):
                if offset >= newest or offset <= cut or not model.present(offset, log_start):
                    continue
                if model.status(rec) != COMMITTED or rec.key in seen:
                    raise self.fail(
                        f"{model.name}: after healing {rec.key!r}@{offset} ({model.status(rec)})"
                        f" is left below the newest batch at {newest}"
                    )
                if rec.tombstone:
                    raise self.fail(
                        f"{model.name}: after healing the tombstone {rec.key!r}@{offset} is left"
                    )
                seen[rec.key] = offset
        await self.collect_all()


def _marker_commit(record: Record) -> bool:
    """A control record's type (its key: int16 version, int16 type; 1 is commit)."""
    assert record.key is not None
    version_and_type: tuple[int, int] = struct.unpack(">hh", record.key)
    return version_and_type[1] == 1


def run_seed(seed: int, steps: int = 150, config: KeySimConfig | None = None) -> KeySim:
    """Run one seed (raises `SimFailure`); the same seed and config replay it exactly."""
    sim = KeySim(seed, config or KeySimConfig(steps=steps))
    asyncio.run(sim.run())
    return sim
