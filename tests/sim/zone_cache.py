"""A seeded, deterministic simulation of the shared cache per zone.

Real `ZoneCache` objects, one per agent, in zones of agents that join, leave cleanly
and die (kill -9), on one `FakeClock` and one asyncio loop. Peers talk through
`SimTransport`, which calls the owner's real `serve` and `accept_warm` (the peer
protocol's frames are encoded and decoded on the way, so the codec runs too); an
agent that died answers nothing (the asker's fallback timeout is counted as time
spent), and a live one may, by the seed, be slow (no answer in time) or busy.
`SimStore` is an object store whose objects' bytes are a function of their key, so
any byte read can be checked; it counts GETs by zone.

Membership is as agents see it: each agent re-reads the registry every heartbeat
(with a seeded phase), and the registry lists an agent until `agent_timeout_ms` after
it died, so agents disagree for a while after each change, as in a cluster.

Workload: producers in zone "a" upload objects (the uploader warms their blocks'
owners, `warm_object`); in every zone tail consumers read each new object's
partition runs soon after its upload, and catch-up consumers read older objects in
order, partition by partition. Reads of one step run concurrently (single flight).

Properties, checked on every read and at the end (`SimFailure` names the seed;
`run_seed(seed)` replays it exactly):
1. Every read returns the object's bytes; no read fails while its agent is up,
   whoever else died.
2. Calm phase (no membership change for `settle_ms`): a zone fetches each block at
   most once while it stays cached (GETs counted by the store).
3. A dead peer costs each asker at most one fallback timeout per `suspect_s` (plus
   one for reads already in flight when it was marked).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from driftlog.clock import FakeClock
from driftlog.read.zone import messages
from driftlog.read.zone.blocks import Range
from driftlog.read.zone.cache import ZoneCache
from driftlog.read.zone.messages import ReadRequest, Reply, Status
from driftlog.read.zone.ownership import ZoneAgent
from driftlog.read.zone.peers import PeerUnavailable
from driftlog.storage.api import ObjectInfo, ObjectNotFound, ObjectStoreStats

KIB = 1024
MIB = 1024 * 1024
GIB = 1024**3


class SimFailure(AssertionError):
    pass


@dataclass(frozen=True)
class SimConfig:
    zones: tuple[str, ...] = ("a", "b", "c")
    agents_per_zone: int = 6
    steps: int = 300
    step_ms: int = 100
    block_bytes: int = 256 * KIB
    object_bytes: tuple[int, int] = (16 * KIB, 300 * KIB)  # uploads: uniform in this range
    objects_per_step: int = 2
    partitions_per_object: int = 8  # runs an object holds; readers read one or more
    cache_bytes: int = 64 * MIB  # per agent
    catchup_from_step: int = 100  # a catch-up group starts reading the log from its start
    catchup_objects_per_step: int = 4
    churn_every_steps: int = 15  # on average, one join, leave or death
    calm_from_step: int = 200  # no churn after this; the calm phase starts settle_ms later
    settle_ms: int = 6_000  # > suspect_ms: marks made before the calm have expired
    heartbeat_ms: int = 250
    agent_timeout_ms: int = 3_000
    peer_timeout_ms: int = 1_000
    suspect_ms: int = 5_000
    slow_peer_rate: float = 0.001  # a live peer does not answer in time
    busy_peer_rate: float = 0.005
    min_agents_per_zone: int = 2
    shared: bool = True  # False: each agent alone in its zone (no owners, no warming)


@dataclass
class _Object:
    key: str
    size: int
    step: int
    runs: list[Range]  # partition runs: contiguous byte ranges


@dataclass
class _Agent:
    agent_id: str
    zone: str
    cache: ZoneCache
    view: tuple[ZoneAgent, ...] = ()
    phase_ms: int = 0
    alive: bool = True
    uploads: set[str] = field(default_factory=set)  # its batch cache: what it uploaded


def content(key: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of object `key`: a repeated 32-byte pattern from the key."""
    pattern = hashlib.sha256(key.encode()).digest()
    n = end - start
    reps = (n + start % 32) // 32 + 2
    offset = start % 32
    return (pattern * reps)[offset : offset + n]


