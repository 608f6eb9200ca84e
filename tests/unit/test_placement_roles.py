"""Placement with roles (cluster/placement.py): produce agents lead, fetch agents serve a
zone's readers, one jobs agent for the whole cluster. Pure functions, no agents."""

from __future__ import annotations

import random
import uuid
from collections import Counter

from driftlog.cluster.placement import (
    fetch_agent_ids,
    fetch_agents,
    fetch_zone,
    jobs_agent,
    partition_leaders,
    placed,
    producers,
    read_replicas,
)
from driftlog.coordinator.api import ALL_ROLES, AgentInfo

TOPICS = [uuid.UUID(int=i).bytes for i in range(1, 201)]


def agent(node_id: int, zone: str, *roles: str, group: str = "") -> AgentInfo:
    return AgentInfo(
        f"agent-{node_id}", node_id, "127.0.0.1", 9000 + node_id, zone, "",
        roles=frozenset(roles) if roles else ALL_ROLES, group=group,
    )  # fmt: skip


# Two zones: in a, produce 1-2, fetch 3-4; in b, produce 5, fetch 6; 7 runs jobs and writes.
SPLIT = [
    agent(1, "a", "produce"),
    agent(2, "a", "produce"),
    agent(3, "a", "fetch"),
    agent(4, "a", "fetch"),
    agent(5, "b", "produce"),
    agent(6, "b", "fetch"),
    agent(7, "a", "jobs", "writer"),
]


def ids(agents: list[AgentInfo | None]) -> list[int]:
    assert all(a is not None for a in agents)
    return [a.node_id for a in agents if a is not None]


def readers(topic: bytes, count: int, agents: list[AgentInfo], zone: str | None) -> list[int]:
    leaders = partition_leaders(topic, count, producers(agents), zone)
    return ids(fetch_agents(topic, agents, zone, leaders))


def test_only_produce_agents_lead() -> None:
    for topic in TOPICS:
        assert set(ids(partition_leaders(topic, 12, producers(SPLIT), "a"))) == {1, 2}
        assert set(ids(partition_leaders(topic, 12, producers(SPLIT), "b"))) == {5}
        assert set(ids(partition_leaders(topic, 12, producers(SPLIT), None))) == {1, 2, 5}


def test_without_produce_agents_every_agent_may_lead() -> None:
    readers_only = [agent(3, "a", "fetch"), agent(7, "a", "jobs", "writer")]
    assert producers(readers_only) == readers_only


def test_fetch_agents_of_the_clients_zone_share_its_partitions_evenly() -> None:
    for topic in TOPICS:
        for count in (1, 2, 5, 12):
            loads = Counter(readers(topic, count, SPLIT, "a"))
            assert set(loads) <= {3, 4} and sum(loads.values()) == count
            assert abs(loads[3] - loads[4]) <= 1
            assert set(readers(topic, count, SPLIT, "b")) == {6}
        # No fetch agent in zone c: those of the whole group.
        assert set(readers(topic, 12, SPLIT, "c")) == {3, 4, 6}


def test_fetch_agents_are_independent_of_the_order_and_stable() -> None:
    rng = random.Random(5)
    for topic in TOPICS[:50]:
        shuffled = SPLIT[:]
        rng.shuffle(shuffled)
        assert readers(topic, 12, shuffled, "a") == readers(topic, 12, SPLIT, "a")


def test_an_all_role_leader_serves_its_own_readers() -> None:
    """Agents with every role (the default) keep serving fetch where they lead: no
    client is sent anywhere, as before roles existed."""
    everyone = [agent(1, "a"), agent(2, "a"), agent(3, "b")]
    for topic in TOPICS:
        for zone in ("a", "b", None):
            leaders = partition_leaders(topic, 12, everyone, zone)
            assert fetch_agents(topic, everyone, zone, leaders) == leaders
            if zone is not None:  # the hint decides: no replica besides the leader
                assert read_replicas(topic, everyone, zone, leaders) == [()] * 12


def test_a_rack_in_another_zone_than_the_leaders_moves_readers_there() -> None:
    everyone = [agent(1, "a"), agent(2, "a"), agent(3, "b")]
    topic = TOPICS[0]
    leaders = partition_leaders(topic, 6, everyone, None)  # no client.id hint
    chosen = ids(fetch_agents(topic, everyone, "b", leaders))  # client.rack=b in Fetch
    assert chosen == [3] * 6
    # ... and Metadata listed agent 3 among each partition's replicas for that client.
    replicas = read_replicas(topic, everyone, None, leaders)
    assert all(3 in {a.node_id for a in r} or leader.node_id == 3
               for r, leader in zip(replicas, leaders, strict=True) if leader)  # fmt: skip


def test_read_replicas_list_every_fetch_agent_fetch_may_name() -> None:
    for topic in TOPICS:
        leaders = partition_leaders(topic, 12, producers(SPLIT), None)
        listed = read_replicas(topic, SPLIT, None, leaders)
        for zone in (None, "a", "b", "c"):
            for p, reader in enumerate(fetch_agents(topic, SPLIT, zone, leaders)):
                assert reader is not None and reader in listed[p]
        hinted = partition_leaders(topic, 12, producers(SPLIT), "b")
        # A client with a zone hint is only ever sent to its zone's fetch agent.
        assert read_replicas(topic, SPLIT, "b", hinted) == [(SPLIT[5],)] * 12


def test_without_fetch_agents_nobody_is_sent_anywhere() -> None:
    writers = [agent(1, "a", "produce"), agent(2, "a", "jobs", "writer")]
    leaders = partition_leaders(TOPICS[0], 3, producers(writers), None)
    assert fetch_agents(TOPICS[0], writers, "a", leaders) == [None] * 3
    assert read_replicas(TOPICS[0], writers, None, leaders) == [()] * 3


def test_one_jobs_agent_for_the_cluster_whatever_the_order() -> None:
    cluster = [*SPLIT, agent(8, "b", "jobs", group="y"), agent(9, "a", "fetch", group="y")]
    chosen = jobs_agent(cluster)
    assert chosen is not None and chosen.node_id in (7, 8)
    for seed in range(20):
        shuffled = cluster[:]
        random.Random(seed).shuffle(shuffled)
        assert jobs_agent(shuffled) == chosen
    others = [a for a in cluster if a != chosen]
    assert jobs_agent(others) is not None  # the other jobs agent takes over
    assert jobs_agent([a for a in cluster if "jobs" not in a.roles]) is None


def test_the_fetch_zone_is_the_hint_then_the_rack() -> None:
    assert fetch_zone("app,driftlog_zone=a", "b") == "a"
    assert fetch_zone("app", "b") == "b"
    assert fetch_zone("app", "") is None
    assert fetch_zone(None, None) is None


def test_the_cached_answer_fetch_uses_is_fetch_agents() -> None:
    for topic in TOPICS[:50]:
        for hint, zone in ((None, None), ("a", "a"), (None, "b"), ("b", "a")):
            leaders = partition_leaders(topic, 12, producers(SPLIT), hint)
            chosen = fetch_agents(topic, SPLIT, zone, leaders)
            expected = [a.agent_id if a else None for a in chosen]
            assert list(fetch_agent_ids(topic, 12, placed(SPLIT), hint, zone)) == expected
