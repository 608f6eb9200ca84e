"""What the coordinator store keeps for security, node ids and listeners, on every backend.

SCRAM credentials, ACL bindings and client quotas as Kafka keeps them, each change
moving one security version (and nothing else moving it); the cluster secret made
once and kept; node ids recorded per agent id, taken from a holder only when it is
dead, never handed to two agents claiming at once; the listeners agents advertise.
Schema version 6 added all of it: a version-5 database keeps its data.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psycopg
import pytest

from driftlog.coordinator.api import (
    ALL_ROLES,
    AclBinding,
    AgentInfo,
    QuotaEntry,
    ScramCredential,
)
from driftlog.coordinator.core.node_ids import NodeIdTaken
from driftlog.coordinator.engines import postgres, sqlite
from driftlog.coordinator.engines.backend import Backend
from driftlog.coordinator.engines.faulty import BackendFaults, FaultyBackend
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.postgres import PostgresBackend
from driftlog.coordinator.engines.sqlite import SqliteBackend

BackendFactory = Callable[[], Backend]

# Kafka's codes: TOPIC, GROUP; LITERAL, PREFIXED; READ, WRITE; DENY, ALLOW.
TOPIC, GROUP = 2, 3
LITERAL, PREFIXED = 3, 4
READ, WRITE = 3, 4
DENY, ALLOW = 2, 3

ALICE_256 = ScramCredential("alice", "SCRAM-SHA-256", b"salt1", b"s" * 32, b"k" * 32, 4096)
ALICE_512 = ScramCredential("alice", "SCRAM-SHA-512", b"salt2", b"S" * 64, b"K" * 64, 8192)
BOB_512 = ScramCredential("bob", "SCRAM-SHA-512", b"\x00\xff", b"\x01" * 64, b"\x02" * 64, 4096)

READ_ORDERS = AclBinding(TOPIC, "orders", LITERAL, "User:alice", "*", READ, ALLOW)
WRITE_LOGS = AclBinding(TOPIC, "logs-", PREFIXED, "User:bob", "10.0.0.1", WRITE, ALLOW)
DENY_GROUP = AclBinding(GROUP, "g", LITERAL, "User:bob", "*", READ, DENY)

# Liveness in tests: beats count for this long, so a test can outwait them.
LIVE_MS = 300


@pytest.fixture(params=["sqlite", "postgres", "memory", "faulty"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Each call opens another handle on one database (another process, for PostgreSQL)."""
    if request.param == "sqlite":
        return lambda: SqliteBackend(tmp_path / "c.sqlite3")
    if request.param in ("memory", "faulty"):
        database = MemoryDatabase()
        if request.param == "memory":
            return lambda: MemoryBackend(database)
        # No faults: the wrapper passes every call through.
        return lambda: FaultyBackend(MemoryBackend(database), BackendFaults())
    dsn: str = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresBackend(dsn)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def opened(factory: BackendFactory) -> Backend:
    backend = factory()
    await backend.open()
    return backend


def now_ms() -> int:
    # The wall clock: PostgreSQL judges liveness by its own, so the others must too.
    return int(time.time() * 1000)


def agent(agent_id: str, node_id: int, **fields: Any) -> AgentInfo:
    return AgentInfo(agent_id, node_id, "h", 9092, "z", "", now_ms(), **fields)


# The cluster secret ---------------------------------------------------------------


