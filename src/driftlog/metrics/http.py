"""The metrics endpoint: Prometheus text at /metrics, liveness at /healthz, readiness at /readyz.

Owns the HTTP side only: h11 parses and frames HTTP/1.1 (a pure state machine fed
the bytes this module reads), the registry renders, and the agent decides what
"ready" means through the `ready` callback. One request per connection, answered
with `Connection: close` (scrapers and probes open one per request anyway).

Bounded, since anyone who reaches the port can talk to it: a request (line,
headers and body) of at most `max_request_bytes`, a whole exchange within
`connection_timeout_s` (a slow client cannot hold a slot), at most
`max_connections` at once (more are closed at accept), and callbacks within
`callback_timeout_s`. A request h11 cannot parse gets its 4xx and a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

from driftlog.metrics.registry import Registry

log = logging.getLogger(__name__)

# The exposition format's content type (text format 0.0.4).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
READ_CHUNK_BYTES = 4096

Readiness = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_request_bytes: int = 8 * 1024
    connection_timeout_s: float = 10.0
    max_connections: int = 32
    # For `ready` and `collect`: a stuck database must not hang the probe.
    callback_timeout_s: float = 5.0


class _RequestTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = TEXT_CONTENT_TYPE
    extra_headers: tuple[tuple[str, str], ...] = ()


class MetricsServer:
    """Serves `registry` over HTTP on `host:port` (port 0: any free port, see `port`).

    `collect`, when given, runs before each scrape (values only an await can get,
    such as consumer-group lag); a failure or timeout of it is logged and the scrape
    still answers with what the registry holds.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: Registry,
        ready: Readiness,
        *,
        limits: HttpLimits | None = None,
        collect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
        self._collect = collect
        self.limits = limits or HttpLimits()
        self._server: asyncio.Server | None = None
        # The open connections, by the task serving each.
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Connections closed at accept because `max_connections` were open.
        self.refused = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._port, reuse_address=True
        )

    @property
    def port(self) -> int:
        """The port bound (the one chosen when 0 was asked)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Closing their sockets ends the handlers (asyncio's stream callback logs a
        # handler task that was cancelled instead as a failure).
        for writer in self._handlers.values():
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None or len(self._handlers) >= self.limits.max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        self._handlers[task] = writer
        try:
            async with asyncio.timeout(self.limits.connection_timeout_s):
                await self._exchange(reader, writer)
                # A graceful close sends what is buffered (a large scrape) before the FIN.
                writer.close()
                await writer.wait_closed()
        except (TimeoutError, ConnectionError):
            pass  # a slow or vanished client: nothing to answer
        except Exception:
            log.exception("metrics endpoint: a request failed")
        finally:
            self._handlers.pop(task, None)
            writer.transport.abort()  # no-op after a graceful close; else frees the socket

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_request_bytes)
        try:
            request = await self._read_request(conn, reader)
        except h11.RemoteProtocolError as e:
            log.debug("metrics endpoint: bad request: %s", e)
            await _send(conn, writer, _Reply(e.error_status_hint, b"bad request\n"), head=False)
            return
        except _RequestTooLarge:
            await _send(conn, writer, _Reply(413, b"request too large\n"), head=False)
            return
        if request is None:
            return  # closed before a whole request arrived
        reply = await self._route(request)
        await _send(conn, writer, reply, head=request.method == b"HEAD")

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        """The request, once it arrived whole (its body, if any, read and dropped)."""
        request: h11.Request | None = None
        body_bytes = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_CHUNK_BYTES))  # b"": end of stream
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > self.limits.max_request_bytes:
                    raise _RequestTooLarge
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _route(self, request: h11.Request) -> _Reply:
        if request.method not in (b"GET", b"HEAD"):
            return _Reply(405, b"method not allowed\n", extra_headers=(("allow", "GET, HEAD"),))
        path = request.target.split(b"?", 1)[0]
        if path == b"/metrics":
            await self._run_collect()
            return _Reply(200, self._registry.render().encode(), METRICS_CONTENT_TYPE)
        if path == b"/healthz":
            return _Reply(200, b"ok\n")
        if path == b"/readyz":
            ready, reason = await self._check_ready()
            body = (reason or ("ready" if ready else "not ready")) + "\n"
            return _Reply(200 if ready else 503, body.encode())
        return _Reply(404, b"not found\n")

    async def _run_collect(self) -> None:
        if self._collect is None:
            return
        try:
            await asyncio.wait_for(self._collect(), self.limits.callback_timeout_s)
        except Exception as e:
            log.warning("metrics endpoint: collecting before a scrape failed: %r", e)

    async def _check_ready(self) -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(self._ready(), self.limits.callback_timeout_s)
        except TimeoutError:
            return False, "readiness check timed out"
        except Exception as e:
            return False, f"readiness check failed: {e!r}"


async def _send(
    conn: h11.Connection, writer: asyncio.StreamWriter, reply: _Reply, *, head: bool
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # h11 cannot answer from here (never the case for one request)
    headers = [
        ("content-type", reply.content_type),
        ("content-length", str(len(reply.body))),
        ("cache-control", "no-store"),
        ("connection", "close"),
        *reply.extra_headers,
    ]
    data = conn.send(h11.Response(status_code=reply.status, headers=headers)) or b""
    if not head:
        data += conn.send(h11.Data(data=reply.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
