"""What a request handler may use: the request's header facts and the agent's services.

Handlers are `async def handle(ctx: RequestContext, request) -> response`, where
`request` is the kio request entity of the version the client sent and the
response must be the kio response entity of that same version (build it with
`driftlog.protocol.schema.build` and `response_module(api_key, version)`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from driftlog.agent import Agent


@dataclass(frozen=True, slots=True)
class RequestContext:
    agent: Agent
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    peer: str


Handler = Callable[[RequestContext, Any], Awaitable[Any]]
