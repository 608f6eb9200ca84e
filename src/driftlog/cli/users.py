"""`driftlog users`: SCRAM credentials in the coordinator store, for the first
administrator (before any client can authenticate to call AlterUserScramCredentials).

It opens the same store the agents use (`--data-dir` / `--coordinator`); agents
pick a change up within a heartbeat. Passwords are read from a file, never from
the command line (which other users of the host can see).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from driftlog.agent import open_backend
from driftlog.config import AgentConfig
from driftlog.coordinator.engines.backend import SCRAM_MECHANISMS
from driftlog.security.credentials import MIN_ITERATIONS, secret_from_password


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = commands.add_parser(
        "users",
        help="set, delete or list SCRAM users in the coordinator store",
        description="Manage the SCRAM-SHA-256/512 credentials agents check logins against "
        "(PLAIN logins are checked against them too).",
    )
    actions = users.add_subparsers(dest="action", required=True)
    for name, help_ in (
        ("set", "create a user or change its password (both SCRAM mechanisms)"),
        ("delete", "delete a user's credentials"),
        ("list", "list users and their mechanisms"),
    ):
        action = actions.add_parser(name, help=help_)
        if name != "list":
            action.add_argument("name", help="user name (the principal is User:NAME)")
        if name == "set":
            action.add_argument(
                "--password-file",
                required=True,
                type=Path,
                help="file whose first line is the password",
            )
            action.add_argument(
                "--iterations", type=int, default=MIN_ITERATIONS, help="PBKDF2 iterations"
            )
        action.add_argument("--data-dir", default=str(AgentConfig().data_dir), help="as serve's")
        action.add_argument("--coordinator", default="", help="as serve's (postgresql://...)")


def run(args: argparse.Namespace) -> str:
    """Do what `args` asks; returns what to print. ValueError for a bad request."""
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> str:
    config = AgentConfig(data_dir=Path(args.data_dir), coordinator_url=args.coordinator or None)
    if config.coordinator_url is None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    backend = open_backend(config)
    await backend.open()
    try:
        if args.action == "set":
            lines = args.password_file.read_text().splitlines()
            password = lines[0] if lines else ""
            if not password:
                raise ValueError(f"{args.password_file}: no password on its first line")
            if not 4096 <= args.iterations <= 16384:
                raise ValueError("--iterations: Kafka accepts 4096 to 16384")
            secrets = [
                secret_from_password(args.name, mechanism, password, args.iterations)
                for mechanism in SCRAM_MECHANISMS
            ]
            await backend.put_scram_credentials(secrets, [])
            return f"set {args.name} ({', '.join(SCRAM_MECHANISMS)})"
        if args.action == "delete":
            await backend.put_scram_credentials([], [(args.name, m) for m in SCRAM_MECHANISMS])
            return f"deleted {args.name}"
        by_user: dict[str, list[str]] = {}
        for c in await backend.load_scram_credentials():
            by_user.setdefault(c.user_name, []).append(f"{c.mechanism} ({c.iterations})")
        return "\n".join(f"{user}: {', '.join(sorted(m))}" for user, m in sorted(by_user.items()))
    finally:
        await backend.close()
