"""Asyncio adapter that runs one `GroupMachine` per group for the request handlers.

Owns the groups by id, the futures of parked JoinGroup and SyncGroup requests,
and a background timer task that fires group timers at their deadlines. Must
not decide anything about the protocol (that is `groups.machine`), encode or
decode Kafka messages (that is `server.group_handlers`) or read a clock
directly: time comes from the `now_ms` callable, so tests can drive it.

Group membership lives in memory only. A restarted agent forgets members and
generations; clients then get UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION and
rejoin, which is the protocol's ordinary recovery path. Committed offsets are
durable, but they are kept by the batch coordinator, not here.

Also the group claims this agent holds (`GroupClaim`, Kafka's coordinator epoch):
the request handlers take a group's claim from the database before coordinating
it (`claimed`) and carry it in the group's offset commits. A claim is held until
the group moves to another agent (`release_foreign_groups`) or a commit finds it
superseded (`fenced`); either drops the group's state with it, so state built
under a claim never outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import GroupClaim
from driftlog.groups.machine import (
    Completions,
    GroupConfig,
    GroupDescription,
    GroupMachine,
    GroupOverview,
    GroupState,
    JoinRequest,
    JoinResult,
    LeaveResult,
    LeavingMember,
    LeftMember,
    Parked,
    SyncRequest,
    SyncResult,
    validate_join,
)

log = logging.getLogger(__name__)

R = TypeVar("R")

GROUPS_MAX = 100_000
"""Groups held in memory before Empty ones are forgotten, oldest first.

Groups with members are never forgotten; an Empty group only remembers its
generation and protocol type, and its offsets stay with the batch coordinator.
"""


CLAIMS_MAX = GROUPS_MAX
"""Claims held in memory before those of groups without state are forgotten, oldest
first (a forgotten claim is taken again, with a new epoch, when needed)."""

FENCED_LOG_INTERVAL_MS = 10_000
"""At most one fenced-commit warning per interval (with the count of the others):
while two agents disagree on membership, a group's claim can move back and forth."""


def random_member_id_suffix() -> str:
    return str(uuid.uuid4())


