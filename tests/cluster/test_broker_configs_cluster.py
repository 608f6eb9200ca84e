"""Dynamic broker configs in a cluster: a cluster-wide default set through one agent
reaches every agent (stored in the coordinator, reloaded every heartbeat); a broker's
own value stays its own."""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient, ConfigResource
from conftest import Cluster
from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs.v1.request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from kio.static.primitive import i8
from raw_client import RawClient

DYNAMIC_BROKER_CONFIG = 2
DYNAMIC_DEFAULT_BROKER_CONFIG = 3


def set_broker_config(bootstrap: str, resource: str, name: str, value: str) -> ErrorCode:
    client = RawClient(bootstrap)
    try:
        response = client.request(
            IncrementalAlterConfigsRequest(
                resources=(
                    AlterConfigsResource(
                        resource_type=i8(4),
                        resource_name=resource,
                        configs=(AlterableConfig(name=name, config_operation=i8(0), value=value),),
                    ),
                ),
                validate_only=False,
            )
        )
        return ErrorCode(response.responses[0].error_code)
    finally:
        client.close()


def broker_config(bootstrap: str, node_id: int, name: str) -> tuple[str, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.BROKER, str(node_id))
    entry = admin.describe_configs([resource])[resource].result(10)[name]
    return entry.value, entry.source


def test_a_cluster_wide_default_reaches_every_agent(cluster: Cluster) -> None:
    first, second = cluster.add("a"), cluster.add("b")
    cluster.wait_for_members()
    assert set_broker_config(first.bootstrap, "", "message.max.bytes", "7000") == ErrorCode.none
    assert set_broker_config(second.bootstrap, "2", "max.connections", "321") == ErrorCode.none
    # The other agent applies the default within a heartbeat or two (250 ms here).
    deadline = time.monotonic() + 10
    while broker_config(second.bootstrap, 2, "message.max.bytes") != (
        "7000",
        DYNAMIC_DEFAULT_BROKER_CONFIG,
    ):
        assert time.monotonic() < deadline, "the default did not reach the second agent"
        time.sleep(0.2)
    # A broker's own value is its own: the first agent keeps the static one.
    assert broker_config(second.bootstrap, 2, "max.connections") == ("321", DYNAMIC_BROKER_CONFIG)
    assert broker_config(first.bootstrap, 1, "max.connections")[0] == "10000"
    assert broker_config(first.bootstrap, 1, "message.max.bytes") == (
        "7000",
        DYNAMIC_DEFAULT_BROKER_CONFIG,
    )
