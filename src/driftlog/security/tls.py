"""TLS for client listeners: a server context from PEM files.

The certificate file may hold the chain after the agent's certificate. With a CA
file for clients, the listener asks for (`requested`) or insists on (`required`) a
client certificate signed by it; the certificate then names the client.

The context's connections decrypt with `RecordDrainingSSLObject`: the event loop's
TLS transport asks for one TLS record per call, and librdkafka sends a produce
request as many small records (often one of ~1 KiB per message value and one of
~10 bytes for its header), so the per-call cost counted more than the cipher.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from driftlog.security.listeners import ClientAuth


class TlsConfigError(ValueError):
    pass


class RecordDrainingSSLObject(ssl.SSLObject):
    """An SSLObject whose read into a buffer returns every record that is decrypted
    and fits, not only the first.

    The TLS transports of uvloop and asyncio call `read(n, buffer)` once per TLS
    record through this Python method (then `pending()`, through another), and a
    record may carry 10 bytes. Here the loop over records is one call. The contract
    is unchanged: up to `len` bytes, 0 at the peer's close_notify, SSLWantReadError
    when no whole record is buffered. An error met after some bytes were read is
    raised by the next call, as the plain SSLObject would have raised it there.
    """

    _deferred_error: ssl.SSLError | None = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if buffer is None:
            return super().read(len)
        error = self._deferred_error
        if error is not None:
            self._deferred_error = None
            raise error
        read_into = self._sslobj.read  # type: ignore[attr-defined]
        total: int = read_into(len, buffer)
        if total == 0 or total >= len:
            return total
        view = memoryview(buffer)
        try:
            while total < len:
                count: int = read_into(len - total, view[total:])
                if count == 0:  # close_notify: the next call returns 0 again
                    break
                total += count
        except ssl.SSLWantReadError:
            pass  # a partial record: the next call raises it again
        except ssl.SSLError as e:
            self._deferred_error = e
        return total


def server_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None, client_auth: ClientAuth
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        if client_ca_file is not None:
            context.load_verify_locations(cafile=client_ca_file)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load TLS files: {e}") from None
    context.verify_mode = {
        ClientAuth.NONE: ssl.CERT_NONE,
        ClientAuth.REQUESTED: ssl.CERT_OPTIONAL,
        ClientAuth.REQUIRED: ssl.CERT_REQUIRED,
    }[client_auth]
    context.sslobject_class = RecordDrainingSSLObject
    return context
