"""Produce and consume throughput over SASL_SSL (SCRAM-SHA-512) against PLAINTEXT.

What it measures
----------------
One Driftlog agent (embedded defaults: local-directory store, SQLite) started as
``python -m driftlog.cli.main serve`` with two listeners on loopback,
``PLAINTEXT://127.0.0.1:P1,SASL_SSL://127.0.0.1:P2``, a server certificate for
127.0.0.1 from a throwaway CA (tests/pki.py), and one SCRAM user written to its
store first with ``driftlog users set NAME --password-file F --data-dir DIR``.

Then ``--rounds`` rounds, each a PLAINTEXT run followed by a SASL_SSL run on the
same workload, every run on a fresh topic of ``--partitions`` partitions (created
over PLAINTEXT, not timed), after an untimed warm-up of ``--warmup-records``
records produced and consumed over each listener:

1. produce: a confluent-kafka Producer (acks=all, linger.ms=5, no compression)
   sends ``--records`` records of ``--size`` random bytes, partitions round-robin;
   the clock runs from the first ``produce()`` (so the connection and, over
   SASL_SSL, the TLS handshake and SCRAM login are in it) until ``flush()`` has
   returned and every record is acknowledged.
2. consume: a confluent-kafka Consumer (fresh group, ``assign()`` from the earliest
   offset, ``fetch.queue.backoff.ms`` 10: with librdkafka's default of 1 s, a run in
   which this process fell behind and the client's queue filled stalls for 0.5-1 s,
   whatever the listener) reads every record back, checking counts per partition
   and value sizes. ``cons MB/s`` is over the window from the first record to the
   last, as bench/produce_consume.py reports it; ``cons 1st s`` is the time from
   ``assign()`` to the first record (connections, login, offset lookup,
   librdkafka's own start of about 0.5 s) and ``all MB/s`` counts it in.

The SASL_SSL client verifies the agent's certificate (CA file, host name check).
Per run the agent's CPU seconds in each phase (user + system from
``/proc/PID/stat``, all its threads), those of its event-loop thread alone
(``/proc/PID/task/PID/stat``: the listener, TLS and request decoding run there, the
object store's writes in other threads) and this process's (the client: librdkafka's
threads do the TLS and the produce/consume work) are shown, so a run slowed by
other work on the machine can be told from one that spent more CPU. The agent and
the client share the machine's cores.

Printed: a table of every run, then per round and as the median of the rounds the
ratio SASL_SSL / PLAINTEXT of produce and consume MB/s (target: at least 0.7), and
the ratio of the CPU seconds the same work took (the agent's event loop, the agent,
and agent + client). On a small shared machine the MB/s ratios move with whatever
else runs (one round's ratio can be far from the median); the CPU ratios move less,
and the inverse of agent + client's is the throughput ratio to expect where CPU is
the limit.

    .venv/bin/python bench/security.py                         # 300k x 1 KiB, 3 rounds
    .venv/bin/python bench/security.py --records 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pki import make_pki
from produce_consume import (
    HOST,
    MB,
    BenchError,
    Broker,
    free_port,
    tail,
    wait_ready_and_create_topic,
)

USER = "bench"
MECHANISM = "SCRAM-SHA-512"
LISTENERS = ("PLAINTEXT", "SASL_SSL")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- helpers


def process_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process, all its threads (``/proc/PID/stat``), or
    of its thread ``tid`` alone (``/proc/PID/task/TID/stat``; the main thread's is PID)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def clean_env() -> dict[str, str]:
    # DRIFTLOG_* variables set option defaults; cleared so the flags are the configuration.
    return {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOG_")}


def driftlog_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "driftlog.cli.main", *args]


def set_user(data_dir: Path, name: str, password: str) -> None:
    password_file = data_dir.parent / f"password-{name}.txt"
    password_file.write_text(password + "\n")
    argv = driftlog_cli("users", "set", name, "--password-file", str(password_file))
    argv += ["--data-dir", str(data_dir)]
    proc = subprocess.run(argv, capture_output=True, env=clean_env(), timeout=120, check=False)
    if proc.returncode != 0:
        raise BenchError(f"users set failed: {proc.stderr.decode(errors='replace')}")


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing accepts on port {port} after {timeout:g}s") from None
            time.sleep(0.05)


def tls_session(port: int, ca_file: Path) -> str:
    """The protocol and cipher a verifying client negotiates with the listener."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0] if cipher else '?'}"


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    records: int
    payload_bytes: int
    seconds: float  # produce: first produce() to flush; consume: first record to last
    agent_cpu_s: float
    client_cpu_s: float
    agent_loop_cpu_s: float  # the agent's main thread, where its event loop runs
    first_record_s: float = 0.0  # consume: assign() to the first record

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / MB / self.seconds if self.seconds > 0 else float("nan")

    @property
    def rec_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")

    @property
    def all_mb_s(self) -> float:
        total = self.seconds + self.first_record_s
        return self.payload_bytes / MB / total if total > 0 else float("nan")


