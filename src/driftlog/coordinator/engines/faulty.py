"""A fault-injecting coordinator backend for tests and simulations: seeded, per call.

Wraps any `Backend`. On each call, one draw from its own `random.Random` decides:

- `fail_before`: raise `CoordinatorUnavailable` without making the call (the
  database was unreachable; nothing happened);
- `lose_reply`: make the call, then raise `CoordinatorUnavailable` (the
  transaction committed and only its answer was lost);
- otherwise pass the call and its result (or its own error) through.

`CoordinatorUnavailable` is the only error injected: it is what backends raise
for every driver failure. `methods` limits the faults to some calls, `lossless`
exempts some from lost replies, `enabled` turns all faults off (setup, healing).

`max_yields` lets the event loop run other tasks up to that many times before
the call reaches the database and again before its reply arrives (a seeded
number each time): with an in-memory backend, which never yields, that is how
a simulation gets different interleavings of concurrent calls, deterministic
for a seed (asyncio runs ready tasks in order).

The same seed gives the same faults for the same sequence of calls; `injected`
lists them for a replay log.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from driftlog.coordinator.api import (
    AclBinding,
    AgentInfo,
    BatchLocation,
    CommitOutcome,
    CommittedOffset,
    CoordinatorUnavailable,
    GroupClaim,
    PartitionOffsets,
    QuotaEntity,
    QuotaEntry,
    ScramCredential,
    TopicInfo,
)
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.core.transactions import AbortedTxn, Transaction
from driftlog.coordinator.engines.backend import (
    Backend,
    BatchMove,
    BatchRef,
    BatchRemoval,
    BatchRewrite,
    Fence,
    KeyCleanState,
    LogStart,
    NewObject,
    ObjectBatch,
    ObjectCounts,
    ObjectRef,
    TxnWrite,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BackendFaults:
    fail_before: float = 0.0
    lose_reply: float = 0.0
    # Names of the `Backend` methods faults apply to; None: all but `close`.
    methods: frozenset[str] | None = None
    # Methods whose replies are never lost (they may still fail before the call).
    lossless: frozenset[str] = frozenset()
    max_yields: int = 0

    def __post_init__(self) -> None:
        if not (self.fail_before >= 0 and self.lose_reply >= 0 and self.max_yields >= 0):
            raise ValueError("fault settings must not be negative")
        if self.fail_before + self.lose_reply > 1:
            raise ValueError("fault probabilities add up to more than 1")


class FaultyBackend:
    def __init__(self, inner: Backend, faults: BackendFaults, rng: random.Random | int = 0) -> None:
        self.inner = inner
        self.faults = faults
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self.enabled = True
        self.calls = 0
        self.injected: list[tuple[int, str, str]] = []  # (call number, method, "before"/"lost")

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        faults = self.faults
        # Drawn on every call, enabled or not: the draws depend on the calls only.
        draw = self.rng.random()
        yields_before = self.rng.randint(0, faults.max_yields)
        yields_after = self.rng.randint(0, faults.max_yields)
        applies = self.enabled and (faults.methods is None or method in faults.methods)
        for _ in range(yields_before):
            await asyncio.sleep(0)
        if applies and draw < faults.fail_before:
            self.injected.append((self.calls, method, "before"))
            raise CoordinatorUnavailable(f"injected: {method} failed before reaching the database")
        result = await call()
        for _ in range(yields_after):
            await asyncio.sleep(0)
        if (
            applies
            and draw < faults.fail_before + faults.lose_reply
            and method not in faults.lossless
        ):
            self.injected.append((self.calls, method, "lost"))
            raise CoordinatorUnavailable(f"injected: the reply to {method} was lost")
        return result

    # Lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        await self._call("open", self.inner.open)

    async def close(self) -> None:
        await self.inner.close()

    async def cluster_id(self, proposed: str) -> str:
        return await self._call("cluster_id", lambda: self.inner.cluster_id(proposed))

    # Membership ---------------------------------------------------------------
    async def heartbeat(self, agent: AgentInfo) -> None:
        await self._call("heartbeat", lambda: self.inner.heartbeat(agent))

    async def live_agents(self, timeout_ms: int, now_ms: int) -> list[AgentInfo]:
        return await self._call("live_agents", lambda: self.inner.live_agents(timeout_ms, now_ms))

    async def remove_agent(self, agent_id: str) -> None:
        await self._call("remove_agent", lambda: self.inner.remove_agent(agent_id))

    # Lease --------------------------------------------------------------------
    async def read_lease(self, shard: int) -> LeaseRecord | None:
        return await self._call("read_lease", lambda: self.inner.read_lease(shard))

    async def try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        return await self._call(
            "try_acquire_lease", lambda: self.inner.try_acquire_lease(expected, new)
        )

    async def renew_lease(self, fence: Fence) -> None:
        await self._call("renew_lease", lambda: self.inner.renew_lease(fence))

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        await self._call("set_log_starts", lambda: self.inner.set_log_starts(fence, starts, now_ms))

    async def log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        return await self._call(
            "log_start_for_bytes",
            lambda: self.inner.log_start_for_bytes(topic_id, partition, keep_bytes, start_offset),
        )

    async def release_lease(self, fence: Fence) -> None:
        await self._call("release_lease", lambda: self.inner.release_lease(fence))

    # Writer -------------------------------------------------------------------
    async def load_sequencer(self, shard: int) -> SequencerSnapshot:
        return await self._call("load_sequencer", lambda: self.inner.load_sequencer(shard))

    async def committed_outcomes(self, keys: Sequence[str]) -> dict[str, list[CommitOutcome]]:
        return await self._call("committed_outcomes", lambda: self.inner.committed_outcomes(keys))

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        await self._call("persist_objects", lambda: self.inner.persist_objects(fence, objects))

    async def rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        return await self._call(
            "rewrite_batches",
            lambda: self.inner.rewrite_batches(
                fence, new_object, rewrites, removals, state, now_ms
            ),
        )

    async def read_batch_refs(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int, limit: int
    ) -> list[BatchRef]:
        return await self._call(
            "read_batch_refs",
            lambda: self.inner.read_batch_refs(
                topic_id, partition, start_offset, end_offset, limit
            ),
        )

    async def key_clean_state(self, topic_id: uuid.UUID, partition: int) -> KeyCleanState | None:
        return await self._call(
            "key_clean_state", lambda: self.inner.key_clean_state(topic_id, partition)
        )

    async def load_broker_configs(self) -> dict[str, dict[str, str]]:
        return await self._call("load_broker_configs", self.inner.load_broker_configs)

    async def put_broker_configs(self, resource: str, configs: Mapping[str, str]) -> None:
        await self._call(
            "put_broker_configs", lambda: self.inner.put_broker_configs(resource, configs)
        )

    # Security and node ids --------------------------------------------------------
    async def cluster_secret(self) -> bytes:
        return await self._call("cluster_secret", self.inner.cluster_secret)

    async def security_version(self) -> int:
        return await self._call("security_version", self.inner.security_version)

    async def load_scram_credentials(self) -> list[ScramCredential]:
        return await self._call("load_scram_credentials", self.inner.load_scram_credentials)

    async def put_scram_credentials(
        self, upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
    ) -> None:
        await self._call(
            "put_scram_credentials", lambda: self.inner.put_scram_credentials(upserts, deletions)
        )

    async def load_acls(self) -> list[AclBinding]:
        return await self._call("load_acls", self.inner.load_acls)

    async def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        await self._call("create_acls", lambda: self.inner.create_acls(bindings))

    async def delete_acls(self, bindings: Sequence[AclBinding]) -> int:
        return await self._call("delete_acls", lambda: self.inner.delete_acls(bindings))

    async def load_client_quotas(self) -> list[QuotaEntry]:
        return await self._call("load_client_quotas", self.inner.load_client_quotas)

    async def alter_client_quotas(
        self, changes: Sequence[tuple[QuotaEntity, str, float | None]]
    ) -> None:
        await self._call("alter_client_quotas", lambda: self.inner.alter_client_quotas(changes))

    async def claim_node_id(
        self, agent_id: str, requested: int | None, now_ms: int, live_timeout_ms: int
    ) -> int:
        return await self._call(
            "claim_node_id",
            lambda: self.inner.claim_node_id(agent_id, requested, now_ms, live_timeout_ms),
        )

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        await self._call(
            "persist_transactions", lambda: self.inner.persist_transactions(fence, write)
        )

    async def load_transactions(self) -> list[Transaction]:
        return await self._call("load_transactions", self.inner.load_transactions)

    async def read_aborted(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        return await self._call(
            "read_aborted",
            lambda: self.inner.read_aborted(topic_id, partition, start_offset, end_offset),
        )

    async def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        return await self._call("pending_offsets", lambda: self.inner.pending_offsets(group_id))

    async def put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        await self._call(
            "put_topic", lambda: self.inner.put_topic(fence, topic, old_partition_count)
        )

    async def drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        await self._call("drop_topic", lambda: self.inner.drop_topic(fence, topic, now_ms))

    async def relocate_batches(
        self, fence: Fence, new_object: NewObject, moves: Sequence[BatchMove], now_ms: int
    ) -> int:
        return await self._call(
            "relocate_batches",
            lambda: self.inner.relocate_batches(fence, new_object, moves, now_ms),
        )

    # Object lifecycle ---------------------------------------------------------
    async def dead_objects(self, dead_before_ms: int, limit: int) -> list[ObjectRef]:
        return await self._call(
            "dead_objects", lambda: self.inner.dead_objects(dead_before_ms, limit)
        )

    async def mark_objects_deleted(self, object_ids: Sequence[int], now_ms: int) -> None:
        await self._call(
            "mark_objects_deleted", lambda: self.inner.mark_objects_deleted(object_ids, now_ms)
        )

    async def purge_tombstones(self, committed_before_ms: int, limit: int) -> int:
        return await self._call(
            "purge_tombstones", lambda: self.inner.purge_tombstones(committed_before_ms, limit)
        )

    async def known_keys(self, keys: Sequence[str]) -> set[str]:
        return await self._call("known_keys", lambda: self.inner.known_keys(keys))

    async def compaction_candidates(
        self, committed_before_ms: int, smaller_than: int, limit: int
    ) -> list[ObjectRef]:
        return await self._call(
            "compaction_candidates",
            lambda: self.inner.compaction_candidates(committed_before_ms, smaller_than, limit),
        )

    async def batches_in_objects(self, object_ids: Sequence[int]) -> list[ObjectBatch]:
        return await self._call(
            "batches_in_objects", lambda: self.inner.batches_in_objects(object_ids)
        )

    async def object_counts(self) -> ObjectCounts:
        return await self._call("object_counts", self.inner.object_counts)

    # Reads --------------------------------------------------------------------
    async def load_topics(self) -> list[TopicInfo]:
        return await self._call("load_topics", self.inner.load_topics)

    async def load_partition_offsets(self) -> dict[PartitionKey, PartitionOffsets]:
        return await self._call("load_partition_offsets", self.inner.load_partition_offsets)

    async def read_batches(
        self,
        topic_id: uuid.UUID,
        partition: int,
        start_offset: int,
        end_offset: int,
        max_bytes: int,
    ) -> list[BatchLocation]:
        return await self._call(
            "read_batches",
            lambda: self.inner.read_batches(
                topic_id, partition, start_offset, end_offset, max_bytes
            ),
        )

    async def first_batch_at_time(
        self,
        topic_id: uuid.UUID,
        partition: int,
        timestamp_ms: int,
        start_offset: int,
        end_offset: int,
    ) -> BatchLocation | None:
        return await self._call(
            "first_batch_at_time",
            lambda: self.inner.first_batch_at_time(
                topic_id, partition, timestamp_ms, start_offset, end_offset
            ),
        )

    async def last_time_index(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> int:
        return await self._call(
            "last_time_index", lambda: self.inner.last_time_index(topic_id, partition, end_offset)
        )

    # Producer ids and group offsets -------------------------------------------
    async def allocate_producer_id(self) -> int:
        return await self._call("allocate_producer_id", self.inner.allocate_producer_id)

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        return await self._call("claim_group", lambda: self.inner.claim_group(group_id, agent_id))

    async def put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        await self._call("put_offsets", lambda: self.inner.put_offsets(group_id, offsets, claim))

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        return await self._call(
            "fetch_offsets", lambda: self.inner.fetch_offsets(group_id, partitions)
        )

    async def delete_group(self, group_id: str, claim: GroupClaim | None) -> None:
        await self._call("delete_group", lambda: self.inner.delete_group(group_id, claim))

    async def groups_with_offsets(self) -> list[str]:
        return await self._call("groups_with_offsets", self.inner.groups_with_offsets)


def _is_backend(backend: FaultyBackend) -> Backend:
    return backend  # mypy checks that FaultyBackend implements the protocol
