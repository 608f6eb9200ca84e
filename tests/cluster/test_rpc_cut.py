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

import time
from collections.abc import Iterator

import pytest
from cluster.test_database_cut import (
    AGENT_TIMEOUT_MS,
    CLIENTS,
    CUT_S,
    LEASE_MS,
    RATE,
    STALL_BOUND_S,
    TIMING_ARGS,
    PacedLoad,
    create_topic,
    format_stalls,
    lease_row,
    read_back,
    timeline,
    verify,
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
    reader = (writer + 1) % len(cluster.agents)
    _, epoch_before = lease_row(cluster.dsn)
    topic = "cut-rpc"
    create_topic(cluster.agents[reader].bootstrap, topic)
    load = PacedLoad(cluster.bootstrap, topic, metadata_refresh_ms=CLIENTS[client]).start()
    load.wait_acked(2 * RATE)
    time.sleep(1)

    cut_at, cut_wall = time.monotonic(), time.time()
    gates[writer].silence()
    time.sleep(CUT_S)
    gates[writer].heal()
    healed_at = time.monotonic()
    time.sleep(4)  # keep producing after the cut: the others rejoin
    undelivered = load.stop()

    holder_after, epoch_after = lease_row(cluster.dsn)
    stalls = load.stalls()
    worst = max(stalls.values())
    windows = load.stall_windows()
    gaps = ", ".join(
        f"p{p} {a - cut_at:+.2f}..{b - cut_at:+.2f}s" for p, (a, b) in sorted(windows.items())
    )
    logs = {i: a.log_text() for i, a in enumerate(cluster.agents)}
    stepped_aside = sorted(i + 1 for i, text in logs.items() if "stepping aside" in text)
    rejoined = sorted(i + 1 for i, text in logs.items() if "writer is heard again" in text)
    tracebacks = sum(text.count("Traceback") for text in logs.values())
    report = (
        f"RPC cut of the writer agent-{writer + 1} from the others for {CUT_S:.0f} s "
        f"(lease {LEASE_MS} ms, agent timeout {AGENT_TIMEOUT_MS} ms, {RATE} records/s, "
        f"client {client}):\n"
        f"  writer before agent-{writer + 1} (epoch {epoch_before}), after {holder_after} "
        f"(epoch {epoch_after}); stepped aside: agents {stepped_aside}, rejoined: {rejoined}\n"
        f"  longest gap between acks per partition: {format_stalls(stalls)}; max {worst:.2f} s "
        f"(bound {STALL_BOUND_S:.1f} s)\n"
        f"  longest gaps, in seconds from the cut: {gaps}\n"
        f"  acks/s during the cut {load.throughput(cut_at, healed_at):.0f}, after "
        f"{load.throughput(healed_at, load.stopped_at):.0f}; {len(load.acked)} acked of "
        f"{load.sent}, {undelivered} undelivered; {tracebacks} tracebacks in the logs\n"
        f"--- agents' log, seconds from the cut ---\n{timeline(cluster.agents, cut_wall)}"
    )
    print(report)
    assert undelivered == 0, f"records still undelivered after 120 s\n{report}"
    verdict = verify(load, read_back(cluster.agents[reader].bootstrap, topic, load))
    assert verdict.ok, "\n".join(verdict.problems[:20]) + "\n" + report
    assert worst < STALL_BOUND_S, f"a partition stalled {worst:.2f} s\n{report}"
    # The mechanism, not luck: both others stepped aside and came back.
    others = sorted(i + 1 for i in range(len(cluster.agents)) if i != writer)
    assert stepped_aside == others and rejoined == others, report
    assert holder_after == f"agent-{writer + 1}", "the writer kept its lease all along"
