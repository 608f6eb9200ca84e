"""How two agents prove to each other that they share the cluster secret, before any
writer RPC message. Pure: builds and checks the handshake's messages; the nonces come
in as arguments and `rpc.py` does the reading, writing and timing.

A mutual challenge-response, the server speaking first so that it computes nothing
for a peer that has not proven itself:

    server -> client   SERVER_HELLO  "DLRPC/1S" + server nonce (32 bytes)
    client -> server   CLIENT_PROOF  "DLRPC/1C" + client nonce (32) + client proof (32)
    server -> client   SERVER_PROOF  "DLRPC/1P" + server proof (32)

A proof is HMAC-SHA256(secret, label + server nonce + client nonce), with a label
per direction: a proof one side sends can never pass as the other side's (reflected
back on the same connection or replayed on another), and a fresh nonce from each side
keeps a recorded proof from passing on a later connection. Every message has a fixed
size, so a reader asks for exactly that many bytes and no length from the peer is
trusted. Anything else (wrong magic, wrong size, wrong proof) is `HandshakeFailed`.

Without encryption this proves who is at the other end when the connection opens; it
does not protect the bytes that follow from someone who can rewrite the traffic in
between (mutual TLS is the answer to that).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from driftlog.coordinator.runtime.rpc_messages import ProtocolError

NONCE_BYTES = 32
PROOF_BYTES = hashlib.sha256().digest_size
MAGIC_BYTES = 8
SERVER_HELLO_MAGIC = b"DLRPC/1S"
CLIENT_PROOF_MAGIC = b"DLRPC/1C"
SERVER_PROOF_MAGIC = b"DLRPC/1P"
SERVER_HELLO_BYTES = MAGIC_BYTES + NONCE_BYTES
CLIENT_PROOF_BYTES = MAGIC_BYTES + NONCE_BYTES + PROOF_BYTES
SERVER_PROOF_BYTES = MAGIC_BYTES + PROOF_BYTES
# The labels that make each direction's proof different (see the module docstring).
CLIENT_LABEL = b"driftlog writer rpc v1: client proof\x00"
SERVER_LABEL = b"driftlog writer rpc v1: server proof\x00"
# How long a peer has to finish the handshake before the connection is closed.
HANDSHAKE_TIMEOUT_S = 5.0


class HandshakeFailed(ProtocolError):
    """The peer did not prove it knows the cluster secret (or spoke something else)."""


def check_secret(secret: bytes) -> bytes:
    """The secret as given, refused when empty: an empty key would authenticate anyone
    who guessed it was empty."""
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the cluster secret must be non-empty bytes")
    return secret


def proof(secret: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    # Both nonces have a fixed size, so the concatenation is unambiguous.
    return hmac.new(secret, label + server_nonce + client_nonce, hashlib.sha256).digest()


def _check_nonce(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    return nonce


def _expect(message: bytes, size: int, magic: bytes, what: str) -> None:
    if len(message) != size:
        raise HandshakeFailed(f"{what} of {len(message)} bytes, expected {size}")
    if message[:MAGIC_BYTES] != magic:
        raise HandshakeFailed(f"{what} does not start with {magic!r}")


@dataclass(slots=True)
class ServerHandshake:
    """The writer's side: `hello()` first, then `receive_proof` with the client's answer
    returns the server's own proof to send (or raises `HandshakeFailed`)."""

    secret: bytes
    server_nonce: bytes

    def __post_init__(self) -> None:
        check_secret(self.secret)
        _check_nonce(self.server_nonce)

    def hello(self) -> bytes:
        return SERVER_HELLO_MAGIC + self.server_nonce

    def receive_proof(self, message: bytes) -> bytes:
        _expect(message, CLIENT_PROOF_BYTES, CLIENT_PROOF_MAGIC, "client proof")
        client_nonce = message[MAGIC_BYTES : MAGIC_BYTES + NONCE_BYTES]
        if client_nonce == self.server_nonce:
            # Only a peer echoing our own nonce back sends this (a fresh one never matches).
            raise HandshakeFailed("the client's nonce is the server's")
        expected = proof(self.secret, CLIENT_LABEL, self.server_nonce, client_nonce)
        if not hmac.compare_digest(message[MAGIC_BYTES + NONCE_BYTES :], expected):
            raise HandshakeFailed("wrong client proof (a different cluster secret?)")
        return SERVER_PROOF_MAGIC + proof(
            self.secret, SERVER_LABEL, self.server_nonce, client_nonce
        )


@dataclass(slots=True)
class ClientHandshake:
    """An agent's side: `receive_hello` with the server's hello returns the proof to
    send; `receive_proof` checks the server's answer (or raises `HandshakeFailed`)."""

    secret: bytes
    client_nonce: bytes
    server_nonce: bytes | None = None

    def __post_init__(self) -> None:
        check_secret(self.secret)
        _check_nonce(self.client_nonce)

    def receive_hello(self, message: bytes) -> bytes:
        _expect(message, SERVER_HELLO_BYTES, SERVER_HELLO_MAGIC, "server hello")
        server_nonce = message[MAGIC_BYTES:]
        if server_nonce == self.client_nonce:
            raise HandshakeFailed("the server's nonce is the client's")
        self.server_nonce = server_nonce
        client_proof = proof(self.secret, CLIENT_LABEL, server_nonce, self.client_nonce)
        return CLIENT_PROOF_MAGIC + self.client_nonce + client_proof

    def receive_proof(self, message: bytes) -> None:
        if self.server_nonce is None:
            raise HandshakeFailed("a server proof before the server's hello")
        _expect(message, SERVER_PROOF_BYTES, SERVER_PROOF_MAGIC, "server proof")
        expected = proof(self.secret, SERVER_LABEL, self.server_nonce, self.client_nonce)
        if not hmac.compare_digest(message[MAGIC_BYTES:], expected):
            raise HandshakeFailed("wrong server proof (a different cluster secret?)")


class RefusalLog:
    """Which refusals to log: at most `lines_per_window` lines per `window_s`, so a peer
    that hammers the port cannot flood the log. Takes `now_s`; reads no clock."""

    def __init__(self, lines_per_window: int = 10, window_s: float = 60.0) -> None:
        self._lines_per_window = lines_per_window
        self._window_s = window_s
        self._window_start_s: float | None = None
        self._lines = 0
        self._suppressed = 0

    def admit(self, now_s: float) -> int | None:
        """None when this refusal is not to be logged; otherwise how many were left
        unlogged since the last line (to say so in this one)."""
        if self._window_start_s is None or now_s - self._window_start_s >= self._window_s:
            self._window_start_s = now_s
            self._lines = 0
        if self._lines >= self._lines_per_window:
            self._suppressed += 1
            return None
        self._lines += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
