"""SASL exchanges a client runs through SaslAuthenticate: PLAIN and SCRAM-SHA-256/512.

An exchange takes the client's tokens one at a time and answers with the server's,
until it is done (`user` is then the authenticated name) or fails with
`AuthenticationFailed`. SCRAM is scramp's RFC 5802 server fed with the credentials
Kafka stores; PLAIN is checked against the same credentials. No I/O here; PLAIN's
key derivation is CPU work, so the caller runs `step` off the event loop.
"""

from __future__ import annotations

from typing import Protocol

from scramp import ScramException, ScramMechanism

from driftlog.security.credentials import CredentialCache, password_matches

# What a client may send at most in one token (a SCRAM message or a PLAIN login).
MAX_TOKEN_BYTES = 4096


class AuthenticationFailed(Exception):
    """Kafka's SASL_AUTHENTICATION_FAILED; the message goes back to the client."""


class SaslExchange(Protocol):
    mechanism: str
    done: bool
    user: str

    def step(self, token: bytes) -> bytes: ...


def _invalid_credentials(mechanism: str) -> AuthenticationFailed:
    # Kafka's wording: says nothing about whether the user exists.
    return AuthenticationFailed(
        "Authentication failed during authentication due to invalid credentials "
        f"with SASL mechanism {mechanism}"
    )


class PlainExchange:
    """RFC 4616: one token `authzid NUL user NUL password`, answered with nothing."""

    mechanism = "PLAIN"

    def __init__(self, credentials: CredentialCache) -> None:
        self._credentials = credentials
        self.done = False
        self.user = ""

    def step(self, token: bytes) -> bytes:
        if self.done:
            raise AuthenticationFailed("Authentication failed: PLAIN takes one token")
        parts = token.split(b"\x00")
        if len(parts) != 3 or len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed("Authentication failed: Invalid SASL/PLAIN response")
        try:
            authzid, user, password = (p.decode() for p in parts)
        except UnicodeDecodeError:
            raise AuthenticationFailed(
                "Authentication failed: Invalid SASL/PLAIN response"
            ) from None
        if not user or not password:
            raise AuthenticationFailed("Authentication failed: username or password not specified")
        if authzid and authzid != user:
            raise AuthenticationFailed(
                "Authentication failed: Client requested an authorization id that is "
                "different from username"
            )
        secret = self._credentials.for_plain(user)
        if secret is None or not password_matches(secret, parts[2]):
            raise _invalid_credentials(self.mechanism)
        self.done = True
        self.user = user
        return b""


def _sasl_name(escaped: str) -> str:
    """SCRAM's saslname to the user name (RFC 5802: `=2C` is `,`, `=3D` is `=`)."""
    return escaped.replace("=2C", ",").replace("=3D", "=")


class ScramExchange:
    """RFC 5802 (SCRAM-SHA-256/512, no channel binding), as Kafka's ScramSaslServer."""

    def __init__(self, mechanism: str, credentials: CredentialCache) -> None:
        self.mechanism = mechanism
        self._credentials = credentials
        self._server = ScramMechanism(mechanism).make_server(self._lookup)
        self._round = 0
        self.done = False
        self.user = ""

    def _lookup(self, escaped_user: str) -> tuple[bytes, bytes, bytes, int]:
        user = _sasl_name(escaped_user)
        secret = self._credentials.lookup(user, self.mechanism)
        if secret is None:
            raise _invalid_credentials(self.mechanism)
        self.user = user
        return secret.salt, secret.stored_key, secret.server_key, secret.iterations

    def _accept_repeated_client_nonce(self, client_final: str) -> None:
        """Kafka's check of the final nonce is `endsWith` the server's, not equality, and
        librdkafka 2.0 (Debian 12's kcat) relies on it: it sends its own nonce again in
        front of the server's. The proof covers the message as sent, so it still proves
        the password; scramp then checks the nonce as the client sent it."""
        for attribute in client_final.split(","):
            if attribute.startswith("r="):
                nonce = attribute[2:]
                expected = str(self._server.nonce)
                if nonce != expected and nonce.endswith(expected):
                    self._server.nonce = type(self._server.nonce)(nonce)
                return

    def step(self, token: bytes) -> bytes:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed("Authentication failed: SCRAM message too long")
        try:
            message = token.decode()
            if self._round == 0:
                self._round = 1
                self._server.set_client_first(message)
                return str(self._server.get_server_first()).encode()
            if self._round == 1:
                self._round = 2
                self._accept_repeated_client_nonce(message)
                self._server.set_client_final(message)
                final = str(self._server.get_server_final()).encode()
                self.done = True
                return final
        except (ScramException, UnicodeDecodeError, ValueError, KeyError) as e:
            if isinstance(e, ScramException) and "keys don't match" in str(e):
                raise _invalid_credentials(self.mechanism) from None
            raise AuthenticationFailed(f"Authentication failed: {e}") from None
        raise AuthenticationFailed("Authentication failed: the SCRAM exchange is over")


class RefusedExchange:
    """A re-authentication that asked for another mechanism: Kafka answers the handshake
    and fails the first token with this message (its REAUTH_BAD_MECHANISM state)."""

    def __init__(self, mechanism: str, previous: str) -> None:
        self.mechanism = mechanism
        self.done = False
        self.user = ""
        self._message = (
            f"SASL mechanism '{mechanism}' requested by client is not supported for "
            f"re-authentication of mechanism '{previous}'"
        )

    def step(self, token: bytes) -> bytes:
        raise AuthenticationFailed(self._message)


def start_exchange(mechanism: str, credentials: CredentialCache) -> SaslExchange:
    if mechanism == "PLAIN":
        return PlainExchange(credentials)
    return ScramExchange(mechanism, credentials)