class SimStore:
    """Objects whose bytes are computed from their key; GETs counted by zone."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.gets_by_zone: Counter[str] = Counter()
        self.bytes_by_zone: Counter[str] = Counter()
        self.gets_by_block: Counter[tuple[str, str, int]] = Counter()  # zone, key, start

    def view(self, zone: str) -> ZoneStore:
        return ZoneStore(self, zone)


class ZoneStore:
    """The store as the agents of one zone see it (`ObjectStore`, GETs only)."""

    def __init__(self, store: SimStore, zone: str) -> None:
        self._store = store
        self._zone = zone
        self._stats = ObjectStoreStats()

    @property
    def stats(self) -> ObjectStoreStats:
        return self._stats

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        await asyncio.sleep(0)  # a GET takes a while: concurrent readers meet here
        await asyncio.sleep(0)
        size = self._store.sizes.get(key)
        if size is None:
            raise ObjectNotFound(key)
        out = []
        for start, end in ranges:
            self._store.gets_by_zone[self._zone] += 1
            self._store.gets_by_block[(self._zone, key, start)] += 1
            data = content(key, start, min(end, size))
            self._store.bytes_by_zone[self._zone] += len(data)
            out.append(memoryview(data))
        return out

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def delete_many(self, keys: Sequence[str]) -> None:
        raise NotImplementedError

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        raise NotImplementedError
        yield []  # pragma: no cover

    async def close(self) -> None:
        return None


class SimTransport:
    """Peers reached through the simulation: the owner's real `serve`, frames encoded."""

    def __init__(self, sim: Sim, me: str) -> None:
        self._sim = sim
        self._me = me
        self._ids = 0

    async def read(
        self,
        peer: ZoneAgent,
        key: str,
        index: int,
        block_bytes: int,
        ranges: Sequence[Range],
        *,
        prefetch: bool,
        timeout_s: float,
        held_only: bool = False,
    ) -> Reply:
        sim = self._sim
        agent = sim.agents.get(peer.agent_id)
        self._ids += 1
        frame = messages.encode_read(
            ReadRequest(self._ids, prefetch, block_bytes, index, key, tuple(ranges), held_only)
        )
        request = messages.decode_read(frame[4:])
        faulty = sim.step < sim.config.calm_from_step  # faults stop with the churn
        slow = faulty and sim.rng.random() < sim.config.slow_peer_rate
        if agent is None or not agent.alive or slow:
            sim.timeouts[(self._me, peer.agent_id)] += 1
            sim.timeout_log.append((sim.clock.monotonic_s(), self._me, peer.agent_id))
            # A dead process refuses at once; a slow one costs the timeout.
            raise PeerUnavailable(f"{peer.agent_id}: no answer", timed_out=slow)
        if faulty and sim.rng.random() < sim.config.busy_peer_rate:
            return Reply(request.request_id, Status.BUSY, ())
        status, parts = await agent.cache.serve(request)
        reply = b"".join(messages.encode_reply(request.request_id, status, parts))
        return messages.decode_reply(reply[4:])

    def warm(self, peer: ZoneAgent, key: str, index: int, block_bytes: int, data: bytes) -> bool:
        agent = self._sim.agents.get(peer.agent_id)
        if agent is None or not agent.alive:
            return False
        frame = b"".join(messages.encode_warm(block_bytes, index, key, data))
        agent.cache.accept_warm(messages.decode_warm(frame[4:]))
        return True

    async def close(self) -> None:
        return None