class GroupCoordinator:
    """Classic consumer groups: join, sync, heartbeat, leave, describe, list, delete."""

    def __init__(
        self,
        now_ms: Callable[[], int],
        config: GroupConfig | None = None,
        *,
        member_id_suffix: Callable[[], str] = random_member_id_suffix,
        groups_max: int = GROUPS_MAX,
        owns: Callable[[str], bool] = lambda group_id: True,
    ) -> None:
        self._now_ms = now_ms
        # In a cluster each group has one coordinating agent (cluster/placement.py);
        # requests for the others' groups get NOT_COORDINATOR so clients look again.
        self._owns = owns
        self._config = config if config is not None else GroupConfig()
        self._member_id_suffix = member_id_suffix
        self._groups_max = groups_max
        self._groups: dict[str, GroupMachine] = {}
        self._claims: dict[str, GroupClaim] = {}
        self._claiming: dict[str, asyncio.Future[GroupClaim]] = {}
        self._claims_max = groups_max
        self._fenced_logged_ms: int | None = None
        self._fenced_unlogged = 0
        self._joins: dict[tuple[str, str], list[asyncio.Future[JoinResult]]] = {}
        self._syncs: dict[tuple[str, str], list[asyncio.Future[SyncResult]]] = {}
        self._wakeup = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False

    # Lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the timer task; call from the running event loop."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(
                self._run_timer(), name="driftlog-group-timers"
            )

    async def close(self) -> None:
        """Stop the timer and answer every parked request with NOT_COORDINATOR."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        # NOT_COORDINATOR sends clients to look the coordinator up again, as when
        # Kafka unloads a group from a broker.
        for (_, member_id), join_waiters in self._joins.items():
            for join_waiter in join_waiters:
                if not join_waiter.done():
                    join_waiter.set_result(JoinResult(ErrorCode.not_coordinator, member_id))
        for sync_waiters in self._syncs.values():
            for sync_waiter in sync_waiters:
                if not sync_waiter.done():
                    sync_waiter.set_result(SyncResult(ErrorCode.not_coordinator))
        self._joins.clear()
        self._syncs.clear()
        self._claims.clear()
        self._claiming.clear()

    def release_foreign_groups(self) -> None:
        """Drop the groups another agent now coordinates (membership changed), and
        their claims: coming back to one takes its claim again.

        Parked joins and syncs are answered NOT_COORDINATOR, so their members
        find the new coordinator and rejoin there (offsets are in the database).
        """
        foreign = {g for g in [*self._groups, *self._claims, *self._claiming] if not self._owns(g)}
        for group_id in foreign:
            self._drop(group_id)

    # Claims -----------------------------------------------------------------------
    def claim(self, group_id: str) -> GroupClaim | None:
        """The claim this agent holds on the group, if any."""
        return self._claims.get(group_id)

    async def claimed(
        self, group_id: str, take: Callable[[], Awaitable[GroupClaim]]
    ) -> GroupClaim | None:
        """The group's claim, taken with `take` (one call at a time per group) if this
        agent holds none; None when the group moved away while it was taken. `take`'s
        errors (the database unreachable) propagate."""
        held = self._claims.get(group_id)
        if held is not None:
            return held
        if self._closed or not self._owns(group_id):
            return None
        pending = self._claiming.get(group_id)
        if pending is None:
            pending = asyncio.ensure_future(take())
            self._claiming[group_id] = pending
            pending.add_done_callback(lambda done: self._claim_taken(group_id, done))
        # Shielded: a request cancelled meanwhile (its client left) leaves the claim to land.
        await asyncio.shield(pending)
        return self._claims.get(group_id)

    def _claim_taken(self, group_id: str, done: asyncio.Future[GroupClaim]) -> None:
        # Looked at first, even when nobody waits any more (else asyncio logs it unseen).
        failed = done.cancelled() or done.exception() is not None
        if self._claiming.get(group_id) is not done:
            return  # released meanwhile: the claim it took goes unused
        del self._claiming[group_id]
        if failed:
            return
        claim = done.result()
        if self._closed or not self._owns(group_id):
            return
        # State from before the claim was taken belongs to no claim: it goes (there is
        # none unless a request created it while the claim was being taken).
        self._drop(group_id)
        if len(self._claims) >= self._claims_max:
            self._forget_claims()
        self._claims[group_id] = claim
        if claim.taken_from:
            log.info(
                "group %s: coordinating it, claim epoch %d taken over from %s",
                group_id,
                claim.epoch,
                claim.taken_from,
            )

    def fenced(self, claim: GroupClaim) -> bool:
        """A commit carrying `claim` was refused: another agent claimed the group since.

        Drops the group's claim and state if they are still this claim's (parked joins
        and syncs are answered NOT_COORDINATOR), so its members rejoin wherever the
        cluster now agrees the group belongs; False if that had happened already."""
        if self._claims.get(claim.group_id) != claim:
            return False
        self._drop(claim.group_id)
        now_ms = self._now_ms()
        if (
            self._fenced_logged_ms is None
            or now_ms - self._fenced_logged_ms >= FENCED_LOG_INTERVAL_MS
        ):
            others = (
                f" ({self._fenced_unlogged} more since the last)" if self._fenced_unlogged else ""
            )
            log.warning(
                "group %s: offset commit refused, another agent claimed the group since epoch"
                " %d; answered NOT_COORDINATOR and dropped the group's state%s",
                claim.group_id,
                claim.epoch,
                others,
            )
            self._fenced_logged_ms = now_ms
            self._fenced_unlogged = 0
        else:
            self._fenced_unlogged += 1
        return True

    def _forget_claims(self) -> None:
        """Forget the oldest claims of groups without state (never one with state)."""
        excess = len(self._claims) - self._claims_max + 1
        for group_id in [g for g in self._claims if g not in self._groups][:excess]:
            del self._claims[group_id]

    def _drop(self, group_id: str) -> None:
        """Forget the group, its claim (and any claim being taken), and answer its parked
        joins and syncs NOT_COORDINATOR."""
        self._groups.pop(group_id, None)
        self._claims.pop(group_id, None)
        self._claiming.pop(group_id, None)
        for key in [k for k in self._joins if k[0] == group_id]:
            for join_waiter in self._joins.pop(key):
                if not join_waiter.done():
                    join_waiter.set_result(JoinResult(ErrorCode.not_coordinator, key[1]))
        for key in [k for k in self._syncs if k[0] == group_id]:
            for sync_waiter in self._syncs.pop(key):
                if not sync_waiter.done():
                    sync_waiter.set_result(SyncResult(ErrorCode.not_coordinator))
        self._wakeup.set()

    # Membership -----------------------------------------------------------------
    async def join(self, group_id: str, request: JoinRequest) -> JoinResult:
        if self._closed or not self._owns(group_id):
            return JoinResult(ErrorCode.not_coordinator, request.member_id)
        error = validate_join(self._config, group_id, request)
        if error is not ErrorCode.none:
            return JoinResult(error, request.member_id)
        group = self._groups.get(group_id)
        if group is None:
            if request.member_id:
                # A member id from a group we do not know (say, before a restart):
                # the client resets its id and joins afresh.
                return JoinResult(ErrorCode.unknown_member_id, request.member_id)
            group = self._create(group_id)
        outcome = group.join(self._now_ms(), request)
        value = outcome.value
        if not isinstance(value, Parked):
            self._settle(group, outcome.completions)
            return value
        waiter: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        key = (group_id, value.member_id)
        self._joins.setdefault(key, []).append(waiter)
        self._settle(group, outcome.completions)
        return await _wait(self._joins, key, waiter)

    async def sync(self, group_id: str, request: SyncRequest) -> SyncResult:
        if self._closed or not self._owns(group_id):
            return SyncResult(ErrorCode.not_coordinator)
        if not group_id:
            return SyncResult(ErrorCode.invalid_group_id)
        group = self._groups.get(group_id)
        if group is None:
            return SyncResult(ErrorCode.unknown_member_id)
        outcome = group.sync(self._now_ms(), request)
        value = outcome.value
        if not isinstance(value, Parked):
            self._settle(group, outcome.completions)
            return value
        waiter: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        key = (group_id, value.member_id)
        self._syncs.setdefault(key, []).append(waiter)
        self._settle(group, outcome.completions)
        return await _wait(self._syncs, key, waiter)

    async def heartbeat(
        self, group_id: str, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> ErrorCode:
        if not group_id:
            return ErrorCode.invalid_group_id
        if not self._owns(group_id):
            return ErrorCode.not_coordinator
        group = self._groups.get(group_id)
        if group is None:
            return ErrorCode.unknown_member_id
        outcome = group.heartbeat(self._now_ms(), member_id, group_instance_id, generation_id)
        self._settle(group, outcome.completions)
        return outcome.value

    async def leave(self, group_id: str, members: Sequence[LeavingMember]) -> LeaveResult:
        if not group_id:
            return LeaveResult(ErrorCode.invalid_group_id)
        if not self._owns(group_id):
            return LeaveResult(ErrorCode.not_coordinator)
        group = self._groups.get(group_id)
        if group is None:
            return LeaveResult(
                ErrorCode.none,
                tuple(
                    LeftMember(m.member_id, m.group_instance_id, ErrorCode.unknown_member_id)
                    for m in members
                ),
            )
        outcome = group.leave(self._now_ms(), members)
        self._settle(group, outcome.completions)
        return outcome.value

    def validate_offset_commit(
        self, group_id: str, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> ErrorCode:
        """May this commit go ahead? GROUP_ID_NOT_FOUND: no such group and generation >= 0."""
        if not self._owns(group_id):
            return ErrorCode.not_coordinator
        group = self._groups.get(group_id)
        if group is None:
            # Generation -1 is a consumer without group management (or an admin
            # client); it needs no live group. A generation needs one.
            return ErrorCode.none if generation_id < 0 else ErrorCode.group_id_not_found
        outcome = group.validate_offset_commit(
            self._now_ms(), member_id, group_instance_id, generation_id
        )
        self._settle(group, outcome.completions)
        return outcome.value

    # Administration -----------------------------------------------------------------
    def describe(self, group_id: str) -> GroupDescription | None:
        """The group as held in memory, or None when there is none."""
        group = self._groups.get(group_id)
        return None if group is None else group.describe()

    def list_groups(self) -> list[GroupOverview]:
        return [group.overview() for group in self._groups.values()]

    def delete_group(self, group_id: str) -> ErrorCode:
        """Forget an Empty group: NONE, NON_EMPTY_GROUP, or GROUP_ID_NOT_FOUND if not held.

        The caller deletes the group's committed offsets.
        """
        group = self._groups.get(group_id)
        if group is None:
            return ErrorCode.group_id_not_found
        outcome = group.delete(self._now_ms())
        self._settle(group, outcome.completions)
        if group.state is GroupState.DEAD:
            del self._groups[group_id]
        return outcome.value

    # Timers ---------------------------------------------------------------------
    def tick(self) -> None:
        """Fire every group timer that is due now."""
        now_ms = self._now_ms()
        for group in list(self._groups.values()):
            deadline_ms = group.next_deadline_ms()
            if deadline_ms is not None and deadline_ms <= now_ms:
                self._settle(group, group.tick(now_ms))

    def next_deadline_ms(self) -> int | None:
        deadlines = (group.next_deadline_ms() for group in self._groups.values())
        return min((d for d in deadlines if d is not None), default=None)

    async def _run_timer(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                self.tick()
            except Exception:
                # A bug in one group must not stop every group's timers.
                log.exception("group timers failed")
            deadline_ms = self.next_deadline_ms()
            if deadline_ms is None:
                await self._wakeup.wait()
                continue
            delay_s = max(0, deadline_ms - self._now_ms()) / 1000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wakeup.wait()

    # Internals ------------------------------------------------------------------
    def _create(self, group_id: str) -> GroupMachine:
        if len(self._groups) >= self._groups_max:
            self._forget_empty_groups()
        group = GroupMachine(group_id, self._config, self._member_id_suffix, self._now_ms())
        self._groups[group_id] = group
        return group

    def _forget_empty_groups(self) -> None:
        empty = sorted(
            (
                g
                for g in self._groups.values()
                if g.state is GroupState.EMPTY and not g.pending_member_ids
            ),
            key=lambda g: g.state_since_ms,
        )
        excess = len(self._groups) - self._groups_max + 1
        for group in empty[:excess]:
            del self._groups[group.group_id]

    def _settle(self, group: GroupMachine, completions: Completions) -> None:
        """Answer parked requests, forget a group that never formed, re-arm the timer."""
        for member_id, join_result in completions.joins:
            for join_waiter in self._joins.pop((group.group_id, member_id), []):
                if not join_waiter.done():
                    join_waiter.set_result(join_result)
        for member_id, sync_result in completions.syncs:
            for sync_waiter in self._syncs.pop((group.group_id, member_id), []):
                if not sync_waiter.done():
                    sync_waiter.set_result(sync_result)
        if group.is_disposable() and self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]
        self._wakeup.set()


async def _wait(
    table: dict[tuple[str, str], list[asyncio.Future[R]]],
    key: tuple[str, str],
    waiter: asyncio.Future[R],
) -> R:
    try:
        return await waiter
    finally:
        # A cancelled request (its client went away) must not stay in the table.
        waiters = table.get(key)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del table[key]
