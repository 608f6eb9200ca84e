"""Drive `GroupMachine` directly with a fake clock: no asyncio, no sockets."""

from __future__ import annotations

import itertools

from kio.schema.errors import ErrorCode

from driftlog.groups.machine import (
    NEW_MEMBER_JOIN_TIMEOUT_MS,
    Completions,
    GroupConfig,
    GroupMachine,
    GroupState,
    JoinRequest,
    JoinResult,
    LeavingMember,
    MemberAssignment,
    Parked,
    ProtocolMetadata,
    SyncRequest,
    SyncResult,
)

SESSION_MS = 10_000
REBALANCE_MS = 30_000
RANGE = (ProtocolMetadata("range", b"meta"),)


class Harness:
    """A group, a fake clock, and every answer the machine produced, by member id."""

    def __init__(self, config: GroupConfig | None = None) -> None:
        counter = itertools.count(1)
        self.now_ms = 1_000
        self.group = GroupMachine(
            "g", config or GroupConfig(), lambda: str(next(counter)), self.now_ms
        )
        self.joins: dict[str, list[JoinResult]] = {}
        self.syncs: dict[str, list[SyncResult]] = {}

    def record(self, completions: Completions) -> None:
        for member_id, join in completions.joins:
            self.joins.setdefault(member_id, []).append(join)
        for member_id, sync in completions.syncs:
            self.syncs.setdefault(member_id, []).append(sync)

    def advance(self, ms: int) -> None:
        self.now_ms += ms
        self.record(self.group.tick(self.now_ms))

    def join(
        self,
        member_id: str = "",
        *,
        instance: str | None = None,
        protocols: tuple[ProtocolMetadata, ...] = RANGE,
        protocol_type: str = "consumer",
        client_id: str = "c",
        session_ms: int = SESSION_MS,
        rebalance_ms: int = REBALANCE_MS,
        require_known: bool = True,
        skip_assignment: bool = True,
    ) -> JoinResult | Parked:
        outcome = self.group.join(
            self.now_ms,
            JoinRequest(
                member_id=member_id,
                group_instance_id=instance,
                client_id=client_id,
                protocol_type=protocol_type,
                protocols=protocols,
                session_timeout_ms=session_ms,
                rebalance_timeout_ms=rebalance_ms,
                require_known_member_id=require_known,
                supports_skip_assignment=skip_assignment,
            ),
        )
        self.record(outcome.completions)
        return outcome.value

    def new_member(
        self,
        client_id: str = "c",
        protocols: tuple[ProtocolMetadata, ...] = RANGE,
        rebalance_ms: int = REBALANCE_MS,
    ) -> str:
        """KIP-394 handshake: the first join gets an id, the second parks under it."""
        first = self.join(client_id=client_id, protocols=protocols, rebalance_ms=rebalance_ms)
        assert isinstance(first, JoinResult)
        assert first.error is ErrorCode.member_id_required
        parked = self.join(
            first.member_id, client_id=client_id, protocols=protocols, rebalance_ms=rebalance_ms
        )
        assert parked == Parked(first.member_id)
        return first.member_id

    def sync(
        self,
        member_id: str,
        generation_id: int,
        assignments: dict[str, bytes] | None = None,
        instance: str | None = None,
    ) -> SyncResult | Parked:
        outcome = self.group.sync(
            self.now_ms,
            SyncRequest(
                member_id=member_id,
                generation_id=generation_id,
                group_instance_id=instance,
                assignments=tuple(MemberAssignment(m, a) for m, a in (assignments or {}).items()),
            ),
        )
        self.record(outcome.completions)
        return outcome.value

    def heartbeat(
        self, member_id: str, generation_id: int, instance: str | None = None
    ) -> ErrorCode:
        outcome = self.group.heartbeat(self.now_ms, member_id, instance, generation_id)
        self.record(outcome.completions)
        return outcome.value

    def leave(self, *members: LeavingMember) -> list[ErrorCode]:
        outcome = self.group.leave(self.now_ms, members)
        self.record(outcome.completions)
        assert outcome.value.error is ErrorCode.none
        return [m.error for m in outcome.value.members]

    # Methods rather than properties, so mypy does not narrow them between asserts.
    def state(self) -> GroupState:
        return self.group.state

    def members(self) -> tuple[str, ...]:
        return self.group.member_ids

    def pending(self) -> tuple[str, ...]:
        return self.group.pending_member_ids

    def last_join(self, member_id: str) -> JoinResult:
        return self.joins[member_id][-1]

    def last_sync(self, member_id: str) -> SyncResult:
        return self.syncs[member_id][-1]


