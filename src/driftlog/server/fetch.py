"""Fetch: plan from committed coordinates, long-poll on commits, then read the bytes.

The plan (which batches of which partitions) is cheap: tail readers find
their coordinates in the view's in-memory tail cache, older offsets cost one
indexed database query. The long poll re-plans after every commit until
`min_bytes` is reached or `max_wait` passes, and only then reads from cache
or object storage.

Size limits follow KIP-74: the response stays within `max_bytes` and each
partition within `partition_max_bytes`, except that the first batch of the
first non-empty partition is returned whole so a consumer always progresses.

Incremental fetch sessions (KIP-227) are declined by answering session id 0,
which makes clients send full fetch requests.

Roles (cluster/placement.py): a partition whose fetch agent for this client is another
agent is answered, from Fetch v11 on, with that agent as KIP-392's preferred read replica
and no records, at once (as a Kafka leader answers); librdkafka, the Java client,
kafka-python and aiokafka with a `client_rack` move the partition there. A client that
asks again for the partition at the same offset within its own long-poll time, twice in
a row, did not move (aiokafka without `client_rack` ignores the field): it is served
here, on that connection, for `IGNORED_HINT_S`. Older Fetch versions are served wherever they land.

A store failure affects only the partitions with batches in the object that
failed. An object that is not found may only mean stale coordinates (compaction
moved the batches, retention or garbage collection removed them): those
partitions forget their cached coordinates and are planned once more from the
database. Only if the database still names the missing object is it really lost:
that partition gets CORRUPT_MESSAGE (see `LOST_DATA_ERROR`), the others their data.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.cluster.placement import (
    Placed,
    client_zone,
    fetch_agent_ids,
    fetch_zone,
    partition_leaders,
    placed,
)
from driftlog.coordinator.api import AgentInfo, BatchLocation, CoordinatorError, TopicInfo
from driftlog.coordinator.core.transactions import AbortedTxn
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import AclOperation
from driftlog.server.access import TOPIC
from driftlog.server.context import RequestContext
from driftlog.server.metadata import leader_candidates, node_endpoints, placement_pool
from driftlog.server.quota_handlers import throttle, unthrottle

log = logging.getLogger(__name__)

FETCH = 1
READ_COMMITTED = 1
# Bounds a client's long poll regardless of what it asks for.
MAX_WAIT_S = 30.0
# Bounds one response's size whatever the client asks (Kafka's fetch.max.bytes).
MAX_RESPONSE_BYTES = 55 * 1024 * 1024
# Committed data whose object is gone for good. Not KAFKA_STORAGE_ERROR: every client
# treats that as transient and retries silently, so a consumer would hang forever.
# CORRUPT_MESSAGE is the code clients surface for data that cannot be read:
# librdkafka hands it to the application as a consumer error (its default branch;
# it retries after fetch.error.backoff.ms), the Java consumer throws KafkaException
# from poll() ("Encountered corrupt message when fetching offset ..."), kafka-python
# raises CorruptRecordError. UNKNOWN_SERVER_ERROR would only be logged and retried by
# the Java consumer; OFFSET_OUT_OF_RANGE would make clients reset to the log start and
# loop or silently skip data. As with a corrupt Kafka segment, the way past is the
# operator's: DeleteRecords beyond the lost offsets, or the consumer seeking past them.
LOST_DATA_ERROR = ErrorCode.corrupt_message
# KIP-392's preferred read replica is in Fetch from v11.
PREFERRED_REPLICA_VERSION = 11
# A client that asked again instead of moving, this many times in a row, is served here
# for IGNORED_HINT_S on its connection.
IGNORED_HINT_STRIKES = 2
IGNORED_HINT_S = 300.0
# Partitions remembered per connection (their last hint); past it the memory starts over.
MAX_HINTS_PER_SESSION = 10_000
# Clients (KIP-511 software names) that forget their preferred read replica after an
# answer naming none (kafka-python 3: `update_preferred_read_replica(-1)` clears it):
# the fetch agent names itself to them, which they take as "stay" (librdkafka would skip
# the records of a partition whose answer names a replica, so others get -1).
NAME_THE_READER_TO = frozenset({"kafka-python"})


@dataclass(slots=True)
class _PartitionPlan:
    partition: int
    error: ErrorCode
    high_watermark: int = -1
    log_start_offset: int = -1
    locations: tuple[BatchLocation, ...] = ()
    fetch_offset: int = -1
    max_bytes: int = 1  # what the plan asked find_batches for (re-planning asks the same)
    records: bytes | bytearray = b""
    last_stable_offset: int = -1
    # read_committed: where reads stop (the last stable offset), and the aborted
    # transactions of the range returned (None for read_uncommitted, as Kafka answers).
    end_offset: int | None = None
    aborted: tuple[AbortedTxn, ...] | None = None
    # KIP-392: the node id of the agent this client should fetch the partition from, and
    # whether that is another agent (the partition is answered at once, without records).
    preferred_replica: int = -1
    sent_away: bool = False


@dataclass(slots=True)
class _TopicPlan:
    name: str
    topic_id: uuid.UUID
    partitions: list[_PartitionPlan]
    topic: TopicInfo | None = None


class _Readers:
    """Which partitions this request should fetch from another agent (KIP-392)."""

    def __init__(self, ctx: RequestContext, request: Any) -> None:
        self._ctx = ctx
        self._enabled = ctx.api_version >= PREFERRED_REPLICA_VERSION
        self._now_s = time.monotonic()
        if ctx.session.serve_reads_until_s > self._now_s:
            self._enabled = False  # this client does not move (see `elsewhere`)
        self._zone = fetch_zone(ctx.client_id, getattr(request, "rack_id", None))
        self._patience_s = max(request.max_wait.total_seconds(), 0.2)
        self._pool: list[AgentInfo] | None = None
        self._placed: Placed = ()
        self._by_id: dict[str, AgentInfo] = {}

    def targets(self, topic: TopicInfo) -> tuple[str | None, ...]:
        """Each partition's fetch agent (id) for this client; empty: serve them all here."""
        if not self._enabled:
            return ()
        if self._pool is None:
            self._pool = placement_pool(self._ctx)
            self._placed = placed(self._pool)
            self._by_id = {a.agent_id: a for a in self._pool}
        # For the leaders Metadata names this client (its client.id's zone), so the answer
        # is the same whichever agent is asked.
        return fetch_agent_ids(
            topic.topic_id.bytes,
            topic.partition_count,
            self._placed,
            client_zone(self._ctx.client_id),
            self._zone,
        )

    def elsewhere(self, target_id: str | None, part: _PartitionPlan, topic: TopicInfo) -> bool:
        """Should the client fetch this partition from `target_id` instead of here?"""
        me = self._ctx.services.membership.me
        if target_id is None:
            return False
        if target_id == me.agent_id:
            if self._ctx.session.client_software in NAME_THE_READER_TO:
                part.preferred_replica = me.node_id  # "stay here", to those who forget
            return False
        target = self._by_id.get(target_id)
        if target is None:
            return False
        session = self._ctx.session
        key = (topic.topic_id, part.partition)
        hint = session.read_replica_hints.get(key)
        strikes = 0
        if hint is not None and hint[0] == part.fetch_offset:
            # Sent away, and back at the same offset sooner than a long poll there would
            # have taken: the client did not move. Once may be a client that could not
            # (it did not know the agent yet, or the agent failed it): it is sent again.
            # Twice in a row, it ignores the hint: serve it rather than answer it empty
            # forever.
            strikes = hint[2] + 1 if self._now_s - hint[1] < self._patience_s else 0
        if strikes >= IGNORED_HINT_STRIKES:
            if session.serve_reads_until_s <= self._now_s:
                self._ctx.services.request_metrics.fetch_read_replica_ignored.inc()
                log.info(
                    "client %s (%s) ignores preferred read replicas: served here for %.0f s",
                    self._ctx.client_id, self._ctx.peer, IGNORED_HINT_S,
                )  # fmt: skip
            session.serve_reads_until_s = self._now_s + IGNORED_HINT_S
            self._enabled = False
            return False
        if len(session.read_replica_hints) >= MAX_HINTS_PER_SESSION:
            session.read_replica_hints.clear()
        session.read_replica_hints[key] = (part.fetch_offset, self._now_s, strikes)
        part.preferred_replica = target.node_id
        part.sent_away = True
        self._ctx.services.request_metrics.fetch_read_replica_redirects.inc()
        return True


