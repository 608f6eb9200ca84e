"""What the Kafka port does, as metrics: requests by API and error code with their
latency, produce and fetch volume, connections, logins, and consumer-group lag.

Children are resolved once per API key (and error code) and kept, so a request
costs a couple of attribute updates. Lag is computed at scrape time from the
committed offsets of the groups this agent coordinates (each group is reported by
one agent) and the partitions' high watermarks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from driftlog.metrics.registry import CounterChild, HistogramChild, Registry

if TYPE_CHECKING:
    from driftlog.coordinator.runtime.service import AgentCoordinator

# Bounds the lag series one scrape may report (groups x partitions).
MAX_LAG_SERIES = 10_000


class RequestMetrics:
    def __init__(
        self,
        registry: Registry,
        connections: Callable[[], float],
        api_names: Mapping[int, str],
    ) -> None:
        self._api_names = api_names
        self._requests = registry.counter(
            "driftlog_requests_total",
            "Kafka requests answered, by API (named after its handler: produce, fetch, ...).",
            ["api"],
        )
        self._errors = registry.counter(
            "driftlog_request_errors_total",
            "Kafka responses whose top-level error code is not NONE, by API and error.",
            ["api", "error"],
        )
        self._latency = registry.histogram(
            "driftlog_request_duration_seconds",
            "Time from a request's decoding to its response, by API (Produce includes the "
            "wait for its flush and commit).",
            ["api"],
        )
        self._by_api: dict[int, tuple[CounterChild, HistogramChild]] = {}
        self._errors_by: dict[tuple[int, int], CounterChild] = {}
        self.produced_bytes = registry.counter(
            "driftlog_produce_bytes_total", "Record batch bytes accepted by Produce."
        ).labels()
        self.produced_records = registry.counter(
            "driftlog_produce_records_total", "Records accepted by Produce."
        ).labels()
        self.fetched_bytes = registry.counter(
            "driftlog_fetch_bytes_total", "Record batch bytes returned by Fetch."
        ).labels()
        self.fetched_offsets = registry.counter(
            "driftlog_fetch_offsets_total",
            "Offsets returned by Fetch (records, counting offsets key compaction removed).",
        ).labels()
        # Roles (cluster/placement.py): where clients were sent instead of being served.
        self.fetch_read_replica_redirects = registry.counter(
            "driftlog_fetch_read_replica_redirects_total",
            "Partitions of Fetch answered with a preferred read replica (KIP-392) and no "
            "records: their fetch agent is another agent.",
        ).labels()
        self.fetch_read_replica_ignored = registry.counter(
            "driftlog_fetch_read_replica_ignored_total",
            "Clients served here after asking again for a partition they were sent away from "
            "(they ignore preferred read replicas).",
        ).labels()
        self.produce_role_redirects = registry.counter(
            "driftlog_produce_role_redirects_total",
            "Produce requests answered NOT_LEADER_OR_FOLLOWER because this agent lacks the "
            "produce role.",
        ).labels()
        registry.gauge(
            "driftlog_connections", "Client connections open on the Kafka listeners."
        ).labels().set_function(connections)
        self.connections_refused = registry.counter(
            "driftlog_connections_refused_total", "Connections refused over --max-connections."
        ).labels()
        self._logins = registry.counter(
            "driftlog_authentications_total",
            "SASL and TLS-certificate logins, by mechanism and result.",
            ["mechanism", "result"],
        )
        self._lag = registry.gauge(
            "driftlog_consumer_group_lag",
            "High watermark minus committed offset, per group this agent coordinates.",
            ["group", "topic", "partition"],
        )

    def observe(self, api_key: int, error: ErrorCode | None, seconds: float) -> None:
        children = self._by_api.get(api_key)
        if children is None:
            label = self._api_names.get(api_key, str(api_key))
            children = self._by_api[api_key] = (
                self._requests.labels(label),
                self._latency.labels(label),
            )
        children[0].inc()
        children[1].observe(seconds)
        if error is not None and error != ErrorCode.none:
            key = (api_key, int(error))
            counter = self._errors_by.get(key)
            if counter is None:
                api = self._api_names.get(api_key, str(api_key))
                counter = self._errors_by[key] = self._errors.labels(api, error.name)
            counter.inc()

    def login(self, mechanism: str, succeeded: bool) -> None:
        self._logins.labels(mechanism, "success" if succeeded else "failure").inc()

    async def collect_lag(
        self, coordinator: AgentCoordinator, owns_group: Callable[[str], bool]
    ) -> None:
        self._lag.clear()
        series = 0
        for group_id in await coordinator.groups_with_offsets():
            if not owns_group(group_id):
                continue
            for committed in await coordinator.fetch_offsets(group_id, None):
                topic = coordinator.topic(committed.topic)
                if topic is None or series >= MAX_LAG_SERIES:
                    continue
                offsets = coordinator.partition_offsets(topic.topic_id, committed.partition)
                if offsets is None:
                    continue
                lag = max(offsets.high_watermark - committed.offset, 0)
                self._lag.labels(group_id, committed.topic, str(committed.partition)).set(lag)
                series += 1
