"""`driftlog` command line: arguments and environment to config to a running agent. No logic."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from driftlog.agent import Agent
from driftlog.config import AgentConfig
from driftlog.storage.faulty import FaultConfig

log = logging.getLogger("driftlog")

_DEFAULTS = AgentConfig()


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _env(name: str, default: object) -> str | None:
    value = os.environ.get(f"DRIFTLOG_{name}")
    return value if value is not None else (None if default is None else str(default))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftlog",
        description="Driftlog: a Kafka-compatible broker whose only storage is object storage.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run one agent",
        description="Run one agent. Every option can also be set with the environment "
        "variable shown in brackets; the command line wins.",
    )
    d = _DEFAULTS

    def option(flag: str, env: str, default: object, help_: str, **kw: object) -> None:
        serve.add_argument(
            flag,
            default=_env(env, default),
            help=f"{help_} [DRIFTLOG_{env}, default {default}]",
            **kw,  # type: ignore[arg-type]
        )

    option("--listen", "LISTEN", f"{d.listen_host}:{d.listen_port}", "address to accept clients on")
    option(
        "--advertise",
        "ADVERTISE",
        None,
        "address clients are told to connect to (default: the listen address)",
    )
    option(
        "--data-dir",
        "DATA_DIR",
        str(d.data_dir),
        "directory for the SQLite coordinator and local objects",
    )
    option(
        "--object-store",
        "OBJECT_STORE",
        None,
        "object store URL: file:///path (default DATA_DIR/objects), memory://, "
        "s3://bucket[/prefix] "
        "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION apply)",
    )
    option(
        "--coordinator",
        "COORDINATOR",
        None,
        "coordinator database: postgresql://user@host:port/db (cluster), or empty for the "
        "embedded SQLite file in DATA_DIR",
    )
    option(
        "--agent-id",
        "AGENT_ID",
        None,
        "this agent's name in the writer lease (default agent-NODE_ID); unique per agent",
    )
    option(
        "--lease-ms",
        "LEASE_MS",
        d.lease_ms,
        "writer lease: a dead writer is replaced after about this long",
    )
    option(
        "--rpc-port",
        "RPC_PORT",
        d.rpc_port,
        "cluster mode: port of the writer RPC on the listen host (0 picks a free one)",
    )
    option(
        "--heartbeat-ms",
        "HEARTBEAT_MS",
        d.heartbeat_ms,
        "cluster mode: how often this agent announces itself",
    )
    option(
        "--agent-timeout-ms",
        "AGENT_TIMEOUT_MS",
        d.agent_timeout_ms,
        "cluster mode: an agent silent this long leaves Metadata and its groups move",
    )
    option(
        "--log-retention-ms",
        "LOG_RETENTION_MS",
        d.log_retention_ms,
        "retention.ms of topics that do not set it (-1: keep forever)",
    )
    option(
        "--log-retention-bytes",
        "LOG_RETENTION_BYTES",
        d.log_retention_bytes,
        "retention.bytes per partition of topics that do not set it (-1: no limit)",
    )
    option(
        "--retention-check-ms",
        "RETENTION_CHECK_MS",
        d.retention_check_ms,
        "how often the writer moves log starts past expired data",
    )
    option(
        "--gc-interval-ms",
        "GC_INTERVAL_MS",
        d.gc_interval_ms,
        "how often the writer deletes dead and orphaned objects (0: never)",
    )
    option(
        "--gc-delete-grace-ms",
        "GC_DELETE_GRACE_MS",
        d.gc_delete_grace_ms,
        "how long an unreferenced object stays readable for fetches in flight",
    )
    option(
        "--gc-orphan-grace-ms",
        "GC_ORPHAN_GRACE_MS",
        d.gc_orphan_grace_ms,
        "age after which an uncommitted object is deleted; objects older than half"
        " of it are refused at commit",
    )
    option(
        "--gc-orphan-scan-ms",
        "GC_ORPHAN_SCAN_MS",
        d.gc_orphan_scan_ms,
        "how often the store is listed to find orphans",
    )
    option(
        "--gc-max-deletes-per-s",
        "GC_MAX_DELETES_PER_S",
        d.gc_max_deletes_per_s,
        "upper bound on object deletions per second",
    )
    option(
        "--compaction-interval-ms",
        "COMPACTION_INTERVAL_MS",
        d.compaction_interval_ms,
        "how often the writer merges small objects into one (0: never)",
    )
    option(
        "--compaction-min-age-ms",
        "COMPACTION_MIN_AGE_MS",
        d.compaction_min_age_ms,
        "objects younger than this are left alone",
    )
    option(
        "--compaction-small-object-bytes",
        "COMPACTION_SMALL_OBJECT_BYTES",
        d.compaction_small_object_bytes,
        "objects smaller than this are compacted",
    )
    option(
        "--compaction-target-bytes",
        "COMPACTION_TARGET_BYTES",
        d.compaction_target_bytes,
        "size of the objects compaction writes",
    )
    option(
        "--transaction-max-timeout-ms",
        "TRANSACTION_MAX_TIMEOUT_MS",
        d.transaction_max_timeout_ms,
        "longest transaction.timeout.ms allowed (longer: INVALID_TRANSACTION_TIMEOUT)",
    )
    option(
        "--transactional-id-expiration-ms",
        "TRANSACTIONAL_ID_EXPIRATION_MS",
        d.transactional_id_expiration_ms,
        "a transactional id idle this long is forgotten",
    )
    option(
        "--key-compaction-interval-ms",
        "KEY_COMPACTION_INTERVAL_MS",
        d.key_compaction_interval_ms,
        "how often the writer compacts cleanup.policy=compact topics by key (0: never)",
    )
    option(
        "--key-compaction-map-bytes",
        "KEY_COMPACTION_MAP_BYTES",
        d.key_compaction_map_bytes,
        "memory for key compaction's map of keys (about 120 bytes a key; more keys: more passes)",
    )
    option(
        "--flush-ms",
        "FLUSH_MS",
        d.flush_ms,
        "flush the write buffer once its oldest batch is this old",
    )
    option(
        "--flush-bytes",
        "FLUSH_BYTES",
        d.flush_bytes,
        "flush the write buffer once it holds this many bytes",
    )
    option(
        "--cache-bytes",
        "CACHE_BYTES",
        d.cache_bytes,
        "size of the in-memory cache of object ranges",
    )
    option(
        "--max-frame-bytes", "MAX_FRAME_BYTES", d.max_frame_bytes, "largest request frame accepted"
    )
    option(
        "--max-connections", "MAX_CONNECTIONS", d.max_connections, "connections accepted at once"
    )
    option(
        "--idle-timeout-ms",
        "IDLE_TIMEOUT_MS",
        int(d.idle_timeout_s * 1000),
        "close connections that send nothing for this long (Kafka's connections.max.idle.ms)",
    )
    option(
        "--request-timeout-ms",
        "REQUEST_TIMEOUT_MS",
        int(d.request_timeout_s * 1000),
        "close a connection whose request takes longer than this",
    )
    option(
        "--default-partitions",
        "DEFAULT_PARTITIONS",
        d.default_partitions,
        "partitions of auto-created topics",
    )
    option(
        "--auto-create-topics",
        "AUTO_CREATE_TOPICS",
        "true",
        "create unknown topics on first Metadata request (true/false)",
    )
    option("--node-id", "NODE_ID", d.node_id, "this agent's broker id in Metadata")
    option("--zone", "ZONE", "", "this agent's availability zone (reported as its rack)")
    option("--log-level", "LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    option(
        "--faults",
        "FAULTS",
        "",
        "TESTS ONLY: inject object-store faults, e.g. put_error=0.1,get_error=0.05,"
        "put_lost_ack=0.02,timeout=0.01,timeout_ms=2000,delay_ms=20,seed=7",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    listen_host, listen_port = _host_port(args.listen)
    advertise_host, advertise_port = _host_port(args.advertise or args.listen)
    if advertise_host == "0.0.0.0":
        advertise_host = "127.0.0.1"
    return AgentConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        advertise_host=advertise_host,
        advertise_port=advertise_port,
        data_dir=Path(args.data_dir),
        object_store_url=args.object_store or None,
        coordinator_url=args.coordinator or None,
        agent_id=args.agent_id or "",
        lease_ms=int(args.lease_ms),
        rpc_port=int(args.rpc_port),
        heartbeat_ms=int(args.heartbeat_ms),
        agent_timeout_ms=int(args.agent_timeout_ms),
        log_retention_ms=int(args.log_retention_ms),
        log_retention_bytes=int(args.log_retention_bytes),
        retention_check_ms=int(args.retention_check_ms),
        gc_interval_ms=int(args.gc_interval_ms),
        gc_delete_grace_ms=int(args.gc_delete_grace_ms),
        gc_orphan_grace_ms=int(args.gc_orphan_grace_ms),
        gc_orphan_scan_ms=int(args.gc_orphan_scan_ms),
        gc_max_deletes_per_s=int(args.gc_max_deletes_per_s),
        compaction_interval_ms=int(args.compaction_interval_ms),
        compaction_min_age_ms=int(args.compaction_min_age_ms),
        compaction_small_object_bytes=int(args.compaction_small_object_bytes),
        compaction_target_bytes=int(args.compaction_target_bytes),
        transaction_max_timeout_ms=int(args.transaction_max_timeout_ms),
        transactional_id_expiration_ms=int(args.transactional_id_expiration_ms),
        key_compaction_interval_ms=int(args.key_compaction_interval_ms),
        key_compaction_map_bytes=int(args.key_compaction_map_bytes),
        flush_ms=int(args.flush_ms),
        flush_bytes=int(args.flush_bytes),
        cache_bytes=int(args.cache_bytes),
        max_frame_bytes=int(args.max_frame_bytes),
        max_connections=int(args.max_connections),
        idle_timeout_s=int(args.idle_timeout_ms) / 1000,
        request_timeout_s=int(args.request_timeout_ms) / 1000,
        default_partitions=int(args.default_partitions),
        auto_create_topics=str(args.auto_create_topics).lower() in ("1", "true", "yes", "on"),
        node_id=int(args.node_id),
        zone=args.zone or "",
        faults=args.faults or "",
    )


def tune_allocator() -> None:
    """Keep large buffers in glibc's heap instead of fresh mmaps.

    Produce batches and fetch responses are often around a megabyte. glibc
    serves such allocations with mmap and returns them on free, so every one
    page-faults anew: decoding a 1 MiB batch ran at half speed. Raising the mmap
    and trim thresholds lets freed memory be reused (memory stays bounded by the
    agent's own limits). A no-op where glibc's mallopt is absent.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    mallopt(m_trim_threshold, 512 * 1024 * 1024)


def tune_garbage_collector() -> None:
    """Collect the young generation less often, and leave start-up objects out.

    Every commit allocates thousands of short-lived tuples; with the default
    threshold (700) the collector runs hundreds of times a second and its older
    generations, which hold the caches, are walked often enough to stall the
    event loop for tens of milliseconds. Reference counting frees nearly all of
    these objects anyway: the collector only has cycles to find.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(config: AgentConfig) -> None:
    agent = Agent(config)
    await agent.start()
    address = f"{config.advertise_host}:{config.advertise_port}"
    log.info("driftlog agent listening on %s:%d", config.listen_host, config.listen_port)
    print(
        f"Driftlog is up. Bootstrap servers: {address}\n"
        f"  produce: echo 'hello' | kcat -P -b {address} -t demo\n"
        f"  consume: kcat -C -b {address} -t demo -o beginning -e",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: flushing buffered batches and answering producers")
    await agent.drain_and_stop()
    agent.print_stats()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
        if config.faults:
            FaultConfig.parse(config.faults)
    except (argparse.ArgumentTypeError, ValueError) as e:
        sys.exit(f"driftlog: {e}")
    tune_allocator()
    tune_garbage_collector()
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
