"""Which agent of the zone owns a block, and which peers to leave alone for a while. Pure.

Ownership is rendezvous hashing (highest random weight) of the block's name over the
zone's live agents: every agent computes the same owner from the same membership,
and when an agent joins or leaves only the blocks it owned (or now owns) move, about
1/n of them. Agents that disagree for a heartbeat or two on who is live only cost
an extra GET of the blocks concerned, never a wrong answer: blocks are immutable.

An agent that asks a peer and gets no answer within the fallback timeout (dead,
partitioned, overloaded) marks it *suspect* for `suspect_s`: its blocks then go to
their next-ranked owner, the same for every agent that noticed, so the zone still
fetches each block once and no fetch waits on that peer again until the mark expires
(membership drops a dead agent after the agent timeout anyway).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from driftlog.read.zone.blocks import BlockId

DEFAULT_SUSPECT_S = 5.0


@dataclass(frozen=True, slots=True)
class ZoneAgent:
    agent_id: str
    rpc_address: str  # "host:port" of its authenticated RPC server ("" for this agent alone)


def _score(block: BlockId, agent_id: str) -> bytes:
    key, index = block
    material = b"%s\x00%d\x00%s" % (key.encode(), index, agent_id.encode())
    return hashlib.blake2b(material, digest_size=8).digest()


def rank(block: BlockId, agents: Sequence[ZoneAgent]) -> list[ZoneAgent]:
    """The agents by descending score for `block` (ties, in 8-byte scores, by id)."""
    return sorted(agents, key=lambda a: (_score(block, a.agent_id), a.agent_id), reverse=True)


class ZoneRing:
    """The zone's agents as this agent sees them; `owner` picks among the unsuspected."""

    def __init__(self, me: str, agents: Iterable[ZoneAgent]) -> None:
        by_id = {a.agent_id: a for a in agents}
        if me not in by_id:
            by_id[me] = ZoneAgent(me, "")
        self.me = me
        self.agents = tuple(sorted(by_id.values(), key=lambda a: a.agent_id))

    def owner(self, block: BlockId, suspects: frozenset[str] = frozenset()) -> ZoneAgent:
        """The highest-scoring agent not suspected (this agent is never suspect)."""
        best: ZoneAgent | None = None
        best_key: tuple[bytes, str] | None = None
        for agent in self.agents:
            if agent.agent_id in suspects and agent.agent_id != self.me:
                continue
            key = (_score(block, agent.agent_id), agent.agent_id)
            if best_key is None or key > best_key:
                best, best_key = agent, key
        assert best is not None  # this agent is always a candidate
        return best

    def is_mine(self, block: BlockId, suspects: frozenset[str] = frozenset()) -> bool:
        return self.owner(block, suspects).agent_id == self.me


class PeerHealth:
    """Peers that failed to answer, each remembered for `suspect_s`. Takes `now_s`."""

    def __init__(self, suspect_s: float = DEFAULT_SUSPECT_S, max_tracked: int = 4096) -> None:
        self.suspect_s = suspect_s
        self.max_tracked = max_tracked
        self._until_s: dict[str, float] = {}
        self._suspects: frozenset[str] = frozenset()
        self._next_expiry_s = float("inf")

    def failed(self, agent_id: str, now_s: float) -> None:
        if len(self._until_s) >= self.max_tracked and agent_id not in self._until_s:
            self.expire(now_s)
            if len(self._until_s) >= self.max_tracked:
                return  # bounded: more peers than that failing at once is not a zone
        until_s = now_s + self.suspect_s
        self._until_s[agent_id] = until_s
        self._suspects = frozenset(self._until_s)
        self._next_expiry_s = min(self._next_expiry_s, until_s)

    def recovered(self, agent_id: str) -> None:
        if self._until_s.pop(agent_id, None) is not None:
            self._suspects = frozenset(self._until_s)

    def expire(self, now_s: float) -> None:
        if now_s < self._next_expiry_s:
            return
        self._until_s = {a: t for a, t in self._until_s.items() if t > now_s}
        self._suspects = frozenset(self._until_s)
        self._next_expiry_s = min(self._until_s.values(), default=float("inf"))

    def suspects(self, now_s: float) -> frozenset[str]:
        self.expire(now_s)
        return self._suspects
