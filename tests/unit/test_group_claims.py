"""Group claims (Kafka's coordinator epoch) on every backend: SQLite, PostgreSQL, the
in-memory reference, and the fault wrapper over it.

A claim moves a group to an agent with the next epoch; offset commits and deletions
carry the claim and land only while it is still the stored one, checked in the
commit's own transaction. On PostgreSQL a claim taken while a commit is in flight
is ordered wholly before it (the commit is refused) or after it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from driftlog.coordinator.api import CommittedOffset, GroupClaim, GroupFenced
from driftlog.coordinator.engines import postgres, sqlite
from driftlog.coordinator.engines.backend import Backend
from driftlog.coordinator.engines.faulty import BackendFaults, FaultyBackend
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.engines.postgres import PostgresBackend
from driftlog.coordinator.engines.sqlite import SqliteBackend

BackendFactory = Callable[[], Backend]


@pytest.fixture(params=["sqlite", "postgres", "memory", "faulty"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    if request.param == "sqlite":
        return lambda: SqliteBackend(tmp_path / "c.sqlite3")
    if request.param in ("memory", "faulty"):
        database = MemoryDatabase()
        if request.param == "memory":
            return lambda: MemoryBackend(database)
        return lambda: FaultyBackend(MemoryBackend(database), BackendFaults())
    dsn: str = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresBackend(dsn)


def offset(partition: int, value: int, metadata: str | None = "") -> CommittedOffset:
    return CommittedOffset("t", partition, value, -1, metadata)


async def stored(backend: Backend, group_id: str) -> dict[int, int]:
    return {o.partition: o.offset for o in await backend.fetch_offsets(group_id, None)}


def test_a_claim_moves_with_the_next_epoch_and_fences_the_claim_before(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = backend_factory()
        await backend.open()
        first = await backend.claim_group("g", "agent-a")
        assert (first.agent_id, first.epoch, first.taken_from) == ("agent-a", 1, "")
        await backend.put_offsets("g", [offset(0, 10), offset(1, 11, None)], first)
        assert await stored(backend, "g") == {0: 10, 1: 11}

        # Another agent claims it (its membership list says the group is its own now).
        second = await backend.claim_group("g", "agent-b")
        assert (second.agent_id, second.epoch, second.taken_from) == ("agent-b", 2, "agent-a")

        # The first agent's commit and deletion are refused and write nothing.
        with pytest.raises(GroupFenced) as refused:
            await backend.put_offsets("g", [offset(0, 99), offset(2, 99)], first)
        assert refused.value.claim == first
        assert refused.value.stored == ("agent-b", 2)
        with pytest.raises(GroupFenced):
            await backend.delete_group("g", first)
        assert await stored(backend, "g") == {0: 10, 1: 11}

        # The holder commits; the last offset given for a partition wins.
        await backend.put_offsets("g", [offset(0, 20), offset(2, 21), offset(0, 22)], second)
        assert await stored(backend, "g") == {0: 22, 1: 11, 2: 21}

        # The same agent claiming again (after it released the group) bumps the epoch
        # too, and fences its own older claim; nobody else held it in between.
        third = await backend.claim_group("g", "agent-b")
        assert (third.epoch, third.taken_from) == (3, "")
        with pytest.raises(GroupFenced):
            await backend.put_offsets("g", [offset(0, 30)], second)

        # Claims are per group, and a group nobody claimed admits no claim.
        other = await backend.claim_group("h", "agent-a")
        assert other.epoch == 1
        await backend.put_offsets("h", [offset(0, 5)], other)
        with pytest.raises(GroupFenced) as unclaimed:
            await backend.put_offsets("nobody", [offset(0, 5)], GroupClaim("nobody", "a", 1))
        assert unclaimed.value.stored is None
        assert await stored(backend, "nobody") == {}
        await backend.close()

        # Claims are durable: after a restart the holder still commits, others do not.
        reopened = backend_factory()
        await reopened.open()
        await reopened.put_offsets("g", [offset(1, 40)], third)
        with pytest.raises(GroupFenced):
            await reopened.put_offsets("g", [offset(1, 41)], first)
        assert await stored(reopened, "g") == {0: 22, 1: 40, 2: 21}
        await reopened.delete_group("g", third)
        assert await stored(reopened, "g") == {}
        assert await reopened.groups_with_offsets() == ["h"]
        # Deleting the offsets keeps the claim: epochs only grow.
        assert (await reopened.claim_group("g", "agent-a")).epoch == 4
        await reopened.close()

    asyncio.run(scenario())


def test_agents_claiming_at_once_each_get_their_own_epoch(
    backend_factory: BackendFactory,
) -> None:
    async def scenario() -> None:
        backend = backend_factory()
        await backend.open()
        claims = await asyncio.gather(
            *(backend.claim_group("g", f"agent-{i % 3}") for i in range(12))
        )
        assert sorted(c.epoch for c in claims) == list(range(1, 13))
        last = max(claims, key=lambda c: c.epoch)
        for claim in claims:
            if claim is last:
                await backend.put_offsets("g", [offset(0, claim.epoch)], claim)
            else:
                with pytest.raises(GroupFenced):
                    await backend.put_offsets("g", [offset(0, claim.epoch)], claim)
        assert await stored(backend, "g") == {0: 12}
        await backend.close()

    asyncio.run(scenario())


def test_postgres_a_claim_waits_for_a_commit_in_flight_and_a_commit_for_a_claim(
    postgres_dsn: str,
) -> None:
    """Both orders of a claim racing a commit, with the first one's transaction held
    open on a raw connection: the second waits for its row lock, then sees its outcome."""

    async def scenario() -> None:
        backend = PostgresBackend(postgres_dsn)
        await backend.open()
        mine = await backend.claim_group("g", "agent-a")
        await backend.put_offsets("g", [offset(0, 1)], mine)
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as raw:
            # A claim in flight (as another agent's backend runs it) holds the row...
            await raw.execute(postgres._CLAIM_GROUP, {"group_id": "g", "agent_id": "agent-b"})
            commit = asyncio.create_task(backend.put_offsets("g", [offset(0, 2)], mine))
            await asyncio.sleep(0.3)
            assert not commit.done()  # ...so the commit waits for it, not past it
            await raw.commit()
            with pytest.raises(GroupFenced) as refused:
                await commit
            assert refused.value.stored == ("agent-b", 2)
            assert await stored(backend, "g") == {0: 1}

            # A commit in flight (agent-b's own statement, not yet committed) makes a
            # claim wait; the commit lands, then the claim moves on.
            theirs = GroupClaim("g", "agent-b", 2)
            await raw.execute(
                postgres._PUT_OFFSETS,
                {
                    **postgres._claim_params("g", theirs),
                    "topics": ["t"], "partitions": [0], "offsets": [3],
                    "leader_epochs": [-1], "metadata": [""],
                },
            )  # fmt: skip
            claim = asyncio.create_task(backend.claim_group("g", "agent-a"))
            await asyncio.sleep(0.3)
            assert not claim.done()
            await raw.commit()
            again = await claim
            assert (again.epoch, again.taken_from) == (3, "agent-b")
            assert await stored(backend, "g") == {0: 3}
            await backend.put_offsets("g", [offset(0, 4)], again)
            assert await stored(backend, "g") == {0: 4}
        await backend.close()

    asyncio.run(scenario())


def test_sqlite_a_version_6_database_gains_group_claims_and_keeps_its_offsets(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for script in (sqlite.SCHEMA, sqlite._LIFECYCLE, sqlite._TRANSACTIONS, sqlite._SECURITY):
        sqlite._execute_script(db, script)
    db.execute("INSERT INTO schema_version VALUES (6)")
    db.execute("INSERT INTO group_offsets VALUES ('g', 't', 0, 7, -1, 'm')")
    db.close()

    async def scenario() -> None:
        backend = SqliteBackend(path)
        await backend.open()
        assert await stored(backend, "g") == {0: 7}
        claim = await backend.claim_group("g", "agent-a")
        assert claim.epoch == 1
        await backend.put_offsets("g", [offset(0, 8)], claim)
        assert await stored(backend, "g") == {0: 8}
        await backend.close()

    asyncio.run(scenario())
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(sqlite.SCHEMA_VERSION,)]
    assert sqlite.SCHEMA_VERSION >= 7  # 7 added group_claims
    assert db.execute("SELECT * FROM group_claims").fetchall() == [("g", "agent-a", 1)]
    db.close()


def test_postgres_a_version_6_database_gains_group_claims_and_keeps_its_offsets(
    postgres_dsn: str,
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        for migration in postgres.MIGRATIONS[:6]:
            conn.execute(migration.encode())
        conn.execute("INSERT INTO schema_version VALUES (6)")
        conn.execute("INSERT INTO group_offsets VALUES ('g', 't', 0, 7, -1, 'm')")

    async def scenario() -> None:
        backend = PostgresBackend(postgres_dsn)
        await backend.open()
        assert await stored(backend, "g") == {0: 7}
        claim = await backend.claim_group("g", "agent-a")
        assert claim.epoch == 1
        await backend.put_offsets("g", [offset(0, 8)], claim)
        assert await stored(backend, "g") == {0: 8}
        await backend.close()

    asyncio.run(scenario())
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (postgres.SCHEMA_VERSION,)
        ]
        assert postgres.SCHEMA_VERSION >= 7  # 7 added group_claims
        assert conn.execute("SELECT * FROM group_claims").fetchall() == [("g", "agent-a", 1)]
