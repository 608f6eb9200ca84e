"""The listener's SSLObject (security/tls.py) reads every buffered TLS record per call,
and otherwise behaves as the standard one: close_notify, a corrupted record after good
data, a partial record, and reads without a buffer. Both run side by side in memory."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
from pki import Pki, make_pki

from driftlog.security.tls import RecordDrainingSSLObject

Pair = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.SSLObject, ssl.MemoryBIO]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def pair(pki: Pki, cls: type[ssl.SSLObject]) -> Pair:
    """A server (of `cls`) and a client, handshaken over memory BIOs."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    server_context.sslobject_class = cls
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(pki.ca_cert)
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")
    for _ in range(10):
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        if client_out.pending:
            server_in.write(client_out.read())
        if server_out.pending:
            client_in.write(server_out.read())
    assert isinstance(server, cls)
    return server, server_in, client, client_out


def outcomes(server: ssl.SSLObject, reads: int, size: int = 1000) -> list[object]:
    buffer = bytearray(size)
    seen: list[object] = []
    for _ in range(reads):
        try:
            count = int(server.read(size, buffer))
            seen.append((count, bytes(buffer[:count])))
        except ssl.SSLError as e:
            seen.append(type(e).__name__)
    return seen


def test_all_buffered_records_in_one_read_then_close_notify(pki: Pki) -> None:
    server, server_in, client, client_out = pair(pki, RecordDrainingSSLObject)
    for chunk in (b"a" * 10, b"b" * 100, b"c" * 20):  # three records
        client.write(chunk)
    with pytest.raises(ssl.SSLWantReadError):
        client.unwrap()  # close_notify
    server_in.write(client_out.read())
    assert outcomes(server, 3) == [(130, b"a" * 10 + b"b" * 100 + b"c" * 20), (0, b""), (0, b"")]


def test_at_most_the_length_asked_and_the_rest_next(pki: Pki) -> None:
    server, server_in, client, client_out = pair(pki, RecordDrainingSSLObject)
    client.write(b"x" * 600)
    client.write(b"y" * 600)
    server_in.write(client_out.read())
    first, second = outcomes(server, 2)
    assert first == (1000, b"x" * 600 + b"y" * 400)
    assert second == (200, b"y" * 200)


@pytest.mark.parametrize("cls", [ssl.SSLObject, RecordDrainingSSLObject])
def test_a_corrupted_record_after_good_data_is_raised_by_the_next_read(
    pki: Pki, cls: type[ssl.SSLObject]
) -> None:
    server, server_in, client, client_out = pair(pki, cls)
    client.write(b"good" * 25)
    good = client_out.read()
    client.write(b"evil" * 25)
    bad = bytearray(client_out.read())
    bad[-3] ^= 1
    server_in.write(good + bytes(bad))
    seen = outcomes(server, 2)
    assert seen[0] == (100, b"good" * 25)
    assert seen[1] == "SSLError"


@pytest.mark.parametrize("cls", [ssl.SSLObject, RecordDrainingSSLObject])
def test_a_partial_record_wants_more(pki: Pki, cls: type[ssl.SSLObject]) -> None:
    server, server_in, client, client_out = pair(pki, cls)
    client.write(b"z" * 100)
    record = client_out.read()
    server_in.write(record[:50])
    assert outcomes(server, 2) == ["SSLWantReadError", "SSLWantReadError"]
    server_in.write(record[50:])
    assert outcomes(server, 1) == [(100, b"z" * 100)]


def test_a_read_without_a_buffer_is_the_standard_one(pki: Pki) -> None:
    server, server_in, client, client_out = pair(pki, RecordDrainingSSLObject)
    client.write(b"n" * 10)
    client.write(b"m" * 10)
    server_in.write(client_out.read())
    assert server.read(1000) == b"n" * 10  # one record, as ssl.SSLObject.read