def stable_pair(h: Harness) -> tuple[str, str, int]:
    """Two dynamic members, a leader and a follower, synced into a Stable generation."""
    a = h.new_member("a")
    assert h.last_join(a).generation_id == 1
    assert h.sync(a, 1, {a: b"A1"}) == Parked(a)
    assert h.last_sync(a).assignment == b"A1"
    b = h.new_member("b")
    assert h.state() is GroupState.PREPARING_REBALANCE
    assert h.heartbeat(a, 1) is ErrorCode.rebalance_in_progress
    assert h.join(a, client_id="a") == Parked(a)
    generation = h.last_join(a).generation_id
    assert generation == 2 == h.last_join(b).generation_id
    assert h.sync(b, generation) == Parked(b)
    assert h.sync(a, generation, {a: b"A2", b: b"B2"}) == Parked(a)
    assert h.state() is GroupState.STABLE
    return a, b, generation


def test_first_join_requires_member_id_then_forms_generation_one() -> None:
    h = Harness()
    first = h.join(client_id="app")
    assert isinstance(first, JoinResult)
    assert first.error is ErrorCode.member_id_required
    assert first.member_id == "app-1"
    assert h.state() is GroupState.EMPTY

    assert h.join("app-1", client_id="app") == Parked("app-1")
    result = h.last_join("app-1")
    assert result.error is ErrorCode.none
    assert result.generation_id == 1
    assert result.leader_id == "app-1"
    assert result.protocol_type == "consumer"
    assert result.protocol_name == "range"
    assert [(m.member_id, m.metadata) for m in result.members] == [("app-1", b"meta")]
    assert h.state() is GroupState.COMPLETING_REBALANCE

    assert h.sync("app-1", 1, {"app-1": b"assigned"}) == Parked("app-1")
    assert h.last_sync("app-1") == SyncResult(ErrorCode.none, "consumer", "range", b"assigned")
    assert h.state() is GroupState.STABLE


def test_join_before_v4_gets_a_member_id_without_the_extra_round_trip() -> None:
    h = Harness()
    parked = h.join(require_known=False)
    assert parked == Parked("c-1")
    assert h.last_join("c-1").generation_id == 1


def test_two_members_join_and_the_leader_assignment_reaches_the_follower() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    leader_view = h.last_join(a)
    assert leader_view.leader_id == a
    assert {m.member_id for m in leader_view.members} == {a, b}
    assert h.last_join(b).members == ()
    assert h.last_join(b).leader_id == a
    assert h.last_sync(b).assignment == b"B2"
    assert h.last_sync(a).assignment == b"A2"
    assert h.heartbeat(a, generation) is ErrorCode.none
    assert h.heartbeat(b, generation) is ErrorCode.none
    # A follower that syncs again in Stable gets its assignment at once.
    assert h.sync(b, generation) == SyncResult(ErrorCode.none, "consumer", "range", b"B2")


def test_protocol_is_chosen_by_votes_among_protocols_everyone_supports() -> None:
    h = Harness()
    x, y, z = (ProtocolMetadata(n, n.encode()) for n in ("x", "y", "z"))
    a = h.new_member("a", protocols=(x, y))
    h.sync(a, 1)
    b = h.new_member("b", protocols=(y, x))
    c = h.new_member("c", protocols=(z, y, x))
    h.join(a, client_id="a", protocols=(x, y))
    assert h.last_join(a).protocol_name == "y"  # a votes x; b and c vote y
    assert {m.member_id: m.metadata for m in h.last_join(a).members} == {
        a: b"y",
        b: b"y",
        c: b"y",
    }
    assert h.last_join(b).protocol_name == h.last_join(c).protocol_name == "y"