def expected_counts(records: int, partitions: int) -> dict[int, int]:
    """Records per partition when record i goes to partition i % partitions."""
    base, extra = divmod(records, partitions)
    return {p: base + (1 if p < extra else 0) for p in range(partitions) if base or p < extra}


def produce(
    conf: dict[str, Any],
    topic: str,
    records: int,
    size: int,
    partitions: int,
    timeout: float,
    agent_pid: int,
    *,
    linger_ms: int = 5,
) -> Phase:
    """Send ``records`` records round-robin over the partitions; every one acknowledged."""
    payloads = [os.urandom(size) for _ in range(16)]
    delivered = 0
    failed = 0
    first_error: str | None = None

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal delivered, failed, first_error
        if err is None:
            delivered += 1
        else:
            failed += 1
            first_error = first_error or str(err)

    producer = Producer(
        {
            **conf,
            "acks": "all",
            "linger.ms": linger_ms,
            "compression.type": "none",
            "message.timeout.ms": max(1000, int(timeout * 1000)),
            "on_delivery": on_delivery,
        }
    )
    send = producer.produce
    poll = producer.poll
    agent_cpu = process_cpu_seconds(agent_pid)
    loop_cpu = process_cpu_seconds(agent_pid, agent_pid)
    client_cpu = time.process_time()
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    sent = 0
    try:
        while sent < records:
            try:
                send(topic, payloads[sent & 15], partition=sent % partitions)
            except BufferError:
                poll(0.005)  # the client's queue is full: let deliveries drain
                continue
            sent += 1
            if sent & 255 == 0:
                poll(0)
                if sent & 16383 == 0 and time.monotonic() > deadline:
                    raise BenchError(f"produce timed out: {sent}/{records} sent")
            if failed:
                break
        while delivered + failed < sent:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"produce timed out: {delivered}/{records} acknowledged")
            producer.flush(min(1.0, left))
    except BaseException:
        producer.purge()
        producer.poll(0)
        raise
    seconds = time.perf_counter() - start
    agent_cpu = process_cpu_seconds(agent_pid) - agent_cpu
    loop_cpu = process_cpu_seconds(agent_pid, agent_pid) - loop_cpu
    client_cpu = time.process_time() - client_cpu
    if failed:
        raise BenchError(f"{failed} deliveries failed; first: {first_error}")
    return Phase(delivered, delivered * size, seconds, agent_cpu, client_cpu, loop_cpu)


