"""Runs decode_request on size-prefixed frames read from stdin; one verdict line per frame.

Started by fuzzlib.DecodeWorker, so that a frame which aborts the interpreter (kio's
native reader can) ends a process of ours and not the test run. This process imports
and warms the decoders once, then forks a child that answers frames until it dies;
when it dies abnormally, this process answers "aborted ..." for the frame it was on
and forks a fresh child (milliseconds, where a new interpreter takes half a second).

The child's address space is capped a little above what it uses at start: an
allocation kio would only attempt successfully on a big machine fails here
everywhere, so which frames count as aborting does not depend on the CI machine.
"""

from __future__ import annotations

import os
import resource
import struct
import sys

from driftlog.protocol.codec import (
    MalformedRequest,
    UnsupportedRequest,
    _request_reader,
    decode_request,
)
from driftlog.server.registry import SUPPORTED_VERSIONS

ADDRESS_SPACE_HEADROOM = 1 << 30


def _read_exactly(n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _answer(line: str) -> None:
    data = line.replace("\n", " ").encode() + b"\n"
    while data:
        data = data[os.write(1, data) :]


def _serve() -> None:
    """The child: decode frames until stdin ends."""
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = used + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        size_bytes = _read_exactly(4)
        if size_bytes is None:
            return
        (size,) = struct.unpack(">i", size_bytes)
        payload = _read_exactly(size)
        if payload is None:
            return
        try:
            decode_request(memoryview(payload).toreadonly(), SUPPORTED_VERSIONS)
            verdict = "request"
        except (MalformedRequest, UnsupportedRequest) as e:
            verdict = type(e).__name__
        except BaseException as e:
            verdict = f"escaped {type(e).__name__}: {e!r}"[:500]
        _answer(verdict)


def main() -> None:
    for api_key, (low, high) in SUPPORTED_VERSIONS.items():
        for version in range(low, high + 1):
            _request_reader(api_key, version)
    while True:
        stderr_read, stderr_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(stderr_read)
            os.dup2(stderr_write, 2)
            try:
                _serve()
            finally:
                os._exit(0)
        os.close(stderr_write)
        _, status = os.waitpid(pid, 0)
        os.set_blocking(stderr_read, False)
        try:
            stderr = os.read(stderr_read, 65536).decode(errors="replace")
        except BlockingIOError:
            stderr = ""
        os.close(stderr_read)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return  # stdin ended
        head = " | ".join(stderr.strip().splitlines()[:2])
        _answer(f"aborted (status {status}): {head}")
        sys.stderr.flush()


if __name__ == "__main__":
    main()
