"""The shard writer: holds the lease, sequences object commits, persists them by group commit.

Object commits queue up while the previous database transaction runs; the
writer then sequences everything queued (in memory, `sequencer.py`) and
persists it in one transaction, so the database sees one transaction per
round, not one per object, and nothing else writes these rows (the seed's
row-lock convoy cannot form). Commits are answered only after their
transaction committed.

A commit of an object key that is already committed is answered with the
stored outcomes: a commit re-sent after a lost reply (a timeout, a writer
failover) never stores the object twice.

The writer is a candidate until it takes the lease (`lease.py`), and goes
back to being a candidate when it is fenced or cannot renew in time; while a
candidate it refuses commits with `NotWriter`. An agent without the writer role
(`candidate=False`) never campaigns: it only follows the writer. After a failed transaction the
outcome is unknown, so the next round starts by reloading the state.

`tick()` is one step of the lease loop with no sleeping, so a simulation can
drive it with a fake clock; `start()` runs it on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from kio.schema.errors import ErrorCode

from driftlog.clock import Clock
from driftlog.coordinator.api import (
    CommitOutcome,
    CommitRequest,
    CoordinatorError,
    CoordinatorUnavailable,
    EncodedOutcomes,
    Fenced,
    NotWriter,
    TopicInfo,
)
from driftlog.coordinator.core import transactions as txns
from driftlog.coordinator.core.lease import HeldLease, LeaseRecord, may_acquire
from driftlog.coordinator.core.retention import RetentionPolicy, limits_for, time_cutoff_ms
from driftlog.coordinator.core.sequencer import (
    PartitionKey,
    SequencedObject,
    Sequencer,
    SequencerSnapshot,
)
from driftlog.coordinator.core.transactions import (
    Decision,
    PendingOffset,
    TxnEnd,
    TxnLimits,
)
from driftlog.coordinator.engines.backend import (
    MAX_ROUNDS_IN_FLIGHT,
    Backend,
    BatchMove,
    BatchRemoval,
    BatchRewrite,
    Fence,
    KeyCleanState,
    LogStart,
    NewObject,
    OverlappingBackend,
    TxnWrite,
    outcomes_json,
)
from driftlog.metrics.registry import NULL_OBSERVER, Observer
from driftlog.storage.keys import key_time_ms
from driftlog.timeouts import within

log = logging.getLogger(__name__)

# Bounds one group-commit round so a burst cannot build an unbounded transaction.
MAX_OBJECTS_PER_TRANSACTION = 256
MAX_BATCHES_PER_TRANSACTION = 50_000
# Commits queued for the next rounds at most; past it the writer answers "unavailable"
# and agents re-send later (a database stall must not grow the queue without end).
MAX_PENDING_COMMITS = 20_000
# How often the writer looks for transactions past their timeout (and idle ids to forget).
TXN_TIMEOUT_CHECK_S = 1.0
# How long close() lets the round in progress finish.
CLOSE_ROUND_S = 10.0
DEFAULT_LEASE_MS = 10_000


class WriterListener(Protocol):
    """Who hears about durable changes (the local view)."""

    def on_applied(self, objects: Sequence[SequencedObject]) -> None: ...
    def on_reloaded(self, snapshot: SequencerSnapshot) -> None: ...
    def on_topic_put(self, topic: TopicInfo) -> None: ...
    def on_topic_dropped(self, topic: TopicInfo) -> None: ...
    def on_log_starts(self, starts: Sequence[LogStart]) -> None: ...
    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None: ...


class Listeners:
    """Forwards writer events to several listeners (the local view, the RPC stream)."""

    def __init__(self, *listeners: WriterListener) -> None:
        self.listeners = list(listeners)

    def on_applied(self, objects: Sequence[SequencedObject]) -> None:
        for listener in self.listeners:
            listener.on_applied(objects)

    def on_reloaded(self, snapshot: SequencerSnapshot) -> None:
        for listener in self.listeners:
            listener.on_reloaded(snapshot)

    def on_topic_put(self, topic: TopicInfo) -> None:
        for listener in self.listeners:
            listener.on_topic_put(topic)

    def on_topic_dropped(self, topic: TopicInfo) -> None:
        for listener in self.listeners:
            listener.on_topic_dropped(topic)

    def on_log_starts(self, starts: Sequence[LogStart]) -> None:
        for listener in self.listeners:
            listener.on_log_starts(starts)

    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None:
        for listener in self.listeners:
            listener.on_relocated(partitions)


_Pending = tuple[CommitRequest, "asyncio.Future[list[CommitOutcome]]"]


class CommitWriter:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        listener: WriterListener,
        *,
        holder: str,
        address: str = "",
        shard: int = 0,
        lease_ms: int = DEFAULT_LEASE_MS,
        retention: RetentionPolicy | None = None,
        max_commit_age_ms: int | None = None,
        txn_limits: TxnLimits | None = None,
        candidate: bool = True,
    ) -> None:
        # False: an agent without the writer role (--roles) never takes the lease.
        self.candidate = candidate
        self.retention = retention or RetentionPolicy()
        self.txn_limits = txn_limits or TxnLimits()
        # Objects older than this are refused, so the garbage collector may take an
        # uncommitted object past twice this age for an orphan (storage/keys.py).
        self.max_commit_age_ms = max_commit_age_ms
        self._backend = backend
        # Checked once: isinstance on a runtime-checkable Protocol runs Python code.
        self._overlapping = backend if isinstance(backend, OverlappingBackend) else None
        self._clock = clock
        self._listener = listener
        self.holder = holder
        self.address = address
        self.shard = shard
        self.lease_ms = lease_ms
        self.lease: HeldLease | None = None
        self._sequencer: Sequencer | None = None
        self._needs_reload = False
        self._pending: list[_Pending] = []
        # The queued future of each key: an agent re-sending a commit still queued
        # (its answer is late because the database is) waits on that one instead.
        self._pending_by_key: dict[str, asyncio.Future[list[CommitOutcome]]] = {}
        self.max_pending = MAX_PENDING_COMMITS
        self._in_flight: list[asyncio.Task[bool]] = []
        # The callers of each round in flight (failed, retriable, if the writer steps down).
        self._round_waiters: dict[asyncio.Task[bool], list[_Pending]] = {}
        self._last_object_id: int | None = None  # the last object id sequenced
        self._in_flight_objects: dict[str, SequencedObject] = {}
        self._wakeup = asyncio.Event()
        self._serial = asyncio.Lock()  # one round or topic change at a time
        self._tick_lock = asyncio.Lock()  # the timer's tick and a test's never interleave
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.commits_persisted = 0
        self.transactions = 0
        self.terms = 0  # how many times this process took the lease
        # The newest epoch this process saw in the lease row (held, or read as a candidate).
        self.epoch_seen = 0
        # Per round that stored objects: objects and batches in it, and seconds from
        # sequencing to durable (histograms once the metrics registry attaches them).
        self.round_objects: Observer = NULL_OBSERVER
        self.round_batches: Observer = NULL_OBSERVER
        self.commit_seconds: Observer = NULL_OBSERVER

    @property
    def is_writer(self) -> bool:
        return self.lease is not None

    @property
    def lease_epoch(self) -> int:
        """The epoch of the lease held, else the newest one seen (0: none yet)."""
        return self.lease.epoch if self.lease is not None else self.epoch_seen

    @property
    def queue_depth(self) -> int:
        """Commits queued for the next rounds."""
        return len(self._pending)

    @property
    def rounds_in_flight(self) -> int:
        return len(self._in_flight)

    # Lease ----------------------------------------------------------------------
    async def tick(self) -> None:
        """One step: try to take the lease, or renew it, or step down. Never sleeps."""
        async with self._tick_lock:
            await self._tick()

    async def _tick(self) -> None:
        if self.lease is None:
            if self.candidate:
                await self._try_acquire()
            return
        now_s = self._clock.monotonic_s()
        if self.lease.lapsed(now_s):
            self._step_down("the lease lapsed without renewal")
        elif self.lease.renew_due(now_s):
            fence = self._fence()
            try:
                # A renewal that hangs (packets to the database vanish) must not keep this
                # process the writer past its lease: another may take over at expiry.
                await within(self.lease.time_left_s(now_s), self._backend.renew_lease(fence))
                if self.lease is not None and self.lease.epoch == fence.epoch:
                    self.lease.renewed_at_s = now_s
            except Fenced as e:
                self._step_down(str(e), fence.epoch)
            except TimeoutError:
                self._step_down("the lease ran out while its renewal went unanswered", fence.epoch)
            except CoordinatorError as e:
                log.warning("lease renewal failed: %s", e)

    async def _try_acquire(self) -> None:
        try:
            record = await self._backend.read_lease(self.shard)
            if record is not None:
                self.epoch_seen = max(self.epoch_seen, record.epoch)
            now_ms = self._clock.wall_ms()
            if not may_acquire(record, self.holder, now_ms):
                return
            started_s = self._clock.monotonic_s()
            new = LeaseRecord(
                self.shard,
                self.holder,
                self.address,
                (record.epoch if record else 0) + 1,
                now_ms + self.lease_ms,
            )
            if not await self._backend.try_acquire_lease(record, new):
                return
        except CoordinatorError as e:
            log.warning("lease acquisition failed: %s", e)
            return
        try:
            # Rounds of an earlier term of ours may still be in flight (they fail their
            # fence now): the state must come after them, and their object ids with it.
            await self._settle()
            snapshot = await self._backend.load_sequencer(self.shard)
        except CoordinatorError as e:
            # Holding a lease we cannot use would keep everyone else out: let it go.
            log.warning("loading the writer state failed: %s; releasing the lease", e)
            with contextlib.suppress(CoordinatorError):
                await self._backend.release_lease(Fence(self.shard, new.epoch, now_ms))
            return
        self._sequencer = Sequencer(snapshot)
        self._needs_reload = False
        self.lease = HeldLease(new, self.lease_ms, started_s)
        self.epoch_seen = max(self.epoch_seen, new.epoch)
        self.terms += 1
        log.info("became writer of shard %d (epoch %d)", self.shard, new.epoch)
        self._listener.on_reloaded(snapshot)
        self._wakeup.set()

    def _step_down(self, why: str, epoch: int | None = None) -> None:
        """Stop being the writer; `epoch` names the term that failed (a late failure of
        an earlier term must not depose the current one)."""
        if self.lease is None or (epoch is not None and epoch != self.lease.epoch):
            return
        log.error("no longer writer of shard %d (epoch %d): %s", self.shard, self.lease.epoch, why)
        self.lease = None
        self._sequencer = None
        self._fail_pending(Fenced(why))
        # Rounds still in the database may commit (before a successor's takeover) or not:
        # their callers get a retriable error now and re-send, which is idempotent by
        # object key, instead of waiting on a database that may not answer.
        unknown = CoordinatorUnavailable(f"the writer stepped down ({why}); re-send")
        for round_ in self._round_waiters.values():
            _fail(round_, unknown)

    def _fence(self) -> Fence:
        assert self.lease is not None
        return Fence(self.shard, self.lease.epoch, self._clock.wall_ms() + self.lease_ms)

    async def start(self) -> None:
        """Run the lease loop (its first step is taken before returning) and the commit loop."""
        await self.tick()
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="writer-lease"))
        self._tasks.append(asyncio.create_task(self._write_loop(), name="writer-commits"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="writer-retention"))
        self._tasks.append(
            asyncio.create_task(self._txn_timeout_loop(), name="writer-txn-timeouts")
        )

    async def _retention_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.retention.check_ms / 1000)
            try:
                await self.enforce_retention()
            except CoordinatorError as e:
                log.warning("retention check failed: %s", e)
            except Exception:
                log.exception("retention check failed")

    async def enforce_retention(self) -> int:
        """Move the log start of every partition past what retention expired.

        Returns how many partitions moved. Only the writer enforces; the database
        lookups use the indexes on batches (time index, offsets)."""
        sequencer = self._sequencer
        if self.lease is None or sequencer is None:
            return 0
        now_ms = self._clock.wall_ms()
        requests: list[tuple[uuid.UUID, int, int]] = []
        for topic in list(sequencer.topics_by_id.values()):
            limits = limits_for(topic.configs, self.retention)
            if limits.unlimited:
                continue
            cutoff = time_cutoff_ms(limits, now_ms)
            for partition in range(topic.partition_count):
                part = sequencer.partitions.get((topic.topic_id, partition))
                if part is None or part.high_watermark == part.log_start_offset:
                    continue
                start, end = part.log_start_offset, part.high_watermark
                target = start
                if cutoff is not None:
                    kept = await self._backend.first_batch_at_time(
                        topic.topic_id, partition, cutoff, start, end
                    )
                    target = max(target, kept.base_offset if kept is not None else end)
                if limits.retention_bytes >= 0:
                    target = max(
                        target,
                        await self._backend.log_start_for_bytes(
                            topic.topic_id, partition, limits.retention_bytes, start
                        ),
                    )
                if target > start and await self._only_gap_before(topic, partition, start, target):
                    # Key compaction left a gap at the head of the log: nothing to delete,
                    # and moving the log start over it would make consumers' offsets in
                    # it out of range (Kafka deletes segments, so its log start stays).
                    continue
                if target > start:
                    requests.append((topic.topic_id, partition, min(target, end)))
        if requests:
            await self.advance_log_starts(requests)
        return len(requests)

    async def _only_gap_before(
        self, topic: TopicInfo, partition: int, start: int, target: int
    ) -> bool:
        """Is there no batch in [start, target) (a compacted topic's head gap)?"""
        if "compact" not in topic.configs.get("cleanup.policy", "delete").split(","):
            return False
        first = await self._backend.read_batches(topic.topic_id, partition, start, target, 1)
        return not first or first[0].base_offset >= target

    async def _lease_loop(self) -> None:
        while not self._closing:
            # Candidates poll a few times per lease; writers wake to renew on time.
            await asyncio.sleep(self.lease_ms / 10_000)
            try:
                await self.tick()
            except Exception:
                log.exception("lease step failed")

    async def close(self) -> None:
        """Finish the round in progress, fail what is still queued, release the lease."""
        self._closing = True
        self._wakeup.set()
        for task in self._tasks:
            if task.get_name() == "writer-commits":
                try:
                    await asyncio.wait_for(asyncio.shield(task), CLOSE_ROUND_S)
                except (TimeoutError, Exception):
                    task.cancel()
            else:
                task.cancel()
        self._fail_pending(NotWriter("coordinator closed"))
        if self.lease is not None:
            # Another agent can take over now instead of after the lease runs out.
            with contextlib.suppress(CoordinatorError):
                await self._backend.release_lease(self._fence())
            self.lease = None

    # Commits ----------------------------------------------------------------
    def submit(self, request: CommitRequest) -> asyncio.Future[list[CommitOutcome]]:
        future: asyncio.Future[list[CommitOutcome]] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(NotWriter("coordinator closing"))
        elif self.lease is None:
            future.set_exception(NotWriter(f"not the writer of shard {self.shard}"))
        elif (queued := self._pending_by_key.get(request.object_key)) is not None:
            queued.add_done_callback(functools.partial(_copy_result, future))
        elif len(self._pending) >= self.max_pending:
            future.set_exception(
                CoordinatorUnavailable(f"the writer has {len(self._pending)} commits queued")
            )
        else:
            self._pending.append((request, future))
            key = request.object_key
            self._pending_by_key[key] = future
            future.add_done_callback(lambda _: self._pending_by_key.pop(key, None))
            self._wakeup.set()
        return future

    def _fail_pending(self, error: CoordinatorError) -> None:
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(error)

    async def _write_loop(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending and self.lease is not None:
                if len(self._in_flight) >= MAX_ROUNDS_IN_FLIGHT:
                    await asyncio.wait({self._in_flight[0]})
                    continue
                round_ = self._take_round()
                try:
                    async with self._serial:
                        await self._start_round(round_)
                except Exception as e:
                    # Never let one bad round stop the writer: everyone behind it would hang.
                    # It may have been partly sequenced: forget that, reload before the next.
                    log.exception("coordinator round failed")
                    for request, _ in round_:
                        self._in_flight_objects.pop(request.object_key, None)
                    self._needs_reload = True
                    _fail(round_, CoordinatorUnavailable(repr(e)))
        await self._settle()

    def _take_round(self) -> list[_Pending]:
        """The next round: at most MAX_OBJECTS_PER_TRANSACTION objects and, past the
        first object, MAX_BATCHES_PER_TRANSACTION batches (a transaction stays short)."""
        count, batches = 0, 0
        for request, _ in self._pending[:MAX_OBJECTS_PER_TRANSACTION]:
            batches += len(request.batches)
            if count and batches > MAX_BATCHES_PER_TRANSACTION:
                break
            count += 1
        round_ = self._pending[:count]
        del self._pending[:count]
        return round_

    async def commit_round(self, round_: list[_Pending]) -> None:
        """Sequence and persist one round of commits and answer them, to completion."""
        async with self._serial:
            task = await self._start_round(round_)
        if task is not None:
            await task

    async def _settle(self) -> None:
        """Wait until no round is in flight."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def _start_round(self, round_: list[_Pending]) -> asyncio.Task[bool] | None:
        """Sequence a round and start persisting it; returns the task that finishes it.

        Rounds are pipelined: on a backend whose transactions can overlap
        (PostgreSQL), the next round is sequenced and its rows inserted while the
        previous one commits, and it commits only after it (failing if it failed).
        """
        retried = [r.object_key for r, _ in round_ if r.retry]
        try:
            while True:
                if self._needs_reload:
                    await self._settle()
                    await self._reload()
                # Keys are unique per upload: only a re-sent commit can be committed
                # already (or be in a round still in flight).
                still_in_flight = [k for k in retried if k in self._in_flight_objects]
                resent = [k for k in retried if k not in self._in_flight_objects]
                existing = await self._backend.committed_outcomes(resent) if resent else {}
                # While we waited, a round in flight may have failed (this round must not
                # be sequenced on its offsets) or finished (look its keys up too).
                if not self._needs_reload and all(
                    k in self._in_flight_objects for k in still_in_flight
                ):
                    break
        except CoordinatorError as e:
            _fail(round_, e)
            return None
        if self.lease is None or self._sequencer is None:
            _fail(round_, NotWriter("lost the lease"))
            return None
        now_ms = self._clock.wall_ms()
        started_s = self._clock.monotonic_s()
        sequenced: list[SequencedObject] = []
        answers: dict[str, list[CommitOutcome] | SequencedObject] = dict(existing)
        try:
            for request, _ in round_:
                key = request.object_key
                if key in answers:
                    continue
                in_flight = self._in_flight_objects.get(key)
                if in_flight is not None:
                    # Its round commits before this one, or this one fails with it.
                    answers[key] = in_flight
                    continue
                if self._too_old(key, now_ms):
                    # Not stored: the collector may already take it for an orphan. The
                    # producer retries with a new upload.
                    log.warning("refused the commit of %s: older than the commit age", key)
                    answers[key] = [CommitOutcome(ErrorCode.request_timed_out)] * len(
                        request.batches
                    )
                    continue
                obj = self._sequencer.sequence(key, request.object_size, request.batches, now_ms)
                sequenced.append(obj)
                answers[key] = obj
                self._in_flight_objects[key] = obj
        except Exception as e:
            # A malformed request broke sequencing midway: what was sequenced is not
            # persisted, so the state is ahead of the database. Start again from it.
            log.exception("sequencing a round failed")
            for obj in sequenced:
                self._in_flight_objects.pop(obj.object_key, None)
            self._needs_reload = True
            _fail(round_, CoordinatorUnavailable(repr(e)))
            return None
        previous = self._in_flight[-1] if self._in_flight else None
        # This round commits only once the last object sequenced before it has.
        after_object_id = self._last_object_id if previous is not None else None
        if sequenced:
            self._last_object_id = sequenced[-1].object_id
        task = asyncio.create_task(
            self._finish_round(
                round_, sequenced, answers, self._fence(), previous, after_object_id, started_s
            )
        )
        self._in_flight.append(task)
        self._round_waiters[task] = round_
        return task

    def _too_old(self, key: str, now_ms: int) -> bool:
        if self.max_commit_age_ms is None:
            return False
        uploaded_ms = key_time_ms(key)
        return uploaded_ms is not None and now_ms - uploaded_ms > self.max_commit_age_ms

    async def _finish_round(
        self,
        round_: list[_Pending],
        sequenced: list[SequencedObject],
        answers: dict[str, list[CommitOutcome] | SequencedObject],
        fence: Fence,
        previous: asyncio.Task[bool] | None,
        after_object_id: int | None,
        started_s: float,
    ) -> bool:
        try:
            return await self._persist_and_answer(
                round_, sequenced, answers, fence, previous, after_object_id, started_s
            )
        finally:
            self._in_flight.remove(asyncio.current_task())  # type: ignore[arg-type]
            self._round_waiters.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            for obj in sequenced:
                self._in_flight_objects.pop(obj.object_key, None)

    async def _persist_and_answer(
        self,
        round_: list[_Pending],
        sequenced: list[SequencedObject],
        answers: dict[str, list[CommitOutcome] | SequencedObject],
        fence: Fence,
        previous: asyncio.Task[bool] | None,
        after_object_id: int | None,
        started_s: float,
    ) -> bool:
        after = _succeeded(previous)
        overlapping = self._overlapping
        try:
            if sequenced and overlapping is not None:
                # The server orders it after the previous round (`OverlappingBackend`).
                await overlapping.persist_objects_overlapping(
                    fence, sequenced, after, after_object_id
                )
            # Answered and applied after the previous round. (If that one's reply was
            # lost, its outcome is unknown here: fail this one too; the reload below
            # finds both, and re-sent commits get their stored outcomes.)
            if not await after:
                raise CoordinatorUnavailable("an earlier transaction failed")
            if sequenced and overlapping is None:
                await self._backend.persist_objects(fence, sequenced)
        except Fenced as e:
            _fail(round_, e)  # first: this round's callers learn they were fenced
            self._step_down(str(e), fence.epoch)
            return False
        except Exception as e:
            log.error("commit of %d objects failed: %r", len(sequenced), e)
            error = e if isinstance(e, CoordinatorError) else CoordinatorUnavailable(repr(e))
            _fail(round_, error)
            if self.lease is not None and fence.epoch == self.lease.epoch:
                # The outcome is unknown (a COMMIT can fail after reaching disk): reload
                # what the database holds before sequencing again, and send back what
                # queued behind this round so it is re-sent after it, in order.
                self._needs_reload = True
                self._fail_pending(error)
            return False
        if self.lease is not None and fence.epoch == self.lease.epoch:
            self.lease.renewed_at_s = max(self.lease.renewed_at_s, started_s)
            if self._sequencer is not None:
                self._sequencer.applied(sequenced)
        if sequenced:
            self.transactions += 1
            self.commits_persisted += len(sequenced)
            self.commit_seconds.observe(self._clock.monotonic_s() - started_s)
            self.round_objects.observe(len(sequenced))
            self.round_batches.observe(sum(len(obj.rows) for obj in sequenced))
        # Durable: answer first, then tell the listeners (whose failure must not leave
        # a committed round unanswered).
        for request, future in round_:
            answer = answers[request.object_key]
            if future.done():
                continue
            if isinstance(answer, SequencedObject):
                # With the JSON the backend stored: the RPC replies with it as is.
                future.set_result(EncodedOutcomes(answer.outcomes, outcomes_json(answer)))
            else:
                future.set_result(answer)
        if sequenced:
            try:
                self._listener.on_applied(sequenced)
            except Exception:
                log.exception("a listener failed on a committed round")
        return True

    async def _reload(self) -> None:
        snapshot = await self._backend.load_sequencer(self.shard)
        self._sequencer = Sequencer(snapshot)
        self._needs_reload = False
        self._listener.on_reloaded(snapshot)

    # Topics -------------------------------------------------------------------
    def _require_writer(self) -> Sequencer:
        if self.lease is None or self._sequencer is None:
            raise NotWriter(f"not the writer of shard {self.shard}")
        return self._sequencer

    async def create_topic(
        self, name: str, partition_count: int, configs: Mapping[str, str]
    ) -> tuple[ErrorCode, TopicInfo | None]:
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            existing = _named(sequencer, name)
            if existing is not None:
                return ErrorCode.topic_already_exists, existing
            topic = TopicInfo(name, uuid.uuid4(), partition_count, dict(configs))
            await self._put_topic(sequencer, topic, 0)
            return ErrorCode.none, topic

    async def _put_topic(self, sequencer: Sequencer, topic: TopicInfo, old_count: int) -> None:
        fence = self._fence()
        try:
            await self._backend.put_topic(fence, topic, old_count)
        except Fenced as e:
            self._step_down(str(e), fence.epoch)
            raise
        except CoordinatorError:
            self._needs_reload = True  # it may have committed: ask the database
            raise
        sequencer.put_topic(topic)
        self._listener.on_topic_put(topic)

    async def _ready_for_topic_change(self) -> Sequencer:
        # Ordered after the rounds before it, on state that matches the database.
        await self._settle()
        self._require_writer()
        if self._needs_reload:
            await self._reload()
        return self._require_writer()

    async def delete_topic(self, name: str) -> ErrorCode:
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            topic = _named(sequencer, name)
            if topic is None:
                return ErrorCode.unknown_topic_or_partition
            fence = self._fence()
            try:
                await self._backend.drop_topic(fence, topic, self._clock.wall_ms())
            except Fenced as e:
                self._step_down(str(e), fence.epoch)
                raise
            except CoordinatorError:
                self._needs_reload = True  # it may have committed: ask the database
                raise
            sequencer.drop_topic(topic.topic_id)
            self._listener.on_topic_dropped(topic)
            return ErrorCode.none

    async def advance_log_starts(
        self, requests: Sequence[tuple[uuid.UUID, int, int]]
    ) -> list[tuple[ErrorCode, int]]:
        """Move log starts forward (DeleteRecords, retention): per (topic id, partition,
        offset), the error and the log start after it. -1 means the high watermark."""
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            answers = [sequencer.advance_log_start((t, p), o) for t, p, o in requests]
            moved = {
                (t, p): start
                for (t, p, _), (error, start) in zip(requests, answers, strict=True)
                if error == ErrorCode.none
            }
            starts = [LogStart(t, p, start) for (t, p), start in moved.items()]
            if not starts:
                return answers
            fence = self._fence()
            try:
                await self._backend.set_log_starts(fence, starts, self._clock.wall_ms())
            except Fenced as e:
                self._step_down(str(e), fence.epoch)
                raise
            except CoordinatorError:
                self._needs_reload = True  # the sequencer moved; the database may not have
                raise
            self._listener.on_log_starts(starts)
            return answers

    async def relocate(
        self, key: str, size: int, moves: Sequence[BatchMove], level: int = 1
    ) -> tuple[NewObject, int] | None:
        """The compactor's swap: `moves` now live in the uploaded object `key`.

        Ordered after the rounds before it, like a topic change. Returns the object
        as stored and how many batches moved; None if the object is too old to
        commit (the collector may take it for an orphan: the compactor drops it)."""
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            now_ms = self._clock.wall_ms()
            if self._too_old(key, now_ms):
                return None
            new_object = NewObject(sequencer.take_object_id(), key, size, now_ms, level)
            fence = self._fence()
            try:
                moved = await self._backend.relocate_batches(fence, new_object, moves, now_ms)
            except Fenced as e:
                self._step_down(str(e), fence.epoch)
                raise
            except CoordinatorError:
                self._needs_reload = True  # the object id may be taken: ask the database
                raise
            self._listener.on_relocated(sorted({(m.topic_id, m.partition) for m in moves}))
            return new_object, moved

    # Transactions ---------------------------------------------------------------
    # Every change of transaction state runs under `_serial`, so it is ordered with the
    # rounds and topic changes around it; those that end a transaction first let the
    # rounds in flight commit (the markers' offsets come after their data, and a failed
    # round must not leave a marker committed past a gap).

    async def init_producer_id(
        self,
        transactional_id: str,
        timeout_ms: int,
        expected_producer_id: int = -1,
        expected_epoch: int = -1,
    ) -> tuple[ErrorCode, int, int]:
        """InitProducerId with a transactional id: (error, producer id, epoch)."""
        current = self._require_writer().transactions.get(transactional_id)
        fresh = -1
        if current is None or txns.epoch_exhausted(current.epoch):
            fresh = await self._backend.allocate_producer_id()

        def decide(sequencer: Sequencer, now_ms: int) -> tuple[Decision, TxnWrite]:
            now_current = sequencer.transactions.get(transactional_id)
            if fresh < 0 and (now_current is None or txns.epoch_exhausted(now_current.epoch)):
                # It changed since we looked (expired, reloaded): the client asks again.
                return Decision(ErrorCode.concurrent_transactions), TxnWrite()
            return txns.init_producer_id(
                now_current, transactional_id, timeout_ms, expected_producer_id, expected_epoch,
                fresh, now_ms, self.txn_limits,
            ), TxnWrite()  # fmt: skip

        decision = await self._change_transactions(decide, may_end=True)
        if decision.record is None or decision.error not in (ErrorCode.none,):
            return decision.error, -1, -1
        return decision.error, decision.record.producer_id, decision.record.epoch

    async def add_to_transaction(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        *,
        partitions: Sequence[tuple[uuid.UUID, int]] = (),
        groups: Sequence[str] = (),
    ) -> ErrorCode:
        """AddPartitionsToTxn (partitions) and AddOffsetsToTxn (groups)."""

        def decide(sequencer: Sequencer, now_ms: int) -> tuple[Decision, TxnWrite]:
            current = sequencer.transactions.get(transactional_id)
            return txns.add_to_transaction(
                current, producer_id, epoch, now_ms, partitions=partitions, groups=groups
            ), TxnWrite()

        return (await self._change_transactions(decide, may_end=False)).error

    async def txn_offset_commit(
        self, transactional_id: str, producer_id: int, epoch: int, offsets: Sequence[PendingOffset]
    ) -> ErrorCode:
        """TxnOffsetCommit: offsets visible to the group once the transaction commits."""
        group_ids = {o.group_id for o in offsets}

        def decide(sequencer: Sequencer, now_ms: int) -> tuple[Decision, TxnWrite]:
            current = sequencer.transactions.get(transactional_id)
            for group_id in group_ids:
                error = txns.check_offset_commit(current, producer_id, epoch, group_id)
                if error != ErrorCode.none:
                    return Decision(error), TxnWrite()
            return Decision(ErrorCode.none), TxnWrite(pending_offsets=list(offsets))

        return (await self._change_transactions(decide, may_end=False)).error

    async def end_transaction(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> ErrorCode:
        """EndTxn: the markers, the new state and the group offsets, in one transaction."""

        def decide(sequencer: Sequencer, now_ms: int) -> tuple[Decision, TxnWrite]:
            current = sequencer.transactions.get(transactional_id)
            return txns.end_transaction(current, producer_id, epoch, commit, now_ms), TxnWrite()

        return (await self._change_transactions(decide, may_end=True)).error

    async def expire_transactions(self) -> int:
        """Abort the transactions past their timeout (fencing their producers) and forget
        idle transactional ids. Returns how many transactions were aborted."""
        sequencer = self._sequencer
        if self.lease is None or sequencer is None:
            return 0
        now_ms = self._clock.wall_ms()
        limits = self.txn_limits
        if not any(
            txns.timed_out(t, now_ms) or txns.id_expired(t, now_ms, limits)
            for t in sequencer.transactions.values()
        ):
            return 0
        aborted = 0

        def decide(sequencer: Sequencer, now_ms: int) -> tuple[Decision, TxnWrite]:
            nonlocal aborted
            write = TxnWrite()
            for txn in list(sequencer.transactions.values()):
                if txns.id_expired(txn, now_ms, limits):
                    write.expired.append(txn.transactional_id)
                    continue
                decision = txns.expire(txn, now_ms)
                if decision.end is not None and decision.record is not None:
                    log.warning(
                        "transaction %r (producer %d) passed its timeout of %d ms: aborted",
                        txn.transactional_id, txn.producer_id, txn.timeout_ms,
                    )  # fmt: skip
                    self._end_into(sequencer, decision, write, now_ms)
                    aborted += 1
            return txns.NOTHING, write

        await self._change_transactions(decide, may_end=True)
        return aborted

    async def write_markers(
        self, markers: Sequence[TxnEnd]
    ) -> dict[tuple[int, uuid.UUID, int], ErrorCode]:
        """WriteTxnMarkers (`kafka-transactions.sh abort` of a hanging transaction): markers
        written as a partition leader writes them, without the transaction coordinator's
        state. A marker older than the producer's epoch in a partition is refused
        (INVALID_PRODUCER_EPOCH), as Kafka's log does. Errors per (producer, partition)."""
        errors: dict[tuple[int, uuid.UUID, int], ErrorCode] = {}

        def decide(sequencer: Sequencer, now_ms: int) -> tuple[Decision, TxnWrite]:
            write = TxnWrite()
            for end in markers:
                accepted = []
                for topic_id, partition in end.partitions:
                    key = (end.producer_id, topic_id, partition)
                    state = sequencer.producers.get(key)
                    if (topic_id, partition) not in sequencer.partitions:
                        errors[key] = ErrorCode.unknown_topic_or_partition
                    elif state is not None and end.epoch < state.epoch:
                        errors[key] = ErrorCode.invalid_producer_epoch
                    else:
                        errors[key] = ErrorCode.none
                        accepted.append((topic_id, partition))
                if accepted:
                    written = dataclasses.replace(end, partitions=frozenset(accepted))
                    assert self.lease is not None
                    write.markers.append(
                        sequencer.end_transaction(written, self.lease.epoch, now_ms)
                    )
            return txns.NOTHING, write

        await self._change_transactions(decide, may_end=True)
        return errors

    async def _txn_timeout_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(TXN_TIMEOUT_CHECK_S)
            try:
                await self.expire_transactions()
            except CoordinatorError as e:
                log.warning("transaction timeout check failed: %s", e)
            except Exception:
                log.exception("transaction timeout check failed")

    def _end_into(
        self, sequencer: Sequencer, decision: Decision, write: TxnWrite, now_ms: int
    ) -> None:
        """Add a decision's new state, and its markers if it ends a transaction, to `write`."""
        if decision.record is not None:
            write.transactions.append(decision.record)
        end = decision.end
        if end is not None:
            assert self.lease is not None
            write.markers.append(sequencer.end_transaction(end, self.lease.epoch, now_ms))
            write.settled.append((end.producer_id, end.commit))

    async def _change_transactions(
        self,
        decide: Callable[[Sequencer, int], tuple[Decision, TxnWrite]],
        *,
        may_end: bool,
    ) -> Decision:
        async with self._serial:
            if may_end or self._needs_reload:
                sequencer = await self._ready_for_topic_change()
            else:
                sequencer = self._require_writer()
            now_ms = self._clock.wall_ms()
            decision, write = decide(sequencer, now_ms)
            self._end_into(sequencer, decision, write, now_ms)
            fence = self._fence()
            if not (write.transactions or write.expired or write.markers or write.pending_offsets):
                # Nothing to store, but the answer comes from this writer's memory: only
                # a writer still holding the lease may give it (a deposed one could say
                # NONE to an EndTxn its successor still holds open).
                try:
                    await self._backend.renew_lease(fence)
                except Fenced as e:
                    self._step_down(str(e), fence.epoch)
                    raise
                return decision
            try:
                await self._backend.persist_transactions(fence, write)
            except Fenced as e:
                self._step_down(str(e), fence.epoch)
                raise
            except CoordinatorError:
                # It may have committed; the sequencer's offsets and producer states
                # moved for the markers: ask the database.
                self._needs_reload = True
                raise
            sequencer.applied(write.markers)
            for txn in write.transactions:
                sequencer.put_transaction(txn)
            for transactional_id in write.expired:
                sequencer.drop_transaction(transactional_id)
            if write.markers:
                self.transactions += 1
                try:
                    self._listener.on_applied(write.markers)
                except Exception:
                    log.exception("a listener failed on committed transaction markers")
            return decision

    async def rewrite_batches(
        self,
        key: str | None,
        size: int,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
    ) -> int | None:
        """Key compaction's swap: `rewrites` now live, smaller, in the uploaded object `key`
        (None when nothing was rewritten), `removals` are gone, the partition's cleaning
        state is `state`. Ordered after the rounds before it. Returns how many batch rows
        changed; None if the object is too old to commit (the caller drops it)."""
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            now_ms = self._clock.wall_ms()
            new_object = None
            if key is not None:
                if self._too_old(key, now_ms):
                    return None
                new_object = NewObject(sequencer.take_object_id(), key, size, now_ms, 1)
            fence = self._fence()
            try:
                changed = await self._backend.rewrite_batches(
                    fence, new_object, rewrites, removals, state, now_ms
                )
            except Fenced as e:
                self._step_down(str(e), fence.epoch)
                raise
            except CoordinatorError:
                self._needs_reload = True  # the object id may be taken: ask the database
                raise
            touched = {(r.topic_id, r.partition) for r in rewrites}
            touched |= {(r.topic_id, r.partition) for r in removals}
            self._listener.on_relocated(sorted(touched))
            return changed

    async def create_partitions(self, name: str, new_total: int) -> ErrorCode:
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            topic = _named(sequencer, name)
            if topic is None:
                return ErrorCode.unknown_topic_or_partition
            if new_total <= topic.partition_count:
                return ErrorCode.invalid_partitions
            grown = TopicInfo(topic.name, topic.topic_id, new_total, topic.configs)
            await self._put_topic(sequencer, grown, topic.partition_count)
            return ErrorCode.none

    async def alter_topic_configs(self, name: str, configs: Mapping[str, str | None]) -> ErrorCode:
        async with self._serial:
            sequencer = await self._ready_for_topic_change()
            topic = _named(sequencer, name)
            if topic is None:
                return ErrorCode.unknown_topic_or_partition
            changed = topic.with_configs(configs)
            await self._put_topic(sequencer, changed, topic.partition_count)
            return ErrorCode.none


def _named(sequencer: Sequencer, name: str) -> TopicInfo | None:
    return next((t for t in sequencer.topics_by_id.values() if t.name == name), None)


def _succeeded(previous: asyncio.Task[bool] | None) -> asyncio.Future[bool]:
    """Resolves True once the previous round committed (or when there is none)."""
    result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(task: asyncio.Task[bool]) -> None:
        if not result.done():
            result.set_result(not task.cancelled() and task.exception() is None and task.result())

    if previous is None:
        result.set_result(True)
    else:
        previous.add_done_callback(settle)
    return result


def _copy_result(
    to: asyncio.Future[list[CommitOutcome]], done: asyncio.Future[list[CommitOutcome]]
) -> None:
    if to.done():
        return
    if done.cancelled():
        to.cancel()
    elif (error := done.exception()) is not None:
        to.set_exception(error)
    else:
        to.set_result(done.result())


def _fail(round_: Sequence[_Pending], error: CoordinatorError) -> None:
    for _, future in round_:
        if not future.done():
            future.set_exception(error)
