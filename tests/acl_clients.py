"""Clients for the ACL tests: ACL bindings through confluent-kafka's AdminClient, consumers
that report what the agent refused (a message error as well as the error callback), kcat
whose failure is the expected outcome, and SASL logins over raw sockets.

The agents and users come from tests/sasl_client.py (`SecureAgents`, `set_user`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from kio.schema.errors import ErrorCode
from sasl_client import KCAT, SaslClient

ALLOW = AclPermissionType.ALLOW
DENY = AclPermissionType.DENY
LITERAL = ResourcePatternType.LITERAL
PREFIXED = ResourcePatternType.PREFIXED
TOPIC = ResourceType.TOPIC
GROUP = ResourceType.GROUP
CLUSTER = ResourceType.BROKER  # confluent-kafka's name for Kafka's CLUSTER resource
TRANSACTIONAL_ID = ResourceType.TRANSACTIONAL_ID
CLUSTER_NAME = "kafka-cluster"
# After the last expected record arrived, keep reading this long to catch extras.
DRAIN_S = 0.3


def sasl_conf(
    address: str, user: str, password: str, mechanism: str = "SCRAM-SHA-512"
) -> dict[str, Any]:
    """librdkafka settings for a SASL_PLAINTEXT listener, logged in as `user`."""
    return {
        "bootstrap.servers": address,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def acl(
    resource_type: ResourceType,
    name: str,
    principal: str,
    operation: AclOperation,
    permission: AclPermissionType = ALLOW,
    *,
    pattern: ResourcePatternType = LITERAL,
    host: str = "*",
) -> AclBinding:
    return AclBinding(resource_type, name, pattern, principal, host, operation, permission)


def everything() -> AclBindingFilter:
    """A filter matching every binding."""
    return AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def create_acls(conf: Mapping[str, Any], *bindings: AclBinding) -> None:
    """CreateAcls through AdminClient; fails unless every binding was created."""
    admin = AdminClient(dict(conf))  # held until the futures are done
    futures = admin.create_acls(list(bindings))
    for future in futures.values():
        assert future.result(15) is None


def delete_acls(conf: Mapping[str, Any], *filters: AclBindingFilter) -> list[AclBinding]:
    """DeleteAcls through AdminClient: the bindings deleted."""
    admin = AdminClient(dict(conf))
    futures = admin.delete_acls(list(filters))
    deleted: list[AclBinding] = []
    for future in futures.values():
        deleted.extend(future.result(15))
    return deleted


def describe_acls(conf: Mapping[str, Any], acl_filter: AclBindingFilter) -> list[AclBinding]:
    admin = AdminClient(dict(conf))
    bindings = admin.describe_acls(acl_filter).result(15)
    return list(bindings)


def admin_error(future: Any, timeout_s: float = 15.0) -> int | None:
    """The error code an AdminClient future failed with, or None if it succeeded."""
    try:
        future.result(timeout_s)
    except KafkaException as e:
        error: KafkaError = e.args[0]
        return int(error.code())
    return None


def error_codes(errors: Iterable[KafkaError]) -> set[int]:
    return {int(e.code()) for e in errors}


def read_partition(
    conf: Mapping[str, Any],
    topic: str,
    group: str,
    *,
    until: Callable[[list[bytes]], bool],
    stop_on_error: bool | int = False,
    timeout_s: float = 20.0,
) -> tuple[list[bytes], list[KafkaError]]:
    """Partition 0 of `topic` from its start (assigned, no commits), until `until(values)`
    then a short drain, the first error with `stop_on_error` (True: any error; a code: the
    first error with that code), or the deadline. The errors are those of messages and of
    the error callback (where librdkafka reports refusals)."""
    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **conf,
            "error_cb": errors.append,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        return _poll(consumer, errors, until, stop_on_error, timeout_s)
    finally:
        consumer.close()


def read_group(
    conf: Mapping[str, Any],
    topic: str,
    group: str,
    *,
    until: Callable[[list[bytes]], bool],
    stop_on_error: bool | int = False,
    timeout_s: float = 30.0,
) -> tuple[list[bytes], list[KafkaError]]:
    """Subscribe as a member of `group` (JoinGroup, SyncGroup, OffsetFetch, Fetch) from
    the earliest offset, read as `read_partition` does, then commit what was read."""
    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **conf,
            "error_cb": errors.append,
        }
    )
    try:
        consumer.subscribe([topic])
        values, errors = _poll(consumer, errors, until, stop_on_error, timeout_s)
        if values:
            consumer.commit(asynchronous=False)
        return values, errors
    finally:
        consumer.close()


def _poll(
    consumer: Consumer,
    errors: list[KafkaError],
    until: Callable[[list[bytes]], bool],
    stop_on_error: bool | int,
    timeout_s: float,
) -> tuple[list[bytes], list[KafkaError]]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    drain_until: float | None = None
    while time.monotonic() < (drain_until or deadline):
        if stop_on_error is True and errors:
            break
        if stop_on_error is not False and stop_on_error in error_codes(errors):
            break
        message = consumer.poll(0.1)
        if message is not None:
            error = message.error()
            if error is not None:
                errors.append(error)
            else:
                value = message.value()
                assert isinstance(value, bytes)
                values.append(value)
        if drain_until is None and until(values):
            drain_until = time.monotonic() + DRAIN_S
    return values, errors


def run_kcat(
    conf: Mapping[str, Any], *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """kcat with `conf` as -b and -X settings; the caller checks how it ended."""
    command = [KCAT, "-b", str(conf["bootstrap.servers"]), *args]
    for key, value in conf.items():
        if key != "bootstrap.servers":
            command += ["-X", f"{key}={value}"]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)


def logged_in(address: str, user: str, password: str, mechanism: str) -> SaslClient:
    """A raw connection logged in as `user` (fails if the login is refused)."""
    client = SaslClient(address)
    if mechanism == "PLAIN":
        response = client.login_plain(user, password)
    else:
        response = client.login_scram(mechanism, user, password)
    assert response.error_code == ErrorCode.none, (user, mechanism, response)
    return client


def login_error(address: str, user: str, password: str, mechanism: str) -> ErrorCode:
    """The error a raw login as `user` ends with (ErrorCode.none when it succeeds)."""
    client = SaslClient(address)
    try:
        if mechanism == "PLAIN":
            response = client.login_plain(user, password)
        else:
            response = client.login_scram(mechanism, user, password)
        return ErrorCode(response.error_code)
    finally:
        client.close()


def poll_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
