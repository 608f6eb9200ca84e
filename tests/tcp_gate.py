"""A TCP relay on loopback that can go silent, like a network partition.

`TcpGate(host, port)` listens on a free port of 127.0.0.1 (`gate.port`) and relays each
connection it accepts to the target, bytes both ways, on one thread with a selector.

- `silence()`: nothing crosses any more, in either direction, and connections accepted
  from now on are not connected to the target. Every socket stays open: no FIN, no RST.
  The gate stops reading, so what the peers send piles up in the kernel's buffers until
  they fill and the senders block, as over a link whose packets vanish (TCP would keep
  retransmitting). Bytes the gate had read but not yet passed on are held. Nothing
  either side does (closing, resetting) is seen by the other while silent.
- `heal()`: relaying resumes where it stopped, held bytes first (what TCP's
  retransmissions deliver once the link is back); connections accepted while silent
  connect to the target now.
- `reset()`: closes every connection with a reset (RST) on both sides, as a firewall
  that forgets its connections does. The gate keeps listening.
- `close()`: stops the gate and closes everything.

What differs from a real partition: the gate's kernel acknowledges what each peer sends
and answers its TCP keepalive probes, so neither peer sees its connection fail at the
TCP level (keepalives, `tcp_user_timeout`); only its own timeouts tell it something is
wrong. Connection attempts during silence complete (the gate accepts them) but get no
answer.

Buffers are bounded: at most `buffer_bytes` (64 KiB) per direction per connection in
the gate, beyond the kernel's own socket buffers.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar, cast

BUFFER_BYTES = 64 * 1024
_T = TypeVar("_T")
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends RST


def _close(sock: socket.socket | None, *, rst: bool = False) -> None:
    if sock is None:
        return
    if rst:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    """One relayed connection: the accepted client socket and its upstream socket."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.connecting = False  # a non-blocking connect to the target in progress
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False  # the client sent FIN (passed on once to_upstream drains)
        self.upstream_eof = False
        self.upstream_shut = False  # FIN passed on to the upstream
        self.client_shut = False
        self.closed = False

    @property
    def done(self) -> bool:
        return self.client_shut and self.upstream_shut


