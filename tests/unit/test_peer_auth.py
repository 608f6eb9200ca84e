"""The writer RPC's handshake (`coordinator/runtime/peer_auth.py`), driven directly: both sides with
the same secret agree; a wrong secret, a reflected or replayed proof, and messages of the
wrong size or magic are refused on either side."""

from __future__ import annotations

import pytest

from driftlog.coordinator.runtime.peer_auth import (
    CLIENT_LABEL,
    CLIENT_PROOF_BYTES,
    CLIENT_PROOF_MAGIC,
    MAGIC_BYTES,
    NONCE_BYTES,
    SERVER_HELLO_BYTES,
    SERVER_LABEL,
    SERVER_PROOF_BYTES,
    SERVER_PROOF_MAGIC,
    ClientHandshake,
    HandshakeFailed,
    RefusalLog,
    ServerHandshake,
    proof,
)

SECRET = b"the cluster's shared secret"
SERVER_NONCE = bytes(range(NONCE_BYTES))
CLIENT_NONCE = bytes(range(100, 100 + NONCE_BYTES))


def pair(
    server_secret: bytes = SECRET, client_secret: bytes = SECRET
) -> tuple[ServerHandshake, ClientHandshake]:
    return (
        ServerHandshake(server_secret, SERVER_NONCE),
        ClientHandshake(client_secret, CLIENT_NONCE),
    )


def test_same_secret_both_sides_accept() -> None:
    server, client = pair()
    hello = server.hello()
    assert len(hello) == SERVER_HELLO_BYTES
    client_proof = client.receive_hello(hello)
    assert len(client_proof) == CLIENT_PROOF_BYTES
    server_proof = server.receive_proof(client_proof)
    assert len(server_proof) == SERVER_PROOF_BYTES
    client.receive_proof(server_proof)  # no exception: the server proved itself too


def test_proofs_are_hmac_sha256_over_label_and_both_nonces() -> None:
    server, client = pair()
    client_proof = client.receive_hello(server.hello())
    expected = proof(SECRET, CLIENT_LABEL, SERVER_NONCE, CLIENT_NONCE)
    assert client_proof == CLIENT_PROOF_MAGIC + CLIENT_NONCE + expected
    server_proof = server.receive_proof(client_proof)
    assert server_proof == SERVER_PROOF_MAGIC + proof(
        SECRET, SERVER_LABEL, SERVER_NONCE, CLIENT_NONCE
    )
    # Each side's proof depends on both nonces and the direction.
    assert len({expected, server_proof[MAGIC_BYTES:]}) == 2
    assert proof(SECRET, CLIENT_LABEL, SERVER_NONCE, SERVER_NONCE) != expected


def test_wrong_secret_refused_by_the_server() -> None:
    server, client = pair(client_secret=b"another cluster's secret")
    client_proof = client.receive_hello(server.hello())
    with pytest.raises(HandshakeFailed, match="wrong client proof"):
        server.receive_proof(client_proof)


def test_wrong_secret_refused_by_the_client() -> None:
    # A server that does not know the secret cannot make a proof the client accepts,
    # even with the client's own (valid) proof in hand.
    impostor, client = pair(server_secret=b"guessed")
    client_proof = client.receive_hello(impostor.hello())
    forged = SERVER_PROOF_MAGIC + proof(b"guessed", SERVER_LABEL, SERVER_NONCE, CLIENT_NONCE)
    with pytest.raises(HandshakeFailed, match="wrong server proof"):
        client.receive_proof(forged)
    # Nor by reflecting the client's proof back as its own.
    reflected = SERVER_PROOF_MAGIC + client_proof[MAGIC_BYTES + NONCE_BYTES :]
    with pytest.raises(HandshakeFailed, match="wrong server proof"):
        client.receive_proof(reflected)


def test_server_proof_reflected_as_client_proof_refused() -> None:
    # A peer without the secret, handed a server-labeled proof over the same nonces
    # (from another connection it relayed, say), cannot pass it off as a client proof.
    server, _ = pair()
    server_made = proof(SECRET, SERVER_LABEL, SERVER_NONCE, CLIENT_NONCE)
    with pytest.raises(HandshakeFailed, match="wrong client proof"):
        server.receive_proof(CLIENT_PROOF_MAGIC + CLIENT_NONCE + server_made)


