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
from typing import Any

import uvloop

from driftlog.agent import Agent
from driftlog.cli import options, status, users
from driftlog.config import AgentConfig
from driftlog.coordinator.core.node_ids import NodeIdTaken
from driftlog.storage.faulty import FaultConfig

log = logging.getLogger("driftlog")


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
    options.add_options(serve, os.environ)
    listing = commands.add_parser(
        "options",
        help="list the options of serve",
        description="List the options of serve, their environment variables and defaults.",
    )
    listing.add_argument(
        "--markdown", action="store_true", help="as the Markdown table in README.md"
    )
    users.add_commands(commands)
    status.add_command(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The agent's config from `serve`'s parsed arguments; ValueError on a bad value."""
    values: dict[str, Any] = options.config_values(args)
    config = AgentConfig(**values)
    if not config.clustered and "writer" not in config.roles:
        # Alone on its SQLite file, nobody else could ever take the writer lease.
        raise ValueError("--roles: an embedded agent (no --coordinator) needs the writer role")
    return config


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
    try:
        # Listeners, TLS files and the cluster secret are checked here.
        agent = Agent(config)
    except (ValueError, OSError) as e:
        sys.exit(f"driftlog: {e}")
    try:
        await agent.start()
    except NodeIdTaken as e:
        sys.exit(f"driftlog: {e}")
    for listener in agent.listeners:
        log.info(
            "listener %s (%s) on %s:%d, advertised as %s:%d",
            listener.name,
            listener.protocol,
            listener.host,
            listener.port,
            listener.advertised_host,
            listener.advertised_port,
        )
    first = agent.listeners[0]
    address = f"{first.advertised_host}:{first.advertised_port}"
    if first.protocol == "PLAINTEXT":
        print(
            f"Driftlog is up. Bootstrap servers: {address}\n"
            f"  produce: echo 'hello' | kcat -P -b {address} -t demo\n"
            f"  consume: kcat -C -b {address} -t demo -o beginning -e",
            flush=True,
        )
    else:
        print(f"Driftlog is up. Bootstrap servers: {address} ({first.protocol})", flush=True)
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
    if args.command == "options":
        listing = options.markdown_table() if args.markdown else options.plain_listing()
        sys.stdout.write(listing)
        return
    if args.command == "status":
        try:
            print(status.run(args))
        except (ValueError, OSError) as e:
            sys.exit(f"driftlog: {e}")
        return
    if args.command == "users":
        try:
            print(users.run(args))
        except (ValueError, OSError) as e:
            sys.exit(f"driftlog: {e}")
        return
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
        if config.faults:
            FaultConfig.parse(config.faults)
    except ValueError as e:
        sys.exit(f"driftlog: {e}")
    tune_allocator()
    tune_garbage_collector()
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
