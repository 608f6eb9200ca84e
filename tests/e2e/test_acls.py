"""Kafka ACLs end to end: agents with `--authorizer acl` on a SASL_PLAINTEXT listener,
users logging in with SCRAM (or PLAIN), and real clients (confluent-kafka's Producer,
Consumer and AdminClient, Debian's kcat) plus raw requests where a client hides the
answer.

Each test starts its own agent with users written to its store before it starts; the
super user `admin` creates topics and ACLs through AdminClient. A refusal is checked
from both sides: the refused client gets Kafka's error, and what it tried did not
happen (nothing of its records is read back; nothing it should not see is listed).

The other APIs' mapping (ListOffsets, admin, groups, transactions) is in
test_acls_apis.py; ACLs and users across a cluster in tests/cluster/test_acls_cluster.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafka.errors
import pytest
from acl_clients import (
    CLUSTER,
    CLUSTER_NAME,
    DENY,
    GROUP,
    PREFIXED,
    TOPIC,
    acl,
    admin_error,
    create_acls,
    delete_acls,
    describe_acls,
    error_codes,
    everything,
    logged_in,
    login_error,
    read_group,
    read_partition,
    run_kcat,
    sasl_conf,
)
from confluent_kafka import KafkaError
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePatternFilter,
)
from kafka.admin import ResourceType as KpResourceType
from kafka.admin import ScramMechanism as KpScramMechanism
from kafka.admin import UserScramCredentialDeletion as KpScramDeletion
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from pki import Pki, make_pki
from sasl_client import SecureAgent, SecureAgents, produce

pytestmark = pytest.mark.timeout(180)

USERS = {
    "admin": "admin-secret",
    "alice": "alice-secret",
    "bob": "bob-secret",
    "carol": "carol-secret",
}
SUPER = ("--authorizer", "acl", "--super-users", "User:admin")
LISTENER = "SASL_PLAINTEXT"
TOPIC_DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = KafkaError.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = KafkaError.CLUSTER_AUTHORIZATION_FAILED
# What librdkafka reports when its login is refused (as tests/e2e/test_security.py has it).
LOCKED_OUT = {
    KafkaError._AUTHENTICATION,
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


def start(agents: SecureAgents, *extra: str) -> SecureAgent:
    return agents.start(agents.ports(LISTENER), *extra, users=USERS)


def conf(agent: SecureAgent, user: str, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
    return sasl_conf(agent.address(LISTENER), user, USERS[user], mechanism)


def create_topics(agent: SecureAgent, *names: str) -> None:
    """As the super user: one partition each."""
    admin = AdminClient(conf(agent, "admin"))
    futures = admin.create_topics([NewTopic(name, 1, 1) for name in names])
    for future in futures.values():
        future.result(15)


def values(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


def assert_produce_denied(client_conf: dict[str, Any], topic: str) -> None:
    """Every record fails with TOPIC_AUTHORIZATION_FAILED in its delivery report."""
    result = produce({**client_conf, "message.timeout.ms": 10_000}, topic, values("denied", 3))
    assert result.acked == []
    assert [e.code() for e in result.failed] == [TOPIC_DENIED] * 3, result.failed


def assert_consume_denied(client_conf: dict[str, Any], topic: str, group: str) -> None:
    """A member of `group` (which it may READ) gets TOPIC_AUTHORIZATION_FAILED and no
    records: from Metadata when it may not DESCRIBE the topic, else from Fetch. (Assigned
    rather than subscribed, librdkafka waits silently for a topic it may not describe.)"""
    got, errors = read_group(
        client_conf, topic, group, until=lambda v: False, stop_on_error=TOPIC_DENIED, timeout_s=15
    )
    assert got == []
    assert TOPIC_DENIED in error_codes(errors), errors


def read_all(client_conf: dict[str, Any], topic: str, expected: int) -> list[bytes]:
    got, errors = read_partition(
        client_conf, topic, f"reader-{uuid.uuid4().hex[:6]}", until=lambda v: len(v) >= expected
    )
    assert errors == [], errors
    return got


# 1. User A produces, user B only consumes ------------------------------------------------


def test_a_produces_and_b_only_consumes(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "orders")
    create_acls(
        conf(agent, "admin"),
        acl(TOPIC, "orders", "User:alice", AclOperation.WRITE),
        acl(TOPIC, "orders", "User:bob", AclOperation.READ),
        acl(GROUP, "bob-group", "User:bob", AclOperation.READ),
        acl(GROUP, "alice-group", "User:alice", AclOperation.READ),
    )
    alice, bob = conf(agent, "alice"), conf(agent, "bob")

    sent = values("by-alice", 20)
    produced = produce(alice, "orders", sent)
    assert produced.failed == [] and produced.errors == []
    assert sorted(produced.acked) == sorted(sent)

    # B may read but not write: librdkafka's delivery reports and kcat both fail.
    assert_produce_denied(bob, "orders")
    denied = run_kcat(bob, "-P", "-t", "orders", "-p", "0", stdin=b"by-bob-kcat\n")
    assert denied.returncode != 0
    assert b"Topic authorization failed" in denied.stderr, denied.stderr

    # B consumes as a member of its group, and commits.
    got, errors = read_group(bob, "orders", "bob-group", until=lambda v: len(v) >= 20)
    assert errors == [], errors
    assert got == sent  # A's records only, in order: none of B's attempts landed

    # In a group B has no ACL on, FindCoordinator is refused.
    got, errors = read_group(
        bob, "orders", "not-bobs", until=lambda v: False, stop_on_error=True, timeout_s=15
    )
    assert got == []
    assert GROUP_DENIED in error_codes(errors), errors

    # A may write but not read (WRITE implies DESCRIBE, not READ): its Fetch is refused,
    # in its own group and with partitions assigned.
    assert_consume_denied(alice, "orders", "alice-group")
    got, errors = read_partition(
        alice, "orders", "alice-group", until=lambda v: False, stop_on_error=TOPIC_DENIED
    )
    assert got == [] and TOPIC_DENIED in error_codes(errors), errors
    refused = run_kcat(alice, "-C", "-t", "orders", "-p", "0", "-o", "beginning", "-e")
    assert refused.returncode != 0
    assert b"Topic authorization failed" in refused.stderr, refused.stderr
    assert refused.stdout == b""

    # kcat as B reads what A wrote.
    out = run_kcat(bob, "-C", "-t", "orders", "-p", "0", "-o", "beginning", "-e")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == sent


def test_a_produces_over_plain_and_b_reads_over_scram_sha_256(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "plain-topic")
    create_acls(
        conf(agent, "admin"),
        acl(TOPIC, "plain-topic", "User:alice", AclOperation.WRITE),
        acl(TOPIC, "plain-topic", "User:bob", AclOperation.READ),
        acl(GROUP, "bob-plain", "User:bob", AclOperation.READ),
        acl(GROUP, "alice-plain", "User:alice", AclOperation.READ),
    )
    alice = conf(agent, "alice", "PLAIN")
    bob = conf(agent, "bob", "SCRAM-SHA-256")
    sent = values("plain", 10)
    assert sorted(produce(alice, "plain-topic", sent).acked) == sorted(sent)
    assert_produce_denied(bob, "plain-topic")
    got, errors = read_group(bob, "plain-topic", "bob-plain", until=lambda v: len(v) >= 10)
    assert errors == [] and got == sent
    assert_consume_denied(alice, "plain-topic", "alice-plain")


# 2. Super users, and the no-ACL default ---------------------------------------------------


def test_super_user_bypasses_acls(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    admin, alice = conf(agent, "admin"), conf(agent, "alice")
    create_topics(agent, "free", "walled")
    # Everyone is denied everything on "walled"; the super user is not everyone.
    create_acls(
        admin,
        acl(TOPIC, "walled", "User:*", AclOperation.ALL, DENY),
        acl(GROUP, "alice-group", "User:alice", AclOperation.READ),
    )
    for topic in ("free", "walled"):
        sent = values(topic, 10)
        produced = produce(admin, topic, sent)
        assert produced.failed == [] and sorted(produced.acked) == sorted(sent)
        got, errors = read_group(admin, topic, f"admin-{topic}", until=lambda v: len(v) >= 10)
        assert errors == [] and got == sent
        assert_produce_denied(alice, topic)
        assert_consume_denied(alice, topic, "alice-group")


def test_no_acl_means_denied_unless_allow_everyone(agents: SecureAgents) -> None:
    strict = start(agents, *SUPER)
    create_topics(strict, "open")
    create_acls(conf(strict, "admin"), acl(GROUP, "alice-group", "User:alice", AclOperation.READ))
    alice = conf(strict, "alice")
    assert_produce_denied(alice, "open")
    assert_consume_denied(alice, "open", "alice-group")
    admin = conf(strict, "admin")
    assert produce(admin, "open", [b"admin's"]).acked == [b"admin's"]
    assert read_all(admin, "open", 1) == [b"admin's"]  # nothing of alice's landed

    lenient = start(agents, *SUPER, "--allow-everyone-if-no-acl-found", "true")
    create_topics(lenient, "open", "claimed")
    alice = conf(lenient, "alice")
    sent = values("open", 10)
    produced = produce(alice, "open", sent)
    assert produced.failed == [] and sorted(produced.acked) == sorted(sent)
    got, errors = read_group(alice, "open", "alice-group", until=lambda v: len(v) >= 10)
    assert errors == [] and got == sent

    # Once an ACL names the topic, the default no longer applies to it: only bob may write.
    create_acls(conf(lenient, "admin"), acl(TOPIC, "claimed", "User:bob", AclOperation.WRITE))
    assert_produce_denied(alice, "claimed")
    assert produce(conf(lenient, "bob"), "claimed", [b"bob's"]).acked == [b"bob's"]


# 3. Metadata, prefixed patterns, DENY, hosts -----------------------------------------------


def test_metadata_leaves_out_topics_the_user_may_not_describe(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "visible", "readable", "hidden")
    create_acls(
        conf(agent, "admin"),
        acl(TOPIC, "visible", "User:alice", AclOperation.DESCRIBE),
        acl(TOPIC, "readable", "User:alice", AclOperation.READ),  # implies DESCRIBE
    )
    admin = AdminClient(conf(agent, "alice"))
    listed = admin.list_topics(timeout=15)
    assert set(listed.topics) == {"visible", "readable"}
    assert all(t.error is None for t in listed.topics.values())

    by_name = admin.list_topics(topic="hidden", timeout=15).topics["hidden"]
    assert by_name.error is not None and by_name.error.code() == TOPIC_DENIED
    assert by_name.partitions == {}
    # A topic that does not exist is no different to someone who may not describe it.
    absent = admin.list_topics(topic="absent", timeout=15).topics["absent"]
    assert absent.error is not None and absent.error.code() == TOPIC_DENIED

    # The super user sees them all.
    everything_listed = AdminClient(conf(agent, "admin")).list_topics(timeout=15)
    assert {"visible", "readable", "hidden"} <= set(everything_listed.topics)


def test_metadata_by_topic_id_needs_describe(agents: SecureAgents) -> None:
    """Metadata v12 asks for topics by id too; Kafka authorizes the id's topic by name."""
    agent = start(agents, *SUPER)
    create_topics(agent, "hidden-by-id")
    address = agent.address(LISTENER)
    admin = logged_in(address, "admin", USERS["admin"], "SCRAM-SHA-512")
    [described] = admin.metadata(("hidden-by-id",)).topics
    topic_id = described.topic_id
    admin.close()

    alice = logged_in(address, "alice", USERS["alice"], "SCRAM-SHA-512")
    response = alice.request(
        MetadataRequest(
            topics=(MetadataRequestTopic(name=None, topic_id=topic_id),),
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        )
    )
    alice.close()
    [topic] = response.topics
    assert topic.error_code == ErrorCode.topic_authorization_failed
    assert topic.name is None  # nor its name
    assert topic.partitions == ()


