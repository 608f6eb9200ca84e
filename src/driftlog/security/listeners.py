"""Listeners in Kafka's syntax: names, addresses, security protocols and per-listener
settings. Parsing only; the agent opens the sockets.

`--listeners INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:9093` names each listener;
`--listener-security-protocol-map INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL` says what
each speaks (a listener named after a protocol speaks it without a map entry, as in
Kafka); `--advertised-listeners` gives the address clients are told, per name.
Per-listener settings use Kafka's keys, `listener.name.<name>.<key>=<value>`, for
`sasl.enabled.mechanisms` and `ssl.client.auth`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class SecurityProtocol(enum.StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class ClientAuth(enum.StrEnum):
    """Kafka's ssl.client.auth: whether a TLS client must present a certificate."""

    NONE = "none"
    REQUESTED = "requested"
    REQUIRED = "required"


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Per-listener keys, as Kafka spells them after `listener.name.<name>.`.
_LISTENER_KEYS = ("sasl.enabled.mechanisms", "ssl.client.auth")


class ListenerError(ValueError):
    """A listener option that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    host: str
    port: int
    protocol: SecurityProtocol
    advertised_host: str
    advertised_port: int
    sasl_mechanisms: tuple[str, ...]
    client_auth: ClientAuth


@dataclass(frozen=True, slots=True)
class _Endpoint:
    name: str
    host: str
    port: int


def _endpoints(value: str, option: str) -> list[_Endpoint]:
    endpoints: list[_Endpoint] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, address = item.partition("://")
        host, colon, port = address.rpartition(":")
        if not sep or not colon or not port.isdigit() or not name:
            raise ListenerError(f"{option}: expected NAME://HOST:PORT, got {item!r}")
        if not 0 <= int(port) <= 65535:
            raise ListenerError(f"{option}: port out of range in {item!r}")
        name = name.upper()
        if any(e.name == name for e in endpoints):
            raise ListenerError(f"{option}: listener {name} is listed twice")
        endpoints.append(_Endpoint(name, host.strip("[]"), int(port)))
    if not endpoints:
        raise ListenerError(f"{option}: no listener given")
    return endpoints


def _protocol_map(value: str) -> dict[str, SecurityProtocol]:
    mapping: dict[str, SecurityProtocol] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, protocol = item.partition(":")
        if not sep or protocol.upper() not in SecurityProtocol.__members__:
            raise ListenerError(
                f"--listener-security-protocol-map: expected NAME:PROTOCOL with PROTOCOL one "
                f"of {', '.join(SecurityProtocol)}, got {item!r}"
            )
        mapping[name.strip().upper()] = SecurityProtocol(protocol.upper())
    return mapping


def _listener_settings(value: str) -> dict[str, dict[str, str]]:
    """`listener.name.x.key=v;...` to {X: {key: v}} (`;` because values hold commas)."""
    settings: dict[str, dict[str, str]] = {}
    for item in filter(None, (part.strip() for part in value.split(";"))):
        key, sep, setting = item.partition("=")
        prefix, _, rest = key.strip().partition("listener.name.")
        name, dot, setting_key = rest.partition(".")
        if not sep or prefix or not dot or setting_key not in _LISTENER_KEYS:
            raise ListenerError(
                f"--listener-settings: expected listener.name.NAME.KEY=VALUE with KEY one of "
                f"{', '.join(_LISTENER_KEYS)}, got {item!r}"
            )
        settings.setdefault(name.upper(), {})[setting_key] = setting.strip()
    return settings


def _mechanisms(value: str, where: str) -> tuple[str, ...]:
    mechanisms = tuple(m.strip().upper() for m in value.split(",") if m.strip())
    unknown = [m for m in mechanisms if m not in SASL_MECHANISMS]
    if unknown:
        raise ListenerError(
            f"{where}: unsupported SASL mechanism {', '.join(unknown)} "
            f"(supported: {', '.join(SASL_MECHANISMS)}; OAUTHBEARER and GSSAPI are not)"
        )
    if not mechanisms:
        raise ListenerError(f"{where}: no SASL mechanism enabled")
    return mechanisms


def _client_auth(value: str, where: str) -> ClientAuth:
    try:
        return ClientAuth(value.strip().lower())
    except ValueError:
        raise ListenerError(
            f"{where}: expected none, requested or required, got {value!r}"
        ) from None


def parse_listeners(
    listeners: str,
    *,
    advertised: str = "",
    protocol_map: str = "",
    settings: str = "",
    sasl_mechanisms: str = ",".join(SASL_MECHANISMS),
    client_auth: str = "",
    has_client_ca: bool = False,
) -> list[Listener]:
    """The listeners an agent opens, checked for consistency.

    `client_auth` empty means Kafka's default when a CA for client certificates is
    given (`required`) and `none` otherwise.
    """
    endpoints = _endpoints(listeners, "--listeners")
    names = {e.name for e in endpoints}
    advertised_by_name: Mapping[str, _Endpoint] = {}
    if advertised:
        advertised_by_name = {e.name: e for e in _endpoints(advertised, "--advertised-listeners")}
        unknown = sorted(set(advertised_by_name) - names)
        if unknown:
            raise ListenerError(
                f"--advertised-listeners names {', '.join(unknown)}, not in --listeners"
            )
    mapping = _protocol_map(protocol_map)
    per_listener = _listener_settings(settings)
    unknown = sorted(set(per_listener) - names)
    if unknown:
        raise ListenerError(f"--listener-settings names {', '.join(unknown)}, not in --listeners")
    default_mechanisms = _mechanisms(sasl_mechanisms, "--sasl-enabled-mechanisms")
    default_client_auth = (
        _client_auth(client_auth, "--ssl-client-auth")
        if client_auth
        else (ClientAuth.REQUIRED if has_client_ca else ClientAuth.NONE)
    )
    result: list[Listener] = []
    for endpoint in endpoints:
        protocol = mapping.get(endpoint.name)
        if protocol is None:
            if endpoint.name not in SecurityProtocol.__members__:
                raise ListenerError(
                    f"listener {endpoint.name} has no security protocol: add "
                    f"{endpoint.name}:PROTOCOL to --listener-security-protocol-map"
                )
            protocol = SecurityProtocol(endpoint.name)
        own = per_listener.get(endpoint.name, {})
        where = f"listener.name.{endpoint.name.lower()}"
        mechanisms = (
            _mechanisms(own["sasl.enabled.mechanisms"], f"{where}.sasl.enabled.mechanisms")
            if "sasl.enabled.mechanisms" in own
            else default_mechanisms
        )
        auth = (
            _client_auth(own["ssl.client.auth"], f"{where}.ssl.client.auth")
            if "ssl.client.auth" in own
            else default_client_auth
        )
        if auth is not ClientAuth.NONE and protocol.uses_tls and not has_client_ca:
            raise ListenerError(
                f"listener {endpoint.name}: ssl.client.auth={auth} needs --tls-client-ca-file"
            )
        shown = advertised_by_name.get(endpoint.name)
        advertised_host = shown.host if shown else endpoint.host
        if advertised_host in ("", "0.0.0.0", "::"):
            advertised_host = "127.0.0.1"
        result.append(
            Listener(
                name=endpoint.name,
                host=endpoint.host or "0.0.0.0",
                port=endpoint.port,
                protocol=protocol,
                advertised_host=advertised_host,
                advertised_port=shown.port if shown else endpoint.port,
                sasl_mechanisms=mechanisms,
                client_auth=auth,
            )
        )
    return result
