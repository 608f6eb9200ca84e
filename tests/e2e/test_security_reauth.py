"""SASL re-authentication (KIP-368) end to end, with `--connections-max-reauth-ms 1500`.

A session lasts 1.5 s from its login: SaslAuthenticate v1+ says so in
session_lifetime_ms; a client re-authenticates on the same connection (SaslHandshake
then SaslAuthenticate, same mechanism, same principal), or the agent closes the
connection at its first request after the session expired. librdkafka does this on
its own: a producer that runs for several sessions keeps its one connection.

Waiting past an expiry is the behaviour under test, so those tests sleep (bounded,
measured on the monotonic clock); nothing asserts on how fast anything is.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from kio.schema.errors import ErrorCode
from pki import make_pki
from sasl_client import (
    SaslClient,
    SecureAgent,
    SecureAgents,
    consume,
    lifetime_ms,
    plain_token,
    rdkafka_conf,
)

pytestmark = pytest.mark.timeout(120)

REAUTH_MS = 1500
ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")
# Margin past the session's end before the request that must be refused (the agent
# measures from its own end of the login, a little after the client's).
EXPIRY_MARGIN_S = 0.4


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureAgent]:
    root = tmp_path_factory.mktemp("reauth")
    agents = SecureAgents(root, make_pki(root / "pki"))
    try:
        yield agents.start(
            agents.ports("SASL_SSL", "SASL_PLAINTEXT"),
            "--connections-max-reauth-ms",
            str(REAUTH_MS),
            users=dict([ALICE, BOB]),
        )
    finally:
        agents.stop_all()
    assert agents.tracebacks() == []


def connect(agent: SecureAgent) -> SaslClient:
    return SaslClient(agent.address("SASL_SSL"), ca_file=agent.pki.ca_cert)


def login(client: SaslClient, mechanism: str, user: str, password: str, version: int = 1) -> Any:
    if mechanism == "PLAIN":
        return client.login_plain(user, password, version)
    return client.login_scram(mechanism, user, password, version)


def metadata_ok(client: SaslClient) -> bool:
    return [int(b.node_id) for b in client.metadata().brokers] == [0]


def sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


# librdkafka ---------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_librdkafka_reauthenticates_a_steady_producer(agent: SecureAgent) -> None:
    """~6 s of produce over SASL_SSL/SCRAM-SHA-512 (four sessions): every record is
    acknowledged and consumed once, on one connection that was never dropped."""
    lines = _Lines()
    logger = logging.getLogger("test_security_reauth.librdkafka")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(lines)
    logger.propagate = False
    stats: list[dict[str, Any]] = []
    errors: list[KafkaError] = []
    acked: list[bytes] = []
    failed: list[KafkaError] = []

    def delivered(err: KafkaError | None, message: Any) -> None:
        (failed.append(err) if err is not None else acked.append(message.value()))

    conf = rdkafka_conf(agent, "SASL_SSL", user=ALICE[0], password=ALICE[1])
    producer = Producer(
        {
            **conf,
            "linger.ms": 5,
            "debug": "security",
            "statistics.interval.ms": 500,
            "stats_cb": lambda s: stats.append(json.loads(s)),
            "error_cb": errors.append,
        },
        logger=logger,
    )
    sent: list[bytes] = []
    end = time.monotonic() + 4 * REAUTH_MS / 1000
    while time.monotonic() < end:
        value = b"steady-%d" % len(sent)
        producer.produce("steady", value=value, partition=0, on_delivery=delivered)
        sent.append(value)
        producer.poll(0.05)
    assert producer.flush(30) == 0
    # One more statistics report, covering the whole run.
    seen = len(stats)
    deadline = time.monotonic() + 5
    while len(stats) == seen and time.monotonic() < deadline:
        producer.poll(0.1)
    logger.removeHandler(lines)

    assert failed == [] and errors == []
    assert sorted(acked) == sorted(sent)
    brokers = stats[-1]["brokers"].values()
    assert [b["disconnects"] for b in brokers] == [0] * len(brokers), brokers
    # librdkafka was told the lifetime on every login and re-authenticated in time.
    lifetimes = [line for line in lines.lines if f"session lifetime {REAUTH_MS} ms" in line]
    assert len(lifetimes) >= 3, lines.lines[-20:]

    got, consume_errors = consume(conf, "steady", until=lambda v: len(v) >= len(sent))
    assert consume_errors == []
    assert Counter(got) == Counter(acked)


# Raw clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_session_lifetime_is_returned_and_enforced(agent: SecureAgent, version: int) -> None:
    client = connect(agent)
    response = login(client, "SCRAM-SHA-512", *ALICE, version=version)
    logged_in = time.monotonic()
    assert response.error_code == ErrorCode.none
    assert lifetime_ms(response) == REAUTH_MS
    assert metadata_ok(client)

    sleep_until(logged_in + REAUTH_MS / 1000 + EXPIRY_MARGIN_S)
    assert client.closes_on(client.metadata_request()), "served after the session expired"
    client.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_reauthentication_in_time_keeps_the_connection(agent: SecureAgent, mechanism: str) -> None:
    client = connect(agent)
    assert login(client, mechanism, *ALICE).error_code == ErrorCode.none
    first_login = last_login = time.monotonic()
    reauthentications = 0
    # Two sessions' worth of requests, re-authenticating half-way through each: the
    # connection serves well past the first login's expiry.
    while time.monotonic() < first_login + 2 * REAUTH_MS / 1000:
        if time.monotonic() - last_login > REAUTH_MS / 2000:
            response = login(client, mechanism, *ALICE)
            last_login = time.monotonic()
            assert response.error_code == ErrorCode.none, response
            assert lifetime_ms(response) == REAUTH_MS
            reauthentications += 1
        assert metadata_ok(client)
        time.sleep(0.1)
    assert reauthentications >= 2
    # Each re-authentication starts a new session, which ends in its turn.
    sleep_until(last_login + REAUTH_MS / 1000 + EXPIRY_MARGIN_S)
    assert client.closes_on(client.metadata_request())
    client.close()


def test_reauthentication_as_another_user_fails(agent: SecureAgent) -> None:
    client = connect(agent)
    assert login(client, "SCRAM-SHA-512", *ALICE).error_code == ErrorCode.none
    assert metadata_ok(client)
    response = login(client, "SCRAM-SHA-512", *BOB)  # Bob's own, valid, credentials
    assert response.error_code == ErrorCode.sasl_authentication_failed
    assert "principal" in (response.error_message or "")
    assert client.is_closed_by_peer()
    client.close()


def test_reauthentication_with_a_wrong_password_fails(agent: SecureAgent) -> None:
    client = connect(agent)
    assert login(client, "SCRAM-SHA-256", *ALICE).error_code == ErrorCode.none
    response = login(client, "SCRAM-SHA-256", ALICE[0], "not-" + ALICE[1])
    assert response.error_code == ErrorCode.sasl_authentication_failed
    assert client.is_closed_by_peer()
    client.close()


def test_reauthentication_with_another_mechanism_fails(agent: SecureAgent) -> None:
    """Kafka's SaslServerAuthenticator refuses a re-authentication whose mechanism
    differs from the session's ("SASL mechanism 'X' requested by client is not
    supported for re-authentication of mechanism 'Y'") and closes the connection."""
    client = connect(agent)
    assert login(client, "SCRAM-SHA-512", *ALICE).error_code == ErrorCode.none
    handshake = client.handshake("PLAIN")
    if handshake.error_code == ErrorCode.none:
        # Kafka answers the handshake, then fails the exchange: no session as PLAIN.
        response = client.try_authenticate(plain_token(*ALICE))
        assert response is None or response.error_code != ErrorCode.none, (
            "re-authenticated with PLAIN a session that logged in with SCRAM-SHA-512"
        )
    assert client.closes_on(client.metadata_request())
    client.close()