class TcpGate:
    """A loopback TCP relay to (target_host, target_port) that can be silenced."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.target = (target_host, target_port)
        self.buffer_bytes = buffer_bytes
        self._listener = socket.create_server((listen_host, 0), backlog=128)
        self._listener.setblocking(False)
        self.host = listen_host
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pairs: list[_Pair] = []
        self._silent = False
        self._closing = False
        # Commands from other threads, run by the gate's thread between two selects.
        self._lock = threading.Lock()
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._registered: dict[socket.socket, int] = {}
        # Counters (read from any thread; written only by the gate's thread).
        self.accepted = 0
        self.bytes_to_target = 0
        self.bytes_from_target = 0
        self._thread = threading.Thread(target=self._run, name=f"tcp-gate-{self.port}", daemon=True)
        self._thread.start()

    # -- public, any thread ---------------------------------------------------------------

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def connections(self) -> int:
        """Connections open through the gate (relayed, or held while silent)."""
        if not self._thread.is_alive():
            return 0
        return self._call(lambda: sum(1 for p in self._pairs if not p.closed))

    def silence(self) -> None:
        """Stop relaying in both directions; keep every socket open. Returns once in effect."""
        self._call(lambda: setattr(self, "_silent", True))

    def heal(self) -> None:
        """Relay again: held bytes, then whatever the peers send; connect held connections."""
        self._call(self._heal)

    def reset(self) -> None:
        """Close every connection with RST on both sides; keep listening."""
        self._call(self._reset)

    def close(self) -> None:
        """Stop the thread, close every connection (RST) and the listening socket."""
        if self._closing:
            return
        self._call(lambda: setattr(self, "_closing", True))
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the gate's thread and return its result (waits until it ran)."""
        if not self._thread.is_alive():
            raise RuntimeError("the gate is closed")
        result: list[_T] = []
        done = threading.Event()
        with self._lock:
            self._commands.append((lambda: result.append(fn()), done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if not done.wait(10):
            raise TimeoutError("the gate's thread did not answer in 10 s")
        return result[0]

    # -- the gate's thread ------------------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._closing:
                self._update_interests()
                events = self._selector.select(timeout=1.0)
                # Commands first: once silence() has returned, nothing more crosses,
                # including what this select just reported.
                self._run_commands()
                if self._closing:
                    break
                for key, mask in events:
                    sock = key.fileobj
                    if sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    elif sock is self._listener:
                        self._accept()
                    elif not self._silent:
                        self._on_event(key.data, cast(socket.socket, sock), mask)
                self._pairs = [p for p in self._pairs if not p.closed]
        finally:
            self._reset_all()
            self._run_commands()
            self._selector.close()
            _close(self._listener)
            _close(self._wake_r)
            _close(self._wake_w)

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for fn, done in commands:
            try:
                fn()
            finally:
                done.set()

    def _heal(self) -> None:
        self._silent = False
        for pair in self._pairs:
            if pair.upstream is None and not pair.closed:
                self._connect(pair)

    def _reset(self) -> None:
        self._accept()  # connections the kernel completed but the gate had not taken yet
        self._reset_all()

    def _reset_all(self) -> None:
        for pair in self._pairs:
            self._abort(pair)
        self._pairs = []

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # try again at the next event
                raise
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            pair = _Pair(client)
            self._pairs.append(pair)
            if not self._silent:
                self._connect(pair)

    def _connect(self, pair: _Pair) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.upstream = upstream
        code = upstream.connect_ex(self.target)
        if code in (0, errno.EISCONN):
            pair.connecting = False
        elif code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            pair.connecting = True
        else:
            self._abort(pair)  # refused: the client sees a reset, as from the target

    def _abort(self, pair: _Pair) -> None:
        if pair.closed:
            return
        pair.closed = True
        for sock in (pair.client, pair.upstream):
            if sock is not None and sock in self._registered:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
                del self._registered[sock]
            _close(sock, rst=True)

    def _finish(self, pair: _Pair) -> None:
        """Both directions ended cleanly: close without reset."""
        pair.closed = True
        for sock in (pair.client, pair.upstream):
            if sock is not None and sock in self._registered:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
                del self._registered[sock]
            _close(sock)

    def _interests(self, pair: _Pair) -> tuple[int, int]:
        """What to wait for on (client, upstream)."""
        if self._silent or pair.closed or pair.upstream is None:
            return 0, 0
        if pair.connecting:
            return 0, selectors.EVENT_WRITE
        client = upstream = 0
        if not pair.client_eof and len(pair.to_upstream) < self.buffer_bytes:
            client |= selectors.EVENT_READ
        if not pair.upstream_eof and len(pair.to_client) < self.buffer_bytes:
            upstream |= selectors.EVENT_READ
        if pair.to_client:
            client |= selectors.EVENT_WRITE
        if pair.to_upstream:
            upstream |= selectors.EVENT_WRITE
        return client, upstream

    def _set_interest(self, sock: socket.socket | None, events: int, pair: _Pair) -> None:
        if sock is None:
            return
        current = self._registered.get(sock, 0)
        if events == current:
            return
        if events == 0:
            self._selector.unregister(sock)
            del self._registered[sock]
        elif current == 0:
            self._selector.register(sock, events, pair)
            self._registered[sock] = events
        else:
            self._selector.modify(sock, events, pair)
            self._registered[sock] = events

    def _update_interests(self) -> None:
        for pair in self._pairs:
            if pair.closed:
                continue
            client, upstream = self._interests(pair)
            self._set_interest(pair.client, client, pair)
            self._set_interest(pair.upstream, upstream, pair)

    def _on_event(self, pair: _Pair, sock: socket.socket, mask: int) -> None:
        if pair.closed:
            return
        try:
            if sock is pair.upstream and pair.connecting:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code != 0:
                    self._abort(pair)
                    return
                pair.connecting = False
                return
            on_client = sock is pair.client
            if mask & selectors.EVENT_READ:
                self._read(pair, from_client=on_client)
            if mask & selectors.EVENT_WRITE and not pair.closed:
                self._write(pair, to_client=on_client)
            if not pair.closed:
                self._pass_on_eof(pair)
        except OSError:
            self._abort(pair)  # a reset or another error on one side: reset the other

    def _read(self, pair: _Pair, from_client: bool) -> None:
        sock = pair.client if from_client else pair.upstream
        buffer = pair.to_upstream if from_client else pair.to_client
        assert sock is not None
        room = self.buffer_bytes - len(buffer)
        if room <= 0:
            return
        try:
            data = sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            if from_client:
                pair.client_eof = True
            else:
                pair.upstream_eof = True
            return
        buffer += data

    def _write(self, pair: _Pair, to_client: bool) -> None:
        sock = pair.client if to_client else pair.upstream
        buffer = pair.to_client if to_client else pair.to_upstream
        assert sock is not None
        if not buffer:
            return
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        del buffer[:sent]
        if to_client:
            self.bytes_from_target += sent
        else:
            self.bytes_to_target += sent

    def _pass_on_eof(self, pair: _Pair) -> None:
        """A FIN from one side goes to the other once what preceded it has."""
        if pair.client_eof and not pair.to_upstream and not pair.upstream_shut:
            assert pair.upstream is not None
            with contextlib.suppress(OSError):
                pair.upstream.shutdown(socket.SHUT_WR)
            pair.upstream_shut = True
        if pair.upstream_eof and not pair.to_client and not pair.client_shut:
            with contextlib.suppress(OSError):
                pair.client.shutdown(socket.SHUT_WR)
            pair.client_shut = True
        if pair.done:
            self._finish(pair)