def test_echoed_nonce_refused() -> None:
    server, _ = pair()
    echo = (
        CLIENT_PROOF_MAGIC + SERVER_NONCE + proof(SECRET, CLIENT_LABEL, SERVER_NONCE, SERVER_NONCE)
    )
    with pytest.raises(HandshakeFailed, match="nonce"):
        server.receive_proof(echo)
    client = ClientHandshake(SECRET, SERVER_NONCE)
    with pytest.raises(HandshakeFailed, match="nonce"):
        client.receive_hello(server.hello())


def test_proof_from_an_earlier_connection_refused() -> None:
    # A recorded client proof is bound to that connection's server nonce.
    server, client = pair()
    recorded = client.receive_hello(server.hello())
    later = ServerHandshake(SECRET, bytes(reversed(SERVER_NONCE)))
    later.hello()
    with pytest.raises(HandshakeFailed, match="wrong client proof"):
        later.receive_proof(recorded)


@pytest.mark.parametrize("cut", [0, 1, MAGIC_BYTES, CLIENT_PROOF_BYTES - 1])
def test_truncated_client_proof_refused(cut: int) -> None:
    server, client = pair()
    good = client.receive_hello(server.hello())
    with pytest.raises(HandshakeFailed, match="bytes, expected"):
        server.receive_proof(good[:cut])


def test_oversized_messages_refused() -> None:
    server, client = pair()
    hello = server.hello()
    with pytest.raises(HandshakeFailed, match="bytes, expected"):
        client.receive_hello(hello + b"\x00")
    good = client.receive_hello(hello)
    with pytest.raises(HandshakeFailed, match="bytes, expected"):
        server.receive_proof(good + b"x")
    server_proof = server.receive_proof(good)
    with pytest.raises(HandshakeFailed, match="bytes, expected"):
        client.receive_proof(server_proof + b"x")
    with pytest.raises(HandshakeFailed, match="bytes, expected"):
        client.receive_proof(server_proof[:-1])


def test_wrong_magic_refused() -> None:
    server, client = pair()
    hello = server.hello()
    with pytest.raises(HandshakeFailed, match="does not start with"):
        client.receive_hello(b"X" + hello[1:])
    good = client.receive_hello(hello)
    with pytest.raises(HandshakeFailed, match="does not start with"):
        server.receive_proof(b"DLRPC/1S" + good[MAGIC_BYTES:])
    # An RPC frame where the handshake should be (a JSON subscribe, length-prefixed).
    frame = b"\x00\x00\x00\x11" + b'{"op":"subscribe"}'
    with pytest.raises(HandshakeFailed):
        server.receive_proof(frame.ljust(CLIENT_PROOF_BYTES, b" "))
    server_proof = server.receive_proof(good)
    with pytest.raises(HandshakeFailed, match="does not start with"):
        client.receive_proof(b"DLRPC/1C" + server_proof[MAGIC_BYTES:])


def test_flipped_bits_refused_anywhere() -> None:
    server, client = pair()
    good = client.receive_hello(server.hello())
    for index in range(CLIENT_PROOF_BYTES):
        for bit in (0x01, 0x80):
            bad = bytearray(good)
            bad[index] ^= bit
            with pytest.raises(HandshakeFailed):
                ServerHandshake(SECRET, SERVER_NONCE).receive_proof(bytes(bad))


def test_server_proof_before_hello_refused() -> None:
    _, client = pair()
    with pytest.raises(HandshakeFailed, match="before"):
        client.receive_proof(SERVER_PROOF_MAGIC + bytes(32))


def test_empty_secret_and_bad_nonces_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ServerHandshake(b"", SERVER_NONCE)
    with pytest.raises(ValueError, match="non-empty"):
        ClientHandshake(b"", CLIENT_NONCE)
    with pytest.raises(ValueError, match="nonce"):
        ServerHandshake(SECRET, b"short")
    with pytest.raises(ValueError, match="nonce"):
        ClientHandshake(SECRET, bytes(NONCE_BYTES + 1))


def test_refusal_log_is_rate_limited() -> None:
    limiter = RefusalLog(lines_per_window=3, window_s=10.0)
    assert [limiter.admit(0.0) for _ in range(3)] == [0, 0, 0]
    assert [limiter.admit(1.0) for _ in range(5)] == [None] * 5
    # A new window: the first line says how many were left out.
    assert limiter.admit(10.0) == 5
    assert limiter.admit(10.5) == 0
