"""Client quotas: AlterClientQuotas and DescribeClientQuotas (v0-1), and the throttle
that Produce and Fetch apply.

Quotas are stored in the coordinator store and enforced per agent, as Kafka's are
per broker (security/quotas.py has Kafka's rules). A client over its rate gets the
throttle time in its response and its connection is muted for that long (KIP-219):
clients such as librdkafka do not hold back by themselves.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CoordinatorError
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import AclOperation
from driftlog.security.principal import USER
from driftlog.security.quotas import (
    QuotaAlteration,
    QuotaRefusal,
    check_alterations,
    describe_quotas,
    parse_quota_filter,
)
from driftlog.server.context import RequestContext

DESCRIBE_CLIENT_QUOTAS, ALTER_CLIENT_QUOTAS = 48, 49
_ZERO = datetime.timedelta(0)


def _user_name(principal: str) -> str:
    kind, _, name = principal.partition(":")
    return name if kind == USER else principal


def throttle(ctx: RequestContext, kind: Literal["produce", "fetch"], nbytes: int) -> int:
    """Count `nbytes` against the client's quota; the throttle in ms (0: within it). A
    throttled connection is muted for that long after its response."""
    quotas = ctx.services.quotas
    if nbytes <= 0 or not quotas.resolver.enabled(kind):
        return 0
    now_ms = ctx.services.clock_ms()
    throttle_ms = quotas.record(
        kind, _user_name(ctx.session.principal), ctx.client_id or "", nbytes, now_ms
    )
    if throttle_ms > 0:
        ctx.session.mute_ms = max(ctx.session.mute_ms, throttle_ms)
    return throttle_ms


def unthrottle(ctx: RequestContext, kind: Literal["produce", "fetch"], nbytes: int) -> None:
    """Take back bytes counted for a response that was not sent (a throttled Fetch)."""
    ctx.services.quotas.unrecord(
        kind,
        _user_name(ctx.session.principal),
        ctx.client_id or "",
        nbytes,
        ctx.services.clock_ms(),
    )


async def handle_describe_client_quotas(ctx: RequestContext, request: Any) -> Any:
    # DESCRIBE_CONFIGS on the cluster is checked in the dispatch path (server/access.py).
    module = response_module(DESCRIBE_CLIENT_QUOTAS, ctx.api_version)
    parsed = parse_quota_filter(
        [(c.entity_type, c.match_type, c.match) for c in request.components], request.strict
    )
    if isinstance(parsed, QuotaRefusal):
        return build(
            module.DescribeClientQuotasResponse,
            throttle_time=_ZERO,
            error_code=parsed.error_code,
            error_message=parsed.message,
            entries=None,
        )
    try:
        stored = await ctx.services.coordinator.backend.load_client_quotas()
    except CoordinatorError as e:
        return build(
            module.DescribeClientQuotasResponse,
            throttle_time=_ZERO,
            error_code=ErrorCode.unknown_server_error,
            error_message=f"cannot read quotas: {e}",
            entries=None,
        )
    entries = tuple(
        build(
            module.EntryData,
            entity=tuple(
                build(module.EntityData, entity_type=entity_type, entity_name=name)
                for entity_type, name in entry.entity
            ),
            values=tuple(
                build(module.ValueData, key=key, value=value)
                for key, value in sorted(entry.values.items())
            ),
        )
        for entry in describe_quotas(stored, parsed)
    )
    return build(
        module.DescribeClientQuotasResponse,
        throttle_time=_ZERO,
        error_code=ErrorCode.none,
        error_message=None,
        entries=entries,
    )


async def handle_alter_client_quotas(ctx: RequestContext, request: Any) -> Any:
    module = response_module(ALTER_CLIENT_QUOTAS, ctx.api_version)

    def entry(source: Any, error: ErrorCode, message: str | None) -> Any:
        return build(
            module.EntryData,
            error_code=error,
            error_message=message,
            entity=tuple(
                build(module.EntityData, entity_type=e.entity_type, entity_name=e.entity_name)
                for e in source.entity
            ),
        )

    if not ctx.access.allows_cluster(AclOperation.ALTER_CONFIGS):
        denied = ErrorCode.cluster_authorization_failed
        return build(
            module.AlterClientQuotasResponse,
            throttle_time=_ZERO,
            entries=tuple(entry(e, denied, None) for e in request.entries),
        )
    checked = check_alterations(
        [
            (
                [(e.entity_type, e.entity_name) for e in source.entity],
                [(op.key, None if op.remove else float(op.value)) for op in source.ops],
            )
            for source in request.entries
        ]
    )
    changes = [
        (result.entity, key, value)
        for result in checked
        if isinstance(result, QuotaAlteration)
        for key, value in result.changes
    ]
    stored_error: str | None = None
    if changes and not request.validate_only:
        try:
            await ctx.services.coordinator.backend.alter_client_quotas(changes)
        except (CoordinatorError, ValueError) as e:
            stored_error = f"cannot store quotas: {e}"
        await ctx.services.refresh_security()
    results = []
    for source, result in zip(request.entries, checked, strict=True):
        if isinstance(result, QuotaRefusal):
            results.append(entry(source, result.error_code, result.message))
        elif stored_error is not None:
            results.append(entry(source, ErrorCode.unknown_server_error, stored_error))
        else:
            results.append(entry(source, ErrorCode.none, None))
    return build(module.AlterClientQuotasResponse, throttle_time=_ZERO, entries=tuple(results))
