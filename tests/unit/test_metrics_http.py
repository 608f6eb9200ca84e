"""The metrics endpoint, served for real on 127.0.0.1 and asked with real HTTP clients:
/metrics parses with prometheus_client's parser, /healthz and /readyz answer as the
readiness callback says, other paths are 404, and bad, oversized, slow or too many
clients are refused while the server keeps serving."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftlog.metrics.http import METRICS_CONTENT_TYPE, HttpLimits, MetricsServer
from driftlog.metrics.registry import Registry


def _run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as e:
        return e.code, _lower(e.headers.items()), e.read()


def _lower(items: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


async def _aget(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_get, port, path, method)


def _raw(port: int, data: bytes, *, leave: bool = False) -> bytes:
    """Send `data` on a fresh connection (then, if `leave`, close the sending side);
    everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if leave:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


async def _araw(port: int, data: bytes, *, leave: bool = False) -> bytes:
    return await asyncio.to_thread(_raw, port, data, leave=leave)


def _always_ready() -> Callable[[], Awaitable[tuple[bool, str]]]:
    async def ready() -> tuple[bool, str]:
        return True, "ready"

    return ready


async def _started(
    registry: Registry | None = None,
    ready: Callable[[], Awaitable[tuple[bool, str]]] | None = None,
    **kwargs: Any,
) -> MetricsServer:
    server = MetricsServer(
        "127.0.0.1", 0, registry or Registry(), ready or _always_ready(), **kwargs
    )
    await server.start()
    return server


def test_metrics_parses_and_moves() -> None:
    async def main() -> None:
        registry = Registry()
        requests = registry.counter("app_requests_total", "Requests.", ["api"]).labels("produce")
        latency = registry.histogram("app_latency_seconds", "Latency.", buckets=(0.1, 1.0))
        server = await _started(registry)
        try:
            requests.inc(3)
            latency.labels().observe(0.5)
            status, headers, body = await _aget(server.port, "/metrics")
            assert status == 200
            assert headers["content-type"] == METRICS_CONTENT_TYPE
            assert headers["connection"] == "close"
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            assert families["app_requests"].samples[0].value == 3
            buckets = [s.value for s in families["app_latency_seconds"].samples]
            assert buckets == [0, 1, 1, 0.5, 1]  # le=0.1, le=1, +Inf, sum, count

            requests.inc()
            _, _, body = await _aget(server.port, "/metrics?x=1")  # a query string is fine
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            assert families["app_requests"].samples[0].value == 4
        finally:
            await server.close()

    _run(main())


def test_a_large_exposition_arrives_whole() -> None:
    async def main() -> None:
        registry = Registry()
        family = registry.gauge("app_lag", "Lag per partition.", ["group", "partition"])
        for partition in range(20_000):
            family.labels("a-consumer-group-with-a-long-name", str(partition)).set(partition)
        server = await _started(registry)
        try:
            status, _, body = await _aget(server.port, "/metrics")
            assert status == 200 and len(body) > 1_000_000
            (lag,) = text_string_to_metric_families(body.decode())
            assert len(lag.samples) == 20_000 and lag.samples[-1].value == 19_999
        finally:
            await server.close()

    _run(main())


def test_healthz_and_readyz() -> None:
    async def main() -> None:
        state = {"ready": False, "reason": "membership not joined"}

        async def ready() -> tuple[bool, str]:
            return bool(state["ready"]), str(state["reason"])

        server = await _started(ready=ready)
        try:
            assert await _aget(server.port, "/healthz") == (200, HEALTHZ_HEADERS, b"ok\n")
            status, _, body = await _aget(server.port, "/readyz")
            assert (status, body) == (503, b"membership not joined\n")
            state.update(ready=True, reason="")
            status, _, body = await _aget(server.port, "/readyz")
            assert (status, body) == (200, b"ready\n")
        finally:
            await server.close()

    _run(main())


# What /healthz answers with (compared whole, so a stray header shows up).
HEALTHZ_HEADERS = {
    "content-type": "text/plain; charset=utf-8",
    "content-length": "3",
    "cache-control": "no-store",
    "connection": "close",
}


