"""The classic consumer-group protocol of one group, as a pure state machine.

Owns membership, generations, protocol selection, the leader's assignment and
every timer of the classic (pre-KIP-848) group protocol: member sessions, the
join phase (rebalance timeout), pending members (KIP-394) and pending syncs.
Must not do I/O, await, read a clock or draw random numbers: every event
method takes `now_ms`, and the random part of member ids comes from the
`member_id_suffix` callable given at construction. Committed offsets are not
kept here (the batch coordinator stores them); this module only says whether a
commit from a given member and generation is allowed.

Every event method first fires the timers that are due at `now_ms`, then
handles its event, and returns an `Outcome`: the caller's own answer, plus
`Completions`, the answers owed to requests parked earlier. A JoinGroup or
SyncGroup that must wait gets `Parked(member_id)`; its answer later appears in
some `Completions` under that member id.

States and transitions (the names are Kafka's, from GroupMetadata.scala):

    Empty               -- join by a new member ---------------------> PreparingRebalance
    PreparingRebalance  -- every member and pending member rejoined,
                           or the rebalance timeout elapsed ---------> CompletingRebalance,
                                                                        or Empty if nobody is left
    CompletingRebalance -- SyncGroup from the leader ----------------> Stable
    CompletingRebalance -- join with new metadata, leave, session
                           expiry, pending-sync timeout -------------> PreparingRebalance
    Stable              -- join from the leader, join with new
                           metadata, leave, session expiry,
                           pending-sync timeout ---------------------> PreparingRebalance
    Empty               -- DeleteGroups ------------------------------> Dead

Rules:

* Each completed join phase starts a new generation (generation ids only grow)
  and picks the protocol every member supports that most members prefer.
* A member parked in JoinGroup or SyncGroup never expires: it is waiting on us,
  not silent. A brand-new member parked in its first JoinGroup expires after
  `NEW_MEMBER_JOIN_TIMEOUT_MS`, as in Kafka, so abandoned joins do not pile up.
* When the join phase ends on the rebalance timeout, dynamic members that did
  not rejoin are removed; static members (KIP-345) keep their seat until their
  session expires or they miss the pending-sync deadline.
* Members that got a JoinGroup answer must send SyncGroup within the rebalance
  timeout, or they are removed and the group rebalances (Kafka's DelayedSync).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kio.schema.errors import ErrorCode

T = TypeVar("T")

UNKNOWN_MEMBER_ID = ""
"""The member id a client sends before the coordinator gave it one."""

NO_GENERATION = -1

NEW_MEMBER_JOIN_TIMEOUT_MS = 5 * 60 * 1000
"""How long a brand-new member may stay parked in JoinGroup (Kafka's NewMemberJoinTimeoutMs)."""

_TICK_ROUNDS_MAX = 1_000
"""Timer rounds one `tick` may run; each round re-arms every due timer in the future."""


class GroupState(enum.Enum):
    """Group states, valued by the names Kafka reports in DescribeGroups and ListGroups."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Broker-side group limits; the defaults are Kafka's except where noted."""

    session_timeout_ms_min: int = 6_000
    session_timeout_ms_max: int = 1_800_000
    members_max: int = 2**31 - 1
    initial_rebalance_delay_ms: int = 0
    """Kafka's group.initial.rebalance.delay.ms (default 3000 there): how long the
    first join phase of an empty group waits for more members. Driftlog defaults
    to 0 so a lone consumer starts at once."""


@dataclass(frozen=True, slots=True)
class ProtocolMetadata:
    """One protocol a member supports (e.g. an assignor) and its opaque metadata."""

    name: str
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinRequest:
    member_id: str
    protocol_type: str
    protocols: tuple[ProtocolMetadata, ...]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    group_instance_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    require_known_member_id: bool = True
    """KIP-394 (JoinGroup v4+): a new dynamic member first gets MEMBER_ID_REQUIRED."""
    supports_skip_assignment: bool = True
    """KIP-814 (JoinGroup v9+): a static leader rejoining a stable group may skip assigning."""


@dataclass(frozen=True, slots=True)
class JoinedMember:
    """A member as the leader sees it in its JoinGroup answer."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinResult:
    error: ErrorCode
    member_id: str
    generation_id: int = NO_GENERATION
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str = ""
    skip_assignment: bool = False
    members: tuple[JoinedMember, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberAssignment:
    member_id: str
    assignment: bytes


@dataclass(frozen=True, slots=True)
class SyncRequest:
    member_id: str
    generation_id: int
    group_instance_id: str | None = None
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignments: tuple[MemberAssignment, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncResult:
    error: ErrorCode
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


@dataclass(frozen=True, slots=True)
class LeavingMember:
    """A member to remove; an empty member id with an instance id removes a static member."""

    member_id: str
    group_instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeftMember:
    member_id: str
    group_instance_id: str | None
    error: ErrorCode


@dataclass(frozen=True, slots=True)
class LeaveResult:
    error: ErrorCode
    members: tuple[LeftMember, ...] = ()


@dataclass(frozen=True, slots=True)
class Parked:
    """The request waits; its answer will come in `Completions` under `member_id`."""

    member_id: str


@dataclass(frozen=True, slots=True)
class Completions:
    """Answers owed to parked requests, in the order they were produced."""

    joins: tuple[tuple[str, JoinResult], ...] = ()
    syncs: tuple[tuple[str, SyncResult], ...] = ()


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What an event method returns: the caller's answer and the answers owed to others."""

    value: T
    completions: Completions


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: GroupState
    protocol_type: str
    protocol: str
    generation_id: int
    members: tuple[MemberDescription, ...]


@dataclass(frozen=True, slots=True)
class GroupOverview:
    group_id: str
    protocol_type: str
    state: GroupState


def validate_join(config: GroupConfig, group_id: str, request: JoinRequest) -> ErrorCode:
    """Checks that need no group: run them before creating one for a join."""
    if not group_id:
        return ErrorCode.invalid_group_id
    session_timeout_ms = request.session_timeout_ms
    if not config.session_timeout_ms_min <= session_timeout_ms <= config.session_timeout_ms_max:
        return ErrorCode.invalid_session_timeout
    return ErrorCode.none


def _join_error(member_id: str, error: ErrorCode) -> JoinResult:
    return JoinResult(error=error, member_id=member_id)


@dataclass(slots=True)
class _Member:
    """A member's mutable state inside the machine (never handed out)."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    protocol_type: str
    protocols: tuple[ProtocolMetadata, ...]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    deadline_ms: int
    assignment: bytes = b""
    awaiting_join: bool = False
    awaiting_sync: bool = False
    is_new: bool = False

    def supports(self, protocol: str) -> bool:
        return any(p.name == protocol for p in self.protocols)

    def metadata_for(self, protocol: str) -> bytes:
        for p in self.protocols:
            if p.name == protocol:
                return p.metadata
        return b""

    def vote(self, candidates: set[str]) -> str:
        # A member votes for its most preferred protocol that everyone supports.
        return next(p.name for p in self.protocols if p.name in candidates)

    def can_expire(self) -> bool:
        return self.is_new or not (self.awaiting_join or self.awaiting_sync)

    def update(self, request: JoinRequest) -> None:
        self.protocols = request.protocols
        self.protocol_type = request.protocol_type
        self.session_timeout_ms = request.session_timeout_ms
        self.rebalance_timeout_ms = request.rebalance_timeout_ms
        self.client_id = request.client_id
        self.client_host = request.client_host


class GroupMachine:
    """One classic group. Not thread-safe; the caller serialises calls."""

    def __init__(
        self,
        group_id: str,
        config: GroupConfig,
        member_id_suffix: Callable[[], str],
        now_ms: int,
    ) -> None:
        self.group_id = group_id
        self._config = config
        self._member_id_suffix = member_id_suffix
        self._state = GroupState.EMPTY
        self._state_since_ms = now_ms
        self._generation_id = 0
        self._protocol_type: str | None = None
        self._protocol_name: str | None = None
        self._leader_id: str | None = None
        self._members: dict[str, _Member] = {}
        self._static_members: dict[str, str] = {}
        """group.instance.id to its current member id (KIP-345)."""
        self._pending_members: dict[str, int] = {}
        """Ids handed out with MEMBER_ID_REQUIRED, to their expiry (KIP-394)."""
        self._pending_sync: set[str] = set()
        self._sync_deadline_ms: int | None = None
        self._join_deadline_ms: int | None = None
        self._initial_delay_remaining_ms: int | None = None
        """Set while an empty group's first join phase is delayed (Kafka's InitialDelayedJoin)."""
        self._new_member_added = False
        self._out_joins: list[tuple[str, JoinResult]] = []
        self._out_syncs: list[tuple[str, SyncResult]] = []

    # Read-only views -------------------------------------------------------------
    @property
    def state(self) -> GroupState:
        return self._state

    @property
    def state_since_ms(self) -> int:
        return self._state_since_ms

    @property
    def generation_id(self) -> int:
        return self._generation_id

    @property
    def protocol_type(self) -> str | None:
        return self._protocol_type

    @property
    def protocol_name(self) -> str | None:
        return self._protocol_name

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(self._members)

    @property
    def pending_member_ids(self) -> tuple[str, ...]:
        return tuple(self._pending_members)

    def is_disposable(self) -> bool:
        """True when forgetting the group loses nothing: never formed, nobody waiting."""
        return (
            self._state is GroupState.EMPTY
            and self._generation_id == 0
            and not self._members
            and not self._pending_members
        )

    def describe(self) -> GroupDescription:
        # Kafka shows the protocol and the members' metadata and assignments only
        # once the group is Stable; before that they are not settled.
        stable = self._state is GroupState.STABLE
        protocol = (self._protocol_name or "") if stable else ""
        members = tuple(
            MemberDescription(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                metadata=m.metadata_for(protocol) if stable else b"",
                assignment=m.assignment if stable else b"",
            )
            for m in self._members.values()
        )
        return GroupDescription(
            group_id=self.group_id,
            state=self._state,
            protocol_type=self._protocol_type or "",
            protocol=protocol,
            generation_id=self._generation_id,
            members=members,
        )

    def overview(self) -> GroupOverview:
        return GroupOverview(self.group_id, self._protocol_type or "", self._state)

    # Events ------------------------------------------------------------------------
    def join(self, now_ms: int, request: JoinRequest) -> Outcome[JoinResult | Parked]:
        self._fire_due(now_ms)
        value = self._join(now_ms, request)
        return Outcome(value, self._take())

    def sync(self, now_ms: int, request: SyncRequest) -> Outcome[SyncResult | Parked]:
        self._fire_due(now_ms)
        value = self._sync(now_ms, request)
        return Outcome(value, self._take())

    def heartbeat(
        self, now_ms: int, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> Outcome[ErrorCode]:
        self._fire_due(now_ms)
        value = self._heartbeat(now_ms, member_id, group_instance_id, generation_id)
        return Outcome(value, self._take())

    def leave(self, now_ms: int, members: Sequence[LeavingMember]) -> Outcome[LeaveResult]:
        self._fire_due(now_ms)
        value = self._leave(now_ms, members)
        return Outcome(value, self._take())

    def validate_offset_commit(
        self, now_ms: int, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> Outcome[ErrorCode]:
        """May this member commit offsets for this generation? (Kafka's validateOffsetCommit)."""
        self._fire_due(now_ms)
        value = self._validate_offset_commit(now_ms, member_id, group_instance_id, generation_id)
        return Outcome(value, self._take())

    def delete(self, now_ms: int) -> Outcome[ErrorCode]:
        """DeleteGroups: only an Empty group may go; it becomes Dead."""
        self._fire_due(now_ms)
        if self._state is GroupState.DEAD:
            value = ErrorCode.group_id_not_found
        elif self._state is GroupState.EMPTY:
            self._pending_members.clear()
            self._transition(GroupState.DEAD, now_ms)
            value = ErrorCode.none
        else:
            value = ErrorCode.non_empty_group
        return Outcome(value, self._take())

    def tick(self, now_ms: int) -> Completions:
        """Fire every timer due at `now_ms`."""
        self._fire_due(now_ms)
        return self._take()

    def next_deadline_ms(self) -> int | None:
        """When `tick` next has work, or None when no timer is armed."""
        deadlines = list(self._pending_members.values())
        deadlines.extend(m.deadline_ms for m in self._members.values() if m.can_expire())
        if self._pending_sync and self._sync_deadline_ms is not None:
            deadlines.append(self._sync_deadline_ms)
        if self._state is GroupState.PREPARING_REBALANCE and self._join_deadline_ms is not None:
            deadlines.append(self._join_deadline_ms)
        return min(deadlines, default=None)

    # JoinGroup -------------------------------------------------------------------
    def _join(self, now_ms: int, request: JoinRequest) -> JoinResult | Parked:
        error = validate_join(self._config, self.group_id, request)
        if error is not ErrorCode.none:
            return _join_error(request.member_id, error)
        if self._state is GroupState.DEAD:
            # The group was deleted under the caller; it looks the coordinator up and retries.
            return _join_error(request.member_id, ErrorCode.coordinator_not_available)
        if not self._accepts(request.member_id):
            member = self._members.get(request.member_id)
            if member is not None:
                self._remove_member(now_ms, member)
            return _join_error(UNKNOWN_MEMBER_ID, ErrorCode.group_max_size_reached)
        if request.member_id == UNKNOWN_MEMBER_ID:
            return self._join_new_member(now_ms, request)
        return self._join_current_member(now_ms, request)

    def _accepts(self, member_id: str) -> bool:
        # Kafka's acceptJoiningMember: while preparing, count members already
        # rejoined, so a shrunken limit sheds the members that rejoin last.
        member = self._members.get(member_id)
        if self._state is GroupState.PREPARING_REBALANCE:
            if member is not None and member.awaiting_join:
                return True
            awaiting = sum(1 for m in self._members.values() if m.awaiting_join)
            return awaiting < self._config.members_max
        if self._state in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
            return member is not None or len(self._members) < self._config.members_max
        return True

    def _join_new_member(self, now_ms: int, request: JoinRequest) -> JoinResult | Parked:
        instance_id = request.group_instance_id
        old_member_id = self._static_members.get(instance_id) if instance_id is not None else None
        if not self._supports(request, replacing=old_member_id):
            return _join_error(UNKNOWN_MEMBER_ID, ErrorCode.inconsistent_group_protocol)
        # Kafka's format: client id (or instance id) and a random suffix.
        new_member_id = f"{instance_id or request.client_id}-{self._member_id_suffix()}"
        if instance_id is not None:
            if old_member_id is not None:
                return self._replace_static_member(
                    now_ms, instance_id, old_member_id, new_member_id, request
                )
            return self._add_member(now_ms, new_member_id, request)
        if request.require_known_member_id:
            # KIP-394: hand out an id and wait for the client to rejoin with it, so a
            # client that times out and retries cannot leave ghost members behind.
            self._pending_members[new_member_id] = now_ms + request.session_timeout_ms
            return _join_error(new_member_id, ErrorCode.member_id_required)
        return self._add_member(now_ms, new_member_id, request)

    def _join_current_member(self, now_ms: int, request: JoinRequest) -> JoinResult | Parked:
        member_id = request.member_id
        if not self._supports(request, replacing=member_id):
            return _join_error(member_id, ErrorCode.inconsistent_group_protocol)
        if request.group_instance_id is None and member_id in self._pending_members:
            return self._add_member(now_ms, member_id, request)
        error = self._check_member(member_id, request.group_instance_id)
        if error is not ErrorCode.none:
            return _join_error(member_id, error)
        member = self._members[member_id]
        matches = member.protocols == request.protocols
        if self._state is GroupState.PREPARING_REBALANCE:
            return self._update_member(now_ms, member, request)
        if self._state is GroupState.COMPLETING_REBALANCE:
            if not matches:
                return self._update_member(now_ms, member, request)
            # Same metadata: the client most likely lost our answer; repeat it.
            self._touch(now_ms, member)
            return self._join_answer(member)
        if self._state is GroupState.STABLE:
            # A join from the leader rebalances even with unchanged metadata: that is
            # how a leader asks for a new assignment after a topic metadata change.
            if member_id == self._leader_id or not matches:
                return self._update_member(now_ms, member, request)
            self._touch(now_ms, member)
            return self._join_answer(member)
        return _join_error(member_id, ErrorCode.unknown_member_id)

    def _supports(self, request: JoinRequest, replacing: str | None) -> bool:
        """Does the joiner share a protocol with every other member?

        Unlike Kafka, a rejoining member's own old protocols do not count, so a
        member may switch to protocols the rest of the group also supports.
        """
        if not request.protocol_type or not request.protocols:
            return False
        others = [m for mid, m in self._members.items() if mid != replacing]
        if not others:
            return True
        if request.protocol_type != others[0].protocol_type:
            return False
        return any(all(o.supports(p.name) for o in others) for p in request.protocols)

    def _add_member(self, now_ms: int, member_id: str, request: JoinRequest) -> Parked:
        self._pending_members.pop(member_id, None)
        member = _Member(
            member_id=member_id,
            group_instance_id=request.group_instance_id,
            client_id=request.client_id,
            client_host=request.client_host,
            protocol_type=request.protocol_type,
            protocols=request.protocols,
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            deadline_ms=now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS,
            awaiting_join=True,
            is_new=True,
        )
        if not self._members:
            self._protocol_type = request.protocol_type
        self._members[member_id] = member
        if request.group_instance_id is not None:
            self._static_members[request.group_instance_id] = member_id
        if self._leader_id is None:
            self._leader_id = member_id
        if self._state is GroupState.PREPARING_REBALANCE:
            self._new_member_added = True
        self._maybe_prepare_rebalance(now_ms)
        self._maybe_complete_join(now_ms)
        return Parked(member_id)

    def _update_member(self, now_ms: int, member: _Member, request: JoinRequest) -> Parked:
        member.update(request)
        member.awaiting_join = True
        if len(self._members) == 1:
            self._protocol_type = request.protocol_type
        self._maybe_prepare_rebalance(now_ms)
        self._maybe_complete_join(now_ms)
        return Parked(member.member_id)

    def _replace_static_member(
        self,
        now_ms: int,
        instance_id: str,
        old_member_id: str,
        new_member_id: str,
        request: JoinRequest,
    ) -> JoinResult | Parked:
        """A static member came back without its member id (KIP-345): it takes over its seat."""
        member = self._members.pop(old_member_id)
        # Whoever still waits under the old id is a duplicate instance: fence it.
        if member.awaiting_join:
            self._answer_join(
                now_ms, member, _join_error(old_member_id, ErrorCode.fenced_instance_id)
            )
        if member.awaiting_sync:
            self._answer_sync(now_ms, member, SyncResult(ErrorCode.fenced_instance_id))
        old_leader_id = self._leader_id
        member.member_id = new_member_id
        self._members[new_member_id] = member
        self._static_members[instance_id] = new_member_id
        if self._leader_id == old_member_id:
            self._leader_id = new_member_id
        if old_member_id in self._pending_sync:
            self._pending_sync.discard(old_member_id)
            self._pending_sync.add(new_member_id)
        member.update(request)
        member.deadline_ms = now_ms + (
            NEW_MEMBER_JOIN_TIMEOUT_MS if member.is_new else member.session_timeout_ms
        )

        if self._state is GroupState.STABLE:
            if self._select_protocol() != self._protocol_name:
                member.awaiting_join = True
                self._prepare_rebalance(now_ms)
                return Parked(new_member_id)
            # The protocol stays: no rebalance. The member gets its old assignment
            # back from SyncGroup, which is the point of static membership.
            is_leader = self._leader_id == new_member_id
            if request.supports_skip_assignment:
                # KIP-814: tell a static leader it leads but must not reassign, so it
                # keeps watching metadata without disturbing the stable assignment.
                return JoinResult(
                    error=ErrorCode.none,
                    member_id=new_member_id,
                    generation_id=self._generation_id,
                    protocol_type=self._protocol_type,
                    protocol_name=self._protocol_name,
                    leader_id=self._leader_id or "",
                    skip_assignment=is_leader,
                    members=self._joined_members() if is_leader else (),
                )
            # Before JoinGroup v9 the old leader id is returned, so a rejoining leader
            # does not think it leads and computes no assignment nobody would use.
            return JoinResult(
                error=ErrorCode.none,
                member_id=new_member_id,
                generation_id=self._generation_id,
                protocol_type=self._protocol_type,
                protocol_name=self._protocol_name,
                leader_id=old_leader_id or "",
            )
        member.awaiting_join = True
        if self._state is GroupState.COMPLETING_REBALANCE:
            # The leader may already be assigning for the old member id; start over.
            self._prepare_rebalance(now_ms)
        else:
            self._maybe_complete_join(now_ms)
        return Parked(new_member_id)

    def _join_answer(self, member: _Member) -> JoinResult:
        is_leader = member.member_id == self._leader_id
        return JoinResult(
            error=ErrorCode.none,
            member_id=member.member_id,
            generation_id=self._generation_id,
            protocol_type=self._protocol_type,
            protocol_name=self._protocol_name,
            leader_id=self._leader_id or "",
            members=self._joined_members() if is_leader else (),
        )

    def _joined_members(self) -> tuple[JoinedMember, ...]:
        protocol = self._protocol_name or ""
        return tuple(
            JoinedMember(m.member_id, m.group_instance_id, m.metadata_for(protocol))
            for m in self._members.values()
        )

    # Rebalancing -------------------------------------------------------------------
    def _maybe_prepare_rebalance(self, now_ms: int) -> None:
        if self._state in (
            GroupState.EMPTY,
            GroupState.STABLE,
            GroupState.COMPLETING_REBALANCE,
        ):
            self._prepare_rebalance(now_ms)

    def _prepare_rebalance(self, now_ms: int) -> None:
        if self._state is GroupState.COMPLETING_REBALANCE:
            # Parked SyncGroups cannot get an assignment any more; send them to rejoin.
            for m in self._members.values():
                m.assignment = b""
                if m.awaiting_sync:
                    self._answer_sync(now_ms, m, SyncResult(ErrorCode.rebalance_in_progress))
        self._pending_sync.clear()
        self._sync_deadline_ms = None
        from_empty = self._state is GroupState.EMPTY
        self._transition(GroupState.PREPARING_REBALANCE, now_ms)
        timeout_ms = self._rebalance_timeout_ms()
        delay_ms = self._config.initial_rebalance_delay_ms
        if from_empty and delay_ms > 0:
            self._join_deadline_ms = now_ms + delay_ms
            self._initial_delay_remaining_ms = max(timeout_ms - delay_ms, 0)
            self._new_member_added = False
        else:
            self._join_deadline_ms = now_ms + timeout_ms
            self._initial_delay_remaining_ms = None
        self._maybe_complete_join(now_ms)

    def _rebalance_timeout_ms(self) -> int:
        # At least 1 ms, so a re-armed timer is always in the future.
        return max([1, *(m.rebalance_timeout_ms for m in self._members.values())])

    def _maybe_complete_join(self, now_ms: int) -> None:
        if self._state is not GroupState.PREPARING_REBALANCE:
            return
        if self._initial_delay_remaining_ms is not None:
            return  # the initial delay always runs out; see _on_join_deadline
        if self._pending_members:
            return
        if all(m.awaiting_join for m in self._members.values()):
            self._complete_join_phase(now_ms)

    def _complete_join_phase(self, now_ms: int) -> None:
        for m in list(self._members.values()):
            if not m.awaiting_join and m.group_instance_id is None:
                self._drop(m)
        self._initial_delay_remaining_ms = None
        if self._members and not self._elect_joined_leader():
            # Only static members that have not rejoined are left: give them another
            # rebalance timeout; their sessions expire them if they never return.
            self._join_deadline_ms = now_ms + self._rebalance_timeout_ms()
            return
        self._join_deadline_ms = None
        self._generation_id += 1
        if not self._members:
            self._protocol_name = None
            self._transition(GroupState.EMPTY, now_ms)
            return
        self._protocol_name = self._select_protocol()
        self._transition(GroupState.COMPLETING_REBALANCE, now_ms)
        for m in self._members.values():
            if m.awaiting_join:
                self._answer_join(now_ms, m, self._join_answer(m))
            m.is_new = False
            m.deadline_ms = now_ms + m.session_timeout_ms
            self._pending_sync.add(m.member_id)
        self._sync_deadline_ms = now_ms + self._rebalance_timeout_ms()

    def _elect_joined_leader(self) -> bool:
        """Keep the leader if it rejoined, else pick the first member that did."""
        leader = self._members.get(self._leader_id or "")
        if leader is not None and leader.awaiting_join:
            return True
        for m in self._members.values():
            if m.awaiting_join:
                self._leader_id = m.member_id
                return True
        return False

    def _select_protocol(self) -> str:
        members = list(self._members.values())
        candidates = {
            p.name for p in members[0].protocols if all(m.supports(p.name) for m in members)
        }
        votes: dict[str, int] = {}
        for m in members:
            choice = m.vote(candidates)
            votes[choice] = votes.get(choice, 0) + 1
        # Most votes wins; a tie goes to the protocol voted for first (Kafka: hash order).
        return max(votes, key=lambda name: votes[name])

    # SyncGroup -------------------------------------------------------------------
    def _sync(self, now_ms: int, request: SyncRequest) -> SyncResult | Parked:
        if self._state is GroupState.DEAD:
            return SyncResult(ErrorCode.coordinator_not_available)
        error = self._check_member(request.member_id, request.group_instance_id)
        if error is not ErrorCode.none:
            return SyncResult(error)
        if request.generation_id != self._generation_id:
            return SyncResult(ErrorCode.illegal_generation)
        # SyncGroup v5+ names the protocol it assigned for (KIP-559).
        if request.protocol_type is not None and request.protocol_type != self._protocol_type:
            return SyncResult(ErrorCode.inconsistent_group_protocol)
        if request.protocol_name is not None and request.protocol_name != self._protocol_name:
            return SyncResult(ErrorCode.inconsistent_group_protocol)
        member = self._members[request.member_id]
        if self._state is GroupState.PREPARING_REBALANCE:
            return SyncResult(ErrorCode.rebalance_in_progress)
        if self._state is GroupState.COMPLETING_REBALANCE:
            member.awaiting_sync = True
            self._pending_sync.discard(member.member_id)
            if member.member_id == self._leader_id:
                self._install_assignment(now_ms, request.assignments)
            return Parked(member.member_id)
        if self._state is GroupState.STABLE:
            self._pending_sync.discard(member.member_id)
            self._touch(now_ms, member)
            return SyncResult(
                ErrorCode.none, self._protocol_type, self._protocol_name, member.assignment
            )
        return SyncResult(ErrorCode.unknown_member_id)

    def _install_assignment(self, now_ms: int, assignments: Sequence[MemberAssignment]) -> None:
        given = {a.member_id: a.assignment for a in assignments}
        # Members the leader left out get an empty assignment, as in Kafka.
        for m in self._members.values():
            m.assignment = given.get(m.member_id, b"")
        self._transition(GroupState.STABLE, now_ms)
        for m in self._members.values():
            if m.awaiting_sync:
                self._answer_sync(
                    now_ms,
                    m,
                    SyncResult(
                        ErrorCode.none, self._protocol_type, self._protocol_name, m.assignment
                    ),
                )

    # Heartbeat, LeaveGroup, OffsetCommit --------------------------------------------
    def _heartbeat(
        self, now_ms: int, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> ErrorCode:
        if self._state is GroupState.DEAD:
            return ErrorCode.coordinator_not_available
        error = self._check_member(member_id, group_instance_id)
        if error is not ErrorCode.none:
            return error
        if generation_id != self._generation_id:
            return ErrorCode.illegal_generation
        self._touch(now_ms, self._members[member_id])
        if self._state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        # CompletingRebalance answers NONE: members may heartbeat between their
        # JoinGroup answer and their SyncGroup (Kafka does the same).
        return ErrorCode.none

    def _leave(self, now_ms: int, leaving: Sequence[LeavingMember]) -> LeaveResult:
        if self._state is GroupState.DEAD:
            return LeaveResult(ErrorCode.coordinator_not_available)
        results: list[LeftMember] = []
        for who in leaving:
            error = self._leave_one(now_ms, who)
            results.append(LeftMember(who.member_id, who.group_instance_id, error))
        return LeaveResult(ErrorCode.none, tuple(results))

    def _leave_one(self, now_ms: int, who: LeavingMember) -> ErrorCode:
        if who.member_id == UNKNOWN_MEMBER_ID:
            # KIP-345: an admin removes a static member by its instance id alone.
            if who.group_instance_id is None:
                return ErrorCode.unknown_member_id
            current = self._static_members.get(who.group_instance_id)
            if current is None:
                return ErrorCode.unknown_member_id
            self._remove_member(now_ms, self._members[current])
            return ErrorCode.none
        if who.group_instance_id is None and who.member_id in self._pending_members:
            del self._pending_members[who.member_id]
            self._maybe_complete_join(now_ms)
            return ErrorCode.none
        error = self._check_member(who.member_id, who.group_instance_id)
        if error is ErrorCode.none:
            self._remove_member(now_ms, self._members[who.member_id])
        return error

    def _validate_offset_commit(
        self, now_ms: int, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> ErrorCode:
        if self._state is GroupState.DEAD:
            return ErrorCode.coordinator_not_available
        if generation_id < 0 and self._state is GroupState.EMPTY:
            # Admin clients and consumers that assign partitions themselves commit
            # with generation -1; that is allowed while nobody is a member.
            return ErrorCode.none
        if generation_id >= 0 or member_id or group_instance_id is not None:
            error = self._check_member(member_id, group_instance_id)
            if error is not ErrorCode.none:
                return error
            if generation_id != self._generation_id:
                return ErrorCode.illegal_generation
        elif self._state is not GroupState.EMPTY:
            return ErrorCode.unknown_member_id
        if self._state is GroupState.COMPLETING_REBALANCE:
            # The member has its JoinGroup answer but not its assignment yet.
            return ErrorCode.rebalance_in_progress
        member = self._members.get(member_id)
        if member is not None:
            # A commit proves liveness as a heartbeat does.
            self._touch(now_ms, member)
        return ErrorCode.none

    def _check_member(self, member_id: str, group_instance_id: str | None) -> ErrorCode:
        """Kafka's validateCurrentMember: the id is a member, and owns its instance id."""
        if group_instance_id is not None:
            current = self._static_members.get(group_instance_id)
            if current is None:
                return ErrorCode.unknown_member_id
            if current != member_id:
                # KIP-345: another process took over this instance id; this one must stop.
                return ErrorCode.fenced_instance_id
            return ErrorCode.none
        if member_id not in self._members:
            return ErrorCode.unknown_member_id
        return ErrorCode.none

    # Removal and timers ------------------------------------------------------------
    def _remove_member(self, now_ms: int, member: _Member) -> None:
        """Kafka's removeMemberAndUpdateGroup: answer its parked requests, drop it, rebalance."""
        if member.awaiting_join:
            self._answer_join(
                now_ms, member, _join_error(UNKNOWN_MEMBER_ID, ErrorCode.unknown_member_id)
            )
        if member.awaiting_sync:
            self._answer_sync(now_ms, member, SyncResult(ErrorCode.unknown_member_id))
        self._drop(member)
        if self._state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(now_ms)
        else:
            self._maybe_complete_join(now_ms)

    def _drop(self, member: _Member) -> None:
        del self._members[member.member_id]
        if member.group_instance_id is not None:
            self._static_members.pop(member.group_instance_id, None)
        self._pending_sync.discard(member.member_id)
        if self._leader_id == member.member_id:
            self._leader_id = next(iter(self._members), None)

    def _fire_due(self, now_ms: int) -> None:
        for _ in range(_TICK_ROUNDS_MAX):
            deadline_ms = self.next_deadline_ms()
            if deadline_ms is None or deadline_ms > now_ms:
                return
            self._fire_round(now_ms)
        raise RuntimeError(
            f"group {self.group_id!r}: timers still due after {_TICK_ROUNDS_MAX} rounds"
        )

    def _fire_round(self, now_ms: int) -> None:
        for member_id, expiry_ms in list(self._pending_members.items()):
            if expiry_ms <= now_ms:
                del self._pending_members[member_id]
                self._maybe_complete_join(now_ms)
        for member in list(self._members.values()):
            if (
                self._members.get(member.member_id) is member
                and member.can_expire()
                and member.deadline_ms <= now_ms
            ):
                self._remove_member(now_ms, member)
        if (
            self._pending_sync
            and self._sync_deadline_ms is not None
            and self._sync_deadline_ms <= now_ms
        ):
            self._on_sync_deadline(now_ms)
        if (
            self._state is GroupState.PREPARING_REBALANCE
            and self._join_deadline_ms is not None
            and self._join_deadline_ms <= now_ms
        ):
            self._on_join_deadline(now_ms)

    def _on_sync_deadline(self, now_ms: int) -> None:
        # Kafka's DelayedSync: members that got a JoinGroup answer but never sent
        # SyncGroup are gone; without this the group would wait for them forever.
        if self._state in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
            for member_id in list(self._pending_sync):
                member = self._members.get(member_id)
                if member is not None:
                    self._drop(member)
            self._prepare_rebalance(now_ms)
        else:
            self._pending_sync.clear()
            self._sync_deadline_ms = None

    def _on_join_deadline(self, now_ms: int) -> None:
        remaining_ms = self._initial_delay_remaining_ms
        if remaining_ms is not None and self._new_member_added and remaining_ms > 0:
            # Kafka's InitialDelayedJoin: each new member buys one more delay, up to
            # the rebalance timeout, so a fleet starting together forms one generation.
            step_ms = min(self._config.initial_rebalance_delay_ms, remaining_ms)
            self._join_deadline_ms = now_ms + step_ms
            self._initial_delay_remaining_ms = remaining_ms - step_ms
            self._new_member_added = False
            return
        self._complete_join_phase(now_ms)

    # Small helpers -------------------------------------------------------------------
    def _touch(self, now_ms: int, member: _Member) -> None:
        if not member.is_new:
            member.deadline_ms = now_ms + member.session_timeout_ms

    def _answer_join(self, now_ms: int, member: _Member, result: JoinResult) -> None:
        self._out_joins.append((member.member_id, result))
        member.awaiting_join = False
        member.deadline_ms = now_ms + member.session_timeout_ms

    def _answer_sync(self, now_ms: int, member: _Member, result: SyncResult) -> None:
        self._out_syncs.append((member.member_id, result))
        member.awaiting_sync = False
        member.deadline_ms = now_ms + member.session_timeout_ms

    def _transition(self, state: GroupState, now_ms: int) -> None:
        self._state = state
        self._state_since_ms = now_ms

    def _take(self) -> Completions:
        out = Completions(tuple(self._out_joins), tuple(self._out_syncs))
        self._out_joins.clear()
        self._out_syncs.clear()
        return out