def test_the_cluster_secret_is_made_once_and_kept(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        first = await opened(backend_factory)
        secret = await first.cluster_secret()
        assert len(secret) == 32 and isinstance(secret, bytes)
        assert await first.cluster_secret() == secret
        await first.close()
        again = await opened(backend_factory)
        assert await again.cluster_secret() == secret
        # Not part of security: agents do not reload for it.
        assert await again.security_version() == 0
        await again.close()

    run(scenario)


def test_agents_starting_together_get_one_secret(postgres_dsn: str) -> None:
    async def scenario() -> None:
        backends = [PostgresBackend(postgres_dsn) for _ in range(6)]
        for b in backends:
            await b.open()
        secrets = await asyncio.gather(*(b.cluster_secret() for b in backends))
        assert len(set(secrets)) == 1
        for b in backends:
            await b.close()

    run(scenario)


def test_a_random_secret_per_cluster(tmp_path: Path) -> None:
    async def scenario() -> None:
        one, two = SqliteBackend(tmp_path / "1.db"), SqliteBackend(tmp_path / "2.db")
        await one.open()
        await two.open()
        assert await one.cluster_secret() != await two.cluster_secret()
        await one.close()
        await two.close()

    run(scenario)


# SCRAM credentials ------------------------------------------------------------------


def test_scram_credentials_are_stored_replaced_and_deleted(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        assert await backend.load_scram_credentials() == []
        await backend.put_scram_credentials([BOB_512, ALICE_512, ALICE_256], [])
        assert await backend.load_scram_credentials() == [ALICE_256, ALICE_512, BOB_512]
        assert await backend.security_version() == 1

        # One call: a new password for alice's SHA-256, bob's credential gone.
        renewed = ScramCredential("alice", "SCRAM-SHA-256", b"new", b"n" * 32, b"m" * 32, 10000)
        await backend.put_scram_credentials([renewed], [("bob", "SCRAM-SHA-512")])
        assert await backend.security_version() == 2
        await backend.close()

        again = await opened(backend_factory)
        assert await again.load_scram_credentials() == [renewed, ALICE_512]
        # Deleting what is not there changes nothing.
        gone = [("bob", "SCRAM-SHA-512"), ("carol", "SCRAM-SHA-256")]
        await again.put_scram_credentials([], gone)
        assert await again.security_version() == 2
        await again.close()

    run(scenario)


def test_an_unknown_mechanism_is_refused_and_nothing_is_stored(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        bad = ScramCredential("eve", "SCRAM-SHA-1", b"s", b"k", b"k", 4096)
        with pytest.raises(ValueError, match="SCRAM-SHA-1"):
            await backend.put_scram_credentials([ALICE_256, bad], [])
        with pytest.raises(ValueError, match="PLAIN"):
            await backend.put_scram_credentials([ALICE_256], [("alice", "PLAIN")])
        assert await backend.load_scram_credentials() == []
        assert await backend.security_version() == 0
        await backend.close()

    run(scenario)


# ACLs ---------------------------------------------------------------------------------


def test_acls_are_created_idempotently_and_deleted_exactly(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        await backend.create_acls([READ_ORDERS, WRITE_LOGS, READ_ORDERS])
        assert set(await backend.load_acls()) == {READ_ORDERS, WRITE_LOGS}
        assert len(await backend.load_acls()) == 2
        assert await backend.security_version() == 1

        # Existing bindings are not an error, and not a change.
        await backend.create_acls([WRITE_LOGS, READ_ORDERS])
        assert await backend.security_version() == 1
        await backend.create_acls([WRITE_LOGS, DENY_GROUP])
        assert await backend.security_version() == 2

        # Every field counts: the same binding for another host is another binding.
        other_host = AclBinding(TOPIC, "logs-", PREFIXED, "User:bob", "*", WRITE, ALLOW)
        assert await backend.delete_acls([other_host]) == 0
        assert await backend.security_version() == 2
        assert await backend.delete_acls([WRITE_LOGS, DENY_GROUP, WRITE_LOGS, other_host]) == 2
        assert await backend.security_version() == 3
        await backend.close()

        again = await opened(backend_factory)
        assert await again.load_acls() == [READ_ORDERS]
        await again.close()

    run(scenario)


# Client quotas ------------------------------------------------------------------------


def test_client_quotas_by_entity_with_defaults(backend_factory: BackendFactory) -> None:
    alice = (("user", "alice"),)
    default_user = (("user", None),)
    alice_app = (("client-id", "app"), ("user", "alice"))

    async def scenario() -> None:
        backend = await opened(backend_factory)
        await backend.alter_client_quotas(
            [
                (alice, "producer_byte_rate", 1024.0),
                (alice, "consumer_byte_rate", 2048),
                (default_user, "producer_byte_rate", 100.0),
                # Given in any order, stored sorted by entity type.
                ((("user", "alice"), ("client-id", "app")), "request_percentage", 50.0),
            ]
        )
        assert await backend.security_version() == 1
        await backend.close()

        again = await opened(backend_factory)
        entries = {e.entity: e for e in await again.load_client_quotas()}
        assert entries == {
            alice: QuotaEntry(alice, {"producer_byte_rate": 1024.0, "consumer_byte_rate": 2048.0}),
            default_user: QuotaEntry(default_user, {"producer_byte_rate": 100.0}),
            alice_app: QuotaEntry(alice_app, {"request_percentage": 50.0}),
        }
        assert all(isinstance(v, float) for e in entries.values() for v in e.values.values())

        # Change one key, remove another: the entity keeps the rest; removing its last
        # key removes the entity.
        await again.alter_client_quotas(
            [
                (alice, "producer_byte_rate", 4096.0),
                (alice, "consumer_byte_rate", None),
                (alice_app, "request_percentage", None),
            ]
        )
        assert await again.security_version() == 2
        entries = {e.entity: e for e in await again.load_client_quotas()}
        assert entries == {
            alice: QuotaEntry(alice, {"producer_byte_rate": 4096.0}),
            default_user: QuotaEntry(default_user, {"producer_byte_rate": 100.0}),
        }
        # Removing what is not there changes nothing.
        await again.alter_client_quotas([(alice_app, "request_percentage", None)])
        assert await again.security_version() == 2
        await again.close()

    run(scenario)


def test_a_quota_entity_names_each_type_once(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        with pytest.raises(ValueError):
            await backend.alter_client_quotas(
                [((("user", "a"), ("user", "b")), "producer_byte_rate", 1.0)]
            )
        with pytest.raises(ValueError):
            await backend.alter_client_quotas([((), "producer_byte_rate", 1.0)])
        assert await backend.load_client_quotas() == []
        assert await backend.security_version() == 0
        await backend.close()

    run(scenario)


# The security version -----------------------------------------------------------------


def test_the_security_version_moves_with_security_changes_only(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        seen = [await backend.security_version()]

        async def moved() -> bool:
            seen.append(await backend.security_version())
            return seen[-1] != seen[-2]

        # Everything else the store does leaves it alone.
        await backend.cluster_id("c")
        await backend.cluster_secret()
        await backend.heartbeat(agent("a", 0))
        await backend.claim_node_id("a", None, now_ms(), LIVE_MS)
        await backend.put_broker_configs("", {"k": "v"})
        await backend.load_acls()
        await backend.load_scram_credentials()
        await backend.load_client_quotas()
        assert not await moved()

        await backend.put_scram_credentials([ALICE_256], [])
        assert await moved()
        await backend.create_acls([READ_ORDERS])
        assert await moved()
        await backend.delete_acls([READ_ORDERS])
        assert await moved()
        await backend.alter_client_quotas([((("user", None),), "consumer_byte_rate", 1.0)])
        assert await moved()
        await backend.put_scram_credentials([], [("alice", "SCRAM-SHA-256")])
        assert await moved()
        # Calls that change no row.
        await backend.put_scram_credentials([], [])
        await backend.create_acls([])
        assert await backend.delete_acls([READ_ORDERS]) == 0
        await backend.alter_client_quotas([])
        assert not await moved()
        assert seen[-1] > seen[0]
        await backend.close()

        # Another handle sees the same counter.
        other = await opened(backend_factory)
        assert await other.security_version() == seen[-1]
        await other.close()

    run(scenario)


# Node ids -------------------------------------------------------------------------------


def test_node_ids_assign_themselves_and_stay(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        claim = backend.claim_node_id
        assert [await claim(a, None, now_ms(), LIVE_MS) for a in ("a", "b", "c")] == [0, 1, 2]
        assert await claim("b", None, now_ms(), LIVE_MS) == 1  # its own, again
        assert await claim("b", 1, now_ms(), LIVE_MS) == 1  # asked for, and its own
        # Asking for another id gives up the old one: the next new agent gets the gap.
        assert await claim("b", 7, now_ms(), LIVE_MS) == 7
        assert await claim("d", None, now_ms(), LIVE_MS) == 1
        assert await claim("e", None, now_ms(), LIVE_MS) == 3
        await backend.close()

        again = await opened(backend_factory)
        assert await again.claim_node_id("b", None, now_ms(), LIVE_MS) == 7
        assert await again.claim_node_id("a", None, now_ms(), LIVE_MS) == 0
        await again.close()

    run(scenario)


def test_an_id_held_by_a_live_agent_is_refused_naming_it(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        assert await backend.claim_node_id("a", 4, now_ms(), LIVE_MS) == 4
        await backend.heartbeat(agent("a", 4))
        with pytest.raises(NodeIdTaken) as taken:
            await backend.claim_node_id("b", 4, now_ms(), LIVE_MS)
        assert (taken.value.node_id, taken.value.holder_agent_id) == (4, "a")
        assert "'a'" in str(taken.value)
        # A holder that claimed but has not beaten yet is alive too (it is starting).
        assert await backend.claim_node_id("c", 5, now_ms(), LIVE_MS) == 5
        with pytest.raises(NodeIdTaken, match="'c'"):
            await backend.claim_node_id("d", 5, now_ms(), LIVE_MS)
        # The refused agent recorded nothing: it gets the smallest free id later.
        assert await backend.claim_node_id("b", None, now_ms(), LIVE_MS) == 0
        await backend.close()

    run(scenario)


def test_a_dead_holders_id_can_be_taken(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        assert await backend.claim_node_id("old", None, now_ms(), LIVE_MS) == 0
        await backend.heartbeat(agent("old", 0))
        await backend.claim_node_id("keeper", 1, now_ms(), LIVE_MS)
        await asyncio.sleep(2 * LIVE_MS / 1000)  # "old" stops beating
        assert await backend.claim_node_id("new", 0, now_ms(), LIVE_MS) == 0
        # The old holder, back, gets a free id instead of the one it lost.
        assert await backend.claim_node_id("old", None, now_ms(), LIVE_MS) == 2
        assert await backend.claim_node_id("new", None, now_ms(), LIVE_MS) == 0
        await backend.close()

    run(scenario)


def test_node_ids_live_agents_advertise_are_respected(backend_factory: BackendFactory) -> None:
    # An agent from before node ids were recorded has no claim, only its heartbeat.
    async def scenario() -> None:
        backend = await opened(backend_factory)
        await backend.heartbeat(agent("veteran", 0))
        assert await backend.claim_node_id("a", None, now_ms(), LIVE_MS) == 1
        with pytest.raises(NodeIdTaken, match="'veteran'"):
            await backend.claim_node_id("b", 0, now_ms(), LIVE_MS)
        # An agent's own heartbeat does not stand in its way.
        await backend.heartbeat(agent("a", 1))
        assert await backend.claim_node_id("a", 1, now_ms(), LIVE_MS) == 1
        await backend.close()

    run(scenario)


def test_agents_claiming_at_once_get_distinct_ids(postgres_dsn: str) -> None:
    async def scenario() -> None:
        backends = [PostgresBackend(postgres_dsn) for _ in range(8)]
        for b in backends:
            await b.open()
        for _ in range(3):  # rounds, each racing new agents
            round_id = uuid.uuid4().hex[:6]
            ids = await asyncio.gather(
                *(b.claim_node_id(f"{round_id}-{i}", None, now_ms(), LIVE_MS)
                  for i, b in enumerate(backends))
            )  # fmt: skip
            assert len(set(ids)) == len(backends)
        assert sorted(await _all_node_ids(postgres_dsn)) == list(range(24))

        # Two agents asking for one id at once: one gets it, the other hears who has it.
        results = await asyncio.gather(
            backends[0].claim_node_id("x", 100, now_ms(), LIVE_MS),
            backends[1].claim_node_id("y", 100, now_ms(), LIVE_MS),
            return_exceptions=True,
        )
        winners = [r for r in results if r == 100]
        losers = [r for r in results if isinstance(r, NodeIdTaken)]
        assert len(winners) == 1 and len(losers) == 1
        assert losers[0].holder_agent_id in ("x", "y")
        for b in backends:
            await b.close()

    run(scenario)


def test_heartbeats_carry_roles_and_groups(backend_factory: BackendFactory) -> None:
    async def scenario() -> None:
        backend = await opened(backend_factory)
        await backend.heartbeat(agent("a", 0, roles=frozenset({"fetch"}), group="x"))
        await backend.heartbeat(agent("b", 1))
        live = await backend.live_agents(60_000, now_ms())
        assert [(a.agent_id, a.roles, a.group) for a in live] == [
            ("a", frozenset({"fetch"}), "x"),
            ("b", ALL_ROLES, ""),
        ]
        await backend.heartbeat(agent("a", 0, roles=frozenset({"jobs", "writer"}), group="y"))
        [a, _] = await backend.live_agents(60_000, now_ms())
        assert (a.roles, a.group) == (frozenset({"jobs", "writer"}), "y")
        await backend.close()

    run(scenario)


async def _all_node_ids(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT node_id FROM node_ids")
        return [int(r[0]) for r in await cursor.fetchall()]


# Listeners in membership ------------------------------------------------------------------


def test_heartbeats_carry_the_listeners(backend_factory: BackendFactory) -> None:
    listeners = (("INTERNAL", "10.0.0.5", 9093), ("EXTERNAL", "broker.example.com", 19092))

    async def scenario() -> None:
        backend = await opened(backend_factory)
        await backend.heartbeat(agent("a", 0, listeners=listeners))
        await backend.heartbeat(agent("b", 1))
        live = await backend.live_agents(60_000, now_ms())
        assert [(a.agent_id, a.listeners) for a in live] == [("a", listeners), ("b", ())]
        await backend.heartbeat(agent("a", 0, listeners=listeners[:1]))
        [a, _] = await backend.live_agents(60_000, now_ms())
        assert a.listeners == listeners[:1]
        await backend.close()

    run(scenario)


# Migration from version 5 --------------------------------------------------------------------

V5_AGENT = ("old", 3, "h", 9092, "z", "rpc:1", 1_000)


def test_a_version_5_sqlite_database_is_upgraded_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    topic_id = uuid.uuid4()
    db = sqlite3.connect(path, isolation_level=None)
    for script in (sqlite.SCHEMA, sqlite._LIFECYCLE, sqlite._TRANSACTIONS):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (5)")
    db.execute("INSERT INTO cluster VALUES (0, 'cluster-5')")
    db.execute("INSERT INTO agents VALUES (?, ?, ?, ?, ?, ?, ?)", V5_AGENT)
    db.execute("INSERT INTO topics VALUES (?, 't', 2, '{}')", (topic_id.bytes,))
    db.execute("INSERT INTO broker_configs VALUES ('', '{\"k\":\"v\"}')")
    db.close()

    async def scenario() -> None:
        backend = SqliteBackend(path)
        await backend.open()
        await _check_upgraded(backend, topic_id)
        await backend.close()

    run(scenario)
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(sqlite.SCHEMA_VERSION,)]
    db.close()


def test_a_version_5_postgres_database_is_upgraded_and_keeps_its_data(postgres_dsn: str) -> None:
    topic_id = uuid.uuid4()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        for migration in postgres.MIGRATIONS[:5]:
            conn.execute(migration.encode())
        conn.execute("INSERT INTO schema_version VALUES (5)")
        conn.execute("INSERT INTO cluster VALUES (0, 'cluster-5')")
        conn.execute("INSERT INTO agents VALUES (%s, %s, %s, %s, %s, %s, %s)", V5_AGENT)
        conn.execute("INSERT INTO topics VALUES (%s, 't', 2, '{}')", (topic_id,))
        conn.execute("INSERT INTO broker_configs VALUES ('', '{\"k\":\"v\"}')")

    async def scenario() -> None:
        backend = PostgresBackend(postgres_dsn)
        await backend.open()
        await _check_upgraded(backend, topic_id)
        await backend.close()

    run(scenario)
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (postgres.SCHEMA_VERSION,)
        ]


async def _check_upgraded(backend: Backend, topic_id: uuid.UUID) -> None:
    assert await backend.cluster_id("other") == "cluster-5"
    assert [(t.name, t.topic_id, t.partition_count) for t in await backend.load_topics()] == [
        ("t", topic_id, 2)
    ]
    assert await backend.load_broker_configs() == {"": {"k": "v"}}
    # The old agent's row, with no listeners; heartbeat times are the database's.
    [old] = await backend.live_agents(10**15, 1_000)
    assert (old.agent_id, old.node_id, old.rpc_address, old.listeners) == ("old", 3, "rpc:1", ())
    assert (old.roles, old.group) == (ALL_ROLES, "")  # rows from before roles: every role
    assert await backend.security_version() == 0
    assert await backend.load_scram_credentials() == []
    assert await backend.load_acls() == []
    assert await backend.load_client_quotas() == []
    # The new tables work.
    await backend.put_scram_credentials([ALICE_256], [])
    await backend.create_acls([READ_ORDERS])
    await backend.heartbeat(agent("new", 0, listeners=(("PLAINTEXT", "h", 1),)))
    assert await backend.security_version() == 2
    assert await backend.claim_node_id("new", None, now_ms(), LIVE_MS) == 0
    assert len(await backend.cluster_secret()) == 32
