"""Cluster membership: this agent's heartbeat and the list of live agents.

Each agent upserts its row (id, broker id, address, zone, RPC address) every
`heartbeat_ms` and reads back the agents heard from within `timeout_ms`.
Metadata and group-coordinator placement use that list, so a dead agent
drops out of both about `timeout_ms` after its last beat. When the database
cannot be reached, the last list is kept (and this agent is always in it).
Without a shared database (the embedded default) the list is this agent alone.
Each change of this agent's list (an agent joined, left, or is back with another
zone, address, node id, roles or group) is logged at INFO with the agent's zone, roles
and group.

Agent groups (`--agent-group`): `live` holds only the agents of this agent's group,
since Metadata, leader placement and group-coordinator placement must never name
another group's agents to a client; `cluster` holds every live agent, for what the
whole cluster shares (which agent runs the background jobs, whether a writer or a
jobs agent is live at all).

An agent steps aside while it cannot commit, in two cases:
- *detached*: its heartbeats have not reached the database for longer than
  `timeout_ms`. The others have dropped it by then, and it may no longer learn who
  writes. A heartbeat that hangs is abandoned after `timeout_ms`.
- *cut off from the writer*: the writer is alive (it renews its lease) but has not
  been heard from over the RPC for longer than `timeout_ms` (`writer_silent_s`).
  This agent then withdraws its row at once, so every other agent drops it at its
  next heartbeat, and announces itself again once the writer is heard.
While it steps aside, `leaders` (what Metadata names as partition leaders and group
coordinators) leaves it out as long as another agent is known, so clients move to
agents that can commit; a heartbeat that gets through, and a writer heard again,
rejoin it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from driftlog.clock import Clock
from driftlog.coordinator.api import ROLE_ORDER, AgentInfo, CoordinatorError
from driftlog.coordinator.engines.backend import Backend
from driftlog.timeouts import within

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        me: AgentInfo,
        *,
        shared: bool,
        heartbeat_ms: int = 1_000,
        timeout_ms: int = 5_000,
        on_change: Callable[[], None] = lambda: None,
        writer_silent_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._on_change = on_change
        self._writer_silent_s = writer_silent_s
        self._backend = backend
        self._clock = clock
        self.me = me
        self._shared = shared
        self._heartbeat_ms = heartbeat_ms
        self._timeout_ms = timeout_ms
        self.live: list[AgentInfo] = [me]  # of this agent's group
        self.cluster: list[AgentInfo] = [me]  # of every group
        self._task: asyncio.Task[None] | None = None
        # Monotonic time of the last heartbeat that reached the database.
        self._last_heartbeat_s = clock.monotonic_s()
        self._was_detached = False
        self._withdrawn = False  # this agent's row removed while cut off from the writer
        self._beating: asyncio.Future[list[AgentInfo]] | None = None  # the heartbeat in flight

    async def start(self) -> None:
        """Join: until the first heartbeat gets through (for at most the agent timeout),
        this agent knows no other, and Metadata would name it alone."""
        if not self._shared:
            return
        deadline_s = self._clock.monotonic_s() + self._timeout_ms / 1000
        while True:
            joined = await self.tick()
            if joined or self._clock.monotonic_s() >= deadline_s:
                break
            await asyncio.sleep(self._heartbeat_ms / 1000)
        self._task = asyncio.create_task(self._loop(), name="membership")

    def detached(self) -> bool:
        """No heartbeat reached the database for longer than the agent timeout."""
        silent_s = self._clock.monotonic_s() - self._last_heartbeat_s
        return self._shared and silent_s > self._timeout_ms / 1000

    def cut_off(self) -> bool:
        """The writer is alive but has not been heard from for longer than the agent
        timeout: commits cannot reach it."""
        return self._shared and self._writer_silent_s() > self._timeout_ms / 1000

    def stepping_aside(self) -> bool:
        return self.detached() or self.cut_off()

    def leaders(self) -> list[AgentInfo]:
        """The agents to name as leaders and coordinators: the live ones, without this
        agent while it steps aside (unless it knows no other)."""
        if not self.stepping_aside():
            return self.live
        others = [a for a in self.live if a.agent_id != self.me.agent_id]
        return others or self.live

    async def tick(self) -> bool:
        """One heartbeat and look at who is live; False when it did not get through."""
        now_ms = self._clock.wall_ms()
        cut_off = self.cut_off()
        self._beating = asyncio.ensure_future(self._beat(now_ms, withdraw=cut_off))
        try:
            live = await within(self._timeout_ms / 1000, self._beating)
        except (CoordinatorError, TimeoutError) as e:
            log.warning("heartbeat failed: %s", e)
            self._notice_detachment()
            return False
        self._last_heartbeat_s = self._clock.monotonic_s()
        if self._was_detached:
            self._was_detached = False
            log.warning("heartbeat reached the database again: rejoining as a leader")
            self._on_change()
        if cut_off != self._withdrawn:
            self._withdrawn = cut_off
            if cut_off:
                log.warning(
                    "the writer has not been heard from for over %d ms while it renews its "
                    "lease: stepping aside (withdrawn from the membership)",
                    self._timeout_ms,
                )
            else:
                log.warning("the writer is heard again: rejoining as a leader")
            self._on_change()
        if all(a.agent_id != self.me.agent_id for a in live):
            live.append(self.me)
        live.sort(key=lambda a: (a.node_id, a.agent_id))
        changed = [_placed(a) for a in live] != [_placed(a) for a in self.cluster]
        _log_changes(self.cluster, live, now_ms)
        self.cluster = live
        self.live = [a for a in live if a.group == self.me.group]
        if changed:
            self._on_change()
        return True

    async def _beat(self, now_ms: int, *, withdraw: bool) -> list[AgentInfo]:
        if not withdraw:
            await self._backend.heartbeat(dataclasses.replace(self.me, heartbeat_ms=now_ms))
        elif not self._withdrawn:
            # Once, on stepping aside: the others drop this agent at their next heartbeat
            # instead of a whole agent timeout later.
            await self._backend.remove_agent(self.me.agent_id)
        return await self._backend.live_agents(self._timeout_ms, now_ms)

    def _notice_detachment(self) -> None:
        if self.detached() and not self._was_detached:
            self._was_detached = True
            others = [a.agent_id for a in self.leaders() if a.agent_id != self.me.agent_id]
            log.warning(
                "no heartbeat reached the database for over %d ms: stepping aside; "
                "Metadata names %s as leaders",
                self._timeout_ms,
                ", ".join(others) or "this agent still (it knows no other)",
            )
            self._on_change()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_ms / 1000)
            await self.tick()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._beating is not None and not self._beating.done():
            # A heartbeat that lands after the removal below would bring this agent back
            # for a whole timeout: let it end first (bounded; a hung one is cancelled).
            self._beating.cancel()
            await asyncio.wait({self._beating}, timeout=self._timeout_ms / 1000)
        if self._shared:
            with contextlib.suppress(CoordinatorError):
                await self._backend.remove_agent(self.me.agent_id)

    def by_node(self, node_id: int) -> AgentInfo | None:
        return next((a for a in self.live if a.node_id == node_id), None)


def _placed(agent: AgentInfo) -> tuple[str, frozenset[str], str]:
    """What placement looks at besides the zone: a change of it moves work."""
    return agent.agent_id, agent.roles, agent.group


def _describe(agent: AgentInfo) -> str:
    roles = ",".join(r for r in ROLE_ORDER if r in agent.roles) or "none"
    group = f", group {agent.group!r}" if agent.group else ""
    return (
        f"{agent.agent_id} (node {agent.node_id}, zone {agent.zone!r}, {agent.host}:{agent.port},"
        f" roles {roles}{group})"
    )


def _log_changes(before: list[AgentInfo], after: list[AgentInfo], now_ms: int) -> None:
    """Log agents that joined, left, or changed (zone, address, node id, roles, group), at
    INFO."""
    old = {a.agent_id: a for a in before}
    new = {a.agent_id: a for a in after}
    for agent_id, a in new.items():
        previous = old.get(agent_id)
        if previous is None:
            log.info(
                "agent joined: %s, last heartbeat %d ms ago", _describe(a), now_ms - a.heartbeat_ms
            )
        elif dataclasses.replace(previous, heartbeat_ms=0) != dataclasses.replace(
            a, heartbeat_ms=0
        ):
            log.info("agent changed: %s, was %s", _describe(a), _describe(previous))
    for agent_id, a in old.items():
        if agent_id not in new:
            log.info(
                "agent left: %s, last heartbeat %d ms ago", _describe(a), now_ms - a.heartbeat_ms
            )
