"""Who Metadata names as leader, and which agent coordinates a group. Pure: no I/O.

Every agent accepts produce and fetch for every partition, so "leader" is only
where we ask a client to send its traffic:

- A client that declares its zone in `client.id` (`driftlog_zone=<zone>`,
  comma-separated with anything else, like WarpStream's `ws_az=`) is told that
  agents of its zone lead every partition, so its bytes never cross zones. If
  its zone has no live agent, all agents are candidates.
- A topic's partitions are spread evenly over the candidates: each agent leads
  floor(P/n) or ceil(P/n) of a topic's P partitions, so with P >= n every
  candidate leads some. Within that bound each partition goes to the candidate
  ranked highest by rendezvous hashing on (topic id, partition) (bounded-load
  rendezvous hashing, Mirrokni et al. 2016). Plain rendezvous hashing was not
  even: 12 partitions over 3 agents left one agent with none for 2.3% of topics,
  3 over 3 for 78%. The choice depends only on the set of candidates (not their
  order) and is stable while membership is; when an agent leaves or joins, its
  partitions move plus a few that the per-agent bound pushes along.
- A consumer group's coordinator is a rendezvous choice over all live agents:
  every agent computes the same answer from the same membership list, and when
  the coordinating agent dies its groups move to the others.

Roles and groups (`--roles`, `--agent-group`). The agents given here are those of the
asking agent's group (`Membership.live`), so a client never learns of another group.
Every agent gives the same answer for the same client, since clients send Metadata to
whichever agent they used last:

- Leaders are chosen as above among the agents with the `produce` role (all agents
  when none has it: an answer beats the role).
- A partition's *fetch agent* for a client is its leader when the leader has the
  `fetch` role and is in the client's zone (all-role agents serve their partitions'
  readers, as before roles existed, from a cache that holds what they just wrote);
  otherwise it is chosen like the leaders (bounded-load rendezvous, keyed apart from
  them) among the `fetch` agents of the client's zone, or of the whole group when its
  zone has none: one agent serves a partition's readers of a zone, which keeps its
  cache hot. Fetch v11+ moves a consumer there with KIP-392's preferred read replica;
  Metadata lists the fetch agents a client may be sent to among the partition's
  replicas (`read_replicas`), as the Java client requires of a preferred read replica.
- The background jobs run on one agent of the whole cluster (all groups): the
  rendezvous choice over the live agents with the `jobs` role (`jobs_agent`).
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Sequence

from driftlog.coordinator.api import AgentInfo

ZONE_KEY = "driftlog_zone="
PRODUCE, FETCH, JOBS, WRITER = "produce", "fetch", "jobs", "writer"


def client_zone(client_id: str | None) -> str | None:
    """The zone a client declared in its client.id, or None."""
    if not client_id:
        return None
    for part in client_id.split(","):
        part = part.strip()
        if part.startswith(ZONE_KEY):
            return part[len(ZONE_KEY) :] or None
    return None


def fetch_zone(client_id: str | None, rack_id: str | None) -> str | None:
    """The zone of a fetching client: its `driftlog_zone=` hint (what Metadata sees too),
    else the rack it sent in Fetch (KIP-392's `client.rack`), else None."""
    return client_zone(client_id) or rack_id or None


def with_role(agents: Sequence[AgentInfo], role: str) -> list[AgentInfo]:
    return [a for a in agents if role in a.roles]


def producers(agents: Sequence[AgentInfo]) -> list[AgentInfo]:
    """The agents that may be named partition leaders: those with the produce role, or
    all of them when none has it."""
    return with_role(agents, PRODUCE) or list(agents)


def _score(key: bytes, agent: AgentInfo) -> bytes:
    return _score_id(key, agent.agent_id)


def _score_id(key: bytes, agent_id: str) -> bytes:
    return hashlib.blake2b(key + b"\x00" + agent_id.encode(), digest_size=8).digest()


def rendezvous(key: bytes, agents: Sequence[AgentInfo]) -> AgentInfo | None:
    """The agent with the highest hash score for `key` (highest random weight)."""
    return max(agents, key=lambda a: _score(key, a), default=None)


def candidates(agents: Sequence[AgentInfo], zone: str | None) -> Sequence[AgentInfo]:
    if zone is not None:
        local = [a for a in agents if a.zone == zone]
        if local:
            return local
    return agents


def partition_leaders(
    topic_key: bytes, partition_count: int, agents: Sequence[AgentInfo], zone: str | None
) -> list[AgentInfo | None]:
    """The leader named for each partition of a topic (None without candidates)."""
    pool = sorted(candidates(agents, zone), key=lambda a: a.agent_id)
    if not pool:
        return [None] * partition_count
    spread = _spread(topic_key, partition_count, tuple(a.agent_id for a in pool))
    return [pool[i] for i in spread]


_FETCH_KEY = b"fetch:"


# Metadata names the leaders of every topic on every request, and they change only
# with membership. An entry costs 2 bytes per partition.
@functools.lru_cache(maxsize=4096)
def _spread(topic_key: bytes, partition_count: int, agent_ids: tuple[str, ...]) -> array[int]:
    """Bounded-load rendezvous: each partition, in order, goes to the first agent of
    its ranking with room; `partition_count % n` agents may lead one more than the
    rest. The leaders as indexes into `agent_ids`."""
    low, extra = divmod(partition_count, len(agent_ids))
    load = [0] * len(agent_ids)
    spread = array("H")
    for p in range(partition_count):
        for i in _ranking(topic_key + p.to_bytes(4, "big"), agent_ids):
            if load[i] == low and extra > 0:
                extra -= 1  # one of the agents that lead one more
            elif load[i] >= low:
                continue
            load[i] += 1
            spread.append(i)
            break
    return spread


def _ranking(key: bytes, agent_ids: Sequence[str]) -> list[int]:
    """Indexes of `agent_ids` by descending score for `key`; ties (8-byte scores) by id."""
    return sorted(
        range(len(agent_ids)),
        key=lambda i: (_score_id(key, agent_ids[i]), agent_ids[i]),
        reverse=True,
    )


def fetch_agents(
    topic_key: bytes,
    agents: Sequence[AgentInfo],
    zone: str | None,
    leaders: Sequence[AgentInfo | None],
) -> list[AgentInfo | None]:
    """The fetch agent of each partition of a topic for a client of `zone` whose leaders
    (for its Metadata's zone) are `leaders`: the leader itself when it has the fetch role
    and is in that zone (all-role agents then serve their own partitions' readers, with
    what they just wrote in their cache), else the bounded-load rendezvous choice among
    the fetch agents of the zone (of the group when the zone has none). None for every
    partition when no agent has the fetch role: whoever is asked serves."""
    pool = sorted(candidates(with_role(agents, FETCH), zone), key=lambda a: a.agent_id)
    if not pool:
        return [None] * len(leaders)
    in_pool = {a.agent_id for a in pool}
    spread: array[int] | None = None
    chosen: list[AgentInfo | None] = []
    for p, leader in enumerate(leaders):
        if leader is not None and leader.agent_id in in_pool:
            chosen.append(leader)
            continue
        if spread is None:
            ids = tuple(a.agent_id for a in pool)
            spread = _spread(_FETCH_KEY + topic_key, len(leaders), ids)
        chosen.append(pool[spread[p]])
    return chosen


# What placement reads of an agent: its id, zone and roles (not its heartbeat time, so a
# cache keyed by it lasts while membership does).
Placed = tuple[tuple[str, str, frozenset[str]], ...]


def placed(agents: Sequence[AgentInfo]) -> Placed:
    return tuple(sorted((a.agent_id, a.zone, a.roles) for a in agents))


# Fetch asks on every request, for every partition of a topic; the answer changes only
# with membership. An entry costs a tuple of agent ids per partition.
@functools.lru_cache(maxsize=1024)
def fetch_agent_ids(
    topic_key: bytes, partition_count: int, agents: Placed, hint: str | None, zone: str | None
) -> tuple[str | None, ...]:
    """`fetch_agents` for a client whose Metadata zone is `hint` and whose fetch zone is
    `zone`, over `placed(agents)`: the chosen agents' ids."""
    pool = [AgentInfo(i, 0, "", 0, z, "", roles=r) for i, z, r in agents]
    leaders = partition_leaders(topic_key, partition_count, producers(pool), hint)
    return tuple(
        None if a is None else a.agent_id for a in fetch_agents(topic_key, pool, zone, leaders)
    )


def read_replicas(
    topic_key: bytes,
    agents: Sequence[AgentInfo],
    zone: str | None,
    leaders: Sequence[AgentInfo | None],
) -> list[tuple[AgentInfo, ...]]:
    """Per partition, the fetch agents Fetch may send a client to, besides its leader:
    for a client with a zone hint, the fetch agent of that zone; for one without, the
    fetch agent of each zone with fetch agents and the one of clients without a zone
    (Fetch also takes the client's rack, which Metadata does not see)."""
    if zone is not None:
        zones: list[str | None] = [zone]
    else:
        zones = [None, *sorted({a.zone for a in with_role(agents, FETCH)})]
    choices = [fetch_agents(topic_key, agents, z, leaders) for z in zones]
    replicas: list[tuple[AgentInfo, ...]] = []
    for p, leader in enumerate(leaders):
        named: dict[str, AgentInfo] = {}
        for choice in choices:
            agent = choice[p]
            if agent is not None and (leader is None or agent.agent_id != leader.agent_id):
                named.setdefault(agent.agent_id, agent)
        replicas.append(tuple(named.values()))
    return replicas


def jobs_agent(agents: Sequence[AgentInfo]) -> AgentInfo | None:
    """The agent that runs the background jobs: the rendezvous choice over the live agents
    of every group with the jobs role (None: there is none)."""
    return rendezvous(b"jobs", with_role(agents, JOBS))


def group_coordinator(group_id: str, agents: Sequence[AgentInfo]) -> AgentInfo | None:
    return rendezvous(b"group:" + group_id.encode(), agents)


def endpoint(agent: AgentInfo, listener: str) -> tuple[str, int] | None:
    """Where clients of `listener` reach `agent` (None: it has no such listener).

    Agents name their listeners in membership; a row without any (an agent from
    before listeners) has only its one address, taken as PLAINTEXT's.
    """
    for name, host, port in agent.listeners:
        if name == listener:
            return host, port
    if not agent.listeners and listener == "PLAINTEXT":
        return agent.host, agent.port
    return None
