"""TLS, mutual TLS and SASL end to end: real agents with secure listeners, real clients
(confluent-kafka, Debian's kcat, kafka-python, aiokafka) and raw sockets.

Each test starts its own agent with users written to its store before it starts
(`driftlog users set`). Clients verify the agent's certificate against the test CA
and its 127.0.0.1 SAN. "Gets no data" is checked from both sides: the bad client
receives nothing, and a good consumer afterwards sees none of its records.

Re-authentication (KIP-368) is in test_security_reauth.py.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition as AioTopicPartition
from batch_builder import build_batch
from confluent_kafka import Consumer, KafkaError, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.errors import KafkaTimeoutError
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v3.request import FindCoordinatorRequest
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.types import TopicName
from kio.static.primitive import Records, i8, i16, i32, i32Timedelta
from pki import Pki, make_pki
from sasl_client import (
    SaslClient,
    SecureAgent,
    SecureAgents,
    consume,
    delete_user,
    kcat,
    list_users,
    plain_token,
    produce,
    rdkafka_conf,
    set_user,
)

pytestmark = pytest.mark.timeout(120)

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")
USERS = dict([ALICE, BOB])
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# What a client locked out of the agent reports through its error callback.
LOCKED_OUT = {
    KafkaError._AUTHENTICATION,
    KafkaError._SSL,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def agents(tmp_path: Path, pki: Pki) -> Iterator[SecureAgents]:
    factory = SecureAgents(tmp_path, pki)
    try:
        yield factory
    finally:
        factory.stop_all()
    # Refusing a client is never an accident in the agent: no handler may have raised.
    assert factory.tracebacks() == []


def values(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


def log_tail(agent: SecureAgent) -> str:
    return f"agent log {agent.process.log_path}:\n{agent.process.log_text()[-3000:]}"


def assert_round_trip(
    agent: SecureAgent, produce_conf: dict[str, Any], consume_conf: dict[str, Any], topic: str
) -> None:
    """Every acknowledged record comes back exactly once."""
    sent = values(topic, 50)
    produced = produce(produce_conf, topic, sent)
    assert produced.failed == [] and produced.errors == [], log_tail(agent)
    assert sorted(produced.acked) == sorted(sent)
    got, errors = consume(consume_conf, topic, until=lambda v: len(v) >= len(sent))
    assert errors == [], log_tail(agent)
    assert Counter(got) == Counter(produced.acked), log_tail(agent)
    assert got == sent  # one partition, one producer: in order


def assert_kcat_round_trip(conf: dict[str, Any], topic: str) -> None:
    sent = values(topic, 30)
    kcat(conf, "-P", "-t", topic, "-p", "0", stdin=b"\n".join(sent) + b"\n")
    out = kcat(conf, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f", "%s\n")
    assert out.splitlines() == sent


def assert_locked_out(bad_conf: dict[str, Any], good_conf: dict[str, Any], topic: str) -> None:
    """A bad client's produce fails and its consumer gets nothing, while the topic holds
    data; a good consumer afterwards sees the good records only."""
    before = values(f"{topic}-good-before", 5)
    assert sorted(produce(good_conf, topic, before).acked) == sorted(before)

    bad = produce({**bad_conf, "message.timeout.ms": 3000}, topic, values(f"{topic}-bad", 5))
    assert bad.acked == [], "a client that failed to authenticate had records acknowledged"
    assert len(bad.failed) == 5
    assert {e.code() for e in bad.errors} & LOCKED_OUT, bad.errors

    got, errors = consume(bad_conf, topic, until=lambda v: False, stop_on_error=True)
    assert got == []
    assert {e.code() for e in errors} & LOCKED_OUT, errors

    after = values(f"{topic}-good-after", 5)
    assert sorted(produce(good_conf, topic, after).acked) == sorted(after)
    got, errors = consume(good_conf, topic, until=lambda v: len(v) >= 10)
    assert errors == []
    assert got == before + after


def authentication_errors(errors: list[KafkaError]) -> list[KafkaError]:
    return [e for e in errors if e.code() == KafkaError._AUTHENTICATION]


# 1. SASL_SSL with SCRAM-SHA-512 ----------------------------------------------------------


def test_confluent_over_sasl_ssl_scram_sha_512(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_SSL"), users=USERS)
    conf = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password=ALICE[1])
    other = rdkafka_conf(agent, "SASL_SSL", user=BOB[0], password=BOB[1])
    assert_round_trip(agent, conf, other, "scram512")


def test_kcat_over_sasl_ssl_scram_sha_512(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_SSL"), users=USERS)
    conf = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password=ALICE[1])
    assert_kcat_round_trip(conf, "kcat-scram512")


def test_tls_clients_verify_the_agent_certificate(agents: SecureAgents, tmp_path: Path) -> None:
    """The same client trusting another CA refuses the agent: verification is really on."""
    agent = agents.start(agents.ports("SASL_SSL"), users=USERS)
    stranger_ca = make_pki(tmp_path / "stranger").ca_cert
    conf = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password=ALICE[1], ca_file=stranger_ca)
    got, errors = consume(conf, "verified", until=lambda v: False, stop_on_error=True)
    assert got == []
    assert {e.code() for e in errors} & {
        KafkaError._SSL,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }


# 2. SASL_PLAINTEXT with PLAIN ------------------------------------------------------------


def test_confluent_over_sasl_plaintext_plain(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    conf = rdkafka_conf(
        agent, "SASL_PLAINTEXT", user=ALICE[0], password=ALICE[1], mechanism="PLAIN"
    )
    other = rdkafka_conf(agent, "SASL_PLAINTEXT", user=BOB[0], password=BOB[1], mechanism="PLAIN")
    assert_round_trip(agent, conf, other, "plain")


def test_kcat_over_sasl_plaintext_plain(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    conf = rdkafka_conf(
        agent, "SASL_PLAINTEXT", user=ALICE[0], password=ALICE[1], mechanism="PLAIN"
    )
    assert_kcat_round_trip(conf, "kcat-plain")


# 3. Mutual TLS ---------------------------------------------------------------------------


def mtls_agent(agents: SecureAgents) -> SecureAgent:
    return agents.start(agents.ports("SSL"), "--tls-client-ca-file", str(agents.pki.ca_cert))


def test_confluent_and_kcat_over_mutual_tls(agents: SecureAgents) -> None:
    agent = mtls_agent(agents)
    conf = rdkafka_conf(agent, "SSL", cert=agents.pki.client("carol"))
    other = rdkafka_conf(agent, "SSL", cert=agents.pki.client("dave"))
    assert_round_trip(agent, conf, other, "mtls")
    assert_kcat_round_trip(conf, "kcat-mtls")


def test_mutual_tls_refuses_a_client_without_a_certificate(agents: SecureAgents) -> None:
    agent = mtls_agent(agents)
    good = rdkafka_conf(agent, "SSL", cert=agents.pki.client("carol"))
    assert_locked_out(rdkafka_conf(agent, "SSL"), good, "no-cert")


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    agents: SecureAgents, tmp_path: Path
) -> None:
    agent = mtls_agent(agents)
    good = rdkafka_conf(agent, "SSL", cert=agents.pki.client("carol"))
    # Signed by another CA, with the same subject as a good client's.
    forged = make_pki(tmp_path / "other-ca").client("carol")
    assert_locked_out(rdkafka_conf(agent, "SSL", cert=forged), good, "other-ca")


# 4. Wrong password, unknown user, deleted user ---------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_wrong_password_gets_no_data(agents: SecureAgents, mechanism: str) -> None:
    agent = agents.start(agents.ports("SASL_SSL"), users=USERS)
    good = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password=ALICE[1], mechanism=mechanism)
    bad = rdkafka_conf(
        agent, "SASL_SSL", user=ALICE[0], password="not-" + ALICE[1], mechanism=mechanism
    )
    assert_locked_out(bad, good, "wrong-password")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_unknown_user_gets_no_data(agents: SecureAgents, mechanism: str) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    good = rdkafka_conf(agent, "SASL_PLAINTEXT", user=BOB[0], password=BOB[1], mechanism=mechanism)
    bad = rdkafka_conf(
        agent, "SASL_PLAINTEXT", user="mallory", password=BOB[1], mechanism=mechanism
    )
    assert_locked_out(bad, good, "unknown-user")


def test_failed_login_reports_authentication_failure(agents: SecureAgents) -> None:
    """librdkafka's error callback says why: an authentication error, not a network one."""
    agent = agents.start(agents.ports("SASL_SSL"), users=USERS)
    bad = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password="wrong")
    result = produce({**bad, "message.timeout.ms": 2000}, "auth-errors", [b"x"])
    assert result.acked == []
    assert authentication_errors(result.errors), result.errors


