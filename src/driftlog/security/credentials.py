"""SCRAM credentials as Kafka keeps them, and the agent's copy of them.

Kafka never stores a password: per user and mechanism it keeps a salt, an
iteration count, `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
`ServerKey = HMAC(SaltedPassword, "Server Key")` (RFC 5802), where
`SaltedPassword = PBKDF2-HMAC(password, salt, iterations)`. AlterUserScramCredentials
sends the salted password, `driftlog users set` the password; both end here. A PLAIN
login is checked against the same record: salt the password, derive the stored key,
compare.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from driftlog.coordinator.api import ScramCredential

# Kafka's ScramMechanism: name, hash, and the least iteration count it accepts.
HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384  # Kafka's upper bound (ScramMechanism.maxIterations)
# Kafka's numbering of mechanisms in DescribeUserScramCredentials and AlterUser...
MECHANISM_CODES = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
MECHANISM_NAMES = {code: name for name, code in MECHANISM_CODES.items()}


def salted_password(mechanism: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(HASHES[mechanism], password, salt, iterations)


def secret_from_salted(
    user: str, mechanism: str, salted: bytes, salt: bytes, iterations: int
) -> ScramCredential:
    digest = HASHES[mechanism]
    client_key = hmac.digest(salted, b"Client Key", digest)
    return ScramCredential(
        user_name=user,
        mechanism=mechanism,
        salt=salt,
        stored_key=hashlib.new(digest, client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", digest),
        iterations=iterations,
    )


def secret_from_password(
    user: str, mechanism: str, password: str, iterations: int = MIN_ITERATIONS
) -> ScramCredential:
    salt = os.urandom(32)
    salted = salted_password(mechanism, password.encode(), salt, iterations)
    return secret_from_salted(user, mechanism, salted, salt, iterations)


def password_matches(secret: ScramCredential, password: bytes) -> bool:
    """A PLAIN password against a SCRAM record (CPU-heavy: run it off the event loop)."""
    salted = salted_password(secret.mechanism, password, secret.salt, secret.iterations)
    derived = secret_from_salted(secret.user_name, secret.mechanism, salted, secret.salt, 1)
    return hmac.compare_digest(derived.stored_key, secret.stored_key)


class CredentialCache:
    """The credentials this agent checks logins against, reloaded from the coordinator
    store whenever its security version moves (every agent sees a change within about
    a heartbeat)."""

    def __init__(self) -> None:
        self._secrets: dict[tuple[str, str], ScramCredential] = {}
        self.version = -1

    def replace(self, secrets: Iterable[ScramCredential], version: int) -> None:
        self._secrets = {(s.user_name, s.mechanism): s for s in secrets}
        self.version = version

    def lookup(self, user: str, mechanism: str) -> ScramCredential | None:
        return self._secrets.get((user, mechanism))

    def for_plain(self, user: str) -> ScramCredential | None:
        """The record a PLAIN login is checked against (the stronger hash first)."""
        return self.lookup(user, "SCRAM-SHA-512") or self.lookup(user, "SCRAM-SHA-256")

    def users(self) -> dict[str, list[ScramCredential]]:
        by_user: dict[str, list[ScramCredential]] = {}
        for secret in self._secrets.values():
            by_user.setdefault(secret.user_name, []).append(secret)
        return by_user
