"""Every `driftlog serve` option, declared once: flag, environment variable, AgentConfig
field, conversion, default, metavar and help.

The argparse parser, the conversion to AgentConfig and README's table are all generated
from `OPTIONS`, so adding an option is one entry there. Values stay raw strings until
`config_values` converts them, which is where a bad value becomes a ValueError (the
command line reports it as `driftlog: <message>`). Defaults are read from AgentConfig,
so each has one home. No I/O: the environment is passed in.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from driftlog.config import AgentConfig
from driftlog.coordinator.api import ALL_ROLES, ROLE_ORDER
from driftlog.read.zone.blocks import MAX_BLOCK_BYTES, MIN_BLOCK_BYTES
from driftlog.security.acl import parse_super_users

_DEFAULTS = AgentConfig()
_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{0,64}")

# Turns a raw value (from the command line, the environment or the default) into one
# value per field the option sets. Raises ValueError with a message for the user.
Converter = Callable[[str], tuple[object, ...]]

# AgentConfig fields deliberately without an option, and why. Everything else must be set
# by exactly one option (tests/unit/test_options_table.py checks both).
FIELDS_WITHOUT_OPTION: Mapping[str, str] = {
    "max_uploads": "internal concurrency of object uploads; tuned with the write pipeline",
    "max_pending_bytes": "internal back-pressure bound of the write pipeline, not a policy",
    "max_in_flight_per_connection": "internal pipelining bound per connection",
    "max_in_flight_bytes_per_connection": "internal memory bound per connection",
}


@dataclass(frozen=True, slots=True)
class Option:
    """One command line option and its environment variable `DRIFTLOG_<FLAG>`."""

    flag: str
    metavar: str
    help: str  # Markdown (backticks); the --help text drops the backticks
    # AgentConfig fields set, in the order `convert` returns their values; () for options
    # the command line itself uses (--log-level).
    fields: tuple[str, ...]
    convert: Converter
    # Raw default, as if typed on the command line; None leaves the fields at AgentConfig's
    # defaults (for optional settings whose default is None).
    default: str | None
    # The default column when the raw default says too little ("the listen address").
    default_doc: str = ""
    # Flag whose raw value this option takes when it is unset or empty (--advertise).
    fallback: str | None = None

    @property
    def env(self) -> str:
        return "DRIFTLOG_" + self.dest.upper()

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default_markdown(self) -> str:
        if self.default_doc:
            return self.default_doc
        return "empty" if not self.default else f"`{self.default}`"


def _field_of(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _bad(flag: str, expected: str, raw: str) -> ValueError:
    env = "DRIFTLOG_" + _field_of(flag).upper()
    return ValueError(f"{flag} ({env}): expected {expected}, got {raw!r}")


# Converters. Each takes the flag only to name it in errors.


def to_int(flag: str) -> Converter:
    def convert(raw: str) -> tuple[object, ...]:
        try:
            return (int(raw),)
        except ValueError:
            raise _bad(flag, "an integer", raw) from None

    return convert


def ms_to_s(flag: str) -> Converter:
    """Milliseconds on the command line (Kafka's unit) into a float of seconds."""
    as_int = to_int(flag)

    def convert(raw: str) -> tuple[object, ...]:
        (ms,) = as_int(raw)
        assert isinstance(ms, int)
        return (ms / 1000,)

    return convert


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def to_bool(flag: str) -> Converter:
    def convert(raw: str) -> tuple[object, ...]:
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return (word in _TRUE,)
        raise _bad(flag, "true or false", raw)

    return convert


def parse_host_port(flag: str, raw: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (every interface, 0.0.0.0)."""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit():
        raise _bad(flag, "HOST:PORT", raw)
    return host.strip("[]") or "0.0.0.0", int(port)


def to_host_port(flag: str) -> Converter:
    return lambda raw: parse_host_port(flag, raw)


def to_advertised_host_port(flag: str) -> Converter:
    """As `to_host_port`, but 0.0.0.0 (listen everywhere) is no address a client can use."""

    def convert(raw: str) -> tuple[object, ...]:
        host, port = parse_host_port(flag, raw)
        return ("127.0.0.1" if host == "0.0.0.0" else host), port

    return convert


def to_optional_address(flag: str) -> Converter:
    """`HOST:PORT` kept as text, or empty for unset; 0.0.0.0 is no address to connect to."""

    def convert(raw: str) -> tuple[object, ...]:
        if not raw:
            return ("",)
        host, port = parse_host_port(flag, raw)
        if host == "0.0.0.0" or not 0 < port < 65536:
            raise _bad(flag, "HOST:PORT that other agents can connect to", raw)
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}",)

    return convert


def to_block_bytes(flag: str) -> Converter:
    as_int = to_int(flag)

    def convert(raw: str) -> tuple[object, ...]:
        (value,) = as_int(raw)
        assert isinstance(value, int)
        if not MIN_BLOCK_BYTES <= value <= MAX_BLOCK_BYTES:
            raise _bad(flag, f"{MIN_BLOCK_BYTES} to {MAX_BLOCK_BYTES} bytes", raw)
        return (value,)

    return convert


def to_str(_flag: str) -> Converter:
    """Kept as given, comma-separated lists included (their parsing belongs to their user)."""
    return lambda raw: (raw,)


def to_optional_str(_flag: str) -> Converter:
    """Empty means unset (None), so an empty environment variable turns the setting off."""
    return lambda raw: (raw or None,)


def to_path(_flag: str) -> Converter:
    return lambda raw: (Path(raw),)


def to_optional_path(_flag: str) -> Converter:
    return lambda raw: (Path(raw) if raw else None,)


def to_optional_int(flag: str) -> Converter:
    """An integer, or empty for unset (None)."""
    as_int = to_int(flag)
    return lambda raw: as_int(raw) if raw else (None,)


def to_optional_host_port(flag: str) -> Converter:
    """`HOST:PORT` checked, kept as text; empty means off."""

    def convert(raw: str) -> tuple[object, ...]:
        if raw:
            parse_host_port(flag, raw)
        return (raw,)

    return convert


def to_authorizer(flag: str) -> Converter:
    def convert(raw: str) -> tuple[object, ...]:
        if raw.strip().lower() not in ("", "acl"):
            raise _bad(flag, "acl or empty", raw)
        return (raw.strip().lower(),)

    return convert


def to_super_users(flag: str) -> Converter:
    """Checked as Kafka parses super.users; kept as given."""

    def convert(raw: str) -> tuple[object, ...]:
        try:
            parse_super_users(raw)
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
        return (raw,)

    return convert


def to_roles(flag: str) -> Converter:
    """A comma-separated set of agent roles; at least one."""

    def convert(raw: str) -> tuple[object, ...]:
        roles = frozenset(r.strip().lower() for r in raw.split(",") if r.strip())
        if not roles or not roles <= ALL_ROLES:
            raise _bad(flag, f"a comma-separated list of {', '.join(ROLE_ORDER)}", raw)
        return (roles,)

    return convert


def to_group_name(flag: str) -> Converter:
    def convert(raw: str) -> tuple[object, ...]:
        name = raw.strip()
        if not _GROUP_NAME.fullmatch(name):
            raise _bad(flag, "a name of at most 64 characters of [A-Za-z0-9._-]", raw)
        return (name,)

    return convert


def _default_text(converter: Callable[[str], Converter], value: object) -> str | None:
    """AgentConfig's default in the option's own raw syntax."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if converter is ms_to_s:
        assert isinstance(value, int | float)
        return str(round(value * 1000))
    return str(value)


def option(
    flag: str,
    help_: str,
    *,
    metavar: str = "N",
    converter: Callable[[str], Converter] = to_int,
    field: str | None = None,
    default_doc: str = "",
) -> Option:
    """An option setting one AgentConfig field (named after the flag unless `field` is
    given), with AgentConfig's default. The converter's default (`to_int`) fits most."""
    name = field or _field_of(flag)
    default = _default_text(converter, getattr(_DEFAULTS, name))
    return Option(flag, metavar, help_, (name,), converter(flag), default, default_doc)


OPTIONS: tuple[Option, ...] = (
    Option(
        "--listen",
        "HOST:PORT",
        "address to accept clients on (`:PORT` or `0.0.0.0:PORT`: every interface)",
        ("listen_host", "listen_port"),
        to_host_port("--listen"),
        f"{_DEFAULTS.listen_host}:{_DEFAULTS.listen_port}",
    ),
    Option(
        "--advertise",
        "HOST:PORT",
        "address Metadata tells clients to connect to; 0.0.0.0 is advertised as 127.0.0.1",
        ("advertise_host", "advertise_port"),
        to_advertised_host_port("--advertise"),
        None,
        default_doc="the listen address",
        fallback="--listen",
    ),
    option(
        "--data-dir",
        "directory of the embedded SQLite coordinator and (by default) the objects",
        metavar="DIR",
        converter=to_path,
    ),
    option(
        "--object-store",
        "object store: `file:///path`, `memory://`, `s3://bucket[/prefix]` "
        "(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` apply)",
        metavar="URL",
        converter=to_optional_str,
        field="object_store_url",
        default_doc="`file://DATA_DIR/objects`",
    ),
    option(
        "--coordinator",
        "coordinator database: `postgresql://user@host:port/db` for cluster mode, "
        "or empty for the embedded SQLite file in DATA_DIR",
        metavar="URL",
        converter=to_optional_str,
        field="coordinator_url",
        default_doc="embedded SQLite in DATA_DIR",
    ),
    option(
        "--agent-id",
        "this agent's name in the writer lease and membership; unique per agent, "
        "stable across restarts (empty: the default)",
        metavar="ID",
        converter=to_str,
        default_doc="`agent-NODE_ID`",
    ),
    option(
        "--lease-ms",
        "writer lease: a dead writer is replaced about this long after its last renewal",
    ),
    option(
        "--rpc-port",
        "cluster mode: port of the writer RPC, on the listen host (0: a free one)",
        default_doc="`0` (a free port)",
    ),
    option(
        "--rpc-advertise",
        "cluster mode: address other agents reach this agent's RPC at, when it differs "
        "from the one it listens on (a proxy or NAT in between)",
        metavar="HOST:PORT",
        converter=to_optional_address,
        default_doc="the advertised host and the RPC port",
    ),
    option("--heartbeat-ms", "cluster mode: how often the agent announces itself"),
    option(
        "--agent-timeout-ms",
        "cluster mode: an agent silent this long leaves Metadata and its groups move",
    ),
    option(
        "--log-retention-ms",
        "`retention.ms` of topics that do not set it (-1: keep forever)",
    ),
    option(
        "--log-retention-bytes",
        "`retention.bytes` per partition of topics that do not set it (-1: no limit)",
    ),
    option(
        "--retention-check-ms",
        "how often the writer applies retention (moves log starts past expired data)",
    ),
    option(
        "--gc-interval-ms",
        "how often the jobs agent deletes dead and orphaned objects (0: never)",
    ),
    option(
        "--gc-delete-grace-ms",
        "an object no batch references stays readable this long for fetches in flight",
    ),
    option(
        "--gc-orphan-grace-ms",
        "uploads no commit names are deleted at this age; "
        "commits of objects older than half of it are refused",
    ),
    option("--gc-orphan-scan-ms", "how often the store is listed to find orphans"),
    option("--gc-max-deletes-per-s", "upper bound on object deletions per second"),
    option(
        "--compaction-interval-ms",
        "how often the jobs agent merges small objects into one (0: never)",
    ),
    option("--compaction-min-age-ms", "objects younger than this are left alone"),
    option("--compaction-small-object-bytes", "objects smaller than this are merged"),
    option("--compaction-target-bytes", "size of the objects compaction writes"),
    option(
        "--transaction-max-timeout-ms",
        "longest `transaction.timeout.ms` a producer may ask for "
        "(longer: INVALID_TRANSACTION_TIMEOUT)",
    ),
    option(
        "--transactional-id-expiration-ms",
        "a transactional id idle this long is forgotten",
    ),
    option(
        "--key-compaction-interval-ms",
        "how often the jobs agent compacts `cleanup.policy=compact` topics by key (0: never)",
    ),
    option(
        "--key-compaction-map-bytes",
        "memory for key compaction's map of keys "
        "(about 120 bytes a key; more keys take more passes)",
    ),
    option(
        "--flush-ms",
        "flush the shared write buffer when its oldest batch is this old",
    ),
    option("--flush-bytes", "flush the shared write buffer when it holds this many bytes"),
    option(
        "--cache-bytes",
        "size of the in-memory LRU cache of stored batches (with the zone cache: of the"
        " batches this agent uploaded)",
    ),
    option(
        "--zone-cache",
        "cluster mode with an S3-like store: the agents of a zone share one cache, each"
        " owning some blocks of the objects; a zone GETs each block once (false: each agent"
        " GETs what it reads)",
        metavar="true/false",
        converter=to_bool,
    ),
    option("--zone-cache-bytes", "size of this agent's part of the zone cache (blocks)"),
    option(
        "--zone-cache-block-bytes",
        "blocks of objects the zone cache fetches, keeps and owns (64 KiB to 32 MiB); an"
        " object no larger is one GET",
        converter=to_block_bytes,
    ),
    option(
        "--zone-cache-peer-timeout-ms",
        "a block's owner that has not answered in this long is left: the agent GETs the"
        " block itself and asks that owner nothing for 5 s",
    ),
    option(
        "--read-ahead-bytes",
        "a partition read sequentially behind its end has this many bytes ahead loaded by"
        " their owners before it asks (0: no read-ahead)",
    ),
    option(
        "--max-frame-bytes",
        "largest request accepted; a larger one disconnects the client",
    ),
    option("--max-connections", "connections accepted at once"),
    option(
        "--idle-timeout-ms",
        "close connections idle this long (Kafka's `connections.max.idle.ms`)",
        converter=ms_to_s,
        field="idle_timeout_s",
    ),
    option(
        "--request-timeout-ms",
        "close a connection whose request takes longer than this",
        converter=ms_to_s,
        field="request_timeout_s",
    ),
    option("--default-partitions", "partitions of auto-created topics"),
    option(
        "--auto-create-topics",
        "create unknown topics on their first Metadata request",
        metavar="true/false",
        converter=to_bool,
    ),
    option(
        "--node-id",
        "broker id in Metadata; in a cluster, assigned and kept per agent id when not "
        "given, and refused at start if another live agent holds it",
        converter=to_optional_int,
        default_doc="assigned (`0` embedded)",
    ),
    option(
        "--listeners",
        "listeners in Kafka's syntax, `NAME://HOST:PORT,...` (e.g. "
        "`INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:9093`); replaces `--listen`",
        metavar="LIST",
        converter=to_str,
        default_doc="one PLAINTEXT listener on `--listen`",
    ),
    option(
        "--advertised-listeners",
        "the address Metadata gives per listener, `NAME://HOST:PORT,...`",
        metavar="LIST",
        converter=to_str,
        default_doc="the listeners' addresses",
    ),
    option(
        "--listener-security-protocol-map",
        "`NAME:PROTOCOL,...` with PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL "
        "(a listener named after a protocol needs no entry)",
        metavar="MAP",
        converter=to_str,
    ),
    option(
        "--listener-settings",
        "per-listener settings in Kafka's keys, `;`-separated: "
        "`listener.name.NAME.sasl.enabled.mechanisms=...;listener.name.NAME.ssl.client.auth=...`",
        metavar="SETTINGS",
        converter=to_str,
    ),
    option(
        "--sasl-enabled-mechanisms",
        "SASL mechanisms of SASL listeners: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 "
        "(OAUTHBEARER and GSSAPI are not supported)",
        metavar="LIST",
        converter=to_str,
    ),
    option(
        "--tls-cert-file",
        "PEM certificate (and chain) of SSL and SASL_SSL listeners",
        metavar="FILE",
        converter=to_optional_path,
    ),
    option(
        "--tls-key-file",
        "PEM private key of `--tls-cert-file`",
        metavar="FILE",
        converter=to_optional_path,
    ),
    option(
        "--tls-client-ca-file",
        "PEM CA certificates that sign client certificates: turns on mutual TLS",
        metavar="FILE",
        converter=to_optional_path,
    ),
    option(
        "--ssl-client-auth",
        "`none`, `requested` or `required`: whether TLS clients must send a certificate",
        metavar="MODE",
        converter=to_str,
        default_doc="`required` with `--tls-client-ca-file`, else `none`",
    ),
    option(
        "--ssl-principal-mapping-rules",
        "Kafka's rules mapping a client certificate's distinguished name to a user name "
        "(`RULE:^CN=(.*?),.*$/$1/L,DEFAULT`)",
        metavar="RULES",
        converter=to_str,
    ),
    option(
        "--connections-max-reauth-ms",
        "SASL sessions last this long; the client re-authenticates on its connection or "
        "the connection is closed (KIP-368; 0: sessions never end)",
    ),
    option(
        "--cluster-secret-file",
        "cluster mode: file holding the secret agents prove to each other on the RPC port "
        "(every agent the same; at least 16 bytes)",
        metavar="FILE",
        converter=to_optional_path,
        default_doc="a secret kept in the coordinator database",
    ),
    option(
        "--metrics-listen",
        "HOST:PORT serving Prometheus metrics at `/metrics`, and `/healthz` and `/readyz`",
        metavar="HOST:PORT",
        converter=to_optional_host_port,
        default_doc="off",
    ),
    option(
        "--authorizer",
        "`acl`: Kafka ACLs (CreateAcls, stored in the coordinator) decide every request; "
        "empty: no authorizer, everything is allowed",
        metavar="NAME",
        converter=to_authorizer,
        default_doc="none",
    ),
    option(
        "--super-users",
        "principals that bypass ACLs, Kafka's `super.users` syntax (`User:admin;User:ops`)",
        metavar="LIST",
        converter=to_super_users,
    ),
    option(
        "--allow-everyone-if-no-acl-found",
        "with `--authorizer acl`, allow a request on a resource no ACL names (as Kafka)",
        metavar="true/false",
        converter=to_bool,
    ),
    option(
        "--zone",
        "availability zone, reported as the broker's rack; clients with "
        "`driftlog_zone=NAME` in their client.id are sent here",
        metavar="NAME",
        converter=to_str,
    ),
    Option(
        "--roles",
        "LIST",
        "what this agent does, comma-separated: `produce` (Metadata names it leader), "
        "`fetch` (consumers are sent here, KIP-392), `jobs` (garbage collection and "
        "compaction: one live jobs agent of the cluster runs them), `writer` (may take the "
        'writer lease); see docs/ARCHITECTURE.md, "Roles and groups"',
        ("roles",),
        to_roles("--roles"),
        ",".join(ROLE_ORDER),
    ),
    option(
        "--agent-group",
        "cluster mode: the agent group; Metadata and FindCoordinator name only agents of "
        "the group of the agent asked (groups share the database and the bucket)",
        metavar="NAME",
        converter=to_group_name,
    ),
    Option(
        "--log-level",
        "LEVEL",
        "logging threshold: DEBUG, INFO, WARNING or ERROR",
        (),
        to_str("--log-level"),
        "INFO",
    ),
    option(
        "--faults",
        "tests only: inject object-store errors, lost acks, timeouts, delays "
        "(`put_error=0.1,get_error=0.05,put_lost_ack=0.02,timeout=0.01,timeout_ms=2000,"
        "delay_ms=20,seed=7`)",
        metavar="SPEC",
        converter=to_str,
        default_doc="off",
    ),
)


def add_options(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    options: Iterable[Option] = OPTIONS,
) -> None:
    """Declare the options on `parser`; an environment variable replaces the default, so
    the command line wins over it. Values stay raw strings (see `config_values`)."""
    for spec in options:
        default_shown = spec.default_markdown.replace("`", "")
        parser.add_argument(
            spec.flag,
            dest=spec.dest,
            metavar=spec.metavar,
            default=environ.get(spec.env, spec.default),
            # argparse formats help with %, so a literal one is doubled
            help=f"{spec.help.replace('`', '')} [{spec.env}, default {default_shown}]".replace(
                "%", "%%"
            ),
        )


def config_values(
    args: argparse.Namespace, options: Iterable[Option] = OPTIONS
) -> dict[str, object]:
    """AgentConfig keyword arguments from parsed raw values; ValueError on a bad one."""
    specs = list(options)
    by_flag = {spec.flag: spec for spec in specs}
    values: dict[str, object] = {}
    for spec in specs:
        raw: str | None = getattr(args, spec.dest)
        if not raw and spec.fallback is not None:
            raw = getattr(args, by_flag[spec.fallback].dest)
        if raw is None or not spec.fields:
            continue
        values.update(zip(spec.fields, spec.convert(raw), strict=True))
    return values


def config_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(AgentConfig))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(options: Iterable[Option] = OPTIONS) -> str:
    """README's table of options (between its `options:begin`/`options:end` markers)."""
    lines = [
        "| option | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for spec in options:
        cells = (
            f"`{spec.flag} {spec.metavar}`",
            f"`{spec.env}`",
            spec.default_markdown,
            spec.help,
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plain_listing(options: Iterable[Option] = OPTIONS) -> str:
    """The options as text, for `driftlog options` without --markdown."""
    out = []
    for spec in options:
        default = spec.default_markdown.replace("`", "")
        out.append(f"{spec.flag} {spec.metavar}  [{spec.env}, default {default}]")
        out.append(f"    {spec.help.replace('`', '')}")
    return "\n".join(out) + "\n"