def test_readiness_that_fails_or_hangs_is_not_ready() -> None:
    async def main() -> None:
        async def broken() -> tuple[bool, str]:
            raise RuntimeError("database unreachable")

        async def stuck() -> tuple[bool, str]:
            await asyncio.sleep(60)
            return True, ""

        limits = HttpLimits(callback_timeout_s=0.2)
        server = await _started(ready=broken, limits=limits)
        try:
            status, _, body = await _aget(server.port, "/readyz")
            assert status == 503 and b"database unreachable" in body
        finally:
            await server.close()
        server = await _started(ready=stuck, limits=limits)
        try:
            status, _, body = await _aget(server.port, "/readyz")
            assert (status, body) == (503, b"readiness check timed out\n")
        finally:
            await server.close()

    _run(main())


def test_collect_runs_before_each_scrape_and_its_failure_does_not_fail_it() -> None:
    async def main() -> None:
        registry = Registry()
        lag = registry.gauge("app_lag", "Lag.").labels()
        calls = 0

        async def collect() -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("coordinator down")
            lag.set(calls * 10)

        server = await _started(registry, collect=collect)
        try:
            _, _, body = await _aget(server.port, "/metrics")
            assert b"app_lag 10\n" in body
            status, _, body = await _aget(server.port, "/metrics")
            assert status == 200 and b"app_lag 10\n" in body  # the last value stays
            _, _, body = await _aget(server.port, "/metrics")
            assert b"app_lag 30\n" in body
        finally:
            await server.close()

    _run(main())


def test_unknown_paths_and_methods() -> None:
    async def main() -> None:
        server = await _started()
        try:
            status, _, body = await _aget(server.port, "/")
            assert (status, body) == (404, b"not found\n")
            assert (await _aget(server.port, "/metrics/extra"))[0] == 404
            status, headers, _ = await _aget(server.port, "/metrics", method="POST")
            assert status == 405 and headers["allow"] == "GET, HEAD"
            status, headers, body = await _aget(server.port, "/healthz", method="HEAD")
            assert (status, body) == (200, b"")
        finally:
            await server.close()

    _run(main())


def test_bad_requests_get_a_4xx_and_a_close_and_the_server_keeps_serving() -> None:
    async def main() -> None:
        server = await _started(limits=HttpLimits(max_request_bytes=1024))
        try:
            answer = await _araw(server.port, b"\x00\x01\x02 garbage \xff\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")
            answer = await _araw(server.port, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")
            # Headers beyond the request limit: h11's "header fields too large".
            huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n"
            answer = await _araw(server.port, huge)
            assert answer.startswith(b"HTTP/1.1 431 ")
            body = b"x" * 2048
            big_body = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n" + body
            answer = await _araw(server.port, big_body)
            assert answer.startswith(b"HTTP/1.1 413 ")
            # Half a request, then the end of the stream: incomplete, so bad too.
            answer = await _araw(server.port, b"GET /metr", leave=True)
            assert answer.startswith(b"HTTP/1.1 400 ")
            # Nothing at all: closed without an answer.
            assert await _araw(server.port, b"", leave=True) == b""
            assert (await _aget(server.port, "/healthz"))[0] == 200
            answer = await _araw(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok\n")
        finally:
            await server.close()

    _run(main())


def test_a_slow_client_is_cut_off_and_the_cap_holds() -> None:
    async def main() -> None:
        limits = HttpLimits(connection_timeout_s=0.5, max_connections=2)
        server = await _started(limits=limits)
        try:
            loop = asyncio.get_running_loop()
            # Two clients that never finish their request hold both slots...
            slow = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            for _, writer in slow:
                writer.write(b"GET /metrics HTTP/1.1\r\n")
            await asyncio.sleep(0.1)
            # ...so a third is closed at once, without an answer.
            started = loop.time()
            assert await _araw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == b""
            assert loop.time() - started < 0.4
            assert server.refused == 1
            # The slow ones are cut off at the connection timeout, freeing the slots.
            for reader, _ in slow:
                assert await asyncio.wait_for(reader.read(), 2) == b""
            assert (await _aget(server.port, "/healthz"))[0] == 200
            for _, writer in slow:
                writer.close()
        finally:
            await server.close()

    _run(main())


def test_close_ends_open_connections() -> None:
    async def main() -> None:
        server = await _started()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 2)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        with pytest.raises(RuntimeError):
            _ = server.port

    _run(main())
