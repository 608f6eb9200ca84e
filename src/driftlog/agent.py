"""One Driftlog agent: wires the store, coordinator, write and read paths, and the listener.

Owns process-level lifecycle (start, drain on SIGTERM, stats) and request
dispatch by API key. Protocol details live in `server/`, storage in the core.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import logging
import ssl
import sys
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.agent_metrics import exit_stats, register_agent_metrics
from driftlog.clock import SYSTEM_CLOCK
from driftlog.cluster.membership import Membership
from driftlog.cluster.placement import JOBS, WRITER, group_coordinator, jobs_agent, with_role
from driftlog.config import AgentConfig
from driftlog.coordinator.api import ROLE_ORDER, AgentInfo, CommitOutcome, CoordinatorError
from driftlog.coordinator.core.retention import RetentionPolicy
from driftlog.coordinator.core.transactions import TxnLimits
from driftlog.coordinator.engines.backend import Backend
from driftlog.coordinator.engines.postgres import PostgresBackend
from driftlog.coordinator.engines.sqlite import SqliteBackend
from driftlog.coordinator.runtime.service import AgentCoordinator
from driftlog.groups.coordinator import GroupCoordinator
from driftlog.lifecycle.compactor import CompactionConfig, Compactor
from driftlog.lifecycle.gc import GcConfig, ObjectCollector
from driftlog.lifecycle.key_compactor import KeyCompactionConfig, KeyCompactor
from driftlog.lifecycle.runner import PeriodicJob
from driftlog.metrics.http import MetricsServer
from driftlog.metrics.registry import Registry
from driftlog.protocol.codec import (
    MalformedRequest,
    Request,
    UnsupportedRequest,
    decode_request,
    encode_response,
    peek_prefix,
)
from driftlog.protocol.schema import build, response_class
from driftlog.read.cache import BatchCache
from driftlog.read.fetcher import BatchFetcher
from driftlog.read.zone import messages as zone_messages
from driftlog.read.zone.cache import ZoneCache, ZoneMembers
from driftlog.read.zone.peers import PeerClient
from driftlog.read.zone.prefetch import ReadAhead
from driftlog.read.zone.readahead import ReadAheadPlanner
from driftlog.read.zone.warming import WarmingStore
from driftlog.security.acl import AclBinding, Authorizer, parse_super_users
from driftlog.security.credentials import CredentialCache
from driftlog.security.listeners import Listener, parse_listeners
from driftlog.security.principal import (
    PrincipalMapper,
    PrincipalMappingError,
    certificate_subject,
    user_principal,
)
from driftlog.security.quotas import QuotaManager
from driftlog.security.tls import server_context
from driftlog.server import broker_configs
from driftlog.server.access import Access, denial
from driftlog.server.api_versions import api_versions_error_response
from driftlog.server.context import RequestContext
from driftlog.server.listener import ConnectionClosed, ConnectionLimits, KafkaConnection
from driftlog.server.registry import HANDLERS, SUPPORTED_VERSIONS
from driftlog.server.request_metrics import RequestMetrics
from driftlog.server.sasl_handlers import unframed_token
from driftlog.server.session import Session
from driftlog.storage.api import ObjectStore
from driftlog.storage.faulty import FaultConfig, FaultyObjectStore
from driftlog.storage.keys import max_commit_age_ms
from driftlog.storage.metered import MeteredObjectStore
from driftlog.storage.obstore import open_store
from driftlog.write.layout import ObjectLayout
from driftlog.write.pipeline import WritePipeline

log = logging.getLogger(__name__)

API_VERSIONS_KEY = 18
DRAIN_RESPONSES_S = 2.0
_MISSING_ROLE = {
    WRITER: "no live agent has the writer role (--roles): nothing can be committed",
    JOBS: "no live agent has the jobs role (--roles): garbage collection and compaction do not run",
}


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.listeners = listeners_of(config)
        self.agent_id = agent_identity(config, self.listeners)
        # A cluster agent without --node-id gets its id at start (claim_node_id).
        self.node_id = config.node_id if config.node_id is not None else 0
        self._tls = {
            listener.name: _tls_context(config, listener)
            for listener in self.listeners
            if listener.protocol.uses_tls
        }
        self._principal_mapper = PrincipalMapper(config.ssl_principal_mapping_rules)
        self.credentials = CredentialCache()
        # None: no authorizer (everything allowed); else rebuilt whenever ACLs change. Until
        # the ACLs are first loaded only super users are allowed: never fail open.
        self._super_users = parse_super_users(config.super_users)
        self.authorizer: Authorizer | None = (
            Authorizer((), self._super_users, allow_everyone_if_no_acl_found=False)
            if config.authorizer == "acl"
            else None
        )
        self.quotas = QuotaManager()
        store: ObjectStore = open_store(config.store_url)
        if config.faults:
            log.warning("FAULT INJECTION ON in the object store: %s", config.faults)
            store = FaultyObjectStore(store, FaultConfig.parse(config.faults))
        # Outermost: injected faults count as the store's own.
        self.store = MeteredObjectStore(store)
        self.coordinator = AgentCoordinator(
            open_backend(config),
            SYSTEM_CLOCK,
            holder=_lease_holder(config, self.agent_id),
            rpc_host=config.listen_host if config.clustered else None,
            rpc_port=config.rpc_port,
            rpc_advertise_host=config.advertise_host,
            rpc_advertise_address=config.rpc_advertise,
            lease_ms=config.lease_ms,
            retention=RetentionPolicy(
                config.log_retention_ms, config.log_retention_bytes, config.retention_check_ms
            ),
            max_commit_age_ms=max_commit_age_ms(config.gc_orphan_grace_ms),
            rpc_secret=_cluster_secret(config),
            txn_limits=TxnLimits(
                config.transaction_max_timeout_ms, config.transactional_id_expiration_ms
            ),
            writer_candidate=WRITER in config.roles,
        )
        self.collector = ObjectCollector(
            self.coordinator.backend,
            self.store,
            SYSTEM_CLOCK,
            GcConfig(
                interval_ms=max(config.gc_interval_ms, 1),
                delete_grace_ms=config.gc_delete_grace_ms,
                orphan_grace_ms=config.gc_orphan_grace_ms,
                orphan_scan_interval_ms=config.gc_orphan_scan_ms,
                max_deletes_per_s=config.gc_max_deletes_per_s,
            ),
        )
        self.compactor = Compactor(
            self.coordinator.backend,
            self.store,
            SYSTEM_CLOCK,
            self.coordinator.relocate,
            CompactionConfig(
                interval_ms=max(config.compaction_interval_ms, 1),
                min_age_ms=config.compaction_min_age_ms,
                small_object_bytes=config.compaction_small_object_bytes,
                target_object_bytes=config.compaction_target_bytes,
            ),
        )
        self.key_compactor = KeyCompactor(
            self.coordinator.backend,
            self.coordinator,
            self.store,
            SYSTEM_CLOCK,
            self.coordinator.rewrite_batches,
            KeyCompactionConfig(
                interval_ms=config.key_compaction_interval_ms,
                map_bytes=config.key_compaction_map_bytes,
            ),
        )
        # Garbage collection and both compactions run on one jobs agent of the cluster
        # (`runs_jobs`); their swaps go to the writer, over the RPC when it is another agent.
        self._lifecycle_jobs = [
            PeriodicJob(
                "garbage-collection",
                self.collector.collect,
                config.gc_interval_ms,
                self.runs_jobs,
            ),
            PeriodicJob(
                "compaction",
                self.compactor.compact_once,
                config.compaction_interval_ms,
                self.runs_jobs,
            ),
            # Dynamic broker configs another agent changed (cluster-wide ones above all).
            PeriodicJob(
                "broker-configs",
                lambda: broker_configs.refresh(self),
                config.heartbeat_ms,
                lambda: True,
            ),
            # Credentials (and ACLs and quotas) another agent changed.
            PeriodicJob("security", self.refresh_security, config.heartbeat_ms, lambda: True),
            PeriodicJob(
                "key-compaction",
                self.key_compactor.compact_once,
                config.key_compaction_interval_ms,
                self.runs_jobs,
            ),
        ]
        self.cache = BatchCache(config.cache_bytes)
        self.zone_cache: ZoneCache | None = None
        if uses_zone_cache(config):
            self.zone_cache = ZoneCache(
                self.store,
                SYSTEM_CLOCK,
                me=self.agent_id,
                members=ZoneMembers(lambda: self.membership.live, self.agent_id, config.zone),
                transport=None,  # set at start, once the cluster secret is known
                block_bytes=config.zone_cache_block_bytes,
                cache_bytes=config.zone_cache_bytes,
                peer_timeout_s=config.zone_cache_peer_timeout_ms / 1000,
            )
            self.coordinator.add_frame_handler(zone_messages.TAGS, self.zone_cache.on_frame)
        self.fetcher = BatchFetcher(self.store, self.cache, self.zone_cache)
        if self.zone_cache is not None and config.read_ahead_bytes > 0:
            self.fetcher.read_ahead = ReadAhead(
                ReadAheadPlanner(config.read_ahead_bytes),
                lambda topic_id, partition, offset, max_bytes: self.coordinator.find_batches(
                    topic_id, partition, offset, max_bytes
                ),
                self.zone_cache,
                self.cache,
            )
        self.pipeline = WritePipeline(
            # With the zone cache, each upload warms its blocks' owners before its commit.
            self.store if self.zone_cache is None else WarmingStore(self.store, self.zone_cache),
            self.coordinator,
            flush_bytes=config.flush_bytes,
            flush_age_ms=config.flush_ms,
            max_uploads=config.max_uploads,
            max_pending_bytes=config.max_pending_bytes,
            on_committed=self._cache_committed,
        )
        self.membership = Membership(
            self.coordinator.backend,
            SYSTEM_CLOCK,
            AgentInfo(
                agent_id=self.agent_id,
                node_id=self.node_id,
                host=self.listeners[0].advertised_host,
                port=self.listeners[0].advertised_port,
                zone=config.zone,
                rpc_address="",
                listeners=tuple(
                    (lis.name, lis.advertised_host, lis.advertised_port) for lis in self.listeners
                ),
                roles=config.roles,
                group=config.agent_group,
            ),
            shared=config.clustered,
            heartbeat_ms=config.heartbeat_ms,
            timeout_ms=config.agent_timeout_ms,
            on_change=self._membership_changed,
            writer_silent_s=self.coordinator.writer_silent_s,
        )
        self.groups = GroupCoordinator(
            now_ms=lambda: int(time.monotonic() * 1000), owns=self.owns_group
        )
        self._servers: list[asyncio.Server] = []
        self._connections: set[KafkaConnection] = set()
        self._limits = ConnectionLimits(
            max_frame_bytes=config.max_frame_bytes,
            max_in_flight=config.max_in_flight_per_connection,
            max_in_flight_bytes=config.max_in_flight_bytes_per_connection,
            request_timeout_s=config.request_timeout_s,
            idle_timeout_s=config.idle_timeout_s,
        )
        self._logged_errors: set[tuple[str, int]] = set()
        self._running_jobs = False
        self._missing_roles: list[str] = []
        self.cluster_id = ""
        self.metrics = Registry()
        register_agent_metrics(
            self.metrics,
            store=self.store,
            cache=self.cache,
            pipeline=self.pipeline,
            coordinator=self.coordinator,
            collector=self.collector,
            compactor=self.compactor,
            key_compactor=self.key_compactor,
            membership=self.membership,
            fetcher=self.fetcher,
            zone_cache=self.zone_cache,
        )
        self.metrics.gauge(
            "driftlog_agent_runs_jobs",
            "1 while this agent runs garbage collection and compaction (the cluster's jobs "
            "agent), else 0.",
        ).labels().set_function(lambda: float(self.runs_jobs()))
        roles = self.metrics.gauge("driftlog_agent_role", "This agent's roles (--roles).", ["role"])
        for role in ROLE_ORDER:
            roles.labels(role).set(1.0 if role in config.roles else 0.0)
        self.request_metrics = RequestMetrics(
            self.metrics,
            lambda: len(self._connections),
            {key: h.__name__.removeprefix("handle_") for key, h in HANDLERS.items()},
        )
        self._metrics_server: MetricsServer | None = None
        if config.metrics_listen:
            host, _, port = config.metrics_listen.rpartition(":")  # checked by the CLI
            self._metrics_server = MetricsServer(
                host.strip("[]") or "0.0.0.0",
                int(port),
                self.metrics,
                self._ready,
                collect=lambda: self.request_metrics.collect_lag(self.coordinator, self.owns_group),
            )

    def _proposed_cluster_id(self) -> str:
        # Data directories from before the id moved into the database kept it in a file.
        path = self.config.data_dir / "cluster.id"
        if self.config.coordinator_url is None and path.exists():
            return path.read_text().strip()
        return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def group_coordinator(self, group_id: str) -> AgentInfo:
        """The agent that coordinates `group_id` (this one when alone)."""
        return group_coordinator(group_id, self.membership.leaders()) or self.membership.me

    def owns_group(self, group_id: str) -> bool:
        return self.group_coordinator(group_id).agent_id == self.membership.me.agent_id

    def runs_jobs(self) -> bool:
        """Whether this agent runs garbage collection and compaction now: it has the jobs
        role, takes part in the membership, and is the rendezvous choice among the live
        jobs agents of every group. While agents disagree on membership two may run them
        for a moment, which the jobs allow (lifecycle/)."""
        membership = self.membership
        if JOBS not in membership.me.roles or membership.stepping_aside():
            return False
        chosen = jobs_agent(membership.cluster)
        return chosen is not None and chosen.agent_id == membership.me.agent_id

    def missing_roles(self) -> list[str]:
        """Roles no live agent of the cluster has (`writer`: nothing commits; `jobs`:
        objects are neither collected nor compacted)."""
        return [role for role in (WRITER, JOBS) if not with_role(self.membership.cluster, role)]

    def _note_roles(self) -> None:
        """Log when this agent starts or stops running the jobs, and when the cluster
        gains or loses its last writer or jobs agent."""
        runs = self.runs_jobs()
        if runs != self._running_jobs:
            self._running_jobs = runs
            if runs:
                log.info("this agent runs the background jobs (GC, compaction) now")
            else:
                log.info("this agent no longer runs the background jobs")
        missing = self.missing_roles()
        if missing != self._missing_roles:
            self._missing_roles = missing
            for role in missing:
                log.warning("%s", _MISSING_ROLE[role])
            if not missing:
                log.info("the cluster has a live writer agent and a live jobs agent again")

    def _membership_changed(self) -> None:
        self._note_roles()
        self.groups.release_foreign_groups()
        if self.zone_cache is not None and isinstance(self.zone_cache.transport, PeerClient):
            # Connections to agents that left are closed (they could pile up otherwise).
            self.zone_cache.transport.forget({a.rpc_address for a in self.membership.live})
        if self.membership.stepping_aside():
            # Producers waiting on this agent's commits go elsewhere now (librdkafka keeps
            # its requests in flight on a connection that stays open).
            answered = self.pipeline.answer_waiting(CommitOutcome(ErrorCode.not_leader_or_follower))
            if answered:
                log.warning("answered %d waiting batches NOT_LEADER_OR_FOLLOWER", answered)

    def _cache_committed(self, key: str, layout: ObjectLayout) -> None:
        # Tail consumers then read what was just produced without a GET.
        for batch, coordinates in zip(layout.batches, layout.coordinates, strict=True):
            self.cache.put((key, coordinates.byte_offset), batch.data)

    # Lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        # Bind the client port first (serving comes last): a port in use fails at once,
        # and the writer RPC's ephemeral port can never land on it.
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            self._servers.append(
                await loop.create_server(
                    functools.partial(self._new_connection, listener),
                    listener.host,
                    listener.port,
                    ssl=self._tls.get(listener.name),
                    reuse_address=True,
                    backlog=1024,
                    start_serving=False,
                )
            )
        # A restarted writer takes its lease back at once; another agent's lease
        # must expire first (then produce waits for a writer, as for a leader election).
        await self.coordinator.start(wait_for_writer_s=2 * self.config.lease_ms / 1000 + 1)
        self.cluster_id = await self.coordinator.backend.cluster_id(self._proposed_cluster_id())
        if self.config.clustered:
            await self._claim_node_id()
            # Where the other agents reach this one's RPC (known once it listens).
            self.membership.me = dataclasses.replace(
                self.membership.me, rpc_address=self.coordinator.writer.address
            )
            if self.zone_cache is not None and self.coordinator.rpc_secret is not None:
                self.zone_cache.transport = PeerClient(self.coordinator.rpc_secret)
        await broker_configs.refresh(self)  # before serving: the stored values apply
        await self.refresh_security()
        await self.membership.start()
        log.info(
            "agent %s: roles %s, agent group %r",
            self.agent_id,
            ",".join(r for r in ROLE_ORDER if r in self.config.roles),
            self.config.agent_group,
        )
        self._note_roles()
        await self.groups.start()
        for job in self._lifecycle_jobs:
            job.start()
        for server in self._servers:
            await server.start_serving()
        if self._metrics_server is not None:
            await self._metrics_server.start()

    def clock_ms(self) -> int:
        return int(SYSTEM_CLOCK.monotonic_s() * 1000)

    async def _claim_node_id(self) -> None:
        """Take this agent id's node id (or the one asked for) before joining; NodeIdTaken
        (another live agent holds the one asked for) stops the start."""
        self.node_id = await self.coordinator.backend.claim_node_id(
            self.agent_id,
            self.config.node_id,
            SYSTEM_CLOCK.wall_ms(),
            self.config.agent_timeout_ms,
        )
        self.membership.me = dataclasses.replace(self.membership.me, node_id=self.node_id)
        log.info("agent %s is node %d", self.agent_id, self.node_id)

    async def _ready(self) -> tuple[bool, str]:
        """Ready: the coordinator answers, and this agent is in the membership it sees."""
        try:
            await self.coordinator.backend.security_version()
        except CoordinatorError as e:
            return False, f"coordinator unreachable: {e}"
        me = self.membership.me.agent_id
        if not any(a.agent_id == me for a in self.membership.live):
            return False, "not in the cluster's membership"
        if self.membership.stepping_aside():
            return False, "stepping aside: it cannot reach the database or the writer"
        missing = self.missing_roles()
        if missing:
            return False, _MISSING_ROLE[missing[0]]
        return True, "ready"

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server is not None else None

    @property
    def listen_port(self) -> int:
        """The port of the first listener (as bound: a configured 0 becomes a real one)."""
        return int(self._servers[0].sockets[0].getsockname()[1])

    async def refresh_security(self) -> None:
        """Reload credentials and ACLs if another agent (or this one) changed them."""
        backend = self.coordinator.backend
        try:
            version = await backend.security_version()
            if version == self.credentials.version:
                return
            stored = await backend.load_scram_credentials()
            acls = await backend.load_acls() if self.config.authorizer == "acl" else []
            quota_entries = await backend.load_client_quotas()
        except CoordinatorError as e:
            log.warning("cannot reload credentials and ACLs: %s", e)
            return
        self.credentials.replace(stored, version)
        self.quotas.update(quota_entries)
        if self.config.authorizer == "acl":
            self.authorizer = Authorizer(
                (AclBinding.from_stored(a) for a in acls),
                self._super_users,
                self.config.allow_everyone_if_no_acl_found,
            )

    def _open_session(self, listener: Listener, transport: asyncio.BaseTransport) -> Session:
        peer: Any = transport.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        tls_principal = None
        tls: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der:
            subject = certificate_subject(der)
            try:
                tls_principal = user_principal(self._principal_mapper.name(subject))
            except PrincipalMappingError as e:
                # Kafka fails the connection when no rule applies.
                log.warning("closing %s: %s", address, e)
                raise ConnectionClosed from None
        return Session.open(listener, address, tls_principal)

    def _new_connection(self, listener: Listener) -> asyncio.BufferedProtocol:
        refuse = len(self._connections) >= self.config.max_connections
        connection = KafkaConnection(
            self.handle_frame,
            self._limits,
            self._connections.discard,
            open_session=functools.partial(self._open_session, listener),
            refuse=refuse,
        )
        if refuse:
            log.warning("connection limit %d reached; refusing", self.config.max_connections)
            self.request_metrics.connections_refused.inc()
        else:
            self._connections.add(connection)
        return connection

    async def drain_and_stop(self) -> None:
        """Stop accepting, commit what is buffered, answer producers, then close."""
        for server in self._servers:
            server.close()
        for connection in self._connections:
            connection.stop_reading()
        await asyncio.sleep(0)  # let decoded requests reach the pipeline
        await self.pipeline.drain()
        # Let the connection writers send the final acks before closing sockets
        # (bounded: a long-polling Fetch or JoinGroup is not worth waiting for).
        deadline = time.monotonic() + DRAIN_RESPONSES_S
        while time.monotonic() < deadline and any(
            c.has_pending_responses for c in self._connections
        ):
            await asyncio.sleep(0.01)
        for connection in list(self._connections):
            connection.close()
        for job in self._lifecycle_jobs:
            await job.close()
        await self.groups.close()
        if self.fetcher.read_ahead is not None:
            await self.fetcher.read_ahead.close()
        if self.zone_cache is not None:
            await self.zone_cache.close()
        await self.membership.close()
        await self.coordinator.close()
        await self.store.close()
        if self._metrics_server is not None:
            await self._metrics_server.close()

    def stats(self) -> dict[str, Any]:
        return exit_stats(self.metrics)

    def print_stats(self) -> None:
        print("driftlog-stats " + json.dumps(self.stats()), file=sys.stderr, flush=True)

    # Dispatch -------------------------------------------------------------------
    def handle_frame(
        self, frame: memoryview, session: Session
    ) -> Coroutine[Any, Any, list[bytes] | None]:
        """Decode the frame now (its buffer is reused after this returns); handle it later."""
        peer = session.peer
        if session.unframed_tokens:
            return unframed_token(self, session, bytes(frame))
        try:
            request = decode_request(frame, SUPPORTED_VERSIONS)
        except UnsupportedRequest as e:
            if e.api_key == API_VERSIONS_KEY:
                # KIP-511: answer an unknown ApiVersions version with v0 and our ranges.
                response = encode_response(
                    API_VERSIONS_KEY, 0, e.correlation_id, api_versions_error_response()
                )
                return _ready(response)
            self.log_client_error(peer, e.api_key, f"unsupported request from {peer}: {e}")
            return _disconnect()
        except MalformedRequest as e:
            api_key = peek_prefix(frame)[0] if len(frame) >= 8 else -1
            self.log_client_error(peer, api_key, f"malformed request from {peer}: {e}")
            return _disconnect()
        refusal = session.refusal(request.api_key, time.monotonic() * 1000)
        if refusal is not None:
            log.info("closing %s (%s): %s", peer, session.principal, refusal)
            return _disconnect()
        return self._handle(request, session)

    async def _handle(self, request: Request, session: Session) -> list[bytes] | None:
        access = Access(self.authorizer, session.principal, session.host)
        denied = denial(access, request.api_key, request.body)
        if denied is not None:
            refused = build(response_class(request.api_key, request.api_version), error_code=denied)
            return encode_response(
                request.api_key, request.api_version, request.correlation_id, refused
            )
        ctx = RequestContext(
            services=self,
            session=session,
            api_key=request.api_key,
            api_version=request.api_version,
            correlation_id=request.correlation_id,
            client_id=request.client_id,
            access=access,
        )
        started = time.perf_counter()
        response = await HANDLERS[request.api_key](ctx, request.body)
        self.request_metrics.observe(
            request.api_key,
            getattr(response, "error_code", None),
            time.perf_counter() - started,
        )
        if response is None:
            return None
        return encode_response(
            request.api_key, request.api_version, request.correlation_id, response
        )

    def log_client_error(self, peer: str, api_key: int, message: str) -> None:
        host = peer.rsplit(":", 1)[0]
        if (host, api_key) not in self._logged_errors and len(self._logged_errors) < 10_000:
            self._logged_errors.add((host, api_key))
            log.warning("%s", message)


def listeners_of(config: AgentConfig) -> list[Listener]:
    """The configured listeners, or the one PLAINTEXT listener of `--listen`."""
    if config.listeners:
        listeners, advertised = config.listeners, config.advertised_listeners
    else:
        listeners = f"PLAINTEXT://{config.listen_host}:{config.listen_port}"
        advertised = f"PLAINTEXT://{config.advertise_host}:{config.advertise_port}"
    return parse_listeners(
        listeners,
        advertised=advertised,
        protocol_map=config.listener_security_protocol_map,
        settings=config.listener_settings,
        sasl_mechanisms=config.sasl_enabled_mechanisms,
        client_auth=config.ssl_client_auth,
        has_client_ca=config.tls_client_ca_file is not None,
    )


def uses_zone_cache(config: AgentConfig) -> bool:
    """The shared cache per zone needs peers (cluster mode) and a store that answers a
    range running past an object's end with what there is (S3 and obstore's stores do;
    the local-directory store refuses it, and its reads cost no requests anyway)."""
    return config.zone_cache and config.clustered and not config.store_url.startswith("file:")


def _cluster_secret(config: AgentConfig) -> bytes | None:
    path = config.cluster_secret_file
    if path is None:
        return None
    secret = path.read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"--cluster-secret-file {path}: fewer than 16 bytes of secret")
    return secret


def _tls_context(config: AgentConfig, listener: Listener) -> ssl.SSLContext:
    if config.tls_cert_file is None or config.tls_key_file is None:
        raise ValueError(
            f"listener {listener.name} ({listener.protocol}) needs --tls-cert-file and "
            "--tls-key-file"
        )
    return server_context(
        config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file, listener.client_auth
    )


def agent_identity(config: AgentConfig, listeners: list[Listener]) -> str:
    """This agent's id: `--agent-id`, else (in a cluster) its first advertised address,
    which is unique per agent and stable across restarts; `agent-NODE_ID` embedded."""
    if config.agent_id:
        return config.agent_id
    if config.clustered:
        return f"{listeners[0].advertised_host}:{listeners[0].advertised_port}"
    return f"agent-{config.node_id or 0}"


def _lease_holder(config: AgentConfig, agent_id: str) -> str:
    """Who this process is in the writer lease.

    Embedded, the agent id alone: a restart takes its lease back at once. In a
    cluster, the agent id and this process: two processes under one agent id (a
    frozen pod and its replacement) must not take the lease from each other, and
    a restarted agent waits like any other (a cleanly stopped writer releases it).
    """
    if not config.clustered:
        return agent_id
    return f"{agent_id}/{uuid.uuid4().hex[:8]}"


def open_backend(config: AgentConfig) -> Backend:
    url = config.coordinator_url
    if url is None:
        return SqliteBackend(config.sqlite_path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url, writer_idle_ms=config.lease_ms)
    raise ValueError(f"unsupported coordinator URL {url!r} (postgresql://...)")


async def _ready(response: list[bytes]) -> list[bytes] | None:
    return response


async def _disconnect() -> list[bytes] | None:
    raise ConnectionClosed
