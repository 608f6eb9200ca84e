"""Group API handlers at every advertised version, against a fake agent.

Every request is built for its version and every response is encoded and
decoded with kio, so a field the version lacks or a null it forbids fails here.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import pytest
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

from driftlog.coordinator.api import (
    AgentInfo,
    CommittedOffset,
    CoordinatorUnavailable,
    GroupClaim,
    GroupFenced,
    TopicInfo,
)
from driftlog.groups.coordinator import GroupCoordinator
from driftlog.protocol.schema import build, request_module
from driftlog.security.listeners import parse_listeners
from driftlog.server.context import RequestContext
from driftlog.server.group_handlers import GROUP_API_VERSIONS, GROUP_HANDLERS
from driftlog.server.session import Session

TOPIC = TopicInfo(name="orders", topic_id=uuid.UUID(int=7), partition_count=2)
SESSION = datetime.timedelta(seconds=10)
REBALANCE = datetime.timedelta(seconds=30)


class FakeOffsets:
    """The slice of the batch coordinator the group handlers use, in memory."""

    def __init__(self) -> None:
        self.offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        self.claims: dict[str, tuple[str, int]] = {}  # group id -> (agent id, epoch)
        self.claims_taken = 0

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        self.claims_taken += 1
        previous, epoch = self.claims.get(group_id, ("", 0))
        self.claims[group_id] = (agent_id, epoch + 1)
        return GroupClaim(group_id, agent_id, epoch + 1, "" if previous == agent_id else previous)

    def _check(self, group_id: str, claim: GroupClaim) -> None:
        if not claim.admits(self.claims.get(group_id)):
            raise GroupFenced(claim, self.claims.get(group_id))

    def topic(self, name: str) -> TopicInfo | None:
        return TOPIC if name == TOPIC.name else None

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return TOPIC if topic_id == TOPIC.topic_id else None

    async def commit_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        if claim is not None:
            self._check(group_id, claim)
        stored = self.offsets.setdefault(group_id, {})
        for o in offsets:
            stored[(o.topic, o.partition)] = o

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        stored = self.offsets.get(group_id, {})
        if partitions is None:
            return list(stored.values())
        return [stored[p] for p in partitions if p in stored]

    async def delete_group_offsets(self, group_id: str, claim: GroupClaim) -> None:
        self._check(group_id, claim)
        self.offsets.pop(group_id, None)

    async def groups_with_offsets(self) -> list[str]:
        return sorted(self.offsets)


class FakeAgent:
    def __init__(self) -> None:
        counter = itertools.count(1)
        self.groups = GroupCoordinator(
            lambda: 0,
            member_id_suffix=lambda: str(next(counter)),
            owns=lambda group_id: self.owns_group(group_id),
        )
        self.coordinator = FakeOffsets()
        self.node_id = 7
        self.advertised_host = "broker.test"
        self.advertised_port = 19092
        self.me = AgentInfo("agent-7", 7, "broker.test", 19092, "", "")
        self.membership = self  # handlers read membership.me
        self.client_errors: list[str] = []

    def log_client_error(self, peer: str, api_key: int, message: str) -> None:
        self.client_errors.append(message)

    def group_coordinator(self, group_id: str) -> AgentInfo:
        return self.me

    foreign_groups: frozenset[str] = frozenset()

    def owns_group(self, group_id: str) -> bool:
        return group_id not in self.foreign_groups


[PLAINTEXT_LISTENER] = parse_listeners("PLAINTEXT://127.0.0.1:9092")


def roundtrip(entity: Any) -> Any:
    buffer = io.BytesIO()
    entity_writer(type(entity))(buffer, entity)
    data = buffer.getvalue()
    decoded, size = entity_reader(type(entity))(data, 0)
    assert size == len(data)
    return decoded


async def call(agent: FakeAgent, api_key: int, version: int, **fields: Any) -> Any:
    low, high = GROUP_API_VERSIONS[api_key]
    assert low <= version <= high
    module = request_module(api_key, version)
    request_cls = next(
        getattr(module, name)
        for name in dir(module)
        if name.endswith("Request") and getattr(getattr(module, name), "__api_key__", None)
    )
    request = roundtrip(build(request_cls, **fields))
    ctx = RequestContext(
        services=cast(Any, agent),
        session=Session.open(PLAINTEXT_LISTENER, "127.0.0.1:50000"),
        api_key=api_key,
        api_version=version,
        correlation_id=1,
        client_id="client-1",
    )
    return roundtrip(await GROUP_HANDLERS[api_key](ctx, request))


def nested(api_key: int, version: int, class_name: str, /, **fields: Any) -> Any:
    return build(getattr(request_module(api_key, version), class_name), **fields)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


def versions(api_key: int) -> list[int]:
    low, high = GROUP_API_VERSIONS[api_key]
    return list(range(low, high + 1))


def test_every_group_api_has_a_handler() -> None:
    assert set(GROUP_HANDLERS) == set(GROUP_API_VERSIONS)


@pytest.mark.parametrize("version", versions(10))
def test_find_coordinator_points_at_this_agent(version: int) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        if version >= 4:
            response = await call(agent, 10, version, key_type=0, coordinator_keys=("a", "b"))
            assert [(c.key, c.node_id, c.host, c.port) for c in response.coordinators] == [
                ("a", 7, "broker.test", 19092),
                ("b", 7, "broker.test", 19092),
            ]
            assert all(c.error_code is ErrorCode.none for c in response.coordinators)
        else:
            response = await call(agent, 10, version, key="a")
            assert (response.error_code, response.node_id, response.host, response.port) == (
                ErrorCode.none,
                7,
                "broker.test",
                19092,
            )

    run(scenario)


@pytest.mark.parametrize("version", versions(11))
def test_join_sync_heartbeat_describe_leave(version: int) -> None:
    sync_version = min(version, 5)
    heartbeat_version = min(version, 4)
    leave_version = min(version, 5)
    describe_version = min(version, 6)

    async def scenario() -> None:
        agent = FakeAgent()
        protocol = nested(11, version, "JoinGroupRequestProtocol", name="range", metadata=b"sub")
        join_fields: dict[str, Any] = {
            "group_id": "g",
            "session_timeout": SESSION,
            "rebalance_timeout": REBALANCE,
            "member_id": "",
            "protocol_type": "consumer",
            "protocols": (protocol,),
        }
        joined = await call(agent, 11, version, **join_fields)
        if version >= 4:
            # KIP-394: the first join only hands out a member id.
            assert joined.error_code is ErrorCode.member_id_required
            assert joined.member_id == "client-1-1"
            joined = await call(agent, 11, version, **(join_fields | {"member_id": "client-1-1"}))
        member_id = joined.member_id
        assert joined.error_code is ErrorCode.none
        assert (joined.generation_id, joined.leader, joined.protocol_name) == (
            1,
            member_id,
            "range",
        )
        assert [(m.member_id, m.metadata) for m in joined.members] == [(member_id, b"sub")]
        if version >= 7:
            assert joined.protocol_type == "consumer"

        assignment = nested(
            14, sync_version, "SyncGroupRequestAssignment", member_id=member_id, assignment=b"a"
        )
        synced = await call(
            agent,
            14,
            sync_version,
            group_id="g",
            generation_id=1,
            member_id=member_id,
            protocol_type="consumer",
            protocol_name="range",
            assignments=(assignment,),
        )
        assert (synced.error_code, synced.assignment) == (ErrorCode.none, b"a")
        if sync_version >= 5:
            assert (synced.protocol_type, synced.protocol_name) == ("consumer", "range")

        beat = await call(
            agent, 12, heartbeat_version, group_id="g", generation_id=1, member_id=member_id
        )
        assert beat.error_code is ErrorCode.none
        stale = await call(
            agent, 12, heartbeat_version, group_id="g", generation_id=0, member_id=member_id
        )
        assert stale.error_code is ErrorCode.illegal_generation

        described = await call(
            agent, 15, describe_version, groups=("g",), include_authorized_operations=True
        )
        [group] = described.groups
        assert (group.error_code, group.group_state, group.protocol_type) == (
            ErrorCode.none,
            "Stable",
            "consumer",
        )
        assert group.protocol_data == "range"
        [member] = group.members
        assert (member.member_id, member.client_id, member.client_host) == (
            member_id,
            "client-1",
            "/127.0.0.1",
        )
        assert (member.member_metadata, member.member_assignment) == (b"sub", b"a")

        if leave_version >= 3:
            identity = nested(13, leave_version, "MemberIdentity", member_id=member_id)
            left = await call(agent, 13, leave_version, group_id="g", members=(identity,))
            assert [(m.member_id, m.error_code) for m in left.members] == [
                (member_id, ErrorCode.none)
            ]
        else:
            left = await call(agent, 13, leave_version, group_id="g", member_id=member_id)
        assert left.error_code is ErrorCode.none
        again = await call(agent, 13, 0, group_id="g", member_id=member_id)
        assert again.error_code is ErrorCode.unknown_member_id

    run(scenario)


@pytest.mark.parametrize("version", versions(8))
def test_offset_commit_then_fetch(version: int) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        by_id = version >= 10
        topic_key: dict[str, Any] = {"topic_id": TOPIC.topic_id} if by_id else {"name": TOPIC.name}
        unknown_key: dict[str, Any] = (
            {"topic_id": uuid.UUID(int=99)} if by_id else {"name": "missing"}
        )

        def partition(index: int, offset: int, metadata: str | None) -> Any:
            return nested(
                8,
                version,
                "OffsetCommitRequestPartition",
                partition_index=index,
                committed_offset=offset,
                committed_leader_epoch=3,
                committed_metadata=metadata,
            )

        topics = (
            nested(
                8,
                version,
                "OffsetCommitRequestTopic",
                **topic_key,
                partitions=(partition(0, 42, "note"), partition(1, 7, None), partition(5, 1, "")),
            ),
            nested(
                8,
                version,
                "OffsetCommitRequestTopic",
                **unknown_key,
                partitions=(partition(0, 1, ""),),
            ),
        )
        committed = await call(
            agent,
            8,
            version,
            group_id="simple",
            generation_id_or_member_epoch=-1,
            member_id="",
            topics=topics,
        )
        errors = [[p.error_code for p in t.partitions] for t in committed.topics]
        assert errors == [
            [ErrorCode.none, ErrorCode.none, ErrorCode.unknown_topic_or_partition],
            [ErrorCode.unknown_topic_id if by_id else ErrorCode.unknown_topic_or_partition],
        ]
        stored = agent.coordinator.offsets["simple"]
        assert stored[(TOPIC.name, 0)].metadata == "note"
        assert stored[(TOPIC.name, 1)].metadata == ""
        assert stored[(TOPIC.name, 0)].leader_epoch == (3 if version >= 6 else -1)

        for fetch_version in versions(9):
            await check_fetch(agent, fetch_version)

    run(scenario)


async def check_fetch(agent: FakeAgent, version: int) -> None:
    by_id = version >= 10
    batched = version >= 8
    topic_key: dict[str, Any] = {"topic_id": TOPIC.topic_id} if by_id else {"name": TOPIC.name}
    topic_cls = "OffsetFetchRequestTopics" if batched else "OffsetFetchRequestTopic"
    wanted = (nested(9, version, topic_cls, **topic_key, partition_indexes=(0, 1)),)

    async def fetch(topics: tuple[Any, ...] | None) -> list[Any]:
        if batched:
            group = nested(9, version, "OffsetFetchRequestGroup", group_id="simple", topics=topics)
            response = await call(agent, 9, version, groups=(group,))
            [group_response] = response.groups
            assert group_response.error_code is ErrorCode.none
            return list(group_response.topics)
        response = await call(agent, 9, version, group_id="simple", topics=topics)
        if version >= 2:
            assert response.error_code is ErrorCode.none
        return list(response.topics)

    [topic] = await fetch(wanted)
    assert (topic.topic_id if by_id else topic.name) == (TOPIC.topic_id if by_id else TOPIC.name)
    got = [
        (p.partition_index, p.committed_offset, p.metadata, p.error_code) for p in topic.partitions
    ]
    assert got == [(0, 42, "note", ErrorCode.none), (1, 7, "", ErrorCode.none)]
    if version >= 5:
        assert topic.partitions[0].committed_leader_epoch in (3, -1)
    if version >= 2:
        [everything] = await fetch(None)
        assert [p.partition_index for p in everything.partitions] == [0, 1]
    if by_id:
        unknown = nested(9, version, topic_cls, topic_id=uuid.UUID(int=99), partition_indexes=(0,))
        [missing] = await fetch((unknown,))
        assert missing.partitions[0].error_code is ErrorCode.unknown_topic_id
    else:
        never = nested(9, version, topic_cls, name=TOPIC.name, partition_indexes=(0,))
        group = "nobody"
        if batched:
            request_group = nested(
                9, version, "OffsetFetchRequestGroup", group_id=group, topics=(never,)
            )
            response = await call(agent, 9, version, groups=(request_group,))
            partitions = response.groups[0].topics[0].partitions
        else:
            response = await call(agent, 9, version, group_id=group, topics=(never,))
            partitions = response.topics[0].partitions
        assert (partitions[0].committed_offset, partitions[0].metadata) == (-1, "")


@pytest.mark.parametrize("version", [8, 9])
def test_offset_commit_checks_generation(version: int) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        partition = nested(
            8,
            version,
            "OffsetCommitRequestPartition",
            partition_index=0,
            committed_offset=1,
            committed_metadata=None,
        )
        topic = nested(
            8, version, "OffsetCommitRequestTopic", name=TOPIC.name, partitions=(partition,)
        )
        response = await call(
            agent,
            8,
            version,
            group_id="g",
            generation_id_or_member_epoch=4,
            member_id="m",
            topics=(topic,),
        )
        # No such group: before v9 that is an illegal generation, from v9 a missing group.
        expected = ErrorCode.group_id_not_found if version >= 9 else ErrorCode.illegal_generation
        assert response.topics[0].partitions[0].error_code is expected
        assert agent.coordinator.offsets == {}

    run(scenario)


@pytest.mark.parametrize("version", versions(16))
def test_list_groups_has_live_and_offsets_only_groups(version: int) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        protocol = nested(11, 5, "JoinGroupRequestProtocol", name="range", metadata=b"")
        await call(
            agent,
            11,
            5,
            group_id="live",
            session_timeout=SESSION,
            rebalance_timeout=REBALANCE,
            member_id="",
            group_instance_id="i",
            protocol_type="consumer",
            protocols=(protocol,),
        )
        agent.coordinator.offsets["archived"] = {}
        response = await call(agent, 16, version)
        assert response.error_code is ErrorCode.none
        listed = {g.group_id: g for g in response.groups}
        assert set(listed) == {"live", "archived"}
        assert listed["live"].protocol_type == "consumer"
        if version >= 4:
            assert listed["live"].group_state == "CompletingRebalance"
            assert listed["archived"].group_state == "Empty"
            empty_only = await call(agent, 16, version, states_filter=("empty",))
            assert [g.group_id for g in empty_only.groups] == ["archived"]
        if version >= 5:
            assert listed["live"].group_type == "classic"
            consumer_type = await call(agent, 16, version, types_filter=("consumer",))
            assert consumer_type.groups == ()

    run(scenario)


@pytest.mark.parametrize("version", versions(15))
def test_describe_unknown_and_offsets_only_groups(version: int) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        agent.coordinator.offsets["archived"] = {}
        response = await call(agent, 15, version, groups=("archived", "nope"))
        archived, nope = response.groups
        assert (archived.error_code, archived.group_state) == (ErrorCode.none, "Empty")
        assert nope.group_state == "Dead"
        if version >= 6:
            assert nope.error_code is ErrorCode.group_id_not_found
        else:
            assert nope.error_code is ErrorCode.none

    run(scenario)


@pytest.mark.parametrize("version", versions(42))
def test_delete_groups(version: int) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        protocol = nested(11, 3, "JoinGroupRequestProtocol", name="range", metadata=b"")
        await call(
            agent,
            11,
            3,
            group_id="busy",
            session_timeout=SESSION,
            rebalance_timeout=REBALANCE,
            member_id="",
            protocol_type="consumer",
            protocols=(protocol,),
        )
        agent.coordinator.offsets["archived"] = {}
        response = await call(agent, 42, version, groups_names=("busy", "archived", "nope"))
        assert [(r.group_id, r.error_code) for r in response.results] == [
            ("busy", ErrorCode.non_empty_group),
            ("archived", ErrorCode.none),
            ("nope", ErrorCode.group_id_not_found),
        ]
        assert await agent.coordinator.groups_with_offsets() == []

    run(scenario)


def test_delete_groups_of_another_agent_is_not_coordinator() -> None:
    """Only the coordinating agent knows whether a group is live: others never delete."""

    async def scenario() -> None:
        agent = FakeAgent()
        agent.foreign_groups = frozenset({"elsewhere"})
        committed = CommittedOffset("t", 0, 5, -1, "")
        await agent.coordinator.commit_offsets("elsewhere", [committed], None)
        response = await call(agent, 42, 2, groups_names=("elsewhere",))
        assert [(r.group_id, r.error_code) for r in response.results] == [
            ("elsewhere", ErrorCode.not_coordinator)
        ]
        assert await agent.coordinator.groups_with_offsets() == ["elsewhere"]

    run(scenario)


# Group claims (Kafka's coordinator epoch) -----------------------------------------


async def join_and_sync(agent: FakeAgent, group_id: str = "g") -> tuple[str, int]:
    """A lone consumer joins (v3: no member id round trip) and syncs; (member id, generation)."""
    protocol = nested(11, 3, "JoinGroupRequestProtocol", name="range", metadata=b"")
    joined = await call(
        agent, 11, 3, group_id=group_id, session_timeout=SESSION, rebalance_timeout=REBALANCE,
        member_id="", protocol_type="consumer", protocols=(protocol,),
    )  # fmt: skip
    assert joined.error_code is ErrorCode.none
    synced = await call(
        agent, 14, 3, group_id=group_id, generation_id=joined.generation_id,
        member_id=joined.member_id, assignments=(),
    )  # fmt: skip
    assert synced.error_code is ErrorCode.none
    return joined.member_id, joined.generation_id


async def commit(
    agent: FakeAgent, member_id: str, generation: int, value: int, group_id: str = "g"
) -> list[ErrorCode]:
    partitions = tuple(
        nested(8, 8, "OffsetCommitRequestPartition", partition_index=p, committed_offset=value,
               committed_leader_epoch=-1, committed_metadata="")
        for p in range(TOPIC.partition_count)
    )  # fmt: skip
    topic = nested(8, 8, "OffsetCommitRequestTopic", name=TOPIC.name, partitions=partitions)
    response = await call(
        agent, 8, 8, group_id=group_id, generation_id_or_member_epoch=generation,
        member_id=member_id, group_instance_id=None, topics=(topic,),
    )  # fmt: skip
    return [p.error_code for p in response.topics[0].partitions]


async def heartbeat(agent: FakeAgent, member_id: str, generation: int) -> ErrorCode:
    response = await call(agent, 12, 3, group_id="g", generation_id=generation,
                          member_id=member_id)  # fmt: skip
    error: ErrorCode = response.error_code
    return error


def stored_offsets(agent: FakeAgent, group_id: str = "g") -> dict[int, int]:
    return {p: o.offset for (_, p), o in agent.coordinator.offsets.get(group_id, {}).items()}


def test_a_group_is_claimed_once_and_its_commits_carry_the_claim() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        member_id, generation = await join_and_sync(agent)
        assert await heartbeat(agent, member_id, generation) is ErrorCode.none
        assert await commit(agent, member_id, generation, 5) == [ErrorCode.none] * 2
        assert await commit(agent, member_id, generation, 6) == [ErrorCode.none] * 2
        # One database round trip for the claim, whatever the group's traffic after it.
        assert agent.coordinator.claims_taken == 1
        assert agent.coordinator.claims == {"g": ("agent-7", 1)}
        assert agent.groups.claim("g") == GroupClaim("g", "agent-7", 1)
        assert stored_offsets(agent) == {0: 6, 1: 6}

    run(scenario)


def test_a_fenced_commit_answers_not_coordinator_writes_nothing_and_drops_the_group() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        member_id, generation = await join_and_sync(agent)
        assert await commit(agent, member_id, generation, 5) == [ErrorCode.none] * 2
        # Another agent took the claim (its membership list names it the coordinator).
        agent.coordinator.claims["g"] = ("agent-9", 2)
        assert await commit(agent, member_id, generation, 9) == [ErrorCode.not_coordinator] * 2
        assert stored_offsets(agent) == {0: 5, 1: 5}
        assert agent.groups.claim("g") is None
        assert agent.groups.describe("g") is None  # the group's state went with the claim

        # The client looks the coordinator up again; back here, its next request takes the
        # claim back (the other agent is fenced now) and the member rejoins.
        assert await heartbeat(agent, member_id, generation) is ErrorCode.unknown_member_id
        assert agent.coordinator.claims == {"g": ("agent-7", 3)}
        member_id, generation = await join_and_sync(agent)
        assert await commit(agent, member_id, generation, 9) == [ErrorCode.none] * 2
        assert stored_offsets(agent) == {0: 9, 1: 9}

    run(scenario)


def test_a_fenced_member_parked_in_join_is_answered_not_coordinator() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        member_id, generation = await join_and_sync(agent)
        # A second member joins: the group rebalances, and the second member waits for
        # the first to rejoin.
        protocol = nested(11, 3, "JoinGroupRequestProtocol", name="range", metadata=b"")
        parked = asyncio.create_task(
            call(agent, 11, 3, group_id="g", session_timeout=SESSION,
                 rebalance_timeout=REBALANCE, member_id="", protocol_type="consumer",
                 protocols=(protocol,))
        )  # fmt: skip
        await asyncio.sleep(0.01)
        assert not parked.done()
        agent.coordinator.claims["g"] = ("agent-9", 2)
        assert await commit(agent, member_id, generation, 1) == [ErrorCode.not_coordinator] * 2
        assert (await parked).error_code is ErrorCode.not_coordinator

    run(scenario)


def test_a_fenced_delete_groups_answers_not_coordinator_and_keeps_the_offsets() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        assert await commit(agent, "", -1, 5, group_id="old") == [ErrorCode.none] * 2
        agent.coordinator.claims["old"] = ("agent-9", 2)
        response = await call(agent, 42, 2, groups_names=("old",))
        assert [r.error_code for r in response.results] == [ErrorCode.not_coordinator]
        assert stored_offsets(agent, "old") == {0: 5, 1: 5}
        # Asked again, this agent claims it anew and deletes.
        response = await call(agent, 42, 2, groups_names=("old",))
        assert [r.error_code for r in response.results] == [ErrorCode.none]
        assert stored_offsets(agent, "old") == {}

    run(scenario)


def test_a_group_released_to_another_agent_is_claimed_again_when_it_comes_back() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        member_id, generation = await join_and_sync(agent)
        agent.foreign_groups = frozenset({"g"})
        agent.groups.release_foreign_groups()
        assert agent.groups.claim("g") is None
        assert await commit(agent, member_id, generation, 1) == [ErrorCode.not_coordinator] * 2
        assert agent.coordinator.claims_taken == 1  # no claim for a group it does not own
        agent.foreign_groups = frozenset()
        member_id, generation = await join_and_sync(agent)
        assert agent.coordinator.claims == {"g": ("agent-7", 2)}
        assert await commit(agent, member_id, generation, 2) == [ErrorCode.none] * 2

    run(scenario)


def test_a_claim_the_database_refuses_is_coordinator_not_available() -> None:
    async def scenario() -> None:
        agent = FakeAgent()

        async def unreachable(group_id: str, agent_id: str) -> GroupClaim:
            raise CoordinatorUnavailable("postgresql: connection refused")

        agent.coordinator.claim_group = unreachable  # type: ignore[method-assign]
        protocol = nested(11, 3, "JoinGroupRequestProtocol", name="range", metadata=b"")
        joined = await call(
            agent, 11, 3, group_id="g", session_timeout=SESSION, rebalance_timeout=REBALANCE,
            member_id="", protocol_type="consumer", protocols=(protocol,),
        )  # fmt: skip
        assert joined.error_code is ErrorCode.coordinator_not_available
        assert await commit(agent, "", -1, 1) == [ErrorCode.coordinator_not_available] * 2
        assert agent.groups.claim("g") is None and agent.coordinator.offsets == {}
        assert agent.client_errors and "group claim failed" in agent.client_errors[0]

    run(scenario)