def test_inconsistent_protocols_are_refused() -> None:
    h = Harness()
    a = h.new_member("a")
    other = h.join(protocols=(ProtocolMetadata("roundrobin", b""),))
    assert isinstance(other, JoinResult)
    assert other.error is ErrorCode.inconsistent_group_protocol
    wrong_type = h.join(protocol_type="connect")
    assert isinstance(wrong_type, JoinResult)
    assert wrong_type.error is ErrorCode.inconsistent_group_protocol
    none_at_all = h.join(a, protocols=())
    assert isinstance(none_at_all, JoinResult)
    assert none_at_all.error is ErrorCode.inconsistent_group_protocol


def test_session_timeout_outside_the_broker_limits_is_refused() -> None:
    h = Harness()
    for session_ms in (5_999, 1_800_001):
        result = h.join(session_ms=session_ms)
        assert isinstance(result, JoinResult)
        assert result.error is ErrorCode.invalid_session_timeout


def test_leave_rebalances_the_rest_of_the_group() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    assert h.leave(LeavingMember(b)) == [ErrorCode.none]
    assert h.state() is GroupState.PREPARING_REBALANCE
    assert h.heartbeat(a, generation) is ErrorCode.rebalance_in_progress
    assert h.heartbeat(b, generation) is ErrorCode.unknown_member_id
    h.join(a, client_id="a")
    assert h.last_join(a).generation_id == generation + 1
    assert [m.member_id for m in h.last_join(a).members] == [a]


def test_last_member_leaving_empties_the_group() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    assert h.leave(LeavingMember(a)) == [ErrorCode.none]
    assert h.state() is GroupState.EMPTY
    assert h.group.generation_id == 2
    assert h.group.next_deadline_ms() is None


def test_batched_leave_reports_each_member() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    s = h.join(instance="s")
    assert isinstance(s, Parked)
    h.join(a, client_id="a")
    errors = h.leave(
        LeavingMember(a),
        LeavingMember("", "s"),  # KIP-345: a static member removed by instance id alone
        LeavingMember("nobody"),
        LeavingMember("", "unknown-instance"),
    )
    assert errors == [
        ErrorCode.none,
        ErrorCode.none,
        ErrorCode.unknown_member_id,
        ErrorCode.unknown_member_id,
    ]
    assert h.members() == ()
    assert h.state() is GroupState.EMPTY


def test_leaving_while_parked_in_join_answers_the_parked_join() -> None:
    h = Harness()
    _, b, _ = stable_pair(h)
    h.join(b, client_id="b", protocols=(ProtocolMetadata("range", b"new"),))
    assert h.leave(LeavingMember(b)) == [ErrorCode.none]
    assert h.last_join(b).error is ErrorCode.unknown_member_id