def test_prefixed_acls_cover_names_with_the_prefix(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "sales-eu", "sales-us", "salesman", "other")
    create_acls(
        conf(agent, "admin"),
        acl(TOPIC, "sales-", "User:alice", AclOperation.WRITE, pattern=PREFIXED),
        acl(TOPIC, "sales-", "User:alice", AclOperation.READ, pattern=PREFIXED),
        acl(GROUP, "alice-", "User:alice", AclOperation.READ, pattern=PREFIXED),
    )
    alice = conf(agent, "alice")
    for topic in ("sales-eu", "sales-us"):
        assert produce(alice, topic, [topic.encode()]).acked == [topic.encode()]
        got, errors = read_group(alice, topic, "alice-readers", until=lambda v: len(v) >= 1)
        assert errors == [] and got == [topic.encode()]
    for topic in ("salesman", "other"):  # "salesman" lacks the dash
        assert_produce_denied(alice, topic)
    # The group prefix covers "alice-readers" but not "bob-readers".
    got, errors = read_group(
        alice, "sales-eu", "bob-readers", until=lambda v: False, stop_on_error=True
    )
    assert got == [] and GROUP_DENIED in error_codes(errors)


def test_deny_overrides_allow(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "team-public", "team-secret")
    admin = conf(agent, "admin")
    create_acls(
        admin,
        acl(TOPIC, "team-", "User:alice", AclOperation.ALL, pattern=PREFIXED),
        acl(TOPIC, "team-secret", "User:alice", AclOperation.WRITE, DENY),
        acl(TOPIC, "*", "User:carol", AclOperation.ALL),
        acl(TOPIC, "team-secret", "User:*", AclOperation.READ, DENY),
        acl(GROUP, "*", "User:*", AclOperation.READ),
    )
    alice, carol = conf(agent, "alice"), conf(agent, "carol")
    assert produce(alice, "team-public", [b"public"]).acked == [b"public"]
    assert_produce_denied(alice, "team-secret")
    # carol may do ALL on every topic (the wildcard), but the wildcard-principal DENY
    # of READ on team-secret still wins; her WRITE there is allowed.
    assert produce(carol, "team-secret", [b"carol's"]).acked == [b"carol's"]
    assert_consume_denied(carol, "team-secret", "carol-group")
    assert_consume_denied(alice, "team-secret", "alice-group")
    assert read_all(admin, "team-secret", 1) == [b"carol's"]


