"""One client connection's identity: the listener it came in on, and who it proved to be.

A connection on a PLAINTEXT listener is `User:ANONYMOUS`; on SSL, the client
certificate's mapped name if it sent one. On a SASL listener nothing but
ApiVersions, SaslHandshake and SaslAuthenticate is served until authentication
succeeds (Kafka closes the connection otherwise). With `--connections-max-reauth-ms`
(KIP-368) the session lasts that long: the client re-authenticates on the same
connection before then, as the same principal, or the connection is closed at its
next request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from driftlog.security.listeners import Listener, SecurityProtocol
from driftlog.security.principal import ANONYMOUS
from driftlog.security.sasl import SaslExchange

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
AUTHENTICATION_APIS = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})
# (fetch offset, monotonic s, times in a row the client came back at once): server/fetch.py
ReadReplicaHint = tuple[int, float, int]


@dataclass(slots=True)
class Session:
    listener: Listener
    peer: str  # host:port of the client
    principal: str = ANONYMOUS
    authenticated: bool = True
    # SASL: the exchange in progress (a handshake chose its mechanism), and the end of
    # the authenticated session in monotonic ms (None: no end).
    exchange: SaslExchange | None = None
    mechanism: str = ""  # of the last successful login: re-authentication must use it
    expires_at_ms: float | None = None
    # SaslHandshake v0: the exchange's tokens come as bare size-prefixed frames.
    unframed_tokens: bool = False
    # A quota's throttle (ms): after its response the connection reads nothing this long.
    mute_ms: int = 0
    # Set by a handler whose response must be the connection's last (failed login).
    close_after_response: bool = False
    authentications: int = field(default=0)
    # KIP-392 (server/fetch.py): per partition, the fetch offset and monotonic time of the
    # last answer that sent this client to another agent, and how many times in a row it
    # came back at once; and until when (monotonic s) it is served here anyway, having
    # asked again instead of moving.
    read_replica_hints: dict[tuple[uuid.UUID, int], ReadReplicaHint] = field(default_factory=dict)
    serve_reads_until_s: float = 0.0
    # ApiVersions v3+ (KIP-511): the client library's name, e.g. "librdkafka".
    client_software: str = ""

    @classmethod
    def open(cls, listener: Listener, peer: str, tls_principal: str | None = None) -> Session:
        return cls(
            listener=listener,
            peer=peer,
            principal=tls_principal or ANONYMOUS,
            authenticated=not listener.protocol.uses_sasl,
        )

    @property
    def protocol(self) -> SecurityProtocol:
        return self.listener.protocol

    @property
    def host(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    def refusal(self, api_key: int, now_ms: float) -> str | None:
        """Why this request may not be served on this connection now (None: serve it)."""
        if api_key in AUTHENTICATION_APIS:
            return None
        if not self.authenticated:
            return f"request {api_key} before SASL authentication"
        if self.expires_at_ms is not None and now_ms >= self.expires_at_ms:
            return "SASL session expired without re-authentication"
        return None
