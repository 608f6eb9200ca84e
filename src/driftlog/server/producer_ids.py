"""InitProducerId (KIP-98, KIP-360).

Without a transactional id Kafka always hands out a fresh producer id with
epoch 0, whatever id and epoch the request carries; so does Driftlog. With
one, the transaction coordinator decides (`server/transactions.py`).
"""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import CoordinatorError
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import AclOperation
from driftlog.server.access import TRANSACTIONAL_ID
from driftlog.server.context import RequestContext
from driftlog.server.transactions import init_transactional_producer

INIT_PRODUCER_ID = 22


def _denial(ctx: RequestContext, transactional_id: str | None) -> ErrorCode | None:
    """Kafka: WRITE on the transactional id, or else IDEMPOTENT_WRITE on the cluster (which
    WRITE on any topic implies)."""
    access = ctx.access
    if transactional_id is not None:
        if access.allows(AclOperation.WRITE, TRANSACTIONAL_ID, transactional_id):
            return None
        return ErrorCode.transactional_id_authorization_failed
    return None if access.may_write_idempotently() else ErrorCode.cluster_authorization_failed


async def handle_init_producer_id(ctx: RequestContext, request: Any) -> Any:
    module = response_module(INIT_PRODUCER_ID, ctx.api_version)
    denied = _denial(ctx, request.transactional_id)
    if denied is not None:
        return build(
            module.InitProducerIdResponse,
            throttle_time=datetime.timedelta(0),
            error_code=denied,
            producer_id=-1,
            producer_epoch=-1,
        )
    if request.transactional_id is not None:
        error, producer_id, epoch = await init_transactional_producer(ctx, request)
    else:
        error, epoch = ErrorCode.none, 0
        try:
            producer_id = await ctx.services.coordinator.allocate_producer_id()
        except CoordinatorError as e:
            ctx.services.log_client_error("coordinator", INIT_PRODUCER_ID, f"no producer id: {e}")
            error, producer_id, epoch = ErrorCode.coordinator_not_available, -1, -1
    return build(
        module.InitProducerIdResponse,
        throttle_time=datetime.timedelta(0),
        error_code=error,
        producer_id=producer_id,
        producer_epoch=epoch,
    )
