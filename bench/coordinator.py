"""Coordinator commits per second: N agents committing objects to one writer on PostgreSQL.

What it measures
----------------
A real `driftlog serve` agent on a throwaway PostgreSQL 15 (or `--dsn`) takes the
writer lease. N simulated agents connect to its writer RPC, exactly as agents do
(`coordinator/runtime/rpc_messages.py`), and each keeps `--depth` commits in flight (a real agent
uploads up to 4 objects at once and submits each as soon as it is uploaded).
Every commit is one object of `--batches` batches (default 20) on partitions drawn
at random from a topic of `--partitions` partitions (default 1,000). Each simulated
agent also subscribes to the writer's stream of committed coordinates and drains
it, as every agent does, so the writer pays for the fan-out.

Printed per N: object commits/s, batches/s, commit latency p50/p99/max (from
sending the commit to its answer), database transactions per second (the
group commit: many objects per transaction), the WAL PostgreSQL writes per
batch (which each COMMIT waits to reach the disk), and the CPU seconds per 1,000
commits over the measured window of the writer process, of PostgreSQL's backends
and of the load generator itself (user + system time from /proc, so the figures
hold up when other work shares the machine). The load generator encodes a few
hundred random partition sets per simulated agent up front and only stamps a new
object key on each commit, so that it takes little of the machine it shares.

The seed's warning is the baseline: Inkless's PostgreSQL function locks partition
rows per commit and manages about 230 commits/s at 8 agents on this class of
machine, falling as concurrency grows. Here one writer sequences in memory and
persists each round in one transaction, so concurrency raises throughput.

How to run
----------
    .venv/bin/python bench/coordinator.py                     # N = 1, 8, 32, 20 s each
    .venv/bin/python bench/coordinator.py --agents 8 --seconds 30
    .venv/bin/python bench/coordinator.py --dsn postgresql://postgres@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from services import PostgresServer, free_port, wait_for_port

from driftlog.coordinator.api import BatchToCommit
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.rpc import read_body, read_message

# Distinct random partition sets each simulated agent cycles through, encoded once:
# the writer's work per commit is the same, the load generator's much smaller (it
# shares the machine with the writer and PostgreSQL).
BATCH_SETS = 256


class SimulatedAgent:
    """One agent's commit traffic: `depth` commits in flight over one RPC connection."""

    def __init__(
        self, index: int, topic_id: uuid.UUID, partitions: int, batches: int, depth: int
    ) -> None:
        self.index = index
        self.depth = depth
        rng = random.Random(index)
        self._batch_sets = [
            messages.encode_batches(
                [
                    BatchToCommit(
                        topic_id, p, i * 1000, 1000, 10, 1_700_000_000_000, 1_700_000_000_010
                    )
                    for i, p in enumerate(sorted(rng.sample(range(partitions), batches)))
                ]
            )
            for _ in range(BATCH_SETS)
        ]
        self._key_prefix = f"bench/{index}/{uuid.uuid4().hex}/"  # keys are unique per run
        self.latencies_ms: list[float] = []
        self.errors = 0
        self._sent: dict[int, float] = {}
        self._next_id = 0
        self.answered_in_window = 0  # replies received between measure_from and stop_at

    async def run(self, address: str, stop_at: float, measure_from: float) -> None:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        stream, stream_writer = await asyncio.open_connection(host, int(port))
        stream_writer.write(messages.encode({"op": "subscribe"}))
        await read_message(stream)  # the confirmation
        drain = asyncio.create_task(self._drain(stream))

        def send() -> None:
            self._next_id = request_id = self._next_id + 1
            self._sent[request_id] = time.perf_counter()
            writer.write(
                messages.commit_frame(
                    request_id,
                    f"{self._key_prefix}{request_id}",
                    20_000,
                    self._batch_sets[request_id % BATCH_SETS],
                )
            )

        for _ in range(self.depth):
            send()
        while True:
            request_id, failed = reply_id(await read_body(reader))
            now = time.perf_counter()
            started = self._sent.pop(request_id)
            if failed:
                self.errors += 1
            elif started >= measure_from:
                self.latencies_ms.append((now - started) * 1000)
            if measure_from <= now < stop_at:
                self.answered_in_window += 1
            if now < stop_at:
                send()
            elif not self._sent:
                break
        drain.cancel()
        writer.close()
        stream_writer.close()

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.read(1 << 20):
            pass