def test_silent_member_expires_after_its_session_timeout() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    for _ in range(3):
        h.advance(SESSION_MS // 4)
        assert h.heartbeat(a, generation) is ErrorCode.none
    assert b in h.members()
    h.advance(SESSION_MS // 4)
    assert b not in h.members()
    assert h.state() is GroupState.PREPARING_REBALANCE
    assert h.heartbeat(a, generation) is ErrorCode.rebalance_in_progress
    h.join(a, client_id="a")
    assert h.last_join(a).generation_id == generation + 1
    assert [m.member_id for m in h.last_join(a).members] == [a]


def test_member_parked_in_join_does_not_expire() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    h.join(b, client_id="b", protocols=(ProtocolMetadata("range", b"new"),))
    for _ in range(5):
        h.advance(SESSION_MS // 2)
        assert h.heartbeat(a, generation) is ErrorCode.rebalance_in_progress
    assert set(h.members()) == {a, b}


def test_rebalance_timeout_drops_a_member_that_does_not_rejoin() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    c = h.new_member("c")
    h.join(a, client_id="a")
    assert h.state() is GroupState.PREPARING_REBALANCE
    # b keeps heartbeating, so its session lives, but it never rejoins.
    for _ in range(REBALANCE_MS // 5_000 - 1):
        h.advance(5_000)
        assert h.heartbeat(b, generation) is ErrorCode.rebalance_in_progress
    assert h.state() is GroupState.PREPARING_REBALANCE
    h.advance(5_000)
    assert h.state() is GroupState.COMPLETING_REBALANCE
    assert set(h.members()) == {a, c}
    assert h.last_join(a).generation_id == generation + 1
    assert {m.member_id for m in h.last_join(a).members} == {a, c}
    assert h.heartbeat(b, generation) is ErrorCode.unknown_member_id


def test_member_that_never_syncs_is_removed_after_the_rebalance_timeout() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    b = h.new_member("b")
    h.join(a, client_id="a")
    h.sync(a, 2, {a: b"A", b: b"B"})
    assert h.state() is GroupState.STABLE
    for _ in range(REBALANCE_MS // 5_000):
        h.advance(5_000)
        h.heartbeat(a, 2)
    assert h.members() == (a,)
    assert h.state() is GroupState.PREPARING_REBALANCE


def test_illegal_generation() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    assert h.heartbeat(a, generation - 1) is ErrorCode.illegal_generation
    assert h.sync(b, generation + 1) == SyncResult(ErrorCode.illegal_generation)
    commit = h.group.validate_offset_commit(h.now_ms, a, None, generation - 1)
    assert commit.value is ErrorCode.illegal_generation


def test_unknown_member() -> None:
    h = Harness()
    _, _, generation = stable_pair(h)
    assert h.heartbeat("ghost", generation) is ErrorCode.unknown_member_id
    assert h.sync("ghost", generation) == SyncResult(ErrorCode.unknown_member_id)
    ghost = h.join("ghost")
    assert isinstance(ghost, JoinResult)
    assert ghost.error is ErrorCode.unknown_member_id
    assert ghost.member_id == "ghost"


def test_pending_member_expires_when_it_does_not_rejoin() -> None:
    h = Harness()
    first = h.join()
    assert isinstance(first, JoinResult)
    assert h.pending() == (first.member_id,)
    h.advance(SESSION_MS)
    assert h.pending() == ()
    late = h.join(first.member_id)
    assert isinstance(late, JoinResult)
    assert late.error is ErrorCode.unknown_member_id


def test_pending_member_holds_the_join_phase_open() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    first = h.join(client_id="b")
    assert isinstance(first, JoinResult)
    h.join(a, client_id="a")  # the leader rejoins; the pending member is still expected
    assert h.state() is GroupState.PREPARING_REBALANCE
    h.join(first.member_id, client_id="b")
    assert h.state() is GroupState.COMPLETING_REBALANCE
    assert h.last_join(first.member_id).generation_id == 2


def test_join_repeated_while_completing_gets_the_same_answer() -> None:
    h = Harness()
    a = h.new_member("a")
    again = h.join(a, client_id="a")
    assert again == h.last_join(a)
    assert h.group.generation_id == 1


def test_leader_join_in_stable_starts_a_rebalance() -> None:
    h = Harness()
    a, b, generation = stable_pair(h)
    follower = h.join(b, client_id="b")
    assert isinstance(follower, JoinResult)
    assert follower.generation_id == generation
    assert h.state() is GroupState.STABLE
    assert h.join(a, client_id="a") == Parked(a)
    assert h.state() is GroupState.PREPARING_REBALANCE


def test_rebalance_while_completing_sends_parked_syncs_back_to_join() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    b = h.new_member("b")
    h.join(a, client_id="a")
    assert h.sync(b, 2) == Parked(b)
    h.new_member("c")
    assert h.last_sync(b).error is ErrorCode.rebalance_in_progress
    assert h.state() is GroupState.PREPARING_REBALANCE


def test_static_member_rejoining_with_the_same_protocol_keeps_the_generation() -> None:
    h = Harness()
    leader = h.join(instance="i-a", client_id="a")
    assert leader == Parked("i-a-1")
    h.sync("i-a-1", 1, {"i-a-1": b"A1"})
    follower = h.join(instance="i-b", client_id="b")
    assert follower == Parked("i-b-2")
    h.join("i-a-1", instance="i-a")
    h.sync("i-b-2", 2, instance="i-b")
    h.sync("i-a-1", 2, {"i-a-1": b"A2", "i-b-2": b"B2"}, instance="i-a")
    assert h.state() is GroupState.STABLE

    # i-b restarts: it lost its member id, and its subscription bytes may differ.
    back = h.join(instance="i-b", protocols=(ProtocolMetadata("range", b"restarted"),))
    assert isinstance(back, JoinResult)
    assert back.error is ErrorCode.none
    assert back.member_id == "i-b-3"
    assert back.generation_id == 2
    assert back.leader_id == "i-a-1"
    assert not back.skip_assignment
    assert h.state() is GroupState.STABLE
    # The old process, if it still runs, is fenced.
    assert h.heartbeat("i-b-2", 2, instance="i-b") is ErrorCode.fenced_instance_id
    # The new one gets the assignment the old one had, without a rebalance.
    assert h.sync("i-b-3", 2, instance="i-b") == SyncResult(
        ErrorCode.none, "consumer", "range", b"B2"
    )
    assert h.heartbeat("i-b-3", 2, instance="i-b") is ErrorCode.none


def test_static_leader_rejoining_is_told_to_skip_assignment_from_v9() -> None:
    for supports_skip in (True, False):
        h = Harness()
        h.join(instance="i-a")
        h.sync("i-a-1", 1, {"i-a-1": b"A"}, instance="i-a")
        back = h.join(instance="i-a", skip_assignment=supports_skip)
        assert isinstance(back, JoinResult)
        assert back.member_id == "i-a-2"
        assert h.group.leader_id == "i-a-2"
        assert h.state() is GroupState.STABLE
        if supports_skip:
            # KIP-814: it leads, but must not run the assignor.
            assert back.leader_id == "i-a-2"
            assert back.skip_assignment
            assert [m.member_id for m in back.members] == ["i-a-2"]
        else:
            # Before v9 it is shown the old leader id so it does not assign.
            assert back.leader_id == "i-a-1"
            assert back.members == ()


def test_static_member_rejoining_with_a_new_protocol_rebalances() -> None:
    h = Harness()
    h.join(instance="i-a", protocols=(ProtocolMetadata("range", b""),))
    h.sync("i-a-1", 1, instance="i-a")
    back = h.join(instance="i-a", protocols=(ProtocolMetadata("sticky", b""),))
    assert back == Parked("i-a-2")
    assert h.state() is GroupState.COMPLETING_REBALANCE
    assert h.last_join("i-a-2").protocol_name == "sticky"
    assert h.last_join("i-a-2").generation_id == 2


def test_static_member_replaced_while_parked_fences_the_old_request() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    assert h.join(instance="i-s") == Parked("i-s-2")
    assert h.join(instance="i-s") == Parked("i-s-3")
    assert h.last_join("i-s-2").error is ErrorCode.fenced_instance_id
    h.join(a, client_id="a")
    assert {m.member_id for m in h.last_join(a).members} == {a, "i-s-3"}


def test_static_member_keeps_its_seat_through_a_rebalance_timeout() -> None:
    h = Harness()
    # Static members usually run long sessions, so a restart does not cost their seat.
    long_ms = 4 * REBALANCE_MS
    h.join(instance="i-a", session_ms=long_ms)
    h.sync("i-a-1", 1, instance="i-a")
    h.join(instance="i-b", session_ms=long_ms)
    h.join("i-a-1", instance="i-a", session_ms=long_ms)
    h.sync("i-a-1", 2, {"i-a-1": b"A", "i-b-2": b"B"}, instance="i-a")
    h.sync("i-b-2", 2, instance="i-b")
    c = h.new_member("c")
    h.join("i-a-1", instance="i-a", session_ms=long_ms)
    h.advance(REBALANCE_MS)  # i-b is restarting and misses the join phase
    assert set(h.members()) == {"i-a-1", "i-b-2", c}
    assert {m.member_id for m in h.last_join("i-a-1").members} == {"i-a-1", "i-b-2", c}
    assert h.last_join(c).generation_id == 3
    assert h.last_join("i-b-2").generation_id == 2  # nothing new until it comes back


def test_offset_commit_checks_member_and_generation() -> None:
    h = Harness()
    now = h.now_ms
    assert h.group.validate_offset_commit(now, "", None, -1).value is ErrorCode.none
    a = h.new_member("a")
    check = h.group.validate_offset_commit(h.now_ms, a, None, 1)
    assert check.value is ErrorCode.rebalance_in_progress  # joined, not yet synced
    h.sync(a, 1)
    assert h.group.validate_offset_commit(h.now_ms, a, None, 1).value is ErrorCode.none
    assert h.group.validate_offset_commit(h.now_ms, "", None, -1).value is (
        ErrorCode.unknown_member_id
    )
    assert h.group.validate_offset_commit(h.now_ms, "x", None, 1).value is (
        ErrorCode.unknown_member_id
    )


def test_delete_only_an_empty_group() -> None:
    h = Harness()
    a = h.new_member("a")
    assert h.group.delete(h.now_ms).value is ErrorCode.non_empty_group
    h.leave(LeavingMember(a))
    assert h.group.delete(h.now_ms).value is ErrorCode.none
    assert h.state() is GroupState.DEAD
    dead = h.join()
    assert isinstance(dead, JoinResult)
    assert dead.error is ErrorCode.coordinator_not_available


def test_initial_rebalance_delay_waits_for_more_members() -> None:
    h = Harness(GroupConfig(initial_rebalance_delay_ms=3_000))
    a = h.new_member("a")
    assert h.state() is GroupState.PREPARING_REBALANCE
    h.advance(2_000)
    b = h.new_member("b")
    h.advance(1_000)  # the first delay ran out, but b bought another one
    assert h.state() is GroupState.PREPARING_REBALANCE
    h.advance(3_000)
    assert h.state() is GroupState.COMPLETING_REBALANCE
    assert h.last_join(a).generation_id == h.last_join(b).generation_id == 1


def test_member_that_neither_rejoins_nor_heartbeats_expires() -> None:
    h = Harness()
    a = h.new_member("a")
    h.sync(a, 1)
    b = h.new_member("b")
    h.advance(SESSION_MS)
    assert h.last_join(b).generation_id == 2
    assert h.members() == (b,)


def test_new_member_parked_in_join_expires_after_the_new_member_timeout() -> None:
    h = Harness()
    long_ms = 2 * NEW_MEMBER_JOIN_TIMEOUT_MS
    a = h.new_member("a", rebalance_ms=long_ms)
    h.sync(a, 1)
    b = h.new_member("b")
    # a keeps its session alive but never rejoins, so the join phase runs long.
    for _ in range(NEW_MEMBER_JOIN_TIMEOUT_MS // 5_000):
        h.advance(5_000)
        assert h.heartbeat(a, 1) is ErrorCode.rebalance_in_progress
    assert h.last_join(b).error is ErrorCode.unknown_member_id
    assert h.members() == (a,)
    assert h.state() is GroupState.PREPARING_REBALANCE


def test_describe_shows_metadata_only_when_stable() -> None:
    h = Harness()
    a = h.new_member("a")
    described = h.group.describe()
    assert described.state is GroupState.COMPLETING_REBALANCE
    assert described.protocol == ""
    assert described.members[0].metadata == b""
    h.sync(a, 1, {a: b"A"})
    described = h.group.describe()
    assert described.state.value == "Stable"
    assert described.protocol == "range"
    assert described.protocol_type == "consumer"
    assert (described.members[0].metadata, described.members[0].assignment) == (b"meta", b"A")


def test_tick_before_any_deadline_does_nothing() -> None:
    h = Harness()
    assert h.group.next_deadline_ms() is None
    a = h.new_member("a")
    h.sync(a, 1)
    deadline = h.group.next_deadline_ms()
    assert deadline == h.now_ms + SESSION_MS
    assert h.group.tick(deadline - 1) == Completions()
    assert h.members() == (a,)
