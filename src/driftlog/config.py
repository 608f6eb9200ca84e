"""The agent's settings, with their defaults. Values only; parsing lives in the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from driftlog.coordinator.api import ALL_ROLES

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AgentConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 9092
    advertise_host: str = "127.0.0.1"
    advertise_port: int = 9092
    data_dir: Path = Path(".driftlog")
    # None means file://<data_dir>/objects
    object_store_url: str | None = None
    # None means the embedded SQLite database in data_dir; or postgresql://...
    coordinator_url: str | None = None
    # Names this agent in the writer lease; a restart with the same id takes
    # the lease back at once (the old process, if alive, is fenced).
    agent_id: str = ""
    lease_ms: int = 5_000
    # The writer RPC (cluster mode): port 0 picks a free one, published in the lease row.
    rpc_port: int = 0
    # HOST:PORT other agents connect to for the RPC; empty: advertise_host and the bound port.
    rpc_advertise: str = ""
    # Membership: agents heartbeat this often and count as gone after agent_timeout_ms.
    heartbeat_ms: int = 1_000
    agent_timeout_ms: int = 5_000
    # Broker defaults of retention.ms / retention.bytes, and how often they are applied.
    log_retention_ms: int = 7 * 24 * 3600 * 1000
    log_retention_bytes: int = -1
    retention_check_ms: int = 60_000
    # Garbage collection (lifecycle/gc.py) and compaction (lifecycle/compactor.py),
    # run by the jobs agent (cluster/placement.py). An interval of 0 turns the job off.
    gc_interval_ms: int = 30_000
    gc_delete_grace_ms: int = 60_000
    gc_orphan_grace_ms: int = 3_600_000
    gc_orphan_scan_ms: int = 600_000
    gc_max_deletes_per_s: int = 200
    compaction_interval_ms: int = 60_000
    compaction_min_age_ms: int = 60_000
    compaction_small_object_bytes: int = 4 * MiB
    compaction_target_bytes: int = 64 * MiB
    # Transactions: Kafka's transaction.max.timeout.ms and transactional.id.expiration.ms.
    transaction_max_timeout_ms: int = 900_000
    transactional_id_expiration_ms: int = 604_800_000
    # Key compaction of cleanup.policy=compact topics (lifecycle/key_compactor.py).
    key_compaction_interval_ms: int = 30_000
    key_compaction_map_bytes: int = 64 * MiB
    flush_ms: int = 250
    flush_bytes: int = 8 * MiB
    max_uploads: int = 4
    max_pending_bytes: int = 256 * MiB
    cache_bytes: int = 256 * MiB
    # The shared cache per zone (read/zone/): in cluster mode with an S3-like store, the
    # agents of a zone divide blocks of objects among themselves.
    zone_cache: bool = True
    zone_cache_bytes: int = 256 * MiB
    zone_cache_block_bytes: int = 16 * MiB
    zone_cache_peer_timeout_ms: int = 1_000
    read_ahead_bytes: int = 32 * MiB
    max_frame_bytes: int = 100 * MiB
    max_connections: int = 10_000
    # Produce requests wait for a flush, so clients pipeline many; memory is bounded by bytes.
    max_in_flight_per_connection: int = 1024
    max_in_flight_bytes_per_connection: int = 128 * MiB
    # JoinGroup legitimately waits up to a rebalance timeout (max.poll.interval.ms, 5 min).
    request_timeout_s: float = 330.0
    idle_timeout_s: float = 600.0
    auto_create_topics: bool = True
    default_partitions: int = 1
    # None: 0 when embedded; in a cluster, the id recorded for this agent id, or the
    # smallest free one (coordinator/core/node_ids.py).
    node_id: int | None = None
    zone: str = ""
    # What this agent does (cluster/placement.py): any of produce, fetch, jobs, writer.
    roles: frozenset[str] = ALL_ROLES
    # The agent group: Metadata lists only agents of the asking agent's group.
    agent_group: str = ""
    # Listeners in Kafka's syntax (security/listeners.py); empty: one PLAINTEXT listener
    # on listen_host:listen_port, advertised as advertise_host:advertise_port.
    listeners: str = ""
    advertised_listeners: str = ""
    listener_security_protocol_map: str = ""
    listener_settings: str = ""
    sasl_enabled_mechanisms: str = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    ssl_client_auth: str = ""  # empty: required with a client CA file, else none
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    ssl_principal_mapping_rules: str = "DEFAULT"
    # KIP-368: SASL sessions last this long, then the client re-authenticates (0: forever).
    connections_max_reauth_ms: int = 0
    # "acl": Kafka ACLs from the coordinator store decide every request; "": no authorizer.
    authorizer: str = ""
    super_users: str = ""  # Kafka's super.users: "User:a;User:b"
    allow_everyone_if_no_acl_found: bool = False
    # The agents' RPC secret (coordinator/runtime/peer_auth.py); None: the one kept in the database.
    cluster_secret_file: Path | None = None
    # HOST:PORT of the Prometheus endpoint (/metrics, /healthz, /readyz); empty: none.
    metrics_listen: str = ""
    # Fault injection for tests (storage/faulty.py); empty means off.
    faults: str = ""

    @property
    def store_url(self) -> str:
        if self.object_store_url:
            return self.object_store_url
        return f"file://{(self.data_dir / 'objects').resolve()}"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"

    @property
    def clustered(self) -> bool:
        """Several agents share the coordinator database (PostgreSQL)."""
        return self.coordinator_url is not None
