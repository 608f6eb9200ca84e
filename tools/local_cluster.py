"""`make cluster`: a local Driftlog cluster on loopback, in the foreground until Ctrl-C.

Starts a throwaway PostgreSQL 15 (Debian's, run as the postgres user in a
temporary directory), an S3-compatible endpoint (moto's server) with a bucket,
and three agents in two zones sharing both. Prints the bootstrap addresses and
a client line per zone; Ctrl-C (or SIGTERM) stops the agents, then the services,
and deletes the temporary data.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from services import MotoServer, PostgresServer, wait_for_port

BUCKET = "driftlog"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zones", default="a,a,b", help="one zone per agent")
    parser.add_argument("--base-port", type=int, default=9092, help="first agent's port")
    args = parser.parse_args()
    zones = args.zones.split(",")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    root = Path(tempfile.mkdtemp(prefix="driftlog-cluster-"))
    driftlog = Path(sys.executable).parent / "driftlog"
    agents: list[subprocess.Popen[bytes]] = []
    with PostgresServer() as pg, MotoServer() as moto:
        moto.create_bucket(BUCKET)
        env = {**os.environ, **moto.env()}
        addresses = []
        try:
            for index, zone in enumerate(zones, start=1):
                port = args.base_port + index - 1
                log = (root / f"agent-{index}.log").open("wb")
                agents.append(
                    subprocess.Popen(
                        [str(driftlog), "serve", "--listen", f"127.0.0.1:{port}",
                         "--data-dir", str(root / f"agent-{index}"),
                         "--coordinator", pg.dsn, "--object-store", f"s3://{BUCKET}",
                         "--node-id", str(index), "--agent-id", f"agent-{index}",
                         "--zone", zone],
                        env=env, stdout=log, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
                wait_for_port(port)
                addresses.append((f"127.0.0.1:{port}", zone))
            bootstrap = ",".join(a for a, _ in addresses)
            print(f"Driftlog cluster up: {len(agents)} agents")
            for (address, zone), process in zip(addresses, agents, strict=True):
                print(f"  agent {address}  zone {zone}  pid {process.pid}")
            print(f"  coordinator: {pg.dsn}")
            print(f"  object store: s3://{BUCKET} at {moto.endpoint}")
            print(f"  logs: {root}/agent-N.log")
            print(f"Bootstrap servers: {bootstrap}")
            for zone in sorted(set(zones)):
                print(
                    f"  zone {zone}: echo hi | kcat -P -b {bootstrap} -t demo"
                    f" -X client.id=driftlog_zone={zone}"
                )
            print(f"  consume: kcat -C -b {bootstrap} -t demo -o beginning -e")
            print("Stop it with Ctrl-C.", flush=True)
            while not stop.is_set():
                if any(p.poll() is not None for p in agents):
                    print("an agent exited; see its log", file=sys.stderr)
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            for process in agents:
                process.send_signal(signal.SIGTERM)
            for process in agents:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
            print("cluster stopped", flush=True)


if __name__ == "__main__":
    main()