def test_v0_authenticated_session_expires_too(agent: SecureAgent) -> None:
    """SaslAuthenticate v0 cannot carry the lifetime, but Kafka enforces it anyway (its
    SaslServerAuthenticator sets the expiry whatever the version; SocketServer closes an
    expired connection at its next request): a client that cannot re-authenticate is
    disconnected, so a deleted user's old connection does not live forever."""
    client = connect(agent)
    assert login(client, "SCRAM-SHA-512", *ALICE, version=0).error_code == ErrorCode.none
    logged_in = time.monotonic()
    assert metadata_ok(client)
    sleep_until(logged_in + REAUTH_MS / 1000 + EXPIRY_MARGIN_S)
    assert client.closes_on(client.metadata_request()), "served after the session expired"
    client.close()


def test_unframed_v0_session_expires_too(agent: SecureAgent) -> None:
    """SaslHandshake v0 with unframed tokens: Kafka computes the expiry there too."""
    client = SaslClient(agent.address("SASL_PLAINTEXT"))
    assert client.login_plain_unframed(*ALICE) == b""
    logged_in = time.monotonic()
    assert metadata_ok(client)
    sleep_until(logged_in + REAUTH_MS / 1000 + EXPIRY_MARGIN_S)
    assert client.closes_on(client.metadata_request()), "served after the session expired"
    client.close()