async def _plan(
    ctx: RequestContext, request: Any, readers: _Readers | None = None
) -> tuple[list[_TopicPlan], int]:
    coordinator = ctx.services.coordinator
    # KIP-98: read_committed consumers read up to the last stable offset only.
    read_committed = getattr(request, "isolation_level", 0) == READ_COMMITTED
    uses_ids = ctx.api_version >= 13
    budget = min(request.max_bytes, MAX_RESPONSE_BYTES)
    total = 0
    plans: list[_TopicPlan] = []
    for fetch_topic in request.topics:
        topic: TopicInfo | None
        if uses_ids:
            topic = coordinator.topic_by_id(fetch_topic.topic_id)
            missing = ErrorCode.unknown_topic_id
            plan = _TopicPlan("", fetch_topic.topic_id, [], topic)
        else:
            topic = coordinator.topic(fetch_topic.topic)
            missing = ErrorCode.unknown_topic_or_partition
            topic_id = topic.topic_id if topic else uuid.UUID(int=0)
            plan = _TopicPlan(fetch_topic.topic, topic_id, [], topic)
        plans.append(plan)
        name = topic.name if topic is not None else fetch_topic.topic if not uses_ids else None
        if name is not None and not ctx.access.allows(AclOperation.READ, TOPIC, name):
            denied = ErrorCode.topic_authorization_failed
            plan.partitions.extend(
                _PartitionPlan(fp.partition, denied) for fp in fetch_topic.partitions
            )
            continue
        targets = readers.targets(topic) if readers is not None and topic is not None else ()
        for fp in fetch_topic.partitions:
            offsets = coordinator.partition_offsets(topic.topic_id, fp.partition) if topic else None
            if topic is None or offsets is None:
                plan.partitions.append(_PartitionPlan(fp.partition, missing))
                continue
            stable = coordinator.last_stable_offset(topic.topic_id, fp.partition)
            part = _PartitionPlan(
                fp.partition,
                ErrorCode.none,
                offsets.high_watermark,
                offsets.log_start_offset,
                fetch_offset=fp.fetch_offset,
                last_stable_offset=offsets.high_watermark if stable is None else stable,
            )
            plan.partitions.append(part)
            target = targets[fp.partition] if fp.partition < len(targets) else None
            if readers is not None and readers.elsewhere(target, part, topic):
                # As a Kafka leader does: the watermarks, no records, no range check (the
                # fetch agent checks the offset).
                continue
            offset = fp.fetch_offset
            if offset < offsets.log_start_offset or offset > offsets.high_watermark:
                part.error = ErrorCode.offset_out_of_range
                continue
            end = offsets.high_watermark
            if read_committed:
                part.end_offset = end = part.last_stable_offset
                part.aborted = ()
            limit = min(fp.partition_max_bytes, budget - total)
            if offset >= end or (limit <= 0 and total > 0):
                continue
            # find_batches always includes the first batch, so a response that is
            # still empty gets at least one batch whatever the limits say (KIP-74).
            part.max_bytes = max(limit, 1)
            try:
                locations = await coordinator.find_batches(
                    topic.topic_id, fp.partition, offset, part.max_bytes, part.end_offset
                )
                if locations and read_committed:
                    part.aborted = tuple(
                        await coordinator.aborted_transactions(
                            topic.topic_id, fp.partition, offset, locations[-1].last_offset + 1
                        )
                    )
            except CoordinatorError:
                part.error = ErrorCode.kafka_storage_error  # retriable: the index is unreachable
                continue
            if locations and total > 0 and locations[0].byte_length > limit:
                continue  # only the response's first batch may exceed the limits
            part.locations = tuple(locations)
            total += sum(loc.byte_length for loc in locations)
    return plans, total


