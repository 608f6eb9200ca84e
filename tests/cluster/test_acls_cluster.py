"""ACLs and SCRAM credentials apply on every agent of a cluster: both live in the
coordinator store (PostgreSQL), and every agent reloads them within a heartbeat.

Two agents share a PostgreSQL database and an S3 bucket (moto), each with one
SASL_PLAINTEXT listener and `--authorizer acl`. The first administrator is made with
`driftlog users set --coordinator`; it creates a user and ACLs through agent 1 (with
confluent-kafka's AdminClient), and agent 2 is checked over a raw connection to it
alone (a real client would be sent to whichever agent Metadata names), then with real
clients across both agents. Taking the ACL and then the user away applies on agent 2 too.
"""

from __future__ import annotations

import datetime
import functools
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conftest
import pytest
from acl_clients import GROUP, TOPIC, acl, create_acls, delete_acls, read_group, sasl_conf
from batch_builder import build_batch
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from conftest import DRIFTLOG, AgentProcess, Cluster
from kafka.admin import KafkaAdminClient
from kafka.admin import ScramMechanism as KpScramMechanism
from kafka.admin import UserScramCredentialDeletion as KpScramDeletion
from kio.schema.errors import ErrorCode
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName
from kio.static.primitive import Records, i16, i32, i32Timedelta
from sasl_client import SaslClient, produce
from services import free_port

pytestmark = pytest.mark.timeout(240)

ADMIN = ("admin", "admin-secret")
ERIN = ("erin", "erin-secret")
# Heartbeats are 250 ms in these clusters: "a few heartbeats" is well within this.
PROPAGATION_S = 10.0


