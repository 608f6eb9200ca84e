"""The real backing services the cluster tests use: PostgreSQL 15 and moto's S3 server."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from services import MotoServer, PostgresServer

from driftlog.storage.api import ObjectAlreadyExists, ObjectNotFound
from driftlog.storage.obstore import open_store


def test_postgres_select_one(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        settings = conn.execute(
            "SELECT current_setting('max_connections'), current_setting('fsync'),"
            " current_setting('listen_addresses'), current_setting('server_version_num')::int"
        ).fetchone()
    assert settings is not None
    assert settings[:3] == ("200", "on", "127.0.0.1")
    assert settings[3] // 10000 == 15
    with psycopg.connect(postgres_server.dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("driftlog",)


def test_postgres_dsn_is_a_fresh_empty_database(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")  # dropped with the database after the test


def test_postgres_restart_and_kill9_keep_committed_rows() -> None:
    # A private server: restarting or killing the session one would disturb other tests.
    with PostgresServer() as pg:
        port = pg.port
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        pg.restart()
        assert pg.port == port
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
            conn.execute("INSERT INTO t VALUES (2)")
            pg.kill9()
            assert not pg.running
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        pg.start()  # crash recovery
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
        assert "automatic recovery in progress" in pg.log_text()


def test_postgres_create_database(postgres_server: PostgresServer) -> None:
    name = f"extra_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server.create_database(name)
    try:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        postgres_server.drop_database(name)


def test_obstore_s3_round_trip_through_moto(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    moto_server.create_bucket(bucket)
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value

    async def run() -> None:
        store = open_store(f"s3://{bucket}/prefix")
        await store.put_new("obj", [payload[:1000], payload[1000:]])
        got = await store.get_ranges("obj", [(0, 10), (1000, 2000), (0, len(payload))])
        assert [bytes(g) for g in got] == [payload[:10], payload[1000:2000], payload]
        # put_new is create-only (a conditional PUT), which moto honours.
        with pytest.raises(ObjectAlreadyExists):
            await store.put_new("obj", [b"other"])
        await store.delete("obj")
        with pytest.raises(ObjectNotFound):
            await store.get_ranges("obj", [(0, 1)])

    asyncio.run(asyncio.wait_for(run(), 30))

    import boto3  # the object really lives in moto, under the prefix

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