def login_succeeds(agent: SecureAgent, user: str, password: str, mechanism: str) -> bool:
    client = SaslClient(agent.address("SASL_PLAINTEXT"))
    try:
        if mechanism == "PLAIN":
            response = client.login_plain(user, password)
        else:
            response = client.login_scram(mechanism, user, password)
        ok = response.error_code == ErrorCode.none
        if not ok:
            assert response.error_code == ErrorCode.sasl_authentication_failed
            assert client.is_closed_by_peer()
        return bool(ok)
    finally:
        client.close()


def poll_until(condition: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def test_users_set_and_delete_apply_to_a_running_agent(agents: SecureAgents) -> None:
    agent = agents.start(
        agents.ports("SASL_PLAINTEXT"), "--heartbeat-ms", "300", users={"temp": "temp-pw", **USERS}
    )
    conf = rdkafka_conf(agent, "SASL_PLAINTEXT", user="temp", password="temp-pw")
    assert produce(conf, "users", [b"by-temp"]).acked == [b"by-temp"]
    for mechanism in MECHANISMS:
        assert login_succeeds(agent, "temp", "temp-pw", mechanism)

    delete_user(agent.data_dir, "temp")
    assert "temp" not in list_users(agent.data_dir)
    assert poll_until(lambda: not login_succeeds(agent, "temp", "temp-pw", "SCRAM-SHA-512"))
    for mechanism in MECHANISMS:
        assert not login_succeeds(agent, "temp", "temp-pw", mechanism)
    locked = produce({**conf, "message.timeout.ms": 2000}, "users", [b"after-delete"])
    assert locked.acked == [] and authentication_errors(locked.errors)

    # A user added while the agent runs can log in a heartbeat later; others are untouched.
    set_user(agent.data_dir, "late", "late-pw")
    assert poll_until(lambda: login_succeeds(agent, "late", "late-pw", "SCRAM-SHA-256"))
    assert login_succeeds(agent, "late", "late-pw", "PLAIN")
    assert login_succeeds(agent, ALICE[0], ALICE[1], "SCRAM-SHA-512")
    alice = rdkafka_conf(agent, "SASL_PLAINTEXT", user=ALICE[0], password=ALICE[1])
    got, _ = consume(alice, "users", until=lambda v: len(v) >= 1)
    assert got == [b"by-temp"]


# 5. Raw sockets on a SASL listener -----------------------------------------------------------


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


def test_only_authentication_is_served_before_login(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    address = agent.address("SASL_PLAINTEXT")
    conf = rdkafka_conf(agent, "SASL_PLAINTEXT", user=ALICE[0], password=ALICE[1])
    assert produce(conf, "guarded", [b"first"]).acked == [b"first"]

    client = SaslClient(address)
    versions = client.api_versions()
    assert versions.error_code == ErrorCode.none
    advertised = {
        int(k.api_key): (int(k.min_version), int(k.max_version)) for k in versions.api_keys
    }
    assert advertised[17] == (0, 1) and advertised[36][1] >= 1
    assert client.closes_on(client.metadata_request(("guarded",)))
    client.close()

    client = SaslClient(address)
    assert client.closes_on(raw_produce("guarded", b"sneaked-in"))
    client.close()

    # Half-way through a login is not logged in either.
    client = SaslClient(address)
    assert client.handshake("SCRAM-SHA-256").error_code == ErrorCode.none
    assert client.closes_on(raw_produce("guarded", b"sneaked-in-mid-login"))
    client.close()

    assert produce(conf, "guarded", [b"last"]).acked == [b"last"]
    got, _ = consume(conf, "guarded", until=lambda v: b"last" in v)
    assert got == [b"first", b"last"]

    # The same requests are served once logged in.
    client = SaslClient(address)
    assert client.login_plain(*ALICE).error_code == ErrorCode.none
    topics = client.metadata(("guarded",)).topics
    assert [t.error_code for t in topics] == [ErrorCode.none]
    client.close()


def test_sasl_authenticate_before_handshake_is_an_illegal_state(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    client = SaslClient(agent.address("SASL_PLAINTEXT"))
    response = client.request(SaslAuthenticateRequest(auth_bytes=plain_token(*ALICE)))
    assert response.error_code == ErrorCode.illegal_sasl_state
    assert client.is_closed_by_peer()
    client.close()


def test_unsupported_mechanism_is_refused_with_the_enabled_list(agents: SecureAgents) -> None:
    ports = agents.ports("SASL_PLAINTEXT", "SASL_SSL")
    agent = agents.start(
        ports,
        "--listener-settings",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512",
        users=USERS,
    )
    for mechanism in ("GSSAPI", "OAUTHBEARER", "scram-sha-256x"):
        client = SaslClient(agent.address("SASL_PLAINTEXT"))
        response = client.handshake(mechanism)
        assert response.error_code == ErrorCode.unsupported_sasl_mechanism
        assert tuple(response.mechanisms) == MECHANISMS
        assert client.is_closed_by_peer()
        client.close()

    # A listener's own mechanism list: PLAIN is not enabled on SASL_SSL.
    client = SaslClient(agent.address("SASL_SSL"), ca_file=agents.pki.ca_cert)
    response = client.handshake("PLAIN")
    assert response.error_code == ErrorCode.unsupported_sasl_mechanism
    assert tuple(response.mechanisms) == ("SCRAM-SHA-512",)
    assert client.is_closed_by_peer()
    client.close()
    client = SaslClient(agent.address("SASL_SSL"), ca_file=agents.pki.ca_cert)
    assert client.login_scram("SCRAM-SHA-512", *ALICE).error_code == ErrorCode.none
    client.close()


def test_raw_failed_login_answers_sasl_authentication_failed_then_closes(
    agents: SecureAgents,
) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    address = agent.address("SASL_PLAINTEXT")
    for mechanism, user, password in (
        ("PLAIN", ALICE[0], "nope"),
        ("PLAIN", "mallory", "nope"),
        ("SCRAM-SHA-512", ALICE[0], "nope"),
        ("SCRAM-SHA-256", "mallory", "nope"),
        # Another user's password: logins are per user.
        ("SCRAM-SHA-256", ALICE[0], BOB[1]),
        ("PLAIN", ALICE[0], BOB[1]),
    ):
        client = SaslClient(address)
        if mechanism == "PLAIN":
            response = client.login_plain(user, password)
        else:
            response = client.login_scram(mechanism, user, password)
        assert response.error_code == ErrorCode.sasl_authentication_failed
        assert response.error_message
        assert client.is_closed_by_peer()
        client.close()


# 6. kafka-python and aiokafka; SaslHandshake v0 ----------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_kafka_python_over_sasl_plaintext(agents: SecureAgents, mechanism: str) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    security: dict[str, Any] = {
        "bootstrap_servers": agent.address("SASL_PLAINTEXT"),
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": ALICE[0],
        "sasl_plain_password": ALICE[1],
    }
    topic = f"kafka-python-{mechanism.lower()}"
    sent = values(topic, 20)
    producer = KafkaProducer(**security, acks="all")
    acked = [producer.send(topic, value=v, partition=0).get(timeout=30) for v in sent]
    producer.close(timeout=10)
    assert [m.offset for m in acked] == list(range(len(sent)))

    consumer = KafkaConsumer(**security, enable_auto_commit=False)
    consumer.assign([KpTopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(r.value for r in records)
    consumer.close()
    assert got == sent


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_aiokafka_over_sasl_plaintext(agents: SecureAgents, mechanism: str) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    topic = f"aiokafka-{mechanism.lower()}"
    sent = values(topic, 20)

    async def run() -> list[bytes]:
        security: dict[str, Any] = {
            "bootstrap_servers": agent.address("SASL_PLAINTEXT"),
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": ALICE[0],
            "sasl_plain_password": ALICE[1],
        }
        producer = AIOKafkaProducer(**security, acks="all")
        await producer.start()
        try:
            offsets = [(await producer.send_and_wait(topic, v, partition=0)).offset for v in sent]
        finally:
            await producer.stop()
        assert offsets == list(range(len(sent)))
        consumer = AIOKafkaConsumer(**security, enable_auto_commit=False)
        await consumer.start()
        got: list[bytes] = []
        try:
            partition = AioTopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                got.extend(r.value for records in batches.values() for r in records)
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == sent


def test_kafka_python_and_aiokafka_wrong_password_fail(
    agents: SecureAgents, caplog: pytest.LogCaptureFixture
) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    security: dict[str, Any] = {
        "bootstrap_servers": agent.address("SASL_PLAINTEXT"),
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": ALICE[0],
        "sasl_plain_password": "wrong",
    }
    # kafka-python 3.0.12 reports "socket disconnected" rather than error 58 when the
    # answer and the close arrive in one read (its transport drops data read before an
    # EOF), so only the failure itself is checked for it.
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        KafkaProducer(**security, bootstrap_timeout_ms=4000)

    async def aio() -> None:
        producer = AIOKafkaProducer(**security, request_timeout_ms=5000)
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(aio())
    # aiokafka logs why its bootstrap failed: Kafka's error 58 and the agent's message.
    assert "SaslAuthenticationFailed" in caplog.text
    assert "invalid credentials" in caplog.text


def test_sasl_handshake_v0_with_unframed_plain_tokens(agents: SecureAgents) -> None:
    agent = agents.start(agents.ports("SASL_PLAINTEXT"), users=USERS)
    address = agent.address("SASL_PLAINTEXT")

    client = SaslClient(address)
    assert client.login_plain_unframed(*ALICE) == b""  # PLAIN's empty server token
    topics = client.metadata(("v0-topic",), auto_create=True).topics
    assert [t.error_code for t in topics] == [ErrorCode.none]
    client.close()

    client = SaslClient(address)
    assert client.login_plain_unframed(ALICE[0], "wrong") is None  # v0: closed, no answer
    client.close()

    # SaslHandshake v0, then SaslAuthenticate anyway (Kafka's clients after KIP-152 do
    # this only after v1): the tokens are unframed, so the frame is a bad PLAIN token.
    client = SaslClient(address)
    assert client.handshake("PLAIN", version=0).error_code == ErrorCode.none
    assert client.closes_on(SaslAuthenticateRequest(auth_bytes=plain_token(*ALICE)))
    client.close()


# 7. Two listeners with their own advertised addresses ----------------------------------------


def test_each_listener_advertises_its_own_address(agents: SecureAgents) -> None:
    ports = agents.ports("PLAINTEXT", "SASL_SSL")
    advertised = f"PLAINTEXT://broker.internal:19092,SASL_SSL://localhost:{ports['SASL_SSL']}"
    agent = agents.start(ports, "--advertised-listeners", advertised, users=USERS)

    plain = SaslClient(agent.address("PLAINTEXT"))
    brokers = [(int(b.node_id), b.host, int(b.port)) for b in plain.metadata().brokers]
    assert brokers == [(0, "broker.internal", 19092)]
    coordinator = plain.request(FindCoordinatorRequest(key="secure-group", key_type=i8(0)))
    assert coordinator.error_code == ErrorCode.none
    assert (coordinator.host, int(coordinator.port)) == ("broker.internal", 19092)
    # No SASL on a PLAINTEXT listener.
    assert plain.handshake("PLAIN").error_code == ErrorCode.illegal_sasl_state
    plain.close()

    secure = SaslClient(agent.address("SASL_SSL"), ca_file=agents.pki.ca_cert)
    assert secure.login_scram("SCRAM-SHA-512", *ALICE).error_code == ErrorCode.none
    brokers = [(int(b.node_id), b.host, int(b.port)) for b in secure.metadata().brokers]
    assert brokers == [(0, "localhost", ports["SASL_SSL"])]
    coordinator = secure.request(FindCoordinatorRequest(key="secure-group", key_type=i8(0)))
    assert coordinator.error_code == ErrorCode.none
    assert (coordinator.host, int(coordinator.port)) == ("localhost", ports["SASL_SSL"])
    secure.close()


def test_consumer_group_over_sasl_ssl_next_to_a_plaintext_listener(agents: SecureAgents) -> None:
    ports = agents.ports("PLAINTEXT", "SASL_SSL")
    # The SASL_SSL address is advertised by name: the client checks the certificate's
    # DNS SAN when it follows Metadata and FindCoordinator there.
    advertised = (
        f"PLAINTEXT://127.0.0.1:{ports['PLAINTEXT']},SASL_SSL://localhost:{ports['SASL_SSL']}"
    )
    agent = agents.start(ports, "--advertised-listeners", advertised, users=USERS)
    conf = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password=ALICE[1])
    sent = values("grouped", 30)
    assert sorted(produce(conf, "grouped", sent).acked) == sorted(sent)

    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            **conf,
            "group.id": "secure-group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "error_cb": errors.append,
        }
    )
    got: list[bytes] = []
    try:
        consumer.subscribe(["grouped"])
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                got.append(message.value())
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition("grouped", 0)], timeout=10)
    finally:
        consumer.close()
    assert got == sent
    assert [tp.offset for tp in committed] == [len(sent)]
    assert errors == []
    # The same group as the PLAINTEXT listener sees it: the committed offset is shared.
    plain = rdkafka_conf(agent, "PLAINTEXT")
    reader = Consumer({**plain, "group.id": "secure-group"})
    try:
        shared = reader.committed([TopicPartition("grouped", 0)], timeout=10)
    finally:
        reader.close()
    assert [tp.offset for tp in shared] == [len(sent)]