def consume(
    conf: dict[str, Any],
    topic: str,
    expected: dict[int, int],
    size: int,
    timeout: float,
    agent_pid: int,
) -> Phase:
    """Read every partition from the start until the produced records are all back."""
    total = sum(expected.values())
    consumer = Consumer(
        {
            **conf,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # When this process falls behind, librdkafka's local queue fills and it stops
            # fetching for fetch.queue.backoff.ms (1 s by default): runs would then differ
            # by whether the queue happened to fill, not by the listener.
            "fetch.queue.backoff.ms": 10,
        }
    )
    counts: dict[int, int] = {}
    next_offset: dict[int, int] = {}
    got = got_bytes = bad_sizes = 0
    first_error: str | None = None
    first_at = last_at = 0.0
    agent_cpu = process_cpu_seconds(agent_pid)
    loop_cpu = process_cpu_seconds(agent_pid, agent_pid)
    client_cpu = time.process_time()
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(expected)])
        while got < total:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"consume timed out: {got}/{total} records"
                    + (f"; first error: {first_error}" if first_error else "")
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF and first_error is None:
                        first_error = str(err)
                    continue
                part, offset = msg.partition(), msg.offset()
                assert part is not None and offset is not None
                if offset < next_offset.get(part, 0):
                    continue  # a duplicate: not counted
                next_offset[part] = offset + 1
                value = msg.value()
                n = len(value) if value is not None else 0
                bad_sizes += n != size
                counts[part] = counts.get(part, 0) + 1
                if not got:
                    first_at = time.perf_counter()
                got += 1
                got_bytes += n
        last_at = time.perf_counter()
    finally:
        agent_cpu = process_cpu_seconds(agent_pid) - agent_cpu
        loop_cpu = process_cpu_seconds(agent_pid, agent_pid) - loop_cpu
        client_cpu = time.process_time() - client_cpu
        consumer.close()
    if counts != expected:
        raise BenchError(f"consumed per-partition counts {counts} != produced {expected}")
    if bad_sizes:
        raise BenchError(f"{bad_sizes} consumed records had a value size other than {size}")
    return Phase(
        got, got_bytes, last_at - first_at, agent_cpu, client_cpu, loop_cpu, first_at - start
    )


# --------------------------------------------------------------------------- driver


@dataclass
class Run:
    round: int
    listener: str
    produce: Phase
    consume: Phase


def client_conf(listener: str, port: int, ca_file: Path, password: str) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": f"{HOST}:{port}", "security.protocol": listener}
    if listener == "SASL_SSL":
        conf |= {
            "ssl.ca.location": str(ca_file),
            "ssl.endpoint.identification.algorithm": "https",
            "sasl.mechanism": MECHANISM,
            "sasl.username": USER,
            "sasl.password": password,
        }
    return conf