async def handle_fetch(ctx: RequestContext, request: Any) -> Any:
    membership = ctx.services.membership
    if membership.stepping_aside():
        others = leader_candidates(ctx)
        if all(a.agent_id != membership.me.agent_id for a in others):
            return _redirect(ctx, request, others)
    max_wait_s = min(request.max_wait.total_seconds(), MAX_WAIT_S)
    deadline = time.monotonic() + max(max_wait_s, 0.0)
    readers = _Readers(ctx, request)
    while True:
        plans, total = await _plan(ctx, request, readers)
        remaining = deadline - time.monotonic()
        # A partition sent to its fetch agent is answered at once, as an error is.
        answer_now = any(
            p.error != ErrorCode.none or p.sent_away for t in plans for p in t.partitions
        )
        if total >= request.min_bytes or remaining <= 0 or answer_now:
            break
        watched = [
            (t.topic_id, p.partition)
            for t in plans
            for p in t.partitions
            if p.error == ErrorCode.none
        ]
        await ctx.services.coordinator.wait_for_commit(watched, remaining)
    return await _respond(ctx, plans)


def _redirect(ctx: RequestContext, request: Any, leaders: list[AgentInfo]) -> Any:
    """NOT_LEADER_OR_FOLLOWER for every partition from an agent cut off from the database
    (it may no longer see what is committed), naming each partition's leader as Metadata
    does, with its address from v16 (KIP-951)."""
    module = response_module(FETCH, ctx.api_version)
    coordinator = ctx.services.coordinator
    zone = client_zone(ctx.client_id)
    named: dict[int, AgentInfo] = {}
    responses = []
    for fetch_topic in request.topics:
        topic = (
            coordinator.topic_by_id(fetch_topic.topic_id)
            if ctx.api_version >= 13
            else coordinator.topic(fetch_topic.topic)
        )
        placed = (
            partition_leaders(topic.topic_id.bytes, topic.partition_count, leaders, zone)
            if topic is not None
            else []
        )
        partitions = []
        for fp in fetch_topic.partitions:
            leader = placed[fp.partition] if 0 <= fp.partition < len(placed) else leaders[0]
            assert leader is not None
            named[leader.node_id] = leader
            partitions.append(
                build(
                    module.PartitionData,
                    partition_index=fp.partition,
                    error_code=ErrorCode.not_leader_or_follower,
                    high_watermark=-1,
                    last_stable_offset=-1,
                    log_start_offset=-1,
                    aborted_transactions=None,
                    preferred_read_replica=-1,
                    records=b"",
                    current_leader=build(
                        module.LeaderIdAndEpoch, leader_id=leader.node_id, leader_epoch=0
                    )
                    if hasattr(module, "LeaderIdAndEpoch")  # v12+
                    else None,
                )
            )
        responses.append(
            build(
                module.FetchableTopicResponse,
                topic=getattr(fetch_topic, "topic", ""),
                topic_id=getattr(fetch_topic, "topic_id", None),
                partitions=tuple(partitions),
            )
        )
    endpoints = node_endpoints(ctx, module, list(named.values()))
    return build(
        module.FetchResponse,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(responses),
        node_endpoints=endpoints,
    )