def reply_id(body: bytes) -> tuple[int, bool]:
    """A commit reply's request id, and whether it is an error (without decoding the
    outcomes of a success, `messages.outcomes_reply_frame`)."""
    if body.startswith(b'{"id":') and body.find(b',"outcomes":', 6, 32) > 0:
        return int(body[6 : body.index(b",", 6)]), False
    reply = messages.decode(body)
    return int(reply["id"]), "error" in reply


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_pids(dsn: str) -> list[int]:
    """The PostgreSQL backends serving the database (the writer's connections)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
        return [int(pid) for (pid,) in rows]


def total_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that ended
            total += cpu_s(pid)
    return total


async def run_load(
    address: str,
    topic_id: uuid.UUID,
    args: argparse.Namespace,
    agents: int,
    writer_pid: int,
    dsn: str,
) -> dict[str, Any]:
    simulated = [
        SimulatedAgent(i, topic_id, args.partitions, args.batches, args.depth)
        for i in range(agents)
    ]
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.seconds
    cpu: list[tuple[float, float, float]] = []  # writer, PostgreSQL, this process
    postgres_pids: list[int] = []

    async def sample_cpu() -> None:
        for at in (measure_from, stop_at):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if not postgres_pids:
                postgres_pids.extend(await asyncio.to_thread(database_pids, dsn))
            cpu.append((cpu_s(writer_pid), total_cpu_s(postgres_pids), time.process_time()))

    sampler = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(a.run(address, stop_at, measure_from) for a in simulated))
    await sampler
    answered = sum(a.answered_in_window for a in simulated)
    latencies = sorted(x for a in simulated for x in a.latencies_ms)
    elapsed = args.seconds
    commits = len(latencies)
    return {
        "agents": agents,
        "commits_per_s": commits / elapsed,
        "batches_per_s": commits * args.batches / elapsed,
        "p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "errors": sum(a.errors for a in simulated),
        "writer_cpu_s_per_1000": (cpu[1][0] - cpu[0][0]) * 1000 / max(answered, 1),
        "writer_cpu_share": (cpu[1][0] - cpu[0][0]) / elapsed,
        "postgres_cpu_s_per_1000": (cpu[1][1] - cpu[0][1]) * 1000 / max(answered, 1),
        "load_cpu_s_per_1000": (cpu[1][2] - cpu[0][2]) * 1000 / max(answered, 1),
    }


def transactions_and_wal(dsn: str) -> tuple[int, int]:
    """Transactions committed in the database, and the server's WAL position in bytes."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--batches", type=int, default=20, help="batches per object")
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=4, help="commits in flight per agent")
    parser.add_argument("--dsn", default="", help="use this PostgreSQL instead of a new one")
    args = parser.parse_args()

    pg = None if args.dsn else PostgresServer(max_connections=100)
    if pg is not None:
        pg.start()
    dsn = args.dsn or (pg.dsn if pg else "")
    results = []
    try:
        for agents in args.agents:
            database = f"bench_{uuid.uuid4().hex[:8]}"
            db_dsn = pg.create_database(database) if pg is not None else dsn
            results.append(run_one(db_dsn, args, agents))
    finally:
        if pg is not None:
            pg.cleanup()
    print()
    print(f"{args.batches} batches per object over {args.partitions} partitions, "
          f"{args.depth} commits in flight per agent, {args.seconds:.0f} s per row")  # fmt: skip
    print(
        "| agents | commits/s | batches/s | p50 ms | p99 ms | max ms | tx/s | objects/tx"
        " | WAL bytes/batch | CPU s/1000 commits: writer | PostgreSQL | load generator"
        " | writer CPU share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['agents']} | {r['commits_per_s']:.0f} | {r['batches_per_s']:.0f} |"
            f" {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
            f" {r['tx_per_s']:.0f} | {r['objects_per_tx']:.1f} | {r['wal_bytes_per_batch']:.0f} |"
            f" {r['writer_cpu_s_per_1000']:.3f} | {r['postgres_cpu_s_per_1000']:.3f} |"
            f" {r['load_cpu_s_per_1000']:.3f} | {r['writer_cpu_share']:.0%} |"
        )
    if any(r["errors"] for r in results):
        print("errors:", [r["errors"] for r in results])


def run_one(dsn: str, args: argparse.Namespace, agents: int) -> dict[str, Any]:
    port, rpc_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="driftlog-bench-coordinator-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOG_")}
    driftlog = Path(sys.executable).parent / "driftlog"
    process = subprocess.Popen(
        [str(driftlog), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
         "--coordinator", dsn, "--object-store", "memory://", "--rpc-port", str(rpc_port),
         "--log-level", "WARNING"],
        env=env, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_port(port)
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        admin.create_topics([NewTopic("bench", args.partitions, 1)])["bench"].result(30)
        topic = admin.list_topics("bench", timeout=10).topics["bench"]
        topic_id = uuid.UUID(str(topic.topic_id)) if getattr(topic, "topic_id", None) else None
        if topic_id is None:
            import psycopg

            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT topic_id FROM topics WHERE name = 'bench'").fetchone()
                assert row is not None
                topic_id = row[0]
        assert isinstance(topic_id, uuid.UUID)
        tx_before, wal_before = transactions_and_wal(dsn)
        # On uvloop, as agents run (`driftlog serve`): the simulated agents share the
        # machine with the writer, so their event loop's cost is the writer's latency.
        result = uvloop.run(
            run_load(f"127.0.0.1:{rpc_port}", topic_id, args, agents, process.pid, dsn)
        )
        tx_after, wal_after = transactions_and_wal(dsn)
        tx = tx_after - tx_before
        # Transactions over the whole run (warm-up and tail included), objects likewise.
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM objects").fetchone()
            objects = int(row[0]) if row else 0
        total_s = args.warmup + args.seconds
        result["tx_per_s"] = tx / total_s
        result["objects_per_tx"] = objects / max(tx, 1)
        result["wal_bytes_per_batch"] = (wal_after - wal_before) / max(objects * args.batches, 1)
        print(json.dumps(result), flush=True)
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
