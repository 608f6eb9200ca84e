"""`driftlog status`: the cluster as its coordinator store sees it.

Agents (live within the agent timeout) with their zones, node ids and listeners;
the writer and its lease epoch; topics and partitions with their offsets; stored
bytes, and live and dead objects. Read only: it opens the same store the agents
use (`--data-dir` / `--coordinator`) and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from driftlog.agent import open_backend
from driftlog.config import AgentConfig

WRITER_SHARD = 0


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="print the cluster: agents, writer, topics, stored bytes and objects",
        description="Print the cluster as the coordinator store sees it (read only).",
    )
    status.add_argument("--data-dir", default=str(AgentConfig().data_dir), help="as serve's")
    status.add_argument("--coordinator", default="", help="as serve's (postgresql://...)")
    status.add_argument(
        "--agent-timeout-ms",
        type=int,
        default=AgentConfig().agent_timeout_ms,
        help="agents silent longer than this are not listed (as serve's)",
    )


def run(args: argparse.Namespace) -> str:
    return asyncio.run(_status(args))


async def _status(args: argparse.Namespace) -> str:
    config = AgentConfig(data_dir=Path(args.data_dir), coordinator_url=args.coordinator or None)
    if config.coordinator_url is None and not config.sqlite_path.exists():
        raise ValueError(f"no coordinator database in {config.data_dir}")
    backend = open_backend(config)
    await backend.open()
    try:
        now_ms = int(time.time() * 1000)
        cluster_id = await backend.cluster_id("")
        agents = await backend.live_agents(args.agent_timeout_ms, now_ms)
        lease = await backend.read_lease(WRITER_SHARD)
        topics = await backend.load_topics()
        offsets = await backend.load_partition_offsets()
        counts = await backend.object_counts()
    finally:
        await backend.close()
    lines = [f"cluster {cluster_id}", f"agents ({len(agents)} live):"]
    for agent in sorted(agents, key=lambda a: a.node_id):
        listeners = ", ".join(f"{name} {host}:{port}" for name, host, port in agent.listeners)
        lines.append(
            f"  node {agent.node_id}  {agent.agent_id}  zone {agent.zone or '-'}  "
            f"{listeners or f'{agent.host}:{agent.port}'}  roles {','.join(sorted(agent.roles))}"
            + (f"  group {agent.group}" if agent.group else "")
        )
    if lease is None:
        lines.append("writer: none yet")
    else:
        state = "live" if lease.expires_ms > now_ms else "expired"
        lines.append(
            f"writer: {lease.holder} (epoch {lease.epoch}, lease {state}, RPC {lease.address})"
        )
    lines.append(f"topics ({len(topics)}):")
    for topic in sorted(topics, key=lambda t: t.name):
        parts = [offsets.get((topic.topic_id, p)) for p in range(topic.partition_count)]
        records = sum(o.high_watermark - o.log_start_offset for o in parts if o is not None)
        lines.append(
            f"  {topic.name}  {topic.partition_count} partitions  {records} offsets retained"
        )
        for p, o in enumerate(parts):
            if o is not None:
                lines.append(f"    {p}: log start {o.log_start_offset}, end {o.high_watermark}")
    lines.append(
        f"objects: {counts.live_objects} live ({counts.live_bytes} bytes stored), "
        f"{counts.dead_objects} dead awaiting deletion, {counts.deleted_objects} deleted"
    )
    return "\n".join(lines)