async def _read(ctx: RequestContext, plans: list[_TopicPlan]) -> None:
    """Fill in each planned partition's records, or its error if they cannot be read."""
    wanted = [(t, p) for t in plans for p in t.partitions if p.locations]
    if not wanted:
        return
    reads = await ctx.services.fetcher.read_many([p.locations for _, p in wanted])
    # Read-ahead for partitions read in sequence behind their end (read/zone/prefetch.py).
    ctx.services.fetcher.after_reads(
        (t.topic_id, p.partition, p.fetch_offset, p.locations[-1].last_offset + 1,
         p.high_watermark)
        for (t, p), r in zip(wanted, reads, strict=True) if r.failure is None
    )  # fmt: skip
    forget: list[tuple[uuid.UUID, int]] = []
    stale: list[tuple[_TopicPlan, _PartitionPlan, BatchLocation]] = []
    for (topic, part), read in zip(wanted, reads, strict=True):
        part.records = read.data
        failure = read.failure
        if failure is None:
            continue
        if failure.not_found:
            if not read.data:
                stale.append((topic, part, failure.location))
            forget.append((topic.topic_id, part.partition))
        elif not read.data:
            # Transient (or unknown): retriable, clients back off and fetch again.
            ctx.services.log_client_error("store", FETCH, f"fetch read failed: {failure.error!r}")
            part.error = ErrorCode.kafka_storage_error
        # With some data read, the partition answers that; the next fetch starts at the
        # batch that failed and meets the failure alone.
    if forget:
        # The view's cached coordinates may be what is stale: the next lookups (the
        # re-plan below, and later fetches) go to the database.
        ctx.services.coordinator.forget_cached(forget)
    if stale:
        await _replan(ctx, stale)


