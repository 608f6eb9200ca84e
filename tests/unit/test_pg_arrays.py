"""Binary arrays (`pg_arrays.py`) read back by a real PostgreSQL exactly as built."""

from __future__ import annotations

import uuid

import psycopg

from driftlog.coordinator.engines import pg_arrays


def test_binary_arrays_round_trip_through_postgresql(postgres_dsn: str) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    int8s = [0, -1, 2**63 - 1, -(2**63), 1_700_000_000_000]
    int4s = [0, -1, 2**31 - 1, -(2**31)]
    with psycopg.connect(postgres_dsn) as conn:
        pg_arrays.register(conn)
        row = conn.execute(
            "SELECT %b, %b, %b, %b, %b, %b, pg_typeof(%b)::text, pg_typeof(%b)::text,"
            " pg_typeof(%b)::text",
            (
                pg_arrays.int8_array(int8s),
                pg_arrays.int4_array(int4s),
                pg_arrays.uuid_array([ids[0], ids[1].bytes, ids[2]]),
                pg_arrays.int8_array([]),
                pg_arrays.int4_array([]),
                pg_arrays.uuid_array([]),
                pg_arrays.int8_array([1]),
                pg_arrays.int4_array([1]),
                pg_arrays.uuid_array([ids[0]]),
            ),
        ).fetchone()
    assert row == (int8s, int4s, ids, [], [], [], "bigint[]", "integer[]", "uuid[]")


def test_long_arrays_round_trip(postgres_dsn: str) -> None:
    values = list(range(-3, 2_500))
    with psycopg.connect(postgres_dsn) as conn:
        pg_arrays.register(conn)
        row = conn.execute(
            "SELECT %b, %b", (pg_arrays.int8_array(values), pg_arrays.int4_array(values))
        ).fetchone()
    assert row == (values, values)
