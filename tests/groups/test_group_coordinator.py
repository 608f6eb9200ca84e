"""`GroupCoordinator`: parked requests answered by other requests or by timers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest
from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CoordinatorUnavailable, GroupClaim
from driftlog.groups.coordinator import GroupCoordinator
from driftlog.groups.machine import (
    GroupConfig,
    GroupState,
    JoinRequest,
    JoinResult,
    LeavingMember,
    MemberAssignment,
    ProtocolMetadata,
    SyncRequest,
)

SESSION_MS = 10_000


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


def make(clock: Callable[[], int], config: GroupConfig | None = None) -> GroupCoordinator:
    counter = itertools.count(1)
    return GroupCoordinator(clock, config, member_id_suffix=lambda: str(next(counter)))


def join_request(member_id: str = "", session_ms: int = SESSION_MS) -> JoinRequest:
    return JoinRequest(
        member_id=member_id,
        client_id="c",
        protocol_type="consumer",
        protocols=(ProtocolMetadata("range", b"m"),),
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=30_000,
    )


async def join_new(groups: GroupCoordinator, group_id: str, session_ms: int = SESSION_MS) -> str:
    first = await groups.join(group_id, join_request(session_ms=session_ms))
    assert first.error is ErrorCode.member_id_required
    return first.member_id


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


def test_second_member_parks_until_the_first_rejoins() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        a = await join_new(groups, "g")
        joined = await groups.join("g", join_request(a))
        assert (joined.error, joined.generation_id, joined.leader_id) == (ErrorCode.none, 1, a)
        synced = await groups.sync("g", SyncRequest(a, 1, assignments=(MemberAssignment(a, b"A"),)))
        assert synced.assignment == b"A"

        b = await join_new(groups, "g")
        b_join = asyncio.create_task(groups.join("g", join_request(b)))
        await asyncio.sleep(0)
        assert not b_join.done()
        assert await groups.heartbeat("g", a, None, 1) is ErrorCode.rebalance_in_progress
        a_join = await groups.join("g", join_request(a))
        assert a_join.generation_id == 2
        assert {m.member_id for m in a_join.members} == {a, b}
        assert (await b_join).generation_id == 2

        b_sync = asyncio.create_task(groups.sync("g", SyncRequest(b, 2)))
        await asyncio.sleep(0)
        assert not b_sync.done()
        assignments = (MemberAssignment(a, b"A2"), MemberAssignment(b, b"B2"))
        assert (await groups.sync("g", SyncRequest(a, 2, assignments=assignments))).assignment == (
            b"A2"
        )
        assert (await b_sync).assignment == b"B2"
        description = groups.describe("g")
        assert description is not None
        assert description.state is GroupState.STABLE

    run(scenario)


def test_tick_expires_a_silent_member_and_completes_the_parked_join() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        groups = make(clock)
        a = await join_new(groups, "g")
        await groups.join("g", join_request(a))
        await groups.sync("g", SyncRequest(a, 1))
        b = await join_new(groups, "g")
        b_join = asyncio.create_task(groups.join("g", join_request(b)))
        await asyncio.sleep(0)
        clock.now_ms = SESSION_MS - 1
        groups.tick()
        await asyncio.sleep(0)
        assert not b_join.done()
        assert groups.next_deadline_ms() == SESSION_MS
        clock.now_ms = SESSION_MS
        groups.tick()
        result = await b_join
        assert (result.generation_id, result.leader_id) == (2, b)

    run(scenario)


def test_cancelled_join_does_not_break_later_answers() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        a = await join_new(groups, "g")
        await groups.join("g", join_request(a))
        await groups.sync("g", SyncRequest(a, 1))
        b = await join_new(groups, "g")
        b_join = asyncio.create_task(groups.join("g", join_request(b)))
        await asyncio.sleep(0)
        b_join.cancel()  # the client hung up while parked
        await asyncio.sleep(0)
        left = await groups.leave("g", [LeavingMember(b)])
        assert [m.error for m in left.members] == [ErrorCode.none]
        assert (await groups.join("g", join_request(a))).generation_id == 2

    run(scenario)


def test_close_answers_parked_requests() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        a = await join_new(groups, "g")
        await groups.join("g", join_request(a))
        await groups.sync("g", SyncRequest(a, 1))
        b = await join_new(groups, "g")
        b_join = asyncio.create_task(groups.join("g", join_request(b)))
        await asyncio.sleep(0)
        await groups.close()
        assert await b_join == JoinResult(ErrorCode.not_coordinator, b)

    run(scenario)


def test_unknown_groups_and_invalid_group_ids() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        assert (await groups.join("", join_request())).error is ErrorCode.invalid_group_id
        assert (await groups.join("g", join_request("old"))).error is ErrorCode.unknown_member_id
        assert await groups.heartbeat("g", "m", None, 1) is ErrorCode.unknown_member_id
        assert (await groups.sync("g", SyncRequest("m", 1))).error is ErrorCode.unknown_member_id
        left = await groups.leave("g", [LeavingMember("m")])
        assert (left.error, left.members[0].error) == (ErrorCode.none, ErrorCode.unknown_member_id)
        assert groups.validate_offset_commit("g", "", None, -1) is ErrorCode.none
        assert groups.validate_offset_commit("g", "m", None, 3) is ErrorCode.group_id_not_found
        assert groups.delete_group("g") is ErrorCode.group_id_not_found
        assert groups.describe("g") is None
        assert groups.list_groups() == []

    run(scenario)


def test_groups_that_never_formed_are_forgotten() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        groups = make(clock)
        await join_new(groups, "g")
        assert [o.group_id for o in groups.list_groups()] == ["g"]
        clock.now_ms = SESSION_MS
        groups.tick()  # the pending member never came back
        assert groups.list_groups() == []

    run(scenario)


def test_empty_group_is_listed_then_deleted() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        a = await join_new(groups, "g")
        await groups.join("g", join_request(a))
        assert groups.delete_group("g") is ErrorCode.non_empty_group
        await groups.leave("g", [LeavingMember(a)])
        [overview] = groups.list_groups()
        assert (overview.group_id, overview.protocol_type, overview.state) == (
            "g",
            "consumer",
            GroupState.EMPTY,
        )
        assert groups.delete_group("g") is ErrorCode.none
        assert groups.list_groups() == []

    run(scenario)


def test_oldest_empty_groups_are_forgotten_beyond_the_limit() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        groups = GroupCoordinator(clock, groups_max=2)
        for group_id in ("g1", "g2", "g3"):
            clock.now_ms += 1
            member_id = await join_new(groups, group_id)
            await groups.join(group_id, join_request(member_id))
            await groups.leave(group_id, [LeavingMember(member_id)])
        assert sorted(o.group_id for o in groups.list_groups()) == ["g2", "g3"]

    run(scenario)


def test_timer_task_expires_members_on_its_own() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        groups = GroupCoordinator(
            lambda: int(loop.time() * 1000), GroupConfig(session_timeout_ms_min=1)
        )
        await groups.start()
        try:
            member_id = await join_new(groups, "g", session_ms=50)
            await groups.join("g", join_request(member_id, session_ms=50))
            await groups.sync("g", SyncRequest(member_id, 1))
            for _ in range(100):
                await asyncio.sleep(0.02)
                description = groups.describe("g")
                if description is not None and description.state is GroupState.EMPTY:
                    break
            description = groups.describe("g")
            assert description is not None
            assert description.state is GroupState.EMPTY
        finally:
            await groups.close()

    run(scenario)


# Claims ---------------------------------------------------------------------------


class Claims:
    """Takes claims as the database would, one epoch after another; `gate` holds them."""

    def __init__(self) -> None:
        self.epoch = 0
        self.taken = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def take(self, group_id: str) -> GroupClaim:
        self.taken += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise CoordinatorUnavailable("postgresql: connection refused")
        self.epoch += 1
        return GroupClaim(group_id, "me", self.epoch)


def test_concurrent_requests_take_one_claim_and_share_it() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        claims = Claims()
        claims.gate = asyncio.Event()
        waiting = [asyncio.create_task(groups.claimed("g", lambda: claims.take("g")))
                   for _ in range(3)]  # fmt: skip
        await asyncio.sleep(0)
        claims.gate.set()
        assert await asyncio.gather(*waiting) == [GroupClaim("g", "me", 1)] * 3
        assert claims.taken == 1
        # Held: no database call at all afterwards.
        assert await groups.claimed("g", lambda: claims.take("g")) == GroupClaim("g", "me", 1)
        assert claims.taken == 1

    run(scenario)


def test_a_claim_taken_while_the_group_moved_away_is_not_kept() -> None:
    async def scenario() -> None:
        owned = {"g"}
        groups = GroupCoordinator(FakeClock(), owns=lambda g: g in owned)
        claims = Claims()
        claims.gate = asyncio.Event()
        waiting = asyncio.create_task(groups.claimed("g", lambda: claims.take("g")))
        await asyncio.sleep(0)
        owned.clear()
        groups.release_foreign_groups()  # membership changed while the claim was taken
        claims.gate.set()
        assert await waiting is None
        assert groups.claim("g") is None
        # Not coordinating it, this agent takes no claim at all.
        assert await groups.claimed("g", lambda: claims.take("g")) is None
        assert claims.taken == 1

    run(scenario)


def test_a_failed_claim_propagates_and_the_next_request_tries_again() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        claims = Claims()
        claims.fail = True
        with pytest.raises(CoordinatorUnavailable):
            await groups.claimed("g", lambda: claims.take("g"))
        claims.fail = False
        assert await groups.claimed("g", lambda: claims.take("g")) == GroupClaim("g", "me", 1)

    run(scenario)


def test_fenced_drops_the_claim_and_the_group_only_for_the_current_claim() -> None:
    async def scenario() -> None:
        groups = make(FakeClock())
        claims = Claims()
        first = await groups.claimed("g", lambda: claims.take("g"))
        assert first is not None
        member_id = await join_new(groups, "g")
        joined = await groups.join("g", join_request(member_id))
        assert joined.error is ErrorCode.none
        assert groups.fenced(first) is True
        assert groups.claim("g") is None and groups.describe("g") is None
        assert groups.fenced(first) is False  # a second refused commit of the same claim
        second = await groups.claimed("g", lambda: claims.take("g"))
        assert second == GroupClaim("g", "me", 2)
        # A commit that carried the old claim, refused late, leaves the new one alone.
        assert groups.fenced(first) is False
        assert groups.claim("g") == second

    run(scenario)


def test_claims_are_bounded_and_never_forget_a_group_with_state() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator(FakeClock(), groups_max=3)
        claims = Claims()
        await groups.claimed("live", lambda: claims.take("live"))
        member_id = await join_new(groups, "live")
        assert (await groups.join("live", join_request(member_id))).error is ErrorCode.none
        for group_id in ("a", "b", "c", "d"):
            await groups.claimed(group_id, lambda g=group_id: claims.take(g))  # type: ignore[misc]
        held = [g for g in ("live", "a", "b", "c", "d") if groups.claim(g) is not None]
        assert held == ["live", "c", "d"]

    run(scenario)