def test_acls_match_the_client_host(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "by-host")
    admin = conf(agent, "admin")
    create_acls(
        admin,
        acl(TOPIC, "by-host", "User:alice", AclOperation.WRITE),
        acl(TOPIC, "by-host", "User:bob", AclOperation.WRITE),
        acl(TOPIC, "by-host", "User:alice", AclOperation.WRITE, DENY, host="127.0.0.1"),
        acl(TOPIC, "by-host", "User:bob", AclOperation.WRITE, DENY, host="10.1.2.3"),
    )
    # Clients come from 127.0.0.1: alice's DENY applies, bob's (another host) does not.
    assert_produce_denied(conf(agent, "alice"), "by-host")
    assert produce(conf(agent, "bob"), "by-host", [b"bob"]).acked == [b"bob"]

    # An ALLOW for another host grants nothing to 127.0.0.1 (and names the topic, so
    # the no-ACL default does not apply either).
    create_acls(admin, acl(TOPIC, "by-host", "User:carol", AclOperation.WRITE, host="10.1.2.3"))
    assert_produce_denied(conf(agent, "carol"), "by-host")
    create_acls(admin, acl(TOPIC, "by-host", "User:carol", AclOperation.WRITE, host="127.0.0.1"))
    assert produce(conf(agent, "carol"), "by-host", [b"carol"]).acked == [b"carol"]
    assert read_all(admin, "by-host", 2) == [b"bob", b"carol"]


