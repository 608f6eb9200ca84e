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
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Sequence

from driftlog.coordinator.api import AgentInfo

ZONE_KEY = "driftlog_zone="


def client_zone(client_id: str | None) -> str | None:
    """The zone a client declared in its client.id, or None."""
    if not client_id:
        return None
    for part in client_id.split(","):
        part = part.strip()
        if part.startswith(ZONE_KEY):
            return part[len(ZONE_KEY) :] or None
    return None


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