def add_sasl_agent(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> AgentProcess:
    """`cluster.add` with one SASL_PLAINTEXT listener on the port it gives `--listen`
    (the port it waits for): the port is chosen here and handed to `add` as its free
    port."""
    port = free_port()
    with monkeypatch.context() as patch:
        patch.setattr(conftest, "free_port", lambda: port)
        return cluster.add(
            "a",
            "--listeners", f"SASL_PLAINTEXT://127.0.0.1:{port}",
            "--authorizer", "acl",
            "--super-users", f"User:{ADMIN[0]}",
        )  # fmt: skip


def set_user_in(dsn: str, root: Path, name: str, password: str) -> None:
    """`driftlog users set NAME --password-file F --coordinator DSN`."""
    password_file = root / f"password-{name}.txt"
    password_file.write_text(password + "\n")
    proc = subprocess.run(
        [*DRIFTLOG, "users", "set", name, "--password-file", str(password_file),
         "--coordinator", dsn],
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def raw_login(agent: AgentProcess, user: str, password: str) -> tuple[SaslClient, ErrorCode]:
    client = SaslClient(agent.bootstrap)
    response = client.login_scram("SCRAM-SHA-512", user, password)
    return client, ErrorCode(response.error_code)


def login_error(agent: AgentProcess, user: str, password: str) -> ErrorCode:
    client, error = raw_login(agent, user, password)
    client.close()
    return error


def raw_produce(topic: str, value: bytes) -> ProduceRequest:
    return ProduceRequest(
        acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        topic_data=(
            TopicProduceData(
                name=TopicName(topic),
                partition_data=(
                    PartitionProduceData(index=i32(0), records=Records(build_batch([value]))),
                ),
            ),
        ),
    )


def produce_error(agent: AgentProcess, user: tuple[str, str], topic: str, value: bytes) -> Any:
    """A Produce of one record to `agent` alone, logged in as `user`: its error."""
    client, error = raw_login(agent, *user)
    assert error == ErrorCode.none
    try:
        response = client.request(raw_produce(topic, value))
        return response.responses[0].partition_responses[0].error_code
    finally:
        client.close()


def metadata_error(agent: AgentProcess, user: tuple[str, str], topic: str) -> Any:
    client, error = raw_login(agent, *user)
    assert error == ErrorCode.none
    try:
        [described] = client.metadata((topic,)).topics
        return described.error_code
    finally:
        client.close()


def within(timeout_s: float, condition: Callable[[], bool]) -> float:
    """Seconds until `condition()` held (fails if it does not within `timeout_s`)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "not within the deadline"
        time.sleep(0.1)
    return time.monotonic() - start


def wait_for_both(agents: list[AgentProcess]) -> None:
    """Until each agent's Metadata (to the super user) lists both agents."""
    expected = {1, 2}

    def listed(agent: AgentProcess) -> bool:
        client, error = raw_login(agent, *ADMIN)
        try:
            return (
                error == ErrorCode.none
                and {int(b.node_id) for b in client.metadata().brokers} == expected
            )
        finally:
            client.close()

    for agent in agents:
        within(20, functools.partial(listed, agent))


def test_users_and_acls_made_on_one_agent_apply_on_the_other(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_user_in(cluster.dsn, cluster.root, *ADMIN)
    one = add_sasl_agent(cluster, monkeypatch)
    two = add_sasl_agent(cluster, monkeypatch)
    wait_for_both([one, two])
    admin_conf = sasl_conf(one.bootstrap, *ADMIN)
    admin = AdminClient(admin_conf)
    admin.create_topics([NewTopic("shared", 1, 1)])["shared"].result(20)

    # A user created through agent 1 can log in on agent 2.
    assert login_error(two, *ERIN) == ErrorCode.sasl_authentication_failed
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(ERIN[0], info, ERIN[1].encode())]
    )
    for future in futures.values():
        assert future.result(20) is None
    within(PROPAGATION_S, lambda: login_error(two, *ERIN) == ErrorCode.none)

    # Without ACLs erin may do nothing with the topic on agent 2.
    assert metadata_error(two, ERIN, "shared") == ErrorCode.topic_authorization_failed
    assert produce_error(two, ERIN, "shared", b"too early") == (
        ErrorCode.topic_authorization_failed
    )

    # ACLs created through agent 1 are enforced by agent 2.
    write = acl(TOPIC, "shared", f"User:{ERIN[0]}", AclOperation.WRITE)
    create_acls(
        admin_conf,
        write,
        acl(TOPIC, "shared", f"User:{ERIN[0]}", AclOperation.READ),
        acl(GROUP, "erins", f"User:{ERIN[0]}", AclOperation.READ),
    )
    within(
        PROPAGATION_S,
        lambda: produce_error(two, ERIN, "shared", b"raw on two") == ErrorCode.none,
    )

    # Real clients: produce through agent 2, consume through agent 1.
    produced = produce(sasl_conf(two.bootstrap, *ERIN), "shared", [b"client on two"])
    assert produced.acked == [b"client on two"] and produced.failed == []
    got, errors = read_group(
        sasl_conf(one.bootstrap, *ERIN), "shared", "erins", until=lambda v: len(v) >= 2
    )
    assert errors == [], errors
    assert got == [b"raw on two", b"client on two"]

    # Deleting the WRITE ACL through agent 1 takes it away on agent 2.
    assert delete_acls(admin_conf, AclBindingFilter(*_fields(write))) == [write]
    within(
        PROPAGATION_S,
        lambda: (
            produce_error(two, ERIN, "shared", b"after the ACL went")
            == ErrorCode.topic_authorization_failed
        ),
    )
    # (Until agent 2 reloaded, those attempts were still allowed and landed; from now on
    # none does.)
    assert produce_error(two, ERIN, "shared", b"refused") == ErrorCode.topic_authorization_failed
    assert metadata_error(two, ERIN, "shared") == ErrorCode.none  # READ is still there

    # Deleting the user through agent 1 stops its logins on agent 2.
    kp_admin = KafkaAdminClient(
        bootstrap_servers=one.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=ADMIN[0],
        sasl_plain_password=ADMIN[1],
        request_timeout_ms=20_000,
    )
    try:
        deletion = KpScramDeletion(ERIN[0], KpScramMechanism.SCRAM_SHA_512)
        assert kp_admin.alter_user_scram_credentials([deletion]) == {ERIN[0]: None}
    finally:
        kp_admin.close()
    for agent in (two, one):  # (kafka-python sends it to the controller it was told of)
        within(
            PROPAGATION_S,
            functools.partial(
                lambda a: login_error(a, *ERIN) == ErrorCode.sasl_authentication_failed, agent
            ),
        )

    # The refused record did not land.
    admin_on_two = sasl_conf(two.bootstrap, *ADMIN)
    assert produce(admin_on_two, "shared", [b"last"]).acked == [b"last"]
    got, errors = read_group(admin_on_two, "shared", "check", until=lambda v: b"last" in v)
    assert errors == [], errors
    assert got[:2] == [b"raw on two", b"client on two"] and got[-1] == b"last"
    assert set(got[2:-1]) <= {b"after the ACL went"}


def _fields(binding: Any) -> tuple[Any, ...]:
    return (
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )
