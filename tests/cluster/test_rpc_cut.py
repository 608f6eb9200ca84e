"""The writer RPC cut between agents (issue 16): the packets vanish, nothing is closed.

Three agents share PostgreSQL directly; each serves its writer RPC behind its own
`TcpGate` (tests/tcp_gate.py) and publishes the gate's address (`--rpc-advertise`), so
every connection another agent makes to it crosses the gate. The writer's gate goes
silent for three leases while an idempotent acks=all producer runs through every
agent: both other agents lose the writer (their commits, its stream) while all three
still reach the database, and the writer keeps renewing its lease. Each of them steps
aside once the writer has been silent for the agent timeout (it withdraws from the
membership and answers NOT_LEADER_OR_FOLLOWER naming the writer), and rejoins once it
hears the writer again.

Then, as for a database cut (tests/cluster/test_database_cut.py, whose helpers this
uses): every acknowledged record is read back exactly once at its offset, offsets
dense, and the longest gap between two acknowledgements of a partition stays under
lease + agent timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster.test_database_cut import (
    CLIENTS,
    TIMING_ARGS,
    lease_row,
    silence_under_load,
    writer_index,
)
from conftest import Cluster
from services import free_port
from tcp_gate import TcpGate


@pytest.fixture
def rpc_gated(cluster: Cluster) -> Iterator[tuple[Cluster, list[TcpGate]]]:
    """Three agents (zone a) whose writer RPC is reached through a gate each."""
    cluster.timing_args = TIMING_ARGS
    gates: list[TcpGate] = []
    try:
        for _ in range(3):
            rpc_port = free_port()
            gate = TcpGate("127.0.0.1", rpc_port)
            gates.append(gate)
            cluster.add(
                "a", "--rpc-port", str(rpc_port), "--rpc-advertise", f"127.0.0.1:{gate.port}"
            )
        cluster.wait_for_members()
        yield cluster, gates
    finally:
        for gate in gates:
            gate.heal()  # so the agents drain and stop cleanly
        cluster.stop()
        for gate in gates:
            gate.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", CLIENTS)
def test_cut_the_writer_rpc_off_from_the_other_agents(
    rpc_gated: tuple[Cluster, list[TcpGate]], client: str
) -> None:
    cluster, gates = rpc_gated
    writer = writer_index(cluster)
    silence_under_load(
        cluster,
        gates[writer],
        what=f"RPC cut of the writer agent-{writer + 1} from the others",
        topic="cut-rpc",
        reader=(writer + 1) % len(cluster.agents),
        client=client,
    )
    # The mechanism, not luck: both others stepped aside, came back, and the writer
    # kept its lease all along.
    logs = {i: a.log_text() for i, a in enumerate(cluster.agents)}
    stepped_aside = sorted(i for i, text in logs.items() if "stepping aside" in text)
    rejoined = sorted(i for i, text in logs.items() if "writer is heard again" in text)
    others = sorted(i for i in range(len(cluster.agents)) if i != writer)
    assert stepped_aside == others, f"stepped aside: {stepped_aside}, expected {others}"
    assert rejoined == others, f"rejoined: {rejoined}, expected {others}"
    assert lease_row(cluster.dsn)[0] == f"agent-{writer + 1}"
