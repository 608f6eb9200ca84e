"""Membership on a fake clock: who is live, and the INFO lines when that changes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from driftlog.clock import FakeClock
from driftlog.cluster.membership import Membership
from driftlog.coordinator.api import AgentInfo, CoordinatorUnavailable
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.postgres import PostgresBackend

HEARTBEAT_MS = 250
ALL = "roles produce,fetch,jobs,writer"
TIMEOUT_MS = 3_000


def agent(node_id: int, zone: str) -> AgentInfo:
    return AgentInfo(f"agent-{node_id}", node_id, "127.0.0.1", 9000 + node_id, zone, "")


async def member(
    db: MemoryDatabase, clock: FakeClock, me: AgentInfo, changes: list[str]
) -> Membership:
    backend = MemoryBackend(db)
    await backend.open()
    return Membership(
        backend,
        clock,
        me,
        shared=True,
        heartbeat_ms=HEARTBEAT_MS,
        timeout_ms=TIMEOUT_MS,
        on_change=lambda: changes.append(me.agent_id),
    )


def live(m: Membership) -> list[tuple[int, str]]:
    return [(a.node_id, a.zone) for a in m.live]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "driftlog.cluster.membership"]
    caplog.clear()
    return lines


def test_joins_and_leaves_are_logged_with_zones(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="driftlog.cluster.membership")

    async def scenario() -> None:
        db, clock, changes = MemoryDatabase(), FakeClock(), list[str]()
        m1 = await member(db, clock, agent(1, "a"), changes)
        m2 = await member(db, clock, agent(3, "b"), [])
        assert live(m1) == [(1, "a")]  # itself until the first look
        await m1.tick()
        await m2.tick()
        await m1.tick()
        assert live(m1) == live(m2) == [(1, "a"), (3, "b")]
        assert changes == ["agent-1"]
        assert messages(caplog) == [  # what agent-3 saw, then agent-1
            f"agent joined: agent-1 (node 1, zone 'a', 127.0.0.1:9001, {ALL}),"
            " last heartbeat 0 ms ago",
            f"agent joined: agent-3 (node 3, zone 'b', 127.0.0.1:9003, {ALL}),"
            " last heartbeat 0 ms ago",
        ]

        # agent-3 stays silent: live until a whole timeout passed since its last beat.
        for _ in range(TIMEOUT_MS // HEARTBEAT_MS):
            clock.advance(HEARTBEAT_MS)
            await m1.tick()
        assert live(m1) == [(1, "a"), (3, "b")]
        assert messages(caplog) == []
        clock.advance(1)
        await m1.tick()
        assert live(m1) == [(1, "a")]
        assert changes == ["agent-1", "agent-1"]
        assert messages(caplog) == [
            f"agent left: agent-3 (node 3, zone 'b', 127.0.0.1:9003, {ALL}),"
            " last heartbeat 3001 ms ago"
        ]

    asyncio.run(scenario())


def test_an_agent_back_in_another_zone_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="driftlog.cluster.membership")

    async def scenario() -> None:
        db, clock, changes = MemoryDatabase(), FakeClock(), list[str]()
        m1 = await member(db, clock, agent(1, "a"), changes)
        await (await member(db, clock, agent(2, "a"), [])).tick()
        await m1.tick()
        messages(caplog)
        clock.advance(HEARTBEAT_MS)
        # agent-2 restarts in zone b (a different process: it logs its own view).
        await (await member(db, clock, dataclasses.replace(agent(2, "a"), zone="b"), [])).tick()
        messages(caplog)
        await m1.tick()
        assert live(m1) == [(1, "a"), (2, "b")]
        assert messages(caplog) == [
            f"agent changed: agent-2 (node 2, zone 'b', 127.0.0.1:9002, {ALL}),"
            f" was agent-2 (node 2, zone 'a', 127.0.0.1:9002, {ALL})"
        ]
        assert changes == ["agent-1"]  # the same agents: groups stay where they are

    asyncio.run(scenario())


def test_agents_whose_clocks_disagree_see_each_other_on_postgresql(postgres_dsn: str) -> None:
    """Liveness is judged by the database's clock: agents a minute apart (more than the
    timeout) still list each other, and the one silent past the timeout leaves."""

    async def scenario() -> None:
        ahead, behind = FakeClock(), FakeClock()
        ahead.advance(60_000)
        backends = [PostgresBackend(postgres_dsn), PostgresBackend(postgres_dsn)]
        for backend in backends:
            await backend.open()
        members = [
            Membership(backend, clock, me, shared=True, heartbeat_ms=HEARTBEAT_MS,
                       timeout_ms=TIMEOUT_MS)
            for backend, clock, me in zip(
                backends, (ahead, behind), (agent(1, "a"), agent(2, "b")), strict=True
            )
        ]  # fmt: skip
        for m in members:
            await m.tick()
        await members[0].tick()
        assert [live(m) for m in members] == [[(1, "a"), (2, "b")]] * 2
        # Each sees the other's beat on its own clock: a moment ago, not a minute.
        other = members[0].live[1]
        assert abs(ahead.wall_ms() - other.heartbeat_ms) < 2_000

        await asyncio.sleep((TIMEOUT_MS + 500) / 1000)  # agent 2 goes silent
        await members[0].tick()
        assert live(members[0]) == [(1, "a")]
        for backend in backends:
            await backend.close()

    asyncio.run(scenario())


class CutOff(MemoryBackend):
    """The database as one agent sees it while a network cut lasts: calls fail."""

    cut = False

    async def heartbeat(self, agent: AgentInfo) -> None:
        if self.cut:
            raise CoordinatorUnavailable("connection timed out")
        await super().heartbeat(agent)


def test_an_agent_cut_off_from_the_database_steps_aside_and_rejoins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="driftlog.cluster.membership")

    async def scenario() -> None:
        db, clock, changes = MemoryDatabase(), FakeClock(), list[str]()
        backend = CutOff(db)
        await backend.open()
        me = agent(1, "a")
        m1 = Membership(
            backend, clock, me, shared=True, heartbeat_ms=HEARTBEAT_MS, timeout_ms=TIMEOUT_MS,
            on_change=lambda: changes.append("changed"),
        )  # fmt: skip
        m2 = await member(db, clock, agent(2, "a"), [])
        await m2.tick()
        await m1.tick()
        assert [a.node_id for a in m1.leaders()] == [1, 2]
        messages(caplog)
        changes.clear()

        backend.cut = True
        clock.advance(TIMEOUT_MS)  # silent for exactly the timeout: not yet detached
        await m1.tick()
        assert not m1.detached() and [a.node_id for a in m1.leaders()] == [1, 2]
        clock.advance(1)
        await m1.tick()
        assert m1.detached()
        assert [a.node_id for a in m1.leaders()] == [2]  # it names the others
        assert [a.node_id for a in m1.live] == [1, 2]  # and still lists what it knew
        assert changes == ["changed"]
        assert any("stepping aside" in line for line in messages(caplog))

        backend.cut = False
        await m2.tick()
        await m1.tick()
        assert not m1.detached() and [a.node_id for a in m1.leaders()] == [1, 2]
        assert changes == ["changed", "changed"]
        assert any("rejoining" in line for line in messages(caplog))

    asyncio.run(scenario())


def test_an_agent_alone_does_not_step_aside_from_itself() -> None:
    async def scenario() -> None:
        backend = CutOff(MemoryDatabase())
        await backend.open()
        clock = FakeClock()
        m = Membership(backend, clock, agent(1, "a"), shared=True, timeout_ms=TIMEOUT_MS)
        await m.tick()
        backend.cut = True
        clock.advance(TIMEOUT_MS + 1)
        await m.tick()
        assert m.detached() and [a.node_id for a in m.leaders()] == [1]

    asyncio.run(scenario())


class FailsFirst(MemoryBackend):
    failures = 2

    async def heartbeat(self, agent: AgentInfo) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise CoordinatorUnavailable("not yet")
        await super().heartbeat(agent)


def test_start_waits_for_a_heartbeat_that_gets_through() -> None:
    """An agent whose first heartbeat fails would otherwise name itself alone in
    Metadata until the next one."""

    async def scenario() -> None:
        db, clock = MemoryDatabase(), FakeClock()
        other = await member(db, clock, agent(2, "a"), [])
        await other.tick()
        backend = FailsFirst(db)
        await backend.open()
        m = Membership(
            backend, clock, agent(1, "a"), shared=True, heartbeat_ms=50, timeout_ms=TIMEOUT_MS
        )
        await m.start()
        assert backend.failures == 0
        assert [a.node_id for a in m.live] == [1, 2]
        await m.close()

    asyncio.run(scenario())


def test_live_is_the_agents_group_and_cluster_is_everyone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="driftlog.cluster.membership")

    async def scenario() -> None:
        db, clock = MemoryDatabase(), FakeClock()
        x1 = await member(db, clock, dataclasses.replace(agent(1, "a"), group="x"), [])
        x2 = dataclasses.replace(agent(2, "b"), group="x", roles=frozenset({"fetch"}))
        y3 = dataclasses.replace(agent(3, "a"), group="y", roles=frozenset({"jobs"}))
        for other in (x2, y3):
            await (await member(db, clock, other, [])).tick()
        messages(caplog)
        await x1.tick()
        assert [a.node_id for a in x1.live] == [1, 2]
        assert [a.node_id for a in x1.cluster] == [1, 2, 3]
        assert [a.node_id for a in x1.leaders()] == [1, 2]
        assert messages(caplog) == [  # every group's agents, with their roles and group
            "agent joined: agent-2 (node 2, zone 'b', 127.0.0.1:9002, roles fetch, group 'x'),"
            " last heartbeat 0 ms ago",
            "agent joined: agent-3 (node 3, zone 'a', 127.0.0.1:9003, roles jobs, group 'y'),"
            " last heartbeat 0 ms ago",
        ]

    asyncio.run(scenario())
