"""Key compaction's rules (Kafka's log cleaner, `cleanup.policy=compact`). Pure: no I/O,
no clock reads; `key_compactor.py` runs them.

A partition's log is cleaned up to its *cleanable end*, and never past it:
- the last stable offset (a record of an open transaction that later aborts must not
  remove the committed one it would have shadowed);
- the base of the partition's last batch: that batch holds the high watermark, and it
  is Driftlog's counterpart of Kafka's active segment (the newest part, never cleaned);
- the first batch younger than `min.compaction.lag.ms` (by its max timestamp).

Below `cleaned_offset` the log holds at most one record per key (the part a previous
pass cleaned); from it to the cleanable end is the dirty part. A pass maps each key of
the dirty part to its latest offset (a bounded map: when it fills, the pass ends at that
batch and the next pass goes on from there), then walks the log from its start to the
end of what it mapped and keeps a record only if no later record of its key is mapped.
Also dropped: records of aborted transactions (whatever their key), records without a
key, and tombstones (null values) `delete.retention.ms` after the first pass that
cleaned past them (KIP-534's clock: the pass, not the write time). A partition is
cleaned when its dirty part is at least `min.cleanable.dirty.ratio` of the cleanable
log, when a dirty batch is older than `max.compaction.lag.ms`, or when tombstones kept by
an earlier pass have passed their retention.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from driftlog.coordinator.core.transactions import AbortedTxn

NO_LIMIT_MS = 2**63 - 1
# Passes remembered per partition (for tombstone horizons); past it the two oldest are
# merged into the later one, which only keeps tombstones longer, never shorter.
MAX_PASSES = 64
# A key map entry in Python: a 16-byte digest (bytes object), an int and a dict slot.
KEY_MAP_ENTRY_BYTES = 120


@dataclass(frozen=True, slots=True)
class KeyCompactionPolicy:
    """A compacted topic's configs, with Kafka's defaults."""

    min_lag_ms: int = 0
    max_lag_ms: int = NO_LIMIT_MS
    dirty_ratio: float = 0.5
    delete_retention_ms: int = 86_400_000


def policy_for(configs: Mapping[str, str]) -> KeyCompactionPolicy | None:
    """The topic's key-compaction policy, or None if it is not compacted."""
    if "compact" not in configs.get("cleanup.policy", "delete").split(","):
        return None
    return KeyCompactionPolicy(
        int(configs.get("min.compaction.lag.ms", "0")),
        int(configs.get("max.compaction.lag.ms", str(NO_LIMIT_MS))),
        float(configs.get("min.cleanable.dirty.ratio", "0.5")),
        int(configs.get("delete.retention.ms", "86400000")),
    )


class BatchInfo(NamedTuple):
    base_offset: int
    last_offset: int
    byte_length: int
    max_timestamp_ms: int


@dataclass(slots=True)
class LogScan:
    """One pass over a partition's batches in offset order, a page at a time: where
    cleaning must stop, and how much of the log below that is dirty. Start it at
    `end` = the smaller of the last stable offset and the base of the partition's newest
    batch; a batch younger than `min.compaction.lag.ms` lowers it."""

    end: int
    cleaned_offset: int
    young_after_ms: int  # max timestamps above this are too young to clean
    overdue_before_ms: int  # a dirty batch at or below this is past max.compaction.lag.ms
    total_bytes: int = 0
    dirty_bytes: int = 0
    overdue: bool = False
    done: bool = False

    @classmethod
    def start(
        cls, end: int, cleaned_offset: int, now_ms: int, policy: KeyCompactionPolicy
    ) -> LogScan:
        return cls(end, cleaned_offset, now_ms - policy.min_lag_ms, now_ms - policy.max_lag_ms)

    def add(self, batch: BatchInfo) -> bool:
        """Take the next batch; False once the scan has reached the cleanable end."""
        if self.done or batch.base_offset >= self.end:
            self.done = True
            return False
        if batch.max_timestamp_ms > self.young_after_ms:
            self.end = batch.base_offset
            self.done = True
            return False
        self.total_bytes += batch.byte_length
        if batch.base_offset >= self.cleaned_offset:
            self.dirty_bytes += batch.byte_length
            self.overdue = self.overdue or batch.max_timestamp_ms <= self.overdue_before_ms
        return True

    def needs_pass(
        self, history: CleaningHistory, now_ms: int, policy: KeyCompactionPolicy
    ) -> bool:
        """Dirty enough (`min.cleanable.dirty.ratio`), overdue (`max.compaction.lag.ms`), or
        tombstones kept by an earlier pass are due."""
        if history.tombstones_due(now_ms, policy.delete_retention_ms):
            return True
        dirty = self.dirty_bytes
        return dirty > 0 and (self.overdue or dirty >= policy.dirty_ratio * self.total_bytes)