def render_table(runs: list[Run]) -> str:
    columns = (
        ("round", "{}", lambda r: r.round),
        ("listener", "{}", lambda r: r.listener),
        ("prod MB/s", "{:.1f}", lambda r: r.produce.mb_s),
        ("prod rec/s", "{:,.0f}", lambda r: r.produce.rec_s),
        ("cons MB/s", "{:.1f}", lambda r: r.consume.mb_s),
        ("cons rec/s", "{:,.0f}", lambda r: r.consume.rec_s),
        ("cons 1st s", "{:.2f}", lambda r: r.consume.first_record_s),
        ("all MB/s", "{:.1f}", lambda r: r.consume.all_mb_s),
        ("agent CPU s prod/cons", "{}", lambda r: cpu_pair(r, "agent_cpu_s")),
        ("agent loop CPU s prod/cons", "{}", lambda r: cpu_pair(r, "agent_loop_cpu_s")),
        ("client CPU s prod/cons", "{}", lambda r: cpu_pair(r, "client_cpu_s")),
    )
    cells = [[title for title, _, _ in columns]]
    cells += [[fmt.format(get(run)) for _, fmt, get in columns] for run in runs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        first = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        rest = [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(first + rest))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_pair(run: Run, attr: str) -> str:
    return f"{getattr(run.produce, attr):.2f} / {getattr(run.consume, attr):.2f}"


RATIO_KEYS = (
    "produce",
    "consume",
    "consume_all",
    "loop_cpu_produce",
    "loop_cpu_consume",
    "agent_cpu_produce",
    "agent_cpu_consume",
    "cpu_produce",
    "cpu_consume",
)


def ratios(runs: list[Run]) -> list[dict[str, float]]:
    """Per round, SASL_SSL / PLAINTEXT of: produce MB/s, consume MB/s, consume MB/s with
    the consumer's start; the CPU seconds of the agent's event-loop thread, of the
    agent and of agent + client in produce and consume (each run does the same work,
    so these are per MB too)."""
    out = []
    by_round: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.listener] = run
    for n, pair in sorted(by_round.items()):
        if len(pair) != 2:
            continue
        plain, secure = pair["PLAINTEXT"], pair["SASL_SSL"]
        values = (
            secure.produce.mb_s / plain.produce.mb_s,
            secure.consume.mb_s / plain.consume.mb_s,
            secure.consume.all_mb_s / plain.consume.all_mb_s,
            _ratio(secure.produce.agent_loop_cpu_s, plain.produce.agent_loop_cpu_s),
            _ratio(secure.consume.agent_loop_cpu_s, plain.consume.agent_loop_cpu_s),
            _ratio(secure.produce.agent_cpu_s, plain.produce.agent_cpu_s),
            _ratio(secure.consume.agent_cpu_s, plain.consume.agent_cpu_s),
            _ratio(_cpu(secure.produce), _cpu(plain.produce)),
            _ratio(_cpu(secure.consume), _cpu(plain.consume)),
        )
        out.append({"round": n, **dict(zip(RATIO_KEYS, values, strict=True))})
    return out


