"""tests/tcp_gate.py against a small echo server: it relays, goes silent without closing
anything, resumes where it stopped, and resets."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from tcp_gate import TcpGate


class EchoServer:
    """Echoes every byte back on each connection; FIN answered with FIN."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.received = 0
        self.ended: list[str] = []  # "eof" or "reset", per connection that ended
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    with self._lock:
                        self.received += len(data)
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                self.ended.append("eof")
            except OSError:
                self.ended.append("reset")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def gate(echo: EchoServer) -> Iterator[TcpGate]:
    with TcpGate("127.0.0.1", echo.port) as g:
        yield g


def connect(gate: TcpGate, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gate.port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def assert_nothing_arrives(sock: socket.socket, wait_s: float = 0.5) -> None:
    """No byte and no FIN/RST within `wait_s`: the socket is open and silent."""
    sock.settimeout(wait_s)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5.0)


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), "condition not met in time"


def test_relays_both_ways_and_passes_fin(gate: TcpGate, echo: EchoServer) -> None:
    with connect(gate) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        sock.shutdown(socket.SHUT_WR)  # FIN reaches the server, whose FIN comes back
        assert sock.recv(1) == b""
    wait_until(lambda: echo.ended == ["eof"])
    assert gate.accepted == 1
    wait_until(lambda: gate.connections == 0)


def test_relays_large_volumes_through_bounded_buffers(gate: TcpGate) -> None:
    """8 MiB each way at once: both directions flow through the gate's 64 KiB buffers."""
    payload = os.urandom(8 * 1024 * 1024)
    with connect(gate, timeout_s=30) as sock:
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(recv_exactly(sock, len(payload))))
        reader.start()
        sock.sendall(payload)
        reader.join(30)
        assert received == [payload]
    assert gate.bytes_to_target == gate.bytes_from_target == len(payload)


def test_many_connections_at_once(gate: TcpGate) -> None:
    socks = [connect(gate) for _ in range(50)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(f"c{i:03d}".encode())
        for i, sock in enumerate(socks):
            assert recv_exactly(sock, 4) == f"c{i:03d}".encode()
    finally:
        for sock in socks:
            sock.close()


def test_silence_holds_bytes_without_closing_and_heal_delivers_them(
    gate: TcpGate, echo: EchoServer
) -> None:
    with connect(gate) as sock:
        sock.sendall(b"before")
        assert recv_exactly(sock, 6) == b"before"
        gate.silence()
        assert gate.silent
        sock.sendall(b"during")
        assert_nothing_arrives(sock)
        assert echo.received == 6  # not passed on
        assert gate.connections == 1
        gate.heal()
        assert recv_exactly(sock, 6) == b"during"  # held, then delivered in order
        sock.sendall(b"after")
        assert recv_exactly(sock, 5) == b"after"


def test_silence_holds_what_the_target_sends() -> None:
    """The other direction: bytes from the target wait behind a silent gate."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    with listener, TcpGate("127.0.0.1", listener.getsockname()[1]) as gate, connect(gate) as sock:
        server_side, _ = listener.accept()
        with server_side:
            server_side.sendall(b"one")
            assert recv_exactly(sock, 3) == b"one"
            gate.silence()
            server_side.sendall(b"two")
            server_side.shutdown(socket.SHUT_WR)  # its FIN waits too
            assert_nothing_arrives(sock)
            gate.heal()
            assert recv_exactly(sock, 3) == b"two"
            assert sock.recv(1) == b""


def test_a_silent_gate_blocks_a_sender_once_buffers_fill(gate: TcpGate, echo: EchoServer) -> None:
    with connect(gate) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        gate.silence()
        sock.settimeout(1.0)
        sent = 0
        chunk = b"y" * 65536
        with pytest.raises(TimeoutError):
            for _ in range(2000):  # 128 MiB: far more than any kernel buffers
                sent += sock.send(chunk)
        assert sent < 64 * 1024 * 1024
        assert echo.received == 0
        # Heal: everything sent is echoed back, nothing lost, the sender unblocks.
        gate.heal()
        sock.settimeout(10)
        total = sent
        received = 0
        reader_done = threading.Event()

        def read() -> None:
            nonlocal received
            while received < total:
                data = sock.recv(1 << 20)
                if not data:
                    break
                received += len(data)
            reader_done.set()

        threading.Thread(target=read, daemon=True).start()
        assert reader_done.wait(30)
        assert received == total


def test_connections_accepted_while_silent_connect_on_heal(gate: TcpGate, echo: EchoServer) -> None:
    gate.silence()
    with connect(gate) as sock:  # the gate accepts; the target hears nothing
        sock.sendall(b"early")
        assert_nothing_arrives(sock)
        assert echo.accepted == 0
        assert gate.connections == 1
        gate.heal()
        assert recv_exactly(sock, 5) == b"early"
        assert echo.accepted == 1


def test_a_close_during_silence_is_not_seen_until_heal(gate: TcpGate, echo: EchoServer) -> None:
    sock = connect(gate)
    sock.sendall(b"a")
    assert recv_exactly(sock, 1) == b"a"
    gate.silence()
    sock.close()
    time.sleep(0.3)
    assert echo.ended == []  # the server still thinks the connection is up
    gate.heal()
    wait_until(lambda: echo.ended == ["eof"])


def test_reset_closes_every_connection_and_keeps_listening(gate: TcpGate, echo: EchoServer) -> None:
    socks = [connect(gate) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"z")
        assert recv_exactly(sock, 1) == b"z"
    gate.silence()
    held = connect(gate)
    gate.reset()  # silent or not, every connection goes, held ones too
    for sock in [*socks, held]:
        with pytest.raises((ConnectionResetError, EOFError)):
            recv_exactly(sock, 1)
        sock.close()
    wait_until(lambda: len(echo.ended) == 3)
    assert gate.connections == 0
    gate.heal()
    with connect(gate) as sock:
        sock.sendall(b"new")
        assert recv_exactly(sock, 3) == b"new"


def test_an_unreachable_target_resets_the_client() -> None:
    port = socket.create_server(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()  # nothing listens there now
    # The reset may come while connect() returns (the gate accepts, fails to reach the
    # target and resets at once) or at the first read.
    with (
        TcpGate("127.0.0.1", dead) as gate,
        pytest.raises((ConnectionResetError, EOFError)),
        connect(gate) as sock,
    ):
        recv_exactly(sock, 1)


def test_close_ends_everything(echo: EchoServer) -> None:
    gate = TcpGate("127.0.0.1", echo.port)
    sock = connect(gate)
    sock.sendall(b"q")
    assert recv_exactly(sock, 1) == b"q"
    gate.close()
    with pytest.raises((ConnectionResetError, EOFError)):
        recv_exactly(sock, 1)
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gate.port), timeout=1).close()
    gate.close()  # twice is fine