def cleanable_end(
    batches: Sequence[BatchInfo],
    last_stable_offset: int,
    now_ms: int,
    policy: KeyCompactionPolicy,
) -> int:
    """The offset cleaning stops at (see the module's docstring); `batches` are the
    partition's, in order, up to its high watermark."""
    if not batches:
        return 0
    scan = LogScan.start(min(last_stable_offset, batches[-1].base_offset), 0, now_ms, policy)
    for batch in batches:
        if not scan.add(batch):
            break
    return scan.end


class Pass(NamedTuple):
    """A cleaning pass: it cleaned up to `end_offset` at `at_ms` and left `tombstones`
    (whose first cleaning it was) behind."""

    end_offset: int
    at_ms: int
    tombstones: int = 0


class CleaningHistory:
    """The passes of a partition, oldest first (their ends increase)."""

    def __init__(self, passes: Sequence[tuple[int, ...]] = ()) -> None:
        self.passes = [Pass(*p) for p in passes]

    def first_cleaned_ms(self, offset: int) -> int | None:
        """When the first pass that cleaned past `offset` ran, if one did."""
        for p in self.passes:
            if p.end_offset > offset:
                return p.at_ms
        return None

    def tombstones_due(self, now_ms: int, delete_retention_ms: int) -> bool:
        return any(p.tombstones and p.at_ms + delete_retention_ms <= now_ms for p in self.passes)

    def after_pass(self, end_offset: int, now_ms: int, kept_tombstones: Sequence[int]) -> Pass:
        """Record a pass to `end_offset` that kept tombstones at `kept_tombstones`; returns
        the new pass. Tombstone counts are recomputed: every kept one is counted on the
        pass that first cleaned past it."""
        passes = [p._replace(tombstones=0) for p in self.passes if p.end_offset < end_offset]
        passes.append(Pass(end_offset, now_ms))
        while len(passes) > MAX_PASSES:
            passes[0:2] = [passes[1]]
        counts = [0] * len(passes)
        for offset in kept_tombstones:
            for i, p in enumerate(passes):
                if p.end_offset > offset:
                    counts[i] += 1
                    break
        self.passes = [p._replace(tombstones=c) for p, c in zip(passes, counts, strict=True)]
        return self.passes[-1]

    def as_tuples(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((p.end_offset, p.at_ms, p.tombstones) for p in self.passes)


def should_clean(
    batches: Sequence[BatchInfo],
    cleaned_offset: int,
    end: int,
    history: CleaningHistory,
    now_ms: int,
    policy: KeyCompactionPolicy,
) -> bool:
    """Whether a partition needs a pass (its batches in order, `end` its cleanable end)."""
    scan = LogScan.start(end, cleaned_offset, now_ms, policy)
    scan.young_after_ms = NO_LIMIT_MS  # `end` already stops before young batches
    for batch in batches:
        if not scan.add(batch):
            break
    return scan.needs_pass(history, now_ms, policy)


def key_digest(key: bytes) -> bytes:
    """128 bits of the key: the map holds these, not keys (Kafka's cleaner hashes too)."""
    return hashlib.blake2b(key, digest_size=16).digest()


class KeyMap:
    """Each key's latest offset in the part of the log mapped so far, bounded."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self.offsets: dict[bytes, int] = {}

    def put(self, digest: bytes, offset: int) -> bool:
        """False (and nothing stored) when the map is full and the key is new."""
        if digest not in self.offsets and len(self.offsets) >= self.max_entries:
            return False
        self.offsets[digest] = offset
        return True

    def latest(self, digest: bytes) -> int | None:
        return self.offsets.get(digest)


def aborted_in(aborted: Sequence[AbortedTxn], producer_id: int, base_offset: int) -> bool:
    """Is this transactional batch data of an aborted transaction?"""
    return any(
        a.producer_id == producer_id and a.first_offset <= base_offset <= a.last_offset
        for a in aborted
    )


def keep_record(
    offset: int,
    digest: bytes | None,
    is_tombstone: bool,
    key_map: KeyMap,
    history: CleaningHistory,
    now_ms: int,
    policy: KeyCompactionPolicy,
) -> bool:
    """Does a committed record survive this pass?"""
    if digest is None:
        return False  # compacted topics refuse unkeyed records; older ones go
    latest = key_map.latest(digest)
    if latest is not None and latest > offset:
        return False
    if is_tombstone:
        first = history.first_cleaned_ms(offset)
        if first is not None and first + policy.delete_retention_ms <= now_ms:
            return False
    return True
