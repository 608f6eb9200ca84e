"""Kafka's ACL mapping of the APIs beyond produce and consume, end to end: ListOffsets,
DeleteRecords, CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
(Incremental)AlterConfigs, DescribeGroups, ListGroups, DeleteGroups, AddPartitionsToTxn,
TxnOffsetCommit, DescribeProducers, DescribeTransactions and ListTransactions.

Agents run `--authorizer acl` on a SASL_PLAINTEXT listener with `admin` as super user
(tests/e2e/test_acls.py has the setup). Requests go through confluent-kafka's
AdminClient, Producer and Consumer and kafka-python's admin client; raw requests where a
client checks Metadata first (and so never sends the request under test) or hides a
field the test needs (CreateTopics' topic_config_error_code, per-partition errors). Each
refusal is checked for what did not happen too: nothing was created, deleted or changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafka.errors
import pytest
from acl_clients import (
    CLUSTER,
    CLUSTER_NAME,
    GROUP,
    PREFIXED,
    TOPIC,
    TRANSACTIONAL_ID,
    acl,
    admin_error,
    create_acls,
    error_codes,
    logged_in,
    read_group,
    sasl_conf,
)
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclOperation,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import KafkaAdminClient
from kio.schema.add_partitions_to_txn.v3.request import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnTopic,
)
from kio.schema.create_topics.v7.request import CreatableTopic, CreateTopicsRequest
from kio.schema.delete_topics.v6.request import DeleteTopicsRequest, DeleteTopicState
from kio.schema.errors import ErrorCode
from kio.schema.list_offsets.v7.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kio.schema.txn_offset_commit.v3.request import (
    TxnOffsetCommitRequest,
    TxnOffsetCommitRequestPartition,
    TxnOffsetCommitRequestTopic,
)
from kio.schema.types import BrokerId, GroupId, ProducerId, TopicName, TransactionalId
from kio.static.primitive import i8, i16, i32, i32Timedelta, i64
from pki import Pki, make_pki
from sasl_client import SaslClient, SecureAgent, SecureAgents, produce

pytestmark = pytest.mark.timeout(180)

USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}
SUPER = ("--authorizer", "acl", "--super-users", "User:admin")
LISTENER = "SASL_PLAINTEXT"
TOPIC_DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = KafkaError.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = KafkaError.CLUSTER_AUTHORIZATION_FAILED
LATEST = -1
EARLIEST = -2


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def agent(tmp_path: Path, pki: Pki) -> Iterator[SecureAgent]:
    factory = SecureAgents(tmp_path, pki)
    try:
        yield factory.start(factory.ports(LISTENER), *SUPER, users=USERS)
    finally:
        factory.stop_all()


def conf(agent: SecureAgent, user: str) -> dict[str, Any]:
    return sasl_conf(agent.address(LISTENER), user, USERS[user])


def admin_client(agent: SecureAgent, user: str) -> AdminClient:
    return AdminClient(conf(agent, user))


def kafka_python(agent: SecureAgent, user: str) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=agent.address(LISTENER),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=USERS[user],
        request_timeout_ms=15_000,
    )


def raw(agent: SecureAgent, user: str) -> SaslClient:
    return logged_in(agent.address(LISTENER), user, USERS[user], "SCRAM-SHA-512")


def create_topics(agent: SecureAgent, *names: str, partitions: int = 1) -> None:
    admin = admin_client(agent, "admin")
    futures = admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    for future in futures.values():
        future.result(15)


def grant(agent: SecureAgent, *bindings: Any) -> None:
    create_acls(conf(agent, "admin"), *bindings)


def topic_names(agent: SecureAgent) -> set[str]:
    return set(admin_client(agent, "admin").list_topics(timeout=15).topics)


def partition_count(agent: SecureAgent, topic: str) -> int:
    metadata = admin_client(agent, "admin").list_topics(topic=topic, timeout=15)
    return len(metadata.topics[topic].partitions)


def offsets(agent: SecureAgent, user: str, topic: str, spec: OffsetSpec) -> int:
    admin = admin_client(agent, user)
    [future] = admin.list_offsets({TopicPartition(topic, 0): spec}).values()
    return int(future.result(15).offset)


# ListOffsets, DeleteRecords ----------------------------------------------------------------


def list_offsets_request(*topics: str) -> ListOffsetsRequest:
    return ListOffsetsRequest(
        replica_id=BrokerId(-1),
        isolation_level=i8(0),
        topics=tuple(
            ListOffsetsTopic(
                name=TopicName(name),
                partitions=(
                    ListOffsetsPartition(
                        partition_index=i32(0), current_leader_epoch=i32(-1), timestamp=i64(LATEST)
                    ),
                ),
            )
            for name in topics
        ),
    )


def test_list_offsets_needs_describe(agent: SecureAgent) -> None:
    create_topics(agent, "lo-visible", "lo-hidden")
    for topic in ("lo-visible", "lo-hidden"):
        assert len(produce(conf(agent, "admin"), topic, [b"a", b"b", b"c"]).acked) == 3
    grant(agent, acl(TOPIC, "lo-visible", "User:alice", AclOperation.DESCRIBE))

    assert offsets(agent, "alice", "lo-visible", OffsetSpec.latest()) == 3

    client = raw(agent, "alice")
    response = client.request(list_offsets_request("lo-visible", "lo-hidden", "lo-absent"))
    client.close()
    answers = {t.name: t.partitions[0] for t in response.topics}
    assert answers["lo-visible"].error_code == ErrorCode.none
    assert answers["lo-visible"].offset == 3
    for denied in ("lo-hidden", "lo-absent"):  # absent or not, the same answer
        assert answers[denied].error_code == ErrorCode.topic_authorization_failed
        assert answers[denied].offset == -1

    # DESCRIBE alone does not let alice read what the offsets point at.
    grant(agent, acl(GROUP, "lo-group", "User:alice", AclOperation.READ))
    got, errors = read_group(
        conf(agent, "alice"),
        "lo-visible",
        "lo-group",
        until=lambda v: False,
        stop_on_error=TOPIC_DENIED,
    )
    assert got == [] and TOPIC_DENIED in error_codes(errors), errors


def test_delete_records_needs_delete(agent: SecureAgent) -> None:
    create_topics(agent, "dr-topic")
    admin = conf(agent, "admin")
    assert len(produce(admin, "dr-topic", [b"0", b"1", b"2", b"3", b"4"]).acked) == 5
    grant(agent, acl(TOPIC, "dr-topic", "User:alice", AclOperation.DESCRIBE))
    alice = admin_client(agent, "alice")
    [future] = alice.delete_records([TopicPartition("dr-topic", 0, 2)]).values()
    assert admin_error(future) == TOPIC_DENIED
    assert offsets(agent, "admin", "dr-topic", OffsetSpec.earliest()) == 0

    grant(agent, acl(TOPIC, "dr-", "User:alice", AclOperation.DELETE, pattern=PREFIXED))
    [future] = alice.delete_records([TopicPartition("dr-topic", 0, 2)]).values()
    assert future.result(15).low_watermark == 2
    assert offsets(agent, "admin", "dr-topic", OffsetSpec.earliest()) == 2


# CreateTopics, DeleteTopics, CreatePartitions --------------------------------------------


def create_topics_request(*names: str) -> CreateTopicsRequest:
    return CreateTopicsRequest(
        topics=tuple(
            CreatableTopic(
                name=TopicName(name),
                num_partitions=i32(2),
                replication_factor=i16(1),
                assignments=(),
                configs=(),
            )
            for name in names
        ),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        validate_only=False,
    )


def test_create_topics_needs_create_on_the_cluster_or_the_topic(agent: SecureAgent) -> None:
    create_topics(agent, "ct-existing")
    alice = admin_client(agent, "alice")
    futures = alice.create_topics([NewTopic("ct-new", 1, 1), NewTopic("ct-existing", 1, 1)])
    # Denied before anything else: alice does not learn that ct-existing exists.
    assert {name: admin_error(f) for name, f in futures.items()} == {
        "ct-new": TOPIC_DENIED,
        "ct-existing": TOPIC_DENIED,
    }
    assert "ct-new" not in topic_names(agent)

    grant(agent, acl(TOPIC, "alice-", "User:alice", AclOperation.CREATE, pattern=PREFIXED))
    futures = alice.create_topics([NewTopic("alice-new", 2, 1), NewTopic("bob-new", 1, 1)])
    assert admin_error(futures["alice-new"]) is None
    assert admin_error(futures["bob-new"]) == TOPIC_DENIED
    assert {"alice-new"} <= topic_names(agent) and "bob-new" not in topic_names(agent)
    assert partition_count(agent, "alice-new") == 2

    # CreateTopics' answer shows the configs only to who may DESCRIBE_CONFIGS the topic.
    client = raw(agent, "alice")
    [hidden] = client.request(create_topics_request("alice-raw")).topics
    assert hidden.error_code == ErrorCode.none
    assert hidden.topic_config_error_code == ErrorCode.topic_authorization_failed
    assert hidden.configs == () and hidden.num_partitions == -1
    grant(
        agent, acl(TOPIC, "alice-", "User:alice", AclOperation.DESCRIBE_CONFIGS, pattern=PREFIXED)
    )
    [shown] = client.request(create_topics_request("alice-raw-2")).topics
    client.close()
    assert shown.error_code == ErrorCode.none and shown.topic_config_error_code == 0
    assert shown.num_partitions == 2
    assert "cleanup.policy" in {c.name for c in shown.configs or ()}

    # CREATE on the cluster covers every topic.
    bob = admin_client(agent, "bob")
    [future] = bob.create_topics([NewTopic("anything", 1, 1)]).values()
    assert admin_error(future) == TOPIC_DENIED
    grant(agent, acl(CLUSTER, CLUSTER_NAME, "User:bob", AclOperation.CREATE))
    [future] = bob.create_topics([NewTopic("anything", 1, 1)]).values()
    assert admin_error(future) is None
    assert "anything" in topic_names(agent)


def test_delete_topics_needs_delete(agent: SecureAgent) -> None:
    create_topics(agent, "dt-a", "dt-b", "dt-c")
    alice = admin_client(agent, "alice")
    futures = alice.delete_topics(["dt-a", "dt-absent"], operation_timeout=10)
    # Without DESCRIBE, an absent topic looks like a present one.
    assert {name: admin_error(f) for name, f in futures.items()} == {
        "dt-a": TOPIC_DENIED,
        "dt-absent": TOPIC_DENIED,
    }
    assert "dt-a" in topic_names(agent)

    # DESCRIBE without DELETE: still denied; an absent topic alice may see is unknown.
    grant(agent, acl(TOPIC, "dt-", "User:alice", AclOperation.DESCRIBE, pattern=PREFIXED))
    futures = alice.delete_topics(["dt-a", "dt-absent"], operation_timeout=10)
    assert admin_error(futures["dt-a"]) == TOPIC_DENIED
    assert admin_error(futures["dt-absent"]) == KafkaError.UNKNOWN_TOPIC_OR_PART

    grant(agent, acl(TOPIC, "dt-a", "User:alice", AclOperation.DELETE))
    [future] = alice.delete_topics(["dt-a"], operation_timeout=10).values()
    assert admin_error(future) is None
    assert "dt-a" not in topic_names(agent) and "dt-b" in topic_names(agent)

    # By id (v6): denied, and the name stays hidden from who may not describe it.
    ids = {t.name: t.topic_id for t in raw(agent, "admin").metadata(("dt-b", "dt-c")).topics}
    client = raw(agent, "bob")
    response = client.request(
        DeleteTopicsRequest(
            topics=(DeleteTopicState(name=None, topic_id=ids["dt-b"]),),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        )
    )
    [result] = response.responses
    assert result.error_code == ErrorCode.topic_authorization_failed
    assert result.name is None
    assert "dt-b" in topic_names(agent)
    client.close()

    # DELETE on the cluster covers every topic, by name or by id.
    grant(agent, acl(CLUSTER, CLUSTER_NAME, "User:bob", AclOperation.DELETE))
    client = raw(agent, "bob")
    response = client.request(
        DeleteTopicsRequest(
            topics=(DeleteTopicState(name=None, topic_id=ids["dt-b"]),),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=10)),
        )
    )
    client.close()
    assert [(r.name, r.error_code) for r in response.responses] == [("dt-b", ErrorCode.none)]
    bob = admin_client(agent, "bob")
    [future] = bob.delete_topics(["dt-c"], operation_timeout=10).values()
    assert admin_error(future) is None
    assert not {"dt-b", "dt-c"} & topic_names(agent)


def test_create_partitions_needs_alter(agent: SecureAgent) -> None:
    create_topics(agent, "cp-topic")
    alice = admin_client(agent, "alice")
    [future] = alice.create_partitions([NewPartitions("cp-topic", 3)]).values()
    assert admin_error(future) == TOPIC_DENIED
    assert partition_count(agent, "cp-topic") == 1
    grant(agent, acl(TOPIC, "cp-topic", "User:alice", AclOperation.ALTER))
    [future] = alice.create_partitions([NewPartitions("cp-topic", 3)]).values()
    assert admin_error(future) is None
    assert partition_count(agent, "cp-topic") == 3


# Configs ----------------------------------------------------------------------------------


def topic_config(agent: SecureAgent, user: str, topic: str) -> dict[str, str | None]:
    admin = admin_client(agent, user)
    [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    entries = future.result(15)
    return {name: entry.value for name, entry in entries.items()}


def set_retention(admin: AdminClient, topic: str, value: str) -> Any:
    entry = ConfigEntry("retention.ms", value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    [future] = admin.incremental_alter_configs([resource]).values()
    return future


def test_topic_configs_need_describe_configs_and_alter_configs(agent: SecureAgent) -> None:
    create_topics(agent, "cfg-topic")
    alice = admin_client(agent, "alice")
    [future] = alice.describe_configs([ConfigResource(ResourceType.TOPIC, "cfg-topic")]).values()
    assert admin_error(future) == TOPIC_DENIED
    assert admin_error(set_retention(alice, "cfg-topic", "3600000")) == TOPIC_DENIED
    legacy = ConfigResource(ResourceType.TOPIC, "cfg-topic", set_config={"retention.ms": "60000"})
    with pytest.warns(DeprecationWarning):  # the legacy AlterConfigs API, on purpose
        [future] = alice.alter_configs([legacy]).values()
    assert admin_error(future) == TOPIC_DENIED
    assert topic_config(agent, "admin", "cfg-topic")["retention.ms"] == "604800000"

    # DESCRIBE_CONFIGS shows them; changing them still takes ALTER_CONFIGS.
    grant(agent, acl(TOPIC, "cfg-topic", "User:alice", AclOperation.DESCRIBE_CONFIGS))
    assert topic_config(agent, "alice", "cfg-topic")["retention.ms"] == "604800000"
    assert admin_error(set_retention(alice, "cfg-topic", "3600000")) == TOPIC_DENIED

    # ALTER_CONFIGS (which implies DESCRIBE_CONFIGS) lets bob change them.
    grant(agent, acl(TOPIC, "cfg-topic", "User:bob", AclOperation.ALTER_CONFIGS))
    bob = admin_client(agent, "bob")
    assert admin_error(set_retention(bob, "cfg-topic", "3600000")) is None
    assert topic_config(agent, "bob", "cfg-topic")["retention.ms"] == "3600000"
    with pytest.warns(DeprecationWarning):
        [future] = bob.alter_configs([legacy]).values()
    assert admin_error(future) is None
    assert topic_config(agent, "admin", "cfg-topic")["retention.ms"] == "60000"


def test_broker_configs_need_the_cluster_permission(agent: SecureAgent) -> None:
    admin = admin_client(agent, "admin")
    node = str(admin.describe_cluster().result(15).nodes[0].id)
    broker = ConfigResource(ResourceType.BROKER, node)
    alice = admin_client(agent, "alice")
    [future] = alice.describe_configs([broker]).values()
    assert admin_error(future) == CLUSTER_DENIED
    entry = ConfigEntry("max.connections", "5000", incremental_operation=AlterConfigOpType.SET)
    change = ConfigResource(ResourceType.BROKER, node, incremental_configs=[entry])
    [future] = alice.incremental_alter_configs([change]).values()
    assert admin_error(future) == CLUSTER_DENIED

    grant(agent, acl(CLUSTER, CLUSTER_NAME, "User:alice", AclOperation.DESCRIBE_CONFIGS))
    [future] = alice.describe_configs([broker]).values()
    assert future.result(15)["max.connections"].value != "5000"
    [future] = alice.incremental_alter_configs([change]).values()
    assert admin_error(future) == CLUSTER_DENIED

    grant(agent, acl(CLUSTER, CLUSTER_NAME, "User:alice", AclOperation.ALTER_CONFIGS))
    [future] = alice.incremental_alter_configs([change]).values()
    assert admin_error(future) is None
    [future] = alice.describe_configs([broker]).values()
    assert future.result(15)["max.connections"].value == "5000"


# Groups -----------------------------------------------------------------------------------


def consume_in(agent: SecureAgent, user: str, topic: str, group: str) -> None:
    got, errors = read_group(conf(agent, user), topic, group, until=lambda v: len(v) >= 1)
    assert errors == [] and got, errors


def group_ids(admin: AdminClient) -> set[str]:
    listed = admin.list_consumer_groups().result(15)
    return {g.group_id for g in listed.valid}


def test_group_administration_follows_group_acls(agent: SecureAgent) -> None:
    create_topics(agent, "grp-topic")
    assert produce(conf(agent, "admin"), "grp-topic", [b"x"]).acked == [b"x"]
    grant(
        agent,
        acl(TOPIC, "grp-topic", "User:bob", AclOperation.READ),
        acl(GROUP, "grp-", "User:bob", AclOperation.READ, pattern=PREFIXED),
    )
    consume_in(agent, "bob", "grp-topic", "grp-one")
    consume_in(agent, "bob", "grp-topic", "grp-two")
    admin = admin_client(agent, "admin")
    assert {"grp-one", "grp-two"} <= group_ids(admin)

    # alice may describe nothing: she lists no group, and describing or deleting is denied.
    alice = admin_client(agent, "alice")
    assert group_ids(alice) == set()
    [future] = alice.describe_consumer_groups(["grp-one"]).values()
    assert admin_error(future) == GROUP_DENIED
    [future] = alice.delete_consumer_groups(["grp-one"]).values()
    assert admin_error(future) == GROUP_DENIED
    assert {"grp-one", "grp-two"} <= group_ids(admin)

    # DESCRIBE on one group: listed and described, with her operations on it (KIP-430).
    grant(agent, acl(GROUP, "grp-one", "User:alice", AclOperation.DESCRIBE))
    assert group_ids(alice) == {"grp-one"}
    [future] = alice.describe_consumer_groups(
        ["grp-one"], include_authorized_operations=True
    ).values()
    description = future.result(15)
    assert description.group_id == "grp-one"
    assert set(description.authorized_operations) == {AclOperation.DESCRIBE}
    [future] = alice.delete_consumer_groups(["grp-one"]).values()
    assert admin_error(future) == GROUP_DENIED

    # bob's READ implies DESCRIBE: his operations are READ and DESCRIBE.
    bob = admin_client(agent, "bob")
    [future] = bob.describe_consumer_groups(
        ["grp-two"], include_authorized_operations=True
    ).values()
    operations = set(future.result(15).authorized_operations)
    assert operations == {AclOperation.READ, AclOperation.DESCRIBE}

    # DESCRIBE on the cluster lists every group.
    grant(agent, acl(CLUSTER, CLUSTER_NAME, "User:alice", AclOperation.DESCRIBE))
    assert {"grp-one", "grp-two"} <= group_ids(alice)

    # DELETE on the group deletes it; the other stays.
    grant(agent, acl(GROUP, "grp-one", "User:alice", AclOperation.DELETE))
    [future] = alice.delete_consumer_groups(["grp-one"]).values()
    assert admin_error(future) is None
    remaining = group_ids(admin)
    assert "grp-one" not in remaining and "grp-two" in remaining

    # kafka-python's admin client sees the same.
    client = kafka_python(agent, "bob")
    try:
        result = client.delete_groups(["grp-two"])
        assert list(result) == ["grp-two"]
        assert result["grp-two"] == "GroupAuthorizationFailedError"
    finally:
        client.close()


# Transactions -----------------------------------------------------------------------------


def txn_offset_commit(transactional_id: str, group: str, *topics: str) -> TxnOffsetCommitRequest:
    return TxnOffsetCommitRequest(
        transactional_id=TransactionalId(transactional_id),
        group_id=GroupId(group),
        producer_id=ProducerId(1000),
        producer_epoch=i16(0),
        generation_id=i32(-1),
        member_id="",
        group_instance_id=None,
        topics=tuple(
            TxnOffsetCommitRequestTopic(
                name=TopicName(topic),
                partitions=(
                    TxnOffsetCommitRequestPartition(
                        partition_index=i32(0),
                        committed_offset=i64(1),
                        committed_leader_epoch=i32(-1),
                        committed_metadata=None,
                    ),
                ),
            )
            for topic in topics
        ),
    )


def add_partitions(transactional_id: str, *topics: str) -> AddPartitionsToTxnRequest:
    return AddPartitionsToTxnRequest(
        v3_and_below_transactional_id=TransactionalId(transactional_id),
        v3_and_below_producer_id=ProducerId(1000),
        v3_and_below_producer_epoch=i16(0),
        v3_and_below_topics=tuple(
            AddPartitionsToTxnTopic(name=TopicName(topic), partitions=(i32(0),)) for topic in topics
        ),
    )


def partition_errors(response: Any) -> dict[str, ErrorCode]:
    """Per topic, the error of its (only) partition."""
    if hasattr(response, "results_by_topic_v3_and_below"):
        return {
            t.name: ErrorCode(t.results_by_partition[0].partition_error_code)
            for t in response.results_by_topic_v3_and_below
        }
    return {t.name: ErrorCode(t.partitions[0].error_code) for t in response.topics}


def test_transactional_producer_needs_write_on_its_id_and_topics(agent: SecureAgent) -> None:
    create_topics(agent, "tx-topic", "tx-other")
    grant(
        agent,
        acl(TRANSACTIONAL_ID, "tx-alice", "User:alice", AclOperation.WRITE),
        acl(TOPIC, "tx-topic", "User:alice", AclOperation.WRITE),
        acl(TOPIC, "tx-other", "User:alice", AclOperation.DESCRIBE),
    )
    producer = Producer({**conf(agent, "alice"), "transactional.id": "tx-alice"})
    producer.init_transactions(15)
    producer.begin_transaction()
    producer.produce("tx-topic", b"aborted", partition=0)
    assert producer.flush(15) == 0  # tx-topic is in the transaction
    producer.produce("tx-other", b"not allowed", partition=0)
    with pytest.raises(KafkaException) as refused:
        producer.commit_transaction(15)
    error = refused.value.args[0]
    assert error.code() == TOPIC_DENIED and error.txn_requires_abort()
    producer.abort_transaction(15)
    producer.begin_transaction()
    producer.produce("tx-topic", b"committed", partition=0)
    producer.commit_transaction(15)

    # Another id: InitProducerId is refused.
    other = Producer({**conf(agent, "alice"), "transactional.id": "tx-bob"})
    with pytest.raises(KafkaException) as refused:
        other.init_transactions(15)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED

    # AddPartitionsToTxn over a raw connection: the id is checked first, then each topic;
    # with one denied, the others are not attempted.
    client = raw(agent, "alice")
    assert partition_errors(client.request(add_partitions("tx-bob", "tx-topic"))) == {
        "tx-topic": ErrorCode.transactional_id_authorization_failed
    }
    assert partition_errors(client.request(add_partitions("tx-alice", "tx-topic", "tx-other"))) == {
        "tx-topic": ErrorCode.operation_not_attempted,
        "tx-other": ErrorCode.topic_authorization_failed,
    }
    client.close()

    # read_committed (librdkafka's default): the committed record only.
    got, errors = read_group(conf(agent, "admin"), "tx-topic", "check", until=lambda v: len(v) >= 1)
    assert errors == [] and got == [b"committed"]
    got, errors = read_group(
        conf(agent, "admin"), "tx-other", "check", until=lambda v: False, timeout_s=3
    )
    assert got == []


def test_txn_offset_commit_needs_the_id_the_group_and_the_topics(agent: SecureAgent) -> None:
    create_topics(agent, "toc-readable", "toc-hidden")
    client = raw(agent, "alice")
    request = txn_offset_commit("toc-id", "toc-group", "toc-readable", "toc-hidden")
    assert set(partition_errors(client.request(request)).values()) == {
        ErrorCode.transactional_id_authorization_failed
    }
    grant(agent, acl(TRANSACTIONAL_ID, "toc-id", "User:alice", AclOperation.WRITE))
    assert set(partition_errors(client.request(request)).values()) == {
        ErrorCode.group_authorization_failed
    }
    grant(
        agent,
        acl(GROUP, "toc-group", "User:alice", AclOperation.READ),
        acl(TOPIC, "toc-readable", "User:alice", AclOperation.READ),
    )
    errors = partition_errors(client.request(request))
    client.close()
    assert errors["toc-hidden"] == ErrorCode.topic_authorization_failed
    # The readable topic passes authorization and meets the transaction's own checks
    # (no such producer).
    assert errors["toc-readable"] not in (
        ErrorCode.none,
        ErrorCode.topic_authorization_failed,
        ErrorCode.group_authorization_failed,
        ErrorCode.transactional_id_authorization_failed,
    )

    # send_offsets_to_transaction without READ on the group: AddOffsetsToTxn is refused.
    grant(
        agent,
        acl(TRANSACTIONAL_ID, "toc-producer", "User:alice", AclOperation.WRITE),
        acl(TOPIC, "toc-readable", "User:alice", AclOperation.WRITE),
    )
    consumer = Consumer({**conf(agent, "alice"), "group.id": "not-alices"})
    producer = Producer({**conf(agent, "alice"), "transactional.id": "toc-producer"})
    producer.init_transactions(15)
    producer.begin_transaction()
    producer.produce("toc-readable", b"v", partition=0)
    with pytest.raises(KafkaException) as refused:
        producer.send_offsets_to_transaction(
            [TopicPartition("toc-readable", 0, 1)], consumer.consumer_group_metadata(), 15
        )
    assert refused.value.args[0].code() == GROUP_DENIED
    producer.abort_transaction(15)
    consumer.close()


def test_transaction_admin_apis_follow_acls(agent: SecureAgent) -> None:
    create_topics(agent, "ta-topic")
    # An open transaction of the super user's.
    producer = Producer({**conf(agent, "admin"), "transactional.id": "ta-open"})
    producer.init_transactions(15)
    producer.begin_transaction()
    producer.produce("ta-topic", b"pending", partition=0)
    assert producer.flush(15) == 0

    admin = admin_client(agent, "admin")
    node = admin.describe_cluster().result(15).nodes[0].id
    client = kafka_python(agent, "alice")
    try:
        listed = client.list_transactions()
        assert [t.transactional_id for ts in listed.values() for t in ts] == []
        with pytest.raises(kafka.errors.TransactionalIdAuthorizationFailedError):
            client.describe_transactions(["ta-open"])
        # To the agent itself: asked for the partition's leader, kafka-python would look it
        # up in Metadata first, which alice may not.
        with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
            client.describe_producers([KpTopicPartition("ta-topic", 0)], broker_id=node)

        describe = AclOperation.DESCRIBE
        grant(agent, acl(TRANSACTIONAL_ID, "ta-", "User:alice", describe, pattern=PREFIXED))
        listed = client.list_transactions()
        assert [t.transactional_id for ts in listed.values() for t in ts] == ["ta-open"]
        description = client.describe_transactions(["ta-open"])["ta-open"]
        assert description.state.value == "Ongoing"
        assert set(description.topic_partitions) == set()  # she may not describe ta-topic

        grant(agent, acl(TOPIC, "ta-topic", "User:alice", AclOperation.READ))
        description = client.describe_transactions(["ta-open"])["ta-open"]
        assert {(tp.topic, tp.partition) for tp in description.topic_partitions} == {
            ("ta-topic", 0)
        }
        states = client.describe_producers([KpTopicPartition("ta-topic", 0)], broker_id=node)
        [state] = states[KpTopicPartition("ta-topic", 0)].active_producers
        assert state.current_transaction_start_offset == 0
    finally:
        client.close()
        producer.abort_transaction(15)
