"""Raw SASL over a socket (optionally TLS) for tests that must drive the exchange by hand,
and `driftlog users` for the credentials agents check logins against.

`SaslClient` is tests/raw_client.py's RawClient with a TLS option and the SASL steps:
SaslHandshake (v0 or v1), SaslAuthenticate (v0-v2) carrying PLAIN or SCRAM tokens
(scramp's RFC 5802 client), and SaslHandshake v0's unframed tokens.
`SecureAgents` starts agents with secure listeners and the test PKI's certificate.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from conftest import DRIFTLOG, AgentProcess
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader
from pki import Pki
from raw_client import RawClient
from scramp import ScramClient
from services import free_port, wait_for_port


def set_user(data_dir: Path, name: str, password: str) -> None:
    """`driftlog users set NAME --password-file F --data-dir DIR` (the agents' store)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir.parent / f"password-{name}.txt"
    password_file.write_text(password + "\n")
    _users(data_dir, "set", name, "--password-file", str(password_file))


def delete_user(data_dir: Path, name: str) -> None:
    _users(data_dir, "delete", name)


def list_users(data_dir: Path) -> str:
    return _users(data_dir, "list")


def _users(data_dir: Path, *args: str) -> str:
    proc = subprocess.run(
        [*DRIFTLOG, "users", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"users {args}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode()


def plain_token(user: str, password: str, authzid: str = "") -> bytes:
    """RFC 4616: authzid NUL user NUL password."""
    return f"{authzid}\x00{user}\x00{password}".encode()


class SaslClient(RawClient):
    """A raw Kafka connection that can authenticate; `ca_file` turns TLS on (verified)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        ca_file: Path | None = None,
        cert: tuple[Path, Path] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(bootstrap, timeout_s)
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            if cert is not None:
                context.load_cert_chain(str(cert[0]), str(cert[1]))
            host = bootstrap.rsplit(":", 1)[0]
            self.sock = context.wrap_socket(self.sock, server_hostname=host)

    def _recv_exactly(self, n: int) -> bytes | None:
        try:
            return super()._recv_exactly(n)
        except (ssl.SSLError, BrokenPipeError, ConnectionAbortedError):
            return None

    # SASL steps -----------------------------------------------------------------
    def handshake(self, mechanism: str, version: int = 1) -> Any:
        if version == 0:
            from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as V0

            return self.request(V0(mechanism=mechanism))
        from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest as V1

        return self.request(V1(mechanism=mechanism))

    def authenticate(self, token: bytes, version: int = 1) -> Any:
        return self.request(self.authenticate_request(token, version))

    def try_authenticate(self, token: bytes, version: int = 1) -> Any | None:
        """SaslAuthenticate's response, or None when the agent closed the connection."""
        request = self.authenticate_request(token, version)
        try:
            self.send_bytes(self.encode(request))
        except OSError:
            return None
        frame = self.recv_frame()
        if frame is None:
            return None
        schema = load_response_schema(request.__api_key__, request.__version__)
        _, used = entity_reader(schema.__header_schema__)(frame, 0)
        body, _ = entity_reader(schema)(frame, used)
        return body

    @staticmethod
    def authenticate_request(token: bytes, version: int = 1) -> Any:
        request: Any
        if version == 0:
            from kio.schema.sasl_authenticate.v0.request import SaslAuthenticateRequest as A0

            request = A0(auth_bytes=token)
        elif version == 1:
            from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest as A1

            request = A1(auth_bytes=token)
        else:
            from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest as A2

            request = A2(auth_bytes=token)
        return request

    def login_plain(self, user: str, password: str, version: int = 1) -> Any:
        """Handshake v1 + one SaslAuthenticate; returns its response (check error_code)."""
        shake = self.handshake("PLAIN")
        assert shake.error_code == ErrorCode.none, shake
        return self.authenticate(plain_token(user, password), version)

    def login_scram(self, mechanism: str, user: str, password: str, version: int = 1) -> Any:
        """Handshake v1 + SCRAM's two SaslAuthenticate rounds; returns the last response
        (the first round's when it already failed). The server's final message is checked
        (it proves the server knew the credential)."""
        shake = self.handshake(mechanism)
        assert shake.error_code == ErrorCode.none, shake
        scram = ScramClient([mechanism], user, password)
        first = self.authenticate(scram.get_client_first().encode(), version)
        if first.error_code != ErrorCode.none:
            return first
        scram.set_server_first(bytes(first.auth_bytes).decode())
        final = self.authenticate(scram.get_client_final().encode(), version)
        if final.error_code == ErrorCode.none:
            scram.set_server_final(bytes(final.auth_bytes).decode())
        return final

    def login_plain_unframed(self, user: str, password: str) -> bytes | None:
        """SaslHandshake v0 then the PLAIN token as a bare size-prefixed frame (the path
        of pre-KIP-152 clients); returns the server's token, or None if it closed."""
        shake = self.handshake("PLAIN", version=0)
        assert shake.error_code == ErrorCode.none, shake
        token = plain_token(user, password)
        self.send_bytes(len(token).to_bytes(4, "big") + token)
        return self.recv_frame()

    # Requests after (or instead of) authentication --------------------------------
    @staticmethod
    def metadata_request(topics: tuple[str, ...] = (), *, auto_create: bool = False) -> Any:
        """Metadata v12 for `topics` (none: every topic)."""
        from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
        from kio.schema.types import TopicName

        return MetadataRequest(
            topics=tuple(MetadataRequestTopic(name=TopicName(t), topic_id=None) for t in topics)
            or None,
            allow_auto_topic_creation=auto_create,
            include_topic_authorized_operations=False,
        )

    def metadata(self, topics: tuple[str, ...] = (), *, auto_create: bool = False) -> Any:
        return self.request(self.metadata_request(topics, auto_create=auto_create))

    def api_versions(self) -> Any:
        from kio.schema.api_versions.v3.request import ApiVersionsRequest

        return self.request(
            ApiVersionsRequest(client_software_name="sasl-test", client_software_version="1")
        )

    def closes_on(self, request: Any) -> bool:
        """Send `request`; True when the agent closes the connection instead of answering."""
        try:
            self.send_bytes(self.encode(request))
        except OSError:
            return True
        return self.is_closed_by_peer()


def lifetime_ms(response: Any) -> int:
    """A SaslAuthenticate v1+ response's session_lifetime_ms."""
    lifetime = response.session_lifetime
    assert isinstance(lifetime, datetime.timedelta)
    return int(lifetime / datetime.timedelta(milliseconds=1))


# Agents with secure listeners ----------------------------------------------------------


@dataclass
class SecureAgent:
    """An agent whose listeners are named after their protocols (`SASL_SSL`, ...)."""

    process: AgentProcess
    pki: Pki
    ports: dict[str, int]

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"


class SecureAgents:
    """Starts agents with `--listeners NAME://127.0.0.1:PORT,...` and the test PKI's server
    certificate; users are written to the agent's store before it starts."""

    def __init__(self, root: Path, pki: Pki) -> None:
        self.root = root
        self.pki = pki
        self.started: list[AgentProcess] = []

    @staticmethod
    def ports(*listeners: str) -> dict[str, int]:
        return {name: free_port() for name in listeners}

    def start(
        self,
        ports: dict[str, int],
        *extra: str,
        users: Mapping[str, str] | None = None,
    ) -> SecureAgent:
        data_dir = self.root / f"agent-{len(self.started)}" / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        for name, password in (users or {}).items():
            set_user(data_dir, name, password)
        listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
        process = AgentProcess(
            data_dir,
            next(iter(ports.values())),
            [
                "--listeners", listeners,
                "--tls-cert-file", str(self.pki.server_cert),
                "--tls-key-file", str(self.pki.server_key),
                "--flush-ms", "20",
                *extra,
            ],
        )  # fmt: skip
        self.started.append(process)
        process.start()
        for port in ports.values():
            wait_for_port(port)
        return SecureAgent(process, self.pki, dict(ports))

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()

    def tracebacks(self) -> list[str]:
        """The agents' logs that hold a Traceback (a handler that raised), for the report."""
        return [
            f"--- {p.log_path} ---\n{p.log_text()[-4000:]}"
            for p in self.started
            if "Traceback" in p.log_text()
        ]


# Clients (librdkafka through confluent-kafka, and kcat) ---------------------------------

KCAT = shutil.which("kcat") or "/usr/bin/kcat"  # Debian's kcat, librdkafka 2.0.2
# After the last expected record arrived, keep reading this long to catch duplicates.
DRAIN_S = 0.3


def rdkafka_conf(
    agent: SecureAgent,
    listener: str,
    *,
    user: str | None = None,
    password: str | None = None,
    mechanism: str = "SCRAM-SHA-512",
    cert: tuple[Path, Path] | None = None,
    ca_file: Path | None = None,
) -> dict[str, Any]:
    """librdkafka settings for `listener` (named after its protocol): TLS verifies the
    agent against the CA and its 127.0.0.1 SAN; SASL logs in as `user`."""
    conf: dict[str, Any] = {
        "bootstrap.servers": agent.address(listener),
        "security.protocol": listener,
    }
    if listener.endswith("SSL"):
        conf["ssl.ca.location"] = str(ca_file or agent.pki.ca_cert)
        conf["ssl.endpoint.identification.algorithm"] = "https"
    if cert is not None:
        conf["ssl.certificate.location"] = str(cert[0])
        conf["ssl.key.location"] = str(cert[1])
    if listener.startswith("SASL"):
        conf["sasl.mechanism"] = mechanism
        conf["sasl.username"] = user
        conf["sasl.password"] = password
    return conf


@dataclass
class Produced:
    acked: list[bytes]  # values whose delivery succeeded
    failed: list[KafkaError]  # delivery errors
    errors: list[KafkaError]  # the client's error callback


def produce(
    conf: Mapping[str, Any], topic: str, values: Sequence[bytes], timeout_s: float = 30.0
) -> Produced:
    result = Produced([], [], [])

    def delivered(err: KafkaError | None, message: Message) -> None:
        if err is None:
            result.acked.append(message.value())
        else:
            result.failed.append(err)

    producer = Producer({"linger.ms": 5, **conf, "error_cb": result.errors.append})
    for value in values:
        producer.produce(topic, value=value, partition=0, on_delivery=delivered)
        producer.poll(0)
    producer.flush(timeout_s)
    assert len(result.acked) + len(result.failed) == len(values), "deliveries unreported"
    return result


def consume(
    conf: Mapping[str, Any],
    topic: str,
    *,
    until: Callable[[list[bytes]], bool],
    stop_on_error: bool = False,
    timeout_s: float = 30.0,
) -> tuple[list[bytes], list[KafkaError]]:
    """Partition 0 of `topic` from its start, until `until(values)` (then a short drain
    for extras), the first reported error with `stop_on_error`, or the deadline."""
    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            "group.id": "security-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **conf,
            "error_cb": errors.append,
        }
    )
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        drain_until: float | None = None
        while time.monotonic() < (drain_until or deadline):
            if stop_on_error and errors:
                break
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                values.append(message.value())
            if drain_until is None and until(values):
                drain_until = time.monotonic() + DRAIN_S
    finally:
        consumer.close()
    return values, errors


def kcat(conf: Mapping[str, Any], *args: str, stdin: bytes = b"") -> bytes:
    """Run kcat with `conf` as -b and -X settings; fails on a non-zero exit."""
    settings = [f"{k}={v}" for k, v in conf.items() if k != "bootstrap.servers"]
    command = [KCAT, "-b", conf["bootstrap.servers"], *args]
    for setting in settings:
        command += ["-X", setting]
    proc = subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, (
        f"kcat {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    )
    return proc.stdout
