"""SaslHandshake (v0-1) and SaslAuthenticate (v0-2), as Kafka's SaslServerAuthenticator.

The handshake picks a mechanism the listener enables; after v1 each SaslAuthenticate
carries one token of the exchange, after v0 the tokens come unframed (`unframed_token`).
A failure answers with Kafka's error and closes the connection. On an authenticated
connection a new handshake starts re-authentication (KIP-368), which must prove the
same principal.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.protocol.schema import build, response_module
from driftlog.security.principal import user_principal
from driftlog.security.sasl import (
    AuthenticationFailed,
    RefusedExchange,
    SaslExchange,
    start_exchange,
)
from driftlog.server.context import AgentServices, RequestContext
from driftlog.server.listener import ConnectionClosed
from driftlog.server.session import SASL_AUTHENTICATE, SASL_HANDSHAKE, Session

log = logging.getLogger(__name__)


async def handle_sasl_handshake(ctx: RequestContext, request: Any) -> Any:
    module = response_module(SASL_HANDSHAKE, ctx.api_version)
    session = ctx.session
    enabled = session.listener.sasl_mechanisms if session.protocol.uses_sasl else ()
    if not session.protocol.uses_sasl or session.exchange is not None:
        # Kafka: a handshake on a listener without SASL, or a second one mid-exchange.
        session.close_after_response = True
        return build(
            module.SaslHandshakeResponse,
            error_code=ErrorCode.illegal_sasl_state,
            mechanisms=enabled,
        )
    if request.mechanism not in enabled:
        session.close_after_response = True
        return build(
            module.SaslHandshakeResponse,
            error_code=ErrorCode.unsupported_sasl_mechanism,
            mechanisms=enabled,
        )
    if session.mechanism and request.mechanism != session.mechanism:
        session.exchange = RefusedExchange(request.mechanism, session.mechanism)
    else:
        session.exchange = start_exchange(request.mechanism, ctx.services.credentials)
    session.unframed_tokens = ctx.api_version == 0
    return build(module.SaslHandshakeResponse, error_code=ErrorCode.none, mechanisms=enabled)


async def unframed_token(services: AgentServices, session: Session, token: bytes) -> list[bytes]:
    """A SASL token after SaslHandshake v0: the answer is the server's token, size-prefixed;
    a failure closes the connection without an answer (v0 has no way to say why)."""
    exchange = session.exchange
    assert exchange is not None
    try:
        answer = await asyncio.to_thread(exchange.step, token)
    except AuthenticationFailed as e:
        log.info("authentication failed from %s (%s): %s", session.peer, exchange.mechanism, e)
        raise ConnectionClosed from None
    if exchange.done:
        session.exchange = None
        session.unframed_tokens = False
        if session.authenticated and session.principal != user_principal(exchange.user):
            raise ConnectionClosed  # re-authentication must prove the same principal
        _authenticated(services, session, exchange, version=0)
    return [len(answer).to_bytes(4, "big"), answer]


def _authenticated(
    services: AgentServices, session: Session, exchange: SaslExchange, *, version: int
) -> int:
    """Mark the session authenticated; returns the lifetime to tell the client (ms, 0: none).

    The session ends after --connections-max-reauth-ms whatever the version: a client
    that cannot be told (SaslAuthenticate v0, unframed tokens) is closed at its first
    request after that, as Kafka does, so a deleted user keeps no connection for long."""
    session.principal = user_principal(exchange.user)
    session.mechanism = exchange.mechanism
    session.authenticated = True
    session.authentications += 1
    reauth_ms = services.config.connections_max_reauth_ms
    if reauth_ms > 0:
        session.expires_at_ms = time.monotonic() * 1000 + reauth_ms
        return reauth_ms if version >= 1 else 0
    session.expires_at_ms = None
    return 0


async def handle_sasl_authenticate(ctx: RequestContext, request: Any) -> Any:
    module = response_module(SASL_AUTHENTICATE, ctx.api_version)
    session = ctx.session
    exchange = session.exchange
    if exchange is None:
        session.close_after_response = True
        return build(
            module.SaslAuthenticateResponse,
            error_code=ErrorCode.illegal_sasl_state,
            error_message="SaslAuthenticate without a SaslHandshake first",
        )
    try:
        # PLAIN derives a key from the password (thousands of hashes): off the loop.
        token = await asyncio.to_thread(exchange.step, bytes(request.auth_bytes))
    except AuthenticationFailed as e:
        ctx.services.request_metrics.login(exchange.mechanism, succeeded=False)
        session.exchange = None
        session.close_after_response = True
        log.info(
            "authentication failed from %s on %s (%s): %s",
            session.peer,
            session.listener.name,
            exchange.mechanism,
            e,
        )
        return build(
            module.SaslAuthenticateResponse,
            error_code=ErrorCode.sasl_authentication_failed,
            error_message=str(e),
        )
    lifetime_ms = 0
    if exchange.done:
        ctx.services.request_metrics.login(exchange.mechanism, succeeded=True)
        session.exchange = None
        principal = user_principal(exchange.user)
        if session.authenticated and session.principal != principal:
            session.close_after_response = True
            return build(
                module.SaslAuthenticateResponse,
                error_code=ErrorCode.sasl_authentication_failed,
                error_message=(
                    f"Cannot change principals during re-authentication from "
                    f"{session.principal}: {principal}"
                ),
            )
        lifetime_ms = _authenticated(ctx.services, session, exchange, version=ctx.api_version)
    return build(
        module.SaslAuthenticateResponse,
        error_code=ErrorCode.none,
        error_message=None,
        auth_bytes=token,
        session_lifetime=datetime.timedelta(milliseconds=lifetime_ms),
    )