def _cpu(phase: Phase) -> float:
    return phase.agent_cpu_s + phase.client_cpu_s


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Produce and consume MB/s over SASL_SSL (SCRAM-SHA-512) against PLAINTEXT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--records", type=int, default=300_000, help="records per run")
    ap.add_argument("--size", type=int, default=1024, help="record value size in bytes")
    ap.add_argument("--partitions", type=int, default=6, help="partitions of each topic")
    ap.add_argument("--rounds", type=int, default=3, help="PLAINTEXT + SASL_SSL runs each")
    ap.add_argument(
        "--warmup-records", type=int, default=20_000, help="untimed records per listener first"
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per phase")
    ap.add_argument("--startup-timeout", type=float, default=60, help="seconds to accept")
    ap.add_argument("--stop-timeout", type=float, default=30, help="SIGTERM grace seconds")
    ap.add_argument(
        "--driftlog-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for driftlog serve, repeatable (e.g. --driftlog-arg=--flush-ms=20)",
    )
    ap.add_argument("--keep-data", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if min(args.records, args.size, args.partitions, args.rounds) <= 0 or args.warmup_records < 0:
        ap.error("--records, --size, --partitions and --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-security-"))
    runs: list[Run] = []
    error: str | None = None
    broker: Broker | None = None
    header = ""
    try:
        pki = make_pki(workdir / "pki")
        data_dir = workdir / "data"
        data_dir.mkdir()
        password = uuid.uuid4().hex
        set_user(data_dir, USER, password)
        ports = {"PLAINTEXT": free_port(), "SASL_SSL": free_port()}
        listeners = ",".join(f"{name}://{HOST}:{port}" for name, port in ports.items())
        argv_ = driftlog_cli("serve", "--listeners", listeners, "--data-dir", str(data_dir))
        argv_ += ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
        argv_ += args.driftlog_arg
        broker = Broker("driftlog", argv_, ports["PLAINTEXT"], workdir, clean_env())
        print(f"starting: {' '.join(argv_)}", file=sys.stderr, flush=True)
        broker.start(args.startup_timeout)
        wait_for_port(ports["SASL_SSL"], args.startup_timeout)
        assert broker.proc is not None
        pid = broker.proc.pid
        session = tls_session(ports["SASL_SSL"], pki.ca_cert)
        header = (
            f"{args.records:,} records x {args.size} B, {args.partitions} partitions, "
            f"acks=all linger.ms=5, confluent-kafka {confluent_kafka.version()} (librdkafka "
            f"{confluent_kafka.libversion()[0]}); "
            f"SASL_SSL: {MECHANISM}, {session}; load average at start "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
        )
        print(header, file=sys.stderr, flush=True)
        bootstrap = f"{HOST}:{ports['PLAINTEXT']}"
        expected = expected_counts(args.records, args.partitions)
        if args.warmup_records:
            # First requests of a kind cost more (imports, caches, encoders): not timed,
            # and over both listeners so neither run of round 1 pays for them.
            for listener in LISTENERS:
                topic = f"bench-security-warmup-{uuid.uuid4().hex[:8]}"
                wait_ready_and_create_topic(bootstrap, topic, args.partitions, args.timeout)
                conf = client_conf(listener, ports[listener], pki.ca_cert, password)
                n = args.warmup_records
                produce(conf, topic, n, args.size, args.partitions, args.timeout, pid)
                warm = expected_counts(n, args.partitions)
                consume(conf, topic, warm, args.size, args.timeout, pid)
        for n in range(1, args.rounds + 1):
            for listener in LISTENERS:
                topic = f"bench-security-{listener.lower()}-{uuid.uuid4().hex[:8]}"
                wait_ready_and_create_topic(bootstrap, topic, args.partitions, args.timeout)
                conf = client_conf(listener, ports[listener], pki.ca_cert, password)
                produced = produce(
                    conf, topic, args.records, args.size, args.partitions, args.timeout, pid
                )
                consumed = consume(conf, topic, expected, args.size, args.timeout, pid)
                run = Run(n, listener, produced, consumed)
                runs.append(run)
                print(
                    f"[round {n} {listener}] produce {produced.mb_s:.1f} MB/s, "
                    f"consume {consumed.mb_s:.1f} MB/s",
                    file=sys.stderr,
                    flush=True,
                )
    except BenchError as e:
        error = str(e)
    finally:
        if broker is not None:
            broker.stop(args.stop_timeout)
            if error:
                print(tail(broker.stderr_path), file=sys.stderr)
        if args.keep_data:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if runs:
        print()
        print(header)
        print(render_table(runs))
        per_round = ratios(runs)
        print()
        print("SASL_SSL / PLAINTEXT (target: at least 0.7)")
        for r in per_round:
            print(
                f"  round {r['round']:.0f}: produce {r['produce']:.2f}, consume {r['consume']:.2f}"
                f" (with the consumer's start: {r['consume_all']:.2f})"
            )
        if per_round:
            med = {k: statistics.median(r[k] for r in per_round) for k in RATIO_KEYS}
            print(
                f"  median:  produce {med['produce']:.2f}, consume {med['consume']:.2f}"
                f" (with the consumer's start: {med['consume_all']:.2f})"
            )
            print(
                "CPU seconds for the same work, SASL_SSL / PLAINTEXT (median of the rounds):"
                f" agent's event loop produce {med['loop_cpu_produce']:.2f}, consume"
                f" {med['loop_cpu_consume']:.2f}; agent produce {med['agent_cpu_produce']:.2f},"
                f" consume {med['agent_cpu_consume']:.2f}; agent + client produce"
                f" {med['cpu_produce']:.2f}, consume {med['cpu_consume']:.2f}"
            )
            print(
                "  so where the machine's CPU is the limit (agent and client share it),"
                f" throughput SASL_SSL / PLAINTEXT = produce {1 / med['cpu_produce']:.2f},"
                f" consume {1 / med['cpu_consume']:.2f}"
            )
    if error:
        print(f"FAILED: {error}")
    if args.json:
        report = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "runs": [asdict(r) for r in runs],
            "ratios": ratios(runs),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