# 4. CreateAcls, DescribeAcls, DeleteAcls --------------------------------------------------


def test_acl_admin_apis_through_admin_client(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    create_topics(agent, "managed")
    admin, alice = conf(agent, "admin"), conf(agent, "alice")
    write = acl(TOPIC, "managed", "User:alice", AclOperation.WRITE)
    read = acl(TOPIC, "man", "User:bob", AclOperation.READ, pattern=PREFIXED)
    group = acl(GROUP, "g", "User:bob", AclOperation.READ, DENY, host="10.0.0.1")
    create_acls(admin, write, read, group)
    assert set(describe_acls(admin, everything())) == {write, read, group}

    topic_acls = AclBindingFilter(
        ResourceType.TOPIC,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    assert set(describe_acls(admin, topic_acls)) == {write, read}
    # MATCH: the bindings that apply to the literal topic "managed".
    matching = AclBindingFilter(
        ResourceType.TOPIC,
        "managed",
        ResourcePatternType.MATCH,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    assert set(describe_acls(admin, matching)) == {write, read}
    bobs = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        "User:bob",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    assert set(describe_acls(admin, bobs)) == {read, group}

    # The ACL takes effect, and its deletion takes it away.
    assert produce(alice, "managed", [b"allowed"]).acked == [b"allowed"]
    assert delete_acls(admin, AclBindingFilter(*_filter_fields(write))) == [write]
    assert set(describe_acls(admin, everything())) == {read, group}
    assert_produce_denied(alice, "managed")
    assert set(delete_acls(admin, bobs)) == {read, group}
    assert describe_acls(admin, everything()) == []


def kafka_python_admin(agent: SecureAgent, user: str) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=agent.address(LISTENER),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=USERS[user],
        request_timeout_ms=15_000,
    )


def describe_with_kafka_python(agent: SecureAgent, user: str) -> list[Any]:
    """DescribeAcls (every binding) through kafka-python's admin client."""
    admin = kafka_python_admin(agent, user)
    try:
        every = ACLFilter(
            principal=None,
            host=None,
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(
                KpResourceType.ANY, None, ACLResourcePatternType.ANY
            ),
        )
        acls, _ = admin.describe_acls(every)
        return list(acls)
    finally:
        admin.close()


def _filter_fields(binding: Any) -> tuple[Any, ...]:
    return (
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


def test_acl_admin_apis_need_the_cluster_permission(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER)
    admin, alice = conf(agent, "admin"), conf(agent, "alice")
    create_acls(admin, acl(TOPIC, "t", "User:bob", AclOperation.READ))
    as_alice = AdminClient(alice)
    grab = acl(TOPIC, "t", "User:alice", AclOperation.ALL)
    [future] = as_alice.create_acls([grab]).values()
    assert admin_error(future) == CLUSTER_DENIED
    # librdkafka drops DescribeAcls' error code (an empty list comes back); kafka-python
    # raises it.
    assert as_alice.describe_acls(everything()).result(15) == []
    with pytest.raises(kafka.errors.ClusterAuthorizationFailedError):
        describe_with_kafka_python(agent, "alice")
    [future] = as_alice.delete_acls([everything()]).values()
    assert admin_error(future) == CLUSTER_DENIED
    # Nothing changed.
    assert describe_acls(admin, everything()) == [acl(TOPIC, "t", "User:bob", AclOperation.READ)]

    # DESCRIBE on the cluster lets alice list the ACLs; creating them takes ALTER.
    create_acls(admin, acl(CLUSTER, CLUSTER_NAME, "User:alice", AclOperation.DESCRIBE))
    assert len(describe_acls(alice, everything())) == 2
    [future] = as_alice.create_acls([grab]).values()
    assert admin_error(future) == CLUSTER_DENIED
    create_acls(admin, acl(CLUSTER, CLUSTER_NAME, "User:alice", AclOperation.ALTER))
    create_acls(alice, grab)
    assert grab in describe_acls(admin, everything())


def test_acl_admin_apis_without_an_authorizer_answer_security_disabled(
    agents: SecureAgents,
) -> None:
    agent = start(agents)  # no --authorizer
    admin = AdminClient(conf(agent, "admin"))
    [future] = admin.create_acls([acl(TOPIC, "t", "User:bob", AclOperation.READ)]).values()
    assert admin_error(future) == KafkaError.SECURITY_DISABLED
    with pytest.raises(kafka.errors.SecurityDisabledError):
        describe_with_kafka_python(agent, "admin")
    [future] = admin.delete_acls([everything()]).values()
    assert admin_error(future) == KafkaError.SECURITY_DISABLED
    # And nothing is enforced: any user may produce.
    assert produce(conf(agent, "alice"), "anything", [b"x"]).acked == [b"x"]


# 5. AlterUserScramCredentials / DescribeUserScramCredentials -------------------------------


def test_scram_users_through_admin_client(agents: SecureAgents) -> None:
    agent = start(agents, *SUPER, "--allow-everyone-if-no-acl-found", "true")
    address = agent.address(LISTENER)
    create_topics(agent, "daves")  # no ACL names it: anyone may use it
    admin = AdminClient(conf(agent, "admin"))
    # An ACL names the cluster, so the no-ACL default no longer lets anyone manage users.
    create_acls(
        conf(agent, "admin"), acl(CLUSTER, CLUSTER_NAME, "User:carol", AclOperation.DESCRIBE)
    )
    password = b"dave's password"
    sha256 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("dave", sha256, password)]
    )
    for future in futures.values():
        assert future.result(15) is None

    described = admin.describe_user_scram_credentials(["dave"])["dave"].result(15)
    infos = described.scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_256, 8192)]

    # dave logs in with SCRAM-SHA-256 and with PLAIN (checked against that credential);
    # he has no SCRAM-SHA-512 credential.
    for mechanism in ("SCRAM-SHA-256", "PLAIN"):
        assert login_error(address, "dave", password.decode(), mechanism) == ErrorCode.none
        dave = sasl_conf(address, "dave", password.decode(), mechanism)
        value = mechanism.encode()
        assert produce(dave, "daves", [value]).acked == [value]
    assert login_error(address, "dave", password.decode(), "SCRAM-SHA-512") == (
        ErrorCode.sasl_authentication_failed
    )
    assert login_error(address, "dave", "wrong", "PLAIN") == ErrorCode.sasl_authentication_failed

    # Not everyone may manage users: ALTER (and DESCRIBE) on the cluster.
    as_alice = AdminClient(conf(agent, "alice"))
    futures = as_alice.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("mallory", sha256, b"mallory's")]
    )
    assert [admin_error(f) for f in futures.values()] == [CLUSTER_DENIED]
    # Through kafka-python: librdkafka frees the request-level error string of a
    # DescribeUserScramCredentials response it did not allocate and aborts the process.
    kp_alice = kafka_python_admin(agent, "alice")
    try:
        with pytest.raises(kafka.errors.ClusterAuthorizationFailedError):
            kp_alice.describe_user_scram_credentials(["dave"])
    finally:
        kp_alice.close()
    assert login_error(address, "mallory", "mallory's", "PLAIN") == (
        ErrorCode.sasl_authentication_failed
    )

    # Deleting the credential stops the login, with either mechanism. (Through kafka-python:
    # confluent-kafka 2.16.1 frees a UserScramCredentialDeletion twice and aborts the
    # process, "munmap_chunk(): invalid pointer", after the agent answered.)
    kp_admin = kafka_python_admin(agent, "admin")
    try:
        deletion = KpScramDeletion("dave", KpScramMechanism.SCRAM_SHA_256)
        assert kp_admin.alter_user_scram_credentials([deletion]) == {"dave": None}
        # A second deletion finds nothing to delete (Kafka's RESOURCE_NOT_FOUND message).
        again = kp_admin.alter_user_scram_credentials([deletion])
        assert again["dave"] is not None and "does not exist" in again["dave"]
    finally:
        kp_admin.close()
    for mechanism in ("SCRAM-SHA-256", "PLAIN"):
        assert login_error(address, "dave", password.decode(), mechanism) == (
            ErrorCode.sasl_authentication_failed
        )
    locked_out = produce(
        {**sasl_conf(address, "dave", password.decode(), "PLAIN"), "message.timeout.ms": 5000},
        "daves",
        [b"after deletion"],
    )
    assert locked_out.acked == []
    assert error_codes(locked_out.errors) & LOCKED_OUT, locked_out.errors
    assert read_all(conf(agent, "admin"), "daves", 2) == [b"SCRAM-SHA-256", b"PLAIN"]
