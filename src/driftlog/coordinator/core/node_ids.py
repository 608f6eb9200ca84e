"""Node ids that assign themselves: the rules the backends' `claim_node_id` share. No I/O.

Kafka clients know brokers by node id, so two live agents must never answer with
the same one. Each agent id keeps the node id recorded for it (table `node_ids`);
an agent without `--node-id` gets the smallest id no row holds; an explicit id
is taken from its holder only when that holder is not alive (no heartbeat and no
claim within the liveness timeout), so a restarted cluster can move ids around
but a typo cannot make two brokers answer as one.
"""

from __future__ import annotations

from collections.abc import Iterable

from driftlog.coordinator.api import CoordinatorError


class NodeIdTaken(CoordinatorError):
    """The requested node id belongs to another live agent."""

    def __init__(self, node_id: int, holder_agent_id: str) -> None:
        super().__init__(
            f"node id {node_id} is held by agent {holder_agent_id!r}, which is alive;"
            " choose another --node-id or leave it out to have one assigned"
        )
        self.node_id = node_id
        self.holder_agent_id = holder_agent_id


def smallest_free(held: Iterable[int]) -> int:
    """The smallest non-negative id not in `held`."""
    taken = set(held)
    node_id = 0
    while node_id in taken:
        node_id += 1
    return node_id
