"""A seeded, deterministic simulation of cluster membership under joins, leaves and faults.

Real `Membership` objects, one per agent, each with its own `GatedBackend` over one
shared `MemoryDatabase`, and one `FakeClock`. Nothing runs on real time: each agent
runs a driver task that does what `Membership.start` and `Membership._loop` do
(tick until a heartbeat gets through, for at most the timeout; then sleep one
heartbeat interval and tick, forever), but sleeps on the simulation's clock, with a
seeded scheduling lateness of up to `jitter_ms`. `Membership.tick`'s `within` is
replaced by the same logic on the fake clock (the call is abandoned at the deadline,
cancelled and not waited for; a caller cancelled meanwhile leaves it running, as
`asyncio.wait` does). The driver task is the membership's `_task`, so `close()`
cancels it as it cancels the real loop.

One seed drives everything. During the chaos phase, every `chaos_every_ms` on
average one of: an agent joins (a new id, or a departed one restarting with the
same id, as `agent_identity` keeps it, maybe in another zone), leaves cleanly
(`close`: cancel the loop, `remove_agent`), dies (kill -9: stops ticking, its calls
in flight never land), or is cut off from the database for a while (silent: calls
hang until the cut ends or the timeout abandons them; or refused: calls fail at
once), for less or more than the agent timeout. Every heartbeat and live-agents
call may also fail before reaching the database, be slow (up to `slow_ms`), hang
(past the timeout), or (a heartbeat) land and lose its reply. Then the faults stop
(calls in flight complete) and the run settles.

Properties (`Sim.check` after every step; `SimFailure` names the seed and replays
with `run_seed`):

1. Convergence. After the last change to the database's membership (an agent's row
   appearing, a clean leave's removal, a row expiring `timeout_ms` after its last
   beat), once `heartbeat_ms + jitter_ms` has passed (every agent has looked again),
   every running agent's `live` ids equal the running agents, and all of them name
   the same `leaders()`, group coordinators and partition leaders (with and without
   a zone hint). So: a join or a clean leave is agreed on within one heartbeat
   interval; a death within the timeout plus one interval.
   1b. A clean leave disappears at the next heartbeat of each other agent: a list
   read by a heartbeat that started after the removal never names the agent that
   left (until it restarts).
2. No flapping. An agent whose heartbeats keep landing on time (its latest beat at
   most `on_time_ms` old at the instant another agent reads the list) is never
   dropped from that agent's `live`.
3. Detachment. An agent Z whose heartbeats stopped landing is named by no attached
   running agent whose last successful heartbeat started more than `timeout_ms`
   after Z's last landed beat; an agent detached by its own clock (no heartbeat got
   through for over `timeout_ms`) names the others it knows and not itself.

With `groups` (group claims, issue 16), each agent also runs a real `GroupCoordinator`
whose groups membership changes release (as the agent's `_membership_changed` does),
and commits offsets, every `commit_every_ms` at most, for a group it believes it
coordinates (placement over its own `leaders()`), as the OffsetCommit handler does:
take the group's claim if it holds none, commit carrying it, drop it if fenced. Claims
and commits go through the same faulty calls as heartbeats (a slow commit reaches the
database late). Properties:

4. Fencing. A commit lands only under the claim stored at that moment: once a group's
   claim moved to another agent, no commit of the agent that lost it lands (so two
   agents' commits for one group never both land after a claim moved). With
   `unfenced_commits` (the database does not check the claim: Driftlog before group
   claims) this fails, which shows the property can.
5. Recovery. In the last `settled_window_ms` of the run, every group's commits land,
   and only its agreed coordinator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from unittest import mock

from driftlog.clock import FakeClock
from driftlog.cluster import membership as membership_module
from driftlog.cluster import placement
from driftlog.cluster.membership import Membership
from driftlog.coordinator.api import (
    AgentInfo,
    CommittedOffset,
    CoordinatorUnavailable,
    GroupClaim,
    GroupFenced,
)
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.groups.coordinator import GroupCoordinator

T = TypeVar("T")

GROUPS = tuple(f"group-{i}" for i in range(16))
TOPIC_KEYS = (b"topic-a", b"topic-b")
PARTITIONS = 12
ZONES = ("a", "b", "c")


class SimFailure(AssertionError):
    pass


@dataclass(frozen=True, slots=True)
class SimConfig:
    heartbeat_ms: int = 1_000
    timeout_ms: int = 5_000
    jitter_ms: int = 50  # how late a sleeping loop may wake (event loop scheduling)
    chaos_ms: int = 40_000
    chaos_every_ms: int = 1_500
    max_agents: int = 6
    ids: int = 8  # agent ids in use (restarts reuse them)
    fail: float = 0.05  # a call fails before reaching the database
    slow: float = 0.15  # a call takes up to slow_ms
    slow_ms: int = 300
    hang: float = 0.01  # a call hangs past the timeout
    lose_reply: float = 0.02  # a heartbeat lands, its reply is lost
    # Diagnostic, not what the product does: `close()` also stops the heartbeat in
    # flight, so it never lands after `remove_agent` (see the report in run_seed's doc).
    close_stops_beat: bool = False
    # Group claims: agents commit offsets for the groups they believe they coordinate.
    groups: bool = False
    commit_every_ms: int = 500
    settled_window_ms: int = 3_000
    # Diagnostic, not what the product does: the database stores commits without
    # checking their claim (Driftlog before group claims); property 4 then fails.
    unfenced_commits: bool = False

    @property
    def on_time_ms(self) -> int:
        """The longest gap between two beats of an agent that keeps beating on time:
        one interval, its lateness, and two slow calls (a heartbeat's stamp is taken
        when its tick starts)."""
        return self.heartbeat_ms + self.jitter_ms + 2 * self.slow_ms


@dataclass(slots=True)
class Node:
    """One incarnation of an agent."""

    info: AgentInfo
    incarnation: int
    backend: GatedBackend
    membership: Membership
    state: str = "joining"  # joining, running, left, dead
    task: asyncio.Task[None] | None = None
    cut: str | None = None  # "silent" or "refused"
    cut_over: asyncio.Future[None] | None = None
    max_stamp: int | None = None  # the newest beat of this incarnation that landed
    last_ok_now_ms: int | None = None  # when the last successful tick started
    last_ok_s: float | None = None  # when it ended (monotonic)
    seen: list[str] = field(default_factory=list)  # live ids at the last check
    groups: GroupCoordinator | None = None
    committer: asyncio.Task[None] | None = None

    @property
    def agent_id(self) -> str:
        return self.info.agent_id


class GatedBackend(MemoryBackend):
    """One agent's connection to the shared database, with the seed's faults."""

    def __init__(self, sim: Sim, node_ref: list[Node]) -> None:
        super().__init__(sim.db)
        self.sim = sim
        self.node_ref = node_ref
        self.dead = False
        self._open = True  # the same database, already open
        # The lists live_agents returned, with who was on time when each was read.
        self.reads: list[tuple[list[AgentInfo], frozenset[str]]] = []

    async def _gate(self, what: str) -> bool:
        """Wait as the seed says; False when the reply is to be lost."""
        sim, node = self.sim, self.node_ref[0]
        if what in ("claim_group", "put_offsets"):
            return await self._gate_shielded(what)
        if node.cut == "refused":
            raise CoordinatorUnavailable("connection refused")
        if node.cut == "silent" and node.cut_over is not None:
            await node.cut_over
        lose = await self._fault(what) if sim.faults else False
        if node.cut == "refused":
            raise CoordinatorUnavailable("connection refused")
        if node.cut == "silent" and node.cut_over is not None:
            await node.cut_over
        if self.dead:
            raise CoordinatorUnavailable("the process is gone")
        return not lose

    async def _fault(self, what: str) -> bool:
        """The fault the seed draws for one call: fail, slow, hang, or (heartbeats only)
        lose the reply; True when the reply is to be lost."""
        sim, c = self.sim, self.sim.config
        r = sim.rng.random()
        if r < c.fail:
            sim.faults_injected += 1
            raise CoordinatorUnavailable(f"{what} failed")
        r -= c.fail
        if r < c.slow:
            await sim.sleep(sim.rng.randint(1, c.slow_ms), fault=True)
        elif r < c.slow + c.hang:
            sim.faults_injected += 1
            await sim.sleep(sim.rng.randint(c.timeout_ms, 2 * c.timeout_ms), fault=True)
        elif r < c.slow + c.hang + c.lose_reply and what == "heartbeat":
            return True
        return False

    async def _gate_shielded(self, what: str) -> bool:
        """`_gate` for group calls: a heartbeat abandoned (cancelled) while it waits for a
        cut to end cancels the cut's future, which must not cancel the calls of other
        tasks waiting on it too (the heartbeat's own waits stay as they were)."""
        sim, node = self.sim, self.node_ref[0]
        for attempt in range(2):  # as `_gate`: the cut is looked at before and after the faults
            if node.cut == "refused":
                raise CoordinatorUnavailable("connection refused")
            if node.cut == "silent" and node.cut_over is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(node.cut_over)
            if attempt == 0 and sim.faults:
                await self._fault(what)
        if self.dead:
            raise CoordinatorUnavailable("the process is gone")
        return True

    async def heartbeat(self, agent: AgentInfo) -> None:
        reply = await self._gate("heartbeat")
        sim, node = self.sim, self.node_ref[0]
        now = sim.clock.wall_ms()
        old = sim.db.agents.get(agent.agent_id)
        if (
            old is None
            or old.heartbeat_ms < now - sim.config.timeout_ms
            or dataclasses.replace(old, heartbeat_ms=0)
            != dataclasses.replace(agent, heartbeat_ms=0)
        ):
            sim.change(f"row of {agent.agent_id} appears (stamp {sim.t(agent.heartbeat_ms)})")
        await super().heartbeat(agent)
        if node.max_stamp is None or agent.heartbeat_ms > node.max_stamp:
            node.max_stamp = agent.heartbeat_ms
        last = sim.last_stamp.get(agent.agent_id)
        sim.last_stamp[agent.agent_id] = max(agent.heartbeat_ms, last or agent.heartbeat_ms)
        if node.state in ("left", "dead"):
            sim.log(f"{node.agent_id}#{node.incarnation} ({node.state}): a late heartbeat lands")
        if not reply:
            sim.faults_injected += 1
            raise CoordinatorUnavailable("heartbeat reply lost")

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        await self._gate("claim_group")
        claim = await super().claim_group(group_id, agent_id)
        self.sim.log(f"{agent_id} claims {group_id} (epoch {claim.epoch})")
        return claim

    async def put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        await self._gate("put_offsets")
        sim = self.sim
        stored = sim.db.group_claims.get(group_id)
        checked = None if sim.config.unfenced_commits else claim
        await super().put_offsets(group_id, offsets, checked)
        sim.commit_landed(group_id, claim, stored)

    async def live_agents(self, timeout_ms: int, now_ms: int) -> list[AgentInfo]:
        await self._gate("live_agents")
        live = await super().live_agents(timeout_ms, now_ms)
        sim = self.sim
        at = sim.clock.wall_ms()
        on_time = frozenset(
            n.agent_id
            for n in sim.current.values()
            if n.state in ("joining", "running")
            and n.max_stamp is not None
            and n.max_stamp >= at - sim.config.on_time_ms
        )
        self.reads = [*self.reads[-3:], (live, on_time)]
        return live


class Sim:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.start_ms = self.clock.wall_ms()
        self.db = MemoryDatabase()
        self.timers: list[tuple[int, int, asyncio.Future[None]]] = []
        self.seq = 0
        self.faults = True
        self.fault_waits: list[asyncio.Future[None]] = []
        self.current: dict[str, Node] = {}  # agent id -> its latest incarnation
        self.incarnations = 0
        self.removed_at: dict[str, int] = {}  # agent id -> when its clean leave removed it
        self.last_stamp: dict[str, int] = {}  # agent id -> newest stamp that ever landed
        self.last_change_ms = self.start_ms
        self.events: list[str] = []
        self.faults_injected = 0
        self.checks = {"converged checks": 0, "leave checks": 0, "detached checks": 0}
        self.step = 0
        self.leaving: list[asyncio.Task[None]] = []
        self.committed = 0  # offsets committed (each commit stores the next number)
        self.fenced = 0
        self.landed: list[tuple[int, str, str]] = []  # (wall ms, group, agent id)
        self.violations: list[str] = []

    # Time ---------------------------------------------------------------------------
    def t(self, wall_ms: int) -> int:
        return wall_ms - self.start_ms

    def log(self, line: str) -> None:
        self.events.append(f"t={self.t(self.clock.wall_ms())} {line}")

    def change(self, line: str) -> None:
        self.last_change_ms = max(self.last_change_ms, self.clock.wall_ms())
        self.log(line)

    def sleep(self, ms: int, fault: bool = False) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seq += 1
        heapq.heappush(self.timers, (self.clock.wall_ms() + ms, self.seq, future))
        if fault:
            self.fault_waits.append(future)
        return future

    async def within(self, timeout_s: float, awaitable: Awaitable[T]) -> T:
        """`driftlog.timeouts.within` on the fake clock."""
        task = asyncio.ensure_future(awaitable)
        # (The real one leaves a call whose caller was cancelled unobserved: asyncio then
        # logs "Task exception was never retrieved" if it fails.)
        task.add_done_callback(_forget)
        timer = self.sleep(round(timeout_s * 1000))
        waiting: set[asyncio.Future[Any]] = {task, timer}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        task.add_done_callback(_forget)
        raise TimeoutError(f"no answer within {timeout_s:.1f} s")

    async def drain(self) -> None:
        loop: Any = asyncio.get_running_loop()
        for _ in range(10_000):
            await asyncio.sleep(0)
            if not loop._ready:
                break
        else:
            raise self.failure("the event loop never settles")

    # Group claims -------------------------------------------------------------------
    def commit_landed(
        self, group_id: str, claim: GroupClaim | None, stored: tuple[str, int] | None
    ) -> None:
        """4. A commit lands only under the claim stored when it lands."""
        assert claim is not None
        now = self.clock.wall_ms()
        self.landed.append((now, group_id, claim.agent_id))
        self.log(f"{claim.agent_id} commits {group_id} (epoch {claim.epoch})")
        if not claim.admits(stored):
            self.violations.append(
                f"{claim.agent_id}'s commit for {group_id} with claim epoch {claim.epoch}"
                f" landed at t={self.t(now)} after the claim moved to {stored}"
            )

    async def committer(self, node: Node) -> None:
        """What the OffsetCommit handler does, every `commit_every_ms` at most, for each
        group this agent believes it coordinates (in a seeded order)."""
        c, rng = self.config, self.rng
        while True:
            await self.sleep(rng.randint(1, c.commit_every_ms))
            if node.state != "running":
                continue
            mine = [g for g in GROUPS if owns(node.membership, g)]
            rng.shuffle(mine)
            for group_id in mine:
                await self.commit(node, group_id)

    async def commit(self, node: Node, group_id: str) -> None:
        groups, backend, agent_id = node.groups, node.backend, node.agent_id
        assert groups is not None
        try:
            take = functools.partial(backend.claim_group, group_id, agent_id)
            claim = await groups.claimed(group_id, take)
            if claim is None:
                return
            self.committed += 1
            offsets = [CommittedOffset("t", 0, self.committed, -1, "")]
            await backend.put_offsets(group_id, offsets, claim)
        except GroupFenced as e:
            self.fenced += 1
            groups.fenced(e.claim)
            self.log(f"{agent_id}'s commit for {group_id} fenced: {e}")
        except CoordinatorUnavailable:
            pass

    def check_recovered(self) -> None:
        """5. In the run's last window every group's commits land, its coordinator's only."""
        c = self.config
        since = self.clock.wall_ms() - c.settled_window_ms
        running = [n for n in self.current.values() if n.state == "running"]
        if not running:
            return
        leaders = running[0].membership.leaders()
        for group_id in GROUPS:
            coordinator = placement.group_coordinator(group_id, leaders)
            assert coordinator is not None
            by = {a for t, g, a in self.landed if g == group_id and t >= since}
            if by != {coordinator.agent_id}:
                raise self.failure(
                    f"in the last {c.settled_window_ms} ms commits for {group_id} landed from"
                    f" {sorted(by)}, not only (and at least once) from {coordinator.agent_id}"
                )

    # Agents -------------------------------------------------------------------------
    async def driver(self, node: Node) -> None:
        """What Membership.start and Membership._loop do, on the simulation's clock."""
        c, m = self.config, node.membership
        deadline_s = self.clock.monotonic_s() + c.timeout_ms / 1000
        while True:
            joined = await self.tick(node)
            if joined or self.clock.monotonic_s() >= deadline_s:
                break
            await self.sleep(c.heartbeat_ms + self.rng.randint(0, c.jitter_ms))
        node.state = "running"
        self.log(f"{node.agent_id}#{node.incarnation} running (joined: {joined}), live {ids(m)}")
        while True:
            await self.sleep(c.heartbeat_ms + self.rng.randint(0, c.jitter_ms))
            await self.tick(node)

    async def tick(self, node: Node) -> bool:
        now_ms = self.clock.wall_ms()
        ok = await node.membership.tick()
        if ok:
            node.last_ok_now_ms = now_ms
            node.last_ok_s = self.clock.monotonic_s()
        return ok

    def join(self, agent_id: str) -> None:
        previous = self.current.get(agent_id)
        node_id = int(agent_id.split("-")[1])
        zone = self.rng.choice(ZONES)
        if previous is not None and self.rng.random() < 0.7:
            zone = previous.info.zone
        info = AgentInfo(agent_id, node_id, "10.0.0.1", 9000 + node_id, zone, "")
        self.incarnations += 1
        ref: list[Node] = []
        backend = GatedBackend(self, ref)
        groups: GroupCoordinator | None = None
        if self.config.groups:
            groups = GroupCoordinator(
                lambda: round(self.clock.monotonic_s() * 1000),
                owns=lambda group_id: owns(m, group_id),
            )
        m = Membership(
            backend,
            self.clock,
            info,
            shared=True,
            heartbeat_ms=self.config.heartbeat_ms,
            timeout_ms=self.config.timeout_ms,
            # As the agent's _membership_changed: groups that moved away are released.
            on_change=groups.release_foreign_groups if groups is not None else lambda: None,
        )
        node = Node(info, self.incarnations, backend, m, groups=groups)
        ref.append(node)
        self.current[agent_id] = node
        self.removed_at.pop(agent_id, None)
        node.task = asyncio.create_task(self.driver(node))
        m._task = node.task  # close() cancels it, as it cancels the real loop
        if groups is not None:
            node.committer = asyncio.create_task(self.committer(node))
        self.log(f"join {agent_id}#{node.incarnation} zone {zone}")

    async def leave(self, node: Node) -> None:
        node.state = "left"
        self.log(f"leave {node.agent_id}#{node.incarnation} (close)")
        if node.committer is not None:
            node.committer.cancel()  # the agent stops serving before it leaves
        if self.config.close_stops_beat:
            node.backend.dead = True
        await node.membership.close()
        self.removed_at[node.agent_id] = self.clock.wall_ms()
        self.change(f"row of {node.agent_id} removed")

    def die(self, node: Node) -> None:
        node.state = "dead"
        node.backend.dead = True
        if node.task is not None:
            node.task.cancel()
        if node.committer is not None:
            node.committer.cancel()
        self.log(f"kill -9 {node.agent_id}#{node.incarnation}")

    def cut(self, node: Node, kind: str, ms: int) -> None:
        node.cut = kind
        over = self.sleep(ms, fault=True)  # the network heals when the faults stop
        node.cut_over = over
        self.log(f"cut {node.agent_id}#{node.incarnation} ({kind}) for {ms} ms")

        def heal(_: asyncio.Future[None]) -> None:
            if node.cut_over is over:
                node.cut, node.cut_over = None, None
                self.log(f"cut of {node.agent_id}#{node.incarnation} over")

        over.add_done_callback(heal)

    async def chaos(self) -> None:
        c, rng = self.config, self.rng
        running = [n for n in self.current.values() if n.state == "running"]
        alive = [n for n in self.current.values() if n.state in ("joining", "running")]
        gone = ("left", "dead")
        free = [f"agent-{i}" for i in range(1, c.ids + 1)]
        free = [a for a in free if a not in self.current or self.current[a].state in gone]
        what = rng.choices(("join", "leave", "die", "cut"), (4, 3, 2, 3))[0]
        if what == "join" and free and len(alive) < c.max_agents:
            self.join(rng.choice(free))
        elif what == "leave" and len(running) > 1:
            node = rng.choice(running)
            leaving = asyncio.create_task(self.leave(node))
            self.leaving.append(leaving)
        elif what == "die" and len(running) > 1:
            self.die(rng.choice(running))
        elif what == "cut" and running:
            node = rng.choice(running)
            short = rng.random() < 0.4
            ms = (
                rng.randint(200, c.timeout_ms - 1_500)
                if short
                else rng.randint(c.timeout_ms + 500, 3 * c.timeout_ms)
            )
            self.cut(node, rng.choice(("silent", "refused")), ms)

    # Properties ---------------------------------------------------------------------
    def failure(self, what: str) -> SimFailure:
        log = "\n  ".join(self.events[-120:])
        return SimFailure(
            f"seed {self.seed}, t={self.t(self.clock.wall_ms())}: {what}\n"
            f"replay: sim.membership.run_seed({self.seed})\nevents (last 120):\n  {log}"
        )

    def check(self, settled: bool) -> None:
        c = self.config
        now = self.clock.wall_ms()
        for node in self.current.values():
            for task in (node.task, node.committer):
                if task is not None and task.done() and not task.cancelled() and task.exception():
                    raise self.failure(f"{node.agent_id}'s loop failed: {task.exception()!r}")
        if self.violations:
            raise self.failure(f"fencing: {self.violations[0]}")
        running = [n for n in self.current.values() if n.state == "running"]
        for y in running:
            m = y.membership
            live = ids(m)
            # 2. No flapping: whoever Y drops was not on time when Y read the list.
            dropped = [a for a in y.seen if a not in live]
            if dropped:
                read = next((r for r in y.backend.reads if r[0] is m.cluster), None)
                if read is None:
                    raise self.failure(f"{y.agent_id}'s live list changed without a read")
                for x in dropped:
                    if x in read[1]:
                        raise self.failure(
                            f"flap: {y.agent_id} dropped {x}, which was beating on time"
                            f" (its newest beat at most {c.on_time_ms} ms old at the read)"
                        )
            y.seen = live
            # 1b. A clean leave is gone from every list read after its removal.
            if y.last_ok_now_ms is not None:
                for x in live:
                    removed = self.removed_at.get(x)
                    if removed is not None and removed < y.last_ok_now_ms:
                        raise self.failure(
                            f"{y.agent_id} still lists {x}, which left cleanly at"
                            f" t={self.t(removed)}, after a heartbeat that started at"
                            f" t={self.t(y.last_ok_now_ms)}"
                        )
                    self.checks["leave checks"] += 1
            # 3. A silent agent is named by no attached agent that looked after its timeout.
            if not m.detached() and y.last_ok_now_ms is not None:
                for z in m.leaders():
                    if z.agent_id == y.agent_id:
                        continue
                    stamp = self.last_stamp.get(z.agent_id)
                    if stamp is None or stamp < y.last_ok_now_ms - c.timeout_ms:
                        raise self.failure(
                            f"attached {y.agent_id} names {z.agent_id} as a leader, silent"
                            f" since t={stamp and self.t(stamp)}, after a heartbeat that"
                            f" started at t={self.t(y.last_ok_now_ms)}"
                        )
            silent_s = self.clock.monotonic_s() - (y.last_ok_s or self.clock.monotonic_s())
            if silent_s > c.timeout_ms / 1000 and not m.detached():
                raise self.failure(f"{y.agent_id} silent past the timeout, not detached")
            if m.detached():
                self.checks["detached checks"] += 1
                others = [a.agent_id for a in m.live if a.agent_id != y.agent_id]
                named = [a.agent_id for a in m.leaders()]
                if others and named != others:
                    raise self.failure(
                        f"detached {y.agent_id} names {named}, not the others it knows {others}"
                    )
        if not settled:
            return
        # 1. Convergence, once one interval passed since the last change. A row's expiry
        # is a change: of a running agent's row, when it expired; of another agent's row
        # (dead, or a late write after a clean leave), when it will.
        running_ids = {n.agent_id for n in running}
        changed = max(
            [self.last_change_ms]
            + [
                a.heartbeat_ms + c.timeout_ms + 1
                for a in self.db.agents.values()
                if a.agent_id not in running_ids or a.heartbeat_ms + c.timeout_ms < now
            ]
        )
        if now < changed + c.heartbeat_ms + c.jitter_ms + 1:
            return
        self.checks["converged checks"] += 1
        expected = sorted(
            ((n.info.node_id, n.agent_id) for n in running), key=lambda p: (p[0], p[1])
        )
        want = [a for _, a in expected]
        for y in running:
            m = y.membership
            if ids(m) != want or [a.agent_id for a in m.leaders()] != want:
                raise self.failure(
                    f"not converged {now - changed} ms after the last change"
                    f" (t={self.t(changed)}): {y.agent_id} lists {ids(m)}, leaders"
                    f" {[a.agent_id for a in m.leaders()]}, running {want}"
                )
        views = {y.agent_id: placements(y.membership) for y in running}
        first = next(iter(views.values()), None)
        for agent_id, view in views.items():
            if view != first:
                raise self.failure(f"placement differs on {agent_id}: {view} vs {first}")

    # The run ------------------------------------------------------------------------
    async def run(self) -> None:
        c, rng = self.config, self.rng
        for i in range(1, 4):
            self.join(f"agent-{i}")
        next_chaos = self.start_ms + rng.randint(0, 2 * c.chaos_every_ms)
        chaos_end = self.start_ms + c.chaos_ms
        end = chaos_end + c.timeout_ms + 6 * c.heartbeat_ms
        settled = False
        while True:
            await self.drain()
            self.check(settled)
            now = self.clock.wall_ms()
            if now >= end:
                break
            upcoming = [end]
            if self.timers:
                upcoming.append(self.timers[0][0])
            if not settled:
                upcoming.append(min(next_chaos, chaos_end))
            at = max(min(upcoming), now)
            self.clock.advance(at - now)
            self.step += 1
            if not settled and at >= chaos_end:
                settled = True
                self.faults = False
                # The network heals: a change (agents' views were stale while it failed).
                self.change("faults stop; calls in flight complete")
                for node in self.current.values():
                    if node.cut_over is not None and not node.cut_over.done():
                        node.cut_over.set_result(None)
                for future in self.fault_waits:
                    if not future.done():
                        future.set_result(None)
            elif not settled and at >= next_chaos:
                await self.chaos()
                next_chaos = at + rng.randint(1, 2 * c.chaos_every_ms)
            while self.timers and self.timers[0][0] <= at:
                _, _, future = heapq.heappop(self.timers)
                if not future.done():
                    future.set_result(None)
        if self.checks["converged checks"] == 0:
            raise self.failure("the run ended before it settled")
        if c.groups:
            self.check_recovered()
        for node in self.current.values():
            for task in (node.task, node.committer):
                if task is not None:
                    task.cancel()
        await self.drain()


def ids(m: Membership) -> list[str]:
    return [a.agent_id for a in m.live]


def owns(m: Membership, group_id: str) -> bool:
    """What the agent's `owns_group` says: placement over its own leaders."""
    coordinator = placement.group_coordinator(group_id, m.leaders())
    return coordinator is not None and coordinator.agent_id == m.me.agent_id


def placements(m: Membership) -> tuple[object, ...]:
    leaders = m.leaders()
    coordinators = [placement.group_coordinator(g, leaders) for g in GROUPS]
    spreads = [
        placement.partition_leaders(key, PARTITIONS, leaders, zone)
        for key in TOPIC_KEYS
        for zone in (None, *ZONES)
    ]
    return (
        [a and a.agent_id for a in coordinators],
        [[a and a.agent_id for a in spread] for spread in spreads],
    )


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def run_seed(seed: int, config: SimConfig | None = None) -> Sim:
    """Run one seed (raises `SimFailure`); the same seed and config replay it exactly."""
    sim = Sim(seed, config or SimConfig())
    with mock.patch.object(membership_module, "within", sim.within):
        asyncio.run(sim.run())
    return sim
