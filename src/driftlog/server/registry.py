"""Which API key is served by which handler, and the versions ApiVersions advertises.

A version is listed only when its handler implements every field the version
defines that matters to clients (flexible versions included).
"""

from __future__ import annotations

from driftlog.server import admin
from driftlog.server import quota_handlers as quota
from driftlog.server import security_admin as sec
from driftlog.server import transactions as txn
from driftlog.server.api_versions import handle_api_versions
from driftlog.server.context import Handler
from driftlog.server.fetch import handle_fetch
from driftlog.server.group_handlers import GROUP_API_VERSIONS, GROUP_HANDLERS
from driftlog.server.list_offsets import handle_list_offsets
from driftlog.server.metadata import handle_describe_cluster, handle_metadata
from driftlog.server.produce import handle_produce
from driftlog.server.producer_ids import handle_init_producer_id
from driftlog.server.sasl_handlers import handle_sasl_authenticate, handle_sasl_handshake

_CORE: dict[int, tuple[Handler, int, int]] = {
    0: (handle_produce, 3, 11),
    1: (handle_fetch, 4, 16),
    2: (handle_list_offsets, 1, 9),
    3: (handle_metadata, 0, 12),
    18: (handle_api_versions, 0, 4),
    # Handshake v0 is followed by unframed tokens (Agent.handle_frame); librdkafka wants
    # v0 advertised before it uses SASL at all, then uses v1.
    17: (handle_sasl_handshake, 0, 1),
    36: (handle_sasl_authenticate, 0, 2),
    29: (sec.handle_describe_acls, 1, 3),
    30: (sec.handle_create_acls, 1, 3),
    31: (sec.handle_delete_acls, 1, 3),
    50: (sec.handle_describe_user_scram_credentials, 0, 0),
    51: (sec.handle_alter_user_scram_credentials, 0, 0),
    48: (quota.handle_describe_client_quotas, 0, 1),
    49: (quota.handle_alter_client_quotas, 0, 1),
    19: (admin.handle_create_topics, 2, 7),
    20: (admin.handle_delete_topics, 1, 6),
    21: (admin.handle_delete_records, 0, 2),
    22: (handle_init_producer_id, 0, 5),
    32: (admin.handle_describe_configs, 1, 4),
    33: (admin.handle_alter_configs, 0, 2),
    37: (admin.handle_create_partitions, 0, 3),
    44: (admin.handle_incremental_alter_configs, 0, 1),
    60: (handle_describe_cluster, 0, 2),
    # Transactions, classic protocol: AddPartitionsToTxn v4+ and EndTxn v5+ are KIP-890
    # part 2 (transaction.version 2), which is never finalized in ApiVersions.
    24: (txn.handle_add_partitions_to_txn, 0, 3),
    25: (txn.handle_add_offsets_to_txn, 0, 3),
    26: (txn.handle_end_txn, 0, 3),
    27: (txn.handle_write_txn_markers, 1, 1),
    28: (txn.handle_txn_offset_commit, 0, 3),
    61: (txn.handle_describe_producers, 0, 0),
    65: (txn.handle_describe_transactions, 0, 0),
    66: (txn.handle_list_transactions, 0, 1),
}

HANDLERS: dict[int, Handler] = {key: h for key, (h, _, _) in _CORE.items()} | GROUP_HANDLERS
SUPPORTED_VERSIONS: dict[int, tuple[int, int]] = {
    key: (low, high) for key, (_, low, high) in _CORE.items()
} | GROUP_API_VERSIONS

# What ApiVersions advertises. Produce starts at v0 although v0-v2 are refused:
# librdkafka before 2.8 compresses only when the broker advertises Produce v0
# (librdkafka #4956); Apache Kafka 4.0 does the same for that reason (KAFKA-18659).
ADVERTISED_VERSIONS: dict[int, tuple[int, int]] = SUPPORTED_VERSIONS | {
    0: (0, SUPPORTED_VERSIONS[0][1])
}
