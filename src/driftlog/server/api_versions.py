"""ApiVersions: advertise exactly the API versions Driftlog implements (KIP-35, KIP-511)."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.protocol.schema import build, response_module
from driftlog.server.context import RequestContext

API_VERSIONS = 18


def _api_keys(api_key: int, version: int) -> tuple[Any, ...]:
    from driftlog.server.registry import ADVERTISED_VERSIONS

    module = response_module(api_key, version)
    return tuple(
        build(module.ApiVersion, api_key=key, min_version=low, max_version=high)
        for key, (low, high) in sorted(ADVERTISED_VERSIONS.items())
    )


def api_versions_error_response() -> Any:
    """The v0 answer to an ApiVersions version we do not know: our ranges, so the client retries."""
    module = response_module(API_VERSIONS, 0)
    return build(
        module.ApiVersionsResponse,
        error_code=ErrorCode.unsupported_version,
        api_keys=_api_keys(API_VERSIONS, 0),
    )


async def handle_api_versions(ctx: RequestContext, request: Any) -> Any:
    module = response_module(API_VERSIONS, ctx.api_version)
    ctx.session.client_software = str(getattr(request, "client_software_name", "") or "")
    return build(
        module.ApiVersionsResponse,
        error_code=ErrorCode.none,
        api_keys=_api_keys(API_VERSIONS, ctx.api_version),
        throttle_time=datetime.timedelta(0),
        supported_features=(),
        finalized_features_epoch=-1,
        finalized_features=(),
        zk_migration_ready=False,
    )
