"""A minimal Kafka client over a raw socket, for tests that must send exact bytes."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_response_schema
from kio.serial import entity_reader, entity_writer


class RawClient:
    def __init__(self, bootstrap: str, timeout_s: float = 10.0) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.correlation_id = 0

    def close(self) -> None:
        self.sock.close()

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def encode(self, request: Any, client_id: str = "raw-test") -> bytes:
        self.correlation_id += 1
        header_cls = request.__header_schema__
        buf = io.BytesIO()
        fields = {
            "request_api_key": request.__api_key__,
            "request_api_version": request.__version__,
            "correlation_id": self.correlation_id,
            "client_id": client_id,
        }
        entity_writer(header_cls)(buf, header_cls(**fields))
        entity_writer(type(request))(buf, request)
        payload = buf.getvalue()
        return struct.pack(">i", len(payload)) + payload

    def recv_frame(self) -> bytes | None:
        """One response frame, or None when the agent closed the connection."""
        size_bytes = self._recv_exactly(4)
        if size_bytes is None:
            return None
        (size,) = struct.unpack(">i", size_bytes)
        return self._recv_exactly(size)

    def _recv_exactly(self, n: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self.sock.recv(n - len(chunks))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def request(self, request: Any, response_version: int | None = None) -> Any:
        self.send_bytes(self.encode(request))
        frame = self.recv_frame()
        assert frame is not None, "connection closed instead of a response"
        version = request.__version__ if response_version is None else response_version
        schema = load_response_schema(request.__api_key__, version)
        header, used = entity_reader(schema.__header_schema__)(frame, 0)
        assert header.correlation_id == self.correlation_id
        body, _ = entity_reader(schema)(frame, used)
        return body

    def is_closed_by_peer(self) -> bool:
        return self.recv_frame() is None


def metadata_node_ids(bootstrap: str) -> set[int]:
    """The node ids in this broker's own Metadata response.

    Over a raw connection to it: even a fresh librdkafka client may send its request
    to a broker it learned of from the bootstrap's first answer, whose view of the
    cluster is not this one's.
    """
    from kio.schema.metadata.v12.request import MetadataRequest

    client = RawClient(bootstrap)
    try:
        response = client.request(
            MetadataRequest(
                topics=(),
                allow_auto_topic_creation=False,
                include_topic_authorized_operations=False,
            )
        )
    finally:
        client.close()
    return {int(b.node_id) for b in response.brokers}