async def _replan(
    ctx: RequestContext, stale: list[tuple[_TopicPlan, _PartitionPlan, BatchLocation]]
) -> None:
    """Plan and read, once more, partitions whose first object was not found."""
    coordinator = ctx.services.coordinator
    again: list[tuple[_TopicPlan, _PartitionPlan]] = []
    for topic, part, lost in stale:
        part.locations = ()
        offsets = coordinator.partition_offsets(topic.topic_id, part.partition)
        if offsets is None:  # the topic went away meanwhile
            part.error = (
                ErrorCode.unknown_topic_id if ctx.api_version >= 13
                else ErrorCode.unknown_topic_or_partition
            )  # fmt: skip
            continue
        part.high_watermark = offsets.high_watermark
        part.log_start_offset = offsets.log_start_offset
        if part.fetch_offset < offsets.log_start_offset:
            part.error = ErrorCode.offset_out_of_range  # retention or DeleteRecords: as Kafka
            continue
        try:
            locations = await coordinator.find_batches(
                topic.topic_id, part.partition, part.fetch_offset, part.max_bytes, part.end_offset
            )
            if part.aborted is not None and locations:
                # The range may reach further than the first plan's: its aborted list too.
                part.aborted = tuple(
                    await coordinator.aborted_transactions(
                        topic.topic_id, part.partition, part.fetch_offset,
                        locations[-1].last_offset + 1,
                    )
                )  # fmt: skip
        except CoordinatorError:
            part.error = ErrorCode.kafka_storage_error
            continue
        if locations and locations[0].object_key == lost.object_key:
            # The database still names the object the store just said is not there.
            _report_lost(ctx, topic, part, lost)
            continue
        part.locations = tuple(locations)
        again.append((topic, part))
    if not again:
        return
    reads = await ctx.services.fetcher.read_many([p.locations for _, p in again])
    for (topic, part), read in zip(again, reads, strict=True):
        part.records = read.data
        failure = read.failure
        if failure is None or read.data:
            continue
        if failure.not_found:
            _report_lost(ctx, topic, part, failure.location)  # fresh coordinates, still gone
        else:
            ctx.services.log_client_error("store", FETCH, f"fetch read failed: {failure.error!r}")
            part.error = ErrorCode.kafka_storage_error


def _report_lost(
    ctx: RequestContext, topic: _TopicPlan, part: _PartitionPlan, lost: BatchLocation
) -> None:
    part.error = LOST_DATA_ERROR
    part.records = b""
    name = topic.topic.name if topic.topic is not None else str(topic.topic_id)
    ctx.services.fetcher.missing.report(
        lost.object_key,
        name,
        part.partition,
        lost.base_offset,
        lost.last_offset,
        time.monotonic(),
    )


async def _respond(ctx: RequestContext, plans: list[_TopicPlan]) -> Any:
    module = response_module(FETCH, ctx.api_version)
    try:
        await _read(ctx, plans)
    except Exception as e:  # a bug or a malformed stored batch: retriable, as before
        ctx.services.log_client_error("store", FETCH, f"fetch read failed: {e!r}")
        for part in (p for t in plans for p in t.partitions if p.locations):
            part.error, part.records = ErrorCode.kafka_storage_error, b""
    response_bytes = sum(len(p.records) for t in plans for p in t.partitions)
    throttle_ms = throttle(ctx, "fetch", response_bytes)
    if throttle_ms > 0:
        # KIP-219: over its quota, the client gets no data now, the throttle time, and a
        # muted connection; the bytes it did not get do not count.
        unthrottle(ctx, "fetch", response_bytes)
        for part in (p for t in plans for p in t.partitions):
            part.records = b""
    responses = []
    metrics = ctx.services.request_metrics
    for plan in plans:
        partitions = []
        for part in plan.partitions:
            if part.records and part.locations:
                metrics.fetched_bytes.inc(len(part.records))
                # Offsets the batches read span (the read may stop short of the plan).
                metrics.fetched_offsets.inc(
                    part.locations[-1].last_offset - part.locations[0].base_offset + 1
                )
            partitions.append(
                build(
                    module.PartitionData,
                    partition_index=part.partition,
                    error_code=part.error,
                    high_watermark=part.high_watermark,
                    last_stable_offset=part.last_stable_offset,
                    log_start_offset=part.log_start_offset,
                    aborted_transactions=None
                    if part.aborted is None
                    else tuple(
                        build(
                            module.AbortedTransaction,
                            producer_id=a.producer_id,
                            first_offset=a.first_offset,
                        )
                        for a in part.aborted
                    ),
                    preferred_read_replica=part.preferred_replica,
                    records=part.records,
                )
            )
        responses.append(
            build(
                module.FetchableTopicResponse,
                topic=plan.name,
                topic_id=plan.topic_id,
                partitions=tuple(partitions),
            )
        )
    return build(
        module.FetchResponse,
        throttle_time=datetime.timedelta(milliseconds=throttle_ms),
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(responses),
        node_endpoints=(),
    )