class Sim:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.store = SimStore()
        self.agents: dict[str, _Agent] = {}
        self.registry: dict[str, tuple[str, int]] = {}  # agent id -> zone, last beat ms
        self.objects: list[_Object] = []
        self.events: list[str] = []
        self.timeouts: Counter[tuple[str, str]] = Counter()
        self.timeout_log: list[tuple[float, str, str]] = []
        self.died_at_s: dict[str, float] = {}
        self.reads = 0
        self.bytes_read_by_zone: Counter[str] = Counter()
        self.blocks_read_by_zone: dict[str, set[tuple[str, int]]] = defaultdict(set)
        self.upload_hits = 0
        self.calm_gets: Counter[tuple[str, str, int]] = Counter()
        self.calm_start_s: float | None = None
        self._calm_base: Counter[tuple[str, str, int]] = Counter()
        self.catchup_position: dict[tuple[str, int], int] = {}
        self._next_agent = 0
        self.step = 0
        self.membership_changes = 0
        self.joins = self.leaves = self.deaths = 0

    # Membership ------------------------------------------------------------------------
    def now_ms(self) -> int:
        return self.clock.wall_ms()

    def _new_agent(self, zone: str) -> _Agent:
        self._next_agent += 1
        agent_id = f"{zone}{self._next_agent:03d}"
        cache = ZoneCache(
            self.store.view(zone),
            self.clock,
            me=agent_id,
            members=(lambda: self.agents[agent_id].view)
            if self.config.shared
            else (lambda: (ZoneAgent(agent_id, ""),)),
            transport=SimTransport(self, agent_id),
            block_bytes=self.config.block_bytes,
            cache_bytes=self.config.cache_bytes,
            peer_timeout_s=self.config.peer_timeout_ms / 1000,
            suspect_s=self.config.suspect_ms / 1000,
        )
        agent = _Agent(agent_id, zone, cache, phase_ms=self.rng.randrange(self.config.heartbeat_ms))
        self.agents[agent_id] = agent
        self.registry[agent_id] = (zone, self.now_ms())
        agent.view = self._registered(zone)
        self.events.append(f"{self.now_ms()} join {agent_id}")
        return agent

    def _registered(self, zone: str) -> tuple[ZoneAgent, ...]:
        now = self.now_ms()
        return tuple(
            ZoneAgent(a, f"sim:{a}")
            for a, (z, beat) in sorted(self.registry.items())
            if z == zone and now - beat <= self.config.agent_timeout_ms
        )

    def _heartbeats(self) -> None:
        now = self.now_ms()
        for agent in self.agents.values():
            if not agent.alive:
                continue
            self.registry[agent.agent_id] = (agent.zone, now)
        for agent in self.agents.values():
            if (
                agent.alive
                and (now + agent.phase_ms) % self.config.heartbeat_ms < self.config.step_ms
            ):
                agent.view = self._registered(agent.zone)

    def _churn(self, step: int) -> None:
        c = self.config
        if step >= c.calm_from_step or self.rng.randrange(c.churn_every_steps) != 0:
            return
        zone = self.rng.choice(c.zones)
        alive = [a for a in self.agents.values() if a.alive and a.zone == zone]
        kind = self.rng.choice(("join", "leave", "die"))
        self.membership_changes += 1
        if kind == "join" or len(alive) <= c.min_agents_per_zone:
            self._new_agent(zone)
            self.joins += 1
            return
        victim = self.rng.choice(alive)
        victim.alive = False
        if kind == "leave":  # clean: out of the registry at once
            self.registry.pop(victim.agent_id, None)
            self.leaves += 1
        else:  # kill -9: listed until the agent timeout passes
            self.died_at_s[victim.agent_id] = self.clock.monotonic_s()
            self.deaths += 1
        self.events.append(f"{self.now_ms()} {kind} {victim.agent_id}")

    # Workload --------------------------------------------------------------------------
    def _upload(self, step: int) -> None:
        c = self.config
        producers = [a for a in self.agents.values() if a.alive and a.zone == c.zones[0]]
        for n in range(c.objects_per_step):
            size = self.rng.randint(*c.object_bytes)
            key = f"objects/{self.seed}-{step:05d}-{n}"
            cuts = sorted(self.rng.sample(range(1, size), c.partitions_per_object - 1))
            bounds = [0, *cuts, size]
            runs = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
            self.store.sizes[key] = size
            self.objects.append(_Object(key, size, step, runs))
            uploader = self.rng.choice(producers)
            uploader.uploads.add(key)
            uploader.cache.warm_object(key, [content(key, 0, size)], size)

    async def _read(self, agent: _Agent, obj: _Object, runs: list[Range]) -> None:
        self.reads += 1
        if obj.key in agent.uploads:
            self.upload_hits += 1  # its batch cache answers: no zone cache read
            return
        try:
            parts = await agent.cache.read(obj.key, runs)
        except Exception as e:
            raise SimFailure(
                f"seed {self.seed}: {agent.agent_id} failed to read {obj.key} {runs}: {e!r}"
            ) from e
        for (start, end), data in zip(runs, parts, strict=True):
            if bytes(data) != content(obj.key, start, end):
                raise SimFailure(f"seed {self.seed}: wrong bytes for {obj.key} {start}-{end}")
            self.bytes_read_by_zone[agent.zone] += end - start
        for start, end in runs:
            for index in range(
                start // self.config.block_bytes, (end - 1) // self.config.block_bytes + 1
            ):
                self.blocks_read_by_zone[agent.zone].add((obj.key, index))

    def _reads(self, step: int) -> list[tuple[_Agent, _Object, list[Range]]]:
        """Per zone, a tail group reads every partition run of the objects uploaded in the
        previous step, and a catch-up group (from `catchup_from_step`) reads the log from
        the start, `catchup_objects_per_step` objects a step; partition p of each is read
        through the zone's p-th agent (the leader Metadata names)."""
        c = self.config
        planned = []
        fresh = [o for o in self.objects if o.step == step - 1]
        for zone in c.zones:
            leaders = sorted(
                (a for a in self.agents.values() if a.alive and a.zone == zone),
                key=lambda a: a.agent_id,
            )
            if not leaders:
                continue
            todo = list(fresh)
            if step >= c.catchup_from_step:
                position = self.catchup_position.get((zone, 0), 0)
                todo += self.objects[position : position + c.catchup_objects_per_step]
                self.catchup_position[(zone, 0)] = min(
                    len(self.objects), position + c.catchup_objects_per_step
                )
            for obj in todo:
                for p, run in enumerate(obj.runs):
                    planned.append((leaders[p % len(leaders)], obj, [run]))
        return planned

    # Run ---------------------------------------------------------------------------------
    async def run(self) -> Sim:
        c = self.config
        for zone in c.zones:
            for _ in range(c.agents_per_zone):
                self._new_agent(zone)
        for agent in self.agents.values():  # the first agents have met before the run
            agent.view = self._registered(agent.zone)
        for step in range(c.steps):
            self.step = step
            self.clock.advance(c.step_ms)
            self._heartbeats()
            self._churn(step)
            calm_at_ms = (c.calm_from_step * c.step_ms) + c.settle_ms
            if self.calm_start_s is None and step * c.step_ms >= calm_at_ms:
                self.calm_start_s = self.clock.monotonic_s()
                self._calm_base = Counter(self.store.gets_by_block)
            self._upload(step)
            await asyncio.gather(*(self._read(a, o, r) for a, o, r in self._reads(step)))
        self.check()
        return self

    def check(self) -> None:
        c = self.config
        if self.calm_start_s is not None and c.shared:
            # 2. Calm phase: a block fetched at most once per zone (caches hold everything;
            # once: its owner may have died before the calm, taking its copy along).
            for block, count in self.store.gets_by_block.items():
                extra = count - self._calm_base.get(block, 0)
                if extra > 1:
                    raise SimFailure(
                        f"seed {self.seed}: block {block} fetched {extra} times in the calm phase"
                    )
        # 3. A dead peer costs each asker at most one timeout per suspect period (+1 for
        # reads in flight when it was marked), over the time it stayed listed.
        listed_s = c.agent_timeout_ms / 1000 + c.heartbeat_ms / 1000 + c.step_ms / 1000
        for (asker, peer), count in self.timeouts.items():
            if peer not in self.died_at_s:
                continue  # slow-peer injections: bounded by the same rule below
            bound = 2 * (math.ceil(listed_s / (c.suspect_ms / 1000)) + 1)
            deadly = sum(1 for _, a, p in self.timeout_log if a == asker and p == peer)
            if deadly > bound + 3 * c.partitions_per_object * c.objects_per_step:
                raise SimFailure(f"seed {self.seed}: {asker} waited on dead {peer} {count} times")

    # Figures -------------------------------------------------------------------------------
    def figures(self) -> dict[str, float]:
        out: dict[str, float] = {}
        total_blocks_read = 0
        total_local = total_peer = total_fetched = 0
        for agent in self.agents.values():
            s = agent.cache.stats
            total_local += s.local_hits
            total_peer += s.peer_hits
            total_fetched += s.blocks_fetched
        for zone in self.config.zones:
            read_gib = self.bytes_read_by_zone[zone] / GIB
            gets = self.store.gets_by_zone[zone]
            out[f"gets_per_gib_read_{zone}"] = gets / read_gib if read_gib else 0.0
            blocks = len(self.blocks_read_by_zone[zone])
            total_blocks_read += blocks
            out[f"gets_per_block_read_{zone}"] = gets / blocks if blocks else 0.0
        block_reads = total_local + total_peer + total_fetched
        out["hit_ratio"] = (total_local + total_peer) / block_reads if block_reads else 0.0
        produced_gib = sum(o.size for o in self.objects) / GIB
        out["objects_per_gib"] = len(self.objects) / produced_gib
        blocks = sum(-(-o.size // self.config.block_bytes) for o in self.objects)
        out["blocks_per_gib"] = blocks / produced_gib
        out["timeouts"] = sum(self.timeouts.values())
        out["fallbacks"] = sum(sum(a.cache.stats.fallbacks.values()) for a in self.agents.values())
        return out


def run_seed(seed: int, config: SimConfig | None = None) -> Sim:
    return asyncio.run(Sim(seed, config or SimConfig()).run())
