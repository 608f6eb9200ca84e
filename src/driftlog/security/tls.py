"""TLS for client listeners: a server context from PEM files.

The certificate file may hold the chain after the agent's certificate. With a CA
file for clients, the listener asks for (`requested`) or insists on (`required`) a
client certificate signed by it; the certificate then names the client.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from driftlog.security.listeners import ClientAuth


class TlsConfigError(ValueError):
    pass


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
    return context
