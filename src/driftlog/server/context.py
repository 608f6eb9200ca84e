"""What a request handler may use: the request's header, the connection's session, and
the agent's services (a narrow view of the agent, not the agent).

Handlers are `async def handle(ctx: RequestContext, request) -> response`, where
`request` is the kio request entity of the version the client sent and the
response must be the kio response entity of that same version (build it with
`driftlog.protocol.schema.build` and `response_module(api_key, version)`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from driftlog.server.access import UNCHECKED, Access
from driftlog.server.session import Session

if TYPE_CHECKING:
    from driftlog.cluster.membership import Membership
    from driftlog.config import AgentConfig
    from driftlog.coordinator.api import AgentInfo
    from driftlog.coordinator.runtime.service import AgentCoordinator
    from driftlog.groups.coordinator import GroupCoordinator
    from driftlog.read.fetcher import BatchFetcher
    from driftlog.security.credentials import CredentialCache
    from driftlog.security.quotas import QuotaManager
    from driftlog.server.request_metrics import RequestMetrics
    from driftlog.write.pipeline import WritePipeline


class AgentServices(Protocol):
    """Everything handlers reach beyond the request: the agent implements it."""

    # Settable: dynamic broker configs (server/broker_configs.py) replace it.
    config: AgentConfig
    node_id: int
    cluster_id: str

    @property
    def coordinator(self) -> AgentCoordinator: ...
    @property
    def fetcher(self) -> BatchFetcher: ...
    @property
    def pipeline(self) -> WritePipeline: ...
    @property
    def groups(self) -> GroupCoordinator: ...
    @property
    def membership(self) -> Membership: ...
    @property
    def credentials(self) -> CredentialCache: ...
    @property
    def request_metrics(self) -> RequestMetrics: ...
    @property
    def quotas(self) -> QuotaManager: ...

    def clock_ms(self) -> int: ...

    def group_coordinator(self, group_id: str) -> AgentInfo: ...

    def owns_group(self, group_id: str) -> bool: ...

    def log_client_error(self, peer: str, api_key: int, message: str) -> None: ...

    async def refresh_security(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RequestContext:
    services: AgentServices
    session: Session
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    access: Access = UNCHECKED

    @property
    def peer(self) -> str:
        return self.session.peer


Handler = Callable[[RequestContext, Any], Awaitable[Any]]
