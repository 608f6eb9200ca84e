"""Who Metadata names as leader, and which agent coordinates a group. Pure: no I/O.

Every agent accepts produce and fetch for every partition, so "leader" is only
where we ask a client to send its traffic:

- A client that declares its zone in `client.id` (`driftlog_zone=<zone>`,
  comma-separated with anything else, like WarpStream's `ws_az=`) is told that
  agents of its zone lead every partition, so its bytes never cross zones. If
  its zone has no live agent, all agents are candidates.
- Partitions are spread over the candidates by rendezvous hashing on (topic id,
  partition), so the choice is stable while membership is, and moves only the
  partitions of an agent that left.
- A consumer group's coordinator is a rendezvous choice over all live agents:
  every agent computes the same answer from the same membership list, and when
  the coordinating agent dies its groups move to the others.
"""

from __future__ import annotations

import hashlib
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
    return hashlib.blake2b(key + b"\x00" + agent.agent_id.encode(), digest_size=8).digest()


def rendezvous(key: bytes, agents: Sequence[AgentInfo]) -> AgentInfo | None:
    """The agent with the highest hash score for `key` (highest random weight)."""
    return max(agents, key=lambda a: _score(key, a), default=None)


def candidates(agents: Sequence[AgentInfo], zone: str | None) -> Sequence[AgentInfo]:
    if zone is not None:
        local = [a for a in agents if a.zone == zone]
        if local:
            return local
    return agents


def partition_leader(
    topic_key: bytes, partition: int, agents: Sequence[AgentInfo], zone: str | None
) -> AgentInfo | None:
    return rendezvous(topic_key + partition.to_bytes(4, "big"), candidates(agents, zone))


def group_coordinator(group_id: str, agents: Sequence[AgentInfo]) -> AgentInfo | None:
    return rendezvous(b"group:" + group_id.encode(), agents)
